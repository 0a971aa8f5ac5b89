//! Training. PURE: fits the classifier's linear score on feature vectors.
//!
//! Model: logistic regression on features with fixed centres and scales ([`spec`]), fitted
//! by Newton's method from zero (deterministic: no randomness, no data-order dependence beyond
//! float summation order).
//!
//! Label: the soft label `y = (1 + strong_score − weak_score) / 2`. Routing a prompt to the strong
//! model gains `strong − fast` in quality, and APGR only depends on the order in which prompts
//! are sent to strong, so the best order sorts by the expected gain `E[strong − fast | x]`.
//! Cross-entropy against this soft label is minimised where `p(x) = (1 + E[gain | x]) / 2`, a
//! monotone map of the expected gain. It keeps every row: ties (both right or both wrong) pull
//! towards 0.5 instead of being dropped, and rows where only the fast model is right pull down.
//! A judged row (the realistic corpus) stands for the same scale's outcomes: `hard` is strong
//! right and fast wrong (label 1), `easy` both right (label 0.5); it counts
//! [`Example::weight`] times.
//!
//! Priors ([`spec`]): the shared labelled sets are two narrow domains (multiple-choice exam
//! questions, and one fixed code-execution instruction), graded for other pairs of models than
//! this router's; on MMLU the maths cues pull towards the fast model (in high-school mathematics
//! GPT-4 is graded right on 3% of the questions and Mixtral on 32%). So the L2 penalty pulls
//! every weight towards a documented prior instead of towards 0 — cue families
//! (the cue families of [`spec`]) with `cue_l2`, the rest with `l2` — and a prior's sign is also a bound: a
//! fit that breaks it fixes the weight at 0 and refits the rest (an active-set loop,
//! deterministic). Features the rows do not vary, and those in [`NOT_FITTED`], keep their
//! prior. With [`TrainOptions::priors`] off (`train --no-priors`) every fitted weight is pulled
//! towards 0 with no bounds: right for a labelled sample of the traffic the router serves.
//!
//! Length backbone ([`length_backbone`]): within a family of similar requests the cues barely
//! vary and length is the signal known to carry. After fitting, the `ask_tokens` weight alone is
//! raised (nothing refitted) until the length term has at least `length_share` of the standard
//! deviation of the logit on the training rows.
//!
//! Spread ([`spread`]) and threshold ([`choose_threshold`]): fitted logits bunch in a narrow
//! band, useless on a 0.05-bucket dashboard histogram and too narrow for the per-request quality
//! bias. After fitting, every weight (priors included) and the bias are multiplied by one factor
//! and the bias re-centred, so the score stays literally `logistic(w·x + b)` with the same
//! ranking, but the [`boundary`] between judged hard and easy rows (without judged rows, the
//! median training prompt) scores 0.5 and the 5th–95th percentile range of the training scores
//! fits in [0.05, 0.95] with its farther end on the boundary. The stored threshold is that
//! boundary, 0.5: a score at or above it is what a written judgement calls "needs the strong
//! model". The score is a complexity scale, not a probability; contributions are in these
//! stretched logit units.

use crate::calibrate;
use crate::classify::{
    DEFAULT_CLIP, FORMAT_VERSION, Feature, FeatureWeight, Metadata, NUM_FEATURES, Rescale, Weights,
    contribution, logistic,
};
use crate::eval::Row;

/// Why training failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// No training rows.
    #[error("no training rows")]
    Empty,
    /// A label outside [0, 1] or not finite.
    #[error(
        "row {row}: scores must be numbers in [0, 1], got strong_score {strong}, weak_score {fast}"
    )]
    BadLabel {
        /// Row index.
        row: usize,
        /// strong_score found.
        strong: f64,
        /// The row's `weak_score` (the fast model's).
        fast: f64,
    },
    /// A row weight that is not a positive number.
    #[error("row {row}: weight must be a positive number, got {weight}")]
    BadWeight {
        /// Row index.
        row: usize,
        /// weight found.
        weight: f64,
    },
    /// An option out of range.
    #[error("option `{0}` is out of range")]
    BadOption(&'static str),
    /// The Newton iteration produced a non-finite value.
    #[error("training diverged")]
    Diverged,
    /// Choosing the threshold failed.
    #[error(transparent)]
    Threshold(#[from] calibrate::CalibrateError),
}

/// One labelled training prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Feature values in [`Feature::ALL`] order.
    pub features: [f64; NUM_FEATURES],
    /// How well the strong model answered, in [0, 1].
    pub strong: f64,
    /// How well the fast model answered, in [0, 1].
    pub fast: f64,
    /// Estimated input tokens (for cost figures).
    pub input_tokens: f64,
    /// How many rows this one counts as in the fit (1 for a scored row; judged rows count more).
    pub weight: f64,
    /// For a judged row, whether it was judged hard: the rows the stored threshold is set on.
    pub hard: Option<bool>,
}

impl Example {
    /// A scored row of weight 1.
    pub fn scored(
        features: [f64; NUM_FEATURES],
        strong: f64,
        fast: f64,
        input_tokens: f64,
    ) -> Self {
        Self {
            features,
            strong,
            fast,
            input_tokens,
            weight: 1.0,
            hard: None,
        }
    }
}

