//! PURE. The arithmetic of callers' rate limits and spend budgets, shared by the in-process
//! store and the Redis one (whose Lua script does the same sums): GCRA for request and token
//! rates, UTC day and calendar-month periods, the degrade rule, and a request's worst-case
//! cost on a tier.
//!
//! GCRA ("generic cell rate algorithm") keeps a token bucket in one number, the theoretical
//! arrival time (TAT): each admitted unit moves it `interval` later; a request is refused
//! while the TAT is more than `tolerance` (the burst) ahead of now.

use std::time::Duration;

use crate::{
    caller::CallerPolicy,
    catalog::{Catalog, Tier},
    cost::{Nanodollars, Prices, Usage, price},
    request::{Block, ChatRequest, ToolResultBlock},
};

/// Tokens a request's framing (roles, tool and system wrappers) may add to its text.
pub const FRAMING_TOKENS: u64 = 256;

/// Tokens an image may count as: Bedrock scales an image to at most about 1.15 megapixels,
/// some 1,600 tokens at Anthropic's (width × height) / 750.
pub const IMAGE_TOKENS: u64 = 1_600;

/// A GCRA limit in microseconds: `interval` per unit, `tolerance` of burst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gcra {
    /// Microseconds one unit moves the TAT.
    pub interval_us: f64,
    /// How far ahead of now the TAT may be for a request to pass.
    pub tolerance_us: f64,
}

impl Gcra {
    /// `requests_per_second` with `burst` requests at once.
    pub fn requests(per_second: f64, burst: u32) -> Self {
        let interval_us = 1e6 / per_second;
        Self {
            interval_us,
            tolerance_us: interval_us * f64::from(burst.max(1) - 1),
        }
    }

    /// `tokens_per_minute`, a minute's tokens as the burst. Tokens are charged as debt: a
    /// request passes while the bucket is not overdrawn, and its tokens (estimated input on
    /// admission, the real count when it ends) may take it below zero, so a long answer makes
    /// the next requests wait rather than being refused up front for its `max_tokens`.
    pub fn tokens(per_minute: u64) -> Self {
        let interval_us = 60e6 / per_minute as f64;
        Self {
            interval_us,
            tolerance_us: 60e6,
        }
    }

    /// Admits `units` at `now_us` against `tat_us` (`None`: never used): the new TAT, or
    /// how long until a request would pass. With [`Gcra::tokens`]' debt the check is on the
    /// TAT before the units; with [`Gcra::requests`] `units` is 1 and the same check is
    /// the classic one (the new TAT at most `interval + tolerance` ahead).
    pub fn admit(&self, tat_us: Option<f64>, now_us: f64, units: f64) -> Result<f64, Duration> {
        let tat = tat_us.map_or(now_us, |t| t.max(now_us));
        let ahead = tat - now_us;
        if ahead > self.tolerance_us {
            return Err(Duration::from_micros(
                (ahead - self.tolerance_us).ceil() as u64
            ));
        }
        Ok(tat + units * self.interval_us)
    }
}

/// A UTC date, for the day and month a spend belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Date {
    /// The year.
    pub year: i64,
    /// 1–12.
    pub month: u32,
    /// 1–31.
    pub day: u32,
}

const DAY_SECS: u64 = 86_400;

impl Date {
    /// The UTC date of `unix_secs` (Howard Hinnant's civil-from-days).
    pub fn of(unix_secs: u64) -> Self {
        let z = (unix_secs / DAY_SECS) as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Self { year, month, day }
    }

    /// Days since 1970-01-01 of this date (days-from-civil).
    fn days(self) -> i64 {
        let year = self.year - i64::from(self.month <= 2);
        let era = year.div_euclid(400);
        let yoe = year.rem_euclid(400);
        let m = i64::from(self.month);
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(self.day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }
}

/// A budget's period: a UTC day or a UTC calendar month.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// `usd_per_day`.
    Day,
    /// `usd_per_month`.
    Month,
}

impl Period {
    /// The metric-label form, and the key part.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Month => "month",
        }
    }

    /// The period holding `unix_secs`, as a key part (`2026-12-01`, `2026-12`).
    pub fn key(self, unix_secs: u64) -> String {
        let date = Date::of(unix_secs);
        match self {
            Self::Day => format!("{:04}-{:02}-{:02}", date.year, date.month, date.day),
            Self::Month => format!("{:04}-{:02}", date.year, date.month),
        }
    }

    /// Seconds from `unix_secs` to the end of its period (at least 1).
    pub fn secs_left(self, unix_secs: u64) -> u64 {
        let date = Date::of(unix_secs);
        let next = match self {
            Self::Day => (date.days() + 1) as u64 * DAY_SECS,
            Self::Month => {
                let (year, month) = if date.month == 12 {
                    (date.year + 1, 1)
                } else {
                    (date.year, date.month + 1)
                };
                Date {
                    year,
                    month,
                    day: 1,
                }
                .days() as u64
                    * DAY_SECS
            }
        };
        next.saturating_sub(unix_secs).max(1)
    }
}

