//! Getting an answer despite Bedrock: walks a request's chain of targets (regions, then the other
//! tier), with jittered backoff, the router-wide retry budget and per-target outlier ejection,
//! all inside the caller's deadline. The rules are in [`prompt_router_core::resilience`]; this is where they
//! meet the clock, the backend and the metrics.

use std::{
    future::Future,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use metrics::gauge;
use tokio::time::Instant;

use super::{
    error::{Deadline, Error},
    record::Record,
};
use crate::{
    backend::{BackendError, CallClock},
    telemetry,
};
use prompt_router_core::{
    catalog::{Catalog, Model, Tier},
    config::ResilienceConfig,
    resilience::{Backoff, Ejection, Move, RetryBudget, Target, chain, tier_fallback_allowed},
};

/// Router-wide resilience state: every target's breaker (one lock, as the panic threshold
/// looks across a model's targets), one retry budget, and the source regions' names (the labels
/// every upstream metric carries).
#[derive(Debug)]
pub struct Resilience {
    config: ResilienceConfig,
    backoff: Backoff,
    budget: Mutex<RetryBudget>,
    ejection: Mutex<Ejection>,
    regions: Vec<Arc<str>>,
    unknown_region: Arc<str>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values stay consistent even if a holder panicked: every update is one assignment.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Resilience {
    /// Fresh state for `regions` (primary first), with every target's ejection gauge at 0.
    pub fn new(config: &ResilienceConfig, regions: &[String], catalog: &Catalog) -> Self {
        let regions: Vec<Arc<str>> = regions.iter().map(|r| Arc::from(r.as_str())).collect();
        for model in catalog.models() {
            for region in &regions {
                gauge!(telemetry::CIRCUIT_OPEN, "model" => Arc::clone(&model.invoke_id), "region" => Arc::clone(region))
                    .set(0.0);
            }
        }
        Self {
            backoff: Backoff::new(config.backoff_base, config.backoff_max),
            budget: Mutex::new(RetryBudget::new(
                config.retry_budget_ratio,
                config.retry_budget_min_per_sec,
                std::time::Instant::now(),
            )),
            config: config.clone(),
            ejection: Mutex::new(Ejection::new(regions.len(), config)),
            regions,
            unknown_region: Arc::from("?"),
        }
    }

    /// The name of a target's source region.
    pub fn region(&self, target: Target) -> &Arc<str> {
        self.regions
            .get(target.region)
            .unwrap_or(&self.unknown_region)
    }

    fn allow(&self, target: Target) -> bool {
        lock(&self.ejection).allow(target, std::time::Instant::now())
    }

    /// Tells the target's breaker how a call that started at `started` went; the gauge moves
    /// only when ejection changes.
    fn report(&self, target: Target, model: &Model, healthy: bool, started: std::time::Instant) {
        let changed =
            lock(&self.ejection).report(target, healthy, started, std::time::Instant::now());
        if let Some(open) = changed {
            let region = self.region(target);
            if open {
                tracing::warn!(model = %model.invoke_id, %region, "target ejected after repeated failures");
            } else {
                tracing::info!(model = %model.invoke_id, %region, "ejected target restored");
            }
            gauge!(telemetry::CIRCUIT_OPEN, "model" => Arc::clone(&model.invoke_id), "region" => Arc::clone(region))
                .set(if open { 1.0 } else { 0.0 });
        }
    }

    /// Starts a request's walk along its chain.
    pub fn walk(&self, chosen: Tier, other_tier_ok: bool) -> Walk {
        let other = other_tier_ok && tier_fallback_allowed(chosen, &self.config);
        Walk {
            chain: chain(chosen, self.regions.len(), other),
            next: 0,
            made: 0,
            last: None,
            call_started: std::time::Instant::now(),
        }
    }
}

/// One request's progress along its chain of targets.
#[derive(Debug)]
pub struct Walk {
    /// Never empty: [`chain`] always yields the chosen tier in at least one region.
    chain: Vec<Target>,
    next: usize,
    made: u32,
    last: Option<(Target, BackendError)>,
    /// When the latest attempt started: its breaker ignores results of calls older than its
    /// current state.
    call_started: std::time::Instant,
}

impl Walk {
    /// The first choice.
    pub fn first(&self) -> Target {
        self.chain.first().copied().unwrap_or(Target {
            tier: Tier::Strong,
            region: 0,
        })
    }

    /// Why the walk left its first choice: the last error's kind, or "ejected" when the first
    /// choice was skipped because its breaker was open.
    pub fn fallback_reason(&self) -> &'static str {
        self.last.as_ref().map_or("ejected", |(_, e)| e.kind())
    }

    fn failed(&mut self, target: Target, err: BackendError) {
        let position = self.chain.iter().position(|t| *t == target);
        self.next = position.map_or(self.next, |p| p + 1);
        self.last = Some((target, err));
    }

    /// The error of a walk that goes no further: its last failure, or every target ejected.
    fn exhausted(&mut self, request_id: &str) -> Error {
        match self.last.take() {
            Some((_, error)) => Error::Upstream {
                error,
                attempts: self.made,
                request_id: request_id.to_owned(),
            },
            None => Error::Ejected,
        }
    }
}

/// What [`Dispatcher::attempt`] needs from the router.
pub struct Dispatcher<'a> {
    /// Shared resilience state.
    pub resilience: &'a Resilience,
    /// The models.
    pub catalog: &'a Catalog,
    /// For the errors' internal statuses.
    pub request_id: &'a str,
    /// The caller's deadline (or the configured call timeout).
    pub deadline: Instant,
}