/// Training settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOptions {
    /// L2 penalty pulling the weight of a size or shape feature towards its prior;
    /// the objective is `Σ row weight × cross-entropy + Σᵢ λᵢ/2 · (wᵢ − priorᵢ)² + BIAS_L2/2 · bias²`.
    pub l2: f64,
    /// The same penalty for the cue families ([`FeatureSpec::cue`]).
    pub cue_l2: f64,
    /// Smallest share, in [0, 1), of the logit's standard deviation on the training rows that
    /// the ask-length term must carry ([`length_backbone`]); 0 turns the backbone off.
    pub length_share: f64,
    /// Newton iterations at most.
    pub max_iterations: usize,
    /// Stop when no parameter moves more than this.
    pub tolerance: f64,
    /// Standardised values are clamped to ±clip, in training as in scoring.
    pub clip: f64,
    /// Without judged rows, the stored threshold is the one with the lowest strong share whose
    /// PGR on the training rows reaches this (i.e. the CPT(target) point).
    pub target_pgr: f64,
    /// Pull fitted weights towards the priors of [`spec`] under their signs (true), or towards 0 with
    /// no bounds (false: for a labelled sample of the traffic itself, where the data are the
    /// domain). Features the data do not vary keep their prior either way.
    pub priors: bool,
    /// Prior weights to pull towards instead of [`spec`]'s, per standardised feature in
    /// [`Feature::ALL`] order, in fitted (unstretched) logit: a running weights file's, from
    /// [`prior_of`] (`train --prior`, and `train --labels`' default, the built-in weights).
    /// The signs of [`spec`]'s priors stay the bounds unless [`Self::sign_bounds`] is off.
    pub prior_weights: Option<[f64; NUM_FEATURES]>,
    /// With [`Self::priors`], a fit that breaks a prior's sign fixes the weight at 0 (true), or
    /// the data set the sign (false: labels of the router's own traffic, `train --labels`, are
    /// the domain the documented signs only guess at).
    pub sign_bounds: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            l2: 1000.0,
            cue_l2: 1000.0,
            length_share: 0.3,
            max_iterations: 100,
            tolerance: 1e-10,
            clip: DEFAULT_CLIP,
            target_pgr: 0.8,
            priors: true,
            prior_weights: None,
            sign_bounds: true,
        }
    }
}

/// The prior a weights file stands for ([`TrainOptions::prior_weights`]): each weight per unit
/// of its feature (its own scale), unstretched ([`Weights::metadata`]'s rescale factor taken
/// out), on [`spec`]'s scale. A feature the file does not name keeps [`spec`]'s prior.
pub fn prior_of(weights: &Weights) -> [f64; NUM_FEATURES] {
    let factor = weights
        .metadata
        .rescale
        .map_or(1.0, |r| r.factor)
        .abs()
        .max(f64::MIN_POSITIVE);
    let mut prior = Feature::ALL.map(|f| spec(f).prior * spec(f).scale);
    for fw in &weights.features {
        if let Some(f) = Feature::from_name(&fw.name)
            && fw.scale > 0.0
        {
            prior[f.index()] = fw.weight / fw.scale / factor * spec(f).scale;
        }
    }
    prior
}

/// Every feature's prior weight, centre and scale.
///
/// The prior is a weight in logit (before the stretch) per unit of the feature value; count
/// features are `ln(1 + count)`, so the unit is one e-fold of the count. Directions:
/// asks for reasoning, analysis, design, diagnosis, code and what makes a problem tricky, maths,
/// constraints, several parts, long output and length push towards the strong model (the
/// categories where strong and fast models differ most in routing benchmarks); transforms of
/// supplied material, small talk and lookups towards the fast one. Sizes are judgement, set so
/// that one generative-reasoning cue in a one-line ask outweighs a request ten times longer,
/// and the size of supplied context counts for little. A prior's sign is a bound.
///
/// Centre and scale, `z = (x − centre) / scale`, are fixed, not fitted, so that a score means
/// the same whatever data trained it: the centre is the value of a request without
/// the feature (no cue, no context, no image, no output limit), so an absent feature contributes
/// 0 and every reason names something the request has; the scale is one e-fold of a count. The
/// exceptions: the ask's length is centred on a one-sentence ask (16 tokens), and the context's
/// size has a scale of three e-folds, so that the clip is reached near 8,000 tokens rather
/// than at 20.
pub const fn spec(feature: Feature) -> FeatureSpec {
    match feature {
        Feature::AskTokens => shape(0.10, 2.833_213_344_056_216, 1.0),
        Feature::ContextTokens => shape(0.02, 0.0, 3.0),
        Feature::Code => cue(0.10, 0.0, 1.0),
        Feature::Questions => shape(0.05, 0.0, 1.0),
        Feature::MultiPart => cue(0.10, 0.0, 1.0),
        Feature::Constraints => cue(0.08, 0.0, 1.0),
        Feature::Proof => cue(0.40, 0.0, 1.0),
        Feature::Reasoning => cue(0.20, 0.0, 1.0),
        Feature::Analysis => cue(0.25, 0.0, 1.0),
        Feature::Design => cue(0.25, 0.0, 1.0),
        Feature::Diagnose => cue(0.25, 0.0, 1.0),
        Feature::Build => cue(0.25, 0.0, 1.0),
        Feature::Tricky => cue(0.25, 0.0, 1.0),
        Feature::Transform => cue(-0.30, 0.0, 1.0),
        Feature::Chat => cue(-0.30, 0.0, 1.0),
        Feature::Lookup => cue(-0.20, 0.0, 1.0),
        Feature::LongOutput => cue(0.10, 0.0, 1.0),
        Feature::Turns => shape(0.02, 0.0, 1.0),
        Feature::Images => shape(0.05, 0.0, 1.0),
        Feature::Tools => shape(0.03, 0.0, 1.0),
        Feature::MaxTokens => shape(0.10, 0.0, 1.0),
    }
}

/// One feature's prior, centre and scale ([`spec`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FeatureSpec {
    /// Prior weight per unit of the feature (its sign is a bound).
    pub prior: f64,
    /// The feature's value for a request without it.
    pub centre: f64,
    /// One unit of the standardised feature.
    pub scale: f64,
    /// A cue family, penalised with `cue_l2` rather than `l2`.
    pub cue: bool,
}

/// A keyword family (or code): held to its prior with `cue_l2`. Each fires on a few percent of
/// the labelled rows, so its fitted weight says more about those rows' subjects than about the
/// cue.
const fn cue(prior: f64, centre: f64, scale: f64) -> FeatureSpec {
    FeatureSpec {
        prior,
        centre,
        scale,
        cue: true,
    }
}

