//! Where a request's time goes, as replies and `/metrics` report it: the router's own work, the
//! AWS SDK client's (building, signing, deserialising) and upstream (from the hand-over to the
//! transport to the response), through the real SDK against the simulator. One test: the
//! metrics recorder is process-wide, so the requests whose histograms are checked must be
//! this file's only ones.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{ask, exposition::Scrape, http_get, start};
use prompt_router::pb::{self, converse_stream_event::Event};

/// The parts add up to the whole, whatever the machine's speed: every figure is taken from the
/// same instants, so only float rounding may differ.
fn assert_adds_up(latency: &pb::Latency, client_ms: f64) {
    for (name, value) in [
        ("upstream_ms", latency.upstream_ms),
        ("overhead_us", latency.overhead_us),
        ("total_ms", latency.total_ms),
        ("retry_wait_ms", latency.retry_wait_ms),
        ("sdk_us", latency.sdk_us),
        ("router_us", latency.router_us),
    ] {
        assert!(value.is_finite() && value >= 0.0, "{name}: {latency:?}");
    }
    assert!(latency.sdk_us > 0.0, "the SDK's work is seen: {latency:?}");
    assert!(latency.router_us > 0.0, "{latency:?}");
    assert!(latency.upstream_ms > 0.0, "{latency:?}");
    assert!(
        (latency.router_us + latency.sdk_us - latency.overhead_us).abs() < 0.01,
        "overhead = router + sdk: {latency:?}"
    );
    let parts = latency.router_us / 1e3
        + latency.sdk_us / 1e3
        + latency.upstream_ms
        + latency.retry_wait_ms;
    assert!(
        (parts - latency.total_ms).abs() < 0.001,
        "router + sdk + upstream + retry wait = total: {latency:?}"
    );
    assert!(
        latency.total_ms <= client_ms,
        "the router's total ({} ms) is inside the client's round trip ({client_ms} ms)",
        latency.total_ms
    );
}

fn elapsed_ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_and_metrics_split_router_sdk_and_upstream_time() {
    let mut router = start().await;

    // Zero simulated latency: upstream time is the loopback round trip and the simulator.
    let sent = Instant::now();
    let reply = router.ask("What is the capital of France?").await.unwrap();
    let latency = reply.latency.unwrap();
    assert_adds_up(&latency, elapsed_ms(sent));
    assert_eq!(reply.attempts, 1);

    // A slow model: its 300 ms are upstream time, none of them the SDK's or the router's. Had
    // the hand-over to the transport not been marked, the wait would read as SDK time.
    let sent = Instant::now();
    let reply = router
        .ask("What is the capital of Peru? [sim:ttft=300]")
        .await
        .unwrap();
    let latency = reply.latency.unwrap();
    assert_adds_up(&latency, elapsed_ms(sent));
    assert!(latency.upstream_ms >= 300.0, "{latency:?}");
    assert!(latency.sdk_us < 300_000.0, "{latency:?}");

    // A stream: the SDK's part ends when the response head arrives and the stream is handed
    // over; the model's time to first token and every later event are upstream time.
    let sent = Instant::now();
    let (events, status) = router
        .stream(ask("Tell me about Lima. [sim:ttft=300]"))
        .await;
    assert!(status.is_none(), "{status:?}");
    let metadata = events
        .iter()
        .find_map(|e| match e {
            Event::Metadata(m) => Some(m.clone()),
            _ => None,
        })
        .expect("metadata event");
    let latency = metadata.latency.unwrap();
    assert_adds_up(&latency, elapsed_ms(sent));
    assert!(latency.upstream_ms >= 300.0, "{latency:?}");
    assert!(latency.sdk_us < 300_000.0, "{latency:?}");
    assert!(latency.time_to_first_token_ms >= 300.0, "{latency:?}");

    // A retry: each attempt's SDK and upstream time is summed, the backoff kept apart.
    let sent = Instant::now();
    let reply = router
        .ask("Hello [sim:fail=ThrottlingException;region=us-east-1]")
        .await
        .unwrap();
    assert_eq!(reply.attempts, 2);
    let latency = reply.latency.unwrap();
    assert!(latency.retry_wait_ms > 0.0, "{latency:?}");
    assert_adds_up(&latency, elapsed_ms(sent));

    // /metrics: one observation per request that went upstream in each part's histogram,
    // whose sums add up as the replies do.
    let url = router.metrics_url();
    let mut scrape = Scrape::parse(&http_get(&url).await);
    // The last request's record is emitted just after its reply is sent.
    for _ in 0..500 {
        if scrape.value("router_overhead_seconds_count") == 4.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        scrape = Scrape::parse(&http_get(&url).await);
    }
    for family in [
        "router_overhead_seconds",
        "router_sdk_overhead_seconds",
        "router_own_overhead_seconds",
    ] {
        assert_eq!(
            scrape.types.get(family).map(String::as_str),
            Some("histogram"),
            "{family}"
        );
        assert_eq!(scrape.value(&format!("{family}_count")), 4.0, "{family}");
        assert!(
            scrape
                .series
                .contains_key(&format!("{family}_bucket{{le=\"0.00025\"}}")),
            "{family} has the explicit µs buckets"
        );
    }
    let sum = |family: &str| scrape.value(&format!("{family}_sum"));
    assert!(sum("router_sdk_overhead_seconds") > 0.0);
    assert!(
        (sum("router_own_overhead_seconds") + sum("router_sdk_overhead_seconds")
            - sum("router_overhead_seconds"))
        .abs()
            < 1e-9,
        "own + sdk = overhead"
    );
    // Five upstream calls (the retried request made two), each timed from its hand-over.
    assert_eq!(
        scrape.sum("router_upstream_duration_seconds_count", &[]),
        5.0
    );
    assert!(scrape.sum("router_upstream_duration_seconds_sum", &[]) >= 0.6);
}
