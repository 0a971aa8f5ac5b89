//! The shared store (`limits.redis_url`): every router's admissions go through one Lua script
//! on one Redis, so N routers enforce one rate and one budget per caller. Redis runs a script
//! alone, so the check and the reservation are one atomic step; the rates use Redis's own
//! clock (`TIME`), the same for every router.
//!
//! Keys, per caller label (the braces are a Redis Cluster hash tag, keeping a caller's keys
//! on one shard): `prompt-router:limits:{caller}:requests` and `…:tokens` (GCRA TATs in
//! microseconds, expiring once the TAT has passed), `…:usd:day:YYYY-MM-DD` and
//! `…:usd:month:YYYY-MM` (nano-dollars spent and reserved, expiring a day after their period).
//!
//! Leases (`limits.lease_ms`): the script call that admits a request also reserves, for this
//! router, a chunk of the caller's request credits, tokens and spend headroom, counted in
//! Redis as a request's needs are; later requests are admitted from that lease without
//! a Redis call, and a background call refills it. Headroom is reserved before it is spent,
//! so N routers never overspend a budget; settlements correct the lease, which gives unused
//! headroom back when renewed or expired. Unused request credits lapse (erring on refusing).
//!
//! While Redis fails or is slower than `limits.redis_timeout_ms`, the store is down
//! (`router_limit_store_up` 0, one log line): admissions follow each caller's `on_store_down`
//! without trying Redis, and a background probe brings the store back when a `PING` answers.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use metrics::gauge;
use prompt_router_core::{
    cost::Nanodollars,
    limits::{Ask, LeaseWant, Period, Spend},
};
use redis::{
    Script,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use tokio::sync::mpsc;

use super::{Entry, Held, Limit, Now, Outcome, Refused, entry};
use crate::telemetry;

/// Settlements waiting for the writer: a burst of answers on a slow Redis waits here; past
/// this many, a settlement is dropped and its worst case stays counted (never an overspend).
const SETTLE_QUEUE: usize = 4_096;

/// How often the probe checks the store.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Extra life of a spend key after its period ends, so a late settlement still finds it.
const PERIOD_MARGIN_SECS: u64 = 86_400;

/// Rates, then spend: the same steps as `Ask::spend` and `Gcra::admit` in core's `limits`,
/// for the request (when ARGV[15] is 1) and a lease for this router on top of it: up to
/// ARGV[16] more request credits (as many as the GCRA has room for), ARGV[17] tokens (unless
/// the bucket is overdrawn), and spend headroom of at most ARGV[19] nano-dollars, an eighth
/// of what remains of a budget, never below one request's worst case ARGV[20] (none when
/// that does not fit). ARGV[18] tokens a lease owes are charged too. Returns {0, degraded,
/// narrowed, reserved, day, month, credits, tokens, headroom}, {1, µs} (requests), {2, µs}
/// (tokens), {3} (day budget) or {4} (month budget).
const ADMIT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function keep(key, tat)
  redis.call('SET', key, string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
end
local own = ARGV[15] == '1'
local req_interval, tok_interval = tonumber(ARGV[1]), tonumber(ARGV[3])
local new_req, new_tok
local credits, tokens, headroom = 0, 0, 0
if req_interval > 0 then
  local tolerance = tonumber(ARGV[2])
  local tat = tonumber(redis.call('GET', KEYS[1]) or now)
  if tat < now then tat = now end
  local ahead = tat - now
  if own and ahead > tolerance then return {1, math.ceil(ahead - tolerance)} end
  local need, free = own and 1 or 0, 0
  if ahead <= tolerance then free = math.floor((tolerance - ahead) / req_interval) + 1 end
  credits = math.max(0, math.min(tonumber(ARGV[16]), free - need))
  if need + credits > 0 then new_req = tat + (need + credits) * req_interval end
end
if tok_interval > 0 then
  local tolerance = tonumber(ARGV[4])
  local tat = tonumber(redis.call('GET', KEYS[2]) or now)
  if tat < now then tat = now end
  local over = tat - now > tolerance
  if own and over then return {2, math.ceil(tat - now - tolerance)} end
  if not over then tokens = tonumber(ARGV[17]) end
  local units = tokens + tonumber(ARGV[18])
  if own then units = units + tonumber(ARGV[5]) end
  if units ~= 0 then new_tok = tat + units * tok_interval end
end
local dbud, mbud = tonumber(ARGV[6]), tonumber(ARGV[7])
local day, month, degraded, narrowed, reserved = 0, 0, 0, 0, 0
if dbud >= 0 or mbud >= 0 then
  day = tonumber(redis.call('GET', KEYS[3]) or '0')
  month = tonumber(redis.call('GET', KEYS[4]) or '0')
  if own then
    local function fits(c)
      return (dbud < 0 or day + c <= dbud) and (mbud < 0 or month + c <= mbud)
    end
    local at = tonumber(ARGV[8])
    local past = (dbud >= 0 and day >= at * dbud) or (mbud >= 0 and month >= at * mbud)
    local chosen, wide, fast = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
    if ARGV[9] == '1' and (past or not fits(chosen)) and fits(fast) then
      degraded, chosen, wide = 1, fast, fast
    end
    reserved = wide
    if not fits(wide) then
      if fits(chosen) then
        narrowed, reserved = 1, chosen
      elseif dbud >= 0 and day + chosen > dbud then
        return {3}
      else
        return {4}
      end
    end
  end
  local want = tonumber(ARGV[19])
  if want > 0 then
    local left = math.huge
    if dbud >= 0 then left = math.min(left, dbud - day - reserved) end
    if mbud >= 0 then left = math.min(left, mbud - month - reserved) end
    local chunk = math.min(want, math.max(math.floor(left / 8), tonumber(ARGV[20])))
    if chunk <= left then headroom = chunk end
  end
  if own or headroom > 0 then
    day = redis.call('INCRBY', KEYS[3], string.format('%.0f', reserved + headroom))
    redis.call('EXPIRE', KEYS[3], ARGV[13])
    month = redis.call('INCRBY', KEYS[4], string.format('%.0f', reserved + headroom))
    redis.call('EXPIRE', KEYS[4], ARGV[14])
  end
end
if new_req then keep(KEYS[1], new_req) end
if new_tok then keep(KEYS[2], new_tok) end
return {0, degraded, narrowed, reserved, day, month, credits, tokens, headroom}
";

/// A reservation corrected: the token TAT moved by ARGV[2] tokens of ARGV[1] µs, the spend
/// keys (while they exist) by ARGV[3] nano-dollars.
const CORRECT: &str = r"
local interval, tokens = tonumber(ARGV[1]), tonumber(ARGV[2])
if interval > 0 and tokens ~= 0 then
  local tat = redis.call('GET', KEYS[1])
  if tat then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
    local new = tonumber(tat) + tokens * interval
    if new > now then
      redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000) + 1000)
    else
      redis.call('DEL', KEYS[1])
    end
  end
