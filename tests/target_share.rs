//! The target-share operating point on a real router: a stream of `Route` calls moves a
//! caller's threshold from warm-up to its target share, its realised share tracks the target,
//! `/metrics` shows the threshold in force, and the offline commands (`route`, `eval`), replaying
//! the same requests in the same order through the binary, decide exactly what the server did.
//! And the realistic corpus, replayed in its file order (grouped by kind of request, so the
//! score distribution drifts), keeps every target within 5 points after warm-up.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::{path::PathBuf, process::Command};

use common::{TestRouter, exposition::Scrape, http_get, process::BIN, start_checked, start_with};
use prompt_router::{pb, server::convert::chat_request, setup};
use prompt_router_core::{
    catalog::Tier,
    config::{Config, Overrides, RawConfig},
    operating::Point,
    policy::Basis,
    request::{ChatRequest, Limits},
};
use serde_json::{Value, json};

/// Asks of many kinds and lengths, so scores spread over most of [0, 1].
const ASKS: &[&str] = &[
    "hi",
    "thanks, that works",
    "What are your opening hours on Saturday?",
    "Translate 'the invoice is attached' into German.",
    "Summarise in one line: the meeting moved to Thursday because the room was booked.",
    "Classify this ticket as billing, shipping or other: my parcel never arrived.",
    "Write a SQL query that returns each customer's longest streak of consecutive days with an order.",
    "Prove that there are infinitely many primes of the form 4k+3.",
    "Explain step by step why the following recursive function never terminates for negative inputs, and fix it.",
    "Design a multi-region active-active architecture for a payments ledger that guarantees exactly-once settlement; discuss consistency, failure modes and reconciliation.",
    "Compare Raft and Paxos under a network partition, and analyse the trade-offs for a small cluster.",
    "Derive the closed form of the sum of the first n cubes and prove it by induction.",
];

/// The i-th request of the stream: an ask, made longer by a varying amount of context.
fn ask(i: usize) -> String {
    let base = ASKS[(i * 7 + i / 5) % ASKS.len()];
    let context = " Some context for this request follows, with details that matter.".repeat(i % 6);
    format!("{base}{context} (ticket {i})")
}

fn request(text: &str, caller: &str, mode: pb::RoutingMode) -> pb::ConverseRequest {
    pb::ConverseRequest {
        routing: Some(pb::RoutingOptions {
            mode: mode as i32,
            caller: caller.to_owned(),
            ..Default::default()
        }),
        ..common::ask(text)
    }
}

/// A temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("router-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, file: &str, text: &str) -> PathBuf {
        let path = self.0.join(file);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The requests as JSON lines in the router.v1 JSON mapping, each with an id and labels
/// (`eval` needs some; the strong model helps on every third request).
fn jsonl(requests: &[pb::ConverseRequest]) -> String {
    requests
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut line = serde_json::to_value(r).unwrap();
            line["id"] = json!(i);
            line["strong_score"] = json!(1.0);
            line["weak_score"] = json!(if i % 3 == 0 { 0.0 } else { 1.0 });
            format!("{line}\n")
        })
        .collect()
}

/// Runs the binary and parses its stdout: one JSON document, or one per line.
fn run(args: &[&str]) -> Vec<Value> {
    let output = Command::new(BIN).args(args).output().expect("runs");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "{args:?}: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::Deserializer::from_str(&stdout)
        .into_iter::<Value>()
        .map(Result::unwrap)
        .collect()
}

/// The decision `Route` returns for `request`.
async fn route(router: &mut TestRouter, request: pb::ConverseRequest) -> pb::Decision {
    let reply = router.client.route(request).await.unwrap().into_inner();
    reply.decision.expect("a decision")
}

/// The decisions for `requests`, sent one after another.
async fn route_all(router: &mut TestRouter, requests: &[pb::ConverseRequest]) -> Vec<pb::Decision> {
    let mut decisions = Vec::with_capacity(requests.len());
    for r in requests {
        decisions.push(route(router, r.clone()).await);
    }
    decisions
}

fn point(decision: &pb::Decision) -> pb::OperatingPoint {
    pb::OperatingPoint::try_from(decision.operating_point).expect("known operating point")
}

fn strong(decision: &pb::Decision) -> bool {
    decision.tier == pb::Tier::Strong as i32
}

/// The share of the decisions taken at the target-share point that went strong, and how many.
fn steered_share<'a>(decisions: impl Iterator<Item = &'a pb::Decision>) -> (f64, usize) {
    let steered: Vec<&pb::Decision> = decisions
        .filter(|d| point(d) == pb::OperatingPoint::TargetShare)
        .filter(|d| d.basis == pb::DecisionBasis::Score as i32)
        .collect();
    let strong_n = steered.iter().filter(|d| strong(d)).count();
    (strong_n as f64 / steered.len() as f64, steered.len())
}

const CONFIG: &str = "\
[routing]
share_warmup = 100

[callers.etl]
target_strong_share = 0.5

[callers.batch]
target_strong_share = 0.3

[callers.billing]
";

