//! Prompt-complexity classifier. PURE: no I/O, no async.
//!
//! A conversation's text is pushed piece by piece (system prompts first, then turns oldest →
//! newest). Each piece is scanned once: byte classes, number runs, and keyword-family matches
//! from one Aho-Corasick automaton (ASCII case-insensitive, no lowercased copy), its edges (where
//! a request states its ask) apart from its middle (where long pieces hold pasted material).
//! The edges' counts are added to running totals scaled by the part ([`Part::ask_weight`]), so
//! the newest user turn's ask counts most; the middle's cues count for nothing. [`Accumulator::finish`]
//! turns the totals and the request [`Shape`] into feature values and scores them:
//! `score = logistic(bias + Σ wᵢ·zᵢ)` with `zᵢ = clamp((xᵢ − centreᵢ)/scaleᵢ, ±clip)`; `wᵢ·zᵢ`
//! is feature i's contribution. Every centre is the value of a request without the feature (no
//! cue, no code, no image), so an absent feature contributes exactly 0 and a reason always
//! names something the request has. Scoring allocates nothing.

mod features;
mod keywords;
mod weights;

pub use features::{BuildError, Feature, NUM_FEATURES, estimate_tokens};
pub use weights::{
    DEFAULT_CLIP, FORMAT_VERSION, FeatureWeight, FileSummary, Metadata, Rescale, Weights,
    WeightsError,
};

use std::sync::Arc;

use features::{Context, Regions, Scanner, Totals};

use crate::catalog::Tier;
use weights::Dense;

