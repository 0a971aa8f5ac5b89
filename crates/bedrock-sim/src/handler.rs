//! One model request: route, auth, body, Bedrock's checks, fault plan, then the answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use percent_encoding::percent_decode_str;
use serde_json::Value;
use tokio::sync::mpsc;

use super::events::{self, EventPayloads};
use super::faults::{self, Fault, MatchCtx, Plan};
use super::generate::{self, Answer, AnswerParams};
use super::record::{Operation, Outcome, Received, Recorder, RequestGuard};
use super::request::ConverseRequest;
use super::wire::{self, BodyAbort, ChannelBody, DropConnection, SimBody, WireError};
use super::{State, admin, judge, lock, validate, world};

/// Entry point for every HTTP request on the simulator's port.
pub(crate) async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<SimBody>, DropConnection> {
    if req.uri().path().starts_with("/_sim/") {
        return Ok(admin::handle(&state, req).await);
    }
    let request_id = state.new_request_id();
    let Some((model_id, operation)) = parse_route(req.method(), req.uri().path()) else {
        tracing::debug!(request_id = %request_id, method = %req.method(), "unknown operation");
        let err = WireError {
            name: "UnknownOperationException",
            status: 404,
            message: "Unknown operation".into(),
        };
        return Ok(wire::error_response(&err, &request_id));
    };
    let auth = parse_auth(req.headers());
    let guard = state.recorder.begin(Received {
        seq: 0,
        request_id,
        operation,
        model_id: model_id.clone(),
        source_region: auth.region.clone(),
        signing_service: auth.service.clone(),
        bearer_auth: auth.bearer,
        body: Value::Null,
        fault: None,
        outcome: Outcome::InFlight,
    });
    tracing::debug!(
        request_id = %guard.request_id(),
        operation = ?operation,
        model_id = %model_id,
        source_region = auth.region.as_deref().unwrap_or(""),
        "bedrock sim request"
    );
    let limit = state.cfg.max_body_bytes;
    let body = match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            let msg = format!("The request body exceeds the maximum size of {limit} bytes.");
            return Ok(reject(guard, WireError::validation(msg)));
        }
        // The client went away while sending the body; dropping the guard records that.
        Err(_) => return Err(DropConnection),
    };
    if let Some(err) = auth.problem {
        guard.set_body(serde_json::from_slice(&body).unwrap_or(Value::Null));
        return Ok(reject(guard, err));
    }
    let ctx = Ctx {
        state: &state,
        model_id: &model_id,
        region: auth.region.as_deref(),
    };
    let (answer, plan) = match prepare(&ctx, &guard, &body) {
        Ok(prepared) => prepared,
        Err(err) => return Ok(reject(guard, err)),
    };
    guard.set_fault(plan.fault.clone());
    let base = *lock(&state.latency);
    let latency = Timing {
        ttft: Duration::from_millis(plan.ttft_ms.unwrap_or(base.ttft_ms)),
        per_token: Duration::from_millis(plan.per_token_ms.unwrap_or(base.per_token_ms)),
    };
    match operation {
        Operation::Converse => converse(guard, answer, plan.fault, latency).await,
        Operation::ConverseStream => converse_stream(guard, answer, plan.fault, latency),
    }
}

struct Ctx<'a> {
    state: &'a State,
    model_id: &'a str,
    region: Option<&'a str>,
}

#[derive(Clone, Copy)]
struct Timing {
    ttft: Duration,
    per_token: Duration,
}

impl Timing {
    /// Time until the last token: first token after `ttft`, each further one `per_token` later.
    fn generation(self, output_tokens: u32) -> Duration {
        // Saturating: latencies come from admin JSON and may be absurdly large.
        self.ttft.saturating_add(
            self.per_token
                .saturating_mul(output_tokens.saturating_sub(1)),
        )
    }
}

fn reject(guard: RequestGuard, err: WireError) -> Response<SimBody> {
    let resp = wire::error_response(&err, guard.request_id());
    guard.finish(Outcome::Error {
        kind: err.name.to_owned(),
        status: err.status,
        message: err.message,
    });
    resp
}

fn malformed(e: &serde_json::Error) -> WireError {
    WireError::validation(format!(
        "Malformed input request: {e}, please reformat your input and try again."
    ))
}

