//! Callers' rate limits and spend budgets, kept in this process ([`local`]) or shared by every
//! router through Redis ([`redis`], `limits.redis_url`).
//!
//! A request that will call a model is admitted once, after its routing decision: one store
//! call applies the request and token rates, reads the day's and month's spend, degrades a
//! strong-bound request near the budget, and reserves the worst case of what the request may
//! cost ([`prompt_router_core::limits::Ask`]). The [`Reservation`] is settled to the real cost
//! when the answer is in, off the caller's path; one that is dropped (failure, cancel) is
//! released. So spend never goes over a budget while the worst case is a true upper bound.
//!
//! Callers `[callers.NAME]` does not name share the default policy's limits under one key,
//! [`OTHER_LABEL`](prompt_router_core::caller::OTHER_LABEL): a name per declared caller would
//! let a client escape every limit by declaring a fresh name each time, and make the store
//! unbounded.

pub mod local;
pub mod redis;

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use metrics::{counter, gauge};
use prompt_router_core::{
    caller::{CallerPolicy, Callers, StoreDown},
    config::LimitStoreConfig,
    cost::Nanodollars,
    limits::{Ask, Period},
};

use crate::telemetry;

/// Which limit refused a request; also the `limit` label of `router_limited_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `requests_per_second` (with `burst`).
    Requests,
    /// `tokens_per_minute`.
    Tokens,
    /// `usd_per_day`.
    UsdPerDay,
    /// `usd_per_month`.
    UsdPerMonth,
    /// The shared store is unreachable and the caller's `on_store_down` is `closed`.
    StoreDown,
}

impl Limit {
    /// The metric-label form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::Tokens => "tokens",
            Self::UsdPerDay => "usd_per_day",
            Self::UsdPerMonth => "usd_per_month",
            Self::StoreDown => "store_down",
        }
    }

    /// The policy key that set the limit.
    fn rule(self) -> &'static str {
        match self {
            Self::Requests => "requests_per_second",
            Self::Tokens => "tokens_per_minute",
            Self::UsdPerDay => "usd_per_day",
            Self::UsdPerMonth => "usd_per_month",
            Self::StoreDown => "on_store_down",
        }
    }

    fn of_period(period: Period) -> Self {
        match period {
            Period::Day => Self::UsdPerDay,
            Period::Month => Self::UsdPerMonth,
        }
    }
}

/// A request a caller's limit refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    /// The limit.
    pub limit: Limit,
    /// The caller's config table (`callers.NAME` or `callers.default`).
    pub key: String,
    /// When a retry may pass (none for a store that is down).
    pub retry_after: Option<Duration>,
}

impl std::fmt::Display for Limited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rule = format!("{}.{}", self.key, self.limit.rule());
        match (self.limit, self.retry_after) {
            (Limit::StoreDown, _) => write!(
                f,
                "the shared limit store (limits.redis_url) is unreachable and {rule} is closed; retry later"
            ),
            (Limit::UsdPerDay | Limit::UsdPerMonth, Some(after)) => write!(
                f,
                "the caller's spend budget ({rule}) has no room for this request; the period ends in {} s",
                after.as_secs()
            ),
            (_, Some(after)) => write!(
                f,
                "the caller's rate limit ({rule}) is reached; retry in {:.3} s",
                after.as_secs_f64()
            ),
            (_, None) => write!(f, "the caller's limit ({rule}) is reached"),
        }
    }
}

/// What admission did to a request that passed.
#[derive(Debug, Default)]
pub struct Admission {
    /// Route it fast instead of strong (the caller is near its budget).
    pub degraded: bool,
    /// No fallback to the other tier: its worst case does not fit the budget.
    pub narrowed: bool,
    /// The spend reserved, to settle when the answer is in.
    pub reservation: Option<Reservation>,
}

/// Where a reservation was made, for its settlement.
#[derive(Debug)]
enum Held {
    Local(Arc<local::Local>),
    Redis(Arc<redis::RedisLimits>),
    /// Under a lease of this generation.
    Lease(Arc<redis::RedisLimits>, u64),
}

