//! Training. PURE: fits the classifier's linear score on feature vectors.
//!
//! Model: logistic regression on standardised features, fitted by Newton's method from zero
//! (deterministic: no randomness, no data-order dependence beyond float summation order).
//!
//! Label: the soft label `y = (1 + strong_score − weak_score) / 2`. Routing a prompt to the strong
//! model gains `strong − weak` in quality, and APGR only depends on the order in which prompts
//! are sent to strong, so the best order sorts by the expected gain `E[strong − weak | x]`.
//! Cross-entropy against this soft label is minimised where `p(x) = (1 + E[gain | x]) / 2`, a
//! monotone map of the expected gain. It keeps every row: ties (both right or both wrong) pull
//! towards 0.5 instead of being dropped, and rows where only the fast model is right pull down.
//! In cross-validation on the training rows this beat "strong wins vs not" and "drop ties".
//!
//! Priors ([`PRIORS`]): the labelled sets are two narrow domains (multiple-choice exam questions,
//! and one fixed code-execution instruction). What they can say about a cue family is mostly
//! what a handful of their subjects say: on MMLU the maths cues pull towards the fast model (in
//! high-school mathematics the weak model beats the strong one on average), and no row asks for
//! a proof, an essay or a program. So the L2 penalty pulls every weight towards a documented prior weight
//! instead of towards 0 — cue families ([`CUE_FAMILIES`], rare in both sets) with
//! `cue_l2`, size and shape features (which vary on every row) with `l2` — and a prior's sign is
//! also a bound: a fit that breaks it fixes the weight at 0 and refits the rest (an active-set
//! loop, deterministic). Features without a prior are fitted freely towards 0. With
//! [`TrainOptions::priors`] off (`train --no-priors`) every fitted weight is pulled towards 0 with
//! no bounds: right for a labelled sample of the traffic the router serves, wrong for these two
//! sets (see README, "Classifier": it fits MMLU's maths artefact and orders the out-of-domain
//! suite worse).
//!
//! Length backbone ([`length_backbone`]): length is the one signal known to carry to every
//! domain, and the shape features fitted on two sets may be noise in a third. After fitting,
//! the `tokens` weight alone is raised (nothing refitted) until the length term has at least
//! `length_share` of the standard deviation of the logit on the training rows. On a prompt set
//! where every other feature is uninformative the ranking then stays close to length-only
//! rather than drifting to random.
//!
//! Features without variance in the training rows (images, tools, turns, system prompts, code
//! fences, output limits: every training prompt is a single text turn) cannot be fitted: they
//! get their prior weight, standardised by the typical value and spread in [`UNSEEN`], and are
//! flagged `prior: true` in the weights file.
//!
//! Model selection (the prior sizes are judgement; `l2`, `cue_l2` and `length_share` were chosen
//! on the training rows only): 5-fold cross-validation, the same with MMLU folds grouped by
//! subject, MMLU → CRUXEval and CRUXEval → MMLU transfer, the training rows with every feature but
//! length shuffled (an uninformative set), and the out-of-domain suite in `tests/ood_suite.rs`.
//!
//! Spread ([`spread`]): the fitted logit is a calibrated estimate of `(1 + E[gain]) / 2`, and the
//! expected gain varies little between prompts, so fitted scores bunch in a narrow band: useless
//! on a 0.05-bucket dashboard histogram, and too narrow for the per-request quality bias, which
//! moves the threshold linearly towards 0 or 1. After fitting, every weight (priors included)
//! and the bias are multiplied by one factor `k` and the bias re-centred, so the score stays
//! literally `logistic(w·x + b)` with the same ranking (APGR and CPT unchanged) but: the median
//! training prompt scores 0.5, and the 5th–95th percentile range of the training scores fits in
//! [0.05, 0.95] with its farther end on the boundary. Centring on the median rather than mapping
//! both percentiles exactly keeps the default threshold near the middle when the logits are
//! skewed, so the quality bias has room in both directions. The score is then a rank-like
//! complexity scale, not a probability; contributions are in these stretched logit units. The
//! threshold is chosen after the stretch.