end
if ARGV[3] ~= '0' then
  for i = 2, 3 do
    if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('INCRBY', KEYS[i], ARGV[3]) end
  end
end
return 0
";

/// The Redis store.
pub struct RedisLimits {
    conn: ConnectionManager,
    timeout: Duration,
    up: AtomicBool,
    admit: Script,
    settle: mpsc::Sender<(Entry, i64, i64)>,
    /// A lease's lifetime; zero: no leases, every request asks Redis.
    lease: Duration,
    leases: Mutex<HashMap<Arc<str>, Lease>>,
    generation: AtomicU64,
}

impl std::fmt::Debug for RedisLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimits")
            .field("up", &self.up)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

/// What this router holds of one caller's limits: request credits, tokens and spend
/// headroom already counted in Redis, so spending them needs no Redis call.
#[derive(Debug)]
struct Lease {
    /// Tells a reservation made under this lease from one made under an earlier one.
    generation: u64,
    /// The caller and the periods the headroom was reserved in (`reserved` unused).
    entry: Entry,
    /// After this the lease is not spent, and its headroom goes back to Redis.
    expires: Instant,
    /// The caller's last ask, for a refill.
    ask: Ask,
    /// Request credits left.
    credits: u64,
    /// Tokens left; below zero, tokens requests used beyond their estimates, owed to Redis.
    tokens: i64,
    /// Spend headroom left, in nano-dollars.
    headroom: u64,
    /// The day's and month's spend as degrade reads them: the last Redis reply's totals less
    /// this lease's headroom, plus this router's reservations and settlements since.
    day: u64,
    month: u64,
    /// Tokens the caller's last settled request used, to size the next lease.
    unit_tokens: u64,
    /// A refill is in flight.
    refilling: bool,
}

