//! The router, not the caller's own timer, ends a call whose deadline passes: the caller gets the
//! router's DEADLINE_EXCEEDED (its message and `x-request-id`), and /metrics counts
//! `deadline_exceeded`, not `cancelled`. Real clients whose timeout headers round differently:
//! grpcio (gRPC C-core, which rounds the advertised time up: 10 s goes out as `10100m`) and
//! tonic with a client-side timer, against a simulated model slower than every deadline.
//! `server::deadline`'s table test covers every deadline from 10 ms to 120 s for C-core, grpc-go
//! and tonic; this runs the real clients at a handful of them. One test: /metrics is process-wide.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::{process::Command, time::Duration};

use common::{ask, eventually, exposition::Scrape, http_get, start};
use prompt_router::pb::prompt_router_client::PromptRouterClient;
use prost::Message as _;
use tonic::{Code, transport::Endpoint};

/// Deadlines, in seconds, up to the one C-core rounds up past the old 20 ms margin. Shorter
/// ones are left to the table test: a race of a few milliseconds is not for a loaded machine.
const DEADLINES: &[f64] = &[0.2, 1.0, 2.5, 4.0, 10.0];
/// The router's own message for a passed deadline.
const ROUTER_SAYS: &str = "the call's deadline passed";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_gets_the_routers_deadline_exceeded_not_its_own() {
    let router = start().await;
    let request = ask("Think this through at length [sim:ttft=600000]");

    let addr = router.running.grpc_addr.to_string();
    let hex: String = request
        .encode_to_vec()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/grpcio_deadlines.py"
    );
    let grpcio = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .arg(addr)
            .arg(hex)
            .args(DEADLINES.iter().map(f64::to_string))
            .output()
            .expect("python3 must be installed (scripts/test installs grpcio)")
    });

    // tonic with a client-side timer (Endpoint::timeout) as well as the header; its own timer
    // would end the call as CANCELLED "Timeout expired".
    let mut tonic_calls = tokio::task::JoinSet::new();
    for &deadline in DEADLINES {
        let timeout = Duration::from_secs_f64(deadline);
        let channel = Endpoint::from_shared(format!("http://{}", router.running.grpc_addr))
            .unwrap()
            .timeout(timeout)
            .connect()
            .await
            .unwrap();
        let mut request = tonic::Request::new(request.clone());
        request.set_timeout(timeout);
        tonic_calls.spawn(async move {
            let status = PromptRouterClient::new(channel)
                .converse(request)
                .await
                .expect_err("the model is slower than every deadline");
            (deadline, status)
        });
    }

    let output = grpcio.await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "grpcio client failed (scripts/test installs grpcio):\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), DEADLINES.len(), "{stdout}");
    for line in &lines {
        println!("grpcio {line}");
        assert_eq!(line["code"], "DEADLINE_EXCEEDED", "{line}");
        assert!(
            line["details"].as_str().unwrap().contains(ROUTER_SAYS) && line["request_id"] == true,
            "the router's status, not grpcio's own timer: {line}"
        );
    }
    while let Some(joined) = tonic_calls.join_next().await {
        let (deadline, status) = joined.unwrap();
        println!(
            "tonic {deadline} s: {:?} {:?}",
            status.code(),
            status.message()
        );
        assert_eq!(
            status.code(),
            Code::DeadlineExceeded,
            "{deadline} s: {status:?}"
        );
        assert!(
            status.message().contains(ROUTER_SAYS)
                && status.metadata().contains_key("x-request-id"),
            "{deadline} s: {status:?}"
        );
    }

    let calls = 2 * DEADLINES.len();
    let url = &router.metrics_url();
    eventually("every call counted", || async move {
        let scrape = Scrape::parse(&http_get(url).await);
        scrape.sum("router_requests_total", &["outcome=\"deadline_exceeded\""]) == calls as f64
    })
    .await;
    let scrape = Scrape::parse(&http_get(url).await);
    assert_eq!(
        scrape.sum("router_requests_total", &["outcome=\"cancelled\""]),
        0.0,
        "no call was ended by its caller"
    );
    // The deadline reached the upstream call: the simulator saw every one of them go away.
    router.until_upstream_in_flight(0).await;
    assert_eq!(router.sim().stats().cancelled, calls as u64);
}
