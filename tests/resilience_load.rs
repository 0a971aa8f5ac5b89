//! Resilience under load, with faults the simulator injects at runtime:
//!
//! - the first region throttles 20% of calls and fails 5% with a 5xx: no request is lost, and
//!   the metrics count exactly the retries and fallbacks the replies report;
//! - every target does so, with the default config: at least 99% of requests succeed inside a
//!   20 s deadline (the README's resilience section has the arithmetic);
//! - a throttling storm (80% of every call for 2 s, then recovery): innocent traffic fails at
//!   most in proportion to the storm while it lasts, and not at all once Bedrock has recovered
//!   (the storm-and-recovery figure of the README).
//!
//! The metrics recorder is process-wide, so the tests take turns and read counter deltas.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use bedrock_sim::{BedrockError, Fault, FaultConfig, FaultRule};
use common::{TestRouter, ask, exposition::Scrape, start};
use prompt_router::pb;
use tonic::Code;

/// The tests share the process-wide recorder and the machine's two cores: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const CONCURRENCY: usize = 32;
/// The deadline every request of these tests carries.
const DEADLINE: Duration = Duration::from_secs(20);

fn rule(error: BedrockError, rate: f64, region: Option<&str>) -> FaultRule {
    FaultRule {
        fault: Fault::Http(error),
        rate,
        region: region.map(str::to_owned),
        model: None,
    }
}

/// 20% throttling and 5% 503s: rules are tried in order, and the second fires on 1/16 of the
/// 80% the first let through.
fn throttling_and_5xx(region: Option<&str>) -> FaultConfig {
    FaultConfig {
        rules: vec![
            rule(BedrockError::ThrottlingException, 0.20, region),
            rule(BedrockError::ServiceUnavailableException, 0.0625, region),
        ],
    }
}

fn request(i: usize) -> tonic::Request<pb::ConverseRequest> {
    let mut request = tonic::Request::new(ask(&format!("Question number {i}: what is {i} + {i}?")));
    request.set_timeout(DEADLINE);
    request
}

async fn scrape(router: &TestRouter) -> Scrape {
    Scrape::parse(&common::http_get(&router.metrics_url()).await)
}

