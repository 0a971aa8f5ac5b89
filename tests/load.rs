//! The load generator against an in-process router and simulator: the schedule sends exactly
//! rate × duration requests on time, its summary agrees with the router's own counters to the
//! nano-dollar, a saturated router shows up as requests not sent rather than a slower schedule,
//! a closed loop keeps its concurrency, and the `load` subcommand prints the same summary as
//! JSON (and no progress line when stderr is not a terminal). One test: the metrics recorder
//! is process-wide, so runs must not overlap.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::exposition::Scrape;

use bedrock_sim::LatencyConfig;
use prompt_router::load::{self, LoadOptions, Mode, Pace, Percentiles, Summary};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_keeps_its_schedule_and_agrees_with_the_router() {
    let router = common::start().await;
    router.sim().set_latency(LatencyConfig {
        ttft_ms: 5,
        per_token_ms: 0,
    });
    let options = LoadOptions {
        target: router.running.grpc_addr.to_string(),
        pace: Pace::Rate(40.0),
        duration: Duration::from_millis(2500),
        concurrency: 64,
        timeout: Duration::from_secs(10),
        seed: 11,
        progress: false,
    };
    let summary = load::run(
        &options,
        &common::throttled_mix("Busy? [sim:fail=ThrottlingException]"),
    )
    .await
    .expect("load runs");

    assert_eq!(summary.planned, 100, "rate × duration");
    assert_eq!(summary.sent + summary.not_sent, summary.planned);
    assert_eq!(summary.not_sent, 0, "{summary}");
    // The last slot is due at 2.475 s; the run cannot end before it.
    assert!(summary.elapsed_s >= 2.475, "{summary}");
    assert!(summary.elapsed_s < 2.475 + 10.0, "{summary}");
    let errors: u64 = summary.errors.values().sum();
    assert_eq!(summary.ok + errors, summary.sent);
    assert!(
        summary
            .errors
            .get("resource_exhausted")
            .is_some_and(|n| *n > 0),
        "{summary}"
    );
    assert!(
        summary.strong > 0 && summary.fast > 0,
        "both tiers: {summary}"
    );
    assert_eq!(summary.strong + summary.fast, summary.ok);
    assert!(summary.ttft.is_some(), "some samples stream");
    assert_eq!(summary.mode, Mode::Open);
    assert_ordered(&summary.latency);
    // Counted from its slot, every request's latency is its latency from the send plus the
    // wait to be sent, so each percentile is at least the one from the send.
    let scheduled = summary.latency_from_schedule.expect("open loop");
    assert_ordered(&scheduled);
    for (from_slot, from_send) in [
        (scheduled.p50_ms, summary.latency.p50_ms),
        (scheduled.p90_ms, summary.latency.p90_ms),
        (scheduled.p99_ms, summary.latency.p99_ms),
        (scheduled.p999_ms, summary.latency.p999_ms),
        (scheduled.max_ms, summary.latency.max_ms),
    ] {
        assert!(from_slot >= from_send, "{summary}");
    }
    // The simulator's 5 ms to first token are in every answer, from the send.
    assert!(summary.latency.p50_ms >= 5.0, "{summary}");

    // The router counted the same requests, tiers, failures and money.
    let scrape = Scrape::parse(&common::http_get(&router.metrics_url()).await);
    let requests = "router_requests_total";
    assert_eq!(scrape.sum(requests, &[]), summary.sent as f64);
    assert_eq!(scrape.sum(requests, &["outcome=\"ok\""]), summary.ok as f64);
    for (code, count) in &summary.errors {
        assert_eq!(
            scrape.sum(requests, &[&format!("outcome=\"{code}\"")]),
            *count as f64,
            "{code}"
        );
    }
    let ok_tier =
        |tier: &str| scrape.sum(requests, &["outcome=\"ok\"", &format!("tier=\"{tier}\"")]);
    assert_eq!(ok_tier("strong"), summary.strong as f64);
    assert_eq!(ok_tier("fast"), summary.fast as f64);
    assert_eq!(
        scrape.nanodollars("router_cost_usd_total"),
        summary.cost_nanodollars
    );
    assert_eq!(
        scrape.nanodollars("router_baseline_cost_usd_total"),
        summary.baseline_nanodollars
    );
    assert!(summary.savings_share() > 0.0 && summary.savings_share() < 1.0);

    // The subcommand: same machinery, summary as JSON on stdout.
    let output = load_cli(&options.target, &["--rate", "20/s", "--duration", "500ms"]).await;
    let cli: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON summary");
    assert_eq!(cli["planned"], 10);
    assert_eq!(cli["sent"], 10);
    assert_eq!(cli["ok"], 10, "built-in samples all succeed: {cli}");

    // A saturated router: two slots, answers that take 300 ms, 20 slots a second. Requests
    // that find no free slot are counted, and the schedule does not slow down for them.
    router.sim().set_latency(LatencyConfig {
        ttft_ms: 300,
        per_token_ms: 0,
    });
    let saturated = LoadOptions {
        pace: Pace::Rate(20.0),
        duration: Duration::from_secs(1),
        concurrency: 2,
        ..options
    };
    let summary: Summary = load::run(
        &saturated,
        &common::throttled_mix("Busy? [sim:fail=ThrottlingException]"),
    )
    .await
    .expect("load runs");
    assert_eq!(summary.planned, 20);
    assert_eq!(summary.sent + summary.not_sent, 20);
    assert!(summary.not_sent >= 10, "{summary}");
    assert!(summary.sent >= 2, "{summary}");
    assert!(summary.latency.p50_ms >= 300.0, "{summary}");
    assert!(
        summary.elapsed_s < 2.0,
        "the schedule did not stretch: {summary}"
    );

    // A closed loop: three requests in flight, each sent when the one before it is answered.
    // Every answer takes at least 100 ms, so in 1 s a worker sends at most 10 requests, plus
    // the one it started just before the end — however fast or slow the machine.
    router.sim().set_latency(LatencyConfig {
        ttft_ms: 100,
        per_token_ms: 0,
    });
    let before = Scrape::parse(&common::http_get(&router.metrics_url()).await)
        .sum("router_requests_total", &[]);
    let closed = LoadOptions {
        pace: Pace::ClosedLoop,
        duration: Duration::from_secs(1),
        concurrency: 3,
        ..saturated
    };
    let summary = load::run(&closed, &load::samples::built_in())
        .await
        .expect("load runs");
    assert_eq!(summary.mode, Mode::Closed);
    assert_eq!(summary.concurrency, 3);
    assert_eq!((summary.planned, summary.not_sent, summary.late), (0, 0, 0));
    assert!(
        (3..=33).contains(&summary.sent),
        "3 workers, each at most 11 requests of ≥ 100 ms in 1 s: {summary}"
    );
    assert_eq!(summary.ok, summary.sent, "{summary}");
    assert_eq!(summary.latency_from_schedule, None, "no schedule");
    assert_ordered(&summary.latency);
    assert!(summary.latency.p50_ms >= 100.0, "{summary}");
    assert!(summary.elapsed_s >= 1.0, "{summary}");
    let after = Scrape::parse(&common::http_get(&router.metrics_url()).await)
        .sum("router_requests_total", &[]);
    assert_eq!(
        after - before,
        summary.sent as f64,
        "the router counted the same"
    );

    // The subcommand's closed loop; stderr is a pipe here, so no progress line is written.
    let output = load_cli(
        &closed.target,
        &["--closed-loop", "--concurrency", "2", "--duration", "300ms"],
    )
    .await;
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let cli: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON summary");
    assert_eq!(cli["mode"], "closed");
    assert_eq!(cli["concurrency"], 2);
    assert!(cli["sent"].as_u64().is_some_and(|n| n >= 2), "{cli}");
    assert!(cli["latency"]["p999_ms"].is_number(), "{cli}");
    assert!(cli["latency_from_schedule"].is_null(), "{cli}");
}

/// Runs `prompt-router load --target TARGET ARGS… --json`, which must succeed.
async fn load_cli(target: &str, args: &[&str]) -> std::process::Output {
    let mut command = std::process::Command::new(common::process::BIN);
    command
        .args(["load", "--target", target])
        .args(args)
        .arg("--json");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn assert_ordered(p: &Percentiles) {
    assert!(
        p.p50_ms > 0.0
            && p.p50_ms <= p.p90_ms
            && p.p90_ms <= p.p99_ms
            && p.p99_ms <= p.p999_ms
            && p.p999_ms <= p.max_ms,
        "{p:?}"
    );
}
