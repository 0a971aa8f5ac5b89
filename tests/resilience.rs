//! The router keeps answering when Bedrock does not: retries and fallbacks, fail-fast when
//! everything fails, deadlines that reach the upstream call, streams, outlier ejection and
//! overload. Faults come from the simulator (prompt directives and runtime rate rules).
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use bedrock_sim::{BedrockError, Fault, FaultConfig, FaultRule};
use common::{ask, ask_forced, reply_text, start, start_with};
use prompt_router::pb;
use tonic::Code;

const SONNET: &str = "anthropic.claude-3-5-sonnet-20241022-v2:0";
const HAIKU_US: &str = "us.anthropic.claude-3-haiku-20240307-v1:0";

fn with_deadline<T>(message: T, deadline: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(deadline);
    request
}

#[tokio::test]
async fn a_throttled_call_moves_to_the_next_region() {
    let mut router = start().await;
    let reply = router
        .ask("Hello [sim:fail=ThrottlingException;region=us-east-1]")
        .await
        .expect("answered from the fallback region");
    assert_eq!(reply.attempts, 2);
    // The backoff is reported apart: it is neither Bedrock's time nor the router's own work.
    let latency = reply.latency.unwrap();
    assert!(latency.retry_wait_ms > 0.0, "{latency:?}");
    let parts = latency.upstream_ms + latency.retry_wait_ms + latency.overhead_us / 1e3;
    assert!((latency.total_ms - parts).abs() < 0.01, "{latency:?}");
    let decision = reply.decision.unwrap();
    assert_eq!(
        (decision.model_id.as_str(), decision.region.as_str()),
        (HAIKU_US, "us-west-2")
    );
    let fallback = reply.fallback.expect("the reply says what happened");
    assert_eq!(fallback.kind, pb::FallbackKind::Region as i32);
    assert_eq!(
        (fallback.from_region.as_str(), fallback.reason.as_str()),
        ("us-east-1", "throttling")
    );
    let regions: Vec<_> = router
        .sim()
        .received()
        .iter()
        .map(|r| r.source_region.clone().unwrap())
        .collect();
    assert_eq!(regions, ["us-east-1", "us-west-2"]);
}

