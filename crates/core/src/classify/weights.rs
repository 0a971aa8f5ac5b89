//! The weights file: per-feature weight and standardisation by name, bias, default threshold
//! and training metadata, as human-readable JSON.

use serde::{Deserialize, Serialize};

use super::features::{Feature, NUM_FEATURES};

/// Version of the weights file format this code reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// Default clamp on standardised feature values.
pub const DEFAULT_CLIP: f64 = 3.0;

/// Why a weights file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// Not valid JSON, or not the expected shape.
    #[error("weights file is not valid: {0}")]
    Json(#[from] serde_json::Error),
    /// Written by another version of the format.
    #[error("weights file has format version {found}, this build reads version {expected}")]
    Version {
        /// Version in the file.
        found: u32,
        /// Version this build reads.
        expected: u32,
    },
    /// Names a feature this build does not compute.
    #[error("weights file names unknown feature `{0}` (known: {known})", known = known_features())]
    UnknownFeature(String),
    /// Leaves out a feature this build computes.
    #[error("weights file is missing feature `{0}`")]
    MissingFeature(&'static str),
    /// Names a feature twice.
    #[error("weights file names feature `{0}` twice")]
    DuplicateFeature(String),
    /// A number that cannot be used (NaN, infinite, or a scale that is not positive).
    #[error("weights file has an invalid value for `{field}`: {value}")]
    InvalidValue {
        /// Which value.
        field: String,
        /// The value found.
        value: f64,
    },
    /// Building the keyword automaton failed.
    #[error(transparent)]
    Build(#[from] super::features::BuildError),
}

/// Every feature's name, for the error naming an unknown one.
fn known_features() -> String {
    Feature::ALL.map(Feature::name).join(", ")
}

/// Weight and standardisation of one feature: its contribution to the logit is
/// `weight × clamp((value − mean) / scale, −clip, clip)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureWeight {
    /// Feature name, a [`Feature::name`]; kept as the file's text so that an unknown one is
    /// refused by name ([`WeightsError::UnknownFeature`]).
    pub name: String,
    /// Weight on the standardised value.
    pub weight: f64,
    /// Value of a typical prompt (training mean, or a documented prior).
    pub mean: f64,
    /// Spread used to standardise (training standard deviation, or a documented prior).
    pub scale: f64,
    /// Whether the weight was fitted on data or set as a prior (the data had no variance).
    #[serde(default)]
    pub prior: bool,
}

/// Held-out results for one training file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSummary {
    /// File name as given to `train`.
    pub file: String,
    /// Rows read.
    pub rows: usize,
    /// Rows used for fitting.
    pub train_rows: usize,
    /// Rows held out (`crc32(id) % 5 == 0`).
    pub held_out_rows: usize,
    /// APGR of the fitted classifier on the held-out rows.
    pub held_out_apgr: f64,
}

/// How `train` stretched the fitted logit so that training scores fill [0, 1]: every weight
/// and the bias were replaced by `factor × (fitted − centre)` (the bias) and `factor × fitted`
/// (each weight). Ranking is unchanged; the threshold was chosen after the stretch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rescale {
    /// Multiplier applied to the fitted logit.
    pub factor: f64,
    /// Fitted logit that became 0 (score 0.5): the median over the training rows.
    pub centre: f64,
}

/// Where the weights came from.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// One summary per training file.
    pub files: Vec<FileSummary>,
    /// APGR on all held-out rows pooled.
    pub held_out_apgr_pooled: f64,
    /// Free-text description of the label, regularisation and threshold rule.
    pub method: String,
    /// The stretch applied after fitting, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rescale: Option<Rescale>,
}

/// A complete set of classifier weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Weights {
    /// Format version ([`FORMAT_VERSION`]).
    pub version: u32,
    /// Logit of a prompt whose every feature equals its mean.
    pub bias: f64,
    /// Default routing threshold: score ≥ threshold goes to the strong model.
    pub threshold: f64,
    /// Standardised values are clamped to ±clip, so a prompt far outside the training range
    /// (a one-line prompt when training prompts all had five lines, an all-Japanese prompt)
    /// moves the score by at most `clip` standard deviations' worth per feature.
    pub clip: f64,
    /// One entry per feature.
    pub features: Vec<FeatureWeight>,
    /// Provenance.
    pub metadata: Metadata,
}

/// Weights as arrays in feature order, ready for scoring.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Dense {
    pub bias: f64,
    pub clip: f64,
    pub weight: [f64; NUM_FEATURES],
    pub mean: [f64; NUM_FEATURES],
    pub scale: [f64; NUM_FEATURES],
}

fn finite(field: &str, value: f64) -> Result<f64, WeightsError> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(WeightsError::InvalidValue {
            field: field.to_owned(),
            value,
        })
    }
}

impl Weights {
    /// The weights' version as replies, logs and label rows name it: `w-` and the CRC-32 of
    /// the weights in their compact JSON form, so the same weights have the same version
    /// whichever file or build they come from.
    pub fn version_id(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("w-{:08x}", crc32fast::hash(&json))
    }

