//! PURE. The rules that keep the router answering when Bedrock does not: which targets to try
//! in which order, how long to back off, how many retries the whole router may spend, and when a
//! target is ejected. Time comes in as arguments, so every rule is tested without sleeping.
//!
//! The SDK's own retry layer is switched off (see `backend`): it can only retry the same model in
//! the same region, while these rules move to another region or tier. One layer retries, never two.

use std::time::{Duration, Instant};

use crate::{catalog::Tier, config::ResilienceConfig};

/// Where one attempt goes: a tier's model through one source region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target {
    /// The tier whose model is called.
    pub tier: Tier,
    /// Index into the configured source regions (0 = the primary region).
    pub region: usize,
}

/// How an attempt's target differs from the previous attempt's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Move {
    /// The same model through another source region.
    Region,
    /// From the strong to the fast model.
    Degrade,
    /// From the fast to the strong model.
    Escalate,
}

impl Move {
    /// Between two targets, if they differ.
    pub fn between(from: Target, to: Target) -> Option<Self> {
        match (from.tier, to.tier) {
            (Tier::Strong, Tier::Fast) => Some(Self::Degrade),
            (Tier::Fast, Tier::Strong) => Some(Self::Escalate),
            _ if from.region != to.region => Some(Self::Region),
            _ => None,
        }
    }

    /// The metric-label form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Region => "region",
            Self::Degrade => "degrade",
            Self::Escalate => "escalate",
        }
    }
}

/// The order in which targets are tried: the chosen tier through every region (primary first),
/// then — when allowed — the other tier the same way.
pub fn chain(chosen: Tier, regions: usize, other_tier_allowed: bool) -> Vec<Target> {
    let tiers: &[Tier] = if other_tier_allowed {
        &[chosen, chosen.other()]
    } else {
        &[chosen]
    };
    tiers
        .iter()
        .flat_map(|&tier| (0..regions.max(1)).map(move |region| Target { tier, region }))
        .collect()
}

/// Whether the policy lets a request chosen for `from` be answered by the other tier.
pub fn tier_fallback_allowed(from: Tier, config: &ResilienceConfig) -> bool {
    match from {
        Tier::Strong => config.degrade_to_fast,
        Tier::Fast => config.escalate_to_strong,
    }
}

/// Exponential backoff with full jitter (AWS's "full jitter": a uniform draw below the ceiling),
/// which spreads retries of many callers instead of synchronising them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
}

impl Backoff {
    /// Ceiling `base` for the first retry, doubling to at most `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self { base, max }
    }

    /// The wait before retry number `retry` (1 = first retry), for a uniform draw `unit` in [0, 1).
    pub fn delay(&self, retry: u32, unit: f64) -> Duration {
        let doublings = retry.saturating_sub(1).min(20);
        let ceiling = self.base.saturating_mul(1 << doublings).min(self.max);
        ceiling.mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// A router-wide allowance of retries: every first attempt earns `ratio` of a retry, and
/// `min_per_sec` retries accrue per second regardless, up to a cap. When a bad minute fails every
/// call, retries then add at most `ratio` to the load instead of multiplying it.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryBudget {
    ratio: f64,
    min_per_sec: f64,
    cap: f64,
    tokens: f64,
    refilled: Instant,
}

impl RetryBudget {
    /// A full budget at `now`.
    pub fn new(ratio: f64, min_per_sec: f64, now: Instant) -> Self {
        // Ten seconds' worth of the floor, and at least a handful, bounds how much a burst can spend.
        let cap = (min_per_sec * 10.0).max(10.0);
        Self {
            ratio,
            min_per_sec,
            cap,
            tokens: cap,
            refilled: now,
        }
    }

    /// Credits a first attempt.
    pub fn deposit(&mut self, now: Instant) {
        self.refill(now);
        self.tokens = (self.tokens + self.ratio).min(self.cap);
    }

    /// Spends one retry if the budget has one.
    pub fn try_withdraw(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.min_per_sec).min(self.cap);
        self.refilled = now;
    }
}

