//! PURE. Quality-targeted operation (`routing.target_quality`): the strong share a caller
//! needs so that the quality gap recovered, by the online estimate on recent duels, meets a
//! target with a confidence margin.
//!
//! A strong share `s` becomes a threshold through the caller's recent scores (the score above
//! which `s` of them lie, as the target-share window turns a share into a threshold), and the
//! threshold a recovered share through [`estimate::recovery`]. The controller tries the shares
//! `0, 1/STEPS, 2/STEPS, …, 1` in order and takes the first whose interval's **lower end**
//! meets the target: the margin is the estimate's own 95% uncertainty, so few or noisy duels
//! ask for more strong traffic, and more duels let the share come down to what the traffic
//! needs. Share 1 always meets it (all strong recovers the whole gap, with no uncertainty).
//!
//! Until there are `quality.min_duels` duels (warm-up), with no recent scores, or when the
//! duels show no gap to recover (strong never better on balance), the caller's configured
//! target share applies: the estimate has nothing to say.
//!
//! Recovery is not monotone in the threshold (a fast-better verdict moves it down), so the
//! scan does not bisect; at 101 shares over a few thousand duels it is a few milliseconds,
//! run off the request path.

use super::estimate::{self, Recovery};
use estimate::Duel;

/// Shares tried: every 1/STEPS from 0 to 1.
pub const STEPS: u32 = 100;

/// The share a caller should target, and why.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Aim {
    /// The strong share, in [0, 1].
    pub share: f64,
    /// Why this share.
    pub why: Why,
}

/// Why the controller chose its share.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Why {
    /// Fewer duels than `quality.min_duels`: the configured share.
    WarmingUp {
        /// Duels seen.
        duels: usize,
    },
    /// No recent scores to turn a share into a threshold: the configured share.
    NoScores,
    /// The duels show no gap between the tiers: the configured share.
    NoGap,
    /// The lowest share whose recovered share's lower end meets the target.
    Met {
        /// The threshold that share gives on the recent scores.
        threshold: f64,
        /// The estimate there.
        recovery: Recovery,
    },
}

impl Why {
    /// The log form.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::WarmingUp { .. } => "warming_up",
            Self::NoScores => "no_scores",
            Self::NoGap => "no_gap",
            Self::Met { .. } => "target_met",
        }
    }
}

/// The threshold that sends `share` of `descending` (scores sorted high to low) to strong:
/// the lowest score among the top `⌈share · n⌉`; above every score for share 0.
fn threshold(descending: &[f64], share: f64) -> f64 {
    let n = descending.len();
    let k = (share * n as f64).ceil() as usize;
    match k {
        0 => f64::INFINITY,
        k if k >= n => 0.0,
        k => descending[k - 1],
    }
}