#[tokio::test]
async fn route_moves_from_warm_up_to_the_target_share_and_offline_replays_it() {
    let dir = TempDir::new("target-share");
    let config_path = dir.write("router.toml", CONFIG);
    let loaded = Config::load(
        Some(&config_path),
        std::iter::empty(),
        &Overrides::default(),
    )
    .unwrap();
    let mut router = start_checked(loaded).await;

    // etl warms up alone (nothing is warm yet: the fixed threshold), then steers itself; batch
    // then warms up on the pooled window; billing is named without a share and `web` is not
    // named: both keep the fixed threshold. A few forced batch requests do not enter its window.
    let mut requests = Vec::new();
    for i in 0..200 {
        requests.push(request(&ask(i), "etl", pb::RoutingMode::Auto));
    }
    for i in 200..600 {
        let mode = if i % 50 == 0 {
            pb::RoutingMode::ForceStrong
        } else {
            pb::RoutingMode::Auto
        };
        requests.push(request(&ask(i), "batch", mode));
        if i % 100 == 0 {
            requests.push(request(&ask(i), "billing", pb::RoutingMode::Auto));
            requests.push(request(&ask(i), "web", pb::RoutingMode::Auto));
        }
    }
    let decisions = route_all(&mut router, &requests).await;
    let caller = |i: usize| requests[i].routing.as_ref().unwrap().caller.as_str();
    let of = |name: &'static str| {
        decisions
            .iter()
            .enumerate()
            .filter(move |(i, _)| caller(*i) == name)
            .map(|(_, d)| d)
    };

    let fixed = of("web").next().unwrap().threshold;
    for (name, expected) in [
        ("web", pb::OperatingPoint::Fixed),
        ("billing", pb::OperatingPoint::Fixed),
    ] {
        assert!(of(name).all(|d| point(d) == expected && d.threshold == fixed));
    }
    let etl: Vec<&pb::Decision> = of("etl").collect();
    assert!(
        etl[..100]
            .iter()
            .all(|d| point(d) == pb::OperatingPoint::WarmupFixed && d.threshold == fixed)
    );
    assert!(
        etl[100..]
            .iter()
            .all(|d| point(d) == pb::OperatingPoint::TargetShare)
    );
    let batch: Vec<&pb::Decision> = of("batch").collect();
    let batch_auto: Vec<&pb::Decision> = batch
        .iter()
        .copied()
        .filter(|d| d.basis == pb::DecisionBasis::Score as i32)
        .collect();
    assert!(
        batch_auto[..100]
            .iter()
            .all(|d| point(d) == pb::OperatingPoint::WarmupPooled)
    );
    assert!(
        batch_auto[100..]
            .iter()
            .all(|d| point(d) == pb::OperatingPoint::TargetShare)
    );
    assert!(decisions.iter().all(|d| (0.0..=1.0).contains(&d.threshold)));
    let moved: Vec<f64> = batch_auto[100..].iter().map(|d| d.threshold).collect();
    assert!(
        moved.iter().any(|t| *t != moved[0]),
        "the threshold follows the traffic"
    );

    // A forced request reports the threshold in force and leaves it as it was.
    for (i, d) in decisions.iter().enumerate() {
        if d.basis == pb::DecisionBasis::Forced as i32 {
            let next = decisions[i + 1..]
                .iter()
                .zip(i + 1..)
                .find(|(_, j)| caller(*j) == "batch")
                .map(|(d, _)| d)
                .unwrap();
            assert_eq!((d.threshold, point(d)), (next.threshold, point(next)));
        }
    }

    let (batch_share, batch_n) = steered_share(batch.iter().copied());
    let (etl_share, etl_n) = steered_share(etl.iter().copied());
    let warmup_share = etl[..100].iter().filter(|d| strong(d)).count() as f64 / 100.0;
    println!(
        "fixed threshold {fixed:.4} sent {warmup_share:.3} of etl's warm-up strong; after warm-up: \
         batch {batch_share:.3} over {batch_n} (target 0.3), etl {etl_share:.3} over {etl_n} (target 0.5)"
    );
    assert!((batch_share - 0.3).abs() <= 0.05, "batch {batch_share}");
    assert!((etl_share - 0.5).abs() <= 0.05, "etl {etl_share}");

    // /metrics shows every configured caller's threshold in force, and the window's share.
    let scrape = Scrape::parse(&http_get(&router.metrics_url()).await);
    assert_eq!(
        scrape.types.get("router_threshold").map(String::as_str),
        Some("gauge")
    );
    let in_force = |name: &str| scrape.value(&format!("router_threshold{{caller=\"{name}\"}}"));
    assert_eq!(in_force("default"), fixed);
    assert_eq!(in_force("billing"), fixed);
    let peek = route(
        &mut router,
        request("peek", "batch", pb::RoutingMode::ForceFast),
    )
    .await;
    assert_eq!(point(&peek), pb::OperatingPoint::TargetShare);
    assert_eq!(in_force("batch"), peek.threshold);
    let window_share = scrape.value("router_window_strong_share{caller=\"batch\"}");
    let batch_strong = batch_auto.iter().filter(|d| strong(d)).count();
    assert_eq!(window_share, batch_strong as f64 / batch_auto.len() as f64);
    // The share each target-share caller is steered to: its configured one, until
    // routing.target_quality moves it.
    assert_eq!(
        scrape.value("router_target_strong_share{caller=\"batch\"}"),
        0.3
    );
    assert_eq!(
        scrape.value("router_target_strong_share{caller=\"etl\"}"),
        0.5
    );
    assert!(
        !scrape
            .series
            .contains_key("router_target_strong_share{caller=\"billing\"}"),
        "a fixed-threshold caller has no share"
    );

    // Offline: the same requests in the same order, through the binary with the same config.
    let stream = dir.write("stream.jsonl", &jsonl(&requests));
    let config_arg = config_path.to_str().unwrap();
    let stream_arg = stream.to_str().unwrap();
    let lines = run(&["route", "--config", config_arg, stream_arg]);
    assert_eq!(lines.len(), decisions.len());
    for (i, (line, d)) in lines.iter().zip(&decisions).enumerate() {
        let online = (
            d.threshold,
            if strong(d) { "strong" } else { "fast" },
            point(d)
                .as_str_name()
                .trim_start_matches("OPERATING_POINT_")
                .to_ascii_lowercase(),
        );
        let offline = (
            line["threshold"].as_f64().unwrap(),
            line["tier"].as_str().unwrap(),
            line["operating_point"].as_str().unwrap().to_owned(),
        );
        assert_eq!(offline, online, "request {i}");
    }
    let report = &run(&["eval", "--config", config_arg, "--json", stream_arg])[0];
    let replay = &report["replay"];
    let strong_n = decisions.iter().filter(|d| strong(d)).count();
    assert_eq!(
        replay["strong_share"].as_f64().unwrap(),
        strong_n as f64 / decisions.len() as f64
    );
    assert_eq!(replay["after_warmup_rows"], batch_n + etl_n);
    for name in ["batch", "etl", "default", "billing"] {
        assert_eq!(
            replay["final_points"][name]["threshold"].as_f64().unwrap(),
            in_force(name),
            "{name}"
        );
    }
    router.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn eval_target_share_reproduces_what_the_server_decided() {
    let mut router = start_with(|config| {
        config.routing.target_strong_share = Some(0.4);
    })
    .await;
    let requests: Vec<pb::ConverseRequest> = (0..400)
        .map(|i| request(&ask(i * 3 + 1), "", pb::RoutingMode::Auto))
        .collect();
    let decisions = route_all(&mut router, &requests).await;
    let peek = route(
        &mut router,
        request("peek", "", pb::RoutingMode::ForceStrong),
    )
    .await;
    router.running.shutdown().await.unwrap();

    let dir = TempDir::new("eval-target-share");
    let stream = dir.write("stream.jsonl", &jsonl(&requests));
    let report = &run(&[
        "eval",
        "--target-share",
        "0.4",
        "--json",
        stream.to_str().unwrap(),
    ])[0];
    let replay = &report["replay"];
    let (share, steered) = steered_share(decisions.iter());
    let strong_n = decisions.iter().filter(|d| strong(d)).count();
    println!(
        "server: {strong_n} of {} strong, {share:.3} of the {steered} after warm-up (target 0.4); \
         eval --target-share 0.4: {replay}",
        decisions.len()
    );
    assert!((share - 0.4).abs() <= 0.05, "{share}");
    assert_eq!(replay["after_warmup_rows"], steered);
    assert_eq!(replay["after_warmup_strong_share"].as_f64().unwrap(), share);
    assert_eq!(
        replay["strong_share"].as_f64().unwrap(),
        strong_n as f64 / decisions.len() as f64
    );
    assert_eq!(report["classifier"]["strong_share"], replay["strong_share"]);
    assert_eq!(
        replay["final_points"]["default"]["threshold"]
            .as_f64()
            .unwrap(),
        peek.threshold
    );
}