/// The committed default weights, produced by `train`.
const DEFAULT_WEIGHTS: &str = include_str!("../../../../weights/default.json");

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
    /// How much the cue, quantity and notation counts of a piece's edges weigh; its middle's
    /// weigh nothing. The newest user turn says what has to be done, in its edges; the middle
    /// of a long piece is pasted material, whose vocabulary says what it is about, not what is
    /// asked (a 3,000-word meeting transcript full of "analysed" and "design" is still a
    /// summary request). System prompts, earlier turns and tool output are context: their cues
    /// (a support bot's policy "must"s, the hard question three turns back) say little about
    /// the request being answered now.
    pub fn ask_weight(self) -> f64 {
        match self {
            Part::User { last: true } => 1.0,
            Part::User { last: false } => 0.3,
            Part::System | Part::Assistant => 0.1,
            Part::ToolResult => 0.05,
        }
    }

    /// How much a piece's code syntax weighs: code the user pastes is what the request is
    /// about, wherever it sits in the turn.
    pub fn code_weight(self) -> f64 {
        match self {
            Part::User { last: true } => 1.0,
            Part::User { last: false } => 0.5,
            Part::System | Part::Assistant | Part::ToolResult => 0.25,
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
    version: Arc<str>,
}

impl Classifier {
    /// Validates the weights and builds the keyword automaton (once).
    pub fn new(weights: Weights) -> Result<Self, WeightsError> {
        let dense = weights.dense()?;
        Ok(Self {
            scanner: Scanner::new()?,
            dense,
            threshold: weights.threshold,
            version: Arc::from(weights.version_id()),
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

    /// The weights' version ([`Weights::version_id`]).
    pub fn version(&self) -> &Arc<str> {
        &self.version
    }

    /// Starts classifying one conversation.
    pub fn begin(&self) -> Accumulator<'_> {
        Accumulator {
            classifier: self,
            ask: Totals::default(),
            code: 0.0,
            ask_tokens: 0.0,
            ask_middle_tokens: 0.0,
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
    ask: Totals,
    code: f64,
    ask_tokens: f64,
    ask_middle_tokens: f64,
    input_tokens: f64,
}

impl Accumulator<'_> {
    /// Adds one text piece; call in conversation order.
    pub fn push(&mut self, part: Part, text: &str) {
        let r: Regions = self.classifier.scanner.scan(text);
        let edge_tokens = r.edges.tokens();
        self.input_tokens += edge_tokens + r.middle.tokens();
        if part == (Part::User { last: true }) {
            self.ask_tokens += edge_tokens;
            self.ask_middle_tokens += r.middle.tokens();
        }
        self.ask.add(&r.edges, part.ask_weight());
        self.code += part.code_weight() * f64::from(r.edges.code() + r.middle.code());
    }

    /// Computes the features and the score.
    pub fn finish(self, shape: Shape) -> Classification {
        let ask_tokens = if self.ask.material_follows() {
            self.ask_tokens
        } else {
            self.ask_tokens + self.ask_middle_tokens
        };
        let ctx = Context {
            ask_tokens,
            context_tokens: self.input_tokens - ask_tokens,
            code: self.code,
            turns: shape.turns,
            images: shape.images,
            tools: shape.tools,
            max_tokens: shape.max_tokens,
        };
        let values = features::compute(&self.ask, &ctx);
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

    /// Feature values in [`Feature::ALL`] order.
    pub fn values(&self) -> &[f64; NUM_FEATURES] {
        &self.values
    }

    /// The value of one feature.
    pub fn value(&self, feature: Feature) -> f64 {
        self.values[feature.index()]
    }

    /// Estimated input tokens over every piece pushed (unweighted; see [`estimate_tokens`]).
    pub fn input_tokens(&self) -> f64 {
        self.input_tokens
    }

    /// Each feature's contribution to the logit, in [`Feature::ALL`] order.
    pub fn contributions(&self) -> &[f64; NUM_FEATURES] {
        &self.contributions
    }

    /// How much `feature` moved the score: the score minus the score without its
    /// contribution, in score units (the scale of the score and the threshold).
    pub fn effect(&self, feature: Feature) -> f64 {
        self.score - logistic(self.logit - self.contributions[feature.index()])
    }

    /// Up to `n` features that moved the score most, largest effect first (ties by feature
    /// order); features that did not move it (absent ones) are left out.
    pub fn top_reasons(&self, n: usize) -> impl Iterator<Item = Reason> + '_ {
        let mut order = Feature::ALL;
        // An absent feature's effect is exactly 0; only the present ones need a logistic.
        let effects = Feature::ALL.map(|f| {
            if self.contributions[f.index()] == 0.0 {
                0.0
            } else {
                self.effect(f)
            }
        });
        order.sort_unstable_by(|&a, &b| {
            effects[b.index()]
                .abs()
                .total_cmp(&effects[a.index()].abs())
                .then(a.cmp(&b))
        });
        order
            .into_iter()
            .filter(move |f| self.contributions[f.index()] != 0.0)
            .take(n)
            .map(move |feature| Reason {
                feature,
                effect: effects[feature.index()],
            })
    }
}

/// One feature's part in a score, for people.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reason {
    /// The feature ([`Feature::name`] and [`Feature::description`] say it in words).
    pub feature: Feature,
    /// The score minus the score without this feature: positive pushes towards the strong
    /// model, negative towards the fast one.
    pub effect: f64,
}

impl Reason {
    /// The tier this feature pushed the score towards.
    pub fn toward(&self) -> Tier {
        if self.effect > 0.0 {
            Tier::Strong
        } else {
            Tier::Fast
        }
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
        let sum: f64 = r.contributions().iter().sum();
        let bias = Classifier::default_weights().unwrap().bias;
        assert!((bias + sum - r.logit()).abs() < 1e-9);
        assert!((logistic(r.logit()) - r.score()).abs() < 1e-12);
    }

    #[test]
    fn top_reasons_are_sorted_by_magnitude() {
        let c = Classifier::with_default_weights().unwrap();
        let r = c.classify_prompt("def f(x):\n    return x * 2\n\nWhy does this fail?");
        let v: Vec<f64> = r.top_reasons(5).map(|r| r.effect.abs()).collect();
        assert!(v.len() >= 3);
        assert!(v.windows(2).all(|w| w[0] >= w[1]));
    }

    #[test]
    fn last_user_turn_weighs_most() {
        let c = Classifier::new(Weights::neutral()).unwrap();
        let mut a = c.begin();
        a.push(Part::Assistant, "Why? Justify it step by step.");
        let low = a.finish(Shape::default());
        let mut b = c.begin();
        b.push(Part::User { last: true }, "Why? Justify it step by step.");
        let high = b.finish(Shape::default());
        assert!(high.value(Feature::Reasoning) > low.value(Feature::Reasoning));
        assert_eq!(high.input_tokens(), low.input_tokens());
    }

    #[test]
    fn system_prompt_is_context_not_ask() {
        let c = Classifier::new(Weights::neutral()).unwrap();
        let mut a = c.begin();
        a.push(Part::System, "You are terse. Answer in JSON only.");
        a.push(Part::User { last: true }, "hi");
        let r = a.finish(Shape::default());
        assert!(r.value(Feature::ContextTokens) > 0.0);
        assert!((r.value(Feature::AskTokens) - 0.5f64.ln_1p()).abs() < 1e-12);
    }

    #[test]
    fn absent_features_give_no_reasons() {
        let c = Classifier::with_default_weights().unwrap();
        let r = c.classify_prompt("Summarize this paragraph in one sentence.");
        for reason in r.top_reasons(NUM_FEATURES) {
            assert_ne!(reason.effect, 0.0, "{}", reason.feature);
            assert!(!reason.feature.description().is_empty());
        }
        assert!(
            r.top_reasons(NUM_FEATURES)
                .any(|r| r.feature == Feature::Transform && r.effect < 0.0)
        );
    }
}