    /// Parses and validates a weights file.
    pub fn from_json(text: &str) -> Result<Self, WeightsError> {
        let w: Self = serde_json::from_str(text)?;
        w.dense()?;
        Ok(w)
    }

    /// Serialises as pretty JSON (the committed file's format).
    pub fn to_json(&self) -> Result<String, WeightsError> {
        let mut s = serde_json::to_string_pretty(self)?;
        s.push('\n');
        Ok(s)
    }

    /// All-zero weights (every score 0.5): the starting point for training, which only needs
    /// the feature values.
    pub fn neutral() -> Self {
        Self {
            version: FORMAT_VERSION,
            bias: 0.0,
            threshold: 0.5,
            clip: DEFAULT_CLIP,
            features: Feature::ALL
                .iter()
                .map(|f| FeatureWeight {
                    name: f.name().to_owned(),
                    weight: 0.0,
                    mean: 0.0,
                    scale: 1.0,
                    prior: false,
                })
                .collect(),
            metadata: Metadata::default(),
        }
    }

    /// Checks names and values and lays them out in feature order.
    pub(crate) fn dense(&self) -> Result<Dense, WeightsError> {
        if self.version != FORMAT_VERSION {
            return Err(WeightsError::Version {
                found: self.version,
                expected: FORMAT_VERSION,
            });
        }
        let mut seen = [false; NUM_FEATURES];
        let mut d = Dense {
            bias: finite("bias", self.bias)?,
            clip: finite("clip", self.clip)?,
            weight: [0.0; NUM_FEATURES],
            mean: [0.0; NUM_FEATURES],
            scale: [1.0; NUM_FEATURES],
        };
        finite("threshold", self.threshold)?;
        if self.clip <= 0.0 {
            return Err(WeightsError::InvalidValue {
                field: "clip".to_owned(),
                value: self.clip,
            });
        }
        for f in &self.features {
            let i = Feature::from_name(&f.name)
                .ok_or_else(|| WeightsError::UnknownFeature(f.name.clone()))?
                .index();
            if seen[i] {
                return Err(WeightsError::DuplicateFeature(f.name.clone()));
            }
            seen[i] = true;
            d.weight[i] = finite(&f.name, f.weight)?;
            d.mean[i] = finite(&f.name, f.mean)?;
            d.scale[i] = finite(&f.name, f.scale)?;
            if f.scale <= 0.0 {
                return Err(WeightsError::InvalidValue {
                    field: format!("{}.scale", f.name),
                    value: f.scale,
                });
            }
        }
        if let Some(i) = seen.iter().position(|s| !s) {
            return Err(WeightsError::MissingFeature(Feature::ALL[i].name()));
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut w = Weights::neutral();
        w.bias = 0.25;
        w.features[3].weight = -1.5;
        w.metadata.files.push(FileSummary {
            file: "a.jsonl".into(),
            rows: 10,
            train_rows: 8,
            held_out_rows: 2,
            held_out_apgr: 0.6,
        });
        let text = w.to_json().unwrap();
        assert_eq!(Weights::from_json(&text).unwrap(), w);
    }

    #[test]
    fn rejects_unknown_feature() {
        let mut w = Weights::neutral();
        w.features[0].name = "subject_is_law".into();
        let err = Weights::from_json(&w.to_json().unwrap()).unwrap_err();
        assert!(matches!(err, WeightsError::UnknownFeature(ref n) if n == "subject_is_law"));
        assert!(err.to_string().contains("unknown feature `subject_is_law`"));
    }

    #[test]
    fn rejects_missing_feature() {
        let mut w = Weights::neutral();
        w.features.retain(|f| f.name != "tools");
        let err = Weights::from_json(&w.to_json().unwrap()).unwrap_err();
        assert!(matches!(err, WeightsError::MissingFeature("tools")));
        assert!(err.to_string().contains("missing feature `tools`"));
    }

    #[test]
    fn rejects_duplicates_bad_scale_and_version() {
        let mut w = Weights::neutral();
        w.features.push(w.features[0].clone());
        assert!(matches!(
            Weights::from_json(&w.to_json().unwrap()),
            Err(WeightsError::DuplicateFeature(_))
        ));
        let mut w = Weights::neutral();
        w.features[1].scale = 0.0;
        assert!(matches!(
            Weights::from_json(&w.to_json().unwrap()),
            Err(WeightsError::InvalidValue { .. })
        ));
        let mut w = Weights::neutral();
        w.version = 99;
        assert!(matches!(
            Weights::from_json(&w.to_json().unwrap()),
            Err(WeightsError::Version { found: 99, .. })
        ));
    }

    #[test]
    fn rejects_unknown_top_level_field() {
        let text = Weights::neutral()
            .to_json()
            .unwrap()
            .replacen('{', "{\"extra\": 1,", 1);
        assert!(matches!(
            Weights::from_json(&text),
            Err(WeightsError::Json(_))
        ));
    }
}