/// A request's reserved spend and charged tokens. Settled with [`Reservation::settle`];
/// dropped unsettled (the request failed or was cancelled), it is released, unless
/// [`Reservation::billed`] said the model has started answering.
#[derive(Debug)]
pub struct Reservation {
    held: Option<Held>,
    entry: Entry,
    billed: bool,
}

/// What a reservation changed, to be undone or corrected.
#[derive(Debug, Clone)]
struct Entry {
    label: Arc<str>,
    day: String,
    month: String,
    reserved: Nanodollars,
    /// Whether the caller has a budget, so its spend is counted at all.
    budgeted: bool,
    input_tokens: u64,
    token_interval_us: Option<f64>,
}

impl Reservation {
    /// Corrects the reservation to what the request really cost and used.
    pub fn settle(mut self, actual: Nanodollars, tokens: u64) {
        self.finish(actual, tokens);
    }

    /// The spend reserved.
    pub fn reserved(&self) -> Nanodollars {
        self.entry.reserved
    }

    /// The model has started answering (a stream's first token went out): Bedrock bills what
    /// it wrote, which the router will not learn if the stream is cut short, so dropped
    /// unsettled the reservation stays counted at its worst case instead of being released.
    pub fn billed(&mut self) {
        self.billed = true;
    }

    fn finish(&mut self, actual: Nanodollars, tokens: u64) {
        let Some(held) = self.held.take() else {
            return;
        };
        let spend = if self.entry.budgeted {
            actual.0 as i64 - self.entry.reserved.0 as i64
        } else {
            0
        };
        let tokens = if self.entry.token_interval_us.is_some() {
            tokens as i64 - self.entry.input_tokens as i64
        } else {
            0
        };
        match held {
            Held::Local(local) => local.correct(&self.entry, spend, tokens),
            Held::Redis(redis) => redis.correct(self.entry.clone(), spend, tokens),
            Held::Lease(redis, generation) => {
                redis.settle(self.entry.clone(), generation, spend, tokens)
            }
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.billed {
            self.held = None;
        }
        self.finish(Nanodollars(0), 0);
    }
}

/// The limits of every caller, in the store config chose.
#[derive(Debug)]
pub struct Limiter {
    local: Arc<local::Local>,
    redis: Option<Arc<redis::RedisLimits>>,
}

/// The wall clock a store reads for the periods (the rates use a monotonic clock: the
/// process's own in process, Redis's `TIME` in Redis).
#[derive(Debug, Clone, Copy)]
struct Now {
    unix_secs: u64,
}

impl Now {
    fn get() -> Self {
        let unix_secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self { unix_secs }
    }
}

impl Limiter {
    /// The limiter of `callers`, in Redis when `config` names it (connecting lazily and
    /// watching it from a background task, so it needs a runtime).
    pub fn new(config: &LimitStoreConfig, callers: &Callers) -> anyhow::Result<Self> {
        for label in callers.labels() {
            for (period, budget) in [
                (Period::Day, budget_of(callers, label, Period::Day)),
                (Period::Month, budget_of(callers, label, Period::Month)),
            ] {
                if budget.is_some() {
                    gauge!(telemetry::CALLER_BUDGET_USED, "caller" => label.to_owned(), "period" => period.as_str())
                        .set(0.0);
                }
            }
            for limit in [
                Limit::Requests,
                Limit::Tokens,
                Limit::UsdPerDay,
                Limit::UsdPerMonth,
                Limit::StoreDown,
            ] {
                counter!(telemetry::LIMITED_TOTAL, "caller" => label.to_owned(), "limit" => limit.as_str())
                    .increment(0);
            }
            counter!(telemetry::DEGRADED_TOTAL, "caller" => label.to_owned()).increment(0);
        }
        let redis = match &config.redis_url {
            Some(url) => Some(redis::RedisLimits::open(url, config.timeout, config.lease)?),
            None => None,
        };
        Ok(Self {
            local: Arc::new(local::Local::default()),
            redis,
        })
    }