/// A size or shape feature, which varies on every row: held to its prior with `l2`.
const fn shape(prior: f64, centre: f64, scale: f64) -> FeatureSpec {
    FeatureSpec {
        prior,
        centre,
        scale,
        cue: false,
    }
}

/// Features that keep their prior whatever the data say. A request's output limit is mostly a
/// per-service setting (many services send 4,096 on every call), not a judgement of that
/// request, and the realistic corpus's writers chose limits by difficulty (median 1,500 tokens
/// for hard requests, 400 for easy ones): a fitted weight would learn the writers' habit and
/// send every request of a service with a generous limit to the strong model.
pub const NOT_FITTED: [Feature; 1] = [Feature::MaxTokens];

/// The prior weight of feature `i` (its index) per unit of its value.
fn prior_per_unit(i: usize) -> f64 {
    spec(Feature::ALL[i]).prior
}

/// Whether `weight` has the opposite sign of feature `i`'s prior (a broken bound).
fn breaks_prior_sign(i: usize, weight: f64) -> bool {
    prior_per_unit(i) * weight < 0.0
}

/// A fitted linear score.
#[derive(Debug, Clone, PartialEq)]
pub struct FittedScore {
    /// Logit at the mean point.
    pub bias: f64,
    /// Weight per standardised feature.
    pub weight: [f64; NUM_FEATURES],
    /// Standardisation centre.
    pub mean: [f64; NUM_FEATURES],
    /// Standardisation scale.
    pub scale: [f64; NUM_FEATURES],
    /// Clamp on standardised values.
    pub clip: f64,
    /// Which weights are priors rather than fitted.
    pub prior: [bool; NUM_FEATURES],
    /// Which weights were fixed at 0 because the fit gave them the opposite sign of their prior.
    pub clamped: [bool; NUM_FEATURES],
    /// How much [`length_backbone`] added to the `tokens` weight (0 if length already had its
    /// share).
    pub length_boost: f64,
    /// Newton iterations used.
    pub iterations: usize,
}

impl FittedScore {
    /// The logit for one feature vector.
    pub fn logit(&self, x: &[f64; NUM_FEATURES]) -> f64 {
        let mut z = self.bias;
        for (i, &v) in x.iter().enumerate() {
            z += contribution(self.weight[i], v, self.mean[i], self.scale[i], self.clip);
        }
        z
    }

    /// The score in [0, 1] for one feature vector.
    pub fn score(&self, x: &[f64; NUM_FEATURES]) -> f64 {
        logistic(self.logit(x))
    }

    /// The weights file for this model.
    pub fn to_weights(&self, threshold: f64, metadata: Metadata) -> Weights {
        Weights {
            version: FORMAT_VERSION,
            bias: self.bias,
            threshold,
            clip: self.clip,
            features: (0..NUM_FEATURES)
                .map(|i| FeatureWeight {
                    name: Feature::ALL[i].name().to_owned(),
                    weight: self.weight[i],
                    mean: self.mean[i],
                    scale: self.scale[i],
                    prior: self.prior[i],
                })
                .collect(),
            metadata,
        }
    }
}

/// Training-score percentiles the stretch fits into [`SPREAD_SCORE`, 1 − `SPREAD_SCORE`].
pub const SPREAD_QUANTILE: f64 = 0.05;

/// Score the farther of the two [`SPREAD_QUANTILE`] percentiles is mapped to (its mirror image
/// for the upper one).
pub const SPREAD_SCORE: f64 = 0.05;

impl FittedScore {
    /// The same ranking with logit `factor × (logit − centre)`: every weight, priors included,
    /// times `factor`, and the bias moved accordingly.
    pub fn rescaled(&self, r: Rescale) -> FittedScore {
        FittedScore {
            bias: r.factor * (self.bias - r.centre),
            weight: self.weight.map(|w| r.factor * w),
            ..self.clone()
        }
    }
}

/// The logit that best separates the judged rows: the cut maximising balanced accuracy (the
/// mean of the share of hard rows at or above it and the share of easy rows below it, by row
/// weight), halfway between the two logits it falls between; among equally good cuts, the
/// middle one. `None` without judged rows of both kinds.
pub fn boundary(model: &FittedScore, examples: &[Example]) -> Option<f64> {
    let mut judged: Vec<(f64, bool, f64)> = examples
        .iter()
        .filter_map(|e| e.hard.map(|h| (model.logit(&e.features), h, e.weight)))
        .collect();
    judged.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = |hard: bool| -> f64 { judged.iter().filter(|j| j.1 == hard).map(|j| j.2).sum() };
    let (hard_total, easy_total) = (total(true), total(false));
    if hard_total <= 0.0 || easy_total <= 0.0 {
        return None;
    }
    // Cut k sends judged[k..] strong.
    let (mut easy_below, mut best, mut cuts) = (0.0, f64::NEG_INFINITY, Vec::new());
    let mut hard_below = 0.0;
    for k in 0..=judged.len() {
        let distinct = k == 0 || k == judged.len() || judged[k - 1].0 < judged[k].0;
        if distinct {
            let balanced = ((hard_total - hard_below) / hard_total + easy_below / easy_total) / 2.0;
            if balanced > best + 1e-12 {
                best = balanced;
                cuts.clear();
            }
            if (balanced - best).abs() <= 1e-12 {
                cuts.push(k);
            }
        }
        if let Some(&(_, hard, w)) = judged.get(k) {
            if hard {
                hard_below += w;
            } else {
                easy_below += w;
            }
        }
    }
    let k = cuts[cuts.len() / 2];
    let at = |i: usize| judged[i.min(judged.len() - 1)].0;
    Some(match k {
        0 => at(0) - 1.0,
        k if k == judged.len() => at(k) + 1.0,
        k => (at(k - 1) + at(k)) / 2.0,
    })
}

