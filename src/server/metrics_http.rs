//! The Prometheus scrape endpoint: `GET /metrics` on its own port, so scrapes never queue
//! behind model calls and the port can be firewalled separately from the gRPC one.

use std::{convert::Infallible, sync::Arc};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use metrics::gauge;
use tokio::{net::TcpListener, sync::watch};

use super::Router;
use crate::telemetry;

/// Serves `/metrics` on `listener` until `shutdown` flips to true.
pub async fn serve(
    listener: TcpListener,
    router: Arc<Router>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "metrics listener failed to accept a connection");
                continue;
            }
        };
        let router = Arc::clone(&router);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let response = respond(&req, &router);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
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
fn operating_points(router: &Router) {
    for point in router.decider.operating.callers() {
        gauge!(telemetry::THRESHOLD, "caller" => point.caller.to_owned())
            .set(point.in_force.threshold);
        if let Some(share) = point.window_strong_share {
            gauge!(telemetry::WINDOW_STRONG_SHARE, "caller" => point.caller.to_owned()).set(share);
        }
    }
}

fn respond(req: &Request<Incoming>, router: &Router) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            operating_points(router);
            (
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                Bytes::from(router.telemetry.render()),
            )
        }
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            Bytes::from_static(b"use GET\n"),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from_static(b"not found; metrics are at /metrics\n"),
        ),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    if let Ok(value) = header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}
