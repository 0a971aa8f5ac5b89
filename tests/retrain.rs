//! The learning loop end to end: a company's traffic on which the shipped weights rank poorly
//! goes through a real router with duels on (real SDK, the simulator's world and judge); the
//! duels' label rows land in a file store; the real `train --labels` binary fits weights from
//! them; and `eval` on the next requests of the same mix, scored by the world's truth, shows
//! the retrained weights ranking better than the shipped ones. One test per binary: the
//! recorder is process-wide.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::{io::Write, path::Path, process::Command};

use common::{
    eventually,
    exposition::Scrape,
    http_get,
    process::BIN,
    start_with,
    world::{self, HAIKU_US, SONNET_US},
};

/// Asks and the centre of their hidden difficulty in this company's world: its short,
/// plain questions are about its own hard domain, and its long, proof-worded requests are
/// routine boilerplate. The shipped weights read the wording and length the other way.
const ASKS: &[(&str, f64)] = &[
    ("Is the ledger closed?", 0.9),
    ("Which settlement batch failed?", 0.85),
    ("Why did reconciliation drift?", 0.8),
    ("Can we net these two positions?", 0.75),
    (
        "Summarise this status update in one line: all systems are normal and the deploy finished on time.",
        0.3,
    ),
    (
        "Prove, step by step, that the standard greeting template below is polite, then derive a one-sentence version of it and explain the reasoning behind each word you keep: 'Hello, and thank you for contacting us today.'",
        0.1,
    ),
    (
        "Design, analyse and compare three ways to say 'thanks for your order' in a friendly tone, with the trade-offs of each, step by step.",
        0.15,
    ),
    (
        "Explain step by step why the following sentence is a greeting and prove it is grammatical: 'Good morning, team.'",
        0.05,
    ),
];

/// `n` prompts of the mix drawn with `seed`.
fn traffic(seed: u64, n: usize) -> Vec<String> {
    world::traffic(ASKS, 0.2, seed, n)
}

/// `eval --json` APGR of `weights` (the shipped ones when `None`) on `file`.
fn apgr(file: &Path, weights: Option<&Path>) -> f64 {
    let mut cmd = Command::new(BIN);
    cmd.arg("eval").arg("--json");
    if let Some(weights) = weights {
        cmd.arg("--weights").arg(weights);
    }
    let out = cmd.arg(file).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["classifier"]["apgr"].as_f64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retraining_on_duel_labels_ranks_the_next_requests_better() {
    let dir = std::env::temp_dir().join(format!("router-retrain-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = dir.join("labels");
    let store_url = format!("file:{}", store.display());

    let parsed = store_url.clone();
    let router = start_with(move |raw| {
        raw.quality.duel_rate = 1.0;
        raw.quality.duel_concurrency = 64;
        raw.quality.usd_per_hour = 1e6;
        raw.quality.store = Some(parsed.clone());
    })
    .await;
    let seen = traffic(1, 2_000);
    router.ask_all(&seen, 8).await;
    let url = router.metrics_url();
    let judged = |s: &Scrape| {
        ["strong_better", "tie", "fast_better"]
            .iter()
            .map(|o| s.value(&format!("router_duels_total{{outcome=\"{o}\"}}")))
            .sum::<f64>()
    };
    eventually("the duels' rows stored", || async {
        let s = Scrape::parse(&http_get(&url).await);
        judged(&s) >= 1_500.0
            && s.sum(
                "router_labels_total",
                &["outcome=\"stored\"", "source=\"duel\""],
            ) >= judged(&s)
    })
    .await;
    router.running.shutdown().await.unwrap();

    let weights = dir.join("retrained.json");
    let train = Command::new(BIN)
        .args([
            "train",
            "--no-cross-validation",
            "--labels",
            &store_url,
            "--out",
        ])
        .arg(&weights)
        .output()
        .unwrap();
    assert!(
        train.status.success(),
        "{}",
        String::from_utf8_lossy(&train.stderr)
    );

    let next = dir.join("next.jsonl");
    let mut file = std::fs::File::create(&next).unwrap();
    for (i, prompt) in traffic(2, 2_000).iter().enumerate() {
        let score = |model| f64::from(u8::from(bedrock_sim::world::right(model, prompt)));
        let line = serde_json::json!({
            "id": format!("next-{i}"),
            "prompt": prompt,
            "strong_score": score(SONNET_US),
            "weak_score": score(HAIKU_US),
        });
        writeln!(file, "{line}").unwrap();
    }
    drop(file);
    let shipped = apgr(&next, None);
    let retrained = apgr(&next, Some(&weights));
    println!("APGR on the next 2,000: shipped {shipped:.3}, retrained {retrained:.3}");
    assert!(
        retrained - shipped >= 0.10,
        "shipped {shipped:.3}, retrained {retrained:.3}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