/// Outlier ejection for one target. The rule, exactly: a target is ejected after `threshold`
/// consecutive failures that say it is unhealthy (the caller decides which: throttling never
/// counts) and skipped for `cooldown` from that moment; then one probe request may try it, and
/// the probe's result alone restores it or ejects it for another cool-down. Calls that started
/// before the target's current state neither extend nor end it: a burst of calls in flight when
/// the target was ejected cannot keep it ejected past its cool-down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    failures: u32,
    state: BreakerState,
}

/// Where a breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BreakerState {
    /// Requests flow.
    Closed,
    /// Ejected at the instant, skipped for the cool-down after it.
    Open(Instant),
    /// One probe was let through at the instant; others wait for its result.
    Probing(Instant),
}

impl Breaker {
    /// A closed breaker.
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            failures: 0,
            state: BreakerState::Closed,
        }
    }

    /// Whether a request may go to this target now (a `true` while ejected is the probe).
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.state {
            BreakerState::Closed => true,
            BreakerState::Open(since) if now.saturating_duration_since(since) >= self.cooldown => {
                self.state = BreakerState::Probing(now);
                true
            }
            BreakerState::Open(_) => false,
            // A probe whose caller vanished must not hold the target shut for ever.
            BreakerState::Probing(since)
                if now.saturating_duration_since(since) >= self.cooldown =>
            {
                self.state = BreakerState::Probing(now);
                true
            }
            BreakerState::Probing(_) => false,
        }
    }

    /// Records a success of a call that started at `started`.
    pub fn success(&mut self, started: Instant) {
        match self.state {
            BreakerState::Closed => self.failures = 0,
            BreakerState::Probing(since) if started >= since => {
                self.failures = 0;
                self.state = BreakerState::Closed;
            }
            BreakerState::Open(_) | BreakerState::Probing(_) => {}
        }
    }

    /// Records, at `now`, a failure of a call that started at `started`; `may_eject` says
    /// whether the panic threshold leaves room for one more ejected target. A failed probe
    /// re-ejects whatever the room: its target is ejected already.
    pub fn failure(&mut self, started: Instant, now: Instant, may_eject: bool) {
        match self.state {
            BreakerState::Closed => {
                self.failures = self.failures.saturating_add(1);
                if self.failures >= self.threshold && may_eject {
                    self.state = BreakerState::Open(now);
                }
            }
            BreakerState::Probing(since) if started >= since => {
                self.state = BreakerState::Open(now);
            }
            BreakerState::Open(_) | BreakerState::Probing(_) => {}
        }
    }

    /// Whether the target is being skipped (ejected, or waiting on a probe).
    pub fn is_open(&self) -> bool {
        !matches!(self.state, BreakerState::Closed)
    }
}

/// Every target's breaker, with Envoy's panic threshold: at most `max_ejected_percent` of a
/// model's targets (its source regions) are ejected at once, rounded down. When failures are
/// everywhere, ejection cannot help (there is nowhere better to send the request) and would only
/// turn a partial outage into a total one that outlasts Bedrock's recovery by a cool-down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ejection {
    breakers: Vec<Breaker>,
    regions: usize,
    max_ejected: usize,
}

impl Ejection {
    /// Closed breakers for both tiers through `regions` source regions.
    pub fn new(regions: usize, config: &ResilienceConfig) -> Self {
        let regions = regions.max(1);
        let percent = usize::try_from(config.max_ejected_percent.min(100)).unwrap_or(100);
        Self {
            breakers: vec![
                Breaker::new(config.breaker_failures, config.breaker_cooldown,);
                2 * regions
            ],
            regions,
            max_ejected: regions * percent / 100,
        }
    }

    fn index(&self, target: Target) -> Option<usize> {
        let tier = match target.tier {
            Tier::Strong => 0,
            Tier::Fast => 1,
        };
        (target.region < self.regions).then_some(tier * self.regions + target.region)
    }

    /// Whether a request may go to `target` now (see [`Breaker::allow`]).
    pub fn allow(&mut self, target: Target, now: Instant) -> bool {
        self.index(target)
            .is_none_or(|i| self.breakers[i].allow(now))
    }