/// The stretch that puts the [`boundary`] of the judged rows (the median training logit when
/// there are none) at score 0.5 and the 5th–95th percentile range within [0.05, 0.95], the
/// farther end on the boundary (see the module docs). Percentiles are nearest-rank on the
/// sorted logits, so the result depends on the rows only. Degenerate data (every logit equal)
/// gets the identity.
pub fn spread(model: &FittedScore, examples: &[Example]) -> Rescale {
    let mut logits: Vec<f64> = examples.iter().map(|e| model.logit(&e.features)).collect();
    logits.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let last = logits.len().saturating_sub(1);
        logits
            .get(((q * last as f64).round() as usize).min(last))
            .copied()
            .unwrap_or(0.0)
    };
    let centre = boundary(model, examples).unwrap_or_else(|| at(0.5));
    let (low, high) = (at(SPREAD_QUANTILE), at(1.0 - SPREAD_QUANTILE));
    let half_width = (high - centre).max(centre - low);
    // logit(1 − SPREAD_SCORE): the stretched logit of the farther percentile.
    let target = ((1.0 - SPREAD_SCORE) / SPREAD_SCORE).ln();
    let factor = target / half_width;
    if half_width > 0.0 && factor.is_finite() {
        Rescale { factor, centre }
    } else {
        Rescale {
            factor: 1.0,
            centre: 0.0,
        }
    }
}

/// Whether a row is held out from training: `crc32(id) % 5 == 0` (zlib CRC-32 of the UTF-8 id).
pub fn is_held_out(id: &str) -> bool {
    crc32fast::hash(id.as_bytes()).is_multiple_of(5)
}

/// A tiny penalty on the bias, so that degenerate data (every label equal) still has a finite
/// optimum; on real data it moves the bias by far less than its precision matters.
const BIAS_L2: f64 = 1e-6;

/// Standard deviation below which a feature counts as constant.
const CONSTANT: f64 = 1e-9;

/// Index of the `ask_tokens` feature, which the length backbone raises.
const TOKENS: usize = Feature::AskTokens.index();

/// Fits the model on `examples`: penalised fit towards the priors under their signs, then the
/// length backbone.
pub fn fit(examples: &[Example], opts: &TrainOptions) -> Result<FittedScore, TrainError> {
    if examples.is_empty() {
        return Err(TrainError::Empty);
    }
    let positive = |v: f64| v.is_finite() && v > 0.0;
    if !positive(opts.clip) {
        return Err(TrainError::BadOption("clip"));
    }
    if !positive(opts.l2) {
        return Err(TrainError::BadOption("l2"));
    }
    if !positive(opts.cue_l2) {
        return Err(TrainError::BadOption("cue_l2"));
    }
    if !(0.0..1.0).contains(&opts.length_share) {
        return Err(TrainError::BadOption("length_share"));
    }
    for (row, e) in examples.iter().enumerate() {
        let ok = |v: f64| (0.0..=1.0).contains(&v);
        if !ok(e.strong) || !ok(e.fast) {
            return Err(TrainError::BadLabel {
                row,
                strong: e.strong,
                fast: e.fast,
            });
        }
    }
    for (row, e) in examples.iter().enumerate() {
        if !(e.weight.is_finite() && e.weight > 0.0) {
            return Err(TrainError::BadWeight {
                row,
                weight: e.weight,
            });
        }
    }
    let mean = Feature::ALL.map(|f| spec(f).centre);
    let scale = Feature::ALL.map(|f| spec(f).scale);
    let prior_centre = |i: usize| {
        opts.prior_weights
            .map_or(prior_per_unit(i) * scale[i], |p| p[i])
    };
    let mut prior = [false; NUM_FEATURES];
    let mut weight = [0.0; NUM_FEATURES];
    let mut fitted = Vec::with_capacity(NUM_FEATURES);
    for i in 0..NUM_FEATURES {
        let first = examples[0].features[i];
        if !NOT_FITTED.contains(&Feature::ALL[i])
            && examples
                .iter()
                .any(|e| (e.features[i] - first).abs() > CONSTANT)
        {
            fitted.push(i);
        } else {
            prior[i] = true;
            weight[i] = prior_centre(i);
        }
    }
    // Penalty strength and centre per standardised weight: the prior per unit times the spread.
    let penalty: Vec<(f64, f64)> = (0..NUM_FEATURES)
        .map(|i| {
            let l2 = if spec(Feature::ALL[i]).cue {
                opts.cue_l2
            } else {
                opts.l2
            };
            let centre = if opts.priors { prior_centre(i) } else { 0.0 };
            (l2, centre)
        })
        .collect();
    let labels: Vec<f64> = examples
        .iter()
        .map(|e| (1.0 + e.strong - e.fast) / 2.0)
        .collect();
    let row_weights: Vec<f64> = examples.iter().map(|e| e.weight).collect();
    let mut clamped = [false; NUM_FEATURES];
    let mut iterations = 0;
    let z =
        |e: &Example, i: usize| ((e.features[i] - mean[i]) / scale[i]).clamp(-opts.clip, opts.clip);
    let bias = loop {
        // Design matrix: a leading 1 for the bias, then the standardised free features; the
        // features fixed at a bound (and the priors) only shift each row's logit.
        let rows: Vec<Vec<f64>> = examples
            .iter()
            .map(|e| {
                std::iter::once(1.0)
                    .chain(fitted.iter().map(|&i| z(e, i)))
                    .collect()
            })
            .collect();
        let offsets: Vec<f64> = examples
            .iter()
            .map(|e| {
                (0..NUM_FEATURES)
                    .filter(|&i| clamped[i] || prior[i])
                    .map(|i| weight[i] * z(e, i))
                    .sum()
            })
            .collect();
        let free_penalty: Vec<(f64, f64)> = fitted.iter().map(|&i| penalty[i]).collect();
        let (theta, used) = newton(
            &Design {
                rows: &rows,
                offsets: &offsets,
                labels: &labels,
                weights: &row_weights,
            },
            &free_penalty,
            opts,
        )?;
        iterations += used;
        let broken: Vec<usize> = fitted
            .iter()
            .zip(&theta[1..])
            .filter(|&(&i, &w)| opts.priors && opts.sign_bounds && breaks_prior_sign(i, w))
            .map(|(&i, _)| i)
            .collect();
        if broken.is_empty() {
            for (&i, &w) in fitted.iter().zip(&theta[1..]) {
                weight[i] = w;
            }
            break theta[0];
        }
        for &i in &broken {
            clamped[i] = true;
            weight[i] = 0.0;
        }
        fitted.retain(|&i| !clamped[i]);
    };
    let mut model = FittedScore {
        bias,
        weight,
        mean,
        scale,
        clip: opts.clip,
        prior,
        clamped,
        iterations,
        length_boost: 0.0,
    };
    model.length_boost = length_backbone(&model, examples, opts.length_share);
    model.weight[TOKENS] += model.length_boost;
    Ok(model)
}

