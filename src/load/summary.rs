//! Adding up a load run's replies into the numbers an operator compares with the dashboard.

use std::{collections::BTreeMap, fmt, time::Duration};

use serde::Serialize;
use tonic::Code;

use crate::{cost::Nanodollars, pb, server::code_label};

/// How one scheduled request ended, as the load generator saw it.
#[derive(Debug, Clone)]
pub struct Reply {
    /// `Ok`, or the status code of the error.
    pub code: Code,
    /// From the request's scheduled send time to its last byte.
    pub latency: Duration,
    /// The tier of the decision, when the reply carried one.
    pub tier: Option<pb::Tier>,
    /// Cost the router reported (answered requests only).
    pub cost: Nanodollars,
    /// All-strong cost the router reported (answered requests only).
    pub baseline: Nanodollars,
    /// From the scheduled send time to the first streamed token.
    pub ttft: Option<Duration>,
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

/// The result of a load run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Requests the schedule called for (rate × duration).
    pub planned: u64,
    /// Requests sent.
    pub sent: u64,
    /// Scheduled requests not sent because every concurrency slot was busy at their time.
    pub not_sent: u64,
    /// Requests sent more than [`super::LATE_AFTER`] behind their scheduled time.
    pub late: u64,
    /// Requests answered with OK.
    pub ok: u64,
    /// Failed requests by status code (the router's metric label form, e.g. `resource_exhausted`).
    pub errors: BTreeMap<String, u64>,
    /// Latency of OK replies, measured from each request's scheduled time.
    pub latency: Percentiles,
    /// Time to first token of OK streamed replies, from the scheduled time.
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
    /// Wall time from the first slot to the last reply, in seconds.
    pub elapsed_s: f64,
}

impl Summary {
    /// Adds up `replies`; the scheduling counts come from the run.
    pub fn new(
        planned: u64,
        not_sent: u64,
        late: u64,
        replies: &[Reply],
        elapsed: Duration,
    ) -> Self {
        let mut summary = Self {
            planned,
            sent: u64::try_from(replies.len()).unwrap_or(u64::MAX),
            not_sent,
            late,
            elapsed_s: elapsed.as_secs_f64(),
            ..Self::default()
        };
        let mut latencies = Vec::new();
        let mut ttfts = Vec::new();
        let (mut cost, mut baseline) = (0u64, 0u64);
        for reply in replies {
            if reply.code != Code::Ok {
                *summary
                    .errors
                    .entry(code_label(reply.code).to_owned())
                    .or_default() += 1;
                continue;
            }
            summary.ok += 1;
            latencies.push(reply.latency);
            ttfts.extend(reply.ttft);
            match reply.tier {
                Some(pb::Tier::Strong) => summary.strong += 1,
                Some(pb::Tier::Fast) => summary.fast += 1,
                Some(pb::Tier::Unspecified) | None => {}
            }
            cost += reply.cost.0;
            baseline += reply.baseline.0;
        }
        summary.latency = percentiles(&mut latencies).unwrap_or_default();
        summary.ttft = percentiles(&mut ttfts);
        summary.cost_nanodollars = cost;
        summary.baseline_nanodollars = baseline;
        summary.cost_usd = Nanodollars(cost).as_usd();
        summary.baseline_cost_usd = Nanodollars(baseline).as_usd();
        summary
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

/// Nearest-rank percentiles; `None` for no samples.
fn percentiles(samples: &mut [Duration]) -> Option<Percentiles> {
    samples.sort_unstable();
    let max = *samples.last()?;
    let rank = |p: f64| {
        // Nearest rank: the smallest sample with at least p of the samples at or below it.
        let index = (p * samples.len() as f64).ceil() as usize;
        samples[index.clamp(1, samples.len()) - 1]
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Some(Percentiles {
        p50_ms: ms(rank(0.50)),
        p99_ms: ms(rank(0.99)),
        max_ms: ms(max),
    })
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rate = if self.elapsed_s > 0.0 {
            self.sent as f64 / self.elapsed_s
        } else {
            0.0
        };
        writeln!(
            f,
            "planned {}  sent {}  not sent (no free slot) {}  late {}  in {:.1} s ({rate:.1}/s)",
            self.planned, self.sent, self.not_sent, self.late, self.elapsed_s
        )?;
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
        writeln!(
            f,
            "latency p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
            self.latency.p50_ms, self.latency.p99_ms, self.latency.max_ms
        )?;
        if let Some(ttft) = self.ttft {
            writeln!(
                f,
                "time to first token p50 {:.1} ms  p99 {:.1} ms",
                ttft.p50_ms, ttft.p99_ms
            )?;
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

    fn reply(code: Code, ms: u64, tier: pb::Tier, cost: u64, baseline: u64) -> Reply {
        Reply {
            code,
            latency: Duration::from_millis(ms),
            tier: Some(tier),
            cost: Nanodollars(cost),
            baseline: Nanodollars(baseline),
            ttft: None,
        }
    }

    #[test]
    fn adds_up_replies() {
        let mut replies: Vec<Reply> = (1..=100)
            .map(|ms| reply(Code::Ok, ms, pb::Tier::Fast, 10, 120))
            .collect();
        replies[0].tier = Some(pb::Tier::Strong);
        replies[0].baseline = Nanodollars(10);
        replies.push(reply(Code::ResourceExhausted, 1, pb::Tier::Fast, 0, 0));
        let s = Summary::new(105, 4, 0, &replies, Duration::from_secs(2));
        assert_eq!((s.sent, s.ok, s.not_sent), (101, 100, 4));
        assert_eq!(s.errors.get("resource_exhausted"), Some(&1));
        assert_eq!((s.strong, s.fast), (1, 99));
        assert_eq!(s.latency.p50_ms, 50.0);
        assert_eq!(s.latency.p99_ms, 99.0);
        assert_eq!(s.latency.max_ms, 100.0);
        assert_eq!(s.cost_nanodollars, 1_000);
        assert_eq!(s.baseline_nanodollars, 10 + 99 * 120);
        assert!((s.strong_share() - 0.01).abs() < 1e-12);
        let text = s.to_string();
        assert!(text.contains("resource_exhausted 1"), "{text}");
        assert!(text.contains("strong share 1.0%"), "{text}");
    }

    #[test]
    fn no_replies_is_all_zero() {
        let s = Summary::new(0, 0, 0, &[], Duration::ZERO);
        assert_eq!(s.latency, Percentiles::default());
        assert_eq!(s.ttft, None);
        assert_eq!(s.strong_share(), 0.0);
        assert_eq!(s.savings_share(), 0.0);
    }
}
