//! Building the router's decision parts from the checked config: the classifier weights
//! (built-in or a file written by `train`), the fixed threshold and each caller's operating
//! point.

use std::path::Path;

use anyhow::Context as _;

use prompt_router_core::{
    classify::{Classifier, Weights},
    config::Config,
    decide::Decider,
    operating::{DEFAULT_CALLER, OperatingPoints},
};

/// Reads a weights file written by `train`, or returns the built-in weights for `None`.
pub fn load_weights(path: Option<&Path>) -> anyhow::Result<Weights> {
    match path {
        None => Classifier::default_weights().context("loading the built-in weights"),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading weights file {}", path.display()))?;
            Weights::from_json(&text)
                .with_context(|| format!("loading weights file {}", path.display()))
        }
    }
}

/// Builds classifier and operating points from a checked config, with its catalog.
pub fn decider(config: &Config) -> anyhow::Result<Decider> {
    decider_from(
        config,
        load_weights(config.routing.weights_path.as_deref())?,
    )
}

/// [`decider`] with `weights` read already (the server keeps them for the reload check).
pub fn decider_from(config: &Config, weights: Weights) -> anyhow::Result<Decider> {
    let routing = &config.routing;
    let classifier =
        Classifier::new(weights).context("building the classifier (routing.weights_path)")?;
    let threshold = match routing.threshold {
        Some(threshold) => threshold,
        None => {
            let threshold = classifier.threshold();
            anyhow::ensure!(
                (0.0..=1.0).contains(&threshold),
                "the weights file's threshold {threshold} is outside [0, 1]"
            );
            threshold
        }
    };
    let operating = OperatingPoints::new(
        threshold,
        routing.share,
        routing.target_strong_share(DEFAULT_CALLER),
        routing.named_callers(),
    );
    Ok(Decider::new(classifier, operating, config.catalog.clone()))
}

/// The decider of the defaults after `adjust`, for tests.
#[cfg(test)]
pub(crate) fn decider_with(
    adjust: impl FnOnce(&mut prompt_router_core::config::RawConfig),
) -> Decider {
    let mut raw = prompt_router_core::config::RawConfig::default();
    adjust(&mut raw);
    decider(&Config::try_from(raw).expect("valid config")).expect("decider")
}
