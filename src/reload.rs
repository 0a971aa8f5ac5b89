//! Reloading the weights file (`routing.weights_path`) while serving: on SIGHUP, and when
//! `routing.weights_poll_ms` is set, whenever the file's content changes.
//!
//! A new file is put in force only if it reads, parses and validates (as at start), is not
//! the version already in force, and passes the check: when the label store
//! (`quality.store`) holds at least [`MIN_CHECK_ROWS`] usable held-out rows
//! (`train::is_held_out(request_id)`, the rows `train` did not fit on), the new weights' APGR
//! on them must not be below the running weights' by more than [`APGR_MARGIN`]; with fewer,
//! the file is only validated, and the log says so. Otherwise the old weights keep answering
//! and the log says why. APGR does not depend on the threshold, so the check compares
//! rankings only.
//!
//! The swap is [`prompt_router_core::decide::Decider::swap_classifier`]: lock-free, and a request keeps the classifier it
//! started with. The fixed threshold in force (routing.threshold, or the start-up file's) is
//! kept: a reload changes scores, not the operating point; target-share callers follow their
//! windows as always.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use prompt_router_core::{
    classify::{Classifier, Feature, NUM_FEATURES, Weights, contribution, logistic},
    config::StoreLocation,
    eval::{self, CostAssumptions, Row},
    train::is_held_out,
};
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    labels::{LabelStore, Store},
    server::RouterState,
    telemetry,
};

/// Held-out label rows the check needs to compare the two weights' rankings; below it the
/// check is validation only. At 200 rows the APGR of a fixed ranking varies by about ±0.02
/// from sample to sample on the shared sets.
pub const MIN_CHECK_ROWS: usize = 200;

/// How far below the running weights' held-out APGR a new file's may be and still be taken:
/// the sampling noise of [`MIN_CHECK_ROWS`] rows, so a retrain that is as good is not refused
/// by chance.
pub const APGR_MARGIN: f64 = 0.02;

/// How a reload attempt ended (`router_weights_reloads_total{outcome}`).
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The new weights are in force.
    Accepted {
        /// The version replaced.
        old: Arc<str>,
        /// The version now in force.
        new: Arc<str>,
    },
    /// The file holds the weights already in force.
    Unchanged,
    /// The file could not be read.
    Unreadable(String),
    /// The file does not parse or validate.
    Invalid(String),
    /// The new weights rank the held-out labels worse than the running ones.
    Worse(String),
}

impl Outcome {
    /// The metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Accepted { .. } => "accepted",
            Self::Unchanged => "unchanged",
            Self::Unreadable(_) => "unreadable",
            Self::Invalid(_) => "invalid",
            Self::Worse(_) => "worse",
        }
    }
}

/// The weights file's reloader: what is in force, and where the labels of the check are.
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    router: Arc<RouterState>,
    running: Weights,
    labels: Option<StoreLocation>,
}

impl Reloader {
    /// A reloader of `path` for `router`, whose classifier was built from `running`.
    pub fn new(
        path: PathBuf,
        router: Arc<RouterState>,
        running: Weights,
        labels: Option<StoreLocation>,
    ) -> Self {
        set_version_gauge(&running.version_id());
        Self {
            path,
            router,
            running,
            labels,
        }
    }

    /// Reads the file and puts it in force if it passes (see the module docs); logs and counts
    /// the outcome.
    pub async fn reload(&mut self, trigger: &'static str) -> Outcome {
        let outcome = self.attempt().await;
        metrics::counter!(telemetry::WEIGHTS_RELOADS_TOTAL, "outcome" => outcome.as_str())
            .increment(1);
        let path = self.path.display();
        match &outcome {
            Outcome::Accepted { old, new } => {
                tracing::info!(%path, trigger, %old, %new, "weights reloaded: {old} -> {new}");
            }
            Outcome::Unchanged => {
                tracing::info!(%path, trigger, version = %self.running.version_id(), "weights reload: the file holds the weights in force");
            }
            Outcome::Unreadable(why) | Outcome::Invalid(why) | Outcome::Worse(why) => {
                tracing::warn!(
                    %path,
                    trigger,
                    outcome = outcome.as_str(),
                    version = %self.running.version_id(),
                    "weights reload refused, the running weights stay: {why}"
                );
            }
        }
        outcome
    }

