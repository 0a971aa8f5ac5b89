//! The transport under hostile clients: running out of file descriptors, and connections that
//! idle or never speak. Real server (in-process on 127.0.0.1:0, or the binary as a child
//! process), real clients: tonic, h2, or raw TCP for what a gRPC client would never send.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::{
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use common::{
    ask,
    process::{BIN, Proc, field},
    start_with,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

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
    let started = router.wait_for_line("grpc_addr");
    let grpc: SocketAddr = field(&started, "grpc_addr").unwrap().parse().unwrap();
    let metrics: SocketAddr = field(&started, "metrics_addr").unwrap().parse().unwrap();
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