use crate::calibrate;
use crate::classify::{
    DEFAULT_CLIP, FEATURE_NAMES, FORMAT_VERSION, FeatureWeight, Metadata, NUM_FEATURES, Rescale,
    Weights, contribution, logistic,
};
use crate::eval::Row;

/// Why training failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// No training rows.
    #[error("no training rows")]
    Empty,
    /// A label outside [0, 1] or not finite.
    #[error("row {row}: scores must be numbers in [0, 1], got strong {strong}, weak {weak}")]
    BadLabel {
        /// Row index.
        row: usize,
        /// strong_score found.
        strong: f64,
        /// weak_score found.
        weak: f64,
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
    /// Feature values in [`FEATURE_NAMES`] order.
    pub features: [f64; NUM_FEATURES],
    /// How well the strong model answered, in [0, 1].
    pub strong: f64,
    /// How well the fast model answered, in [0, 1].
    pub weak: f64,
    /// Estimated input tokens (for cost figures).
    pub input_tokens: f64,
}

/// Training settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOptions {
    /// L2 penalty pulling the standardised weight of a size or shape feature towards its prior;
    /// the objective is `Σ cross-entropy + Σᵢ λᵢ/2 · (wᵢ − priorᵢ)² + BIAS_L2/2 · bias²`.
    pub l2: f64,
    /// The same penalty for the [`CUE_FAMILIES`].
    pub cue_l2: f64,
    /// Smallest share, in [0, 1), of the logit's standard deviation on the training rows that
    /// the length term must carry ([`length_backbone`]); 0 turns the backbone off.
    pub length_share: f64,
    /// Newton iterations at most.
    pub max_iterations: usize,
    /// Stop when no parameter moves more than this.
    pub tolerance: f64,
    /// Standardised values are clamped to ±clip, in training as in scoring.
    pub clip: f64,
    /// The stored threshold is the one with the lowest strong share whose PGR on the training
    /// rows reaches this (i.e. the CPT(target) point).
    pub target_pgr: f64,
    /// Pull fitted weights towards the [`PRIORS`] under their signs (true), or towards 0 with
    /// no bounds (false: for a labelled sample of the traffic itself, where the data are the
    /// domain). Features the data do not vary keep their prior either way.
    pub priors: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            l2: 1000.0,
            cue_l2: 2000.0,
            length_share: 0.6,
            max_iterations: 100,
            tolerance: 1e-10,
            clip: DEFAULT_CLIP,
            target_pgr: 0.8,
            priors: true,
        }
    }
}

/// Prior weight of each feature whose direction routing research documents, in logit (before
/// the stretch) per unit of the feature value; count features are `ln(1 + count)`, so the unit
/// is one e-fold of the count. For gains this small the logit is about twice the expected
/// quality gain of the strong model, so `reasoning` at 0.25 says one "prove" or "derive"
/// (ln 2 ≈ 0.69 units) adds about 0.09 to it, `tokens` at 0.10 that doubling a prompt adds about
/// 0.035. Directions: multi-step reasoning, analysis, maths, code, constraints, multi-part
/// structure, requested long output and length push towards the strong model (the categories
/// where strong and fast models differ most in routing benchmarks), lookups and chit-chat
/// towards the fast one. Sizes are judgement, set so that two or three strong cues outweigh a
/// prompt several times shorter. Features absent here (word and sentence length, commas,
/// quotes, negation, non-ASCII share) have no documented direction: fitted freely, pulled to 0.
pub const PRIORS: [(&str, f64); 24] = [
    ("tokens", 0.10),
    ("lines", 0.02),
    ("numbers", 0.05),
    ("math_ops", 0.08),
    ("math_words", 0.20),
    ("latex", 0.10),
    ("code_syntax", 1.0),
    ("code_keywords", 0.12),
    ("code_fences", 0.15),
    ("indentation", 0.05),
    ("questions", 0.05),
    ("enumerations", 0.05),
    ("multipart", 0.10),
    ("reasoning", 0.25),
    ("analysis", 0.20),
    ("constraints", 0.10),
    ("long_output", 0.15),
    ("simple_task", -0.25),
    ("symbols", 0.03),
    ("system_tokens", 0.01),
    ("turns", 0.03),
    ("images", 0.08),
    ("tools", 0.05),
    ("max_tokens", 0.04),
];

