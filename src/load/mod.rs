//! `prompt-router load`: a fixed-rate load generator for a running router.
//!
//! Requests leave on a fixed schedule (open loop): slot `i` is due at `start + i / rate`
//! whatever happened to earlier requests, and latency is measured from the slot's due time, not
//! from when the request actually left. So a slow router shows up as latency instead of quietly
//! lowering the offered rate. At most `concurrency` requests are in flight; a slot that finds
//! them all busy is counted as not sent rather than queued, because a queued request would be
//! sent late and make the schedule a lie.

pub mod samples;
pub mod summary;

use std::{sync::Arc, time::Duration};

use anyhow::{Context as _, bail, ensure};
use tokio::{sync::Semaphore, task::JoinSet, time::Instant};
use tonic::{
    Code, Request,
    transport::{Channel, Endpoint},
};

pub use self::{
    samples::Sample,
    summary::{Percentiles, Reply, Summary},
};
use crate::{
    cost::Nanodollars,
    pb::{self, converse_stream_event::Event, prompt_router_client::PromptRouterClient},
    server::REQUEST_ID,
};

/// A request that leaves more than this behind its slot counts as late.
pub const LATE_AFTER: Duration = Duration::from_millis(10);

/// How to run the load.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The router's gRPC address: `host:port` or an `http://` URL.
    pub target: String,
    /// Requests per second.
    pub rate: f64,
    /// How long to keep sending.
    pub duration: Duration,
    /// Most requests in flight at once.
    pub concurrency: usize,
    /// Deadline of each request.
    pub timeout: Duration,
    /// Seed of the sample choice, so a run can be repeated.
    pub seed: u64,
}

type Client = PromptRouterClient<Channel>;

/// A plaintext gRPC endpoint for `host:port` or an `http://` URL.
pub fn endpoint(target: &str) -> anyhow::Result<Endpoint> {
    let uri = if target.contains("://") {
        target.to_owned()
    } else {
        format!("http://{target}")
    };
    Ok(Endpoint::from_shared(uri.clone())
        .with_context(|| format!("{uri:?} is not a valid address"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true))
}

/// Sends `samples`, chosen at random with `options.seed`, at `options.rate` for
/// `options.duration`, and adds up the replies.
pub async fn run(options: &LoadOptions, samples: &[Sample]) -> anyhow::Result<Summary> {
    ensure!(
        options.rate.is_finite() && options.rate > 0.0,
        "the rate must be above 0"
    );
    ensure!(
        options.concurrency > 0,
        "the concurrency must be at least 1"
    );
    ensure!(!samples.is_empty(), "no samples to send");
    let channel = endpoint(&options.target)?
        .connect()
        .await
        .with_context(|| format!("connecting to the router at {}", options.target))?;
    let client = PromptRouterClient::new(channel);
    // Truncation is intended: a slot past the duration is not part of the run.
    let planned = (options.rate * options.duration.as_secs_f64()).floor() as u64;
    let slots = Arc::new(Semaphore::new(options.concurrency));
    let mut rng = fastrand::Rng::with_seed(options.seed);
    let run_id = format!("{:08x}", rng.u32(..));
    let mut inflight = JoinSet::new();
    let mut replies = Vec::new();
    let (mut not_sent, mut late) = (0, 0);
    let start = Instant::now();
    for slot in 0..planned {
        // From the start each time, so rounding never accumulates into drift.
        let due = start + Duration::from_secs_f64(slot as f64 / options.rate);
        tokio::time::sleep_until(due).await;
        while let Some(done) = inflight.try_join_next() {
            replies.push(done.context("a load request task failed")?);
        }
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            not_sent += 1;
            continue;
        };
        if due.elapsed() > LATE_AFTER {
            late += 1;
        }
        let sample = &samples[rng.usize(..samples.len())];
        let mut request = Request::new(sample.request.clone());
        request.set_timeout(options.timeout);
        if let Ok(id) = format!("load-{run_id}-{slot}").parse() {
            request.metadata_mut().insert(REQUEST_ID, id);
        }
        let client = client.clone();
        let stream = sample.stream;
        inflight.spawn(async move {
            let reply = if stream {
                streamed(client, request, due).await
            } else {
                unary(client, request, due).await
            };
            drop(permit);
            reply
        });
    }
    while let Some(done) = inflight.join_next().await {
        replies.push(done.context("a load request task failed")?);
    }
    if replies.is_empty() && planned > 0 {
        bail!("no request could be sent");
    }
    Ok(Summary::new(
        planned,
        not_sent,
        late,
        &replies,
        start.elapsed(),
    ))
}

fn failed(code: Code, due: Instant) -> Reply {
    Reply {
        code,
        latency: due.elapsed(),
        tier: None,
        cost: Nanodollars::default(),
        baseline: Nanodollars::default(),
        ttft: None,
    }
}

/// Replies carry dollars rendered from exact nano-dollars; rounding recovers them exactly.
fn nanodollars(usd: f64) -> Nanodollars {
    Nanodollars((usd * 1e9).round() as u64)
}

async fn unary(mut client: Client, request: Request<pb::ConverseRequest>, due: Instant) -> Reply {
    match client.converse(request).await {
        Ok(response) => {
            let response = response.into_inner();
            Reply {
                code: Code::Ok,
                latency: due.elapsed(),
                tier: response.decision.map(|d| d.tier()),
                cost: nanodollars(response.cost_usd),
                baseline: nanodollars(response.baseline_cost_usd),
                ttft: None,
            }
        }
        Err(status) => failed(status.code(), due),
    }
}

async fn streamed(
    mut client: Client,
    request: Request<pb::ConverseRequest>,
    due: Instant,
) -> Reply {
    let mut events = match client.converse_stream(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return failed(status.code(), due),
    };
    let mut reply = failed(Code::Ok, due);
    loop {
        match events.message().await {
            Ok(Some(pb::ConverseStreamEvent { event: Some(event) })) => match event {
                Event::Decision(decision) => reply.tier = Some(decision.tier()),
                Event::Delta(_) | Event::ContentBlockStart(_) => {
                    reply.ttft.get_or_insert_with(|| due.elapsed());
                }
                Event::Metadata(metadata) => {
                    reply.cost = nanodollars(metadata.cost_usd);
                    reply.baseline = nanodollars(metadata.baseline_cost_usd);
                }
                Event::Stop(_) => {}
            },
            Ok(Some(pb::ConverseStreamEvent { event: None })) => {}
            Ok(None) => break,
            Err(status) => {
                reply.code = status.code();
                break;
            }
        }
    }
    reply.latency = due.elapsed();
    reply
}

/// Parses a rate such as `50`, `50/s` or `2.5/s`.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let number = text.trim().trim_end_matches("/s");
    match number.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!("{text:?} is not a positive rate (e.g. 50 or 50/s)")),
    }
}

/// Parses a duration such as `90`, `90s`, `500ms`, `2m` or `1h` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let seconds = match unit {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "m" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use ms, s, m or h)"
            ));
        }
    };
    match number.parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.0 => Ok(Duration::from_secs_f64(n * seconds)),
        _ => Err(format!("{text:?} is not a duration (e.g. 30s, 2m)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_durations_parse() {
        assert_eq!(parse_rate("50/s"), Ok(50.0));
        assert_eq!(parse_rate("2.5"), Ok(2.5));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("3 days").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn dollars_round_trip_to_nanodollars() {
        for nano in [0, 1, 875_000, 10_500_000, 123_456_789_012] {
            assert_eq!(nanodollars(Nanodollars(nano).as_usd()), Nanodollars(nano));
        }
    }
}
