//! A label row: what was routed (the feature vector, the score, the tier that answered, the
//! weights that decided) and what was learnt about it (a duel's verdict or a caller's
//! feedback). Prompt text only when `quality.store_prompts` is on.
//!
//! Features are stored by name, so a row stays readable by a later build; a row whose names
//! are not exactly this build's features is refused by [`LabelRow::example`] (it was routed
//! by another classifier and its vector would mean something else).
//!
//! As a training example ([`LabelRow::example`]), on the scale of the shared sets'
//! `strong_score`/`weak_score`:
//! - a duel: the strong answer better → strong 1, fast 0; a tie → 1, 1; the fast answer
//!   better → 0, 1;
//! - feedback `s` on a fast answer → fast `s`, strong 1 (the strong model is taken to do at
//!   least as well: a poor fast answer is the evidence that a request needed it);
//! - feedback `s` on a strong answer → strong `s`, fast `s`: it says nothing of a gap between
//!   the tiers, so it counts as a tie.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::catalog::Tier;
use crate::classify::{Feature, NUM_FEATURES};
use crate::train::Example;

/// One label row, as stored (one JSON object per line in the file store, one stream entry's
/// `row` field in Redis).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelRow {
    /// The request id the caller saw (`x-request-id`).
    pub request_id: String,
    /// When the label was made, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The caller as routed (`routing.caller`; empty when none was sent).
    pub caller: String,
    /// The tier that answered the caller.
    pub tier: LabelTier,
    /// The classifier's score for the request.
    pub score: f64,
    /// The version of the weights that scored it ([`crate::classify::Weights::version_id`]).
    pub weights_version: String,
    /// The request's feature values by feature name.
    pub features: BTreeMap<String, f64>,
    /// The request's estimated input tokens (for the cost figures of `train`).
    pub input_tokens: f64,
    /// What was learnt.
    pub label: Label,
    /// The newest ask's text, only with `quality.store_prompts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
}

/// A tier as a label row writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelTier {
    /// The strong model.
    Strong,
    /// The fast model.
    Fast,
}

impl From<Tier> for LabelTier {
    fn from(tier: Tier) -> Self {
        match tier {
            Tier::Strong => Self::Strong,
            Tier::Fast => Self::Fast,
        }
    }
}

/// What a label row learnt about its request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Label {
    /// A duel's verdict: both tiers answered, the judge compared them in both orders.
    Duel {
        /// Which answer the judge preferred.
        outcome: DuelOutcome,
    },
    /// A caller's feedback on the answer it got.
    Feedback {
        /// How good the answer was, in [0, 1] (down 0, up 1).
        score: f64,
        /// The caller's reason, if it gave one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

/// A duel's verdict between the two tiers' answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DuelOutcome {
    /// The strong model's answer is better.
    StrongBetter,
    /// Neither is better (or the two orders disagreed).
    Tie,
    /// The fast model's answer is better.
    FastBetter,
}

impl DuelOutcome {
    /// The metric-label and log form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StrongBetter => "strong_better",
            Self::Tie => "tie",
            Self::FastBetter => "fast_better",
        }
    }
}

/// Why a label row cannot become a training example.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LabelError {
    /// The row's feature names are not this build's.
    #[error("features {0}: the row was routed by a classifier with other features")]
    Features(String),
    /// A feature value or the input tokens are not finite.
    #[error("feature {0} is not a finite number")]
    NotFinite(String),
    /// A feedback score outside [0, 1].
    #[error("feedback score {0} is outside [0, 1]")]
    Score(f64),
}

impl LabelRow {
    /// The feature map of a vector in [`Feature::ALL`] order.
    pub fn feature_map(values: &[f64; NUM_FEATURES]) -> BTreeMap<String, f64> {
        Feature::ALL
            .iter()
            .map(|f| (f.name().to_owned(), values[f.index()]))
            .collect()
    }

