//! Callers' limits shared through a real `redis-server` (started here on a free loopback port,
//! persistence off) by real router processes: two routers never spend more than one budget
//! between them, and Redis killed mid-test gives each caller its `on_store_down`.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::{path::PathBuf, time::Duration};

use common::{
    exposition::Scrape,
    process::{Proc, field, serve_simulated},
    redis::RedisServer,
};
use prompt_router::pb::{self, prompt_router_client::PromptRouterClient};
use prompt_router_core::limits::Period;
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
    let key = format!(
        "prompt-router:limits:{{team}}:usd:day:{}",
        Period::Day.key(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        )
    );
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut stored = 0;
    for _ in 0..100 {
        stored = redis::cmd("GET")
            .arg(&key)
            .query_async::<u64>(&mut conn)
            .await
            .unwrap();
        if stored == spent {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stored, spent, "{key}");
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
         [limits]\nredis_url = \"{}\"\n",
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
    // Closed: UNAVAILABLE naming the setting, not the server.
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