    /// Records how a call to `target` that started at `started` went: `healthy`, or a failure
    /// that counts against the target. Returns whether the target is ejected now, if that changed.
    pub fn report(
        &mut self,
        target: Target,
        healthy: bool,
        started: Instant,
        now: Instant,
    ) -> Option<bool> {
        let i = self.index(target)?;
        let tier = i / self.regions * self.regions..(i / self.regions + 1) * self.regions;
        let ejected = self.breakers[tier].iter().filter(|b| b.is_open()).count();
        let breaker = &mut self.breakers[i];
        let was_open = breaker.is_open();
        if healthy {
            breaker.success(started);
        } else {
            breaker.failure(started, now, ejected < self.max_ejected);
        }
        (breaker.is_open() != was_open).then_some(!was_open)
    }

    /// Whether `target` is being skipped.
    pub fn is_open(&self, target: Target) -> bool {
        self.index(target)
            .is_some_and(|i| self.breakers[i].is_open())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::config::{Config, RawConfig, raw::RawResilience};

    fn t(tier: Tier, region: usize) -> Target {
        Target { tier, region }
    }

    #[test]
    fn chains_try_every_region_then_the_other_tier() {
        assert_eq!(
            chain(Tier::Strong, 2, true),
            [
                t(Tier::Strong, 0),
                t(Tier::Strong, 1),
                t(Tier::Fast, 0),
                t(Tier::Fast, 1)
            ]
        );
        assert_eq!(
            chain(Tier::Fast, 2, false),
            [t(Tier::Fast, 0), t(Tier::Fast, 1)]
        );
        assert_eq!(
            chain(Tier::Fast, 1, true),
            [t(Tier::Fast, 0), t(Tier::Strong, 0)]
        );
    }

    #[test]
    fn moves_are_named() {
        assert_eq!(
            Move::between(t(Tier::Strong, 0), t(Tier::Strong, 1)),
            Some(Move::Region)
        );
        assert_eq!(
            Move::between(t(Tier::Strong, 1), t(Tier::Fast, 0)),
            Some(Move::Degrade)
        );
        assert_eq!(
            Move::between(t(Tier::Fast, 0), t(Tier::Strong, 0)),
            Some(Move::Escalate)
        );
        assert_eq!(Move::between(t(Tier::Fast, 0), t(Tier::Fast, 0)), None);
    }

    #[test]
    fn backoff_doubles_to_its_cap() {
        let b = Backoff::new(Duration::from_millis(25), Duration::from_millis(150));
        assert_eq!(b.delay(1, 1.0), Duration::from_millis(25));
        assert_eq!(b.delay(2, 1.0), Duration::from_millis(50));
        assert_eq!(b.delay(3, 1.0), Duration::from_millis(100));
        assert_eq!(b.delay(4, 1.0), Duration::from_millis(150));
        assert_eq!(b.delay(40, 1.0), Duration::from_millis(150));
        assert_eq!(b.delay(3, 0.5), Duration::from_millis(50));
        assert_eq!(b.delay(3, 0.0), Duration::ZERO);
    }

    #[test]
    fn the_budget_limits_retries_to_its_ratio_under_sustained_failure() {
        let start = Instant::now();
        let mut budget = RetryBudget::new(0.5, 0.0, start);
        // Drain the initial allowance.
        while budget.try_withdraw(start) {}
        let mut retries = 0;
        for _ in 0..1_000 {
            budget.deposit(start);
            if budget.try_withdraw(start) {
                retries += 1;
            }
        }
        assert_eq!(retries, 500);
    }

    #[test]
    fn the_budget_floor_refills_over_time() {
        let start = Instant::now();
        let mut budget = RetryBudget::new(0.0, 10.0, start);
        while budget.try_withdraw(start) {}
        assert!(!budget.try_withdraw(start));
        assert!(budget.try_withdraw(start + Duration::from_millis(100)));
        assert!(!budget.try_withdraw(start + Duration::from_millis(100)));
    }

    fn config(failures: u32, cooldown_ms: u64, max_ejected_percent: u32) -> ResilienceConfig {
        let raw = RawConfig {
            resilience: RawResilience {
                breaker_failures: failures,
                breaker_cooldown_ms: cooldown_ms,
                max_ejected_percent,
                ..RawResilience::default()
            },
            ..RawConfig::default()
        };
        Config::try_from(raw).expect("valid").resilience
    }

    #[test]
    fn breaker_ejects_probes_and_recovers() {
        let start = Instant::now();
        let cooldown = Duration::from_secs(10);
        let mut b = Breaker::new(3, cooldown);
        b.failure(start, start, true);
        b.failure(start, start, true);
        assert!(b.allow(start));
        b.failure(start, start, true);
        assert!(!b.allow(start), "three failures in a row eject");
        assert!(b.is_open());
        let later = start + cooldown;
        assert!(b.allow(later), "one probe after the cool-down");
        assert!(!b.allow(later), "only one");
        b.failure(later, later, false);
        assert!(
            !b.allow(later + Duration::from_secs(1)),
            "a failed probe re-ejects, whatever the room"
        );
        let much_later = later + cooldown;
        assert!(b.allow(much_later));
        b.success(much_later);
        assert!(b.allow(much_later) && !b.is_open());
    }

    #[test]
    fn a_success_resets_the_count() {
        let now = Instant::now();
        let mut b = Breaker::new(2, Duration::from_secs(1));
        b.failure(now, now, true);
        b.success(now);
        b.failure(now, now, true);
        assert!(b.allow(now));
    }

    #[test]
    fn a_lost_probe_does_not_hold_the_target_shut() {
        let start = Instant::now();
        let mut b = Breaker::new(1, Duration::from_secs(5));
        b.failure(start, start, true);
        assert!(b.allow(start + Duration::from_secs(5)));
        assert!(!b.allow(start + Duration::from_secs(6)));
        assert!(b.allow(start + Duration::from_secs(10)));
    }

    #[test]
    fn calls_in_flight_at_ejection_neither_extend_nor_end_it() {
        let start = Instant::now();
        let cooldown = Duration::from_secs(10);
        let mut b = Breaker::new(1, cooldown);
        let second = Duration::from_secs(1);
        b.failure(start, start + second, true);
        // Calls that started before the ejection report later, both ways.
        b.failure(start, start + 9 * second, true);
        b.success(start);
        assert!(
            !b.allow(start + 10 * second),
            "still ejected: only the probe decides"
        );
        assert!(
            b.allow(start + 11 * second),
            "the cool-down ran from the ejection"
        );
        // The probe is out; an older call failing now says nothing about the probe.
        b.failure(start, start + 11 * second, true);
        assert!(b.is_open());
        b.success(start + 11 * second);
        assert!(!b.is_open(), "the probe's success restores the target");
    }

    #[test]
    fn no_more_than_the_panic_threshold_of_a_models_targets_is_ejected() {
        let now = Instant::now();
        let t0 = t(Tier::Strong, 0);
        let t1 = t(Tier::Strong, 1);
        let fast = t(Tier::Fast, 0);
        let mut ejection = Ejection::new(2, &config(1, 1_000, 50));
        assert_eq!(ejection.report(t0, false, now, now), Some(true));
        assert_eq!(
            ejection.report(t1, false, now, now),
            None,
            "half is ejected already"
        );
        assert!(ejection.allow(t1, now) && !ejection.allow(t0, now));
        assert_eq!(
            ejection.report(fast, false, now, now),
            Some(true),
            "each model has its own share"
        );
        // Once the first is restored, the other may go.
        let later = now + Duration::from_secs(1);
        assert!(ejection.allow(t0, later));
        assert_eq!(ejection.report(t0, true, later, later), Some(false));
        assert_eq!(ejection.report(t1, false, later, later), Some(true));

        let mut all = Ejection::new(2, &config(1, 1_000, 100));
        all.report(t0, false, now, now);
        all.report(t1, false, now, now);
        assert!(
            all.is_open(t0) && all.is_open(t1),
            "100% lets every target go"
        );

        for (regions, percent) in [(1, 50), (2, 0), (3, 33)] {
            let mut none = Ejection::new(regions, &config(1, 1_000, percent));
            assert_eq!(
                none.report(t0, false, now, now),
                None,
                "{regions} regions at {percent}%: no room for one target"
            );
        }
    }

    proptest! {
        #[test]
        fn backoff_never_exceeds_its_cap(retry in 0u32..100, unit in 0.0f64..1.0, base in 0u64..1000, extra in 0u64..10_000) {
            let max = Duration::from_millis(base + extra);
            let b = Backoff::new(Duration::from_millis(base), max);
            prop_assert!(b.delay(retry, unit) <= max);
        }
    }
}
