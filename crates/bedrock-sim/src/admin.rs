//! `/_sim/*` endpoints, so a simulator in another process can be inspected and driven.

use http::{Method, Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::wire::{SimBody, json_response};
use super::{FaultConfig, JudgeConfig, LatencyConfig, State, lock};

const MAX_ADMIN_BODY: usize = 1 << 20;

fn ok<T: Serialize>(value: &T) -> Response<SimBody> {
    match serde_json::to_value(value) {
        Ok(v) => json_response(200, &v),
        Err(e) => json_response(500, &json!({ "message": e.to_string() })),
    }
}

fn bad_request(message: impl std::fmt::Display) -> Response<SimBody> {
    json_response(400, &json!({ "message": message.to_string() }))
}

async fn parse<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, Response<SimBody>> {
    let bytes = Limited::new(req.into_body(), MAX_ADMIN_BODY)
        .collect()
        .await
        .map_err(bad_request)?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(bad_request)
}

/// Serves `GET /_sim/requests`, `GET /_sim/stats`, `GET|POST /_sim/faults`,
/// `GET|POST /_sim/latency`, `GET|POST /_sim/judge` and `POST /_sim/reset`.
pub(crate) async fn handle(state: &State, req: Request<Incoming>) -> Response<SimBody> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    tracing::debug!(method = %method, path = %path, "bedrock sim admin request");
    match (method, path.as_str()) {
        (Method::GET, "/_sim/requests") => ok(&state.recorder.snapshot()),
        (Method::GET, "/_sim/stats") => ok(&state.recorder.stats()),
        (Method::GET, "/_sim/faults") => ok(&*lock(&state.faults)),
        (Method::GET, "/_sim/latency") => ok(&*lock(&state.latency)),
        (Method::GET, "/_sim/judge") => ok(&*lock(&state.judge)),
        (Method::POST, "/_sim/judge") => match parse::<JudgeConfig>(req).await {
            Ok(judge) => match state.set_judge(judge) {
                Ok(()) => ok(&judge),
                Err(e) => bad_request(e),
            },
            Err(resp) => resp,
        },
        (Method::POST, "/_sim/faults") => match parse::<FaultConfig>(req).await {
            Ok(faults) => match state.set_faults(faults) {
                Ok(()) => ok(&*lock(&state.faults)),
                Err(e) => bad_request(e),
            },
            Err(resp) => resp,
        },
        (Method::POST, "/_sim/latency") => match parse::<LatencyConfig>(req).await {
            Ok(latency) => {
                *lock(&state.latency) = latency;
                ok(&latency)
            }
            Err(resp) => resp,
        },
        (Method::POST, "/_sim/reset") => {
            state.reset();
            ok(&Value::Object(serde_json::Map::new()))
        }
        _ => json_response(
            404,
            &json!({ "message": format!("no admin endpoint {path}") }),
        ),
    }
}