/// Parses and checks the body, then fixes the answer and the fault plan.
fn prepare(ctx: &Ctx<'_>, guard: &RequestGuard, body: &Bytes) -> Result<(Answer, Plan), WireError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| malformed(&e))?;
    let req: ConverseRequest = serde_json::from_value(value.clone()).map_err(|e| malformed(&e))?;
    guard.set_body(value);
    let cfg = &ctx.state.cfg;
    let resolved = validate::resolve_model(
        &cfg.models,
        ctx.model_id,
        ctx.region,
        cfg.enforce_profile_geography,
    )?;
    let checked = validate::validate(&req, resolved.spec)?;
    let digest = generate::digest(&req);
    if digest.input_tokens > resolved.spec.context_window {
        return Err(WireError::validation(
            "Input is too long for requested model.",
        ));
    }
    let last_text = req.last_user_text();
    let judged = judge::parse(&last_text);
    let (system, user) = faults::directive_texts(&req, judged.as_ref().map(|j| j.outside.as_str()));
    let mut directives = Vec::new();
    for text in system {
        let parsed = faults::parse_directives(text).map_err(WireError::validation)?;
        if let Some(d) = parsed.iter().find(|d| d.difficulty.is_some()) {
            return Err(WireError::validation(format!(
                "Invalid simulator directive {}: difficulty belongs in the last user message.",
                d.source
            )));
        }
        directives.extend(parsed);
    }
    for text in user {
        directives.extend(faults::parse_directives(text).map_err(WireError::validation)?);
    }
    if judged.is_none() {
        world::difficulty_directive(&last_text).map_err(WireError::validation)?;
    }
    let match_ctx = MatchCtx {
        region: ctx.region,
        invoked_model: ctx.model_id,
        base_model: &resolved.spec.id,
        prompt_hash: digest.hash,
    };
    let plan = {
        let rules = lock(&ctx.state.faults).rules.clone();
        let mut attempts = lock(&ctx.state.attempts);
        let mut rng = lock(&ctx.state.rng);
        faults::decide(&directives, &rules, &match_ctx, &mut attempts, &mut rng)
    };
    let params = AnswerParams {
        model_id: ctx.model_id,
        max_tokens: checked.max_tokens,
        body_tokens_override: plan.tokens,
        right: cfg.world.right(&resolved.spec.id, &last_text),
        judge_reply: judged.map(|j| judge::reply(&lock(&ctx.state.judge), &j, digest.hash)),
    };
    Ok((
        generate::answer(&req, digest, &params, &checked.tool_mode),
        plan,
    ))
}

fn answered(a: &Answer) -> Outcome {
    Outcome::Answered {
        stop_reason: a.stop_reason.as_str().to_owned(),
        input_tokens: a.input_tokens,
        output_tokens: a.output_tokens,
    }
}

