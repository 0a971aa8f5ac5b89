//! Hostile clients against the release binary with its default config, and the router's peak
//! RSS (`VmHWM`) against the bound the README documents ("Memory and connections"), as
//! `prompt_router::server::memory_bound` computes it.
//!
//! `cargo bench --bench hostile` runs every scenario, each against a fresh router process
//! (with the simulator as a separate process upstream, so only the router is measured);
//! `cargo bench --bench hostile -- NAME…` runs some. Clients speak raw HTTP/2 with frames
//! encoded once, so the bench itself holds one copy of each payload however many calls it
//! makes. It exits 1 if a scenario goes over the bound.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/grpc_raw.rs"]
#[allow(dead_code)]
mod grpc_raw;
#[path = "../tests/common/process.rs"]
#[allow(dead_code)]
mod process;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use process::{BIN, Proc};
use prompt_router::{cli::single_prompt, pb};
use prost::Message as _;

/// How long each scenario pushes.
const PUSH: Duration = Duration::from_secs(12);

/// `CLIENTS=1` makes one call at a time per payload: with a large
/// `ROUTER__SERVER__MAX_INFLIGHT_REQUEST_BYTES`, the peak less the baseline is then what one
/// request costs, the figure admission's charges are set from.
fn clients(n: usize) -> usize {
    std::env::var("CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n)
}
/// Near the default `server.max_request_bytes` (20 MiB).
const NEAR_MAX: usize = 19_500_000;

/// A figure of `/proc/PID/status` (`VmRSS:`, `VmHWM:`…), in KiB.
fn status_kib(proc: &Proc, key: &str) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", proc.child.id())).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("field in /proc status")
}

/// The environment the image sets (`ENV` lines of `deploy/Dockerfile`): the bound holds for the
/// router as shipped. `HOSTILE_BARE=1` leaves it out.
fn image_env() -> Vec<(String, String)> {
    if std::env::var_os("HOSTILE_BARE").is_some() {
        return Vec::new();
    }
    let dockerfile = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/Dockerfile");
    std::fs::read_to_string(dockerfile)
        .expect("deploy/Dockerfile")
        .lines()
        .filter_map(|line| line.strip_prefix("ENV "))
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
}

fn router(endpoint: &str) -> (Proc, SocketAddr) {
    let proc = Proc::spawn(
        Command::new(BIN)
            .envs(image_env())
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .env("ROUTER__BEDROCK__ENDPOINT_URL", endpoint)
            .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
            .env("AWS_SECRET_ACCESS_KEY", "not-a-secret")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            // Start-up lines only: a line per refused request would cost the router CPU.
            .env(
                "RUST_LOG",
                "info,prompt_router::server::record=warn,prompt_router::server::admission=warn",
            ),
    );
    let addr = proc.wait_for_field("grpc_addr").parse().unwrap();
    (proc, addr)
}

/// Replies by gRPC code, and calls still open when the push ended.
#[derive(Default)]
struct Tally {
    codes: Mutex<BTreeMap<String, u64>>,
}

impl Tally {
    fn add(&self, what: impl Into<String>) {
        *self.codes.lock().unwrap().entry(what.into()).or_default() += 1;
    }

