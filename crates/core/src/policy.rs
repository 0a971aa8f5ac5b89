//! PURE. Turns a complexity score and what the request needs into a tier.
//!
//! Order of precedence: capability rules (a request only one tier can serve), then the caller's
//! forced mode, then the score against the threshold in force (the caller's operating point,
//! [`crate::operating`]) moved by the request's quality bias.

use crate::{
    catalog::{Catalog, Tier},
    operating::{InForce, Point},
};

/// How the caller asked for the tier to be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutingMode {
    /// By score.
    Auto,
    /// Always strong.
    ForceStrong,
    /// Always fast, unless the request needs the strong model.
    ForceFast,
}

/// Why the tier was chosen; also a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Basis {
    /// Score against threshold.
    Score,
    /// Forced by the caller.
    Forced,
    /// Only this tier can serve the request.
    Capability,
    /// The chosen tier failed everywhere and the other tier answered.
    Fallback,
    /// The caller is near its spend budget: strong-bound, it went fast.
    Budget,
}

impl Basis {
    /// The metric-label form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Score => "score",
            Self::Forced => "forced",
            Self::Capability => "capability",
            Self::Fallback => "fallback",
            Self::Budget => "budget",
        }
    }
}

/// What the request needs from a model, apart from its text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Needs {
    /// The caller's routing mode.
    pub mode: RoutingMode,
    /// Threshold shift in [-1, 1]; positive prefers strong.
    pub quality_bias: f64,
    /// Requested output tokens.
    pub max_tokens: Option<u32>,
    /// Images in the request.
    pub images: bool,
    /// Tools declared or used.
    pub tools: bool,
}

/// What the policy picks for one request: the tier, why, and the threshold it compared the
/// score with. [`crate::decide::RoutingDecision`] adds the classification and the model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TierChoice {
    /// The tier.
    pub tier: Tier,
    /// Why.
    pub basis: Basis,
    /// The threshold the score was compared with, after the quality bias.
    pub threshold: f64,
    /// Where the threshold came from, before the bias.
    pub point: Point,
}

/// A request no configured model can serve; shown as the field it is about and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unservable {
    /// More output tokens asked for than any model gives.
    MaxTokens {
        /// What the request asked for.
        requested: u32,
        /// The largest output limit of the models.
        limit: u32,
    },
    /// Images, and no model takes them.
    Images,
    /// Tools, and no model supports them.
    Tools,
    /// Each need alone is served by some model, but not all of them by one.
    Combination,
}

impl Unservable {
    /// The request field the refusal is about, when it is about one.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::MaxTokens { .. } => Some("inference_config.max_tokens"),
            Self::Images => Some("messages"),
            Self::Tools => Some("tool_config"),
            Self::Combination => None,
        }
    }

    /// Why, without the field.
    pub fn reason(&self) -> String {
        match self {
            Self::MaxTokens { requested, limit } => format!(
                "{requested} exceeds the largest output limit of the configured models ({limit} tokens)"
            ),
            Self::Images => "images are not supported by the configured models".to_owned(),
            Self::Tools => "tools are not supported by the configured models".to_owned(),
            Self::Combination => {
                "no configured model supports this combination of output length, images and tools"
                    .to_owned()
            }
        }
    }
}

impl std::fmt::Display for Unservable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.field() {
            Some(field) => write!(f, "{field}: {}", self.reason()),
            None => f.write_str(&self.reason()),
        }
    }
}

impl std::error::Error for Unservable {}

/// The threshold after a quality bias: +1 lowers it to 0 (all strong), −1 raises it to 1, 0
/// keeps it; in between it moves linearly toward that end.
pub fn biased_threshold(threshold: f64, bias: f64) -> f64 {
    let bias = bias.clamp(-1.0, 1.0);
    if bias >= 0.0 {
        threshold * (1.0 - bias)
    } else {
        threshold + (1.0 - threshold) * -bias
    }
}

/// Whether the request's tier will come from its score: AUTO mode and both tiers can serve
/// it. Only such requests use, and feed, the caller's operating point.
pub fn by_score(needs: &Needs, catalog: &Catalog) -> bool {
    needs.mode == RoutingMode::Auto
        && can_serve(Tier::Strong, needs, catalog)
        && can_serve(Tier::Fast, needs, catalog)
}

/// Chooses the tier for a request with complexity `score`, against the threshold in force.
pub fn decide(
    score: f64,
    in_force: InForce,
    needs: &Needs,
    catalog: &Catalog,
) -> Result<TierChoice, Unservable> {
    let threshold = biased_threshold(in_force.threshold, needs.quality_bias);
    let strong = catalog.model(Tier::Strong);
    let fast = catalog.model(Tier::Fast);
    let strong_ok = can_serve(Tier::Strong, needs, catalog);
    let fast_ok = can_serve(Tier::Fast, needs, catalog);
    if !strong_ok && !fast_ok {
        return Err(unservable(needs, strong, fast));
    }
    let (tier, basis) = match needs.mode {
        _ if !fast_ok => (Tier::Strong, Basis::Capability),
        _ if !strong_ok => (Tier::Fast, Basis::Capability),
        RoutingMode::ForceStrong => (Tier::Strong, Basis::Forced),
        RoutingMode::ForceFast => (Tier::Fast, Basis::Forced),
        RoutingMode::Auto if score >= threshold => (Tier::Strong, Basis::Score),
        RoutingMode::Auto => (Tier::Fast, Basis::Score),
    };
    Ok(TierChoice {
        tier,
        basis,
        threshold,
        point: in_force.point,
    })
}

