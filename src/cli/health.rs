//! `prompt-router health`: asks a router's `grpc.health.v1.Health/Check`, so a container image
//! without a shell or `grpc_health_probe` can still run a health check.

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