impl<'a> Dispatcher<'a> {
    /// Calls `call` on targets of `walk` until one answers, the error is final, the attempts or
    /// the retry budget run out, or the deadline passes; each call gets the clock its time is
    /// split by. A call has answered when its future resolves: for a stream, that is once its
    /// first event is in (a stream that opens and then fails is a failed attempt, and an
    /// earlier report of success would reset the breaker of a target whose streams do that).
    /// Failed calls are ended in `record` here; an answering call stays open in `record` for
    /// the caller to end (a stream's call lasts until its last event).
    pub async fn attempt<T, F, Fut>(
        &self,
        walk: &mut Walk,
        record: &mut Record,
        mut call: F,
    ) -> Result<(T, Target), Error>
    where
        F: FnMut(Target, &'a Model, CallClock) -> Fut,
        Fut: Future<Output = Result<T, BackendError>>,
    {
        loop {
            if walk.made >= self.resilience.config.max_attempts {
                return Err(walk.exhausted(self.request_id));
            }
            let retry_of = walk
                .last
                .as_ref()
                .map(|(target, err)| (*target, err.kind()));
            // Deadline and budget come before a target is claimed: an unused probe would keep
            // an ejected target shut for another cool-down.
            if retry_of.is_some() {
                let delay = self.resilience.backoff.delay(walk.made, fastrand::f64());
                if Instant::now() + delay >= self.deadline {
                    // Backing off would use up the caller's time: report the real cause now.
                    return Err(walk.exhausted(self.request_id));
                }
                if !lock(&self.resilience.budget).try_withdraw(std::time::Instant::now()) {
                    record.retry_budget_exhausted();
                    return Err(walk.exhausted(self.request_id));
                }
                // The timer wakes on millisecond ticks, later than asked: count what was slept.
                let slept = std::time::Instant::now();
                tokio::time::sleep(delay).await;
                record.backoff(slept.elapsed());
            } else {
                lock(&self.resilience.budget).deposit(std::time::Instant::now());
            }
            let Some(target) = self.next_target(walk) else {
                return Err(walk.exhausted(self.request_id));
            };
            let catalog: &'a Catalog = self.catalog;
            let model = catalog.model(target.tier);
            let previous = match retry_of {
                Some((previous, kind)) => {
                    record.retry(&catalog.model(previous.tier).invoke_id, kind);
                    previous
                }
                // A first attempt off the first choice: the first choice is ejected.
                None => walk.first(),
            };
            if let Some(kind) = Move::between(previous, target) {
                record.fallback(&model.invoke_id, kind);
            }
            walk.made += 1;
            walk.call_started = std::time::Instant::now();
            let clock = record.start_call(&model.invoke_id, self.resilience.region(target));
            match tokio::time::timeout_at(self.deadline, call(target, model, clock)).await {
                Err(_) => {
                    record.end_call(Some("deadline"));
                    return Err(Error::Deadline(Deadline::BeforeAnswer));
                }
                Ok(Ok(value)) => {
                    self.succeeded(walk, target);
                    return Ok((value, target));
                }
                Ok(Err(err)) => {
                    record.end_call(Some(err.kind()));
                    if !err.retryable() {
                        return Err(Error::Upstream {
                            error: err,
                            attempts: walk.made,
                            request_id: self.request_id.to_owned(),
                        });
                    }
                    self.failed(walk, target, err);
                }
            }
        }
    }

    /// Notes that `target`, the walk's latest attempt, answered, for its breaker.
    fn succeeded(&self, walk: &Walk, target: Target) {
        self.resilience.report(
            target,
            self.catalog.model(target.tier),
            true,
            walk.call_started,
        );
    }

    /// Notes a retryable failure of `target`, for its breaker (unless the failure says nothing
    /// about the target's health: see [`BackendError::faults_target`]) and for the walk's next
    /// step.
    fn failed(&self, walk: &mut Walk, target: Target, err: BackendError) {
        let model = self.catalog.model(target.tier);
        if err.faults_target() {
            self.resilience
                .report(target, model, false, walk.call_started);
        }
        tracing::debug!(kind = err.kind(), region = %self.resilience.region(target), model = %model.invoke_id, "upstream attempt failed");
        walk.failed(target, err);
    }

    /// The next target of the chain, in order from where the walk stands, skipping ejected ones.
    fn next_target(&self, walk: &mut Walk) -> Option<Target> {
        let len = walk.chain.len();
        (0..len)
            .map(|i| (walk.next + i) % len)
            .find(|&i| self.resilience.allow(walk.chain[i]))
            .map(|i| {
                walk.next = i;
                walk.chain[i]
            })
    }
}