/// Keyword families held to their priors with `cue_l2`: each fires on a few percent of the
/// labelled rows, mostly in a few MMLU subjects, so its fitted weight says more about those
/// subjects than about the cue.
pub const CUE_FAMILIES: [&str; 11] = [
    "reasoning",
    "analysis",
    "math_words",
    "latex",
    "code_keywords",
    "code_fences",
    "constraints",
    "multipart",
    "enumerations",
    "long_output",
    "simple_task",
];

/// Typical value and spread of the features the labelled data has no variance in (every
/// training prompt is one text turn with no system prompt, image, tool, output limit or code
/// fence): the value of such a prompt, and a spread of one e-fold (two for system prompts,
/// whose sizes vary more).
pub const UNSEEN: [(&str, f64, f64); 6] = [
    ("code_fences", 0.0, 1.0),
    ("system_tokens", 0.0, 2.0),
    ("turns", 0.0, 1.0),
    ("images", 0.0, 1.0),
    ("tools", 0.0, 1.0),
    ("max_tokens", 0.0, 1.0),
];

/// The prior weight of feature `i` per unit of its value (0 if it has none).
fn prior_per_unit(i: usize) -> f64 {
    PRIORS
        .iter()
        .find(|p| p.0 == FEATURE_NAMES[i])
        .map_or(0.0, |p| p.1)
}

/// Whether `weight` has the opposite sign of feature `i`'s prior (a broken bound).
fn breaks_prior_sign(i: usize, weight: f64) -> bool {
    prior_per_unit(i) * weight < 0.0
}

/// A fitted linear score.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
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

