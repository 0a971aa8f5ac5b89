//! The realistic corpus (`data/realistic.jsonl`): 363 chat-style requests of the kinds internal
//! services send, written for this project and judged `easy` (Claude 3 Haiku serves the caller
//! as well) or `hard` (Claude 3.5 Sonnet is needed) before any fit, by the rule in the file's
//! header. Routed exactly as the server routes them (validation, classifier, policy at the
//! default operating point), they must go to the tiers their judgements say and be ordered hard
//! above easy — on every row, and on the rows `train` holds out (`crc32(id) % 5 == 0`).
//!
//! The minimums are what the committed weights reach, rounded down; they are below the targets
//! the classifier is working towards (90% of each kind on its tier, ordering 0.95), which the
//! README's "Classifier" section reports as not reached.

use prompt_router::cli::{Judgement, Request, is_header};
use prompt_router_core::catalog::Tier;
use prompt_router_core::config::{Config, RawConfig};
use prompt_router_core::train::is_held_out;

const CORPUS: &str = include_str!("data/realistic.jsonl");

/// Least share of hard requests sent to the strong tier, over every row.
const MIN_HARD_TO_STRONG: f64 = 0.82;
/// Least share of easy requests sent to the fast tier, over every row.
const MIN_EASY_TO_FAST: f64 = 0.75;
/// Least share of (hard, easy) pairs scored hard above easy, over every row.
const MIN_ORDERING: f64 = 0.85;
/// The same ordering on the held-out rows only.
const MIN_HELD_OUT_ORDERING: f64 = 0.75;

struct Row {
    id: String,
    family: String,
    hard: bool,
    score: f64,
    strong: bool,
    tokens: f64,
}

fn rows() -> Vec<Row> {
    let config =
        Config::try_from(RawConfig::default()).unwrap_or_else(|e| panic!("default config: {e}"));
    let decider =
        prompt_router::setup::decider(&config).unwrap_or_else(|e| panic!("default decider: {e:#}"));
    CORPUS
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !is_header(l))
        .map(|(i, line)| {
            let r = Request::parse(line, &config.limits)
                .unwrap_or_else(|e| panic!("line {}: {e:#}", i + 1));
            let routed = decider
                .decide(&r.request)
                .unwrap_or_else(|e| panic!("line {}: {e}", i + 1));
            Row {
                id: r.id_text(),
                family: r.family.clone().unwrap_or_default(),
                hard: r
                    .judgement
                    .unwrap_or_else(|| panic!("line {}: no judgement", i + 1))
                    == Judgement::Hard,
                score: routed.classification.score(),
                strong: routed.choice.tier == Tier::Strong,
                tokens: routed.classification.input_tokens(),
            }
        })
        .collect()
}

/// (hard → strong, easy → fast, ordering by `key`) over `rows`.
fn summary(rows: &[&Row], key: impl Fn(&Row) -> f64) -> (f64, f64, f64) {
    let hard: Vec<&&Row> = rows.iter().filter(|r| r.hard).collect();
    let easy: Vec<&&Row> = rows.iter().filter(|r| !r.hard).collect();
    let mut wins = 0.0;
    for h in &hard {
        for e in &easy {
            let (a, b) = (key(h), key(e));
            wins += if a > b {
                1.0
            } else if a == b {
                0.5
            } else {
                0.0
            };
        }
    }
    let share = |v: &[&&Row], f: &dyn Fn(&Row) -> bool| {
        v.iter().filter(|r| f(r)).count() as f64 / v.len().max(1) as f64
    };
    (
        share(&hard, &|r| r.strong),
        share(&easy, &|r| !r.strong),
        wins / (hard.len() * easy.len()).max(1) as f64,
    )
}

#[test]
fn corpus_is_well_formed() {
    let header = CORPUS.lines().next().unwrap_or_default();
    assert!(is_header(header), "the file opens with its header");
    let header: serde_json::Value = serde_json::from_str(header).unwrap();
    assert!(
        header["header"]["rule"]
            .as_str()
            .is_some_and(|r| r.contains("`hard`"))
    );
    let rows = rows();
    assert!(rows.len() >= 300, "{} requests", rows.len());
    let mut ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), rows.len(), "duplicate ids");
    let mut families: Vec<&str> = rows.iter().map(|r| r.family.as_str()).collect();
    families.sort_unstable();
    families.dedup();
    assert!(families.len() >= 10, "{families:?}");
    for f in families {
        let of = |hard: bool| {
            rows.iter()
                .filter(|r| r.family == f && r.hard == hard)
                .count()
        };
        assert!(
            of(true) > 0 && of(false) > 0,
            "family {f} needs both judgements"
        );
    }
}

#[test]
fn default_operating_point_routes_the_corpus() {
    let rows = rows();
    let all: Vec<&Row> = rows.iter().collect();
    let (hard, easy, ordering) = summary(&all, |r| r.score);
    let (_, _, by_length) = summary(&all, |r| r.tokens);
    let held: Vec<&Row> = rows.iter().filter(|r| is_held_out(&r.id)).collect();
    let (held_hard, held_easy, held_ordering) = summary(&held, |r| r.score);
    println!(
        "all {} rows: hard → strong {hard:.3}, easy → fast {easy:.3}, hard above easy {ordering:.3} \
         (length alone {by_length:.3}); held-out {} rows: {held_hard:.3}, {held_easy:.3}, {held_ordering:.3}",
        all.len(),
        held.len()
    );
    let mut families: Vec<&str> = rows.iter().map(|r| r.family.as_str()).collect();
    families.sort_unstable();
    families.dedup();
    for f in families {
        let of: Vec<&Row> = rows.iter().filter(|r| r.family == f).collect();
        let (h, e, o) = summary(&of, |r| r.score);
        println!(
            "  {f:<10} {:>3} rows: hard → strong {h:.3}, easy → fast {e:.3}, hard above easy {o:.3}",
            of.len()
        );
    }
    assert!(hard >= MIN_HARD_TO_STRONG, "hard → strong {hard:.3}");
    assert!(easy >= MIN_EASY_TO_FAST, "easy → fast {easy:.3}");
    assert!(ordering >= MIN_ORDERING, "ordering {ordering:.3}");
    assert!(
        held_ordering >= MIN_HELD_OUT_ORDERING,
        "held-out ordering {held_ordering:.3}"
    );
    // The corpus was written so that length does not tell: a length-only router fails it.
    assert!(
        by_length < MIN_ORDERING - 0.1,
        "length alone orders {by_length:.3}"
    );
}
