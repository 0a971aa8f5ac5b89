//! Spend attributed to callers: every request, token and dollar is counted under a bounded
//! `caller` label (the callers `[callers.NAME]` names, and `other` for everyone else), and the
//! decision says which caller the router attributed the request to.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::{exposition::Scrape, world::HAIKU_US};
use prompt_router::pb;
use prompt_router_core::config::raw::RawCaller;

fn from(caller: &str, text: &str, mode: pb::RoutingMode) -> pb::ConverseRequest {
    pb::ConverseRequest {
        routing: Some(pb::RoutingOptions {
            caller: caller.to_owned(),
            mode: mode as i32,
            ..Default::default()
        }),
        ..common::ask(text)
    }
}

fn nanodollars(usd: f64) -> u64 {
    (usd * 1e9).round() as u64
}

#[tokio::test]
async fn requests_tokens_and_dollars_are_counted_per_caller_with_a_bounded_label() {
    let mut router = common::start_with(|raw| {
        for name in ["billing", "search"] {
            raw.callers.insert(name.to_owned(), RawCaller::default());
        }
    })
    .await;
    let (strong, fast) = (pb::RoutingMode::ForceStrong, pb::RoutingMode::ForceFast);
    // (declared caller, label it is counted under, mode)
    let sent = [
        ("billing", "billing", strong),
        ("billing", "billing", fast),
        ("search", "search", fast),
        ("", "other", strong),
        ("someone-else", "other", fast),
    ];
    let mut spent = BTreeMap::<&str, (u64, u64, u64, u64, u64)>::new();
    for (i, (caller, label, mode)) in sent.into_iter().enumerate() {
        let reply = router
            .client
            .converse(from(caller, &format!("Attribution question {i}?"), mode))
            .await
            .expect("answer")
            .into_inner();
        let decision = reply.decision.as_ref().expect("decision");
        assert_eq!(decision.caller, caller, "{decision:?}");
        let usage = reply.usage.as_ref().expect("usage");
        let entry = spent.entry(label).or_default();
        entry.0 += 1;
        entry.1 += nanodollars(reply.cost_usd);
        entry.2 += nanodollars(reply.baseline_cost_usd);
        entry.3 += u64::from(usage.input_tokens);
        entry.4 += u64::from(usage.output_tokens);
    }

    let scrape = Scrape::parse(&common::http_get(&router.metrics_url()).await);
    for (label, (requests, cost, baseline, input, output)) in &spent {
        let filter = format!("caller=\"{label}\"");
        assert_eq!(
            scrape.sum("router_requests_total", &[&filter]),
            *requests as f64,
            "{label}"
        );
        let money = |family: &str| scrape.nanodollars_where(family, &[&filter]);
        assert_eq!(money("router_cost_usd_total"), *cost, "{label}");
        assert_eq!(
            money("router_baseline_cost_usd_total"),
            *baseline,
            "{label}"
        );
        assert_eq!(
            scrape.sum("router_tokens_total", &[&filter, "direction=\"input\""]),
            *input as f64,
            "{label}"
        );
        assert_eq!(
            scrape.sum("router_tokens_total", &[&filter, "direction=\"output\""]),
            *output as f64,
            "{label}"
        );
    }
    // A name the config does not know never becomes a label value.
    assert!(
        !scrape
            .series
            .keys()
            .any(|name| name.contains("someone-else")),
        "unbounded caller label in {:#?}",
        scrape.series.keys().collect::<Vec<_>>()
    );
    // Money series exist from the start for every label, so rates work from the first scrape.
    assert!(
        scrape.series.contains_key(&format!(
            "router_cost_usd_total{{model=\"{HAIKU_US}\",caller=\"search\"}}"
        )),
        "{:#?}",
        scrape.series.keys().collect::<Vec<_>>()
    );
}