impl Lease {
    fn holds(&self, at: Instant, entry: &Entry) -> bool {
        at < self.expires && self.of_periods(entry)
    }

    /// Whether it was reserved in `entry`'s day and month: a lease of earlier periods is
    /// replaced; one that has only expired is renewed in place (its credits taken at most
    /// two lifetimes ago, before the expiry task retires it), so a refill that comes late on
    /// a loaded machine does not lapse a lease's credits and take them again.
    fn of_periods(&self, entry: &Entry) -> bool {
        self.entry.day == entry.day && self.entry.month == entry.month
    }

    /// Whether to refill it now, off the caller's path: half its life or half of what a
    /// lease is sized for is gone.
    fn low(&self, at: Instant, life: Duration) -> bool {
        let want = self.ask.lease(life, self.unit_tokens);
        self.expires.saturating_duration_since(at) < life / 2
            || self.credits.saturating_mul(2) < want.requests
            || self.tokens.max(0).unsigned_abs().saturating_mul(2) < want.tokens
            || self.headroom.saturating_mul(2) < want.spend.0
    }
}

fn key(label: &str, what: &str) -> String {
    format!("prompt-router:limits:{{{label}}}:{what}")
}

fn spend_keys(entry: &Entry) -> [String; 2] {
    [
        key(&entry.label, &format!("usd:day:{}", entry.day)),
        key(&entry.label, &format!("usd:month:{}", entry.month)),
    ]
}

impl RedisLimits {
    /// The store at `url`, connecting lazily, with leases of `lease` (zero: none); starts
    /// its probe, settlement and lease-expiry tasks.
    pub fn open(url: &str, timeout: Duration, lease: Duration) -> anyhow::Result<Arc<Self>> {
        // The URL is not in the message: it may hold a password.
        let client =
            redis::Client::open(url).context("parsing the Redis URL (limits.redis_url)")?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .context("setting up the Redis connection (limits.redis_url)")?;
        let (settle, queue) = mpsc::channel(SETTLE_QUEUE);
        let store = Arc::new(Self {
            conn: conn.clone(),
            timeout,
            up: AtomicBool::new(true),
            admit: Script::new(ADMIT),
            settle,
            lease,
            leases: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
        });
        gauge!(telemetry::LIMIT_STORE_UP).set(1.0);
        tokio::spawn(settle_queue(conn, queue, timeout));
        tokio::spawn(probe(Arc::downgrade(&store)));
        if !lease.is_zero() {
            tokio::spawn(expire(Arc::downgrade(&store), lease));
        }
        Ok(store)
    }

    /// Whether the store answered last time it was asked.
    pub(super) fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn leases(&self) -> MutexGuard<'_, HashMap<Arc<str>, Lease>> {
        self.leases.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn mark(&self, up: bool, why: Option<&str>) {
        if self.up.swap(up, Ordering::Relaxed) == up {
            return;
        }
        gauge!(telemetry::LIMIT_STORE_UP).set(if up { 1.0 } else { 0.0 });
        if up {
            tracing::info!(
                "limit store is up (limits.redis_url): callers' limits are shared again"
            );
        } else {
            tracing::warn!(
                error = why.unwrap_or("timeout"),
                "limit store is down (limits.redis_url): callers' limits follow on_store_down"
            );
        }
    }

