//! Injected faults through directives and runtime rules; cancellation; latency; shutdown.

use std::time::Duration;

use aws_sdk_bedrockruntime::config::retry::RetryConfig;
use aws_sdk_bedrockruntime::error::SdkError;
use aws_sdk_bedrockruntime::operation::converse::ConverseError;
use bedrock_sim::{BedrockError, Fault, FaultConfig, FaultRule, LatencyConfig, Outcome};

use crate::*;

/// The typed variant's name and message, proving the SDK parsed the error as that shape.
fn typed(err: ConverseError) -> (&'static str, String) {
    let (name, msg) = match &err {
        ConverseError::AccessDeniedException(e) => ("AccessDeniedException", e.message()),
        ConverseError::ResourceNotFoundException(e) => ("ResourceNotFoundException", e.message()),
        ConverseError::ThrottlingException(e) => ("ThrottlingException", e.message()),
        ConverseError::ModelNotReadyException(e) => ("ModelNotReadyException", e.message()),
        ConverseError::ModelTimeoutException(e) => ("ModelTimeoutException", e.message()),
        ConverseError::InternalServerException(e) => ("InternalServerException", e.message()),
        ConverseError::ServiceUnavailableException(e) => {
            ("ServiceUnavailableException", e.message())
        }
        ConverseError::ValidationException(e) => ("ValidationException", e.message()),
        ConverseError::ModelErrorException(e) => ("ModelErrorException", e.message()),
        other => panic!("untyped error {other:?}"),
    };
    (name, msg.unwrap_or_default().to_owned())
}

#[tokio::test]
async fn every_error_kind_maps_to_its_typed_variant() {
    let h = sim().await;
    let c = client(&h);
    let kinds = [
        ("AccessDeniedException", 403),
        ("ResourceNotFoundException", 404),
        ("ThrottlingException", 429),
        ("ModelNotReadyException", 429),
        ("ModelTimeoutException", 408),
        ("InternalServerException", 500),
        ("ServiceUnavailableException", 503),
        ("ValidationException", 400),
        ("ModelErrorException", 424),
    ];
    for (name, status) in kinds {
        let err = c
            .converse()
            .model_id(HAIKU)
            .messages(user(&format!("[sim:fail={name}]")))
            .send()
            .await
            .unwrap_err();
        let SdkError::ServiceError(ctx) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(ctx.raw().status().as_u16(), status, "{name}");
        let (got, message) = typed(err.into_service_error());
        assert_eq!(got, name);
        assert!(!message.is_empty(), "{name}");
    }
    assert_eq!(h.stats().failed, kinds.len() as u64);
}

#[tokio::test]
async fn times_lets_retries_succeed() {
    let h = sim().await;
    let c = client(&h);
    let prompt = "[sim:fail=ThrottlingException;times=2] retry me";
    for _ in 0..2 {
        let err = c
            .converse()
            .model_id(HAIKU)
            .messages(user(prompt))
            .send()
            .await
            .unwrap_err();
        assert!(matches!(
            err.into_service_error(),
            ConverseError::ThrottlingException(_)
        ));
    }
    c.converse()
        .model_id(HAIKU)
        .messages(user(prompt))
        .send()
        .await
        .unwrap();

    // The SDK's own retries see the same: two throttles, then success, in one call.
    h.reset();
    let retrying = aws_sdk_bedrockruntime::Client::from_conf(
        config(&h, "us-east-1")
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(3)
                    .with_initial_backoff(Duration::from_millis(1)),
            )
            .build(),
    );
    let prompt = "[sim:fail=ThrottlingException;times=2] retry me again";
    retrying
        .converse()
        .model_id(HAIKU)
        .messages(user(prompt))
        .send()
        .await
        .unwrap();
    let s = h.stats();
    assert_eq!((s.received, s.failed, s.answered), (3, 2, 1));
}

#[tokio::test]
async fn region_scoped_directive() {
    let h = sim().await;
    let prompt = "[sim:fail=ServiceUnavailableException;region=us-east-1] where";
    let err = client_in(&h, "us-east-1")
        .converse()
        .model_id(HAIKU)
        .messages(user(prompt))
        .send()
        .await
        .unwrap_err();
    assert!(matches!(
        err.into_service_error(),
        ConverseError::ServiceUnavailableException(_)
    ));
    client_in(&h, "us-west-2")
        .converse()
        .model_id(HAIKU)
        .messages(user(prompt))
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn dropped_connection_is_a_dispatch_failure() {
    let h = sim().await;
    let err = client(&h)
        .converse()
        .model_id(HAIKU)
        .messages(user("[sim:drop]"))
        .send()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            SdkError::DispatchFailure(_) | SdkError::ResponseError(_)
        ),
        "{err:?}"
    );
    assert_eq!(h.received()[0].outcome, Outcome::Dropped);
    assert_eq!(h.received()[0].fault, Some(Fault::Drop { after: None }));
}

#[tokio::test]
async fn converse_stall_hits_the_client_timeout() {
    let h = sim().await;
    let conf = config(&h, "us-east-1")
        .timeout_config(
            aws_sdk_bedrockruntime::config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(Duration::from_millis(200))
                .build(),
        )
        .build();
    let c = aws_sdk_bedrockruntime::Client::from_conf(conf);
    let err = c
        .converse()
        .model_id(HAIKU)
        .messages(user("[sim:stall]"))
        .send()
        .await
        .unwrap_err();
    assert!(matches!(err, SdkError::TimeoutError(_)), "{err:?}");
    wait_for_stats(&h, |s| s.cancelled == 1 && s.in_flight == 0).await;
}

