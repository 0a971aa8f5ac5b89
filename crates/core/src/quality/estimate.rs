//! The online quality estimate, from duels: of the quality gap between the tiers over the
//! dueled requests, the share recovered by sending to strong those at or above a threshold.
//!
//! A duel gives a verdict `v`: +1 when the strong answer is better, 0 for a tie, −1 when the
//! fast one is. Sending a request to strong gains `v` over sending it to fast, so over `n`
//! duels the gap between all-fast and all-strong is `Σ v`, and a threshold `t` recovers
//! `R(t) = Σ_{score ≥ t} v / Σ v` of it: 0 for all-fast, 1 for all-strong (the verdict-level
//! form of the shared sets' PGR). Sampled duels are a simple random sample of the requests, so
//! `R` is a ratio estimator; its interval is the delta method's normal interval,
//! `R ± z·sd`, `sd² = (Var a − 2R·Cov(a, b) + R²·Var b) / (n · mean(b)²)` with `a = v·[score ≥ t]`,
//! `b = v`. With no gap seen (`Σ v ≤ 0`) there is nothing to recover and no estimate.
//! Only score-decided requests are dueled for the estimate: a forced request says nothing of
//! the threshold.

use super::label::DuelOutcome;

/// z for a two-sided 95% interval.
pub const Z_95: f64 = 1.959_963_984_540_054;

/// One duel as the estimate needs it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Duel {
    /// The request's score.
    pub score: f64,
    /// The judge's verdict.
    pub outcome: DuelOutcome,
}

impl Duel {
    /// The verdict as the gain of sending the request to strong.
    pub fn gain(self) -> f64 {
        match self.outcome {
            DuelOutcome::StrongBetter => 1.0,
            DuelOutcome::Tie => 0.0,
            DuelOutcome::FastBetter => -1.0,
        }
    }
}

/// The estimate at one threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recovery {
    /// Estimated share of the gap recovered.
    pub ratio: f64,
    /// The 95% interval's lower end.
    pub low: f64,
    /// The 95% interval's upper end.
    pub high: f64,
    /// Duels it stands on.
    pub duels: usize,
    /// Of them, sent to strong at this threshold.
    pub strong: usize,
    /// Verdicts: the strong answer better, a tie, the fast answer better.
    pub strong_better: usize,
    /// Ties.
    pub ties: usize,
    /// The fast answer better.
    pub fast_better: usize,
}

/// The estimate of sending to strong the duels scoring at or above `threshold`; `None` with
/// no duels or no gap seen.
pub fn recovery(duels: &[Duel], threshold: f64) -> Option<Recovery> {
    let n = duels.len();
    if n == 0 {
        return None;
    }
    let count = |o: DuelOutcome| duels.iter().filter(|d| d.outcome == o).count();
    let (mut sum_a, mut sum_b) = (0.0, 0.0);
    for d in duels {
        let b = d.gain();
        sum_b += b;
        if d.score >= threshold {
            sum_a += b;
        }
    }
    if sum_b <= 0.0 {
        return None;
    }
    let nf = n as f64;
    let (mean_a, mean_b) = (sum_a / nf, sum_b / nf);
    let ratio = sum_a / sum_b;
    // Σ (a − R·b)² / (n − 1) is Var a − 2R·Cov(a, b) + R²·Var b in one pass.
    let residual: f64 = duels
        .iter()
        .map(|d| {
            let b = d.gain();
            let a = if d.score >= threshold { b } else { 0.0 };
            (a - mean_a - ratio * (b - mean_b)).powi(2)
        })
        .sum();
    let variance = if n > 1 { residual / (nf - 1.0) } else { 0.0 };
    let sd = (variance / nf).sqrt() / mean_b;
    Some(Recovery {
        ratio,
        low: ratio - Z_95 * sd,
        high: ratio + Z_95 * sd,
        duels: n,
        strong: duels.iter().filter(|d| d.score >= threshold).count(),
        strong_better: count(DuelOutcome::StrongBetter),
        ties: count(DuelOutcome::Tie),
        fast_better: count(DuelOutcome::FastBetter),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn duel(score: f64, outcome: DuelOutcome) -> Duel {
        Duel { score, outcome }
    }

    #[test]
    fn all_fast_recovers_nothing_and_all_strong_everything() {
        let duels = [
            duel(0.9, DuelOutcome::StrongBetter),
            duel(0.2, DuelOutcome::StrongBetter),
            duel(0.5, DuelOutcome::Tie),
            duel(0.1, DuelOutcome::FastBetter),
        ];
        assert_eq!(recovery(&duels, 1.1).unwrap().ratio, 0.0);
        assert_eq!(recovery(&duels, 0.0).unwrap().ratio, 1.0);
        // At 0.5: the 0.9 duel's +1 and the tie: 1 of a gap of 1.
        let mid = recovery(&duels, 0.5).unwrap();
        assert_eq!((mid.ratio, mid.strong), (1.0, 2));
        // At 0.15: +1 +1 +0 of 1: more than the gap, since the fast-better one stays fast.
        assert_eq!(recovery(&duels, 0.15).unwrap().ratio, 2.0);
        assert_eq!(
            (mid.strong_better, mid.ties, mid.fast_better, mid.duels),
            (2, 1, 1, 4)
        );
    }

    #[test]
    fn no_gap_no_estimate() {
        assert_eq!(recovery(&[], 0.5), None);
        let ties = [
            duel(0.9, DuelOutcome::Tie),
            duel(0.1, DuelOutcome::FastBetter),
        ];
        assert_eq!(recovery(&ties, 0.5), None);
    }

    #[test]
    fn the_interval_covers_the_truth_about_95_percent_of_the_time() {
        // A world where strong is better on 40% of requests (more often at high scores), fast
        // on 5%: the truth at 0.5 is computed on a large population, the intervals on samples.
        let mut rng = fastrand::Rng::with_seed(7);
        let population: Vec<Duel> = (0..200_000)
            .map(|_| {
                let score = rng.f64();
                let u = rng.f64();
                let outcome = if u < 0.05 {
                    DuelOutcome::FastBetter
                } else if u < 0.05 + 0.2 + 0.4 * score {
                    DuelOutcome::StrongBetter
                } else {
                    DuelOutcome::Tie
                };
                duel(score, outcome)
            })
            .collect();
        let truth = recovery(&population, 0.5).unwrap().ratio;
        let trials = 400;
        let covered = (0..trials)
            .filter(|_| {
                let sample: Vec<Duel> = (0..500)
                    .map(|_| population[rng.usize(..population.len())])
                    .collect();
                let r = recovery(&sample, 0.5).unwrap();
                r.low <= truth && truth <= r.high
            })
            .count();
        let share = covered as f64 / f64::from(trials);
        assert!((0.91..=0.98).contains(&share), "coverage {share}");
    }
}