    /// Admits `ask` from the caller's lease, or else in Redis (taking a new lease with it);
    /// `Err` when Redis is down or failed (now marked down).
    pub(super) async fn admit(
        self: &Arc<Self>,
        label: &Arc<str>,
        ask: &Ask,
        now: Now,
    ) -> Result<Outcome, ()> {
        let mut base = entry(label, ask, now, Nanodollars(0));
        if !self.lease.is_zero() {
            base = match self.from_lease(base, ask) {
                Ok(outcome) => return Ok(outcome),
                Err(base) => base,
            };
        }
        if !self.is_up() {
            return Err(());
        }
        self.call(ask, base, now, true).await
    }

    /// Admits `ask` from the caller's lease when it covers it (the request's credit and
    /// input tokens, and its reservation within the headroom), starting a refill when the
    /// lease runs low; `Err` gives `base` back when it does not.
    fn from_lease(self: &Arc<Self>, base: Entry, ask: &Ask) -> Result<Outcome, Entry> {
        let at = Instant::now();
        let mut leases = self.leases();
        let Some(lease) = leases.get_mut(&*base.label) else {
            return Err(base);
        };
        let input = i64::try_from(ask.input_tokens).unwrap_or(i64::MAX);
        if !lease.holds(at, &base)
            || (ask.requests.is_some() && lease.credits == 0)
            || (ask.tokens.is_some() && lease.tokens < input)
        {
            return Err(base);
        }
        let spend = match ask.spend(Nanodollars(lease.day), Nanodollars(lease.month)) {
            Ok(spend) if spend.reserved.0 <= lease.headroom => spend,
            _ => return Err(base),
        };
        if ask.requests.is_some() {
            lease.credits -= 1;
        }
        if ask.tokens.is_some() {
            lease.tokens -= input;
        }
        lease.headroom -= spend.reserved.0;
        lease.day += spend.reserved.0;
        lease.month += spend.reserved.0;
        lease.ask = *ask;
        let refill = !lease.refilling && lease.low(at, self.lease);
        lease.refilling |= refill;
        let (generation, day, month) = (
            lease.generation,
            lease.day + lease.headroom,
            lease.month + lease.headroom,
        );
        drop(leases);
        if refill {
            tokio::spawn(refill_lease(Arc::clone(self), Arc::clone(&base.label)));
        }
        Ok(Outcome::Admitted {
            spend,
            day: Nanodollars(day),
            month: Nanodollars(month),
            entry: Entry {
                reserved: spend.reserved,
                ..base
            },
            held: Held::Lease(Arc::clone(self), generation),
        })
    }

    /// What to ask Redis for beside a request (`own`) of `base`'s caller: the lease it is
    /// short of, the tokens its lease owes (taken from the lease now; headroom above twice
    /// what a lease is sized for goes back to Redis), and whether this call asks for the
    /// lease.
    /// While one call asks for a lease the others ask only for their own requests, so
    /// callers that find the lease empty at once do not take a lease each.
    fn before_call(&self, base: &Entry, ask: &Ask, own: bool) -> (LeaseWant, u64, bool) {
        if self.lease.is_zero() {
            return (LeaseWant::default(), 0, false);
        }
        let at = Instant::now();
        let mut leases = self.leases();
        let lease = self.lease_of(&mut leases, base, ask, at);
        if own && lease.refilling {
            return (LeaseWant::default(), 0, false);
        }
        lease.refilling = true;
        let want = ask.lease(self.lease, lease.unit_tokens);
        let debt = (-lease.tokens).max(0);
        lease.tokens += debt;
        if lease.headroom > want.spend.0.saturating_mul(2) {
            let back = lease.headroom - want.spend.0;
            lease.headroom = want.spend.0;
            self.correct(lease.entry.clone(), -(back as i64), 0);
        }
        let short = LeaseWant {
            requests: want.requests.saturating_sub(lease.credits),
            tokens: want.tokens.saturating_sub(lease.tokens.unsigned_abs()),
            spend: Nanodollars(want.spend.0.saturating_sub(lease.headroom)),
        };
        (short, debt.unsigned_abs(), true)
    }

