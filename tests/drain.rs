//! Requests still running when a shutdown's drain time is up failed on the router's side: the
//! caller gets UNAVAILABLE saying so, and the request is counted `unavailable` (in the error
//! ratio), not `cancelled` (which the error ratio leaves out as the caller's doing).
//!
//! The draining router runs on a runtime of its own that is dropped after its shutdown, as the
//! process's is when `serve` returns, and its simulator outlives it, as Bedrock does. A second
//! router stays up to be scraped: the recorder is process-wide (one test per binary for the same
//! reason).
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{ask, eventually, exposition::Scrape, http_get, start};
use prompt_router::server::{self, Options};
use prompt_router_core::config::{Config, RawConfig};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_cut_off_by_the_drain_timeout_count_as_unavailable() {
    let watching = start().await;
    let (ready, addr) = tokio::sync::oneshot::channel();
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let draining = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mut raw = RawConfig::default();
        raw.server.listen = "127.0.0.1:0".parse().unwrap();
        raw.server.metrics_listen = "127.0.0.1:0".parse().unwrap();
        raw.server.drain_timeout_ms = 300;
        let config = Config::try_from(raw).unwrap();
        let mut running = runtime
            .block_on(server::start(
                config,
                Options {
                    simulate: true,
                    ..Options::default()
                },
            ))
            .unwrap();
        let bedrock = running.simulator.take().unwrap();
        ready.send(running.grpc_addr).unwrap();
        stopped.recv().unwrap();
        let started = Instant::now();
        runtime.block_on(running.shutdown()).unwrap();
        let took = started.elapsed();
        // What the process does next: exit, dropping whatever still runs.
        drop(runtime);
        drop(bedrock);
        took
    });
    let addr = addr.await.unwrap();
    let client = prompt_router::pb::prompt_router_client::PromptRouterClient::connect(format!(
        "http://{addr}"
    ))
    .await
    .unwrap();

    // A deadline well past the drain, so the cut-off, not the deadline, ends them.
    let slow = |text: &str| {
        let mut request = tonic::Request::new(ask(&format!("{text} [sim:ttft=60000]")));
        request.set_timeout(Duration::from_secs(20));
        request
    };
    let mut unary_client = client.clone();
    let unary = tokio::spawn(async move { unary_client.converse(slow("Slow answer")).await });
    let mut stream_client = client.clone();
    let stream = tokio::spawn(async move {
        let mut events = stream_client
            .converse_stream(slow("Slow stream"))
            .await?
            .into_inner();
        while events.message().await?.is_some() {}
        Ok::<_, tonic::Status>(())
    });
    let url = &watching.metrics_url();
    eventually("both requests in flight", || async move {
        Scrape::parse(&http_get(url).await).sum("router_inflight_requests", &[]) == 2.0
    })
    .await;

    stop.send(()).unwrap();
    let took = tokio::task::spawn_blocking(move || draining.join().unwrap())
        .await
        .unwrap();
    for (what, result) in [
        ("unary", unary.await.unwrap().map(drop)),
        ("stream", stream.await.unwrap()),
    ] {
        let status = result.expect_err(what);
        println!("{what} cut off: {:?} {:?}", status.code(), status.message());
        assert_eq!(status.code(), Code::Unavailable, "{what}: {status:?}");
        assert!(
            status.message().contains("server.drain_timeout_ms"),
            "{what}: {status:?}"
        );
    }
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");

    let scrape = Scrape::parse(&http_get(url).await);
    assert_eq!(
        (
            scrape.sum("router_requests_total", &["outcome=\"unavailable\""]),
            scrape.sum("router_requests_total", &["outcome=\"cancelled\""]),
        ),
        (2.0, 0.0),
        "cut off by the router: unavailable, not cancelled"
    );
    assert_eq!(scrape.value("router_inflight_requests"), 0.0);
}