#[tokio::test]
async fn abandoned_request_is_counted_as_cancelled() {
    let h = sim().await;
    let c = client(&h);
    let call = c
        .converse()
        .model_id(SONNET)
        .messages(user("[sim:ttft=5000] slow"))
        .send();
    assert!(
        tokio::time::timeout(Duration::from_millis(100), call)
            .await
            .is_err()
    );
    let s = wait_for_stats(&h, |s| s.cancelled == 1).await;
    assert_eq!((s.received, s.in_flight, s.answered), (1, 0, 0));
    assert_eq!(h.received()[0].outcome, Outcome::Cancelled);
}

#[tokio::test]
async fn runtime_fault_rules_and_latency() {
    let h = sim().await;
    let c = client(&h);
    let rule = |rate: f64, model: Option<&str>| FaultRule {
        fault: Fault::Http(BedrockError::ThrottlingException),
        rate,
        region: None,
        model: model.map(str::to_owned),
    };
    h.set_faults(FaultConfig {
        rules: vec![rule(1.0, Some(SONNET_BASE))],
    })
    .unwrap();
    let err = c
        .converse()
        .model_id(SONNET)
        .messages(user("a"))
        .send()
        .await
        .unwrap_err();
    assert!(matches!(
        err.into_service_error(),
        ConverseError::ThrottlingException(_)
    ));
    c.converse()
        .model_id(HAIKU)
        .messages(user("a"))
        .send()
        .await
        .unwrap();

    h.set_faults(FaultConfig {
        rules: vec![rule(0.5, None)],
    })
    .unwrap();
    let mut failures = 0;
    for i in 0..40 {
        if c.converse()
            .model_id(HAIKU)
            .messages(user(&format!("p{i}")))
            .send()
            .await
            .is_err()
        {
            failures += 1;
        }
    }
    assert!((8..=32).contains(&failures), "{failures}");

    h.set_faults(FaultConfig::default()).unwrap();
    c.converse()
        .model_id(SONNET)
        .messages(user("a"))
        .send()
        .await
        .unwrap();
    assert!(
        h.set_faults(FaultConfig {
            rules: vec![rule(1.5, None)]
        })
        .is_err()
    );

    h.set_latency(LatencyConfig {
        ttft_ms: 120,
        per_token_ms: 0,
    });
    let out = c
        .converse()
        .model_id(HAIKU)
        .messages(user("slow now"))
        .send()
        .await
        .unwrap();
    assert!(out.metrics().unwrap().latency_ms() >= 120);
}

/// A zero latency must cost nothing: `tokio::time::sleep(0)` waits for the next 1 ms timer
/// tick, so a simulator that slept anyway put a millisecond under every call it served. The
/// simulator counts the timers it arms; with zero latency there are none.
#[tokio::test]
async fn zero_latency_arms_no_timer() {
    let h = sim().await;
    let c = client(&h);
    for prompt in ["one", "two", "three"] {
        c.converse()
            .model_id(HAIKU)
            .messages(user(prompt))
            .send()
            .await
            .unwrap();
        let mut out = c
            .converse_stream()
            .model_id(HAIKU)
            .messages(user(prompt))
            .send()
            .await
            .unwrap();
        while quick(out.stream.recv()).await.unwrap().is_some() {}
    }
    let s = wait_for_stats(&h, |s| s.answered == 6).await;
    assert_eq!(s.timers, 0, "{s:?}");

    // A latency, of either kind, does arm timers: the count sees them.
    h.set_latency(LatencyConfig {
        ttft_ms: 1,
        per_token_ms: 0,
    });
    c.converse()
        .model_id(HAIKU)
        .messages(user("one"))
        .send()
        .await
        .unwrap();
    assert_eq!(h.stats().timers, 1);
    h.set_latency(LatencyConfig {
        ttft_ms: 0,
        per_token_ms: 1,
    });
    let mut out = c
        .converse_stream()
        .model_id(HAIKU)
        .messages(user("one"))
        .send()
        .await
        .unwrap();
    let mut deltas = 0;
    while let Some(event) = quick(out.stream.recv()).await.unwrap() {
        deltas += u64::from(event.is_content_block_delta());
    }
    // One pause between consecutive tokens.
    let s = wait_for_stats(&h, |s| s.answered == 8).await;
    assert_eq!(s.timers, 1 + deltas - 1, "{s:?}");
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let h = sim().await;
    let c = client(&h);
    c.converse()
        .model_id(HAIKU)
        .messages(user("hi"))
        .send()
        .await
        .unwrap();
    let slow = tokio::spawn({
        let c = c.clone();
        async move {
            c.converse()
                .model_id(HAIKU)
                .messages(user("[sim:stall] forever"))
                .send()
                .await
        }
    });
    let s = wait_for_stats(&h, |s| s.in_flight == 1).await;
    assert_eq!(s.received, 2);
    let url = h.endpoint_url();
    quick(h.shutdown()).await;
    assert!(quick(slow).await.unwrap().is_err());
    let after = client_in_url(&url)
        .converse()
        .model_id(HAIKU)
        .messages(user("hi"))
        .send()
        .await;
    assert!(
        matches!(after, Err(SdkError::DispatchFailure(_))),
        "{after:?}"
    );
}

fn client_in_url(url: &str) -> aws_sdk_bedrockruntime::Client {
    aws_sdk_bedrockruntime::Client::from_conf(
        aws_sdk_bedrockruntime::Config::builder()
            .behavior_version_latest()
            .endpoint_url(url)
            .region(aws_sdk_bedrockruntime::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_bedrockruntime::config::Credentials::new(
                "x", "x", None, None, "test",
            ))
            .retry_config(RetryConfig::disabled())
            .build(),
    )
}