/// The strong share for `target` (a share of the quality gap to recover, in [0, 1]), from
/// recent `duels` and the caller's recent `scores`; `configured` during warm-up (fewer than
/// `min_duels` duels) and whenever the estimate cannot say.
pub fn aim(duels: &[Duel], scores: &[f64], target: f64, min_duels: usize, configured: f64) -> Aim {
    let fallback = |why| Aim {
        share: configured,
        why,
    };
    if duels.len() < min_duels.max(1) {
        return fallback(Why::WarmingUp { duels: duels.len() });
    }
    if scores.is_empty() {
        return fallback(Why::NoScores);
    }
    let mut descending = scores.to_vec();
    descending.sort_by(|a, b| b.total_cmp(a));
    let mut step = 0;
    loop {
        let share = f64::from(step) / f64::from(STEPS);
        let t = threshold(&descending, share);
        // The gap, Σ v, does not depend on the threshold: no gap is seen at the first step.
        let Some(recovery) = estimate::recovery(duels, t) else {
            return fallback(Why::NoGap);
        };
        // At share 1 the recovery is exactly 1 with no spread, so a target in [0, 1] is met
        // there at the latest.
        if recovery.low >= target || step == STEPS {
            return Aim {
                share,
                why: Why::Met {
                    threshold: t,
                    recovery,
                },
            };
        }
        step += 1;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::quality::label::DuelOutcome;

    /// A world where the strong answer is better with probability `0.1 + 0.6·score²` and the
    /// fast one with 0.03: most of the gap sits at high scores.
    fn world(n: usize, seed: u64) -> (Vec<Duel>, Vec<f64>) {
        let mut rng = fastrand::Rng::with_seed(seed);
        let duels = (0..n)
            .map(|_| {
                let score = rng.f64();
                let u = rng.f64();
                let outcome = if u < 0.03 {
                    DuelOutcome::FastBetter
                } else if u < 0.03 + 0.1 + 0.6 * score * score {
                    DuelOutcome::StrongBetter
                } else {
                    DuelOutcome::Tie
                };
                Duel { score, outcome }
            })
            .collect();
        let scores = (0..1000).map(|_| rng.f64()).collect();
        (duels, scores)
    }

    #[test]
    fn warm_up_and_no_gap_keep_the_configured_share() {
        let (duels, scores) = world(500, 1);
        let aim_at = |duels: &[Duel], scores: &[f64]| aim(duels, scores, 0.8, 200, 0.3);
        assert_eq!(
            aim_at(&duels[..199], &scores),
            Aim {
                share: 0.3,
                why: Why::WarmingUp { duels: 199 }
            }
        );
        assert_eq!(aim_at(&duels, &[]).why, Why::NoScores);
        let ties: Vec<Duel> = duels
            .iter()
            .map(|d| Duel {
                outcome: DuelOutcome::Tie,
                ..*d
            })
            .collect();
        assert_eq!(
            aim_at(&ties, &scores),
            Aim {
                share: 0.3,
                why: Why::NoGap
            }
        );
        assert!(matches!(
            aim_at(&duels[..200], &scores).why,
            Why::Met { .. }
        ));
    }

    #[test]
    fn more_duels_bring_the_share_down_to_what_the_traffic_needs() {
        // The truth on a large sample: the lowest share whose point estimate meets 0.8.
        let (population, scores) = world(200_000, 2);
        let mut descending = scores.clone();
        descending.sort_by(|a, b| b.total_cmp(a));
        let needed = (0..=STEPS)
            .map(|s| f64::from(s) / f64::from(STEPS))
            .find(|&s| {
                estimate::recovery(&population, threshold(&descending, s))
                    .is_some_and(|r| r.ratio >= 0.8)
            })
            .unwrap();
        let few = aim(&population[..300], &scores, 0.8, 200, 0.5).share;
        let many = aim(&population[..20_000], &scores, 0.8, 200, 0.5).share;
        println!("share needed {needed}; chosen on 300 duels {few}, on 20,000 {many}");
        assert!(few >= many, "few duels {few}, many {many}");
        // The margin keeps the share above what the traffic needs, and it narrows with duels.
        assert!(
            many >= needed - 0.02 && many <= needed + 0.1,
            "many {many}, needed {needed}"
        );
        assert!(needed > 0.3 && needed < 0.9, "the world needs {needed}");
    }

    fn duels_strategy() -> impl Strategy<Value = Vec<Duel>> {
        prop::collection::vec(
            (0.0..=1.0f64, 0..3u8).prop_map(|(score, o)| Duel {
                score,
                outcome: match o {
                    0 => DuelOutcome::StrongBetter,
                    1 => DuelOutcome::Tie,
                    _ => DuelOutcome::FastBetter,
                },
            }),
            1..300,
        )
    }

    proptest! {
        #[test]
        fn monotone_in_the_target_and_never_below_what_the_duels_need(
            duels in duels_strategy(),
            scores in prop::collection::vec(0.0..=1.0f64, 1..300),
            a in 0.0..=1.0f64,
            b in 0.0..=1.0f64,
            min_duels in 1usize..50,
            configured in 0.0..=1.0f64,
        ) {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            let low = aim(&duels, &scores, lo, min_duels, configured);
            let high = aim(&duels, &scores, hi, min_duels, configured);
            if duels.len() < min_duels {
                prop_assert_eq!(low.why, Why::WarmingUp { duels: duels.len() });
                prop_assert_eq!(low.share, configured);
                prop_assert_eq!(high.share, configured);
                return Ok(());
            }
            match (low.why, high.why) {
                (Why::NoGap, Why::NoGap) => {
                    prop_assert_eq!((low.share, high.share), (configured, configured));
                }
                (Why::Met { recovery: rl, .. }, Why::Met { recovery: rh, threshold: chosen }) => {
                    prop_assert!(low.share <= high.share, "{} > {}", low.share, high.share);
                    prop_assert!(rl.low >= lo && rh.low >= hi);
                    // No lower share meets the target: the chosen one is what the duels need.
                    let mut descending = scores.clone();
                    descending.sort_by(|a, b| b.total_cmp(a));
                    for step in 0..(high.share * f64::from(STEPS)).round() as u32 {
                        let t = threshold(&descending, f64::from(step) / f64::from(STEPS));
                        let r = estimate::recovery(&duels, t).unwrap();
                        prop_assert!(r.low < hi, "share {} met {hi} below {}", step, high.share);
                    }
                    prop_assert_eq!(chosen, threshold_of(&scores, high.share));
                }
                other => prop_assert!(false, "{other:?}"),
            }
        }
    }

    fn threshold_of(scores: &[f64], share: f64) -> f64 {
        let mut descending = scores.to_vec();
        descending.sort_by(|a, b| b.total_cmp(a));
        threshold(&descending, share)
    }

    #[test]
    fn thresholds_send_the_share_asked() {
        let scores = [0.9, 0.1, 0.5, 0.7];
        assert_eq!(threshold_of(&scores, 0.0), f64::INFINITY);
        assert_eq!(threshold_of(&scores, 0.25), 0.9);
        assert_eq!(threshold_of(&scores, 0.3), 0.7);
        assert_eq!(threshold_of(&scores, 0.5), 0.7);
        assert_eq!(threshold_of(&scores, 1.0), 0.0);
    }
}
