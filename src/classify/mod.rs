//! Prompt-complexity classifier. PURE: no I/O, no async.
//!
//! A conversation's text is pushed piece by piece (system prompts first, then turns oldest →
//! newest). Each piece is scanned once: byte classes, word and number runs, and keyword-family
//! matches from one Aho-Corasick automaton (ASCII case-insensitive, no lowercased copy). Counts
//! are added to running totals scaled by the piece's part weight ([`Part::weight`]), so the last
//! user turn counts most. [`Accumulator::finish`] turns the totals and the request [`Shape`] into
//! feature values and scores them: `score = logistic(bias + Σ wᵢ·zᵢ)` with the standardised
//! value `zᵢ = clamp((xᵢ − meanᵢ)/scaleᵢ, ±clip)`; `wᵢ·zᵢ` is feature i's contribution (0 for
//! a prompt whose value equals the training mean).
//! Scoring allocates nothing.

mod features;
mod keywords;
mod weights;

pub use features::{BuildError, FEATURE_NAMES, NUM_FEATURES, estimate_tokens};
pub use weights::{
    DEFAULT_CLIP, FORMAT_VERSION, FeatureWeight, FileSummary, Metadata, Rescale, Weights,
    WeightsError,
};

use features::{Context, PieceCounts, Scanner, Totals};
use weights::Dense;

/// The committed default weights, produced by `train`.
const DEFAULT_WEIGHTS: &str = include_str!("../../weights/default.json");

/// Which part of a conversation a text piece comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// A system prompt.
    System,
    /// A user turn; `last` marks the newest user turn, the one being answered.
    User {
        /// Whether this is the newest user turn.
        last: bool,
    },
    /// An earlier assistant turn.
    Assistant,
    /// Text returned by a tool.
    ToolResult,
}

impl Part {
    /// How much a piece's counts weigh in the features. The newest user turn says what has to
    /// be done; system prompts and earlier user turns shape it; earlier answers and tool output
    /// are mostly material to read.
    pub fn weight(self) -> f64 {
        match self {
            Part::User { last: true } => 1.0,
            Part::User { last: false } | Part::System => 0.5,
            Part::Assistant | Part::ToolResult => 0.25,
        }
    }
}

/// What the request carries besides text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Shape {
    /// Number of messages (user and assistant) in the conversation.
    pub turns: u32,
    /// Number of images attached.
    pub images: u32,
    /// Number of tools offered.
    pub tools: u32,
    /// Requested output limit, if any.
    pub max_tokens: Option<u32>,
}

/// A prompt-complexity classifier: keyword automaton plus weights.
#[derive(Debug, Clone)]
pub struct Classifier {
    scanner: Scanner,
    dense: Dense,
    threshold: f64,
}

impl Classifier {
    /// Validates the weights and builds the keyword automaton (once).
    pub fn new(weights: Weights) -> Result<Self, WeightsError> {
        let dense = weights.dense()?;
        Ok(Self {
            scanner: Scanner::new()?,
            dense,
            threshold: weights.threshold,
        })
    }

    /// The committed default weights (`weights/default.json`). A unit test keeps the committed
    /// file valid; an error here still surfaces at start-up rather than routing on neutral weights.
    pub fn default_weights() -> Result<Weights, WeightsError> {
        Weights::from_json(DEFAULT_WEIGHTS)
    }

    /// A classifier with the committed default weights.
    pub fn with_default_weights() -> Result<Self, WeightsError> {
        Self::new(Self::default_weights()?)
    }

    /// Default routing threshold from the weights.
    pub fn threshold(&self) -> f64 {
        self.threshold
    }

    /// Starts classifying one conversation.
    pub fn begin(&self) -> Accumulator<'_> {
        Accumulator {
            classifier: self,
            totals: Totals::default(),
            system_tokens: 0.0,
            input_tokens: 0.0,
        }
    }

    /// Classifies a single user prompt with no other context.
    pub fn classify_prompt(&self, prompt: &str) -> Classification {
        let mut acc = self.begin();
        acc.push(Part::User { last: true }, prompt);
        acc.finish(Shape {
            turns: 1,
            ..Shape::default()
        })
    }
}

/// Running totals for one conversation.
#[derive(Debug, Clone)]
pub struct Accumulator<'a> {
    classifier: &'a Classifier,
    totals: Totals,
    system_tokens: f64,
    input_tokens: f64,
}

impl Accumulator<'_> {
    /// Adds one text piece; call in conversation order.
    pub fn push(&mut self, part: Part, text: &str) {
        let counts: PieceCounts = self.classifier.scanner.scan(text);
        let tokens = counts.tokens();
        self.input_tokens += tokens;
        if part == Part::System {
            self.system_tokens += tokens;
        }
        self.totals.add(&counts, part.weight());
    }

    /// Computes the features and the score.
    pub fn finish(self, shape: Shape) -> Classification {
        let ctx = Context {
            system_tokens: self.system_tokens,
            turns: shape.turns,
            images: shape.images,
            tools: shape.tools,
            max_tokens: shape.max_tokens,
        };
        let values = features::compute(&self.totals, &ctx);
        let d = &self.classifier.dense;
        let mut contributions = [0.0; NUM_FEATURES];
        let mut logit = d.bias;
        for (i, c) in contributions.iter_mut().enumerate() {
            *c = contribution(d.weight[i], values[i], d.mean[i], d.scale[i], d.clip);
            logit += *c;
        }
        Classification {
            score: logistic(logit),
            logit,
            values,
            contributions,
            input_tokens: self.input_tokens,
        }
    }
}

