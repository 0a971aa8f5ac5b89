//! `prompt-router load`: a load generator for a running router, open or closed loop.
//!
//! Open loop ([`Pace::Rate`]): slot `i` is due at `start + i / rate` whatever happened to
//! earlier requests, so a slow router shows up as latency instead of quietly lowering the
//! offered rate. At most `concurrency` requests are in flight; a slot that finds them all busy
//! is counted as not sent rather than queued, because a queued request would be sent late and
//! make the schedule a lie. Tokio's timer wakes on 1 ms ticks, so a request leaves up to a
//! millisecond (more on a busy machine) after its slot: latency is measured from the moment
//! each request is actually sent, and once more from its slot, which adds that wait back (the
//! figure coordinated omission would hide).
//!
//! Closed loop ([`Pace::ClosedLoop`]): `concurrency` workers each send a request, wait for its
//! answer and send the next, until the duration is over — the router's throughput and latency
//! at a fixed concurrency, with no schedule to fall behind.

pub mod samples;
pub mod summary;

use std::{
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};
use tokio::{sync::Semaphore, task::JoinSet, time::Instant};
use tonic::{
    Code, Request,
    transport::{Channel, Endpoint},
};

pub use self::{
    samples::Sample,
    summary::{Mode, Pacing, Percentiles, Reply, Summary, Tally},
};
use crate::{
    pb::{self, converse_stream_event::Event, prompt_router_client::PromptRouterClient},
    protocol::REQUEST_ID,
};
use prompt_router_core::cost::Nanodollars;

/// A request that leaves more than this behind its slot counts as late.
pub const LATE_AFTER: Duration = Duration::from_millis(10);
/// How often the progress line is rewritten.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// How requests are paced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// Open loop: this many requests per second, on a fixed schedule.
    Rate(f64),
    /// Closed loop: `concurrency` requests in flight, each sent when the one before it ended.
    ClosedLoop,
}

/// How to run the load.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The router's gRPC address: `host:port` or an `http://` URL.
    pub target: String,
    /// Open loop at a rate, or closed loop.
    pub pace: Pace,
    /// How long to keep sending.
    pub duration: Duration,
    /// Most requests in flight at once (closed loop: the number kept in flight).
    pub concurrency: usize,
    /// Deadline of each request.
    pub timeout: Duration,
    /// Seed of the sample choice, so a run can be repeated.
    pub seed: u64,
    /// Rewrite a progress line on stderr every second (for a terminal).
    pub progress: bool,
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

fn lock(tally: &Mutex<Tally>) -> MutexGuard<'_, Tally> {
    // Every update leaves the tally consistent, so a panicked holder does not spoil it.
    tally.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What every request of a run shares.
#[derive(Clone)]
struct Sender {
    client: Client,
    samples: Arc<[Sample]>,
    timeout: Duration,
    run_id: Arc<str>,
    tally: Arc<Mutex<Tally>>,
}

impl Sender {
    /// Sends `sample` as request `name` of the run, waits for the whole answer and adds it to
    /// the tally; `due` is its slot in an open loop. Latency counts from the send.
    async fn exchange(self, sample: usize, name: String, due: Option<Instant>) {
        let Some(sample) = self.samples.get(sample) else {
            return;
        };
        let mut request = Request::new(sample.request.clone());
        request.set_timeout(self.timeout);
        if let Ok(id) = format!("load-{}-{name}", self.run_id).parse() {
            request.metadata_mut().insert(REQUEST_ID, id);
        }
        lock(&self.tally).sent();
        let sent = Instant::now();
        let mut reply = if sample.stream {
            streamed(self.client, request, sent).await
        } else {
            unary(self.client, request, sent).await
        };
        reply.queued = due.map_or(Duration::ZERO, |due| sent.saturating_duration_since(due));
        lock(&self.tally).add(&reply);
    }
}

/// Sends `samples`, chosen at random with `options.seed`, paced as `options.pace` for
/// `options.duration`, and adds up the replies.
pub async fn run(options: &LoadOptions, samples: &[Sample]) -> anyhow::Result<Summary> {
    if let Pace::Rate(rate) = options.pace {
        ensure!(rate.is_finite() && rate > 0.0, "the rate must be above 0");
    }
    ensure!(
        options.concurrency > 0,
        "the concurrency must be at least 1"
    );
    ensure!(!samples.is_empty(), "no samples to send");
    let channel = endpoint(&options.target)?
        .connect()
        .await
        .with_context(|| format!("connecting to the router at {}", options.target))?;
    let mut rng = fastrand::Rng::with_seed(options.seed);
    let sender = Sender {
        client: PromptRouterClient::new(channel),
        samples: samples.into(),
        timeout: options.timeout,
        run_id: Arc::from(format!("{:08x}", rng.u32(..))),
        tally: Arc::new(Mutex::new(Tally::new()?)),
    };
    let start = Instant::now();
    let ticker = options
        .progress
        .then(|| tokio::spawn(progress(Arc::clone(&sender.tally), start, options.duration)));
    let paced = match options.pace {
        Pace::Rate(rate) => open_loop(options, rate, &sender, rng, start).await,
        Pace::ClosedLoop => closed_loop(options, &sender, start).await,
    };
    let elapsed = start.elapsed();
    if let Some(ticker) = ticker {
        ticker.abort();
        // Waits for it to stop, lest a last line land after the clearing.
        let _ = ticker.await;
        eprint!("\r\x1b[2K");
    }
    let pacing = paced?;
    let tally = lock(&sender.tally);
    if pacing.planned > 0 && pacing.not_sent == pacing.planned {
        bail!("no request could be sent");
    }
    Ok(Summary::new(pacing, &tally, elapsed))
}