#[test]
fn the_realistic_corpus_in_file_order_keeps_every_target_after_warm_up() {
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/realistic.jsonl"),
    )
    .unwrap();
    let requests: Vec<ChatRequest> = text
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|line| line.get("header").is_none())
        .map(|line| {
            let request: pb::ConverseRequest = serde_json::from_value(line["request"].clone())
                .unwrap_or_else(|e| panic!("{}: {e}", line["id"]));
            chat_request(request, &Limits::default()).unwrap()
        })
        .collect();
    for target in [0.1, 0.3, 0.5, 0.8] {
        let mut raw = RawConfig::default();
        raw.routing.target_strong_share = Some(target);
        let decider = setup::decider(&Config::try_from(raw).unwrap()).unwrap();
        let (mut steered, mut strong) = (0usize, 0usize);
        for request in &requests {
            let choice = decider.decide(request).unwrap().choice;
            if choice.basis == Basis::Score && choice.point == Point::TargetShare {
                steered += 1;
                strong += usize::from(choice.tier == Tier::Strong);
            }
        }
        let share = strong as f64 / steered as f64;
        println!(
            "realistic corpus, {} requests in file order, target {target}: {share:.3} of the {steered} after warm-up",
            requests.len()
        );
        assert!((share - target).abs() <= 0.05, "target {target}: {share}");
    }
}