fn millis(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

async fn converse(
    guard: RequestGuard,
    answer: Answer,
    fault: Option<Fault>,
    latency: Timing,
) -> Result<Response<SimBody>, DropConnection> {
    let started = Instant::now();
    match fault {
        Some(Fault::Http(kind) | Fault::MidStream { error: kind, .. }) => {
            let kind = kind.for_converse();
            return Ok(reject(guard, WireError::new(kind, kind.default_message())));
        }
        Some(Fault::Drop { .. }) => {
            guard.finish(Outcome::Dropped);
            return Err(DropConnection);
        }
        _ => {}
    }
    // If the client goes away during these waits, hyper drops this future and the guard.
    let recorder = guard.recorder();
    recorder
        .sleep(latency.generation(answer.output_tokens))
        .await;
    if let Some(Fault::Stall { ms, .. }) = fault {
        match ms {
            Some(ms) => recorder.sleep(Duration::from_millis(ms)).await,
            None => std::future::pending::<()>().await,
        }
    }
    let resp = wire::converse_response(&answer, millis(started), guard.request_id());
    guard.finish(answered(&answer));
    Ok(resp)
}

fn converse_stream(
    guard: RequestGuard,
    answer: Answer,
    fault: Option<Fault>,
    latency: Timing,
) -> Result<Response<SimBody>, DropConnection> {
    match fault {
        Some(Fault::Http(kind)) => {
            return Ok(reject(guard, WireError::new(kind, kind.default_message())));
        }
        Some(Fault::Drop { after: None }) => {
            guard.finish(Outcome::Dropped);
            return Err(DropConnection);
        }
        _ => {}
    }
    let (tx, body) = ChannelBody::channel();
    let resp = wire::stream_response(body, guard.request_id());
    tokio::spawn(async move {
        let out = Emitter {
            tx,
            recorder: guard.recorder(),
        };
        // None means the client went away; dropping the guard then records Cancelled.
        if let Some(outcome) = produce(&out, &answer, fault.as_ref(), latency).await {
            guard.finish(outcome);
        }
    });
    Ok(resp)
}

struct Emitter {
    tx: mpsc::Sender<Result<Bytes, BodyAbort>>,
    recorder: Arc<Recorder>,
}

impl Emitter {
    async fn send(&self, bytes: Bytes) -> Option<()> {
        self.tx.send(Ok(bytes)).await.ok()
    }

    async fn event(&self, (event_type, payload): (&'static str, Value)) -> Option<()> {
        self.send(events::event_frame(event_type, &payload)).await
    }

    /// Waits until hyper has taken every queued frame and flushed them: hyper discards its
    /// unflushed write buffer when a body fails, so an abort sent too early would eat the
    /// deltas meant to precede it.
    async fn drain(&self) -> Option<()> {
        while self.tx.capacity() < self.tx.max_capacity() {
            self.pause(Duration::from_millis(1)).await?;
        }
        self.pause(Duration::from_millis(10)).await
    }

    /// Waits, but gives up as soon as hyper drops the body (the client closed the connection).
    async fn pause(&self, d: Duration) -> Option<()> {
        if self.tx.is_closed() {
            return None;
        }
        tokio::select! {
            () = self.recorder.sleep(d) => Some(()),
            () = self.tx.closed() => None,
        }
    }
}

/// Where a stream fault stands once its trigger point is reached.
enum Step {
    Continue,
    End(Outcome),
}

/// Content deltas sent before a stream fault fires, or None for faults that fire before the stream.
fn trigger_point(fault: &Fault) -> Option<u32> {
    match fault {
        Fault::MidStream { after, .. } | Fault::Stall { after, .. } => Some(*after),
        Fault::Drop { after } => *after,
        Fault::Http(_) => None,
    }
}

async fn fire(out: &Emitter, fault: &Fault, sent: u32) -> Option<Step> {
    match fault {
        Fault::MidStream { error, .. } => {
            let member = error.stream_member().unwrap_or("modelStreamErrorException");
            out.send(events::exception_frame(member, error.default_message()))
                .await?;
            Some(Step::End(Outcome::StreamError {
                kind: member.to_owned(),
                after_deltas: sent,
            }))
        }
        Fault::Drop { .. } => {
            out.drain().await?;
            // Whether or not the abort is delivered, the connection is gone.
            let _ = out.tx.send(Err(BodyAbort)).await;
            Some(Step::End(Outcome::Dropped))
        }
        Fault::Stall { ms: Some(ms), .. } => out
            .pause(Duration::from_millis(*ms))
            .await
            .map(|()| Step::Continue),
        Fault::Stall { ms: None, .. } => {
            out.tx.closed().await;
            None
        }
        Fault::Http(_) => Some(Step::Continue),
    }
}

/// Sends the event sequence; returns the outcome, or None if the client went away.
async fn produce(
    out: &Emitter,
    answer: &Answer,
    fault: Option<&Fault>,
    latency: Timing,
) -> Option<Outcome> {
    let started = Instant::now();
    let mut pending = fault.and_then(|f| trigger_point(f).map(|k| (f, k)));
    let mut ev = EventPayloads::new();
    out.event(ev.message_start()).await?;
    out.pause(latency.ttft).await?;
    let mut sent = 0u32;
    for (index, block) in answer.blocks.iter().enumerate() {
        if let Some(start) = ev.block_start(index, block) {
            out.event(start).await?;
        }
        for span in block.delta_spans() {
            if let Some((f, k)) = pending
                && sent >= k
            {
                pending = None;
                if let Step::End(outcome) = fire(out, f, sent).await? {
                    return Some(outcome);
                }
            }
            if sent > 0 {
                out.pause(latency.per_token).await?;
            }
            out.event(ev.delta(index, block, span)).await?;
            sent += 1;
        }
        out.event(ev.block_stop(index)).await?;
    }
    if let Some((f, _)) = pending
        && let Step::End(outcome) = fire(out, f, sent).await?
    {
        return Some(outcome);
    }
    out.event(ev.message_stop(answer)).await?;
    out.event(ev.metadata(answer, millis(started))).await?;
    Some(answered(answer))
}

/// `POST /model/{modelId}/converse[-stream]` → (decoded model id, operation).
fn parse_route(method: &Method, path: &str) -> Option<(String, Operation)> {
    if method != Method::POST {
        return None;
    }
    let (raw_id, op) = path.strip_prefix("/model/")?.rsplit_once('/')?;
    let op = match op {
        "converse" => Operation::Converse,
        "converse-stream" => Operation::ConverseStream,
        _ => return None,
    };
    if raw_id.is_empty() || raw_id.contains('/') {
        return None;
    }
    let id = percent_decode_str(raw_id).decode_utf8().ok()?.into_owned();
    Some((id, op))
}

/// What the Authorization header told us; `problem` is the 403 to send, if any.
struct AuthInfo {
    region: Option<String>,
    service: Option<String>,
    bearer: bool,
    problem: Option<WireError>,
}

fn auth_error(name: &'static str, message: &str) -> Option<WireError> {
    Some(WireError {
        name,
        status: 403,
        message: message.to_owned(),
    })
}

/// Reads the SigV4 credential scope (`Credential=AKID/DATE/REGION/SERVICE/aws4_request`) without
/// verifying the signature, or accepts a Bearer token (Bedrock API keys).
fn parse_auth(headers: &HeaderMap) -> AuthInfo {
    let mut info = AuthInfo {
        region: None,
        service: None,
        bearer: false,
        problem: None,
    };
    let Some(value) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        info.problem = auth_error(
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        );
        return info;
    };
    if let Some(token) = value.strip_prefix("Bearer ") {
        info.bearer = true;
        if token.trim().is_empty() {
            info.problem = auth_error(
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            );
        }
        return info;
    }
    let scope = value.strip_prefix("AWS4-HMAC-SHA256 ").and_then(|rest| {
        rest.split(',')
            .find_map(|p| p.trim().strip_prefix("Credential="))
    });
    let parts: Vec<&str> = scope.map(|s| s.split('/').collect()).unwrap_or_default();
    let [_key, _date, region, service, "aws4_request"] = parts[..] else {
        info.problem = auth_error(
            "IncompleteSignatureException",
            "Authorization header requires 'Credential' parameter.",
        );
        return info;
    };
    info.region = Some(region.to_owned());
    info.service = Some(service.to_owned());
    if service != "bedrock" {
        info.problem = auth_error(
            "InvalidSignatureException",
            "Credential should be scoped to correct service: 'bedrock'. ",
        );
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_decode_model_ids() {
        let (id, op) = parse_route(
            &Method::POST,
            "/model/us.anthropic.claude-3-haiku-20240307-v1%3A0/converse-stream",
        )
        .expect("route");
        assert_eq!(
            (id.as_str(), op),
            (
                "us.anthropic.claude-3-haiku-20240307-v1:0",
                Operation::ConverseStream
            )
        );
        let (id, _) = parse_route(
            &Method::POST,
            "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123%3Ainference-profile%2Fus.m/converse",
        )
        .expect("route");
        assert_eq!(id, "arn:aws:bedrock:us-east-1:123:inference-profile/us.m");
        assert!(parse_route(&Method::GET, "/model/m/converse").is_none());
        assert!(parse_route(&Method::POST, "/model/m/invoke").is_none());
        assert!(parse_route(&Method::POST, "/model//converse").is_none());
    }

    #[test]
    fn auth_scope_is_parsed() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static(
                "AWS4-HMAC-SHA256 Credential=AKID/20261125/eu-west-1/bedrock/aws4_request, SignedHeaders=host, Signature=abc",
            ),
        );
        let a = parse_auth(&h);
        assert_eq!(
            (a.region.as_deref(), a.service.as_deref()),
            (Some("eu-west-1"), Some("bedrock"))
        );
        assert!(a.problem.is_none());
        h.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static("Bearer abc"),
        );
        assert!(parse_auth(&h).bearer);
        assert_eq!(
            parse_auth(&HeaderMap::new()).problem.map(|p| p.name),
            Some("MissingAuthenticationTokenException")
        );
    }
}