/// How much to add to the `tokens` weight, nothing else changed, so that the length term's
/// standard deviation over `examples` is at least `share` times the logit's. With length term
/// `(w + d)·z` and the logit `L + d·z`, the share is reached where
/// `(w + d)²·Var z = share²·Var(L + d·z)`, a quadratic in `d` with one positive root when the
/// share is not yet met (`w ≥ 0`: length's prior is positive and its sign a bound). 0 when
/// the share is already met, `share` is 0, or length does not vary.
pub fn length_backbone(model: &FittedScore, examples: &[Example], share: f64) -> f64 {
    let t = TOKENS;
    let n = examples.len() as f64;
    if share <= 0.0 || examples.is_empty() {
        return 0.0;
    }
    let pairs: Vec<(f64, f64)> = examples
        .iter()
        .map(|e| {
            let z =
                ((e.features[t] - model.mean[t]) / model.scale[t]).clamp(-model.clip, model.clip);
            (z, model.logit(&e.features))
        })
        .collect();
    let (mz, ml) = pairs
        .iter()
        .fold((0.0, 0.0), |(a, b), (z, l)| (a + z / n, b + l / n));
    let (mut var_z, mut var_l, mut cov) = (0.0, 0.0, 0.0);
    for (z, l) in &pairs {
        var_z += (z - mz) * (z - mz) / n;
        var_l += (l - ml) * (l - ml) / n;
        cov += (z - mz) * (l - ml) / n;
    }
    let w = model.weight[t];
    let s2 = share * share;
    let a = (1.0 - s2) * var_z;
    let b = 2.0 * (w * var_z - s2 * cov);
    let c = w * w * var_z - s2 * var_l;
    if var_z <= CONSTANT || c >= 0.0 || w < 0.0 {
        return 0.0;
    }
    (-b + (b * b - 4.0 * a * c).sqrt()) / (2.0 * a)
}

/// The data of one fit: standardised rows (a leading 1 for the bias), each row's fixed logit
/// offset, soft label and weight.
struct Design<'a> {
    rows: &'a [Vec<f64>],
    offsets: &'a [f64],
    labels: &'a [f64],
    weights: &'a [f64],
}

impl Design<'_> {
    /// Each row's (standardised values, offset, label, weight).
    fn iter(&self) -> impl Iterator<Item = (&Vec<f64>, f64, f64, f64)> {
        self.rows
            .iter()
            .zip(self.offsets)
            .zip(self.labels)
            .zip(self.weights)
            .map(|(((x, &o), &y), &w)| (x, o, y, w))
    }
}

/// Objective: Σ weight × cross-entropy + Σ λ/2 · (θ − centre)² over the weights + BIAS_L2/2 ·
/// bias², each row's logit shifted by its offset; `penalty[j]` is (λ, centre) of weight j (θ[j + 1]).
fn objective(d: &Design<'_>, theta: &[f64], penalty: &[(f64, f64)]) -> f64 {
    let mut loss = 0.0;
    for (x, o, y, w) in d.iter() {
        let z: f64 = o + x.iter().zip(theta).map(|(a, b)| a * b).sum::<f64>();
        // log(1 + e^z) − y·z, written to stay finite for large |z|.
        loss += w * (z.max(0.0) + (-z.abs()).exp().ln_1p() - y * z);
    }
    let bias = theta.first().copied().unwrap_or(0.0);
    let l2: f64 = theta
        .iter()
        .skip(1)
        .zip(penalty)
        .map(|(t, &(l, c))| l / 2.0 * (t - c) * (t - c))
        .sum();
    loss + l2 + BIAS_L2 / 2.0 * bias * bias
}

/// Newton's method with step halving; returns the parameters and the iterations used.
fn newton(
    d: &Design<'_>,
    penalty: &[(f64, f64)],
    opts: &TrainOptions,
) -> Result<(Vec<f64>, usize), TrainError> {
    let k = d.rows.first().map_or(1, Vec::len);
    let mut theta = vec![0.0; k];
    let mut current = objective(d, &theta, penalty);
    for iter in 1..=opts.max_iterations {
        let mut grad = vec![0.0; k];
        let mut hess = vec![0.0; k * k];
        for (x, o, y, rw) in d.iter() {
            let z: f64 = o + x.iter().zip(&theta).map(|(a, b)| a * b).sum::<f64>();
            let p = logistic(z);
            let r = rw * (p - y);
            let w = rw * p * (1.0 - p);
            for a in 0..k {
                grad[a] += r * x[a];
                let wa = w * x[a];
                for b in 0..=a {
                    hess[a * k + b] += wa * x[b];
                }
            }
        }
        grad[0] += BIAS_L2 * theta[0];
        hess[0] += BIAS_L2;
        for (a, &(l2, centre)) in (1..k).zip(penalty) {
            grad[a] += l2 * (theta[a] - centre);
            hess[a * k + a] += l2;
        }
        for a in 0..k {
            for b in 0..a {
                hess[b * k + a] = hess[a * k + b];
            }
        }
        let step = cholesky_solve(&hess, &grad, k).ok_or(TrainError::Diverged)?;
        let mut t = 1.0;
        let mut next;
        let mut value;
        loop {
            next = theta
                .iter()
                .zip(&step)
                .map(|(a, s)| a - t * s)
                .collect::<Vec<_>>();
            value = objective(d, &next, penalty);
            if value <= current || t < 1e-6 {
                break;
            }
            t /= 2.0;
        }
        if !value.is_finite() || next.iter().any(|v| !v.is_finite()) {
            return Err(TrainError::Diverged);
        }
        let moved = step.iter().map(|s| (t * s).abs()).fold(0.0, f64::max);
        theta = next;
        current = value;
        if moved < opts.tolerance {
            return Ok((theta, iter));
        }
    }
    Ok((theta, opts.max_iterations))
}