/// Whether `tier`'s model can take a request with these needs (output length, images, tools).
pub fn can_serve(tier: Tier, needs: &Needs, catalog: &Catalog) -> bool {
    let model = catalog.model(tier);
    needs
        .max_tokens
        .is_none_or(|m| m <= model.max_output_tokens)
        && (!needs.images || model.images)
        && (!needs.tools || model.tools)
}

fn unservable(
    needs: &Needs,
    strong: &crate::catalog::Model,
    fast: &crate::catalog::Model,
) -> Unservable {
    if let Some(m) = needs.max_tokens {
        let limit = strong.max_output_tokens.max(fast.max_output_tokens);
        if m > limit {
            return Unservable::MaxTokens {
                requested: m,
                limit,
            };
        }
    }
    if needs.images && !strong.images && !fast.images {
        return Unservable::Images;
    }
    if needs.tools && !strong.tools && !fast.tools {
        return Unservable::Tools;
    }
    Unservable::Combination
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::config::{Config, RawConfig};

    fn catalog() -> Catalog {
        Config::try_from(RawConfig::default())
            .expect("defaults valid")
            .catalog
    }

    fn fixed(threshold: f64) -> InForce {
        InForce {
            threshold,
            point: Point::Fixed,
        }
    }

    fn needs(mode: RoutingMode) -> Needs {
        Needs {
            mode,
            quality_bias: 0.0,
            max_tokens: None,
            images: false,
            tools: false,
        }
    }

    #[test]
    fn decision_table() {
        let catalog = catalog();
        let cases = [
            (0.49, needs(RoutingMode::Auto), Tier::Fast, Basis::Score),
            (0.50, needs(RoutingMode::Auto), Tier::Strong, Basis::Score),
            (
                0.99,
                needs(RoutingMode::ForceFast),
                Tier::Fast,
                Basis::Forced,
            ),
            (
                0.01,
                needs(RoutingMode::ForceStrong),
                Tier::Strong,
                Basis::Forced,
            ),
            (
                0.01,
                Needs {
                    max_tokens: Some(5000),
                    ..needs(RoutingMode::Auto)
                },
                Tier::Strong,
                Basis::Capability,
            ),
            (
                0.01,
                Needs {
                    max_tokens: Some(5000),
                    ..needs(RoutingMode::ForceFast)
                },
                Tier::Strong,
                Basis::Capability,
            ),
            (
                0.01,
                Needs {
                    max_tokens: Some(4096),
                    ..needs(RoutingMode::Auto)
                },
                Tier::Fast,
                Basis::Score,
            ),
            (
                0.40,
                Needs {
                    quality_bias: 0.5,
                    ..needs(RoutingMode::Auto)
                },
                Tier::Strong,
                Basis::Score,
            ),
            (
                0.60,
                Needs {
                    quality_bias: -0.5,
                    ..needs(RoutingMode::Auto)
                },
                Tier::Fast,
                Basis::Score,
            ),
        ];
        for (score, n, tier, basis) in cases {
            let choice = decide(score, fixed(0.5), &n, &catalog).expect("servable");
            assert_eq!(
                (choice.tier, choice.basis),
                (tier, basis),
                "score {score} needs {n:?}"
            );
            assert_eq!(by_score(&n, &catalog), basis == Basis::Score, "{n:?}");
        }
    }

    #[test]
    fn too_many_output_tokens_for_every_model_is_refused() {
        let err = decide(
            0.1,
            fixed(0.5),
            &Needs {
                max_tokens: Some(9000),
                ..needs(RoutingMode::Auto)
            },
            &catalog(),
        )
        .expect_err("unservable");
        assert_eq!(err.field(), Some("inference_config.max_tokens"));
        assert!(
            err.to_string()
                .starts_with("inference_config.max_tokens: 9000 exceeds"),
            "{err}"
        );
    }

    #[test]
    fn an_image_only_strong_supports_goes_strong() {
        let mut raw = RawConfig::default();
        raw.models.fast.images = false;
        let catalog = Config::try_from(raw).expect("valid").catalog;
        let choice = decide(
            0.0,
            fixed(0.5),
            &Needs {
                images: true,
                ..needs(RoutingMode::ForceFast)
            },
            &catalog,
        )
        .expect("servable");
        assert_eq!(
            (choice.tier, choice.basis),
            (Tier::Strong, Basis::Capability)
        );
    }

    #[test]
    fn the_choice_names_the_operating_point_and_applies_the_bias_to_it() {
        let in_force = InForce {
            threshold: 0.8,
            point: Point::TargetShare,
        };
        let biased = Needs {
            quality_bias: 0.5,
            ..needs(RoutingMode::Auto)
        };
        let choice = decide(0.5, in_force, &biased, &catalog()).expect("servable");
        assert_eq!(
            (choice.tier, choice.threshold, choice.point),
            (Tier::Strong, 0.4, Point::TargetShare)
        );
    }

    proptest! {
        #[test]
        fn biased_threshold_stays_in_range_and_is_monotonic(t in 0.0f64..=1.0, a in -1.0f64..=1.0, b in -1.0f64..=1.0) {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            let (t_lo, t_hi) = (biased_threshold(t, lo), biased_threshold(t, hi));
            prop_assert!((0.0..=1.0).contains(&t_lo) && (0.0..=1.0).contains(&t_hi));
            prop_assert!(t_hi <= t_lo + 1e-12);
        }
    }
}