/// Whether a caller that has spent `used` of `budget` is past its degrade point.
pub fn past_degrade(used: Nanodollars, budget: Nanodollars, degrade_at: f64) -> bool {
    used.0 as f64 >= degrade_at * budget.0 as f64
}

/// A budget in USD as nano-dollars.
pub fn budget_nanos(usd: f64) -> Nanodollars {
    Nanodollars((usd * 1e9).round() as u64)
}

/// An upper bound of a request's input tokens: a token is at least a byte of text (or JSON),
/// plus [`FRAMING_TOKENS`] and [`IMAGE_TOKENS`] an image.
pub fn input_tokens_bound(req: &ChatRequest) -> u64 {
    let mut bytes: u64 = req.system.iter().map(|s| s.len() as u64).sum();
    let mut images = 0u64;
    for block in req.messages.iter().flat_map(|t| &t.content) {
        match block {
            Block::Text(text) => bytes += text.len() as u64,
            Block::Image(_) => images += 1,
            Block::ToolUse(tool) => {
                bytes += (tool.name.len() + tool.input.to_string().len()) as u64
            }
            Block::ToolResult(result) => {
                for item in &result.content {
                    match item {
                        ToolResultBlock::Text(text) => bytes += text.len() as u64,
                        ToolResultBlock::Json(value) => bytes += value.to_string().len() as u64,
                        ToolResultBlock::Image(_) => images += 1,
                    }
                }
            }
        }
    }
    if let Some(tools) = &req.tools {
        for spec in &tools.specs {
            bytes += (spec.name.len() + spec.description.len()) as u64;
            bytes += spec.input_schema.to_string().len() as u64;
        }
    }
    bytes + FRAMING_TOKENS + images * IMAGE_TOKENS
}

/// The most a request with `input_tokens` can cost on `tier`: its input and its whole
/// `max_tokens` (the model's output limit when unset, or when larger) at that tier's prices.
pub fn worst_case(
    input_tokens: u64,
    max_tokens: Option<u32>,
    tier: Tier,
    catalog: &Catalog,
) -> Nanodollars {
    let model = catalog.model(tier);
    let output = max_tokens.map_or(model.max_output_tokens, |m| m.min(model.max_output_tokens));
    worst_at(input_tokens, output, model.prices)
}

fn worst_at(input_tokens: u64, output_tokens: u32, prices: Prices) -> Nanodollars {
    price(
        Usage {
            input_tokens: u32::try_from(input_tokens).unwrap_or(u32::MAX),
            output_tokens,
        },
        prices,
    )
}

/// What the store is asked for one request: its rate units, and what it may cost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ask {
    /// The caller's request-rate limit.
    pub requests: Option<Gcra>,
    /// The caller's token-rate limit.
    pub tokens: Option<Gcra>,
    /// Tokens charged on admission (the input bound).
    pub input_tokens: u64,
    /// `usd_per_day`.
    pub day_budget: Option<Nanodollars>,
    /// `usd_per_month`.
    pub month_budget: Option<Nanodollars>,
    /// `degrade_at`.
    pub degrade_at: f64,
    /// The decision would call the strong tier and the fast one could serve it instead.
    pub degradable: bool,
    /// Worst case on the chosen tier.
    pub chosen: Nanodollars,
    /// Worst case with the other tier as fallback too (the larger of the two tiers'), or
    /// `chosen` when there is no fallback to the other tier.
    pub wide: Nanodollars,
    /// Worst case on the fast tier, what a degraded request reserves.
    pub fast: Nanodollars,
}

