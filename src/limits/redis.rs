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
//! While Redis fails or is slower than `limits.redis_timeout_ms`, the store is down
//! (`router_limit_store_up` 0, one log line): admissions follow each caller's `on_store_down`
//! without trying Redis, and a background probe brings the store back when a `PING` answers.

use std::{
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use metrics::gauge;
use prompt_router_core::{
    cost::Nanodollars,
    limits::{Ask, Period, Spend},
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

/// Rates, then spend: the same steps as `Ask::spend` and `Gcra::admit` in core's `limits`.
/// Returns {0, degraded, narrowed, reserved, day, month}, {1, µs} (requests), {2, µs}
/// (tokens), {3} (day budget) or {4} (month budget).
const ADMIT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function gcra(key, interval, tolerance, units)
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  if tat - now > tolerance then return nil, math.ceil(tat - now - tolerance) end
  return tat + units * interval
end
local function keep(key, tat)
  redis.call('SET', key, string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
end
local req_interval, tok_interval = tonumber(ARGV[1]), tonumber(ARGV[3])
local new_req, new_tok, wait
if req_interval > 0 then
  new_req, wait = gcra(KEYS[1], req_interval, tonumber(ARGV[2]), 1)
  if not new_req then return {1, wait} end
end
if tok_interval > 0 then
  new_tok, wait = gcra(KEYS[2], tok_interval, tonumber(ARGV[4]), tonumber(ARGV[5]))
  if not new_tok then return {2, wait} end
end
local dbud, mbud = tonumber(ARGV[6]), tonumber(ARGV[7])
local day, month, degraded, narrowed, reserved = 0, 0, 0, 0, 0
if dbud >= 0 or mbud >= 0 then
  day = tonumber(redis.call('GET', KEYS[3]) or '0')
  month = tonumber(redis.call('GET', KEYS[4]) or '0')
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
  day = redis.call('INCRBY', KEYS[3], string.format('%.0f', reserved))
  redis.call('EXPIRE', KEYS[3], ARGV[13])
  month = redis.call('INCRBY', KEYS[4], string.format('%.0f', reserved))
  redis.call('EXPIRE', KEYS[4], ARGV[14])
end
if new_req then keep(KEYS[1], new_req) end
if new_tok then keep(KEYS[2], new_tok) end
return {0, degraded, narrowed, reserved, day, month}
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
}

impl std::fmt::Debug for RedisLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimits")
            .field("up", &self.up)
            .finish_non_exhaustive()
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
    /// The store at `url`, connecting lazily; starts its probe and settlement tasks.
    pub fn open(url: &str, timeout: Duration) -> anyhow::Result<Arc<Self>> {
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
        });
        gauge!(telemetry::LIMIT_STORE_UP).set(1.0);
        tokio::spawn(settle_queue(conn, queue, timeout));
        tokio::spawn(probe(Arc::downgrade(&store)));
        Ok(store)
    }

    /// Whether the store answered last time it was asked.
    pub(super) fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
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

    /// Admits `ask` in Redis; `Err` when Redis failed (now marked down).
    pub(super) async fn admit(
        self: &Arc<Self>,
        label: &Arc<str>,
        ask: &Ask,
        now: Now,
    ) -> Result<Outcome, ()> {
        let base = entry(label, ask, now, Nanodollars(0));
        let [day_key, month_key] = spend_keys(&base);
        let opt = |n: Option<Nanodollars>| n.map_or(-1, |n| n.0 as i64);
        let mut invocation = self.admit.prepare_invoke();
        invocation
            .key(key(label, "requests"))
            .key(key(label, "tokens"))
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
            .arg(Period::Month.secs_left(now.unix_secs) + PERIOD_MARGIN_SECS);
        let mut conn = self.conn.clone();
        let called =
            tokio::time::timeout(self.timeout, invocation.invoke_async::<Vec<i64>>(&mut conn))
                .await;
        let reply = match called {
            Ok(Ok(reply)) => reply,
            Ok(Err(error)) => {
                self.mark(false, Some(&error.to_string()));
                return Err(());
            }
            Err(_) => {
                self.mark(false, None);
                return Err(());
            }
        };
        self.mark(true, None);
        let at = |i: usize| reply.get(i).copied().unwrap_or(0);
        let wait = || Duration::from_micros(at(1).max(0) as u64);
        Ok(match at(0) {
            0 => {
                let reserved = Nanodollars(at(3).max(0) as u64);
                Outcome::Admitted {
                    spend: Spend {
                        degraded: at(1) == 1,
                        narrowed: at(2) == 1,
                        reserved,
                    },
                    day: Nanodollars(at(4).max(0) as u64),
                    month: Nanodollars(at(5).max(0) as u64),
                    entry: Entry { reserved, ..base },
                    held: Held::Redis(Arc::clone(self)),
                }
            }
            1 => Outcome::Refused(Refused::Rate(Limit::Requests, wait())),
            2 => Outcome::Refused(Refused::Rate(Limit::Tokens, wait())),
            3 => Outcome::Refused(Refused::Budget(Period::Day)),
            _ => Outcome::Refused(Refused::Budget(Period::Month)),
        })
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