impl Model {
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
                    name: FEATURE_NAMES[i].to_owned(),
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

impl Model {
    /// The same ranking with logit `factor × (logit − centre)`: every weight, priors included,
    /// times `factor`, and the bias moved accordingly.
    pub fn rescaled(&self, r: Rescale) -> Model {
        Model {
            bias: r.factor * (self.bias - r.centre),
            weight: self.weight.map(|w| r.factor * w),
            ..self.clone()
        }
    }
}

/// The stretch that puts the median training logit at score 0.5 and the 5th–95th percentile
/// range within [0.05, 0.95], the farther end on the boundary (see the module docs). Percentiles
/// are nearest-rank on the sorted logits, so the result depends on the rows only. Degenerate
/// data (every logit equal) gets the identity.
pub fn spread(model: &Model, examples: &[Example]) -> Rescale {
    let mut logits: Vec<f64> = examples.iter().map(|e| model.logit(&e.features)).collect();
    logits.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let last = logits.len().saturating_sub(1);
        logits
            .get(((q * last as f64).round() as usize).min(last))
            .copied()
            .unwrap_or(0.0)
    };
    let (low, centre, high) = (at(SPREAD_QUANTILE), at(0.5), at(1.0 - SPREAD_QUANTILE));
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

/// Index of the `tokens` feature, which the length backbone raises.
fn tokens_index() -> usize {
    FEATURE_NAMES
        .iter()
        .position(|n| *n == "tokens")
        .unwrap_or(0)
}

/// Fits the model on `examples`: penalised fit towards the priors under their signs, then the
/// length backbone.
pub fn fit(examples: &[Example], opts: &TrainOptions) -> Result<Model, TrainError> {
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
        if !ok(e.strong) || !ok(e.weak) {
            return Err(TrainError::BadLabel {
                row,
                strong: e.strong,
                weak: e.weak,
            });
        }
    }
    let n = examples.len() as f64;
    let mut mean = [0.0; NUM_FEATURES];
    let mut scale = [1.0; NUM_FEATURES];
    let mut prior = [false; NUM_FEATURES];
    let mut weight = [0.0; NUM_FEATURES];
    let mut fitted = Vec::with_capacity(NUM_FEATURES);
    for i in 0..NUM_FEATURES {
        let m = examples.iter().map(|e| e.features[i]).sum::<f64>() / n;
        let var = examples
            .iter()
            .map(|e| (e.features[i] - m).powi(2))
            .sum::<f64>()
            / n;
        if var.sqrt() > CONSTANT {
            mean[i] = m;
            scale[i] = var.sqrt();
            fitted.push(i);
        } else {
            prior[i] = true;
            match UNSEEN.iter().find(|u| u.0 == FEATURE_NAMES[i]) {
                Some(&(_, typical, spread)) => {
                    mean[i] = typical;
                    scale[i] = spread;
                    weight[i] = prior_per_unit(i) * spread;
                }
                None => mean[i] = m,
            }
        }
    }
    // Penalty strength and centre per standardised weight: the prior per unit times the spread.
    let penalty: Vec<(f64, f64)> = (0..NUM_FEATURES)
        .map(|i| {
            let l2 = if CUE_FAMILIES.contains(&FEATURE_NAMES[i]) {
                opts.cue_l2
            } else {
                opts.l2
            };
            let centre = if opts.priors {
                prior_per_unit(i) * scale[i]
            } else {
                0.0
            };
            (l2, centre)
        })
        .collect();
    let labels: Vec<f64> = examples
        .iter()
        .map(|e| (1.0 + e.strong - e.weak) / 2.0)
        .collect();
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
        let (theta, used) = newton(&rows, &offsets, &labels, &free_penalty, opts)?;
        iterations += used;
        let broken: Vec<usize> = fitted
            .iter()
            .zip(&theta[1..])
            .filter(|&(&i, &w)| opts.priors && breaks_prior_sign(i, w))
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
    let mut model = Model {
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
    model.weight[tokens_index()] += model.length_boost;
    Ok(model)
}

/// How much to add to the `tokens` weight, nothing else changed, so that the length term's
/// standard deviation over `examples` is at least `share` times the logit's. With length term
/// `(w + d)·z` and the logit `L + d·z`, the share is reached where
/// `(w + d)²·Var z = share²·Var(L + d·z)`, a quadratic in `d` with one positive root when the
/// share is not yet met (`w ≥ 0`: length's prior is positive and its sign a bound). 0 when
/// the share is already met, `share` is 0, or length does not vary.
pub fn length_backbone(model: &Model, examples: &[Example], share: f64) -> f64 {
    let t = tokens_index();
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

/// Objective: Σ cross-entropy + Σ λ/2 · (θ − centre)² over the weights + BIAS_L2/2 · bias², each
/// row's logit shifted by its offset; `penalty[j]` is (λ, centre) of weight j (θ[j + 1]).
fn objective(
    rows: &[Vec<f64>],
    offsets: &[f64],
    labels: &[f64],
    theta: &[f64],
    penalty: &[(f64, f64)],
) -> f64 {
    let mut loss = 0.0;
    for ((x, &y), &o) in rows.iter().zip(labels).zip(offsets) {
        let z: f64 = o + x.iter().zip(theta).map(|(a, b)| a * b).sum::<f64>();
        // log(1 + e^z) − y·z, written to stay finite for large |z|.
        loss += z.max(0.0) + (-z.abs()).exp().ln_1p() - y * z;
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
    rows: &[Vec<f64>],
    offsets: &[f64],
    labels: &[f64],
    penalty: &[(f64, f64)],
    opts: &TrainOptions,
) -> Result<(Vec<f64>, usize), TrainError> {
    let k = rows.first().map_or(1, Vec::len);
    let mut theta = vec![0.0; k];
    let mut current = objective(rows, offsets, labels, &theta, penalty);
    for iter in 1..=opts.max_iterations {
        let mut grad = vec![0.0; k];
        let mut hess = vec![0.0; k * k];
        for ((x, &y), &o) in rows.iter().zip(labels).zip(offsets) {
            let z: f64 = o + x.iter().zip(&theta).map(|(a, b)| a * b).sum::<f64>();
            let p = logistic(z);
            let r = p - y;
            let w = p * (1.0 - p);
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
            value = objective(rows, offsets, labels, &next, penalty);
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
pub fn score_rows(model: &Model, examples: &[Example]) -> Vec<Row> {
    examples
        .iter()
        .map(|e| Row {
            score: model.score(&e.features),
            strong: e.strong,
            weak: e.weak,
            input_tokens: e.input_tokens,
        })
        .collect()
}

/// The default threshold: the CPT(`target_pgr`) point of the model on its training rows, i.e.
/// the lowest strong share (and so the lowest cost, since cost only grows with strong share)
/// whose quality gap recovered reaches the target.
pub fn choose_threshold(
    model: &Model,
    examples: &[Example],
    opts: &TrainOptions,
) -> Result<f64, TrainError> {
    let rows = score_rows(model, examples);
    Ok(calibrate::for_pgr(&rows, opts.target_pgr)?.threshold)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(i: usize, x: f64, strong: f64, weak: f64) -> Example {
        let mut features = [0.0; NUM_FEATURES];
        features[0] = x;
        features[1] = (i % 3) as f64;
        Example {
            features,
            strong,
            weak,
            input_tokens: 10.0,
        }
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

    /// Rows where feature `name` anti-correlates with the gain.
    fn against(name: &str) -> (usize, Vec<Example>) {
        let f = FEATURE_NAMES.iter().position(|n| *n == name).unwrap();
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

    fn index(name: &str) -> usize {
        FEATURE_NAMES.iter().position(|n| *n == name).unwrap()
    }

    #[test]
    fn wrong_signs_are_clamped_to_zero() {
        let (f, ex) = against("lines");
        let m = fit(&ex, &data_led()).unwrap();
        assert!(m.clamped[f]);
        assert_eq!(m.weight[f], 0.0);
        assert!(m.weight[0] > 0.0);
        // A negative prior bounds from above.
        let (f, ex) = against("simple_task");
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
        let (f, ex) = against("lines");
        let opts = TrainOptions {
            priors: false,
            ..data_led()
        };
        let m = fit(&ex, &opts).unwrap();
        assert!(!m.clamped[f]);
        assert!(m.weight[f] < 0.0, "{}", m.weight[f]);
        // Pulled towards 0, not towards the prior (0.25 per unit × 0.5 standard deviation):
        // a feature that says nothing gets nothing.
        let r = index("reasoning");
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
        assert!(m.weight[r].abs() < 0.2 * 0.25 * 0.5, "{}", m.weight[r]);
    }

    #[test]
    fn uninformative_features_keep_their_prior() {
        // The gain follows length only; "reasoning" varies but says nothing.
        let r = index("reasoning");
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
        let prior = 0.25 * 0.5; // per unit × standard deviation of a 0/1 feature split evenly
        let held = fit(&ex, &TrainOptions::default()).unwrap();
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
        let (cue, ex) = against("reasoning");
        let m = fit(&ex, &opts).unwrap();
        assert!(!m.clamped[cue] && m.weight[cue] > 0.0, "{}", m.weight[cue]);
        let (shape, ex) = against("numbers");
        let m = fit(&ex, &opts).unwrap();
        assert!(m.clamped[shape]);
    }

    /// Sd of the length term over the sd of the logit, on `ex`.
    fn length_share(m: &Model, ex: &[Example]) -> f64 {
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
        let l = index("lines");
        let ex: Vec<Example> = (0..300)
            .map(|i| {
                let mut e = example(i, ((i * 37) % 300) as f64 + (i as f64) * 0.3, 1.0, 1.0);
                e.features[l] = (i % 10) as f64;
                e.weak = if i % 10 > 4 { 0.0 } else { 1.0 };
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
        let images = FEATURE_NAMES.iter().position(|n| *n == "images").unwrap();
        assert!(m.prior[images]);
        assert_eq!(m.weight[images], 0.08);
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
        let images = FEATURE_NAMES.iter().position(|n| *n == "images").unwrap();
        assert!((s.weight[images] - r.factor * m.weight[images]).abs() < 1e-12);
    }

    #[test]
    fn spread_of_constant_logits_is_the_identity() {
        let ex: Vec<Example> = (0..10)
            .map(|i| Example {
                features: [1.0; NUM_FEATURES],
                strong: 1.0,
                weak: (i % 2) as f64,
                input_tokens: 10.0,
            })
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
