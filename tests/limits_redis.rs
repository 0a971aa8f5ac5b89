//! Callers' limits shared through a real `redis-server` (started here on a free loopback port,
//! persistence off) by real router processes: two routers never spend more than one budget
//! between them, Redis killed mid-test gives each caller its `on_store_down`, and the Lua
//! script decides as core's arithmetic (the in-process store) does.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::{path::PathBuf, sync::Arc, time::Duration};

use common::{
    exposition::Scrape,
    process::{Proc, field, serve_simulated},
    redis::RedisServer,
};
use prompt_router::{
    limits::{Limit, Limiter},
    pb::{self, prompt_router_client::PromptRouterClient},
};
use prompt_router_core::{
    caller::{CallerPolicy, Callers, StoreDown},
    config::LimitStoreConfig,
    cost::Nanodollars,
    limits::{Ask, Gcra, Period},
};
use tonic::{Code, transport::Channel};

/// A router process with `config` (TOML) as its config file: its client and metrics URL.
async fn spawn(name: &str, config: &str) -> (Proc, PromptRouterClient<Channel>, String) {
    let dir = std::env::temp_dir().join(format!("router-limits-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path: PathBuf = dir.join("router.toml");
    std::fs::write(&path, config).unwrap();
    let router = Proc::spawn(&mut serve_simulated(&["--config", path.to_str().unwrap()]));
    let serving = router.wait_for_line("grpc_addr");
    let grpc = field(&serving, "grpc_addr").unwrap();
    let metrics = format!(
        "http://{}/metrics",
        field(&serving, "metrics_addr").unwrap()
    );
    let client = PromptRouterClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    (router, client, metrics)
}

fn request(caller: &str) -> pb::ConverseRequest {
    pb::ConverseRequest {
        messages: vec![common::user("Say something. [sim:tokens=100]")],
        inference_config: Some(pb::InferenceConfig {
            max_tokens: Some(100),
            ..Default::default()
        }),
        routing: Some(pb::RoutingOptions {
            mode: pb::RoutingMode::ForceStrong as i32,
            caller: caller.to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn nanos(usd: f64) -> u64 {
    (usd * 1e9).round() as u64
}

/// A limiter of the default callers, in Redis at `redis_url` (in process when `None`), with
/// leases of `lease` (zero: every ask in Redis).
fn limiter(redis_url: Option<String>, lease: Duration) -> Limiter {
    Limiter::new(
        &LimitStoreConfig {
            redis_url,
            timeout: Duration::from_secs(2),
            lease,
        },
        &Callers::default(),
    )
    .unwrap()
}

/// An ask that only a request rate of `rate` per second, `burst` at once, limits.
fn rate_only(rate: f64, burst: u32) -> Ask {
    Ask {
        requests: Some(Gcra::requests(rate, burst)),
        tokens: None,
        input_tokens: 0,
        day_budget: None,
        month_budget: None,
        degrade_at: 1.0,
        degradable: false,
        chosen: Nanodollars(0),
        wide: Nanodollars(0),
        fast: Nanodollars(0),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_routers_share_one_budget_through_one_redis() {
    let redis = RedisServer::start();
    let budget = 0.02;
    let config = format!(
        "[callers.team]\nusd_per_day = {budget}\ndegrade_at = 0.5\n[limits]\nredis_url = \"{}\"\n",
        redis.url()
    );
    let mut routers = Vec::new();
    for n in 0..2 {
        routers.push(spawn(&format!("shared{n}"), &config).await);
    }
    // Three clients on each router, each asking until refused.
    let mut tasks = Vec::new();
    for (n, (_, client, _)) in routers.iter().enumerate() {
        for _ in 0..3 {
            let mut client = client.clone();
            tasks.push(tokio::spawn(async move {
                let (mut spent, mut served) = (0u64, 0u32);
                loop {
                    match client.converse(request("team")).await {
                        Ok(reply) => {
                            spent += nanos(reply.into_inner().cost_usd);
                            served += 1;
                        }
                        Err(status) => {
                            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                            assert!(
                                status.message().contains("callers.team.usd_per_day"),
                                "{status:?}"
                            );
                            return (n, spent, served);
                        }
                    }
                }
            }));
        }
    }
    let (mut spent, mut served) = (0u64, [0u32; 2]);
    for task in tasks {
        let (n, s, count) = task.await.unwrap();
        spent += s;
        served[n] += count;
    }
    let budget_nanos = nanos(budget);
    assert!(served.iter().all(|&s| s > 0), "{served:?}");
    assert!(spent <= budget_nanos, "spent {spent} n$ of {budget_nanos}");
    assert!(
        spent > budget_nanos * 8 / 10,
        "spent {spent} n$ of {budget_nanos}"
    );
    // Every reservation is settled to the real cost in Redis: its day key is the replies' sum.
    let key = spend_key("team", Period::Day);
    let conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let (conn, key) = (&conn, &key);
    common::eventually("the day key settled to the replies' sum", || async move {
        stored(conn, key).await == Some(spent)
    })
    .await;
    for (_, _, metrics) in &routers {
        let scrape = Scrape::parse(&common::http_get(metrics).await);
        assert_eq!(scrape.value("router_limit_store_up"), 1.0);
        assert!(scrape.value(r#"router_limited_total{caller="team",limit="usd_per_day"}"#) >= 1.0);
    }
}

/// The first log line of `router` that holds `text`.
fn wait_for_text(router: &Proc, text: &str) -> String {
    loop {
        let line = router
            .lines
            .recv_timeout(Duration::from_secs(30))
            .expect("process output");
        if line.contains(text) {
            return line;
        }
    }
}

async fn until_store_up(metrics: &str, want: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let scrape = Scrape::parse(&common::http_get(metrics).await);
        if scrape
            .series
            .get("router_limit_store_up")
            .map(|v| v.parse::<f64>().unwrap())
            == Some(want)
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "router_limit_store_up never {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_each_caller_gets_its_on_store_down() {
    let redis = RedisServer::start();
    let port = redis.port;
    // `keep` fails open (one request per 100 s, three at once), `strict` closed.
    let config = format!(
        "[callers.keep]\nrequests_per_second = 0.01\nburst = 3\non_store_down = \"open\"\n\
         [callers.strict]\nrequests_per_second = 100\non_store_down = \"closed\"\n\
         [limits]\nredis_url = \"{}\"\nlease_ms = 100\n",
        redis.url()
    );
    let (router, mut client, metrics) = spawn("down", &config).await;
    client.converse(request("keep")).await.unwrap();
    client.converse(request("strict")).await.unwrap();
    until_store_up(&metrics, 1.0).await;

    drop(redis);
    // Open: still served, from this router's own counts (a fresh burst of three)...
    for _ in 0..3 {
        client
            .converse(request("keep"))
            .await
            .expect("served while Redis is down");
    }
    until_store_up(&metrics, 0.0).await;
    let line = wait_for_text(&router, "limit store is down");
    assert!(line.contains("WARN"), "{line}");
    // ...and limited by them.
    let status = client.converse(request("keep")).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status
            .message()
            .contains("callers.keep.requests_per_second"),
        "{status:?}"
    );
    // Closed: once the lease `strict` took from Redis with its first request has expired
    // (spending it is fine: it is reserved there), UNAVAILABLE naming the setting, not the
    // server.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = client.converse(request("strict")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("limits.redis_url"), "{status:?}");
    assert!(
        status.message().contains("callers.strict.on_store_down"),
        "{status:?}"
    );
    assert!(!status.message().contains(&port.to_string()), "{status:?}");
    let scrape = Scrape::parse(&common::http_get(&metrics).await);
    assert_eq!(
        scrape.value(r#"router_limited_total{caller="strict",limit="store_down"}"#),
        1.0
    );

    let _redis = RedisServer::on(port);
    until_store_up(&metrics, 1.0).await;
    wait_for_text(&router, "limit store is up");
    client
        .converse(request("strict"))
        .await
        .expect("served once Redis is back");
}

/// The Lua script and core's arithmetic (the in-process store) decide alike: the same asks,
/// settled the same way, get the same degrade, narrowing, reservation and refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_script_decides_as_the_in_process_store() {
    let redis = RedisServer::start();
    // Every ask in Redis, to compare the script with the in-process store.
    let (local, shared) = (
        limiter(None, Duration::ZERO),
        limiter(Some(redis.url()), Duration::ZERO),
    );
    let label: Arc<str> = Arc::from("other");
    let policy = CallerPolicy::default();
    let mut rng = fastrand::Rng::with_seed(14);
    let (mut admitted, mut degraded, mut refused) = (0, 0, 0);
    let key = spend_key("other", Period::Day);
    let conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut spent = 0u64;
    for _ in 0..400 {
        let chosen = if rng.u8(..4) == 0 {
            rng.u64(1..3_000_000)
        } else {
            rng.u64(1..100_000)
        };
        let fast = rng.u64(1..=chosen);
        let ask = Ask {
            requests: None,
            tokens: None,
            input_tokens: 0,
            day_budget: Some(Nanodollars(20_000_000)),
            month_budget: Some(Nanodollars(rng.u64(16_000_000..24_000_000))),
            degrade_at: if rng.bool() { 0.6 } else { 1.0 },
            degradable: rng.bool(),
            chosen: Nanodollars(chosen),
            wide: Nanodollars(chosen + rng.u64(0..500_000) * u64::from(rng.bool())),
            fast: Nanodollars(fast),
        };
        let a = local.admit(&label, "callers.default", &policy, &ask).await;
        let b = shared.admit(&label, "callers.default", &policy, &ask).await;
        match (a, b) {
            (Ok(a), Ok(b)) => {
                assert_eq!(
                    (a.degraded, a.narrowed),
                    (b.degraded, b.narrowed),
                    "{ask:?}"
                );
                admitted += 1;
                degraded += usize::from(a.degraded);
                let (a, b) = (a.reservation.unwrap(), b.reservation.unwrap());
                assert_eq!(a.reserved(), b.reserved(), "{ask:?}");
                // Settle both to the same share of what was reserved, or release both.
                let share = rng.u64(0..=100);
                let actual = Nanodollars(a.reserved().0 * share / 100);
                for reservation in [a, b] {
                    if share > 10 {
                        reservation.settle(actual, 0);
                    }
                }
                if share > 10 {
                    spent += actual.0;
                }
            }
            (Err(a), Err(b)) => {
                assert_eq!(a, b, "{ask:?}");
                refused += 1;
            }
            (a, b) => panic!("in process {a:?}, Redis {b:?} for {ask:?}"),
        }
        // Redis settles from a queue: wait for it before the next ask.
        let (conn, key) = (&conn, &key);
        common::eventually("Redis settled", || async move {
            stored(conn, key).await.unwrap_or(0) == spent
        })
        .await;
    }
    assert!(
        admitted > 50 && degraded > 5 && refused > 5,
        "{admitted} {degraded} {refused}"
    );
}

/// `calls` of `INFO commandstats`' `cmdstat_evalsha` (every script call: admissions,
/// lease refills and settlements).
async fn evalsha_calls(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

fn today(period: Period) -> String {
    period.key(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
}

/// The Redis key of `caller`'s spend in the current `period`.
fn spend_key(caller: &str, period: Period) -> String {
    format!(
        "prompt-router:limits:{{{caller}}}:usd:{}:{}",
        period.as_str(),
        today(period)
    )
}

/// The nano-dollars Redis holds under `key`; `None` when there is no such key.
async fn stored(conn: &redis::aio::MultiplexedConnection, key: &str) -> Option<u64> {
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn.clone())
        .await
        .unwrap()
}

/// With leases, 1,000 requests of one caller are mostly admitted without a Redis call, and
/// once the leases have expired Redis holds exactly what the replies cost. (Leases of a
/// second, so that the count of refills, one per half lifetime of a busy lease, does not
/// depend on how fast a loaded machine serves the requests.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_admit_without_redis_and_settle_to_the_exact_spend() {
    let redis = RedisServer::start();
    let config = format!(
        "[callers.team]\nrequests_per_second = 5000\ntokens_per_minute = 100000000\n\
         usd_per_day = 1000.0\nusd_per_month = 10000.0\n[limits]\nredis_url = \"{}\"\n\
         lease_ms = 1000\n",
        redis.url()
    );
    let raw: prompt_router_core::config::RawConfig = toml::from_str(&config).unwrap();
    let router =
        common::start_checked(prompt_router_core::config::Config::try_from(raw).unwrap()).await;
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let before = evalsha_calls(&mut conn).await;
    let (requests, clients) = (1_000u64, 8u64);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut client = router.client.clone();
        tasks.push(tokio::spawn(async move {
            let mut spent = 0u64;
            for _ in 0..requests / clients {
                let reply = client.converse(request("team")).await.unwrap();
                spent += nanos(reply.into_inner().cost_usd);
            }
            spent
        }));
    }
    let mut spent = 0;
    for task in tasks {
        spent += task.await.unwrap();
    }
    let calls = evalsha_calls(&mut conn).await - before;
    assert!(
        calls < requests / 4,
        "{calls} script calls for {requests} requests"
    );
    for period in [Period::Day, Period::Month] {
        let key = spend_key("team", period);
        let (conn, key) = (&conn, &key);
        common::eventually("leases given back", || async move {
            stored(conn, key).await == Some(spent)
        })
        .await;
    }
}

/// Two limiters (two routers) on one Redis share a caller's request rate: together they
/// admit no more than the rate and burst allow plus one lease each, however they interleave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_limiters_share_one_request_rate_within_a_lease_each() {
    let redis = RedisServer::start();
    let lease = Duration::from_millis(100);
    let shared = || Arc::new(limiter(Some(redis.url()), lease));
    let (rate, burst) = (200.0, 20u32);
    let ask = rate_only(rate, burst);
    // A lease is rate × lifetime = 20 credits, capped at half the burst.
    let per_lease = ask.lease(lease, 0).requests;
    assert_eq!(per_lease, 10);
    let started = std::time::Instant::now();
    let run = Duration::from_millis(1_500);
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let limiter = shared();
        for _ in 0..2 {
            let limiter = Arc::clone(&limiter);
            tasks.push(tokio::spawn(async move {
                let label: Arc<str> = Arc::from("other");
                let policy = CallerPolicy::default();
                let (mut admitted, mut refused) = (0u64, 0u64);
                while started.elapsed() < run {
                    match limiter
                        .admit(&label, "callers.default", &policy, &ask)
                        .await
                    {
                        Ok(_) => admitted += 1,
                        Err(limited) => {
                            assert!(
                                limited.to_string().contains("requests_per_second"),
                                "{limited}"
                            );
                            refused += 1;
                            tokio::task::yield_now().await;
                        }
                    }
                }
                (admitted, refused)
            }));
        }
    }
    let (mut admitted, mut refused) = (0, 0);
    for task in tasks {
        let (a, r) = task.await.unwrap();
        admitted += a;
        refused += r;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let most = f64::from(burst) + rate * elapsed + 2.0 * per_lease as f64;
    assert!(
        (admitted as f64) <= most,
        "{admitted} admitted in {elapsed:.2} s, at most {most:.0}"
    );
    // Not refusing everything: more than the burst and both leases.
    assert!(
        admitted > u64::from(burst) + 2 * per_lease && refused > 0,
        "{admitted} admitted, {refused} refused in {elapsed:.2} s"
    );
}

/// A lease taken before Redis went down is still spent (it is reserved there), then the
/// caller's `on_store_down` applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_outlives_redis_then_on_store_down_applies() {
    let redis = RedisServer::start();
    // Leases long enough to outlast the kill however loaded the machine.
    let limiter = limiter(Some(redis.url()), Duration::from_secs(10));
    let label: Arc<str> = Arc::from("other");
    let policy = CallerPolicy {
        on_store_down: StoreDown::Closed,
        ..CallerPolicy::default()
    };
    let burst = 10;
    let ask = rate_only(10.0, burst);
    // The first asks Redis, and takes half the burst as its lease.
    limiter
        .admit(&label, "callers.default", &policy, &ask)
        .await
        .unwrap();
    drop(redis);
    let mut served = 0;
    let refused = loop {
        match limiter
            .admit(&label, "callers.default", &policy, &ask)
            .await
        {
            Ok(_) => served += 1,
            Err(limited) => break limited,
        }
        assert!(served < 100, "never refused");
    };
    assert_eq!(served, burst / 2);
    assert_eq!(refused.limit, Limit::StoreDown, "{refused}");
}

/// A request cancelled while it asks Redis for a lease (its call dropped mid-flight) does not
/// keep the caller's later requests from taking one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_lease_request_does_not_stop_leasing() {
    let redis = RedisServer::start();
    let limiter = limiter(Some(redis.url()), Duration::from_secs(10));
    let label: Arc<str> = Arc::from("other");
    let policy = CallerPolicy {
        on_store_down: StoreDown::Closed,
        ..CallerPolicy::default()
    };
    let ask = rate_only(10.0, 10);
    // Connected (by another caller's request), then Redis paused: the first request asks
    // Redis for a lease and is dropped waiting for the answer.
    limiter
        .admit(&Arc::from("warm"), "callers.default", &policy, &ask)
        .await
        .unwrap();
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1_000)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let cancelled = tokio::time::timeout(
        Duration::from_millis(100),
        limiter.admit(&label, "callers.default", &policy, &ask),
    )
    .await;
    assert!(cancelled.is_err(), "answered while Redis is paused");
    // The pause ends: the next request asks Redis again.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    limiter
        .admit(&label, "callers.default", &policy, &ask)
        .await
        .unwrap();
    // That one took a lease: with Redis gone the next is served from it.
    drop(redis);
    limiter
        .admit(&label, "callers.default", &policy, &ask)
        .await
        .expect("served from the lease");
}
