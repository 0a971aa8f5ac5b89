//! Callers' policies, rate limits and budgets kept in process, through a real router and a
//! real client: forbidden modes → PERMISSION_DENIED naming the rule; request and token rates →
//! RESOURCE_EXHAUSTED with RetryInfo; a spend budget → degrade (basis BUDGET, fast tier), then
//! RESOURCE_EXHAUSTED, never over the budget; a failed request's reservation released.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::{TestRouter, exposition::Scrape};
use prompt_router::pb;
use prompt_router_core::config::{Config, RawConfig};
use tonic::Code;
use tonic_types::StatusExt as _;

/// A router with the simulator and `callers` (TOML of `[callers.*]` tables).
async fn router(callers: &str) -> TestRouter {
    let raw: RawConfig = toml::from_str(callers).expect("valid TOML");
    common::start_checked(Config::try_from(raw).expect("valid config")).await
}

/// A request from `caller` in `mode`, writing `tokens` output tokens (the simulator's
/// directive) within `max_tokens`.
fn request(
    caller: &str,
    mode: pb::RoutingMode,
    tokens: u32,
    max_tokens: u32,
) -> pb::ConverseRequest {
    pb::ConverseRequest {
        messages: vec![common::user(&format!(
            "Say something. [sim:tokens={tokens}]"
        ))],
        inference_config: Some(pb::InferenceConfig {
            max_tokens: Some(max_tokens),
            ..Default::default()
        }),
        routing: Some(pb::RoutingOptions {
            mode: mode as i32,
            caller: caller.to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Checks `status` is RESOURCE_EXHAUSTED naming `rule`; the delay of its RetryInfo detail.
fn refused_by(status: &tonic::Status, rule: &str) -> std::time::Duration {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains(rule), "{status:?}");
    status
        .get_error_details()
        .retry_info()
        .expect("a RetryInfo detail")
        .retry_delay
        .expect("a delay")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_modes_are_refused_naming_the_rule() {
    let mut router = router(
        "[callers.intern]\nallow_force = false\nmax_quality_bias = 0.2\nmax_output_tokens = 256\n",
    )
    .await;
    let forced = request("intern", pb::RoutingMode::ForceStrong, 5, 100);
    let mut biased = request("intern", pb::RoutingMode::Auto, 5, 100);
    biased.routing.as_mut().unwrap().quality_bias = 0.5;
    let long = request("intern", pb::RoutingMode::Auto, 5, 257);
    for (req, rule) in [
        (forced.clone(), "callers.intern.allow_force"),
        (biased, "callers.intern.max_quality_bias"),
        (long, "callers.intern.max_output_tokens"),
    ] {
        let status = router.client.converse(req.clone()).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains(rule), "{status:?}");
        let status = router.client.route(req).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    }
    // Another caller (the default policy) may force.
    let mut other = forced;
    other.routing.as_mut().unwrap().caller = "someone".to_owned();
    let reply = router.client.converse(other).await.unwrap().into_inner();
    assert_eq!(reply.decision.unwrap().tier(), pb::Tier::Strong);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_rate_refuses_with_retry_info() {
    // One request per 100 s, two at once: the third within 100 s is refused, however loaded
    // the machine.
    let mut router = router("[callers.poller]\nrequests_per_second = 0.01\nburst = 2\n").await;
    for _ in 0..2 {
        router
            .client
            .converse(request("poller", pb::RoutingMode::Auto, 5, 100))
            .await
            .unwrap();
    }
    let status = router
        .client
        .converse(request("poller", pb::RoutingMode::Auto, 5, 100))
        .await
        .unwrap_err();
    let after = refused_by(&status, "callers.poller.requests_per_second");
    assert!(
        after > std::time::Duration::from_secs(50) && after <= std::time::Duration::from_secs(100),
        "{after:?}"
    );
    // Another caller is not limited by this one's rate.
    router
        .client
        .converse(request("someone", pb::RoutingMode::Auto, 5, 100))
        .await
        .unwrap();
    let scrape = Scrape::parse(&common::http_get(&router.metrics_url()).await);
    assert_eq!(
        scrape.value(r#"router_limited_total{caller="poller",limit="requests"}"#),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_rate_charges_the_real_tokens_and_refuses_the_next() {
    // 1,000 tokens a minute: a 2,000-token answer overdraws the bucket by a minute's worth.
    let mut router = router("[callers.writer]\ntokens_per_minute = 1000\n").await;
    let reply = router
        .client
        .converse(request("writer", pb::RoutingMode::ForceFast, 2_000, 2_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.usage.unwrap().output_tokens, 2_000);
    let status = router
        .client
        .converse(request("writer", pb::RoutingMode::ForceFast, 5, 100))
        .await
        .unwrap_err();
    assert!(
        refused_by(&status, "callers.writer.tokens_per_minute")
            > std::time::Duration::from_secs(30)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_degrades_then_refuses_and_is_never_overspent() {
    let budget = 0.01;
    let mut router = router(&format!(
        "[callers.team]\nusd_per_day = {budget}\ndegrade_at = 0.5\n"
    ))
    .await;
    let (mut spent, mut strong, mut degraded) = (0.0, 0, 0);
    let mut refused = None;
    for i in 0..300 {
        let req = request("team", pb::RoutingMode::ForceStrong, 100, 100);
        // Every fifth request streams: a stream's answer settles the same way.
        let result = if i % 5 == 4 {
            let (events, status) = router.stream(req).await;
            match status {
                Some(status) => Err(status),
                None => {
                    use pb::converse_stream_event::Event;
                    let (Some(Event::Decision(decision)), Some(Event::Metadata(metadata))) =
                        (events.first(), events.last())
                    else {
                        panic!("a decision first, metadata last: {events:?}");
                    };
                    Ok((metadata.cost_usd, decision.clone()))
                }
            }
        } else {
            router
                .client
                .converse(req)
                .await
                .map(|r| r.into_inner())
                .map(|r| (r.cost_usd, r.decision.unwrap()))
        };
        match result {
            Ok((cost, decision)) => {
                assert!(refused.is_none(), "served after a refusal");
                spent += cost;
                match (decision.tier(), decision.basis()) {
                    (pb::Tier::Strong, pb::DecisionBasis::Forced) => {
                        assert_eq!(degraded, 0, "strong after degrading");
                        strong += 1;
                    }
                    (pb::Tier::Fast, pb::DecisionBasis::Budget) => degraded += 1,
                    other => panic!("unexpected decision {other:?}"),
                }
            }
            Err(status) => {
                let after = refused_by(&status, "callers.team.usd_per_day");
                assert!(after <= std::time::Duration::from_secs(86_400), "{after:?}");
                refused = Some(i);
                if i > strong + degraded + 3 {
                    break;
                }
            }
        }
    }
    assert!(refused.is_some(), "the budget never refused");
    assert!(strong >= 2, "strong {strong}");
    assert!(degraded >= 5, "degraded {degraded}");
    assert!(spent <= budget + 1e-12, "spent {spent} of {budget}");
    // Refused only when even a fast request's worst case has no room: most of the budget went.
    assert!(spent > budget * 0.9, "spent {spent} of {budget}");
    let scrape = Scrape::parse(&common::http_get(&router.metrics_url()).await);
    assert_eq!(
        scrape.value(r#"router_degraded_total{caller="team"}"#),
        f64::from(degraded)
    );
    assert!(scrape.value(r#"router_limited_total{caller="team",limit="usd_per_day"}"#) >= 1.0);
    let used = scrape.value(r#"router_caller_budget_used_ratio{caller="team",period="day"}"#);
    assert!((0.9..=1.0).contains(&used), "{used}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_request_releases_its_reservation() {
    // Room for one strong request's worst case, not two: were the failed request's
    // reservation kept, the next would be degraded to the fast tier.
    let mut router = router("[callers.solo]\nusd_per_day = 0.003\ndegrade_at = 1.0\n").await;
    let mut failing = request("solo", pb::RoutingMode::ForceStrong, 100, 100);
    failing.messages = vec![common::user(
        "Say something. [sim:fail=ValidationException]",
    )];
    let status = router.client.converse(failing).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    for _ in 0..2 {
        let reply = router
            .client
            .converse(request("solo", pb::RoutingMode::ForceStrong, 10, 100))
            .await
            .unwrap()
            .into_inner();
        let decision = reply.decision.unwrap();
        assert_eq!(
            (decision.tier(), decision.basis()),
            (pb::Tier::Strong, pb::DecisionBasis::Forced)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_is_not_limited_or_charged() {
    let mut router =
        router("[callers.dry]\nrequests_per_second = 0.01\nusd_per_day = 0.000001\n").await;
    for _ in 0..5 {
        router
            .client
            .route(request("dry", pb::RoutingMode::ForceStrong, 5, 100))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_short_after_its_first_token_keeps_its_reservation() {
    // Room for one strong request's worst case: Bedrock bills the tokens a broken stream
    // wrote, which the router never learns, so its worst case stays counted and the next
    // strong-bound request goes fast.
    let mut router = router("[callers.streamer]\nusd_per_day = 0.003\ndegrade_at = 1.0\n").await;
    let mut cut = request("streamer", pb::RoutingMode::ForceStrong, 50, 100);
    cut.messages = vec![common::user("Say something. [sim:tokens=50;drop;after=5]")];
    let (events, status) = router.stream(cut).await;
    assert!(common::delta_count(&events) > 0, "{events:?}");
    assert!(status.is_some(), "the stream was cut short");
    let reply = router
        .client
        .converse(request("streamer", pb::RoutingMode::ForceStrong, 10, 100))
        .await
        .unwrap()
        .into_inner();
    let decision = reply.decision.unwrap();
    assert_eq!(
        (decision.tier(), decision.basis()),
        (pb::Tier::Fast, pb::DecisionBasis::Budget)
    );
}
