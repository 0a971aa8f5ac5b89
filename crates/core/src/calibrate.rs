//! Threshold calibration. PURE.
//!
//! - [`for_share`]: the threshold that sends (at least) a target share of a prompt sample to
//!   the strong model: the highest threshold whose share reaches the target. Prompts with equal
//!   scores cannot be split, so the share reached may exceed the target; it is reported.
//! - [`for_pgr`]: on labelled data, the threshold of the CPT(target) sweep point: the lowest
//!   strong share whose quality gap recovered reaches the target.

use crate::eval::{self, EvalError, Row};

/// Why no threshold could be chosen.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CalibrateError {
    /// No scores.
    #[error("no prompts to calibrate on")]
    Empty,
    /// A target outside its range.
    #[error("target {0} is outside [0, 1]")]
    Target(f64),
    /// A score that is not a finite number.
    #[error("score {0} is not a finite number")]
    NotFinite(usize),
    /// The labelled data cannot be evaluated.
    #[error(transparent)]
    Eval(#[from] EvalError),
    /// No sweep point reaches the target PGR.
    #[error("no threshold reaches a quality gap recovered of {0}")]
    Unreachable(f64),
}

/// A chosen threshold and what it does on the calibration data.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    /// Route to strong when `score ≥ threshold`.
    pub threshold: f64,
    /// Share of the calibration prompts sent to strong.
    pub strong_share: f64,
    /// Quality gap recovered (labelled data only).
    pub pgr: Option<f64>,
}

/// The highest threshold that sends at least `target` of `scores` to strong.
pub fn for_share(scores: &[f64], target: f64) -> Result<Calibration, CalibrateError> {
    if scores.is_empty() {
        return Err(CalibrateError::Empty);
    }
    if !(0.0..=1.0).contains(&target) {
        return Err(CalibrateError::Target(target));
    }
    if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
        return Err(CalibrateError::NotFinite(i));
    }
    let mut sorted = scores.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let n = sorted.len();
    // Tolerance so that e.g. 0.3 × 10 counts as 3, not 3.0000000000000004 → 4.
    let wanted = ((target * n as f64) - 1e-9).ceil().max(0.0) as usize;
    let threshold = match wanted.min(n) {
        0 => sorted[0].next_up(),
        k => sorted[k - 1],
    };
    let strong = sorted.iter().filter(|&&s| s >= threshold).count();
    Ok(Calibration {
        threshold,
        strong_share: strong as f64 / n as f64,
        pgr: None,
    })
}

/// The threshold of the lowest strong share whose PGR on `rows` reaches `target`.
pub fn for_pgr(rows: &[Row], target: f64) -> Result<Calibration, CalibrateError> {
    if !target.is_finite() {
        return Err(CalibrateError::Target(target));
    }
    let points = eval::sweep(rows)?;
    let best = eval::cpt_point(&points, target).ok_or(CalibrateError::Unreachable(target))?;
    Ok(Calibration {
        threshold: best.threshold,
        strong_share: best.strong_share,
        pgr: Some(best.pgr),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_without_ties() {
        let s = [0.1, 0.9, 0.5, 0.7, 0.3];
        let c = for_share(&s, 0.4).unwrap();
        assert_eq!(c.threshold, 0.7);
        assert_eq!(c.strong_share, 0.4);
        // 0.3 × 5 = 1.5 prompts: at least 2 must go strong.
        let c = for_share(&s, 0.3).unwrap();
        assert_eq!(c.threshold, 0.7);
        assert_eq!(c.strong_share, 0.4);
        let c = for_share(&s, 0.6).unwrap();
        assert_eq!(c.threshold, 0.5);
        assert_eq!(c.strong_share, 0.6);
        assert_eq!(for_share(&s, 1.0).unwrap().threshold, 0.1);
        let none = for_share(&s, 0.0).unwrap();
        assert!(none.threshold > 0.9);
        assert_eq!(none.strong_share, 0.0);
    }

    #[test]
    fn share_with_ties_reports_what_it_reaches() {
        let s = [0.5, 0.5, 0.5, 0.2];
        let c = for_share(&s, 0.25).unwrap();
        assert_eq!(c.threshold, 0.5);
        assert_eq!(c.strong_share, 0.75);
    }

    #[test]
    fn share_rejects_bad_input() {
        assert_eq!(for_share(&[], 0.5), Err(CalibrateError::Empty));
        assert_eq!(for_share(&[0.1], 1.5), Err(CalibrateError::Target(1.5)));
        assert_eq!(
            for_share(&[f64::NAN], 0.5),
            Err(CalibrateError::NotFinite(0))
        );
    }

    #[test]
    fn pgr_target() {
        let r = |score, strong, fast| Row {
            score,
            strong,
            fast,
            input_tokens: 1.0,
        };
        let rows = [
            r(0.9, 1.0, 0.0),
            r(0.7, 1.0, 1.0),
            r(0.5, 1.0, 0.0),
            r(0.1, 0.0, 0.0),
        ];
        let c = for_pgr(&rows, 0.8).unwrap();
        assert_eq!(c.threshold, 0.5);
        assert_eq!(c.strong_share, 0.75);
        assert_eq!(c.pgr, Some(1.0));
        let c = for_pgr(&rows, 0.5).unwrap();
        assert_eq!(c.threshold, 0.9);
        assert_eq!(for_pgr(&rows, 1.5), Err(CalibrateError::Unreachable(1.5)));
    }
}
