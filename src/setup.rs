//! Building the router's decision parts from config: the classifier weights (built-in or a
//! file written by `train`), the fixed threshold and each caller's operating point, the
//! catalog.

use std::path::Path;

use anyhow::Context as _;

use crate::{
    catalog::Catalog,
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

/// Builds classifier, operating points and catalog from a validated config; `weights` and
/// `threshold` override the config's `routing.weights_path` and `routing.threshold` when given.
pub fn decider(
    config: &Config,
    weights: Option<&Path>,
    threshold: Option<f64>,
) -> anyhow::Result<Decider> {
    let path = weights.or(config.routing.weights_path.as_deref().map(Path::new));
    let classifier = Classifier::new(load_weights(path)?)
        .context("building the classifier (routing.weights_path)")?;
    let threshold = threshold
        .or(config.routing.threshold)
        .unwrap_or_else(|| classifier.threshold());
    anyhow::ensure!(
        (0.0..=1.0).contains(&threshold),
        "threshold {threshold} is outside [0, 1]"
    );
    let operating = OperatingPoints::new(
        threshold,
        config.share_settings(),
        config.target_strong_share(DEFAULT_CALLER),
        config.named_callers(),
    );
    let catalog = Catalog::from_config(config)?;
    Ok(Decider {
        classifier,
        operating,
        catalog,
    })
}
