//! Adding up a load run's replies into the numbers an operator compares with the dashboard:
//! counts, cost, and latency in HDR histograms (microseconds, three significant digits), so a
//! run of any length takes the same memory and sub-millisecond figures keep their precision.

use std::{collections::BTreeMap, fmt, time::Duration};

use hdrhistogram::{CreationError, Histogram};
use serde::Serialize;
use tonic::Code;

use crate::{pb, protocol::code_label};
use prompt_router_core::cost::Nanodollars;

/// How one request ended, as the load generator saw it.
#[derive(Debug, Clone)]
pub struct Reply {
    /// `Ok`, or the status code of the error.
    pub code: Code,
    /// From the moment the request was sent to its last byte.
    pub latency: Duration,
    /// From the request's scheduled time to the moment it was sent (open loop; zero in a
    /// closed loop, which has no schedule).
    pub queued: Duration,
    /// The tier of the decision, when the reply carried one.
    pub tier: Option<pb::Tier>,
    /// Cost the router reported (answered requests only).
    pub cost: Nanodollars,
    /// All-strong cost the router reported (answered requests only).
    pub baseline: Nanodollars,
    /// From the moment the request was sent to the first streamed token.
    pub ttft: Option<Duration>,
}

/// How requests were paced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Requests due on a fixed schedule, whatever happened to earlier ones.
    #[default]
    Open,
    /// A fixed number of requests in flight, each sent when the one before it ended.
    Closed,
}

/// Latency percentiles, in milliseconds (nearest rank, within the histogram's 0.1%).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

/// Longest latency a histogram holds, in microseconds (an hour); longer ones count as an hour.
const LONGEST_US: u64 = 3_600_000_000;

/// Running totals of a load run, added to as replies arrive.
#[derive(Debug, Clone)]
pub struct Tally {
    sent: u64,
    ok: u64,
    errors: BTreeMap<String, u64>,
    latency: Histogram<u64>,
    scheduled: Histogram<u64>,
    ttft: Histogram<u64>,
    strong: u64,
    fast: u64,
    cost: u64,
    baseline: u64,
}

fn histogram() -> Result<Histogram<u64>, CreationError> {
    Histogram::new_with_bounds(1, LONGEST_US, 3)
}

fn record(histogram: &mut Histogram<u64>, d: Duration) {
    histogram.saturating_record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
}

impl Tally {
    /// Empty totals.
    pub fn new() -> Result<Self, CreationError> {
        Ok(Self {
            sent: 0,
            ok: 0,
            errors: BTreeMap::new(),
            latency: histogram()?,
            scheduled: histogram()?,
            ttft: histogram()?,
            strong: 0,
            fast: 0,
            cost: 0,
            baseline: 0,
        })
    }

    /// Notes that a request was sent.
    pub fn sent(&mut self) {
        self.sent += 1;
    }

    /// Adds a reply. The latency of OK replies goes into the histograms; failures are counted
    /// by code.
    pub fn add(&mut self, reply: &Reply) {
        if reply.code != Code::Ok {
            *self
                .errors
                .entry(code_label(reply.code).to_owned())
                .or_default() += 1;
            return;
        }
        self.ok += 1;
        record(&mut self.latency, reply.latency);
        record(&mut self.scheduled, reply.queued + reply.latency);
        if let Some(ttft) = reply.ttft {
            record(&mut self.ttft, ttft);
        }
        match reply.tier {
            Some(pb::Tier::Strong) => self.strong += 1,
            Some(pb::Tier::Fast) => self.fast += 1,
            Some(pb::Tier::Unspecified) | None => {}
        }
        self.cost += reply.cost.0;
        self.baseline += reply.baseline.0;
    }

    /// Requests sent and not answered yet.
    fn in_flight(&self) -> u64 {
        let errors: u64 = self.errors.values().sum();
        self.sent.saturating_sub(self.ok + errors)
    }

    /// One line on how a run is going, for a terminal.
    pub fn progress(&self, elapsed: Duration, duration: Duration) -> String {
        let errors: u64 = self.errors.values().sum();
        let mut line = format!(
            "{:.0}/{:.0} s  sent {}  ok {}  errors {}  in flight {}",
            elapsed.as_secs_f64(),
            duration.as_secs_f64(),
            self.sent,
            self.ok,
            errors,
            self.in_flight()
        );
        if let Some(p) = percentiles(&self.latency) {
            line.push_str(&format!(
                "  p50 {}  p99 {}  max {}",
                ms(p.p50_ms),
                ms(p.p99_ms),
                ms(p.max_ms)
            ));
        }
        line
    }
}

