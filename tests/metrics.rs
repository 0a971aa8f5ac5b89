//! Scrapes the real `/metrics` endpoint after known traffic and checks names, types, labels and
//! exact token, cost and baseline values against hand-computed ones. One test per binary: the
//! recorder is process-wide.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::{ask, ask_forced, eventually, exposition::Scrape, http_get, start};
use prompt_router::pb;

const SONNET_US: &str = "us.anthropic.claude-3-5-sonnet-20241022-v2:0";
const HAIKU_US: &str = "us.anthropic.claude-3-haiku-20240307-v1:0";

#[tokio::test]
async fn metrics_follow_known_traffic_exactly() {
    let mut router = start().await;
    let strong = router
        .client
        .converse(ask_forced(
            "One strong question",
            pb::RoutingMode::ForceStrong,
        ))
        .await
        .unwrap()
        .into_inner();
    let fast_a = router
        .client
        .converse(ask_forced("A fast one", pb::RoutingMode::ForceFast))
        .await
        .unwrap()
        .into_inner();
    let mut stream = router
        .client
        .converse_stream(ask_forced("And a streamed one", pb::RoutingMode::ForceFast))
        .await
        .unwrap()
        .into_inner();
    let mut fast_b = None;
    while let Some(event) = stream.message().await.unwrap() {
        if let Some(pb::converse_stream_event::Event::Metadata(m)) = event.event {
            fast_b = m.usage;
        }
    }
    let fast_b = fast_b.expect("stream usage");
    router
        .client
        .converse(pb::ConverseRequest::default())
        .await
        .expect_err("invalid");
    router
        .client
        .converse(ask("Throttle me [sim:fail=ThrottlingException]"))
        .await
        .expect_err("throttled");
    // A caller that gives up mid-call: the request and its upstream call both count, cancelled.
    let mut client = router.client.clone();
    let abandoned = tokio::spawn(async move {
        client
            .converse(ask_forced(
                "Wait for me [sim:ttft=5000]",
                pb::RoutingMode::ForceStrong,
            ))
            .await
    });
    router.until_upstream_in_flight(1).await;
    abandoned.abort();
    let url = &router.metrics_url();
    eventually("the abandoned call counted", || async move {
        Scrape::parse(&http_get(url).await).sum("router_requests_total", &["outcome=\"cancelled\""])
            == 1.0
    })
    .await;

    let scrape = Scrape::parse(&http_get(url).await);
    for (family, kind) in [
        ("router_requests_total", "counter"),
        ("router_request_duration_seconds", "histogram"),
        ("router_overhead_seconds", "histogram"),
        ("router_classify_duration_seconds", "histogram"),
        ("router_upstream_duration_seconds", "histogram"),
        ("router_time_to_first_token_seconds", "histogram"),
        ("router_complexity_score", "histogram"),
        ("router_tokens_total", "counter"),
        ("router_cost_usd_total", "counter"),
        ("router_baseline_cost_usd_total", "counter"),
        ("router_upstream_errors_total", "counter"),
        ("router_inflight_requests", "gauge"),
        ("router_threshold", "gauge"),
    ] {
        assert_eq!(
            scrape.types.get(family).map(String::as_str),
            Some(kind),
            "{family}"
        );
    }

    let s = strong.usage.unwrap();
    let f = fast_a.usage.unwrap();
    assert_eq!(
        scrape.value(&format!(
            "router_tokens_total{{model=\"{SONNET_US}\",direction=\"input\",caller=\"other\"}}"
        )),
        f64::from(s.input_tokens)
    );
    assert_eq!(
        scrape.value(&format!(
            "router_tokens_total{{model=\"{SONNET_US}\",direction=\"output\",caller=\"other\"}}"
        )),
        f64::from(s.output_tokens)
    );
    let fast_in = f.input_tokens + fast_b.input_tokens;
    let fast_out = f.output_tokens + fast_b.output_tokens;
    assert_eq!(
        scrape.value(&format!(
            "router_tokens_total{{model=\"{HAIKU_US}\",direction=\"input\",caller=\"other\"}}"
        )),
        f64::from(fast_in)
    );
    assert_eq!(
        scrape.value(&format!(
            "router_tokens_total{{model=\"{HAIKU_US}\",direction=\"output\",caller=\"other\"}}"
        )),
        f64::from(fast_out)
    );

    // Hand-priced in nano-dollars: Sonnet 3000/15000, Haiku 250/1250 per token.
    let sonnet_cost = u64::from(s.input_tokens) * 3_000 + u64::from(s.output_tokens) * 15_000;
    let haiku_cost = u64::from(fast_in) * 250 + u64::from(fast_out) * 1_250;
    let baseline = sonnet_cost + u64::from(fast_in) * 3_000 + u64::from(fast_out) * 15_000;
    let dollars = |nano: u64| nano as f64 / 1e9;
    assert_eq!(
        scrape.value(&format!(
            "router_cost_usd_total{{model=\"{SONNET_US}\",caller=\"other\"}}"
        )),
        dollars(sonnet_cost)
    );
    assert_eq!(
        scrape.value(&format!(
            "router_cost_usd_total{{model=\"{HAIKU_US}\",caller=\"other\"}}"
        )),
        dollars(haiku_cost)
    );
    assert_eq!(
        scrape.value("router_baseline_cost_usd_total{caller=\"other\"}"),
        dollars(baseline)
    );

    assert_eq!(
        scrape.value(
            &format!(
                "router_requests_total{{tier=\"strong\",model=\"{SONNET_US}\",outcome=\"ok\",reason=\"forced\",caller=\"other\"}}"
            )
        ),
        1.0
    );
    assert_eq!(
        scrape.value(
            &format!(
                "router_requests_total{{tier=\"fast\",model=\"{HAIKU_US}\",outcome=\"ok\",reason=\"forced\",caller=\"other\"}}"
            )
        ),
        2.0
    );
    assert_eq!(
        scrape.value(
            "router_requests_total{tier=\"none\",model=\"none\",outcome=\"invalid_argument\",reason=\"none\",caller=\"other\"}"
        ),
        1.0
    );
    assert_eq!(
        scrape.value(
            &format!(
                "router_requests_total{{tier=\"fast\",model=\"{HAIKU_US}\",outcome=\"resource_exhausted\",reason=\"score\",caller=\"other\"}}"
            )
        ),
        1.0
    );
    // The throttled request tried four targets (max_attempts): Haiku in both regions, then
    // Sonnet (escalation) in both; every one was throttled.
    for (model, region) in [
        (HAIKU_US, "us-east-1"),
        (HAIKU_US, "us-west-2"),
        (SONNET_US, "us-east-1"),
        (SONNET_US, "us-west-2"),
    ] {
        let key = format!(
            "router_upstream_errors_total{{model=\"{model}\",region=\"{region}\",kind=\"throttling\"}}"
        );
        assert_eq!(scrape.value(&key), 1.0, "{key}");
    }
    assert_eq!(
        scrape.value(&format!(
            "router_retries_total{{model=\"{HAIKU_US}\",kind=\"throttling\"}}"
        )),
        2.0
    );
    assert_eq!(
        scrape.value(&format!(
            "router_retries_total{{model=\"{SONNET_US}\",kind=\"throttling\"}}"
        )),
        1.0
    );
    assert_eq!(
        scrape.value(&format!(
            "router_fallbacks_total{{model=\"{HAIKU_US}\",kind=\"region\"}}"
        )),
        1.0
    );
    assert_eq!(
        scrape.value(&format!(
            "router_fallbacks_total{{model=\"{SONNET_US}\",kind=\"escalate\"}}"
        )),
        1.0
    );
    // It changed region twice (Haiku's, then Sonnet's) but is one request that fell back across
    // regions: the fallback-ratio rule and RouterFallbackSurge divide this by requests.
    assert_eq!(
        scrape.sum("router_fallbacks_total", &["kind=\"region\""]),
        1.0
    );
    assert_eq!(
        scrape.sum("router_fallbacks_total", &[""]) / scrape.sum("router_requests_total", &[""]),
        2.0 / 6.0,
        "region and escalate, each 1 of the 6 requests"
    );
    assert_eq!(
        scrape.value(
            &format!(
                "router_upstream_duration_seconds_count{{model=\"{SONNET_US}\",region=\"us-east-1\",outcome=\"ok\"}}"
            )
        ),
        1.0
    );
    assert_eq!(
        scrape.value(
            &format!(
                "router_requests_total{{tier=\"strong\",model=\"{SONNET_US}\",outcome=\"cancelled\",reason=\"forced\",caller=\"other\"}}"
            )
        ),
        1.0
    );
    assert_eq!(
        scrape.value(
            &format!(
                "router_upstream_duration_seconds_count{{model=\"{SONNET_US}\",region=\"us-east-1\",outcome=\"cancelled\"}}"
            )
        ),
        1.0,
        "the upstream call cut short by the caller is counted too"
    );
    assert_eq!(
        scrape.value("router_overhead_seconds_count"),
        5.0,
        "every request that went upstream"
    );
    assert_eq!(
        scrape.value("router_classify_duration_seconds_count"),
        5.0,
        "every valid request"
    );
    assert_eq!(
        scrape.value(&format!(
            "router_time_to_first_token_seconds_count{{model=\"{HAIKU_US}\"}}"
        )),
        1.0
    );
    assert_eq!(
        scrape.value("router_complexity_score_bucket{le=\"+Inf\"}"),
        5.0
    );
    assert_eq!(scrape.value("router_inflight_requests"), 0.0);
    assert!(
        scrape
            .series
            .contains_key("router_overhead_seconds_bucket{le=\"0.00001\"}"),
        "µs buckets"
    );
}
