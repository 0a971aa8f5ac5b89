//! Traffic and label rows in the simulator's world, for the duel, retraining and label tests.

use prompt_router_core::{
    classify::Classifier,
    quality::label::{DuelOutcome, Label, LabelRow, LabelTier},
};

/// The default strong model as the router invokes it (the US profile).
pub const SONNET_US: &str = "us.anthropic.claude-3-5-sonnet-20241022-v2:0";
/// The default fast model as the router invokes it.
pub const HAIKU_US: &str = "us.anthropic.claude-3-haiku-20240307-v1:0";

/// `n` prompts drawn with `seed` from `asks` (each an ask and the centre of its hidden
/// difficulty): the ask, a case number, and a difficulty within `spread` around the centre.
pub fn traffic(asks: &[(&str, f64)], spread: f64, seed: u64, n: usize) -> Vec<String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n)
        .map(|i| {
            let (text, centre) = asks[rng.usize(..asks.len())];
            let d = (centre + (rng.f64() - 0.5) * spread).clamp(0.0, 1.0);
            format!("{text} (case {seed}-{i}) [sim:difficulty={d:.3}]")
        })
        .collect()
}

/// A duel's label row for request `id` as the built-in weights score `prompt`: answered by the
/// fast tier, the strong answer better when `strong_better`, else a tie.
pub fn duel_row(
    classifier: &Classifier,
    id: &str,
    caller: &str,
    prompt: &str,
    strong_better: bool,
) -> LabelRow {
    let c = classifier.classify_prompt(prompt);
    LabelRow {
        request_id: id.to_owned(),
        time_ms: 1_700_000_000_000,
        caller: caller.to_owned(),
        tier: LabelTier::Fast,
        score: c.score(),
        weights_version: classifier.version().to_string(),
        features: LabelRow::feature_map(c.values()),
        input_tokens: c.input_tokens(),
        label: Label::Duel {
            outcome: if strong_better {
                DuelOutcome::StrongBetter
            } else {
                DuelOutcome::Tie
            },
        },
        prompt: None,
    }
}