    async fn attempt(&mut self) -> Outcome {
        let text = match tokio::fs::read_to_string(&self.path).await {
            Ok(text) => text,
            Err(e) => return Outcome::Unreadable(format!("reading {}: {e}", self.path.display())),
        };
        let weights = match Weights::from_json(&text) {
            Ok(w) => w,
            Err(e) => return Outcome::Invalid(e.to_string()),
        };
        let classifier = match Classifier::new(weights.clone()) {
            Ok(c) => c,
            Err(e) => return Outcome::Invalid(e.to_string()),
        };
        let decider = &self.router.decider;
        if classifier.version() == decider.classifier().version() {
            return Outcome::Unchanged;
        }
        if let Err(why) = self.check(&weights).await {
            return Outcome::Worse(why);
        }
        if (weights.threshold - decider.operating.fixed()).abs() > 1e-12 {
            tracing::warn!(
                file_threshold = weights.threshold,
                in_force = decider.operating.fixed(),
                "the new weights file stores another threshold; the threshold in force stays until a restart (or set routing.threshold)"
            );
        }
        let new = Arc::clone(classifier.version());
        let old = Arc::clone(decider.swap_classifier(classifier).version());
        set_version_gauge(&new);
        self.running = weights;
        Outcome::Accepted { old, new }
    }

    /// The check against the held-out labels; `Err` says why the new weights are refused.
    async fn check(&self, new: &Weights) -> Result<(), String> {
        let Some(location) = &self.labels else {
            tracing::info!("weights reload: no label store (quality.store); validation only");
            return Ok(());
        };
        let read = async {
            let mut store = Store::open(location)?;
            store.read_all().await
        };
        let rows = match read.await {
            Ok(read) => read.rows,
            Err(e) => {
                tracing::warn!(store = %location, error = format!("{e:#}"), "weights reload: the label store cannot be read; validation only");
                return Ok(());
            }
        };
        let held: Vec<_> = rows
            .iter()
            .filter(|r| is_held_out(&r.request_id))
            .filter_map(|r| r.example().ok())
            .collect();
        let apgr = |w: &Weights| {
            let scored: Vec<Row> = held
                .iter()
                .map(|e| Row {
                    score: score(w, &e.features),
                    strong: e.strong,
                    fast: e.fast,
                    input_tokens: e.input_tokens,
                })
                .collect();
            eval::summarize(&scored, 0.5, &CostAssumptions::default()).map(|s| s.apgr)
        };
        if held.len() < MIN_CHECK_ROWS {
            tracing::info!(
                held_out = held.len(),
                needed = MIN_CHECK_ROWS,
                "weights reload: too few held-out labels to compare; validation only"
            );
            return Ok(());
        }
        let (Ok(old), Ok(new)) = (apgr(&self.running), apgr(new)) else {
            tracing::info!(
                held_out = held.len(),
                "weights reload: the held-out labels show no quality gap; validation only"
            );
            return Ok(());
        };
        tracing::info!(
            held_out = held.len(),
            running_apgr = old,
            new_apgr = new,
            "weights reload: held-out check"
        );
        if new < old - APGR_MARGIN {
            return Err(format!(
                "held-out APGR {new:.4} on {} labels is below the running weights' {old:.4} by more than {APGR_MARGIN}",
                held.len()
            ));
        }
        Ok(())
    }
}

/// The score `w` gives a feature vector, as the classifier computes it.
fn score(w: &Weights, x: &[f64; NUM_FEATURES]) -> f64 {
    let logit = w.bias
        + w.features
            .iter()
            .filter_map(|f| {
                Feature::from_name(&f.name)
                    .map(|i| contribution(f.weight, x[i.index()], f.mean, f.scale, w.clip))
            })
            .sum::<f64>();
    logistic(logit)
}

fn set_version_gauge(version: &str) {
    if let Some(crc) = version
        .strip_prefix("w-")
        .and_then(|h| u32::from_str_radix(h, 16).ok())
    {
        metrics::gauge!(telemetry::WEIGHTS_VERSION).set(f64::from(crc));
    }
}

/// Runs `reloader` on SIGHUP and, with `poll`, when the file's content changes, until
/// `shutdown`. Without a weights file (`None`) a SIGHUP is logged and changes nothing.
pub fn spawn(
    mut reloader: Option<Reloader>,
    poll: Option<Duration>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    Ok(tokio::spawn(async move {
        let read = |r: &Option<Reloader>| r.as_ref().and_then(|r| std::fs::read(&r.path).ok());
        let mut seen = read(&reloader);
        let mut tick = poll
            .filter(|_| reloader.is_some())
            .map(tokio::time::interval);
        loop {
            let polled = async {
                match &mut tick {
                    Some(t) => {
                        t.tick().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = stopping(&mut shutdown) => return,
                _ = hangup.recv() => match &mut reloader {
                    Some(r) => {
                        seen = std::fs::read(&r.path).ok();
                        r.reload("sighup").await;
                    }
                    None => tracing::info!("SIGHUP: no routing.weights_path, nothing to reload"),
                },
                () = polled => {
                    let now = read(&reloader);
                    // A file that cannot be read now (being replaced) is looked at next time.
                    if let Some(r) = &mut reloader && now.is_some() && now != seen {
                        seen = now;
                        r.reload("poll").await;
                    }
                }
            }
        }
    }))
}

async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}
