//! The transport under hostile clients: running out of file descriptors, connections that idle
//! or never speak, requests that trickle, a saturated router, requests that would cost more
//! memory than the router sets aside, and bytes that are not protobuf. Real server (in-process on 127.0.0.1:0, or the binary as a child process), real
//! clients: tonic, or raw HTTP/2 for what a tonic client would never send.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::{
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::{
    ask,
    exposition::Scrape,
    grpc_raw,
    process::{BIN, Proc, serve_simulated},
    start_with,
};
use prompt_router::pb;
use prost::Message as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::Code;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads until the server closes the connection; fails if it has not within `within`.
async fn closed_by_server(stream: &mut tokio::net::TcpStream, within: Duration) -> Vec<u8> {
    let mut seen = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut seen))
        .await
        .expect("the server closes the connection")
        .map(|_| seen)
        .unwrap_or_default()
}

/// CPU time (user + system) the process has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let per_second: u64 = String::from_utf8(
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .expect("getconf")
            .stdout,
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

#[test]
fn running_out_of_descriptors_neither_spins_nor_floods_the_log() {
    // `prlimit` sets the limit and execs the router: the child is the router itself.
    let mut command = Command::new("prlimit");
    command.args([
        "--nofile=128:128",
        "--",
        BIN,
        "serve",
        "--simulate",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let router = Proc::spawn(&mut command);
    let serving = router.wait_serving();
    let (grpc, metrics) = (serving.grpc, serving.metrics);
    let pid = router.child.id();

    // Far more idle connections than descriptors, on both ports: the kernel completes them
    // into the backlogs, and both accept loops find no descriptor to take them with.
    let held: Vec<std::net::TcpStream> = (0..300)
        .map(|i| std::net::TcpStream::connect(if i % 2 == 0 { grpc } else { metrics }))
        .collect::<Result<_, _>>()
        .expect("the kernel accepts into the backlog");
    let deadline = Instant::now() + Duration::from_secs(20);
    while open_descriptors(pid) < 120 {
        assert!(
            Instant::now() < deadline,
            "the router never ran out of descriptors"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    while router.lines.try_recv().is_ok() {}

    let (cpu_before, since) = (cpu_time(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let (cpu, window) = (cpu_time(pid) - cpu_before, since.elapsed());
    let lines: Vec<String> = router.lines.try_iter().collect();
    let share = cpu.as_secs_f64() / window.as_secs_f64();
    println!(
        "out of descriptors ({} open): {:.0}% of a core and {} log lines in {window:?}",
        open_descriptors(pid),
        share * 100.0,
        lines.len()
    );
    // Spinning on EMFILE takes a whole core; backing off, next to nothing.
    assert!(
        share < 0.3,
        "{:.0}% of a core while out of descriptors",
        share * 100.0
    );
    // The error is logged, by each listener at most about once a second.
    assert!(
        lines.iter().any(|l| l.contains("accept error")),
        "{lines:#?}"
    );
    assert!(lines.len() <= 12, "{} log lines in {window:?}", lines.len());

    // Once the connections go, the router accepts and answers again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let health = Command::new(BIN)
            .args(["health", "--addr", &grpc.to_string()])
            .output()
            .expect("health");
        if health.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "the router did not recover");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test]
async fn a_grpc_connection_that_never_sends_the_preface_is_closed() {
    let router = start_with(|c| c.server.header_read_timeout_ms = 300).await;
    let mut silent = tokio::net::TcpStream::connect(router.running.grpc_addr)
        .await
        .unwrap();
    let mut half = tokio::net::TcpStream::connect(router.running.grpc_addr)
        .await
        .unwrap();
    half.write_all(&PREFACE[..10]).await.unwrap();
    let started = Instant::now();
    closed_by_server(&mut silent, Duration::from_secs(10)).await;
    closed_by_server(&mut half, Duration::from_secs(10)).await;
    println!("no preface: both closed after {:?}", started.elapsed());
}

#[tokio::test]
async fn an_idle_grpc_connection_gets_goaway_and_a_busy_one_is_kept() {
    let mut router = start_with(|c| c.server.idle_timeout_ms = 500).await;
    // A call longer than the idle timeout runs to its end on its connection.
    let (events, error) = router.stream(ask("Slowly [sim:ttft=1500]")).await;
    assert!(error.is_none(), "{error:?}");
    assert!(events.len() > 2);

    // A connection with no call open is closed with GOAWAY: the h2 client's connection
    // future ends cleanly, though its handle to send requests is still held.
    let tcp = tokio::net::TcpStream::connect(router.running.grpc_addr)
        .await
        .unwrap();
    let (_send, connection) = h2::client::handshake(tcp).await.expect("handshake");
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(30), connection)
        .await
        .expect("closed for idleness")
        .expect("closed gracefully, with GOAWAY");
    println!("idle connection closed after {:?}", started.elapsed());

    // The client's own connection, idle as long, was closed too; it reconnects. (Sent while
    // its close is under way, a tonic client's call can fail: grpc-rust#2185.)
    tokio::time::sleep(Duration::from_millis(1500)).await;
    router.ask("still there?").await.expect("answer");
}

#[tokio::test]
async fn metrics_connections_that_idle_or_stall_are_closed() {
    let router = start_with(|c| c.server.header_read_timeout_ms = 300).await;
    let addr = router.running.metrics_addr;
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut half = tokio::net::TcpStream::connect(addr).await.unwrap();
    half.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut kept = tokio::net::TcpStream::connect(addr).await.unwrap();
    kept.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    closed_by_server(&mut silent, Duration::from_secs(10)).await;
    closed_by_server(&mut half, Duration::from_secs(10)).await;
    // Kept alive after its answer, then closed once idle.
    let answered = closed_by_server(&mut kept, Duration::from_secs(10)).await;
    assert!(answered.starts_with(b"HTTP/1.1 200"));
}

#[tokio::test]
async fn a_request_that_trickles_is_cut_off_at_the_read_timeout() {
    let mut router = start_with(|c| {
        c.server.request_read_timeout_ms = 500;
        c.server.max_concurrency = 1;
    })
    .await;
    let h2 = grpc_raw::connect(router.running.grpc_addr).await;
    let (response, mut body) = h2
        .clone()
        .ready()
        .await
        .unwrap()
        .send_request(grpc_raw::request("Converse", None), false)
        .unwrap();
    let framed = grpc_raw::frame(&ask("hello").encode_to_vec());
    body.send_data(framed.slice(..3), false).unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(10), grpc_raw::reply(response))
        .await
        .expect("an answer without the rest of the body");
    assert_eq!(reply.code, Code::DeadlineExceeded, "{reply:?}");
    assert!(
        reply.message.contains("server.request_read_timeout_ms"),
        "{reply:?}"
    );
    // The trickler's slot is free again.
    router.ask("next").await.expect("answer");
}

#[tokio::test]
async fn a_saturated_router_refuses_before_reading_the_body() {
    let router = start_with(|c| c.server.max_concurrency = 1).await;
    let mut client = router.client.clone();
    let busy = tokio::spawn(async move { client.converse(ask("Busy [sim:ttft=3000]")).await });
    router.until_upstream_in_flight(1).await;

    // Headers only: a router that decoded before admitting would wait for the body for ever.
    let mut h2 = grpc_raw::connect(router.running.grpc_addr).await;
    let (response, _body) = h2
        .clone()
        .ready()
        .await
        .unwrap()
        .send_request(grpc_raw::request("Converse", Some("saturated-1")), false)
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(10), grpc_raw::reply(response))
        .await
        .expect("refused without the body");
    assert_eq!(reply.code, Code::ResourceExhausted, "{reply:?}");
    assert!(
        reply.message.contains("server.max_concurrency"),
        "{reply:?}"
    );
    assert_eq!(reply.request_id.as_deref(), Some("saturated-1"));
    let _ = &mut h2;
    busy.await.unwrap().expect("the admitted call completes");
}

#[tokio::test]
async fn route_calls_take_slots_of_their_own() {
    let mut router = start_with(|c| c.server.max_route_concurrency = 1).await;
    // One Route call holds the only Route slot while its body trickles in.
    let h2 = grpc_raw::connect(router.running.grpc_addr).await;
    let (_response, mut body) = h2
        .ready()
        .await
        .unwrap()
        .send_request(grpc_raw::request("Route", None), false)
        .unwrap();
    body.send_data(Bytes::from_static(&[0, 0]), false).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let refused = router
        .client
        .route(ask("hi"))
        .await
        .expect_err("no Route slot free");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("server.max_route_concurrency"),
        "{refused:?}"
    );
    // Model calls have their own slots.
    router.ask("a model call").await.expect("answer");
}

#[tokio::test]
async fn memory_is_charged_from_the_length_prefix_before_the_body() {
    let mut router = start_with(|c| {
        c.server.max_request_bytes = 1 << 20;
        c.server.max_inflight_request_bytes = 5 << 20;
    })
    .await;
    let announce_1mib = Bytes::from_static(&[0, 0, 0x10, 0, 0, 1, 2, 3]);
    let h2 = grpc_raw::connect(router.running.grpc_addr).await;
    let open = |h2: h2::client::SendRequest<Bytes>| {
        let announce = announce_1mib.clone();
        async move {
            let (response, mut body) = h2
                .ready()
                .await
                .unwrap()
                .send_request(grpc_raw::request("Converse", None), false)
                .unwrap();
            body.send_data(announce, false).unwrap();
            (response, body)
        }
    };
    // Two calls announce 1 MiB and send three bytes of it: charged 2 MiB each, of 5.
    let _first = open(h2.clone()).await;
    let _second = open(h2.clone()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A third announcing as much is refused at once, the rest of it never read.
    let (third, _body) = open(h2).await;
    let reply = tokio::time::timeout(Duration::from_secs(10), grpc_raw::reply(third))
        .await
        .expect("refused from the prefix");
    assert_eq!(reply.code, Code::ResourceExhausted, "{reply:?}");
    assert!(
        reply.message.contains("server.max_inflight_request_bytes"),
        "{reply:?}"
    );
    // A small request fits beside them.
    router.ask("small").await.expect("answer");
}

#[tokio::test]
async fn a_request_is_charged_for_its_shape_not_only_its_size() {
    let mut router = start_with(|c| {
        // The memory set aside holds 4 of the largest requests, as the config requires.
        c.server.max_request_bytes = 16 << 20;
        c.server.max_inflight_request_bytes = 64 << 20;
    })
    .await;
    // 300,000 empty content blocks: 600 KB on the wire, 22 MB as prost structs, and as much
    // again in every later form of the request.
    let blocks = pb::ConverseRequest {
        messages: vec![pb::Message {
            role: pb::Role::User as i32,
            content: vec![pb::ContentBlock::default(); 300_000],
        }],
        ..Default::default()
    };
    let refused = router
        .client
        .converse(blocks)
        .await
        .expect_err("too heavy once decoded");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("more than server.max_inflight_request_bytes"),
        "{refused:?}"
    );
    // As much plain text is let in.
    let reply = router.ask(&"word ".repeat(120_000)).await.expect("answer");
    assert_eq!(reply.attempts, 1);
}

#[tokio::test]
async fn an_oversize_request_is_resource_exhausted_and_counted() {
    let mut router = start_with(|c| c.server.max_request_bytes = 64 << 10).await;
    let refused = router
        .ask(&"x".repeat(100 << 10))
        .await
        .expect_err("over server.max_request_bytes");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("server.max_request_bytes"),
        "{refused:?}"
    );
    let scrape = Scrape::parse(&common::http_get(&router.metrics_url()).await);
    assert!(
        scrape.sum(
            "router_requests_total",
            &["outcome=\"resource_exhausted\"", "tier=\"none\""]
        ) >= 1.0
    );
}

