//! 1,000 requests while the first region throttles 20% of calls and fails 5% with a 5xx: every
//! request must succeed, and the metrics must count exactly the retries and fallbacks the
//! replies report. Alone in its binary because it checks process-wide counters.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::{collections::BTreeMap, sync::Arc};

use common::{ask, start};
use prompt_router::{
    pb,
    sim::{BedrockError, Fault, FaultConfig, FaultRule},
};

const REQUESTS: usize = 1_000;
const CONCURRENCY: usize = 32;

fn rule(error: BedrockError, rate: f64) -> FaultRule {
    FaultRule {
        fault: Fault::Http(error),
        rate,
        region: Some("us-east-1".to_owned()),
        model: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_5xx_on_the_first_region_lose_no_request() {
    let router = start().await;
    // Rules are tried in order; the second fires on 1/16 of the 80% the first let through: 5%.
    router
        .sim()
        .set_faults(FaultConfig {
            rules: vec![
                rule(BedrockError::ThrottlingException, 0.20),
                rule(BedrockError::ServiceUnavailableException, 0.0625),
            ],
        })
        .unwrap();

    let gate = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..REQUESTS {
        let permit = Arc::clone(&gate).acquire_owned().await.unwrap();
        let mut client = router.client.clone();
        calls.spawn(async move {
            let reply = client
                .converse(ask(&format!("Question number {i}: what is {i} + {i}?")))
                .await;
            drop(permit);
            reply.map(tonic::Response::into_inner)
        });
    }
    let mut attempts = 0u64;
    let mut fallbacks = BTreeMap::<i32, u64>::new();
    let mut failures = Vec::new();
    while let Some(joined) = calls.join_next().await {
        match joined.unwrap() {
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

    let scrape = common::exposition::Scrape::parse(&common::http_get(&router.metrics_url()).await);
    assert_eq!(scrape.sum("router_retries_total", &[""]), retries as f64);
    assert_eq!(
        scrape.sum("router_fallbacks_total", &["kind=\"region\""]),
        region_fallbacks as f64
    );
    assert_eq!(
        scrape.sum("router_requests_total", &["outcome=\"ok\""]),
        REQUESTS as f64
    );
    assert_eq!(
        scrape.sum("router_upstream_errors_total", &["region=\"us-east-1\""]),
        retries as f64,
        "every upstream error was in the first region"
    );
    assert_eq!(
        scrape.types.get("router_circuit_open").map(String::as_str),
        Some("gauge")
    );
    println!(
        "requests {REQUESTS}, ok {REQUESTS}, attempts {attempts}, retries {retries}, region fallbacks {region_fallbacks}, \
         throttled {}, unavailable {}",
        scrape.sum("router_upstream_errors_total", &["kind=\"throttling\""]),
        scrape.sum(
            "router_upstream_errors_total",
            &["kind=\"service_unavailable\""]
        ),
    );
}