#[tokio::test]
async fn every_target_failing_fails_fast_with_the_right_code() {
    let mut router = start_with(|config| config.resilience.breaker_failures = 1_000).await;
    for (kind, code) in [
        ("ThrottlingException", Code::ResourceExhausted),
        ("ServiceUnavailableException", Code::Unavailable),
        ("InternalServerException", Code::Unavailable),
        ("ModelNotReadyException", Code::Unavailable),
    ] {
        let started = Instant::now();
        let status = router
            .client
            .converse(with_deadline(
                ask(&format!("Hi [sim:fail={kind}]")),
                Duration::from_secs(10),
            ))
            .await
            .expect_err(kind);
        let took = started.elapsed();
        assert_eq!(status.code(), code, "{kind}: {status:?}");
        assert!(
            status.message().contains("after 4 attempts"),
            "{kind}: {}",
            status.message()
        );
        assert!(
            took < Duration::from_secs(1),
            "{kind}: failed in {took:?}, well inside the 10 s deadline"
        );
        println!(
            "every target failing with {kind}: {:?} after 4 attempts in {took:?}",
            status.code()
        );
    }
    // A refusal of the request itself is final: one attempt, no retry.
    let status = router
        .client
        .converse(ask("Hi [sim:fail=ValidationException]"))
        .await
        .expect_err("final");
    assert_eq!(status.code(), Code::InvalidArgument);
    let validation_attempts = router
        .sim()
        .received()
        .iter()
        .filter(|r| {
            r.body["messages"][0]["content"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .contains("ValidationException")
        })
        .count();
    assert_eq!(validation_attempts, 1);
}

#[tokio::test]
async fn a_strong_request_degrades_to_fast_when_strong_fails_everywhere() {
    let mut router = start_with(|config| config.routing.threshold = Some(0.0)).await;
    let prompt = format!("Explain monads [sim:fail=ServiceUnavailableException;model={SONNET}]");
    let reply = router.ask(&prompt).await.expect("degraded answer");
    let decision = reply.decision.clone().unwrap();
    assert_eq!(decision.tier, pb::Tier::Fast as i32);
    assert_eq!(decision.basis, pb::DecisionBasis::Fallback as i32);
    assert!(reply_text(&reply).starts_with(&format!("[{HAIKU_US}]")));
    let fallback = reply.fallback.unwrap();
    assert_eq!(fallback.kind, pb::FallbackKind::Degrade as i32);
    assert_eq!(fallback.reason, "service_unavailable");
    assert_eq!(reply.attempts, 3, "Sonnet in both regions, then Haiku");
    assert!(reply.cost_usd < reply.baseline_cost_usd);

    // Degrading can be switched off, and a forced tier never changes.
    let mut strict = start_with(|config| {
        config.routing.threshold = Some(0.0);
        config.resilience.degrade_to_fast = false;
    })
    .await;
    let status = strict
        .client
        .converse(ask(&prompt))
        .await
        .expect_err("no degrade");
    assert_eq!(status.code(), Code::Unavailable);
    let status = router
        .client
        .converse(ask_forced(&prompt, pb::RoutingMode::ForceStrong))
        .await
        .expect_err("forced strong must not degrade");
    assert_eq!(status.code(), Code::Unavailable);
}

#[tokio::test]
async fn a_200ms_deadline_against_a_slow_model_cancels_the_upstream_call() {
    let mut router = start().await;
    let started = Instant::now();
    let status = router
        .client
        .converse(with_deadline(
            ask("Think slowly [sim:ttft=5000]"),
            Duration::from_millis(200),
        ))
        .await
        .expect_err("too slow");
    let took = started.elapsed();
    println!(
        "200 ms deadline against a 5 s model: {:?} after {took:?}",
        status.code()
    );
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    // Near 200 ms, far from the model's 5 s; the upper bound leaves room for a loaded CI machine.
    assert!(
        took >= Duration::from_millis(170) && took < Duration::from_millis(1_000),
        "{took:?}"
    );
    // The simulator sees its client go away: the upstream request is gone, not left running.
    router.until_upstream_in_flight(0).await;
    let stats = router.sim().stats();
    assert_eq!((stats.cancelled, stats.in_flight), (1, 0), "{stats:?}");

    let started = Instant::now();
    let mut stream = router
        .client
        .converse_stream(with_deadline(
            ask("Stream slowly [sim:ttft=50;tpt=100]"),
            Duration::from_millis(300),
        ))
        .await
        .expect("stream opens")
        .into_inner();
    let status = loop {
        match stream.message().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream cannot finish in time"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < Duration::from_millis(1_000));
    router.until_upstream_in_flight(0).await;
    assert_eq!(router.sim().stats().cancelled, 2);
}

#[tokio::test]
async fn a_cancelled_call_cancels_the_upstream_call() {
    let router = start().await;
    let mut client = router.client.clone();
    let call = tokio::spawn(async move { client.converse(ask("Wait [sim:ttft=5000]")).await });
    router.until_upstream_in_flight(1).await;
    call.abort();
    router.until_upstream_in_flight(0).await;
    let stats = router.sim().stats();
    assert_eq!((stats.cancelled, stats.in_flight), (1, 0), "{stats:?}");
}

#[tokio::test]
async fn a_stream_that_fails_before_its_first_token_is_retried_invisibly() {
    use pb::converse_stream_event::Event;
    let mut router = start_with(|config| config.bedrock.stream_idle_timeout_ms = 300).await;
    for directive in [
        "fail=throttlingException;after=0",
        "drop;after=0",
        "stall;after=0",
    ] {
        let (events, error) = router
            .stream(ask(&format!("Go [sim:{directive};times=1]")))
            .await;
        assert!(error.is_none(), "{directive}: {error:?}");
        let Some(Event::Decision(decision)) = events.first() else {
            panic!("{directive}: decision first")
        };
        assert_eq!(
            decision.region, "us-west-2",
            "{directive}: the decision names the target that answered"
        );
        let Some(Event::Metadata(metadata)) = events.last() else {
            panic!("{directive}: metadata last")
        };
        assert_eq!(metadata.attempts, 2, "{directive}");
        assert_eq!(
            metadata.fallback.as_ref().unwrap().kind,
            pb::FallbackKind::Region as i32
        );
        let text = common::streamed_text(&events);
        assert!(
            text.starts_with(&format!("[{HAIKU_US}]")),
            "{directive}: one clean answer, nothing doubled"
        );
    }
}

#[tokio::test]
async fn a_stream_that_fails_after_tokens_ends_with_a_clear_status() {
    let mut router = start().await;
    for (directive, code) in [
        ("fail=throttlingException;after=2", Code::ResourceExhausted),
        ("drop;after=2", Code::Unavailable),
    ] {
        let (events, error) = router.stream(ask(&format!("Go [sim:{directive}]"))).await;
        let status = error.unwrap_or_else(|| panic!("{directive}: must fail"));
        assert_eq!(status.code(), code, "{directive}: {status:?}");
        assert!(
            status.message().contains("after 2 text deltas"),
            "{directive}: {}",
            status.message()
        );
        assert_eq!(common::delta_count(&events), 2);
    }
    assert_eq!(
        router.sim().stats().received,
        2,
        "no retry once tokens went out"
    );
}

#[tokio::test]
async fn a_dropped_connection_is_retried() {
    let mut router = start().await;
    let reply = router
        .ask("Hello [sim:drop;times=1]")
        .await
        .expect("retried");
    assert_eq!(reply.attempts, 2);
    assert_eq!(reply.fallback.unwrap().reason, "connection");
}

#[tokio::test]
async fn a_failing_target_is_ejected_probed_and_restored() {
    let mut router = start_with(|config| {
        config.resilience.breaker_failures = 2;
        config.resilience.breaker_cooldown_ms = 300;
    })
    .await;
    router
        .sim()
        .set_faults(FaultConfig {
            rules: vec![FaultRule {
                fault: Fault::Http(BedrockError::ServiceUnavailableException),
                rate: 1.0,
                region: Some("us-east-1".to_owned()),
                model: None,
            }],
        })
        .unwrap();
    for _ in 0..2 {
        let reply = router.ask("hi").await.expect("fallback");
        assert_eq!(reply.attempts, 2);
    }
    // Two failures in a row: us-east-1 is ejected, so the next call goes straight to us-west-2.
    let before = router.sim().stats().received;
    let reply = router.ask("hi").await.expect("answer");
    assert_eq!(reply.attempts, 1);
    assert_eq!(reply.fallback.unwrap().reason, "ejected");
    assert_eq!(router.sim().stats().received, before + 1);

    // After the cool-down one probe goes to us-east-1; it is healthy again, so it stays.
    router.sim().set_faults(FaultConfig::default()).unwrap();
    tokio::time::sleep(Duration::from_millis(350)).await;
    for _ in 0..3 {
        let reply = router.ask("hi").await.expect("answer");
        assert_eq!(
            (reply.attempts, reply.decision.unwrap().region.as_str()),
            (1, "us-east-1")
        );
    }
}

#[tokio::test]
async fn throttling_moves_requests_on_but_never_ejects() {
    let mut router = start_with(|config| config.resilience.breaker_failures = 2).await;
    for i in 0..6 {
        let reply = router
            .ask(&format!(
                "Throttled {i} [sim:fail=ThrottlingException;region=us-east-1]"
            ))
            .await
            .expect("answered from the other region");
        // Every request still tries the first region: a quota is not a broken host.
        assert_eq!(reply.attempts, 2, "request {i}");
        assert_eq!(reply.fallback.unwrap().reason, "throttling", "request {i}");
    }
    let first_regions = router
        .sim()
        .received()
        .iter()
        .filter(|r| r.source_region.as_deref() == Some("us-east-1"))
        .count();
    assert_eq!(first_regions, 6);
}

#[tokio::test]
async fn a_5xx_storm_everywhere_ejects_no_more_than_half_of_a_models_regions() {
    let mut router = start_with(|config| {
        config.resilience.breaker_failures = 1;
        config.resilience.breaker_cooldown_ms = 60_000;
    })
    .await;
    let everywhere = |rate| FaultConfig {
        rules: vec![FaultRule {
            fault: Fault::Http(BedrockError::ServiceUnavailableException),
            rate,
            region: None,
            model: None,
        }],
    };
    router.sim().set_faults(everywhere(1.0)).unwrap();
    let forced = || ask_forced("Strong, please", pb::RoutingMode::ForceStrong);
    for i in 0..3 {
        let status = router
            .client
            .converse(forced())
            .await
            .expect_err("every target fails");
        assert_eq!(status.code(), Code::Unavailable, "{i}: {status:?}");
        assert!(
            !status.message().contains("ejected"),
            "{i}: a target stays in use: {status:?}"
        );
    }
    // Bedrock recovers: the region that was never ejected answers at once, not after the
    // 60 s cool-down.
    router.sim().set_faults(FaultConfig::default()).unwrap();
    for i in 0..3 {
        let reply = router
            .client
            .converse(forced())
            .await
            .unwrap_or_else(|status| panic!("{i} after recovery: {status:?}"))
            .into_inner();
        assert_eq!(reply.attempts, 1, "{i}");
        let fallback = reply.fallback.expect("the ejected region is skipped");
        assert_eq!(
            (fallback.from_region.as_str(), fallback.reason.as_str()),
            ("us-east-1", "ejected")
        );
    }
}

#[tokio::test]
async fn overload_is_refused_quickly_and_the_rest_succeed() {
    let router = start_with(|config| config.server.max_concurrency = 4).await;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..12 {
        let mut client = router.client.clone();
        calls.spawn(async move {
            let started = Instant::now();
            let result = client
                .converse(ask(&format!("Slow {i} [sim:ttft=400]")))
                .await;
            (result.map(drop), started.elapsed())
        });
    }
    let mut ok = 0;
    let mut refused = 0;
    let mut slowest_refusal = Duration::ZERO;
    while let Some(joined) = calls.join_next().await {
        let (result, took) = joined.unwrap();
        match result {
            Ok(()) => ok += 1,
            Err(status) => {
                slowest_refusal = slowest_refusal.max(took);
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(status.message().contains("server.max_concurrency"));
                assert!(
                    took < Duration::from_millis(200),
                    "refused in {took:?}: no queueing"
                );
                refused += 1;
            }
        }
    }
    println!(
        "overload: 12 calls, limit 4: {ok} ok, {refused} refused, slowest refusal {slowest_refusal:?}"
    );
    assert_eq!((ok, refused), (4, 8));
}

#[tokio::test]
async fn a_caller_that_stops_reading_cannot_hold_its_slot_past_the_deadline() {
    let mut router = start_with(|config| config.server.max_concurrency = 1).await;
    // A 1 KiB HTTP/2 window: a caller that never reads stops the stream within a few dozen events,
    // far fewer than the answer's 3,000.
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", router.running.grpc_addr))
            .unwrap()
            .initial_stream_window_size(1024)
            .connect()
            .await
            .unwrap();
    let mut slow_reader = pb::prompt_router_client::PromptRouterClient::new(channel);
    let mut stalled = slow_reader
        .converse_stream(with_deadline(
            ask("Talk a lot [sim:tokens=3000]"),
            Duration::from_millis(400),
        ))
        .await
        .expect("stream opens")
        .into_inner();
    tokio::time::sleep(Duration::from_millis(600)).await;
    // The slot is free again: the relay gave up at the deadline instead of waiting on the caller.
    let reply = router
        .ask("are you free?")
        .await
        .expect("the slot was released");
    assert_eq!(reply.attempts, 1);
    // The stalled caller, reading at last, gets the buffered events and then the deadline.
    let status = loop {
        match stalled.message().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("a cut-short stream must not end as if complete"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
}

#[tokio::test]
async fn streams_failing_before_their_first_event_eject_the_target() {
    let mut router = start_with(|config| config.resilience.breaker_failures = 2).await;
    for _ in 0..2 {
        let (events, error) = router
            .stream(ask(
                "Go [sim:fail=serviceUnavailableException;after=0;region=us-east-1]",
            ))
            .await;
        assert!(error.is_none(), "{error:?}");
        let Some(pb::converse_stream_event::Event::Metadata(metadata)) = events.last() else {
            panic!("metadata last")
        };
        assert_eq!(metadata.attempts, 2);
    }
    let before = router.sim().stats().received;
    let (events, error) = router.stream(ask("Go")).await;
    assert!(error.is_none(), "{error:?}");
    let Some(pb::converse_stream_event::Event::Decision(decision)) = events.first() else {
        panic!("decision first")
    };
    assert_eq!(decision.region, "us-west-2", "us-east-1 is ejected");
    assert_eq!(router.sim().stats().received, before + 1);
}