/// Rewrites the progress line every [`PROGRESS_EVERY`] until aborted.
async fn progress(tally: Arc<Mutex<Tally>>, start: Instant, duration: Duration) {
    let mut every = tokio::time::interval(PROGRESS_EVERY);
    loop {
        every.tick().await;
        let line = lock(&tally).progress(start.elapsed(), duration);
        eprint!("\r\x1b[2K{line}");
    }
}

async fn open_loop(
    options: &LoadOptions,
    rate: f64,
    sender: &Sender,
    mut rng: fastrand::Rng,
    start: Instant,
) -> anyhow::Result<Pacing> {
    // Truncation is intended: a slot past the duration is not part of the run.
    let planned = (rate * options.duration.as_secs_f64()).floor() as u64;
    let slots = Arc::new(Semaphore::new(options.concurrency));
    let mut inflight = JoinSet::new();
    let (mut not_sent, mut late) = (0, 0);
    for slot in 0..planned {
        // From the start each time, so rounding never accumulates into drift.
        let due = start + Duration::from_secs_f64(slot as f64 / rate);
        tokio::time::sleep_until(due).await;
        while let Some(done) = inflight.try_join_next() {
            done.context("a load request task failed")?;
        }
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            not_sent += 1;
            continue;
        };
        if due.elapsed() > LATE_AFTER {
            late += 1;
        }
        let sample = rng.usize(..sender.samples.len());
        let exchange = sender.clone().exchange(sample, slot.to_string(), Some(due));
        inflight.spawn(async move {
            exchange.await;
            drop(permit);
        });
    }
    while let Some(done) = inflight.join_next().await {
        done.context("a load request task failed")?;
    }
    Ok(Pacing {
        mode: Mode::Open,
        rate: Some(rate),
        concurrency: options.concurrency,
        planned,
        not_sent,
        late,
    })
}

async fn closed_loop(
    options: &LoadOptions,
    sender: &Sender,
    start: Instant,
) -> anyhow::Result<Pacing> {
    let end = start + options.duration;
    let mut workers = JoinSet::new();
    for worker in 0..options.concurrency {
        let sender = sender.clone();
        // One generator per worker, so a run repeats whatever order the answers come in.
        let mut rng = fastrand::Rng::with_seed(options.seed.wrapping_add(worker as u64));
        workers.spawn(async move {
            let mut n = 0u64;
            while Instant::now() < end {
                let sample = rng.usize(..sender.samples.len());
                sender
                    .clone()
                    .exchange(sample, format!("{worker}-{n}"), None)
                    .await;
                n += 1;
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.context("a load worker failed")?;
    }
    Ok(Pacing {
        mode: Mode::Closed,
        rate: None,
        concurrency: options.concurrency,
        ..Pacing::default()
    })
}

fn failed(code: Code, sent: Instant) -> Reply {
    Reply {
        code,
        latency: sent.elapsed(),
        queued: Duration::ZERO,
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

async fn unary(mut client: Client, request: Request<pb::ConverseRequest>, sent: Instant) -> Reply {
    match client.converse(request).await {
        Ok(response) => {
            let response = response.into_inner();
            Reply {
                tier: response.decision.map(|d| d.tier()),
                cost: nanodollars(response.cost_usd),
                baseline: nanodollars(response.baseline_cost_usd),
                ..failed(Code::Ok, sent)
            }
        }
        Err(status) => failed(status.code(), sent),
    }
}

async fn streamed(
    mut client: Client,
    request: Request<pb::ConverseRequest>,
    sent: Instant,
) -> Reply {
    let mut events = match client.converse_stream(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return failed(status.code(), sent),
    };
    let mut reply = failed(Code::Ok, sent);
    loop {
        match events.message().await {
            Ok(Some(pb::ConverseStreamEvent { event: Some(event) })) => match event {
                Event::Decision(decision) => reply.tier = Some(decision.tier()),
                Event::Delta(_) | Event::ContentBlockStart(_) => {
                    reply.ttft.get_or_insert_with(|| sent.elapsed());
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
    reply.latency = sent.elapsed();
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
