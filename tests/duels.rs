//! Duels through a real router, the real SDK and the simulator: with `quality.duel_rate = 1.0`
//! every eligible Converse request gets the other tier's answer and two judge calls, its
//! outcome is counted, a label row is offered, and the caller's replies are exactly those of a
//! router without duels. One test per binary: the recorder is process-wide.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::{TestRouter, ask, eventually, exposition::Scrape, http_get, reply_text};
use prompt_router::{labels::LabelSink, pb, server};
use prompt_router_core::{
    config::{Config, RawConfig},
    quality::label::{Label, LabelTier},
};

const SONNET_US: &str = "us.anthropic.claude-3-5-sonnet-20241022-v2:0";
const HAIKU_US: &str = "us.anthropic.claude-3-haiku-20240307-v1:0";

const PROMPTS: &[&str] = &[
    "What is the capital of France?",
    "Say hello.",
    "Prove that there are infinitely many primes, then generalise the argument to primes of the form 4k+3 and explain step by step where the proof for 4k+1 breaks.",
    "Design a distributed rate limiter for a multi-region API gateway: compare token bucket and sliding window, discuss consistency trade-offs, and give pseudocode.",
    "Translate 'good morning' into Spanish.",
    "Analyse the time complexity of building a heap bottom-up and prove the O(n) bound rigorously.",
];

async fn router(duel_rate: f64, labels: LabelSink) -> TestRouter {
    let mut raw = RawConfig::default();
    raw.quality.duel_rate = duel_rate;
    let mut config = Config::try_from(raw).expect("valid config");
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.server.metrics_listen = "127.0.0.1:0".parse().unwrap();
    let options = server::Options {
        simulate: true,
        labels: Some(labels),
    };
    let running = server::start(config, options).await.expect("router starts");
    let client = pb::prompt_router_client::PromptRouterClient::connect(format!(
        "http://{}",
        running.grpc_addr
    ))
    .await
    .expect("client connects");
    TestRouter { running, client }
}

/// What a caller can compare between two routers' replies (ids and timings differ).
fn seen(reply: &pb::ConverseResponse) -> (String, String, Option<pb::Usage>, String, f64, f64) {
    let decision = reply.decision.as_ref().expect("decision");
    (
        reply_text(reply),
        reply.stop_reason.clone(),
        reply.usage,
        decision.model_id.clone(),
        reply.cost_usd,
        reply.baseline_cost_usd,
    )
}

#[tokio::test]
async fn duels_run_off_the_callers_path_and_are_counted_and_labelled() {
    let mut plain = router(0.0, LabelSink::off()).await;
    let (sink, mut rows) = LabelSink::channel(1_000);
    let mut dueling = router(1.0, sink).await;

    let mut tiers = std::collections::HashMap::new();
    for prompt in PROMPTS {
        let a = plain.ask(prompt).await.expect("plain reply");
        let b = dueling.ask(prompt).await.expect("dueling reply");
        assert_eq!(seen(&a), seen(&b), "{prompt}");
        tiers.insert(b.request_id.clone(), b.decision.unwrap().model_id);
    }
    // Not eligible: a forced request, a tool-using one, one with an image, and a stream.
    dueling
        .client
        .converse(common::ask_forced("Forced", pb::RoutingMode::ForceFast))
        .await
        .unwrap();
    let tools = pb::ToolConfig {
        tools: vec![pb::Tool {
            name: "get_weather".into(),
            description: "Current weather for a city".into(),
            input_schema_json: r#"{"type":"object","properties":{"city":{"type":"string"}}}"#
                .into(),
        }],
        tool_choice: None,
    };
    dueling
        .client
        .converse(pb::ConverseRequest {
            tool_config: Some(tools),
            ..ask("Is it warm in Paris today?")
        })
        .await
        .unwrap();
    let image = pb::ContentBlock {
        block: Some(pb::content_block::Block::Image(pb::Image {
            format: pb::ImageFormat::Png as i32,
            data: common::PNG_1X1.to_vec(),
        })),
    };
    let mut with_image = ask("What colour is this pixel?");
    with_image.messages[0].content.push(image);
    dueling.client.converse(with_image).await.unwrap();
    let (events, status) = dueling.stream(ask("A streamed question")).await;
    assert!(status.is_none() && !events.is_empty());

    let n = PROMPTS.len() as f64;
    let url = dueling.metrics_url();
    let ended = |s: &Scrape| {
        ["strong_better", "tie", "fast_better", "unparsed", "failed"]
            .iter()
            .map(|o| s.value(&format!("router_duels_total{{outcome=\"{o}\"}}")))
            .sum::<f64>()
    };
    eventually("every duel ended", || async {
        ended(&Scrape::parse(&http_get(&url).await)) >= n
    })
    .await;
    let scrape = Scrape::parse(&http_get(&url).await);
    assert_eq!(ended(&scrape), n, "one duel per eligible request");
    let judged: f64 = ["strong_better", "tie", "fast_better"]
        .iter()
        .map(|o| scrape.value(&format!("router_duels_total{{outcome=\"{o}\"}}")))
        .sum();
    assert_eq!(judged, n, "the simulator's judge always gives a verdict");
    for skipped in [
        "skipped_busy",
        "skipped_budget",
        "skipped_loaded",
        "skipped_draining",
    ] {
        assert_eq!(
            scrape.value(&format!("router_duels_total{{outcome=\"{skipped}\"}}")),
            0.0
        );
    }
    assert_eq!(scrape.types["router_duel_cost_usd_total"], "counter");
    assert!(scrape.nanodollars("router_duel_cost_usd_total") > 0);
    assert_eq!(scrape.value("router_quality_duels"), n);
    let verdicts = scrape.sum("router_quality_verdicts", &[]);
    assert_eq!(verdicts, n);

    // The simulator saw, per duel, the other tier once and the judge (the strong model by
    // default) twice, with the pairwise prompt and both orders.
    let received = dueling.sim().received();
    let judge_calls: Vec<_> = received
        .iter()
        .filter(|r| {
            r.body["system"][0]["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("You are an impartial judge"))
        })
        .collect();
    assert_eq!(judge_calls.len(), 2 * PROMPTS.len());
    assert!(judge_calls.iter().all(|r| r.model_id == SONNET_US));
    // Callers 6 + forced, tools, image, stream 4, duels 6 × 3.
    assert_eq!(received.len(), PROMPTS.len() + 4 + 3 * PROMPTS.len());

    let mut got = Vec::new();
    while let Ok(row) = rows.try_recv() {
        got.push(row);
    }
    assert_eq!(got.len(), PROMPTS.len(), "{got:?}");
    for row in &got {
        let model = &tiers[&row.request_id];
        assert!(matches!(row.label, Label::Duel { .. }));
        let tier = if model == HAIKU_US {
            LabelTier::Fast
        } else {
            LabelTier::Strong
        };
        assert_eq!(row.tier, tier);
        assert!(row.prompt.is_none(), "no prompt text unless store_prompts");
        assert!(row.example().is_ok(), "{row:?}");
        assert!(row.weights_version.starts_with("w-"));
    }
    dueling.running.shutdown().await.unwrap();
    plain.running.shutdown().await.unwrap();
}
