//! The Prometheus scrape endpoint: `GET /metrics` on its own port, so scrapes never queue
//! behind model calls and the port can be firewalled separately from the gRPC one. The same
//! port answers `GET /ready` (200 while serving, 503 once a shutdown starts, as gRPC health
//! does) and `GET /live` (200): plaintext HTTP probes for when the gRPC port speaks TLS, which
//! Kubernetes' gRPC probes cannot.
//!
//! Accepting goes through axum's [`Listener`], which backs off for a second when `accept`
//! fails for want of descriptors instead of retrying (and logging) in a tight loop. A
//! connection gets `server.header_read_timeout_ms` to send each request head, which also
//! bounds how long a kept-alive connection may sit idle, and at most [`MAX_CONNECTIONS`] are
//! open at once: a scraper needs one.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::serve::Listener;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics::gauge;
use tokio::{
    net::TcpListener,
    sync::{Semaphore, watch},
};

use super::RouterState;
use crate::telemetry;

/// Connections open at once on the metrics port; more wait in the backlog.
pub const MAX_CONNECTIONS: usize = 64;

/// Serves `/metrics` on `listener` until `shutdown` flips to true.
pub async fn serve(
    mut listener: TcpListener,
    router: Arc<RouterState>,
    header_read: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&connections).acquire_owned() => permit,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let Ok(permit) = permit else { return };
        let (stream, _) = tokio::select! {
            accepted = Listener::accept(&mut listener) => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let router = Arc::clone(&router);
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| {
                let response = respond(&req, &router);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "metrics connection ended with an error");
            }
        });
    }
}

/// Sets the operating-point gauges from the thresholds in force now: read at scrape time,
/// they cost the request path nothing and are never stale. Labels are the configured callers
/// and `default`, a set fixed at start.
fn operating_points(router: &RouterState) {
    for point in router.decider.operating.callers() {
        gauge!(telemetry::THRESHOLD, "caller" => point.caller.to_owned())
            .set(point.in_force.threshold);
        if let Some(share) = point.window_strong_share {
            gauge!(telemetry::WINDOW_STRONG_SHARE, "caller" => point.caller.to_owned()).set(share);
        }
        if let Some(share) = point.target_share {
            gauge!(telemetry::TARGET_STRONG_SHARE, "caller" => point.caller.to_owned()).set(share);
        }
    }
}

fn respond(req: &Request<Incoming>, router: &RouterState) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            operating_points(router);
            (
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                Bytes::from(router.telemetry.render()),
            )
        }
        (&Method::GET, "/ready") if *router.draining.borrow() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            Bytes::from_static(b"draining\n"),
        ),
        (&Method::GET, "/ready") => (
            StatusCode::OK,
            "text/plain",
            Bytes::from_static(b"serving\n"),
        ),
        (&Method::GET, "/live") => (StatusCode::OK, "text/plain", Bytes::from_static(b"live\n")),
        (_, "/metrics" | "/ready" | "/live") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            Bytes::from_static(b"use GET\n"),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from_static(b"not found; metrics are at /metrics, probes at /ready and /live\n"),
        ),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    if let Ok(value) = header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}
