//! `prompt-router health`: asks a router's `grpc.health.v1.Health/Check`, or with `--ready` its
//! metrics port's `GET /ready` (for a gRPC port that speaks TLS), so a container image without
//! a shell or `grpc_health_probe` can still run a health check.

use std::time::Duration;

use anyhow::Context as _;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Asks `addr` for the status of `service` ("" is the whole server) within `timeout`.
pub async fn check(addr: &str, service: &str, timeout: Duration) -> anyhow::Result<ServingStatus> {
    let endpoint = crate::load::endpoint(addr)?
        .connect_timeout(timeout)
        .timeout(timeout);
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .with_context(|| format!("asking {addr} for the health of {service:?}"))?;
    Ok(response.into_inner().status())
}

/// Asks the metrics address `addr` for `GET /ready` within `timeout`: whether it answers 200
/// (serving) rather than 503 (draining).
pub async fn ready(addr: &str, timeout: Duration) -> anyhow::Result<bool> {
    tokio::time::timeout(timeout, async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request = http::Request::get("/ready")
            .header(http::header::HOST, addr)
            .body(http_body_util::Empty::<bytes::Bytes>::new())?;
        let response = sender
            .send_request(request)
            .await
            .with_context(|| format!("asking {addr} for /ready"))?;
        anyhow::Ok(response.status() == http::StatusCode::OK)
    })
    .await
    .with_context(|| format!("{addr} did not answer /ready within {timeout:?}"))?
}