    /// A lease holding nothing yet, expired until Redis grants it something.
    /// The caller's lease in `leases` for `base`'s periods: one of earlier periods is retired
    /// (its headroom given back) and an empty one takes its place.
    fn lease_of<'a>(
        &self,
        leases: &'a mut HashMap<Arc<str>, Lease>,
        base: &Entry,
        ask: &Ask,
        at: Instant,
    ) -> &'a mut Lease {
        if leases
            .get(&*base.label)
            .is_some_and(|lease| !lease.of_periods(base))
            && let Some(old) = leases.remove(&*base.label)
        {
            self.retire(&old);
        }
        leases
            .entry(Arc::clone(&base.label))
            .or_insert_with(|| self.empty_lease(base, ask, at))
    }

    fn empty_lease(&self, base: &Entry, ask: &Ask, at: Instant) -> Lease {
        Lease {
            generation: self.generation.fetch_add(1, Ordering::Relaxed),
            entry: base.clone(),
            expires: at,
            ask: *ask,
            credits: 0,
            tokens: 0,
            headroom: 0,
            day: 0,
            month: 0,
            unit_tokens: ask.input_tokens,
            refilling: false,
        }
    }

    /// Adds what Redis granted to the caller's lease (a new one if its last has expired),
    /// which lives a lease lifetime from this reply, whose totals degrade reads from now on;
    /// the lease's generation.
    fn after_call(
        &self,
        base: &Entry,
        ask: &Ask,
        asked: bool,
        granted: [u64; 3],
        totals: (u64, u64),
    ) -> u64 {
        let at = Instant::now();
        let mut leases = self.leases();
        let lease = self.lease_of(&mut leases, base, ask, at);
        let [credits, tokens, headroom] = granted;
        lease.credits += credits;
        lease.tokens = lease
            .tokens
            .saturating_add(i64::try_from(tokens).unwrap_or(i64::MAX));
        lease.headroom += headroom;
        lease.expires = at + self.lease;
        lease.day = totals.0.saturating_sub(lease.headroom);
        lease.month = totals.1.saturating_sub(lease.headroom);
        lease.ask = *ask;
        if asked {
            lease.refilling = false;
        }
        lease.generation
    }

    /// A call that asked for a lease got none (refused, failed, or dropped by a caller's
    /// cancel): another may ask, and the lease still owes the `debt` the call carried.
    fn unasked(&self, label: &str, debt: u64) {
        if let Some(lease) = self.leases().get_mut(label) {
            lease.refilling = false;
            lease.tokens = lease
                .tokens
                .saturating_sub(i64::try_from(debt).unwrap_or(i64::MAX));
        }
    }

    /// Gives an expired or replaced lease's headroom back to Redis and pays what it owes.
    fn retire(&self, lease: &Lease) {
        let owed = (-lease.tokens).max(0);
        self.correct(
            lease.entry.clone(),
            -i64::try_from(lease.headroom).unwrap_or(i64::MAX),
            owed,
        );
    }

    /// Asks Redis for the request `ask` (`own`; else only for a lease) and a lease of the
    /// caller's limits beside it; `Err` when Redis failed (now marked down).
    async fn call(
        self: &Arc<Self>,
        ask: &Ask,
        base: Entry,
        now: Now,
        own: bool,
    ) -> Result<Outcome, ()> {
        let (want, debt, asked) = self.before_call(&base, ask, own);
        // However the call ends short of a grant, even dropped mid-call by a caller's cancel.
        let mut asking = Asking {
            store: self,
            label: asked.then(|| Arc::clone(&base.label)),
            debt,
        };
        let [day_key, month_key] = spend_keys(&base);
        let opt = |n: Option<Nanodollars>| n.map_or(-1, |n| n.0 as i64);
        let mut invocation = self.admit.prepare_invoke();
        invocation
            .key(key(&base.label, "requests"))
            .key(key(&base.label, "tokens"))
            .key(day_key)
            .key(month_key)
            .arg(ask.requests.map_or(0.0, |g| g.interval_us))
            .arg(ask.requests.map_or(0.0, |g| g.tolerance_us))
            .arg(ask.tokens.map_or(0.0, |g| g.interval_us))
            .arg(ask.tokens.map_or(0.0, |g| g.tolerance_us))
            .arg(ask.input_tokens)
            .arg(opt(ask.day_budget))
            .arg(opt(ask.month_budget))
            .arg(ask.degrade_at)
            .arg(u8::from(ask.degradable))
            .arg(ask.chosen.0)
            .arg(ask.wide.0)
            .arg(ask.fast.0)
            .arg(Period::Day.secs_left(now.unix_secs) + PERIOD_MARGIN_SECS)
            .arg(Period::Month.secs_left(now.unix_secs) + PERIOD_MARGIN_SECS)
            .arg(u8::from(own))
            .arg(want.requests)
            .arg(want.tokens)
            .arg(debt)
            .arg(want.spend.0)
            .arg(ask.wide.0);
        let mut conn = self.conn.clone();
        let called =
            tokio::time::timeout(self.timeout, invocation.invoke_async::<Vec<i64>>(&mut conn))
                .await;
        let Ok(Ok(reply)) = called else {
            match called {
                Ok(Err(error)) => self.mark(false, Some(&error.to_string())),
                _ => self.mark(false, None),
            }
            return Err(());
        };
        self.mark(true, None);
        let at = |i: usize| reply.get(i).copied().unwrap_or(0);
        let wait = || Duration::from_micros(at(1).max(0) as u64);
        let outcome = match at(0) {
            0 => {
                let reserved = Nanodollars(at(3).max(0) as u64);
                let (day, month) = (at(4).max(0) as u64, at(5).max(0) as u64);
                asking.label = None;
                let held = if self.lease.is_zero() {
                    Held::Redis(Arc::clone(self))
                } else {
                    let granted = [6, 7, 8].map(|i| at(i).max(0) as u64);
                    Held::Lease(
                        Arc::clone(self),
                        self.after_call(&base, ask, asked, granted, (day, month)),
                    )
                };
                return Ok(Outcome::Admitted {
                    spend: Spend {
                        degraded: at(1) == 1,
                        narrowed: at(2) == 1,
                        reserved,
                    },
                    day: Nanodollars(day),
                    month: Nanodollars(month),
                    entry: Entry { reserved, ..base },
                    held,
                });
            }
            1 => Outcome::Refused(Refused::Rate(Limit::Requests, wait())),
            2 => Outcome::Refused(Refused::Rate(Limit::Tokens, wait())),
            3 => Outcome::Refused(Refused::Budget(Period::Day)),
            _ => Outcome::Refused(Refused::Budget(Period::Month)),
        };
        // Refused before the script charged it, the lease's debt is still owed (`asking`).
        Ok(outcome)
    }

    /// Settles a reservation made under lease `generation`: into that lease while it lasts
    /// (its headroom goes back to Redis when it is renewed or expires), else in Redis.
    pub(super) fn settle(&self, entry: Entry, generation: u64, spend: i64, tokens: i64) {
        let mut leases = self.leases();
        let Some(lease) = leases
            .get_mut(&*entry.label)
            .filter(|lease| lease.generation == generation)
        else {
            drop(leases);
            self.correct(entry, spend, tokens);
            return;
        };
        lease.headroom += spend.min(0).unsigned_abs();
        // A real cost above its worst case (never, while worst cases are true bounds) is
        // taken from the headroom, and what the headroom lacks is added in Redis.
        let extra = spend.max(0).unsigned_abs();
        let taken = extra.min(lease.headroom);
        lease.headroom -= taken;
        lease.day = lease.day.saturating_add_signed(spend);
        lease.month = lease.month.saturating_add_signed(spend);
        lease.tokens = lease.tokens.saturating_sub(tokens);
        let used = entry.input_tokens.saturating_add_signed(tokens);
        if used > 0 {
            lease.unit_tokens = used;
        }
        drop(leases);
        if extra > taken {
            self.correct(entry, (extra - taken) as i64, 0);
        }
    }

    /// Queues a correction of a reservation made in Redis.
    pub(super) fn correct(&self, entry: Entry, spend: i64, tokens: i64) {
        if spend == 0 && tokens == 0 {
            return;
        }
        if self.settle.try_send((entry, spend, tokens)).is_err() {
            tracing::warn!(
                "limit store settlement queue full: a reservation stays counted at its worst case"
            );
        }
    }

    /// Retires every lease past its lifetime.
    fn expire_leases(&self) {
        let at = Instant::now();
        self.leases().retain(|_, lease| {
            let keep = at < lease.expires;
            if !keep {
                self.retire(lease);
            }
            keep
        });
    }
}