    /// The feature vector in [`Feature::ALL`] order.
    pub fn vector(&self) -> Result<[f64; NUM_FEATURES], LabelError> {
        let known = self.features.len() == NUM_FEATURES
            && self
                .features
                .keys()
                .all(|n| Feature::from_name(n).is_some());
        if !known {
            let names: Vec<&str> = self
                .features
                .keys()
                .filter(|n| Feature::from_name(n).is_none())
                .map(String::as_str)
                .collect();
            let missing: Vec<&str> = Feature::ALL
                .iter()
                .map(|f| f.name())
                .filter(|n| !self.features.contains_key(*n))
                .collect();
            return Err(LabelError::Features(format!(
                "unknown {names:?}, missing {missing:?}"
            )));
        }
        let mut x = [0.0; NUM_FEATURES];
        for (name, &value) in &self.features {
            if !value.is_finite() {
                return Err(LabelError::NotFinite(name.clone()));
            }
            if let Some(f) = Feature::from_name(name) {
                x[f.index()] = value;
            }
        }
        Ok(x)
    }

    /// The row as a training example of weight 1 (the rule in the module's docs).
    pub fn example(&self) -> Result<Example, LabelError> {
        let features = self.vector()?;
        if !self.input_tokens.is_finite() {
            return Err(LabelError::NotFinite("input_tokens".to_owned()));
        }
        let (strong, fast) = match &self.label {
            Label::Duel { outcome } => match outcome {
                DuelOutcome::StrongBetter => (1.0, 0.0),
                DuelOutcome::Tie => (1.0, 1.0),
                DuelOutcome::FastBetter => (0.0, 1.0),
            },
            Label::Feedback { score, .. } => {
                if !(0.0..=1.0).contains(score) {
                    return Err(LabelError::Score(*score));
                }
                match self.tier {
                    LabelTier::Fast => (1.0, *score),
                    LabelTier::Strong => (*score, *score),
                }
            }
        };
        Ok(Example::scored(features, strong, fast, self.input_tokens))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(label: Label, tier: LabelTier) -> LabelRow {
        let mut x = [0.0; NUM_FEATURES];
        x[Feature::Proof.index()] = 1.0;
        LabelRow {
            request_id: "r1".to_owned(),
            time_ms: 1,
            caller: "billing".to_owned(),
            tier,
            score: 0.7,
            weights_version: "w-0".to_owned(),
            features: LabelRow::feature_map(&x),
            input_tokens: 12.0,
            label,
            prompt: None,
        }
    }

    #[test]
    fn round_trips_through_json_without_prompt_text() {
        let r = row(
            Label::Duel {
                outcome: DuelOutcome::StrongBetter,
            },
            LabelTier::Fast,
        );
        let line = serde_json::to_string(&r).unwrap();
        assert!(!line.contains("prompt"), "{line}");
        assert!(
            line.contains(r#""label":{"kind":"duel","outcome":"strong_better"}"#),
            "{line}"
        );
        assert_eq!(serde_json::from_str::<LabelRow>(&line).unwrap(), r);
    }

    #[test]
    fn labels_map_to_the_shared_sets_scale() {
        let cases = [
            (
                Label::Duel {
                    outcome: DuelOutcome::StrongBetter,
                },
                LabelTier::Fast,
                (1.0, 0.0),
            ),
            (
                Label::Duel {
                    outcome: DuelOutcome::Tie,
                },
                LabelTier::Strong,
                (1.0, 1.0),
            ),
            (
                Label::Duel {
                    outcome: DuelOutcome::FastBetter,
                },
                LabelTier::Fast,
                (0.0, 1.0),
            ),
            (
                Label::Feedback {
                    score: 0.25,
                    reason: None,
                },
                LabelTier::Fast,
                (1.0, 0.25),
            ),
            (
                Label::Feedback {
                    score: 0.25,
                    reason: None,
                },
                LabelTier::Strong,
                (0.25, 0.25),
            ),
        ];
        for (label, tier, (strong, fast)) in cases {
            let e = row(label.clone(), tier).example().unwrap();
            assert_eq!((e.strong, e.fast), (strong, fast), "{label:?} on {tier:?}");
            assert_eq!(e.features[Feature::Proof.index()], 1.0);
        }
    }

    #[test]
    fn refuses_other_features_and_bad_scores() {
        let mut r = row(
            Label::Feedback {
                score: 1.5,
                reason: None,
            },
            LabelTier::Fast,
        );
        assert_eq!(r.example(), Err(LabelError::Score(1.5)));
        r.features.remove("proof");
        r.features.insert("old_feature".to_owned(), 1.0);
        let err = r.example().unwrap_err().to_string();
        assert!(
            err.contains("old_feature") && err.contains("proof"),
            "{err}"
        );
    }
}
