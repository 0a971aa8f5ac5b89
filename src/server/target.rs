//! Quality-targeted operation at run time (`routing.target_quality`): from a snapshot of the
//! recent duels, each target-share caller is re-aimed at the lowest strong share whose
//! estimated recovery meets the target with its confidence margin
//! ([`prompt_router_core::quality::target`]), and every change of operating point is logged
//! and counted. The duel window hands its snapshot to [`RouterState::retarget`]; the work is a
//! few milliseconds per caller, off the request path, and each caller's lock is held only to
//! copy its scores and to set its share.

use metrics::counter;

use super::service::RouterState;
use crate::telemetry;
use prompt_router_core::{
    operating::OperatingPoints,
    quality::{
        estimate::Duel,
        target::{self, Why},
    },
};

/// `routing.target_quality` and the duels it needs before it acts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QualityTarget {
    /// Share of the quality gap to recover, in [0, 1].
    pub target: f64,
    /// Duels before the estimate moves any share (`quality.min_duels`).
    pub min_duels: usize,
}

/// One caller's change of operating point.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The configured caller name, or `default`.
    pub caller: String,
    /// The strong share before.
    pub from: f64,
    /// The strong share now.
    pub to: f64,
    /// Why.
    pub why: Why,
}

/// Re-aims every target-share caller of `points` at `target` from `duels`; returns the
/// changes made (each logged and counted in `router_operating_point_changes_total`).
pub fn retarget(points: &OperatingPoints, target: QualityTarget, duels: &[Duel]) -> Vec<Change> {
    let callers: Vec<(String, f64, f64)> = points
        .callers()
        .filter_map(|p| Some((p.caller.to_owned(), p.target_share?, p.configured_share?)))
        .collect();
    let mut changes = Vec::new();
    for (caller, current, configured) in callers {
        let scores = points.scores(&caller).unwrap_or_default();
        let aim = target::aim(duels, &scores, target.target, target.min_duels, configured);
        if aim.share == current {
            continue;
        }
        let Some(from) = points.set_share(&caller, aim.share) else {
            continue;
        };
        match aim.why {
            Why::Met {
                threshold,
                recovery,
            } => tracing::info!(
                caller = caller.as_str(),
                from_share = from,
                to_share = aim.share,
                why = aim.why.as_str(),
                target_quality = target.target,
                recovered = recovery.ratio,
                recovered_low = recovery.low,
                threshold,
                duels = recovery.duels,
                "operating point changed"
            ),
            _ => tracing::info!(
                caller = caller.as_str(),
                from_share = from,
                to_share = aim.share,
                why = aim.why.as_str(),
                duels = duels.len(),
                "operating point changed"
            ),
        }
        counter!(telemetry::OPERATING_POINT_CHANGES_TOTAL, "caller" => caller.clone()).increment(1);
        changes.push(Change {
            caller,
            from,
            to: aim.share,
            why: aim.why,
        });
    }
    changes
}

impl RouterState {
    /// Re-aims the target-share callers at `routing.target_quality` from a snapshot of the
    /// recent duels; nothing without a quality target.
    pub fn retarget(&self, duels: &[Duel]) -> Vec<Change> {
        match self.quality_target {
            Some(target) => retarget(&self.decider.operating, target, duels),
            None => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prompt_router_core::{
        operating::{HORIZON, Settings},
        quality::label::DuelOutcome,
    };

    const SETTINGS: Settings = Settings {
        window: 1000,
        warmup: 100,
        horizon: HORIZON,
    };

    /// Duels where the strong answer is better exactly above score 0.6 (40% of uniform
    /// traffic): a target of 0.9 needs a share near 0.4.
    fn duels(n: usize) -> Vec<Duel> {
        let mut rng = fastrand::Rng::with_seed(3);
        (0..n)
            .map(|_| {
                let score = rng.f64();
                let outcome = if score >= 0.6 {
                    DuelOutcome::StrongBetter
                } else {
                    DuelOutcome::Tie
                };
                Duel { score, outcome }
            })
            .collect()
    }

    #[test]
    fn callers_move_after_warm_up_and_every_change_is_counted() {
        let telemetry = telemetry::install().unwrap();
        let points = OperatingPoints::new(
            0.5,
            SETTINGS,
            Some(0.2),
            [("fixed".to_owned(), None), ("batch".to_owned(), Some(0.9))],
        );
        let mut rng = fastrand::Rng::with_seed(4);
        for _ in 0..1000 {
            points.observe("anyone", rng.f64());
            points.observe("batch", rng.f64());
        }
        let target = QualityTarget {
            target: 0.9,
            min_duels: 200,
        };
        assert_eq!(retarget(&points, target, &duels(150)), Vec::new());
        let changes = retarget(&points, target, &duels(2000));
        let callers: Vec<&str> = changes.iter().map(|c| c.caller.as_str()).collect();
        assert_eq!(
            callers,
            ["batch", "default"],
            "the fixed caller stays fixed"
        );
        for change in &changes {
            assert!((0.3..=0.5).contains(&change.to), "{change:?}");
            assert!(matches!(change.why, Why::Met { recovery, .. } if recovery.low >= 0.9));
        }
        assert_eq!((changes[0].from, changes[1].from), (0.9, 0.2));
        // The same snapshot again: nothing to change.
        assert_eq!(retarget(&points, target, &duels(2000)), Vec::new());
        // Fewer duels than min_duels (a restart): back to the configured shares.
        let back = retarget(&points, target, &duels(10));
        assert_eq!(back.len(), 2);
        assert!(
            back.iter()
                .all(|c| matches!(c.why, Why::WarmingUp { duels: 10 }))
        );
        let shares: Vec<_> = points.callers().map(|p| p.target_share).collect();
        assert_eq!(shares, [Some(0.9), None, Some(0.2)]);
        let text = telemetry.render();
        for caller in ["batch", "default"] {
            let line = format!(
                "{}{{caller=\"{caller}\"}} 2",
                telemetry::OPERATING_POINT_CHANGES_TOTAL
            );
            assert!(text.contains(&line), "{line} in {text}");
        }
    }
}