impl Ask {
    /// The ask of a request under `policy`; `None` when the policy has no limit or budget.
    pub fn of(
        policy: &CallerPolicy,
        req: &ChatRequest,
        chosen: Tier,
        degradable: bool,
        fallback: bool,
        catalog: &Catalog,
    ) -> Option<Self> {
        let requests = policy
            .requests_per_second
            .map(|rps| Gcra::requests(rps, policy.burst));
        let tokens = policy.tokens_per_minute.map(Gcra::tokens);
        let day_budget = policy.usd_per_day.map(budget_nanos);
        let month_budget = policy.usd_per_month.map(budget_nanos);
        if requests.is_none() && tokens.is_none() && day_budget.is_none() && month_budget.is_none()
        {
            return None;
        }
        let input_tokens = input_tokens_bound(req);
        let max_tokens = req.inference.max_tokens;
        let chosen_cost = worst_case(input_tokens, max_tokens, chosen, catalog);
        let other_cost = worst_case(input_tokens, max_tokens, chosen.other(), catalog);
        Some(Self {
            requests,
            tokens,
            input_tokens,
            day_budget,
            month_budget,
            degrade_at: policy.degrade_at,
            degradable,
            chosen: chosen_cost,
            wide: if fallback {
                chosen_cost.max(other_cost)
            } else {
                chosen_cost
            },
            fast: worst_case(input_tokens, max_tokens, Tier::Fast, catalog),
        })
    }

    /// Whether a reservation of `cost` on top of `day` and `month` spend fits both budgets.
    pub fn fits(&self, day: Nanodollars, month: Nanodollars, cost: Nanodollars) -> bool {
        self.day_budget
            .is_none_or(|b| day.0.saturating_add(cost.0) <= b.0)
            && self
                .month_budget
                .is_none_or(|b| month.0.saturating_add(cost.0) <= b.0)
    }

    /// Whether spend of `day` and `month` is past the degrade point of either budget.
    pub fn past_degrade(&self, day: Nanodollars, month: Nanodollars) -> bool {
        self.day_budget
            .is_some_and(|b| past_degrade(day, b, self.degrade_at))
            || self
                .month_budget
                .is_some_and(|b| past_degrade(month, b, self.degrade_at))
    }

    /// The spend step on `day` and `month` spend: what to reserve, or which budget refuses.
    /// Without a budget nothing is reserved.
    pub fn spend(&self, day: Nanodollars, month: Nanodollars) -> Result<Spend, Period> {
        if self.day_budget.is_none() && self.month_budget.is_none() {
            return Ok(Spend {
                degraded: false,
                narrowed: false,
                reserved: Nanodollars(0),
            });
        }
        let degrade = self.degradable
            && (self.past_degrade(day, month) || !self.fits(day, month, self.chosen))
            && self.fits(day, month, self.fast);
        let (chosen, wide) = if degrade {
            (self.fast, self.fast)
        } else {
            (self.chosen, self.wide)
        };
        if self.fits(day, month, wide) {
            return Ok(Spend {
                degraded: degrade,
                narrowed: false,
                reserved: wide,
            });
        }
        if self.fits(day, month, chosen) {
            return Ok(Spend {
                degraded: degrade,
                narrowed: true,
                reserved: chosen,
            });
        }
        let day_short = self
            .day_budget
            .is_some_and(|b| day.0.saturating_add(chosen.0) > b.0);
        Err(if day_short {
            Period::Day
        } else {
            Period::Month
        })
    }
}

/// Requests a lease is sized for when the caller has no request rate.
pub const LEASE_REQUESTS: u64 = 16;

/// What a router asks Redis for a caller's lease: rate credits, tokens and spend headroom to
/// spend without asking again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseWant {
    /// Request credits: `rate × lease` rounded down, at most half the burst (a lease holding
    /// the whole burst would refuse every request that misses it, this router's or
    /// another's); 0 without a rate, or for a rate too slow to lease a whole request (an
    /// unused credit is lost with its lease, so leasing one would refuse a slow caller's next
    /// request for nothing).
    pub requests: u64,
    /// Tokens: the requests expected in a lease times the tokens one used, at most an eighth
    /// of a minute's tokens.
    pub tokens: u64,
    /// Spend: the requests expected in a lease times this request's worst case (Redis grants
    /// at most an eighth of what remains of a budget, never less than one worst case).
    pub spend: Nanodollars,
}

impl Ask {
    /// The lease to ask for alongside this request, for a lease lifetime `lease`, when a
    /// request of the caller last used `unit_tokens` tokens.
    pub fn lease(&self, lease: Duration, unit_tokens: u64) -> LeaseWant {
        let requests = self.requests.map_or(0, |g| {
            let burst = (g.tolerance_us / g.interval_us).round() + 1.0;
            (lease.as_secs_f64() * 1e6 / g.interval_us)
                .min(burst / 2.0)
                .floor() as u64
        });
        let expected = if self.requests.is_some() {
            requests.max(1)
        } else {
            LEASE_REQUESTS
        };
        let tokens = self.tokens.map_or(0, |g| {
            let eighth = (g.tolerance_us / g.interval_us / 8.0).floor() as u64;
            expected
                .saturating_mul(unit_tokens.max(self.input_tokens))
                .min(eighth)
        });
        let spend = if self.day_budget.is_some() || self.month_budget.is_some() {
            Nanodollars(expected.saturating_mul(self.wide.0))
        } else {
            Nanodollars(0)
        };
        LeaseWant {
            requests,
            tokens,
            spend,
        }
    }
}

