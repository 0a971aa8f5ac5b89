//! The online quality estimate against the simulator's truth. Through a real router, the real
//! SDK and the simulator's judge, 500 duels give exactly the recovered share that
//! `bedrock_sim::world` computes for those 500 requests: the duels' verdicts are the world's and
//! the estimate adds no error of its own. What remains is sampling error against the truth of the
//! whole traffic mix (20,000 requests), measured over 400 samples of 500 from that population
//! with the same estimator. One test per binary: the recorder is process-wide.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::{
    ask, eventually,
    exposition::Scrape,
    http_get, start_with,
    world::{self, HAIKU_US, SONNET_US},
};
use prompt_router::{server::convert::chat_request, setup};
use prompt_router_core::{
    config::{Config, RawConfig},
    operating::DEFAULT_CALLER,
    quality::{
        estimate::{Duel, recovery},
        label::DuelOutcome,
    },
    request::Limits,
};

/// Asks from easy to hard, each with the centre of its hidden difficulty.
const ASKS: &[(&str, f64)] = &[
    ("Say hello.", 0.05),
    ("What is the capital of Italy?", 0.1),
    ("Translate 'thank you very much' into German.", 0.2),
    ("Summarise the plot of Hamlet in two sentences.", 0.3),
    (
        "Explain how a hash map handles collisions, with an example.",
        0.45,
    ),
    (
        "Write a Python function that merges overlapping intervals and explain its complexity.",
        0.55,
    ),
    (
        "Compare optimistic and pessimistic locking in a relational database, with the trade-offs of each under high contention.",
        0.65,
    ),
    (
        "Prove that the square root of 2 is irrational, then generalise the proof to every prime.",
        0.75,
    ),
    (
        "Design a multi-region rate limiter for an API gateway: compare token bucket and sliding window, discuss consistency under partitions, and give pseudocode.",
        0.85,
    ),
    (
        "Derive the time complexity of building a binary heap bottom-up and prove the O(n) bound rigorously, step by step.",
        0.95,
    ),
];

/// The `n` prompts of the traffic mix drawn with `seed`.
fn traffic(seed: u64, n: usize) -> Vec<String> {
    world::traffic(ASKS, 0.3, seed, n)
}

/// The duels a fair judge gives `prompts` in the simulator's world.
fn judged(prompts: &[String], scores: &[f64]) -> Vec<Duel> {
    prompts
        .iter()
        .zip(scores)
        .map(|(prompt, &score)| Duel {
            score,
            outcome: match bedrock_sim::world::preference(SONNET_US, HAIKU_US, prompt) {
                1 => DuelOutcome::StrongBetter,
                -1 => DuelOutcome::FastBetter,
                _ => DuelOutcome::Tie,
            },
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_estimate_converges_to_the_simulators_truth() {
    let config = Config::try_from(RawConfig::default()).unwrap();
    let decider = setup::decider(&config).unwrap();
    let threshold = decider.operating.in_force(DEFAULT_CALLER).threshold;
    let score = |prompt: &String| {
        decider
            .classify(&chat_request(ask(prompt), &Limits::default()).unwrap())
            .score()
    };
    let population = traffic(1, 20_000);
    let population_scores: Vec<f64> = population.iter().map(score).collect();
    let world = judged(&population, &population_scores);
    let population_truth = recovery(&world, threshold).unwrap().ratio;
    // Sampling error alone: 400 samples of 500 duels from the population.
    let mut rng = fastrand::Rng::with_seed(3);
    let trials = 400;
    let (mut within, mut covered) = (0, 0);
    for _ in 0..trials {
        let sample: Vec<Duel> = (0..500).map(|_| world[rng.usize(..world.len())]).collect();
        let r = recovery(&sample, threshold).unwrap();
        within += usize::from((r.ratio - population_truth).abs() <= 0.05);
        covered += usize::from(r.low <= population_truth && population_truth <= r.high);
    }
    let within = within as f64 / f64::from(trials);
    let covered = covered as f64 / f64::from(trials);

    let router = start_with(|raw| {
        raw.quality.duel_rate = 1.0;
        raw.quality.duel_concurrency = 64;
        raw.quality.usd_per_hour = 1e6;
    })
    .await;
    let sample = traffic(2, 500);
    router.ask_all(&sample, 4).await;
    let url = router.metrics_url();
    eventually("500 duels in the estimate", || async {
        Scrape::parse(&http_get(&url).await).value("router_quality_duels") >= 500.0
    })
    .await;
    let scrape = Scrape::parse(&http_get(&url).await);
    let estimate = scrape.value("router_quality_recovered_ratio");
    let (low, high) = (
        scrape.value("router_quality_recovered_ratio_low"),
        scrape.value("router_quality_recovered_ratio_high"),
    );
    for outcome in ["unparsed", "failed", "skipped_busy", "skipped_budget"] {
        assert_eq!(
            scrape.value(&format!("router_duels_total{{outcome=\"{outcome}\"}}")),
            0.0,
            "{outcome}"
        );
    }
    // The duels' verdicts are the world's: on the sample itself the estimate is exact.
    let sample_scores: Vec<f64> = sample.iter().map(score).collect();
    let sample_truth = recovery(&judged(&sample, &sample_scores), threshold)
        .unwrap()
        .ratio;
    println!(
        "threshold {threshold:.3}: estimate {estimate:.4} [{low:.4}, {high:.4}] from 500 duels; \
         truth on those 500 {sample_truth:.4}, on 20,000 of the same mix {population_truth:.4}; \
         of 400 samples of 500, {:.1}% within ±0.05 of it, {:.1}% of intervals cover it",
        within * 100.0,
        covered * 100.0
    );
    assert!(
        (estimate - sample_truth).abs() < 1e-9,
        "{estimate} vs {sample_truth}"
    );
    assert!((0.90..=0.99).contains(&covered), "coverage {covered}");
    assert!(within >= 0.75, "{within} within ±0.05");
    router.running.shutdown().await.unwrap();
}