/// `1 / (1 + e^−x)`, in [0, 1] for every finite or infinite x.
pub fn logistic(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// A feature's contribution to the logit: its weight times its standardised value, clipped to
/// ±`clip` standard deviations. Serving and training both score with this.
pub fn contribution(weight: f64, value: f64, mean: f64, scale: f64, clip: f64) -> f64 {
    weight * ((value - mean) / scale).clamp(-clip, clip)
}

/// The result of classifying one conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Classification {
    score: f64,
    logit: f64,
    values: [f64; NUM_FEATURES],
    contributions: [f64; NUM_FEATURES],
    input_tokens: f64,
}

impl Classification {
    /// Complexity score in [0, 1]; higher means the strong model is more likely to be needed.
    pub fn score(&self) -> f64 {
        self.score
    }

    /// The score before the logistic: bias plus every contribution.
    pub fn logit(&self) -> f64 {
        self.logit
    }

    /// Feature values in [`FEATURE_NAMES`] order.
    pub fn values(&self) -> &[f64; NUM_FEATURES] {
        &self.values
    }

    /// Estimated input tokens over every piece pushed (unweighted; see [`estimate_tokens`]).
    pub fn input_tokens(&self) -> f64 {
        self.input_tokens
    }

    /// The `n` features that moved the logit most (by absolute contribution, ties by feature
    /// order), as (feature name, contribution to the logit); 0 means "as for an average prompt".
    pub fn top_reasons(&self, n: usize) -> impl Iterator<Item = (&'static str, f64)> + '_ {
        let mut order: [usize; NUM_FEATURES] = std::array::from_fn(|i| i);
        order.sort_unstable_by(|&a, &b| {
            self.contributions[b]
                .abs()
                .total_cmp(&self.contributions[a].abs())
                .then(a.cmp(&b))
        });
        order
            .into_iter()
            .take(n)
            .map(|i| (FEATURE_NAMES[i], self.contributions[i]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_weights_file_is_valid() {
        let w = Weights::from_json(DEFAULT_WEIGHTS).unwrap();
        assert_eq!(Classifier::default_weights().unwrap(), w);
        assert!(w.threshold > 0.0 && w.threshold < 1.0);
    }

    #[test]
    fn neutral_weights_score_one_half() {
        let c = Classifier::new(Weights::neutral()).unwrap();
        assert_eq!(c.classify_prompt("anything at all").score(), 0.5);
    }

    #[test]
    fn contributions_sum_to_the_logit() {
        let c = Classifier::with_default_weights().unwrap();
        let r = c.classify_prompt("Prove that sqrt(2) is irrational, step by step.");
        let sum: f64 = r.top_reasons(NUM_FEATURES).map(|(_, v)| v).sum();
        let bias = Classifier::default_weights().unwrap().bias;
        assert!((bias + sum - r.logit()).abs() < 1e-9);
        assert!((logistic(r.logit()) - r.score()).abs() < 1e-12);
    }

    #[test]
    fn top_reasons_are_sorted_by_magnitude() {
        let c = Classifier::with_default_weights().unwrap();
        let r = c.classify_prompt("def f(x):\n    return x * 2\n\nWhy does this fail?");
        let v: Vec<f64> = r.top_reasons(5).map(|(_, c)| c.abs()).collect();
        assert_eq!(v.len(), 5);
        assert!(v.windows(2).all(|w| w[0] >= w[1]));
    }

    #[test]
    fn last_user_turn_weighs_most() {
        let c = Classifier::new(Weights::neutral()).unwrap();
        let mut a = c.begin();
        a.push(Part::Assistant, "1 2 3 4 5 6 7 8");
        let low = a.finish(Shape::default());
        let mut b = c.begin();
        b.push(Part::User { last: true }, "1 2 3 4 5 6 7 8");
        let high = b.finish(Shape::default());
        let i = FEATURE_NAMES.iter().position(|n| *n == "numbers").unwrap();
        assert!(high.values()[i] > low.values()[i]);
        assert_eq!(high.input_tokens(), low.input_tokens());
    }

    #[test]
    fn system_prompt_size_is_a_feature() {
        let c = Classifier::new(Weights::neutral()).unwrap();
        let mut a = c.begin();
        a.push(Part::System, "You are terse. Answer in JSON only.");
        a.push(Part::User { last: true }, "hi");
        let r = a.finish(Shape::default());
        let i = FEATURE_NAMES
            .iter()
            .position(|n| *n == "system_tokens")
            .unwrap();
        assert!(r.values()[i] > 0.0);
    }
}
