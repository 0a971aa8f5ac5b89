//! The duels' bounds through a real router, the real SDK and the simulator: the hourly spend
//! cap holds under many concurrent requests, no duel starts while the router is loaded, and at
//! a shutdown running duels are cancelled and none starts. One test per binary (the recorder is
//! process-wide): the phases run in turn and read the counters' differences.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::{ask, ask_forced, eventually, exposition::Scrape, http_get, start_with};
use prompt_router::pb;

const SONNET: &str = "anthropic.claude-3-5-sonnet-20241022-v2:0";

async fn scrape(url: &str) -> Scrape {
    Scrape::parse(&http_get(url).await)
}

fn duels(s: &Scrape, outcome: &str) -> f64 {
    s.value(&format!("router_duels_total{{outcome=\"{outcome}\"}}"))
}

fn ended(s: &Scrape) -> f64 {
    [
        "strong_better",
        "tie",
        "fast_better",
        "unparsed",
        "failed",
        "cancelled",
    ]
    .iter()
    .map(|o| duels(s, o))
    .sum()
}

fn limited(text: &str, max_tokens: u32) -> pb::ConverseRequest {
    pb::ConverseRequest {
        inference_config: Some(pb::InferenceConfig {
            max_tokens: Some(max_tokens),
            ..Default::default()
        }),
        ..ask(text)
    }
}

#[tokio::test]
async fn duels_keep_to_their_cap_and_stop_when_loaded_or_draining() {
    // 1. The spend cap: 240 requests from 8 callers at once, duels allowed 32 at once, and a
    // cap that the duels' real cost would pass several times over.
    let cap = 0.25;
    let router = start_with(|raw| {
        raw.quality.duel_rate = 1.0;
        raw.quality.duel_concurrency = 32;
        raw.quality.usd_per_hour = cap;
    })
    .await;
    let url = router.metrics_url();
    let before = scrape(&url).await;
    let mut callers = Vec::new();
    for c in 0..8 {
        let mut client = router.client.clone();
        callers.push(tokio::spawn(async move {
            for i in 0..30 {
                let text = format!("Question {i} from caller {c}: explain how a hash map resizes.");
                client.converse(limited(&text, 100)).await.unwrap();
            }
        }));
    }
    for caller in callers {
        caller.await.unwrap();
    }
    let started = |s: &Scrape| ended(s) + duels(s, "skipped_budget") + duels(s, "skipped_busy");
    eventually(
        "every sampled request's duel ended or was skipped",
        || async { started(&scrape(&url).await) - started(&before) >= 160.0 },
    )
    .await;
    let after = scrape(&url).await;
    let spent = after.nanodollars("router_duel_cost_usd_total")
        - before.nanodollars("router_duel_cost_usd_total");
    assert!(
        spent as f64 / 1e9 <= cap,
        "spent {spent} n$ of a {cap} USD cap"
    );
    assert!(
        duels(&after, "skipped_budget") > duels(&before, "skipped_budget"),
        "the cap turned duels away"
    );
    assert!(ended(&after) > ended(&before), "duels ran");
    router.running.shutdown().await.unwrap();

    // 2. Loaded: 3 of 4 caller slots held by stalled (forced, so never dueled) requests; the
    // next request is answered, and has no duel.
    let router = start_with(|raw| {
        raw.quality.duel_rate = 1.0;
        raw.server.max_concurrency = 4;
    })
    .await;
    let mut held = Vec::new();
    for i in 0..3 {
        let mut client = router.client.clone();
        held.push(tokio::spawn(async move {
            let text = format!("Hold {i} [sim:stall]");
            let _ = client
                .converse(ask_forced(&text, pb::RoutingMode::ForceStrong))
                .await;
        }));
    }
    router.until_upstream_in_flight(3).await;
    let before = scrape(&router.metrics_url()).await;
    let mut client = router.client.clone();
    client.converse(ask("What is 2 + 2?")).await.unwrap();
    let after = scrape(&router.metrics_url()).await;
    assert_eq!(
        duels(&after, "skipped_loaded") - duels(&before, "skipped_loaded"),
        1.0
    );
    for task in held {
        task.abort();
    }
    router.until_upstream_in_flight(0).await;
    // With the slots free again, a duel runs.
    client.converse(ask("What is 3 + 3?")).await.unwrap();
    let url = router.metrics_url();
    eventually("the duel ended", || async {
        ended(&scrape(&url).await) > ended(&after)
    })
    .await;
    router.running.shutdown().await.unwrap();

    // A router of one slot, idle but for the answered request, duels: the request's own slot
    // is about to be free.
    let router = start_with(|raw| {
        raw.quality.duel_rate = 1.0;
        raw.server.max_concurrency = 1;
    })
    .await;
    let url = router.metrics_url();
    let before = scrape(&url).await;
    router
        .client
        .clone()
        .converse(ask("What is 4 + 4?"))
        .await
        .unwrap();
    eventually("the one-slot router's duel ended", || async {
        ended(&scrape(&url).await) > ended(&before)
    })
    .await;
    assert_eq!(
        duels(&scrape(&url).await, "skipped_loaded"),
        duels(&before, "skipped_loaded")
    );
    router.running.shutdown().await.unwrap();

    // 3. Draining: every request goes fast, and the duel's strong call stalls; a shutdown
    // cancels it, and a request answered during the shutdown delay has no duel.
    let router = start_with(|raw| {
        raw.quality.duel_rate = 1.0;
        raw.routing.threshold = Some(1.0);
        raw.server.shutdown_delay_ms = 3_000;
    })
    .await;
    let url = router.metrics_url();
    let mut client = router.client.clone();
    let stalled = format!("Tell me a joke [sim:stall;model={SONNET}]");
    let reply = client.converse(ask(&stalled)).await.unwrap().into_inner();
    assert!(reply.decision.unwrap().model_id.contains("haiku"));
    router.until_upstream_in_flight(1).await;
    let before = scrape(&url).await;
    let shutdown = tokio::spawn(router.running.shutdown());
    eventually("the running duel is cancelled", || async {
        duels(&scrape(&url).await, "cancelled") - duels(&before, "cancelled") == 1.0
    })
    .await;
    client.converse(ask("Tell me another joke")).await.unwrap();
    let after = scrape(&url).await;
    assert_eq!(
        duels(&after, "skipped_draining") - duels(&before, "skipped_draining"),
        1.0
    );
    assert_eq!(
        ended(&after) - ended(&before),
        1.0,
        "only the cancelled one"
    );
    shutdown.await.unwrap().unwrap();
}