/// Sends `n` requests, at most [`CONCURRENCY`] at once, and returns every result.
async fn closed_loop(
    router: &TestRouter,
    n: usize,
) -> Vec<Result<pb::ConverseResponse, tonic::Status>> {
    let gate = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = Arc::clone(&gate).acquire_owned().await.unwrap();
        let mut client = router.client.clone();
        calls.spawn(async move {
            let reply = client.converse(request(i)).await;
            drop(permit);
            reply.map(tonic::Response::into_inner)
        });
    }
    let mut results = Vec::with_capacity(n);
    while let Some(joined) = calls.join_next().await {
        results.push(joined.unwrap());
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_5xx_on_the_first_region_lose_no_request() {
    const REQUESTS: usize = 1_000;
    let _turn = ONE_AT_A_TIME.lock().await;
    let router = start().await;
    let before = scrape(&router).await;
    router
        .sim()
        .set_faults(throttling_and_5xx(Some("us-east-1")))
        .unwrap();

    let mut attempts = 0u64;
    let mut fallbacks = BTreeMap::<i32, u64>::new();
    let mut failures = Vec::new();
    for result in closed_loop(&router, REQUESTS).await {
        match result {
            Ok(reply) => {
                attempts += u64::from(reply.attempts);
                if let Some(fallback) = reply.fallback {
                    *fallbacks.entry(fallback.kind).or_default() += 1;
                }
            }
            Err(status) => failures.push(status),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {REQUESTS} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );

    let stats = router.sim().stats();
    let retries = attempts - REQUESTS as u64;
    assert_eq!(
        stats.received, attempts,
        "the simulator saw every attempt the replies report"
    );
    assert_eq!(
        stats.failed, retries,
        "each failed attempt was retried once"
    );
    assert!(
        retries > 100,
        "about a quarter of first attempts fail: {retries}"
    );
    let region_fallbacks = fallbacks
        .get(&(pb::FallbackKind::Region as i32))
        .copied()
        .unwrap_or(0);
    assert_eq!(fallbacks.len(), 1, "only region fallbacks: {fallbacks:?}");

    let after = scrape(&router).await;
    let delta =
        |family: &str, filters: &[&str]| after.sum(family, filters) - before.sum(family, filters);
    assert_eq!(delta("router_retries_total", &[""]), retries as f64);
    assert_eq!(
        delta("router_fallbacks_total", &["kind=\"region\""]),
        region_fallbacks as f64
    );
    assert_eq!(
        delta("router_requests_total", &["outcome=\"ok\""]),
        REQUESTS as f64
    );
    assert_eq!(
        delta("router_upstream_errors_total", &["region=\"us-east-1\""]),
        retries as f64,
        "every upstream error was in the first region"
    );
    assert_eq!(
        after.types.get("router_circuit_open").map(String::as_str),
        Some("gauge")
    );
    println!(
        "requests {REQUESTS}, ok {REQUESTS}, attempts {attempts}, retries {retries}, region fallbacks {region_fallbacks}, \
         throttled {}, unavailable {}",
        delta("router_upstream_errors_total", &["kind=\"throttling\""]),
        delta(
            "router_upstream_errors_total",
            &["kind=\"service_unavailable\""]
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_5xx_on_every_target_leave_99_percent_answered() {
    const REQUESTS: usize = 2_000;
    let _turn = ONE_AT_A_TIME.lock().await;
    let router = start().await;
    let before = scrape(&router).await;
    router.sim().set_faults(throttling_and_5xx(None)).unwrap();

    let started = Instant::now();
    let mut by_attempts = BTreeMap::<u32, u64>::new();
    let mut failures = BTreeMap::<String, u64>::new();
    for result in closed_loop(&router, REQUESTS).await {
        match result {
            Ok(reply) => *by_attempts.entry(reply.attempts).or_default() += 1,
            Err(status) => *failures.entry(format!("{:?}", status.code())).or_default() += 1,
        }
    }
    let took = started.elapsed();
    let failed: u64 = failures.values().sum();
    let after = scrape(&router).await;
    let delta =
        |family: &str, filters: &[&str]| after.sum(family, filters) - before.sum(family, filters);
    // Every fallback starts with a region move, so the region count is the requests that fell
    // back; every retry moves to another target, so retries are what counting moves would give.
    let fell_back = delta("router_fallbacks_total", &["kind=\"region\""]);
    let moves = delta("router_retries_total", &[]);
    println!(
        "faults on every target (20% throttling, 5% 503): {} of {REQUESTS} ok ({:.2}%), \
         failed {failures:?}, answered after n attempts {by_attempts:?}, retries refused by the \
         budget {}, {:.1} s; requests that fell back {fell_back} ({} per kind), moves {moves} \
         ({:+.0}%)",
        REQUESTS as u64 - failed,
        100.0 * (REQUESTS as u64 - failed) as f64 / REQUESTS as f64,
        delta("router_retry_budget_exhausted_total", &[]),
        took.as_secs_f64(),
        delta("router_fallbacks_total", &[]),
        100.0 * (moves / fell_back - 1.0),
    );
    assert!(
        failed * 100 <= REQUESTS as u64,
        "more than 1% failed: {failures:?} of {REQUESTS}"
    );
}

/// One request of the storm test: when it started, relative to the run, and how it ended.
struct Sent {
    at: Duration,
    ended: Duration,
    code: Code,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttling_storm_fails_no_request_once_bedrock_recovers() {
    const RATE: f64 = 100.0;
    const CALM: Duration = Duration::from_secs(2);
    const STORM: Duration = Duration::from_secs(2);
    const AFTER: Duration = Duration::from_secs(4);
    const STORM_RATE: f64 = 0.8;
    let _turn = ONE_AT_A_TIME.lock().await;
    let router = start().await;
    let before = scrape(&router).await;
    let storm = FaultConfig {
        rules: vec![rule(BedrockError::ThrottlingException, STORM_RATE, None)],
    };

    // Open loop: request i is due at i / RATE whatever happened to the others.
    let total = CALM + STORM + AFTER;
    let n = (total.as_secs_f64() * RATE) as usize;
    let run = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    let (mut storm_began, mut storm_ended) = (None, None);
    for i in 0..n {
        let due = Duration::from_secs_f64(i as f64 / RATE);
        tokio::time::sleep_until((run + due).into()).await;
        if storm_began.is_none() && due >= CALM {
            router.sim().set_faults(storm.clone()).unwrap();
            storm_began = Some(run.elapsed());
        }
        if storm_ended.is_none() && due >= CALM + STORM {
            router.sim().set_faults(FaultConfig::default()).unwrap();
            storm_ended = Some(run.elapsed());
        }
        let mut client = router.client.clone();
        calls.spawn(async move {
            let at = run.elapsed();
            let code = match client.converse(request(i)).await {
                Ok(_) => Code::Ok,
                Err(status) => status.code(),
            };
            Sent {
                at,
                ended: run.elapsed(),
                code,
            }
        });
    }
    let mut sent = Vec::with_capacity(n);
    while let Some(joined) = calls.join_next().await {
        sent.push(joined.unwrap());
    }
    let (began, ended) = (storm_began.unwrap(), storm_ended.unwrap());

    // A request is caught in the storm if any of its attempts could have met it.
    let caught = |s: &Sent| s.at < ended && s.ended > began;
    let failed = |s: &Sent| s.code != Code::Ok;
    let in_storm = sent.iter().filter(|s| caught(s)).count();
    let failed_in_storm = sent.iter().filter(|s| caught(s) && failed(s)).count();
    let after: Vec<&Sent> = sent.iter().filter(|s| s.at >= ended).collect();
    let failed_after = after.iter().filter(|s| failed(s)).count();
    let failed_before = sent
        .iter()
        .filter(|s| s.ended <= began && failed(s))
        .count();
    let mut codes = BTreeMap::<String, u64>::new();
    for s in sent.iter().filter(|s| failed(s)) {
        *codes.entry(format!("{:?}", s.code)).or_default() += 1;
    }
    let metrics = scrape(&router).await;
    let delta =
        |family: &str, filters: &[&str]| metrics.sum(family, filters) - before.sum(family, filters);
    let stats = router.sim().stats();
    println!(
        "throttling storm: {n} requests at {RATE}/s; {:.0}% throttling on every target from \
         {:.2} s to {:.2} s; caught in the storm {in_storm}, failed {failed_in_storm} \
         ({:.1}%: {codes:?}); after recovery {} sent, {failed_after} failed; before it \
         {failed_before} failed; {} upstream attempts, {} retries, {} refused by the retry \
         budget, targets ejected at the end {}",
        STORM_RATE * 100.0,
        began.as_secs_f64(),
        ended.as_secs_f64(),
        100.0 * failed_in_storm as f64 / in_storm.max(1) as f64,
        after.len(),
        stats.received,
        delta("router_retries_total", &[]),
        delta("router_retry_budget_exhausted_total", &[]),
        metrics.sum("router_circuit_open", &[]),
    );
    assert_eq!(failed_before, 0, "nothing fails before the storm");
    assert_eq!(
        failed_after, 0,
        "once Bedrock recovers every request succeeds ({codes:?})"
    );
    assert!(
        failed_in_storm as f64 <= STORM_RATE * in_storm as f64,
        "during the storm requests fail at most as often as single calls do: \
         {failed_in_storm} of {in_storm}"
    );
    assert_eq!(
        metrics.sum("router_circuit_open", &[]),
        0.0,
        "throttling ejected a target"
    );
}