/// The result of a load run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Open loop (a fixed rate) or closed loop (a fixed number in flight).
    pub mode: Mode,
    /// Open loop: the offered rate, requests per second.
    pub rate: Option<f64>,
    /// Most requests in flight (closed loop: the number kept in flight).
    pub concurrency: usize,
    /// Open loop: requests the schedule called for (rate × duration); 0 in a closed loop.
    pub planned: u64,
    /// Requests sent.
    pub sent: u64,
    /// Open loop: scheduled requests not sent because every concurrency slot was busy at
    /// their time.
    pub not_sent: u64,
    /// Open loop: requests sent more than [`super::LATE_AFTER`] behind their scheduled time.
    pub late: u64,
    /// Requests answered with OK.
    pub ok: u64,
    /// Failed requests by status code (the router's metric label form, e.g. `resource_exhausted`).
    pub errors: BTreeMap<String, u64>,
    /// Latency of OK replies, from the moment each request was sent.
    pub latency: Percentiles,
    /// Open loop: latency of OK replies from each request's scheduled time, which adds the
    /// time it waited to be sent (coordinated omission shows here, not in `latency`).
    pub latency_from_schedule: Option<Percentiles>,
    /// Time to first token of OK streamed replies, from the moment each was sent.
    pub ttft: Option<Percentiles>,
    /// OK replies routed to the strong tier.
    pub strong: u64,
    /// OK replies routed to the fast tier.
    pub fast: u64,
    /// Total cost the router reported, in US dollars.
    pub cost_usd: f64,
    /// What the same answers would have cost on the strong model.
    pub baseline_cost_usd: f64,
    /// Exact cost in nano-dollars (the router's own unit).
    pub cost_nanodollars: u64,
    /// Exact baseline in nano-dollars.
    pub baseline_nanodollars: u64,
    /// Wall time from the first request to the last reply, in seconds.
    pub elapsed_s: f64,
}

/// How a run was paced and what its pacing counted.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pacing {
    /// Open or closed loop.
    pub mode: Mode,
    /// Open loop: requests per second.
    pub rate: Option<f64>,
    /// Most requests in flight.
    pub concurrency: usize,
    /// Open loop: requests the schedule called for.
    pub planned: u64,
    /// Open loop: requests not sent for want of a free slot.
    pub not_sent: u64,
    /// Open loop: requests sent late.
    pub late: u64,
}

impl Summary {
    /// The summary of a run paced as `pacing` that added up to `tally` in `elapsed`.
    pub fn new(pacing: Pacing, tally: &Tally, elapsed: Duration) -> Self {
        Self {
            mode: pacing.mode,
            rate: pacing.rate,
            concurrency: pacing.concurrency,
            planned: pacing.planned,
            sent: tally.sent,
            not_sent: pacing.not_sent,
            late: pacing.late,
            ok: tally.ok,
            errors: tally.errors.clone(),
            latency: percentiles(&tally.latency).unwrap_or_default(),
            latency_from_schedule: match pacing.mode {
                Mode::Open => Some(percentiles(&tally.scheduled).unwrap_or_default()),
                Mode::Closed => None,
            },
            ttft: percentiles(&tally.ttft),
            strong: tally.strong,
            fast: tally.fast,
            cost_usd: Nanodollars(tally.cost).as_usd(),
            baseline_cost_usd: Nanodollars(tally.baseline).as_usd(),
            cost_nanodollars: tally.cost,
            baseline_nanodollars: tally.baseline,
            elapsed_s: elapsed.as_secs_f64(),
        }
    }

    /// Share of OK replies that went to the strong tier.
    pub fn strong_share(&self) -> f64 {
        ratio(self.strong, self.strong + self.fast)
    }

    /// Baseline minus cost, in US dollars.
    pub fn savings_usd(&self) -> f64 {
        Nanodollars(
            self.baseline_nanodollars
                .saturating_sub(self.cost_nanodollars),
        )
        .as_usd()
    }

