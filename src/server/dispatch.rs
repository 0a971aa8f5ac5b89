//! Getting an answer despite Bedrock: walks a request's chain of targets (regions, then the other
//! tier), with jittered backoff, the router-wide retry budget and per-target outlier ejection,
//! all inside the caller's deadline. The rules are in [`crate::resilience`]; this is where they
//! meet the clock, the backend and the metrics.

use std::{
    future::Future,
    sync::{Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use metrics::gauge;
use tokio::time::Instant;
use tonic::Status;

use super::{record::Record, status::from_backend};
use crate::{
    backend::BackendError,
    catalog::{Catalog, Model, Tier},
    config::ResilienceConfig,
    resilience::{Backoff, Breaker, Move, RetryBudget, Target, chain, tier_fallback_allowed},
    telemetry,
};

/// Router-wide resilience state: one breaker per target, one retry budget.
#[derive(Debug)]
pub struct Resilience {
    config: ResilienceConfig,
    backoff: Backoff,
    budget: Mutex<RetryBudget>,
    breakers: Vec<Mutex<Breaker>>,
    regions: Vec<String>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values stay consistent even if a holder panicked: every update is one assignment.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Resilience {
    /// Fresh state for `regions` (primary first).
    pub fn new(config: &ResilienceConfig, regions: Vec<String>) -> Self {
        let breakers = (0..2 * regions.len())
            .map(|_| {
                Mutex::new(Breaker::new(
                    config.breaker_failures,
                    Duration::from_millis(config.breaker_cooldown_ms),
                ))
            })
            .collect();
        Self {
            backoff: Backoff::new(
                Duration::from_millis(config.backoff_base_ms),
                Duration::from_millis(config.backoff_max_ms),
            ),
            budget: Mutex::new(RetryBudget::new(
                config.retry_budget_ratio,
                config.retry_budget_min_per_sec,
                std::time::Instant::now(),
            )),
            config: config.clone(),
            breakers,
            regions,
        }
    }

    /// The name of a target's source region.
    pub fn region(&self, target: Target) -> &str {
        self.regions.get(target.region).map_or("?", String::as_str)
    }

    fn breaker(&self, target: Target) -> Option<&Mutex<Breaker>> {
        let tier = match target.tier {
            Tier::Strong => 0,
            Tier::Fast => 1,
        };
        self.breakers.get(tier * self.regions.len() + target.region)
    }

    fn allow(&self, target: Target) -> bool {
        self.breaker(target)
            .is_none_or(|b| lock(b).allow(std::time::Instant::now()))
    }

    fn report(&self, target: Target, model: &Model, healthy: bool) {
        let Some(breaker) = self.breaker(target) else {
            return;
        };
        let mut breaker = lock(breaker);
        if healthy {
            breaker.success();
        } else {
            breaker.failure(std::time::Instant::now());
        }
        let open = if breaker.is_open() { 1.0 } else { 0.0 };
        drop(breaker);
        gauge!(telemetry::CIRCUIT_OPEN, "model" => model.invoke_id.clone(), "region" => self.region(target).to_owned())
            .set(open);
    }

    /// Starts a request's walk along its chain.
    pub fn walk(&self, chosen: Tier, other_tier_ok: bool) -> Walk {
        let other = other_tier_ok && tier_fallback_allowed(chosen, &self.config);
        let chain = chain(chosen, self.regions.len(), other);
        Walk {
            first: chain.first().copied().unwrap_or(Target {
                tier: chosen,
                region: 0,
            }),
            chain,
            next: 0,
            made: 0,
            last: None,
        }
    }
}

/// One request's progress along its chain of targets.
#[derive(Debug)]
pub struct Walk {
    chain: Vec<Target>,
    first: Target,
    next: usize,
    made: u32,
    last: Option<(Target, BackendError)>,
}

/// A target that answered, and when its call started.
#[derive(Debug, Clone, Copy)]
pub struct Answered {
    /// The target.
    pub target: Target,
    /// When the successful call started (for upstream time of streams, which go on after it).
    pub started: std::time::Instant,
}

impl Walk {
    /// The first choice.
    pub fn first(&self) -> Target {
        self.first
    }

    /// Calls made so far.
    pub fn attempts(&self) -> u32 {
        self.made
    }

    /// Why the walk left its first choice: the last error's kind, or "ejected" when the first
    /// choice was skipped because its breaker was open.
    pub fn fallback_reason(&self) -> &'static str {
        self.last.as_ref().map_or("ejected", |(_, e)| e.kind())
    }

    /// Notes that a call the caller ran itself (a stream that failed before its first token)
    /// failed on `target`; the next [`Dispatcher::attempt`] moves on from it.
    pub fn failed(&mut self, target: Target, err: BackendError) {
        self.next = self.position(target) + 1;
        self.last = Some((target, err));
    }

    fn position(&self, target: Target) -> usize {
        self.chain
            .iter()
            .position(|t| *t == target)
            .unwrap_or(self.next)
    }

    fn exhausted(&self, request_id: &str) -> Status {
        match &self.last {
            Some((_, err)) => {
                let status = from_backend(err, request_id);
                Status::new(
                    status.code(),
                    format!("{} (after {} attempts)", status.message(), self.made),
                )
            }
            None => Status::unavailable(
                "every Bedrock target for this request is ejected after repeated failures; retry later",
            ),
        }
    }
}

/// What [`Dispatcher::attempt`] needs from the router.
pub struct Dispatcher<'a> {
    /// Shared resilience state.
    pub resilience: &'a Resilience,
    /// The models.
    pub catalog: &'a Catalog,
    /// For error messages.
    pub request_id: &'a str,
    /// The caller's deadline (or the configured call timeout).
    pub deadline: Instant,
}

impl<'a> Dispatcher<'a> {
    /// Calls `call` on targets of `walk` until one answers, the error is final, the attempts or
    /// the retry budget run out, or the deadline passes. Failures are recorded here; the caller
    /// records the successful call (a stream's upstream time only ends with the stream).
    pub async fn attempt<T, F, Fut>(
        &self,
        walk: &mut Walk,
        record: &mut Record,
        mut call: F,
    ) -> Result<(T, Answered), Status>
    where
        F: FnMut(Target, &'a Model) -> Fut,
        Fut: Future<Output = Result<T, BackendError>>,
    {
        let config = &self.resilience.config;
        loop {
            if walk.made >= config.max_attempts {
                return Err(walk.exhausted(self.request_id));
            }
            let Some(target) = self.next_target(walk) else {
                return Err(walk.exhausted(self.request_id));
            };
            let catalog: &'a Catalog = self.catalog;
            let model = catalog.model(target.tier);
            if let Some((previous, err)) = &walk.last {
                if !lock(&self.resilience.budget).try_withdraw(std::time::Instant::now()) {
                    record.retry_budget_exhausted();
                    return Err(walk.exhausted(self.request_id));
                }
                let delay = self.resilience.backoff.delay(walk.made, fastrand::f64());
                if Instant::now() + delay >= self.deadline {
                    // Backing off would use up the caller's time: report the real cause now.
                    return Err(walk.exhausted(self.request_id));
                }
                // The timer wakes on millisecond ticks, later than asked: count what was slept.
                let slept = std::time::Instant::now();
                tokio::time::sleep(delay).await;
                record.backoff(slept.elapsed());
                record.retry(&self.catalog.model(previous.tier).invoke_id, err.kind());
                if let Some(kind) = Move::between(*previous, target) {
                    record.fallback(&model.invoke_id, kind);
                }
            } else {
                lock(&self.resilience.budget).deposit(std::time::Instant::now());
                if let Some(kind) = Move::between(walk.first, target) {
                    // The first choice is ejected: this request starts on a fallback.
                    record.fallback(&model.invoke_id, kind);
                }
            }
            walk.made += 1;
            let region = self.resilience.region(target);
            let started = std::time::Instant::now();
            match tokio::time::timeout_at(self.deadline, call(target, model)).await {
                Err(_) => {
                    record.upstream_call(
                        &model.invoke_id,
                        region,
                        Some("deadline"),
                        started.elapsed(),
                    );
                    return Err(deadline_status());
                }
                Ok(Ok(value)) => {
                    self.resilience.report(target, model, true);
                    return Ok((value, Answered { target, started }));
                }
                Ok(Err(err)) => {
                    record.upstream_call(
                        &model.invoke_id,
                        region,
                        Some(err.kind()),
                        started.elapsed(),
                    );
                    if !err.retryable() {
                        return Err(from_backend(&err, self.request_id));
                    }
                    self.resilience.report(target, model, false);
                    tracing::debug!(kind = err.kind(), region, model = %model.invoke_id, "upstream attempt failed");
                    walk.failed(target, err);
                }
            }
        }
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

/// The status for a passed deadline.
pub fn deadline_status() -> Status {
    Status::deadline_exceeded("the call's deadline passed before the model answered")
}