/// A ConverseRequest whose one text block is not UTF-8.
fn bad_utf8() -> Vec<u8> {
    let block = [0x0a, 2, 0xff, 0xfe];
    let mut message = vec![0x08, 1, 0x12, block.len() as u8];
    message.extend(block);
    let mut request = vec![0x0a, message.len() as u8];
    request.extend(message);
    request
}

#[tokio::test]
async fn undecodable_requests_are_invalid_argument_counted_and_logged() {
    let mut router = Proc::spawn(&mut serve_simulated(&["--log-format", "json"]));
    let json = loop {
        let line = router
            .lines
            .recv_timeout(Duration::from_secs(30))
            .expect("start-up line");
        let json: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if json["message"] == "prompt-router serving" {
            break json;
        }
    };
    let grpc: SocketAddr = json["grpc_addr"].as_str().unwrap().parse().unwrap();
    let metrics = format!("http://{}/metrics", json["metrics_addr"].as_str().unwrap());
    let valid = ask("hello there").encode_to_vec();
    let cases: Vec<(&str, &str, Bytes)> = vec![
        ("Converse", "bad-utf8", grpc_raw::frame(&bad_utf8())),
        (
            "Converse",
            "truncated",
            grpc_raw::frame(&valid[..valid.len() - 3]),
        ),
        // `messages` (field 1) as a varint
        ("Converse", "wrong-wire-type", grpc_raw::frame(&[0x08, 1])),
        ("Converse", "garbage", grpc_raw::frame(&[0xff; 16])),
        // the prefix announces 100 bytes, the call ends after 10
        (
            "Converse",
            "cut-frame",
            grpc_raw::frame(&[0; 100]).slice(..15),
        ),
        ("Converse", "no-message", Bytes::new()),
        (
            "ConverseStream",
            "stream-bad-utf8",
            grpc_raw::frame(&bad_utf8()),
        ),
        ("Route", "route-bad-utf8", grpc_raw::frame(&bad_utf8())),
    ];
    let mut h2 = grpc_raw::connect(grpc).await;
    for (method, id, body) in &cases {
        let reply = grpc_raw::call(&mut h2, method, body.clone(), Some(id)).await;
        assert_eq!(reply.code, Code::InvalidArgument, "{id}: {reply:?}");
        assert!(!reply.message.is_empty(), "{id}");
        assert_eq!(reply.request_id.as_deref(), Some(*id), "{id}");
        println!("{id}: {}", reply.message);
    }

    // Counted as what the callers saw (Route calls are not in the request metrics).
    let scrape = Scrape::parse(&common::http_get(&metrics).await);
    assert_eq!(
        scrape.sum(
            "router_requests_total",
            &["outcome=\"invalid_argument\"", "tier=\"none\""]
        ),
        7.0
    );
    // One line each, under its request id, saying why.
    let mut unseen: Vec<&str> = cases.iter().map(|(_, id, _)| *id).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !unseen.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = router
            .lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no log line for {unseen:?}"));
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let id = json["span"]["request_id"].as_str().unwrap_or_default();
        if json["span"]["outcome"] == "invalid_argument" && json["span"]["error"].is_string() {
            unseen.retain(|seen| *seen != id);
        }
    }
    let _ = &mut router;
}