/// What a request that fits its budgets reserves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spend {
    /// Route it to the fast tier instead of the strong one.
    pub degraded: bool,
    /// The other tier's fallback does not fit: the request keeps to its tier.
    pub narrowed: bool,
    /// The amount reserved.
    pub reserved: Nanodollars,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn dates_by_hand() {
        assert_eq!(
            Date::of(0),
            Date {
                year: 1970,
                month: 1,
                day: 1
            }
        );
        // 2024-02-29 12:00 UTC, a leap day.
        assert_eq!(
            Date::of(1_709_208_000),
            Date {
                year: 2024,
                month: 2,
                day: 29
            }
        );
        // 2026-12-31 23:59:59 UTC.
        let eve = 1_798_761_599;
        assert_eq!(Period::Day.key(eve), "2026-12-31");
        assert_eq!(Period::Month.key(eve), "2026-12");
        assert_eq!(Period::Day.secs_left(eve), 1);
        assert_eq!(Period::Month.secs_left(eve), 1);
        assert_eq!(Period::Day.key(eve + 1), "2027-01-01");
        // From 2024-02-01 00:00 the month has 29 days.
        assert_eq!(Period::Month.secs_left(1_706_745_600), 29 * DAY_SECS);
    }

    proptest! {
        #[test]
        fn days_round_trip(secs in 0u64..8_000_000_000) {
            let date = Date::of(secs);
            prop_assert_eq!(date.days() as u64, secs / DAY_SECS);
            prop_assert!((1..=12).contains(&date.month) && (1..=31).contains(&date.day));
            prop_assert!(Period::Day.secs_left(secs) <= DAY_SECS);
            prop_assert!(Period::Month.secs_left(secs) <= 31 * DAY_SECS);
            prop_assert_eq!(Period::Day.key(secs + Period::Day.secs_left(secs) - 1), Period::Day.key(secs));
            prop_assert_ne!(Period::Month.key(secs + Period::Month.secs_left(secs)), Period::Month.key(secs));
        }

        /// Over any arrival pattern, GCRA admits at most `burst + rate × elapsed` requests.
        #[test]
        fn gcra_never_admits_more_than_its_rate_and_burst(
            rps in 0.5f64..50.0,
            burst in 1u32..10,
            gaps in proptest::collection::vec(0u64..200_000, 1..200),
        ) {
            let gcra = Gcra::requests(rps, burst);
            let (mut tat, mut now, mut admitted) = (None, 0.0, 0u32);
            for gap in gaps {
                now += gap as f64;
                if let Ok(next) = gcra.admit(tat, now, 1.0) {
                    tat = Some(next);
                    admitted += 1;
                }
            }
            prop_assert!(f64::from(admitted) <= f64::from(burst) + rps * now / 1e6 + 1e-9);
        }
    }

    #[test]
    fn gcra_table() {
        let gcra = Gcra::requests(2.0, 3);
        let mut tat = None;
        for _ in 0..3 {
            tat = Some(gcra.admit(tat, 0.0, 1.0).unwrap());
        }
        // The fourth at once waits for half a second's slot.
        assert_eq!(gcra.admit(tat, 0.0, 1.0), Err(Duration::from_millis(500)));
        assert!(gcra.admit(tat, 500_000.0, 1.0).is_ok());
        // Tokens: a minute's worth passes, then the debt must be paid back first.
        let tokens = Gcra::tokens(600);
        let tat = tokens.admit(None, 0.0, 1_200.0).unwrap();
        assert_eq!(tat, 120e6);
        assert_eq!(
            tokens.admit(Some(tat), 0.0, 1.0),
            Err(Duration::from_secs(60))
        );
        assert!(tokens.admit(Some(tat), 60e6, 1.0).is_ok());
    }

    fn ask(day_budget: u64, degradable: bool) -> Ask {
        Ask {
            requests: None,
            tokens: None,
            input_tokens: 10,
            day_budget: Some(Nanodollars(day_budget)),
            month_budget: None,
            degrade_at: 0.5,
            degradable,
            chosen: Nanodollars(100),
            wide: Nanodollars(100),
            fast: Nanodollars(10),
        }
    }

    #[test]
    fn spend_table() {
        let n = Nanodollars;
        let zero = n(0);
        let spend = |a: &Ask, day| a.spend(n(day), zero);
        let plain = |reserved| {
            Ok(Spend {
                degraded: false,
                narrowed: false,
                reserved: n(reserved),
            })
        };
        let degraded = |reserved| {
            Ok(Spend {
                degraded: true,
                narrowed: false,
                reserved: n(reserved),
            })
        };
        // Below the degrade point: the strong reservation.
        assert_eq!(spend(&ask(1_000, true), 0), plain(100));
        // At it (500 of 1,000): fast instead.
        assert_eq!(spend(&ask(1_000, true), 500), degraded(10));
        // Not degradable (fast cannot serve): strong while it fits, then refused.
        assert_eq!(spend(&ask(1_000, false), 900), plain(100));
        assert_eq!(spend(&ask(1_000, false), 901), Err(Period::Day));
        // Strong no longer fits under the degrade point (a small budget): fast.
        assert_eq!(spend(&ask(120, true), 30), degraded(10));
        // Nothing fits: refused.
        assert_eq!(spend(&ask(1_000, true), 995), Err(Period::Day));
        // A wide (fallback) reservation narrows when only the chosen tier fits.
        let wide = Ask {
            wide: n(300),
            degradable: false,
            ..ask(1_000, false)
        };
        assert_eq!(spend(&wide, 0), plain(300));
        assert_eq!(
            spend(&wide, 800),
            Ok(Spend {
                degraded: false,
                narrowed: true,
                reserved: n(100)
            })
        );
        // Month refuses when the day has room.
        let month = Ask {
            day_budget: None,
            month_budget: Some(n(50)),
            ..ask(0, false)
        };
        assert_eq!(month.spend(zero, n(0)), Err(Period::Month));
        // No budget: nothing reserved, never degraded.
        let free = Ask {
            day_budget: None,
            ..ask(0, true)
        };
        assert_eq!(free.spend(n(u64::MAX / 2), zero), plain(0));
    }

    #[test]
    fn lease_sizes() {
        let ms = Duration::from_millis;
        let limited = Ask {
            requests: Some(Gcra::requests(200.0, 10)),
            tokens: Some(Gcra::tokens(60_000)),
            ..ask(1_000, false)
        };
        // 200 rps × 100 ms = 20, capped at half the burst of 10; tokens for 5 requests of
        // 500; spend for 5 worst cases.
        assert_eq!(
            limited.lease(ms(100), 500),
            LeaseWant {
                requests: 5,
                tokens: 2_500,
                spend: Nanodollars(500),
            }
        );
        // 200 rps × 20 ms = 4; tokens capped at an eighth of a minute's 60,000.
        assert_eq!(
            limited.lease(ms(20), 10_000),
            LeaseWant {
                requests: 4,
                tokens: 7_500,
                spend: Nanodollars(400),
            }
        );
        // A rate slower than a request per lease leases no request credit, and sizes the
        // rest for one request (tokens at least the input estimate).
        let slow = Ask {
            requests: Some(Gcra::requests(0.01, 3)),
            ..limited
        };
        assert_eq!(
            slow.lease(ms(100), 0),
            LeaseWant {
                requests: 0,
                tokens: 10,
                spend: Nanodollars(100),
            }
        );
        // No rate: sized for LEASE_REQUESTS; no budget: no spend.
        let free = Ask {
            day_budget: None,
            ..ask(0, false)
        };
        assert_eq!(
            free.lease(ms(100), 7),
            LeaseWant {
                requests: 0,
                tokens: 0,
                spend: Nanodollars(0),
            }
        );
        assert_eq!(
            ask(1_000, false).lease(ms(100), 7).spend,
            Nanodollars(100 * LEASE_REQUESTS)
        );
    }

    proptest! {
        /// Whatever the spend, a reservation never takes spend over a budget.
        #[test]
        fn a_reservation_always_fits(
            budget in 1u64..10_000, day in 0u64..12_000, chosen in 1u64..500,
            fast in 1u64..500, wide_extra in 0u64..500, degradable: bool,
        ) {
            let a = Ask {
                chosen: Nanodollars(chosen),
                wide: Nanodollars(chosen + wide_extra),
                fast: Nanodollars(fast),
                degradable,
                ..ask(budget, degradable)
            };
            if let Ok(spend) = a.spend(Nanodollars(day), Nanodollars(0)) {
                prop_assert!(day + spend.reserved.0 <= budget);
            }
        }
    }
}