/// Solves `A x = b` for symmetric positive definite `A` (k×k, row-major).
fn cholesky_solve(a: &[f64], b: &[f64], k: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; k * k];
    for i in 0..k {
        for j in 0..=i {
            let mut s = a[i * k + j];
            for p in 0..j {
                s -= l[i * k + p] * l[j * k + p];
            }
            if i == j {
                if s <= 0.0 || !s.is_finite() {
                    return None;
                }
                l[i * k + i] = s.sqrt();
            } else {
                l[i * k + j] = s / l[j * k + j];
            }
        }
    }
    let mut y = vec![0.0; k];
    for i in 0..k {
        let mut s = b[i];
        for p in 0..i {
            s -= l[i * k + p] * y[p];
        }
        y[i] = s / l[i * k + i];
    }
    let mut x = vec![0.0; k];
    for i in (0..k).rev() {
        let mut s = y[i];
        for p in i + 1..k {
            s -= l[p * k + i] * x[p];
        }
        x[i] = s / l[i * k + i];
    }
    Some(x)
}

/// Scores `examples` with `model` as evaluation rows.
pub fn score_rows(model: &FittedScore, examples: &[Example]) -> Vec<Row> {
    examples
        .iter()
        .map(|e| Row {
            score: model.score(&e.features),
            strong: e.strong,
            fast: e.fast,
            input_tokens: e.input_tokens,
        })
        .collect()
}