    /// Savings as a share of the baseline.
    pub fn savings_share(&self) -> f64 {
        ratio(
            self.baseline_nanodollars
                .saturating_sub(self.cost_nanodollars),
            self.baseline_nanodollars,
        )
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Nearest-rank percentiles of a histogram of microseconds; `None` for no samples.
fn percentiles(histogram: &Histogram<u64>) -> Option<Percentiles> {
    if histogram.is_empty() {
        return None;
    }
    let ms = |us: u64| us as f64 / 1e3;
    let at = |quantile: f64| ms(histogram.value_at_quantile(quantile));
    Some(Percentiles {
        p50_ms: at(0.5),
        p90_ms: at(0.9),
        p99_ms: at(0.99),
        p999_ms: at(0.999),
        max_ms: ms(histogram.max()),
    })
}

/// Milliseconds with the digits the histogram holds: microseconds below 10 ms.
fn ms(value: f64) -> String {
    if value < 10.0 {
        format!("{value:.3} ms")
    } else {
        format!("{value:.1} ms")
    }
}

impl fmt::Display for Percentiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            ms(self.p50_ms),
            ms(self.p90_ms),
            ms(self.p99_ms),
            ms(self.p999_ms),
            ms(self.max_ms)
        )
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rate = if self.elapsed_s > 0.0 {
            self.sent as f64 / self.elapsed_s
        } else {
            0.0
        };
        match self.mode {
            Mode::Open => writeln!(
                f,
                "open loop at {}/s: planned {}  sent {}  not sent (no free slot) {}  late {}  in {:.1} s ({rate:.1}/s)",
                self.rate.unwrap_or_default(),
                self.planned,
                self.sent,
                self.not_sent,
                self.late,
                self.elapsed_s
            )?,
            Mode::Closed => writeln!(
                f,
                "closed loop, {} in flight: sent {}  in {:.1} s ({rate:.1}/s)",
                self.concurrency, self.sent, self.elapsed_s
            )?,
        }
        let errors: Vec<String> = self
            .errors
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        writeln!(
            f,
            "ok {}  errors {}{}",
            self.ok,
            self.sent - self.ok,
            if errors.is_empty() {
                String::new()
            } else {
                format!(" ({})", errors.join(", "))
            }
        )?;
        writeln!(f, "latency from send      {}", self.latency)?;
        if let Some(scheduled) = self.latency_from_schedule {
            writeln!(f, "latency from schedule  {scheduled}")?;
        }
        if let Some(ttft) = self.ttft {
            writeln!(f, "time to first token    {ttft}")?;
        }
        writeln!(
            f,
            "strong share {:.1}% ({} strong, {} fast)",
            self.strong_share() * 100.0,
            self.strong,
            self.fast
        )?;
        write!(
            f,
            "cost ${:.6}  all-strong baseline ${:.6}  saved ${:.6} ({:.1}%)",
            self.cost_usd,
            self.baseline_cost_usd,
            self.savings_usd(),
            self.savings_share() * 100.0
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: Code, us: u64, tier: pb::Tier, cost: u64, baseline: u64) -> Reply {
        Reply {
            code,
            latency: Duration::from_micros(us),
            queued: Duration::ZERO,
            tier: Some(tier),
            cost: Nanodollars(cost),
            baseline: Nanodollars(baseline),
            ttft: None,
        }
    }

    fn tally(replies: &[Reply]) -> Tally {
        let mut tally = Tally::new().expect("histograms");
        for reply in replies {
            tally.sent();
            tally.add(reply);
        }
        tally
    }

    fn open(planned: u64, not_sent: u64) -> Pacing {
        Pacing {
            mode: Mode::Open,
            rate: Some(50.0),
            concurrency: 64,
            planned,
            not_sent,
            late: 0,
        }
    }

    /// Within the histogram's three significant digits.
    fn close(actual: f64, expected: f64) -> bool {
        (actual - expected).abs() <= expected * 1e-3
    }

