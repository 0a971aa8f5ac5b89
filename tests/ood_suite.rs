//! Out-of-domain sanity suite: prompts written for this project (none taken from a benchmark) in
//! the categories the router meets beyond its labelled sets — chit-chat, lookups, translation,
//! extraction, rewriting, one-step arithmetic; maths, multi-step word problems, logic, code,
//! science, analysis; writing and role-play; multi-turn chats and system prompts — with expected
//! partial orders, in `data/ood_suite.json`:
//!
//! - every hard single-turn prompt (maths, word problems of three or more steps, reasoning,
//!   code, science, analysis) above every easy one (chit-chat, lookup, translation, extraction,
//!   rewriting, classification, one-step arithmetic) of similar length: estimated tokens within
//!   a factor of [`SIMILAR`], so that length alone cannot order them;
//! - each chain in increasing order: word problems with more steps above the same problem with
//!   fewer, the same conversation ending in a proof request above it ending in "thanks!", a long
//!   persona system prompt with an easy question below a short one with a hard question…
//!
//! The concordance (share of expected pairs the committed weights order right, ties counting
//! half) must reach [`MIN_CROSS`] and [`MIN_CHAINS`]. Both minimums and the suite were fixed
//! before the final fit; the suite was not tuned to pass (see README, "Classifier").

use prompt_router_core::classify::{Classifier, Part, Shape};
use serde_json::Value;

const SUITE: &str = include_str!("data/ood_suite.json");

/// Hard and easy single-turn prompts are compared when their estimated token counts are
/// within this factor of each other.
const SIMILAR: f64 = 2.0;

/// Least concordance on the hard-above-easy pairs of similar length. The weights before the
/// out-of-domain work reached 0.796 and length alone 0.542.
const MIN_CROSS: f64 = 0.85;

/// Least concordance on the chains (word-problem steps, multi-turn follow-ups, system prompts).
const MIN_CHAINS: f64 = 0.85;

/// Expected orders as (lower, higher) indices into the scored cases.
type Pairs = Vec<(usize, usize)>;

/// One scored case of the suite.
struct Case {
    id: String,
    level: String,
    single_turn: bool,
    score: f64,
    tokens: f64,
}

fn text(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
}

fn suite() -> Value {
    serde_json::from_str(SUITE).unwrap_or_else(|e| panic!("data/ood_suite.json: {e}"))
}

/// Scores every case as the server would see it: system prompt, then turns alternating user
/// and assistant, the last one the user's.
fn score_cases(c: &Classifier, suite: &Value) -> Vec<Case> {
    let cases = suite["cases"].as_array().map_or(&[][..], Vec::as_slice);
    cases
        .iter()
        .map(|case| {
            let turns = case["turns"].as_array().map_or(&[][..], Vec::as_slice);
            let mut acc = c.begin();
            if let Some(system) = case.get("system") {
                acc.push(Part::System, text(system));
            }
            for (i, turn) in turns.iter().enumerate() {
                let part = if i % 2 == 1 {
                    Part::Assistant
                } else {
                    Part::User {
                        last: i + 1 == turns.len(),
                    }
                };
                acc.push(part, text(turn));
            }
            let r = acc.finish(Shape {
                turns: u32::try_from(turns.len()).unwrap_or(u32::MAX),
                ..Shape::default()
            });
            Case {
                id: text(&case["id"]).to_owned(),
                level: text(&case["level"]).to_owned(),
                single_turn: turns.len() == 1 && case.get("system").is_none(),
                score: r.score(),
                tokens: r.input_tokens(),
            }
        })
        .collect()
}

/// Expected (lower, higher) pairs, as indices into `cases`: hard-above-easy pairs of similar
/// length, and chain pairs.
fn expected_pairs(cases: &[Case], suite: &Value) -> (Pairs, Pairs) {
    let mut cross = Vec::new();
    for (h, hard) in cases.iter().enumerate() {
        for (e, easy) in cases.iter().enumerate() {
            let similar = hard.tokens.max(easy.tokens) <= SIMILAR * hard.tokens.min(easy.tokens);
            if hard.single_turn
                && easy.single_turn
                && hard.level == "hard"
                && easy.level == "easy"
                && similar
            {
                cross.push((e, h));
            }
        }
    }
    let index = |id: &str| {
        cases
            .iter()
            .position(|c| c.id == id)
            .unwrap_or_else(|| panic!("chain names unknown case {id}"))
    };
    let mut chains = Vec::new();
    for chain in suite["chains"].as_array().map_or(&[][..], Vec::as_slice) {
        let ids: Vec<usize> = chain
            .as_array()
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .map(|id| index(text(id)))
            .collect();
        for (i, &lo) in ids.iter().enumerate() {
            for &hi in &ids[i + 1..] {
                chains.push((lo, hi));
            }
        }
    }
    (cross, chains)
}