    fn summary(&self) -> String {
        let codes = self.codes.lock().unwrap();
        codes
            .iter()
            .map(|(code, n)| format!("{code} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The hostile payloads, each framed once.
struct Payloads {
    /// Plain words, near the size limit.
    text: Bytes,
    /// Control characters, which JSON escapes to six bytes each.
    escapes: Bytes,
    /// One-letter text blocks: about 5 wire bytes per element.
    blocks: Bytes,
    /// Five 3.75 MB images (PNG signature, then filler).
    images: Bytes,
    /// A small, ordinary question.
    small: Bytes,
    /// A small question the simulator answers after 20 s.
    slow: Bytes,
}

impl Payloads {
    fn new() -> Self {
        let blocks = pb::ConverseRequest {
            messages: vec![pb::Message {
                role: pb::Role::User as i32,
                content: vec![
                    pb::ContentBlock {
                        block: Some(pb::content_block::Block::Text("a".to_owned())),
                    };
                    NEAR_MAX / 5
                ],
            }],
            ..Default::default()
        };
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.resize(3_750_000, 7);
        let image = pb::ContentBlock {
            block: Some(pb::content_block::Block::Image(pb::Image {
                format: pb::ImageFormat::Png as i32,
                data: png,
            })),
        };
        let mut images = single_prompt("What is in these pictures?".to_owned());
        images.messages[0].content.extend(vec![image; 5]);
        Self {
            text: grpc_raw::frame(&single_prompt("word ".repeat(NEAR_MAX / 5)).encode_to_vec()),
            escapes: grpc_raw::frame(&single_prompt("\u{1}".repeat(NEAR_MAX)).encode_to_vec()),
            blocks: grpc_raw::frame(&blocks.encode_to_vec()),
            images: grpc_raw::frame(&images.encode_to_vec()),
            small: grpc_raw::frame(
                &single_prompt("What is the capital of France?".to_owned()).encode_to_vec(),
            ),
            slow: grpc_raw::frame(
                &single_prompt("Take your time [sim:ttft=20000]".to_owned()).encode_to_vec(),
            ),
        }
    }
}

/// `clients` connections, each making calls of `frame` to `method` one after another.
async fn flood(
    addr: SocketAddr,
    label: &'static str,
    method: &'static str,
    frame: Bytes,
    clients: usize,
    tally: Arc<Tally>,
) {
    let until = Instant::now() + PUSH;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (frame, tally) = (frame.clone(), Arc::clone(&tally));
        tasks.spawn(async move {
            let mut h2 = grpc_raw::connect(addr).await;
            while Instant::now() < until {
                let left = until.saturating_duration_since(Instant::now());
                let call = grpc_raw::call(&mut h2, method, frame.clone(), None);
                match tokio::time::timeout(left, call).await {
                    Ok(reply) => tally.add(format!("{label} {:?}", reply.code)),
                    Err(_) => tally.add(format!("{label} open at the end")),
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// `streams` calls that announce a near-maximum message, send 16 KiB of it and stall.
async fn trickle(addr: SocketAddr, streams: usize, tally: Arc<Tally>) {
    let mut head = vec![0];
    head.extend_from_slice(&u32::try_from(NEAR_MAX).unwrap().to_be_bytes());
    head.resize(5 + 16 * 1024, b'a');
    let head = Bytes::from(head);
    let until = Instant::now() + PUSH;
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in 0..streams.div_ceil(100) {
        let (head, tally) = (head.clone(), Arc::clone(&tally));
        let count = (streams - chunk * 100).min(100);
        tasks.spawn(async move {
            let h2 = grpc_raw::connect(addr).await;
            let mut open = Vec::new();
            for _ in 0..count {
                let (response, mut body) = h2
                    .clone()
                    .ready()
                    .await
                    .unwrap()
                    .send_request(grpc_raw::request("Converse", None), false)
                    .unwrap();
                body.send_data(head.clone(), false).unwrap();
                open.push((response, body));
            }
            for (response, _body) in open {
                let left = until.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, grpc_raw::reply(response)).await {
                    Ok(reply) => tally.add(format!("trickle {:?}", reply.code)),
                    Err(_) => tally.add("trickle still sending at the end"),
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// `calls` calls of `frame` at once, 100 to a connection, each left to run.
async fn hold(addr: SocketAddr, frame: Bytes, calls: usize, tally: Arc<Tally>) {
    let until = Instant::now() + PUSH;
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in 0..calls.div_ceil(100) {
        let (frame, tally) = (frame.clone(), Arc::clone(&tally));
        let count = (calls - chunk * 100).min(100);
        tasks.spawn(async move {
            let h2 = grpc_raw::connect(addr).await;
            let mut open = tokio::task::JoinSet::new();
            for _ in 0..count {
                let (mut h2, frame, tally) = (h2.clone(), frame.clone(), Arc::clone(&tally));
                open.spawn(async move {
                    let left = until.saturating_duration_since(Instant::now());
                    let call = grpc_raw::call(&mut h2, "Converse", frame, None);
                    match tokio::time::timeout(left, call).await {
                        Ok(reply) => tally.add(format!("slots {:?}", reply.code)),
                        Err(_) => tally.add("slots open at the end"),
                    }
                });
            }
            while open.join_next().await.is_some() {}
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// `n` HTTP/2 connections that handshake and then say nothing; those beyond
/// `server.max_connections` wait in the backlog.
async fn idle(addr: SocketAddr, n: usize, tally: Arc<Tally>) {
    let until = Instant::now() + PUSH;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let tally = Arc::clone(&tally);
        tasks.spawn(async move {
            let left = until.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, grpc_raw::connect(addr)).await {
                Ok(h2) => {
                    tally.add("idle connection made");
                    tokio::time::sleep_until(until.into()).await;
                    drop(h2);
                }
                Err(_) => tally.add("idle connection not made (backlog full)"),
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

type Scenario = (&'static str, &'static str);

const SCENARIOS: &[Scenario] = &[
    ("text", "64 clients: 19.5 MB Converse calls of plain text"),
    (
        "escapes",
        "64 clients: 19.5 MB of control characters (6 bytes each in JSON)",
    ),
    (
        "blocks",
        "64 clients: 3.9 million one-letter text blocks per call",
    ),
    ("images", "64 clients: five 3.75 MB images per call"),
    ("stream", "64 clients: 19.5 MB ConverseStream calls"),
    ("slots", "600 small calls the simulator answers after 20 s"),
    (
        "trickle",
        "600 calls announcing 19.5 MB, sending 16 KiB, then stalling",
    ),
    ("route", "128 clients: 19.5 MB Route calls"),
    ("idle", "4,000 idle HTTP/2 connections"),
    (
        "floods",
        "text, escapes, blocks, images, stream and route at once",
    ),
    ("all", "every scenario above at once"),
];

async fn push(name: &str, addr: SocketAddr, payloads: &Payloads, tally: &Arc<Tally>) {
    let t = || Arc::clone(tally);
    let mut load = tokio::task::JoinSet::new();
    let floods = ["text", "escapes", "blocks", "images", "stream", "route"];
    let every = name == "all";
    let mut add = |which: &str, job: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>| {
        if every || name == which || (name == "floods" && floods.contains(&which)) {
            load.spawn(job);
        }
    };
    add(
        "text",
        Box::pin(flood(
            addr,
            "text",
            "Converse",
            payloads.text.clone(),
            clients(64),
            t(),
        )),
    );
    add(
        "escapes",
        Box::pin(flood(
            addr,
            "escapes",
            "Converse",
            payloads.escapes.clone(),
            clients(64),
            t(),
        )),
    );
    add(
        "blocks",
        Box::pin(flood(
            addr,
            "blocks",
            "Converse",
            payloads.blocks.clone(),
            clients(64),
            t(),
        )),
    );
    add(
        "images",
        Box::pin(flood(
            addr,
            "images",
            "Converse",
            payloads.images.clone(),
            clients(64),
            t(),
        )),
    );
    add(
        "stream",
        Box::pin(flood(
            addr,
            "stream",
            "ConverseStream",
            payloads.text.clone(),
            clients(64),
            t(),
        )),
    );
    add(
        "slots",
        Box::pin(hold(addr, payloads.slow.clone(), 600, t())),
    );
    add("trickle", Box::pin(trickle(addr, 600, t())));
    add(
        "route",
        Box::pin(flood(
            addr,
            "route",
            "Route",
            payloads.text.clone(),
            clients(128),
            t(),
        )),
    );
    add("idle", Box::pin(idle(addr, 4000, t())));
    // Ordinary traffic beside the hostile kind, so the table shows whether it still gets in.
    load.spawn(flood(
        addr,
        "small",
        "Converse",
        payloads.small.clone(),
        4,
        t(),
    ));
    while load.join_next().await.is_some() {}
}

fn main() {
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    // Room for thousands of connections on both ends; the router inherits the limit.
    let _ = Command::new("prlimit")
        .args([
            "--pid",
            &std::process::id().to_string(),
            "--nofile=20000:20000",
        ])
        .status();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let sim = Proc::spawn(Command::new(BIN).args(["simulate", "--listen", "127.0.0.1:0"]));
    let endpoint = sim.wait_for_field("endpoint");
    let payloads = Payloads::new();
    let mut raw = prompt_router_core::config::RawConfig::default();
    if let Ok(bytes) = std::env::var("ROUTER__SERVER__MAX_INFLIGHT_REQUEST_BYTES") {
        raw.server.max_inflight_request_bytes = bytes.parse().unwrap();
    }
    let config = prompt_router_core::config::Config::try_from(raw).unwrap();
    let bound = prompt_router::server::memory_bound(&config) >> 20;
    println!("bound (prompt_router::server::memory_bound): {bound} MiB peak RSS");
    println!(
        "router environment from deploy/Dockerfile: {:?}",
        image_env()
    );
    println!("| scenario | baseline | peak RSS | replies |");
    println!("| --- | --- | --- | --- |");
    let mut over = false;
    for &(name, what) in SCENARIOS {
        if !wanted.is_empty() && !wanted.iter().any(|w| w == name) {
            continue;
        }
        let (router, addr) = router(&endpoint);
        let tally = Arc::new(Tally::default());
        runtime.block_on(async {
            let mut h2 = grpc_raw::connect(addr).await;
            let warm = grpc_raw::call(&mut h2, "Converse", payloads.small.clone(), None).await;
            assert_eq!(warm.code, tonic::Code::Ok, "{warm:?}");
        });
        let baseline = status_kib(&router, "VmRSS:") >> 10;
        runtime.block_on(push(name, addr, &payloads, &tally));
        let peak = status_kib(&router, "VmHWM:") >> 10;
        over |= peak > bound;
        println!(
            "| {name}: {what} | {baseline} MiB | {peak} MiB{} | {} |",
            if peak > bound { " (OVER)" } else { "" },
            tally.summary()
        );
    }
    drop(sim);
    if over {
        std::process::exit(1);
    }
}