/// A call asking for `label`'s lease, carrying `debt` tokens the lease owed: unless it got
/// its grant (`label` taken), the lease may be asked for again and still owes the debt.
struct Asking<'a> {
    store: &'a RedisLimits,
    label: Option<Arc<str>>,
    debt: u64,
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        if let Some(label) = &self.label {
            self.store.unasked(label, self.debt);
        }
    }
}

/// Refills `label`'s lease from Redis, off the caller's path.
async fn refill_lease(store: Arc<RedisLimits>, label: Arc<str>) {
    let ask = store.leases().get(&*label).map(|lease| lease.ask);
    if let Some(ask) = ask
        && store.is_up()
    {
        let now = Now::get();
        let base = entry(&label, &ask, now, Nanodollars(0));
        // A failure is already marked (store down): the lease runs out, then on_store_down.
        let _ = store.call(&ask, base, now, false).await;
    } else {
        store.unasked(&label, 0);
    }
}

/// Retires expired leases every lease lifetime while the store lives, so a quiet caller's
/// unused headroom goes back to Redis within about two lifetimes.
async fn expire(store: Weak<RedisLimits>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(store) = store.upgrade() else {
            return;
        };
        store.expire_leases();
    }
}

/// Writes queued corrections, one script call each; one that fails is dropped (its worst
/// case stays counted), as the store's outage is already visible.
async fn settle_queue(
    mut conn: ConnectionManager,
    mut queue: mpsc::Receiver<(Entry, i64, i64)>,
    timeout: Duration,
) {
    let script = Script::new(CORRECT);
    while let Some((entry, spend, tokens)) = queue.recv().await {
        let [day_key, month_key] = spend_keys(&entry);
        let mut invocation = script.prepare_invoke();
        invocation
            .key(key(&entry.label, "tokens"))
            .key(day_key)
            .key(month_key)
            .arg(entry.token_interval_us.unwrap_or(0.0))
            .arg(tokens)
            .arg(spend);
        match tokio::time::timeout(timeout, invocation.invoke_async::<i64>(&mut conn)).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::debug!(%error, "limit store settlement failed"),
            Err(_) => tracing::debug!("limit store settlement timed out"),
        }
    }
}

/// Pings the store every [`PROBE_EVERY`] while it lives, marking it up or down.
async fn probe(store: Weak<RedisLimits>) {
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let Some(store) = store.upgrade() else {
            return;
        };
        let mut conn = store.conn.clone();
        let ping = redis::cmd("PING");
        match tokio::time::timeout(store.timeout, ping.query_async::<()>(&mut conn)).await {
            Ok(Ok(())) => store.mark(true, None),
            Ok(Err(error)) => store.mark(false, Some(&error.to_string())),
            Err(_) => store.mark(false, None),
        }
    }
}