/// Share of `pairs` whose higher member outscores the lower one under `score`, ties half; and
/// the pairs ordered wrong.
fn concordance(
    cases: &[Case],
    pairs: &[(usize, usize)],
    score: impl Fn(&Case) -> f64,
) -> (f64, Vec<String>) {
    let mut right = 0.0;
    let mut wrong = Vec::new();
    for &(lo, hi) in pairs {
        let (a, b) = (score(&cases[lo]), score(&cases[hi]));
        if b > a {
            right += 1.0;
        } else if b == a {
            right += 0.5;
        } else {
            wrong.push(format!("{} ≥ {}", cases[lo].id, cases[hi].id));
        }
    }
    (right / pairs.len().max(1) as f64, wrong)
}

fn default_classifier() -> Classifier {
    Classifier::with_default_weights().unwrap_or_else(|e| panic!("default weights: {e}"))
}

#[test]
fn suite_is_well_formed() {
    let s = suite();
    let c = default_classifier();
    let cases = score_cases(&c, &s);
    assert!(cases.len() >= 100, "{} cases", cases.len());
    let mut ids: Vec<&str> = cases.iter().map(|c| c.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), cases.len(), "duplicate ids");
    for case in s["cases"].as_array().map_or(&[][..], Vec::as_slice) {
        let level = text(&case["level"]);
        assert!(["easy", "mid", "hard"].contains(&level), "{case}");
        let turns = case["turns"].as_array().map_or(0, Vec::len);
        assert!(
            turns % 2 == 1,
            "a conversation ends with a user turn: {case}"
        );
    }
    let (cross, chains) = expected_pairs(&cases, &s);
    assert!(cross.len() >= 500, "{} cross pairs", cross.len());
    assert!(chains.len() >= 20, "{} chain pairs", chains.len());
}

#[test]
fn default_weights_order_the_suite() {
    let s = suite();
    let c = default_classifier();
    let cases = score_cases(&c, &s);
    let (cross, chains) = expected_pairs(&cases, &s);
    let (cross_c, cross_wrong) = concordance(&cases, &cross, |c| c.score);
    let (chain_c, chain_wrong) = concordance(&cases, &chains, |c| c.score);
    let all: Pairs = cross.iter().chain(&chains).copied().collect();
    let (all_c, _) = concordance(&cases, &all, |c| c.score);
    let (len_cross, _) = concordance(&cases, &cross, |c| c.tokens);
    let (len_chain, _) = concordance(&cases, &chains, |c| c.tokens);
    println!(
        "concordance: hard above easy of similar length {cross_c:.3} ({} pairs; length alone \
         {len_cross:.3}), chains {chain_c:.3} ({} pairs; length alone {len_chain:.3}), all {all_c:.3}",
        cross.len(),
        chains.len()
    );
    println!("chain pairs ordered wrong: {chain_wrong:?}");
    assert!(
        cross_c >= MIN_CROSS,
        "hard-above-easy concordance {cross_c:.3} < {MIN_CROSS}; {} pairs wrong, e.g. {:?}",
        cross_wrong.len(),
        &cross_wrong[..cross_wrong.len().min(10)]
    );
    assert!(
        chain_c >= MIN_CHAINS,
        "chain concordance {chain_c:.3} < {MIN_CHAINS}: {chain_wrong:?}"
    );
}

#[test]
fn length_alone_does_not_pass() {
    // The suite is built so that the minimum means something: a length-only router, the
    // baseline the classifier must beat, fails it.
    let s = suite();
    let cases = score_cases(&default_classifier(), &s);
    let (cross, _) = expected_pairs(&cases, &s);
    let (len_cross, _) = concordance(&cases, &cross, |c| c.tokens);
    assert!(len_cross < MIN_CROSS, "{len_cross}");
}