    /// Admits a request of the caller `label` (policy table `key`) that asks `ask`.
    pub async fn admit(
        &self,
        label: &Arc<str>,
        key: &str,
        policy: &CallerPolicy,
        ask: &Ask,
    ) -> Result<Admission, Limited> {
        let now = Now::get();
        let result = match &self.redis {
            Some(redis) => match redis.admit(label, ask, now).await {
                Ok(result) => {
                    if let Outcome::Admitted {
                        day, month, entry, ..
                    } = &result
                    {
                        self.local.seed(entry, *day, *month);
                    }
                    result
                }
                Err(()) => self.fallback(label, policy, ask, now),
            },
            None => self.local.admit(label, ask, now),
        };
        let refusal = |limit: Limit, retry_after| {
            counter!(telemetry::LIMITED_TOTAL, "caller" => label.to_string(), "limit" => limit.as_str())
                .increment(1);
            Limited {
                limit,
                key: key.to_owned(),
                retry_after,
            }
        };
        match result {
            Outcome::Refused(Refused::Rate(limit, after)) => Err(refusal(limit, Some(after))),
            Outcome::Refused(Refused::StoreDown) => Err(refusal(Limit::StoreDown, None)),
            Outcome::Refused(Refused::Budget(period)) => Err(refusal(
                Limit::of_period(period),
                Some(Duration::from_secs(period.secs_left(now.unix_secs))),
            )),
            Outcome::Admitted {
                spend,
                day,
                month,
                entry,
                held,
            } => {
                if spend.degraded {
                    counter!(telemetry::DEGRADED_TOTAL, "caller" => label.to_string()).increment(1);
                }
                for (budget, used, period) in [
                    (ask.day_budget, day, Period::Day),
                    (ask.month_budget, month, Period::Month),
                ] {
                    if let Some(budget) = budget.filter(|b| b.0 > 0) {
                        gauge!(telemetry::CALLER_BUDGET_USED, "caller" => label.to_string(), "period" => period.as_str())
                            .set(used.0 as f64 / budget.0 as f64);
                    }
                }
                Ok(Admission {
                    degraded: spend.degraded,
                    narrowed: spend.narrowed,
                    reservation: Some(Reservation {
                        held: Some(held),
                        entry,
                        billed: false,
                    }),
                })
            }
        }
    }

    /// Admission while the shared store is unreachable: this process's own counts, or
    /// refused, as the caller's `on_store_down` says.
    fn fallback(&self, label: &Arc<str>, policy: &CallerPolicy, ask: &Ask, now: Now) -> Outcome {
        match policy.on_store_down {
            StoreDown::Open => self.local.admit(label, ask, now),
            StoreDown::Closed => Outcome::Refused(Refused::StoreDown),
        }
    }
}

/// The budget of `label` for `period`, for the gauges made at start.
fn budget_of(callers: &Callers, label: &str, period: Period) -> Option<f64> {
    let policy = callers
        .named()
        .find(|c| &*c.name == label)
        .map_or(callers.default_policy(), |c| &c.policy);
    match period {
        Period::Day => policy.usd_per_day,
        Period::Month => policy.usd_per_month,
    }
}

/// What a store said.
#[derive(Debug)]
enum Outcome {
    Admitted {
        spend: prompt_router_core::limits::Spend,
        day: Nanodollars,
        month: Nanodollars,
        entry: Entry,
        held: Held,
    },
    Refused(Refused),
}

#[derive(Debug)]
enum Refused {
    Rate(Limit, Duration),
    Budget(Period),
    StoreDown,
}

fn entry(label: &Arc<str>, ask: &Ask, now: Now, reserved: Nanodollars) -> Entry {
    Entry {
        label: Arc::clone(label),
        day: Period::Day.key(now.unix_secs),
        month: Period::Month.key(now.unix_secs),
        reserved,
        budgeted: ask.day_budget.is_some() || ask.month_budget.is_some(),
        input_tokens: ask.input_tokens,
        token_interval_us: ask.tokens.map(|t| t.interval_us),
    }
}