    #[test]
    fn adds_up_replies() {
        let mut replies: Vec<Reply> = (1..=100)
            .map(|ms| reply(Code::Ok, ms * 1000, pb::Tier::Fast, 10, 120))
            .collect();
        replies[0].tier = Some(pb::Tier::Strong);
        replies[0].baseline = Nanodollars(10);
        replies.push(reply(Code::ResourceExhausted, 1, pb::Tier::Fast, 0, 0));
        let s = Summary::new(open(105, 4), &tally(&replies), Duration::from_secs(2));
        assert_eq!((s.sent, s.ok, s.not_sent), (101, 100, 4));
        assert_eq!(s.errors.get("resource_exhausted"), Some(&1));
        assert_eq!((s.strong, s.fast), (1, 99));
        let p = s.latency;
        for (actual, expected) in [
            (p.p50_ms, 50.0),
            (p.p90_ms, 90.0),
            (p.p99_ms, 99.0),
            (p.p999_ms, 100.0),
            (p.max_ms, 100.0),
        ] {
            assert!(close(actual, expected), "{actual} vs {expected}: {p:?}");
        }
        assert_eq!(s.cost_nanodollars, 1_000);
        assert_eq!(s.baseline_nanodollars, 10 + 99 * 120);
        assert!((s.strong_share() - 0.01).abs() < 1e-12);
        let text = s.to_string();
        assert!(text.contains("resource_exhausted 1"), "{text}");
        assert!(text.contains("strong share 1.0%"), "{text}");
        assert!(text.contains("p99.9 100.0"), "{text}");
    }

    #[test]
    fn sub_millisecond_latencies_keep_their_digits() {
        // 1,000 replies from 101 to 1,100 µs: a 1 ms resolution would call them all 0 or 1 ms.
        let replies: Vec<Reply> = (101..=1100)
            .map(|us| reply(Code::Ok, us, pb::Tier::Fast, 0, 0))
            .collect();
        let s = Summary::new(open(1000, 0), &tally(&replies), Duration::from_secs(1));
        assert_eq!(s.latency.p50_ms, 0.6);
        assert_eq!(s.latency.p90_ms, 1.0);
        assert_eq!(s.latency.p99_ms, 1.09);
        assert_eq!(s.latency.p999_ms, 1.099);
        assert_eq!(s.latency.max_ms, 1.1);
        assert!(s.to_string().contains("p50 0.600 ms"), "{s}");
    }

    #[test]
    fn latency_counts_from_the_send_and_the_schedule_apart() {
        // Each request left 0.5 ms behind its slot and took 1 ms from its send.
        let replies: Vec<Reply> = (0..10)
            .map(|_| Reply {
                queued: Duration::from_micros(500),
                ..reply(Code::Ok, 1000, pb::Tier::Fast, 0, 0)
            })
            .collect();
        let tally = tally(&replies);
        let s = Summary::new(open(10, 0), &tally, Duration::from_secs(1));
        assert_eq!(s.latency.p50_ms, 1.0);
        let scheduled = s.latency_from_schedule.expect("open loop");
        assert_eq!((scheduled.p50_ms, scheduled.max_ms), (1.5, 1.5));
        assert!(
            s.to_string()
                .contains("latency from schedule  p50 1.500 ms"),
            "{s}"
        );

        let closed = Pacing {
            mode: Mode::Closed,
            rate: None,
            concurrency: 4,
            ..Pacing::default()
        };
        let s = Summary::new(closed, &tally, Duration::from_secs(1));
        assert_eq!(
            s.latency_from_schedule, None,
            "a closed loop has no schedule"
        );
        let text = s.to_string();
        assert!(
            text.starts_with("closed loop, 4 in flight: sent 10"),
            "{text}"
        );
        assert!(!text.contains("schedule"), "{text}");
    }

    #[test]
    fn progress_shows_counts_and_latency_so_far() {
        let mut tally = tally(&[
            reply(Code::Ok, 2000, pb::Tier::Fast, 0, 0),
            reply(Code::Unavailable, 10, pb::Tier::Fast, 0, 0),
        ]);
        tally.sent();
        assert_eq!(
            tally.progress(Duration::from_millis(3200), Duration::from_secs(10)),
            "3/10 s  sent 3  ok 1  errors 1  in flight 1  p50 2.000 ms  p99 2.000 ms  max 2.000 ms"
        );
        let empty = Tally::new().expect("histograms");
        assert_eq!(
            empty.progress(Duration::ZERO, Duration::from_secs(10)),
            "0/10 s  sent 0  ok 0  errors 0  in flight 0"
        );
    }

    #[test]
    fn no_replies_is_all_zero() {
        let s = Summary::new(
            open(0, 0),
            &Tally::new().expect("histograms"),
            Duration::ZERO,
        );
        assert_eq!(s.latency, Percentiles::default());
        assert_eq!(s.ttft, None);
        assert_eq!(s.strong_share(), 0.0);
        assert_eq!(s.savings_share(), 0.0);
    }
}