/// The default threshold: with judged rows, the score of their [`boundary`] (0.5 after
/// [`spread`]), so that the stored threshold is where a written judgement of "needs the strong
/// model" begins; without them, the CPT(`target_pgr`) point of the model on its training rows,
/// i.e. the lowest strong share whose quality gap recovered reaches the target.
pub fn choose_threshold(
    model: &FittedScore,
    examples: &[Example],
    opts: &TrainOptions,
) -> Result<f64, TrainError> {
    if let Some(b) = boundary(model, examples) {
        return Ok(logistic(b));
    }
    let rows = score_rows(model, examples);
    Ok(calibrate::for_pgr(&rows, opts.target_pgr)?.threshold)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(i: usize, x: f64, strong: f64, fast: f64) -> Example {
        let mut features = [0.0; NUM_FEATURES];
        features[0] = x;
        features[1] = (i % 3) as f64;
        Example::scored(features, strong, fast, 10.0)
    }

    #[test]
    fn learns_the_direction_of_the_gain() {
        // Strong wins on long prompts, the fast model is as good on short ones.
        let ex: Vec<Example> = (0..200)
            .map(|i| {
                let x = i as f64 / 10.0;
                let strong_wins = i % 4 != 0 && i > 100;
                example(i, x, 1.0, if strong_wins { 0.0 } else { 1.0 })
            })
            .collect();
        let m = fit(&ex, &TrainOptions::default()).unwrap();
        assert!(m.weight[0] > 0.0);
        assert!(m.score(&ex[199].features) > m.score(&ex[0].features));
        assert!(m.iterations < 50);
    }

    #[test]
    fn is_deterministic() {
        let ex: Vec<Example> = (0..50)
            .map(|i| {
                example(
                    i,
                    (i * 7 % 13) as f64,
                    (i % 2) as f64,
                    (i % 3 == 0) as u8 as f64,
                )
            })
            .collect();
        let a = fit(&ex, &TrainOptions::default()).unwrap();
        let b = fit(&ex, &TrainOptions::default()).unwrap();
        assert_eq!(a, b);
    }

    /// Rows where `feature` anti-correlates with the gain.
    fn against(feature: Feature) -> (usize, Vec<Example>) {
        let f = feature.index();
        let ex = (0..100)
            .map(|i| {
                let mut e = example(i, i as f64, 1.0, if i > 50 { 0.0 } else { 1.0 });
                e.features[f] = if i > 50 { 0.0 } else { 1.0 };
                e
            })
            .collect();
        (f, ex)
    }

    /// Options under which the data outweighs the priors, without the backbone.
    fn data_led() -> TrainOptions {
        TrainOptions {
            l2: 1.0,
            cue_l2: 1.0,
            length_share: 0.0,
            ..TrainOptions::default()
        }
    }

    #[test]
    fn a_weights_file_is_the_prior_it_was_fitted_around() {
        // Built-in weights, refitted towards themselves on rows that say nothing (labels
        // independent of every feature), come back as they were, up to the stretch.
        let shipped = crate::classify::Classifier::default_weights().unwrap();
        let prior = prior_of(&shipped);
        let r = Feature::Reasoning.index();
        assert!(prior[r] > 0.0);
        let rows: Vec<Example> = (0..400)
            .map(|i| {
                let mut e = example(i, (i % 7) as f64, 1.0, 0.5);
                e.features[r] = ((i / 2) % 2) as f64;
                e
            })
            .collect();
        let opts = TrainOptions {
            prior_weights: Some(prior),
            length_share: 0.0,
            ..TrainOptions::default()
        };
        let m = fit(&rows, &opts).unwrap();
        assert!(
            (m.weight[r] - prior[r]).abs() < 0.05 * prior[r].abs(),
            "{} vs {}",
            m.weight[r],
            prior[r]
        );
        let from_spec = fit(
            &rows,
            &TrainOptions {
                length_share: 0.0,
                ..TrainOptions::default()
            },
        )
        .unwrap();
        let spec_r = spec(Feature::Reasoning).prior;
        assert!(
            (from_spec.weight[r] - spec_r).abs() < 0.05 * spec_r,
            "{}",
            from_spec.weight[r]
        );
        assert!(
            (prior[r] - spec_r).abs() > 0.1 * spec_r,
            "the shipped weight must differ from spec's for this test to say anything"
        );
    }

    #[test]
    fn wrong_signs_are_clamped_to_zero() {
        let (f, ex) = against(Feature::Questions);
        let m = fit(&ex, &data_led()).unwrap();
        assert!(m.clamped[f]);
        assert_eq!(m.weight[f], 0.0);
        assert!(m.weight[0] > 0.0);
        // A negative prior bounds from above.
        let (f, ex) = against(Feature::Chat);
        let mut flipped = ex.clone();
        for e in &mut flipped {
            e.features[f] = 1.0 - e.features[f];
        }
        let m = fit(&flipped, &data_led()).unwrap();
        assert!(m.clamped[f]);
        assert_eq!(m.weight[f], 0.0);
    }

    #[test]
    fn without_priors_the_data_set_the_sign() {
        let (f, ex) = against(Feature::Questions);
        let opts = TrainOptions {
            priors: false,
            ..data_led()
        };
        let m = fit(&ex, &opts).unwrap();
        assert!(!m.clamped[f]);
        assert!(m.weight[f] < 0.0, "{}", m.weight[f]);
        // Pulled towards 0, not towards the prior (0.20 per unit): a feature that says nothing
        // gets nothing.
        let r = Feature::Reasoning.index();
        let silent: Vec<Example> = (0..400)
            .map(|i| {
                let mut e = example(i, i as f64, 1.0, if i < 200 { 1.0 } else { 0.0 });
                e.features[r] = ((i / 2) % 2) as f64;
                e
            })
            .collect();
        let towards_zero = TrainOptions {
            priors: false,
            ..TrainOptions::default()
        };
        let m = fit(&silent, &towards_zero).unwrap();
        assert!(m.weight[r].abs() < 0.2 * 0.20, "{}", m.weight[r]);
    }

    #[test]
    fn uninformative_features_keep_their_prior() {
        // The gain follows length only; "reasoning" varies but says nothing.
        let r = Feature::Reasoning.index();
        let ex: Vec<Example> = (0..400)
            .map(|i| {
                let mut e = example(
                    i,
                    i as f64,
                    1.0,
                    if i % 5 < 2 || i < 200 { 1.0 } else { 0.0 },
                );
                e.features[r] = ((i / 2) % 2) as f64;
                e
            })
            .collect();
        let prior = 0.20; // per unit, and a 0/1 feature's unit is 1
        let held = fit(
            &ex,
            &TrainOptions {
                cue_l2: 2000.0,
                ..TrainOptions::default()
            },
        )
        .unwrap();
        assert!(
            (held.weight[r] - prior).abs() < 0.2 * prior,
            "{}",
            held.weight[r]
        );
        // Pulled towards 0 instead, it would have been about 0.
        let free = fit(&ex, &data_led()).unwrap();
        assert!(free.weight[r].abs() < 0.2 * prior, "{}", free.weight[r]);
    }

    #[test]
    fn cue_families_are_held_tighter_than_shape_features() {
        let opts = TrainOptions {
            l2: 1.0,
            cue_l2: 1e6,
            length_share: 0.0,
            ..TrainOptions::default()
        };
        // Both fight their positive prior; only the shape feature is let go to its bound.
        let (cue, ex) = against(Feature::Reasoning);
        let m = fit(&ex, &opts).unwrap();
        assert!(!m.clamped[cue] && m.weight[cue] > 0.0, "{}", m.weight[cue]);
        let (shape, ex) = against(Feature::Turns);
        let m = fit(&ex, &opts).unwrap();
        assert!(m.clamped[shape]);
    }

    /// Sd of the length term over the sd of the logit, on `ex`.
    fn length_share(m: &FittedScore, ex: &[Example]) -> f64 {
        let sd = |v: &[f64]| {
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
        };
        let term: Vec<f64> = ex
            .iter()
            .map(|e| m.weight[0] * ((e.features[0] - m.mean[0]) / m.scale[0]).clamp(-3.0, 3.0))
            .collect();
        let logit: Vec<f64> = ex.iter().map(|e| m.logit(&e.features)).collect();
        sd(&term) / sd(&logit)
    }

    #[test]
    fn length_backbone_guarantees_its_share() {
        // The gain follows "lines" closely and length only loosely.
        let l = Feature::Questions.index();
        let ex: Vec<Example> = (0..300)
            .map(|i| {
                // Lengths within the unclipped range of the standardised ask length.
                let x = (((i * 37) % 300) as f64 + (i as f64) * 0.3) / 100.0;
                let mut e = example(i, x, 1.0, 1.0);
                e.features[l] = (i % 10) as f64;
                e.fast = if i % 10 > 4 { 0.0 } else { 1.0 };
                e
            })
            .collect();
        let off = fit(&ex, &data_led()).unwrap();
        assert_eq!(off.length_boost, 0.0);
        assert!(length_share(&off, &ex) < 0.6);
        let on = fit(
            &ex,
            &TrainOptions {
                length_share: 0.6,
                ..data_led()
            },
        )
        .unwrap();
        assert!(on.length_boost > 0.0);
        assert!((length_share(&on, &ex) - 0.6).abs() < 1e-9);
        // Nothing else moved.
        assert_eq!(on.weight[l], off.weight[l]);
        assert_eq!(on.weight[0], off.weight[0] + on.length_boost);
        // A share already met is left alone.
        let met = fit(
            &ex,
            &TrainOptions {
                length_share: 0.01,
                ..data_led()
            },
        )
        .unwrap();
        assert_eq!(met.length_boost, 0.0);
    }

    #[test]
    fn constant_features_get_priors() {
        let ex: Vec<Example> = (0..20).map(|i| example(i, i as f64, 1.0, 0.0)).collect();
        let m = fit(&ex, &TrainOptions::default()).unwrap();
        let images = Feature::Images.index();
        assert!(m.prior[images]);
        assert_eq!(m.weight[images], 0.05);
        assert!(!m.prior[0]);
    }

    #[test]
    fn rejects_bad_labels_and_empty_input() {
        assert!(matches!(
            fit(&[], &TrainOptions::default()),
            Err(TrainError::Empty)
        ));
        let ex = vec![example(0, 1.0, 2.0, 0.0)];
        assert!(matches!(
            fit(&ex, &TrainOptions::default()),
            Err(TrainError::BadLabel { row: 0, .. })
        ));
    }

    #[test]
    fn spread_keeps_the_order_and_fills_the_range() {
        // Skewed logits: a long upper tail, as on the shared sets.
        let ex: Vec<Example> = (0..400)
            .map(|i| {
                let x = (i as f64 / 40.0).powi(2);
                example(i, x, 1.0, if i % 3 == 0 || i > 300 { 0.0 } else { 1.0 })
            })
            .collect();
        let m = fit(&ex, &data_led()).unwrap();
        let r = spread(&m, &ex);
        assert!(r.factor > 1.0, "{r:?}");
        let s = m.rescaled(r);
        let mut before: Vec<f64> = ex.iter().map(|e| m.score(&e.features)).collect();
        let mut after: Vec<f64> = ex.iter().map(|e| s.score(&e.features)).collect();
        // Same order, prompt by prompt.
        for i in 0..ex.len() {
            for j in 0..ex.len() {
                assert_eq!(
                    before[i] < before[j],
                    after[i] < after[j],
                    "rows {i} and {j}"
                );
            }
        }
        before.sort_by(f64::total_cmp);
        after.sort_by(f64::total_cmp);
        let q = |v: &[f64], p: f64| v[(p * (v.len() - 1) as f64).round() as usize];
        assert!(q(&before, 0.95) - q(&before, 0.05) < q(&after, 0.95) - q(&after, 0.05));
        assert!((q(&after, 0.5) - 0.5).abs() < 1e-9);
        let (lo, hi) = (q(&after, 0.05), q(&after, 0.95));
        assert!(lo >= 0.05 - 1e-9 && hi <= 0.95 + 1e-9, "{lo} {hi}");
        assert!(
            (lo - 0.05).abs() < 1e-9 || (hi - 0.95).abs() < 1e-9,
            "{lo} {hi}"
        );
        // Priors scale with the rest.
        let images = Feature::Images.index();
        assert!((s.weight[images] - r.factor * m.weight[images]).abs() < 1e-12);
    }

    #[test]
    fn spread_of_constant_logits_is_the_identity() {
        let ex: Vec<Example> = (0..10)
            .map(|i| Example::scored([1.0; NUM_FEATURES], 1.0, (i % 2) as f64, 10.0))
            .collect();
        let m = fit(&ex, &TrainOptions::default()).unwrap();
        assert_eq!(
            spread(&m, &ex),
            Rescale {
                factor: 1.0,
                centre: 0.0
            }
        );
    }

    #[test]
    fn judged_rows_set_the_boundary_and_the_threshold() {
        // Scored rows follow length loosely; judged rows split cleanly around x = 4.
        let mut ex: Vec<Example> = (0..300)
            .map(|i| {
                example(
                    i,
                    (i % 30) as f64 * 0.2,
                    1.0,
                    if i % 7 == 0 { 0.0 } else { 1.0 },
                )
            })
            .collect();
        for i in 0..40 {
            let mut e = example(i, i as f64 * 0.15, 1.0, 1.0);
            e.hard = Some(e.features[0] > 4.0);
            e.fast = if e.hard == Some(true) { 0.0 } else { 1.0 };
            e.weight = 5.0;
            ex.push(e);
        }
        let m = fit(&ex, &data_led()).unwrap();
        let b = boundary(&m, &ex).unwrap();
        let at = |x: f64| {
            let mut f = [0.0; NUM_FEATURES];
            f[0] = x;
            m.logit(&f)
        };
        assert!(at(3.9) < b && b < at(4.05), "{} {b} {}", at(3.9), at(4.05));
        let stretched = m.rescaled(spread(&m, &ex));
        let t = choose_threshold(&stretched, &ex, &TrainOptions::default()).unwrap();
        assert!((t - 0.5).abs() < 1e-9, "{t}");
        // Without judged rows the rule is the CPT point.
        let scored: Vec<Example> = ex.iter().filter(|e| e.hard.is_none()).cloned().collect();
        assert!(boundary(&m, &scored).is_none());
    }

    #[test]
    fn rejects_bad_row_weights() {
        let mut e = example(0, 1.0, 1.0, 0.0);
        e.weight = 0.0;
        assert!(matches!(
            fit(&[e], &TrainOptions::default()),
            Err(TrainError::BadWeight { row: 0, .. })
        ));
    }

    #[test]
    fn every_feature_has_a_scale_and_a_prior() {
        for f in Feature::ALL {
            let s = spec(f);
            assert!(s.scale > 0.0 && s.prior != 0.0, "{f}");
        }
    }

    #[test]
    fn held_out_split_matches_zlib_crc32() {
        // zlib.crc32(b"crux-test-#0") % 5 and zlib.crc32(b"a") = 0xe8b7be43.
        assert_eq!(crc32fast::hash(b"a"), 0xe8b7_be43);
        assert_eq!(is_held_out("a"), 0xe8b7_be43_u32.is_multiple_of(5));
    }

    #[test]
    fn cholesky_solves() {
        let a = [4.0, 2.0, 2.0, 3.0];
        let x = cholesky_solve(&a, &[2.0, 1.0], 2).unwrap();
        assert!((4.0 * x[0] + 2.0 * x[1] - 2.0).abs() < 1e-12);
        assert!((2.0 * x[0] + 3.0 * x[1] - 1.0).abs() < 1e-12);
    }
}
