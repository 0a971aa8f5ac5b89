//! The `router.v1.PromptRouter` service: validate → classify → decide → call → record → reply.
//! The only layer that calls the backend and records metrics.

use std::{pin::Pin, sync::Arc, time::Duration};

use tokio::{sync::mpsc, time::Instant};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Code, Request, Response, Status, metadata::MetadataMap};
use tracing::{Instrument, Span, field::Empty};

use super::{record::Record, status::from_backend};
use crate::{
    backend::{BackendError, Bedrock, Completion, OutputBlock, StreamEvent},
    catalog::{Model, Tier},
    cost::{Cost, Usage},
    decide::{Decider, Routed},
    pb::{self, prompt_router_server::PromptRouter},
    policy::Basis,
    request::{Block, ChatRequest, Limits},
    telemetry::Telemetry,
};

/// The request-id metadata key, read from callers and echoed back.
pub const REQUEST_ID: &str = "x-request-id";
/// How many top features a decision names.
const REASONS: usize = 3;
/// Answer slightly before the caller's deadline so the caller gets DEADLINE_EXCEEDED from us
/// (with a message) rather than a bare cancellation from the transport's own timer.
const DEADLINE_MARGIN: Duration = Duration::from_millis(3);
/// Events buffered per stream between the upstream reader and the caller.
const STREAM_BUFFER: usize = 32;

/// Everything a request needs, shared by all requests.
#[derive(Debug)]
pub struct Router {
    /// Classifier, policy and catalog.
    pub decider: Decider,
    /// The Bedrock client.
    pub bedrock: Bedrock,
    /// Per-request size limits.
    pub limits: Limits,
    /// Upstream time allowed when the caller sets no deadline.
    pub call_timeout: Duration,
    /// Whether prompt text may be logged.
    pub log_prompts: bool,
    /// Metrics.
    pub telemetry: &'static Telemetry,
}

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct RouterService {
    router: Arc<Router>,
}

impl RouterService {
    /// Wraps the shared router.
    pub fn new(router: Arc<Router>) -> Self {
        Self { router }
    }
}

/// Per-request facts from the call's metadata.
struct Context {
    request_id: String,
    deadline: Instant,
    span: Span,
}

impl Context {
    fn new(rpc: &'static str, metadata: &MetadataMap, call_timeout: Duration) -> Self {
        let received = Instant::now();
        let request_id = metadata
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|id| {
                !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic())
            })
            .map_or_else(|| format!("{:032x}", fastrand::u128(..)), str::to_owned);
        let budget =
            grpc_timeout(metadata).map_or(call_timeout, |t| t.saturating_sub(DEADLINE_MARGIN));
        let span = tracing::info_span!(
            "request",
            rpc,
            request_id = %request_id,
            caller = Empty,
            tier = Empty,
            score = Empty,
            model = Empty,
            attempts = Empty,
            outcome = Empty,
        );
        Self {
            request_id,
            deadline: received + budget,
            span,
        }
    }

    /// Adds the request id to a reply or an error.
    fn tag(&self, metadata: &mut MetadataMap) {
        if let Ok(value) = self.request_id.parse() {
            metadata.insert(REQUEST_ID, value);
        }
    }

    fn respond<T>(&self, result: Result<T, Status>) -> Result<Response<T>, Status> {
        match result {
            Ok(body) => {
                let mut response = Response::new(body);
                self.tag(response.metadata_mut());
                Ok(response)
            }
            Err(mut status) => {
                self.tag(status.metadata_mut());
                Err(status)
            }
        }
    }

    fn deadline_status(&self) -> Status {
        Status::deadline_exceeded("the call's deadline passed before the model answered")
    }
}

/// Reads the `grpc-timeout` header (gRPC over HTTP/2: up to 8 digits and a unit).
fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

impl Router {
    /// Validates and routes, noting both in the record.
    fn admit(
        &self,
        req: pb::ConverseRequest,
        record: &mut Record,
        span: &Span,
    ) -> Result<(ChatRequest, Routed<'_>), Status> {
        let chat =
            ChatRequest::from_pb(req, &self.limits).map_err(|e| Status::invalid_argument(e.0))?;
        if !chat.routing.caller.is_empty() {
            span.record("caller", chat.routing.caller.as_str());
        }
        if self.log_prompts {
            // Text only: image bytes and tool payloads do not belong in logs.
            let prompt: Vec<&str> = chat
                .messages
                .last()
                .into_iter()
                .flat_map(|turn| &turn.content)
                .filter_map(|block| match block {
                    Block::Text(text) => Some(text.as_str()),
                    Block::Image(_) | Block::ToolUse(_) | Block::ToolResult(_) => None,
                })
                .collect();
            tracing::info!(parent: span, prompt = %prompt.join("\n"), "prompt");
        }
        let classify_started = std::time::Instant::now();
        let routed = self
            .decider
            .decide(&chat)
            .map_err(|e| Status::invalid_argument(e.0))?;
        record.classified(classify_started.elapsed(), routed.classification.score());
        record.routed(
            routed.choice.tier,
            routed.choice.basis,
            &routed.model.invoke_id,
        );
        Ok((chat, routed))
    }

    fn cost(&self, model: &Model, usage: Usage) -> Cost {
        Cost::of(
            usage,
            model.prices,
            self.decider.catalog.model(Tier::Strong).prices,
        )
    }

    async fn converse(
        &self,
        ctx: &Context,
        req: pb::ConverseRequest,
        record: &mut Record,
    ) -> Result<pb::ConverseResponse, Status> {
        let (chat, routed) = self.admit(req, record, &ctx.span)?;
        let upstream_started = std::time::Instant::now();
        let result = tokio::time::timeout_at(
            ctx.deadline,
            self.bedrock.converse(&routed.model.invoke_id, &chat),
        )
        .await;
        let took = upstream_started.elapsed();
        let completion = match result {
            Err(_) => {
                record.upstream_call(&routed.model.invoke_id, Some("deadline"), took);
                return Err(ctx.deadline_status());
            }
            Ok(Err(err)) => {
                record.upstream_call(&routed.model.invoke_id, Some(err.kind()), took);
                return Err(from_backend(&err, &ctx.request_id));
            }
            Ok(Ok(completion)) => {
                record.upstream_call(&routed.model.invoke_id, None, took);
                completion
            }
        };
        let Completion {
            content,
            stop_reason,
            usage,
        } = completion;
        let cost = self.cost(routed.model, usage);
        record.answered(usage, cost);
        let total = record.started().elapsed();
        Ok(pb::ConverseResponse {
            message: Some(pb::Message {
                role: pb::Role::Assistant as i32,
                content: content.into_iter().map(content_block).collect(),
            }),
            stop_reason,
            usage: Some(pb_usage(usage)),
            decision: Some(decision(&routed)),
            cost_usd: cost.actual.as_usd(),
            baseline_cost_usd: cost.baseline.as_usd(),
            latency: Some(latency(total, record.upstream(), None)),
            attempts: record.attempts(),
            request_id: ctx.request_id.clone(),
        })
    }

    /// Validates, routes and opens the upstream stream; the rest runs in [`pump`].
    async fn open_stream(
        self: &Arc<Self>,
        ctx: &Context,
        req: pb::ConverseRequest,
        mut record: Record,
    ) -> Result<ReceiverStream<Result<pb::ConverseStreamEvent, Status>>, Status> {
        let (chat, routed) = match self.admit(req, &mut record, &ctx.span) {
            Ok(admitted) => admitted,
            Err(status) => {
                record.finish(status.code());
                return Err(status);
            }
        };
        let model = routed.model.invoke_id.clone();
        let upstream_started = std::time::Instant::now();
        let opened =
            tokio::time::timeout_at(ctx.deadline, self.bedrock.converse_stream(&model, &chat))
                .await;
        let upstream = match opened {
            Err(_) => {
                record.upstream_call(&model, Some("deadline"), upstream_started.elapsed());
                let status = ctx.deadline_status();
                record.finish(status.code());
                return Err(status);
            }
            Ok(Err(err)) => {
                record.upstream_call(&model, Some(err.kind()), upstream_started.elapsed());
                let status = from_backend(&err, &ctx.request_id);
                record.finish(status.code());
                return Err(status);
            }
            Ok(Ok(stream)) => stream,
        };
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let job = StreamJob {
            router: Arc::clone(self),
            tier: routed.choice.tier,
            decision: decision(&routed),
            model,
            request_id: ctx.request_id.clone(),
            deadline: ctx.deadline,
            upstream_started,
        };
        tokio::spawn(job.pump(upstream, tx, record).instrument(ctx.span.clone()));
        Ok(ReceiverStream::new(rx))
    }
}

/// What the stream task needs after the handler has returned.
struct StreamJob {
    router: Arc<Router>,
    tier: Tier,
    decision: pb::Decision,
    model: String,
    request_id: String,
    deadline: Instant,
    upstream_started: std::time::Instant,
}

type EventSender = mpsc::Sender<Result<pb::ConverseStreamEvent, Status>>;

impl StreamJob {
    /// Relays upstream events to the caller until the stream ends, fails, passes its deadline
    /// or the caller goes away (which drops the upstream stream and so closes its connection).
    async fn pump(
        self,
        mut upstream: crate::backend::EventStream,
        tx: EventSender,
        mut record: Record,
    ) {
        use pb::converse_stream_event::Event;
        if !send(&tx, Event::Decision(self.decision.clone())).await {
            record.upstream_call(
                &self.model,
                Some("cancelled"),
                self.upstream_started.elapsed(),
            );
            return;
        }
        let mut usage = None;
        let mut tokens_sent = 0u32;
        let outcome = loop {
            let next = tokio::select! {
                next = tokio::time::timeout_at(self.deadline, upstream.next()) => next,
                () = tx.closed() => break Outcome::CallerGone,
            };
            let event = match next {
                Err(_) => {
                    break Outcome::Failed(Status::deadline_exceeded(format!(
                        "the call's deadline passed after {tokens_sent} streamed tokens"
                    )));
                }
                Ok(Err(err)) => break Outcome::Upstream(err),
                Ok(Ok(None)) => break Outcome::Done,
                Ok(Ok(Some(event))) => event,
            };
            let out = match event {
                StreamEvent::Text { index, text } => {
                    record.first_token();
                    tokens_sent += 1;
                    Event::Delta(pb::Delta {
                        content_block_index: index,
                        delta: Some(pb::delta::Delta::Text(text)),
                    })
                }
                StreamEvent::ToolUseStart { index, id, name } => {
                    record.first_token();
                    Event::ContentBlockStart(pb::ContentBlockStart {
                        content_block_index: index,
                        tool_use: Some(pb::ToolUseStart {
                            tool_use_id: id,
                            name,
                        }),
                    })
                }
                StreamEvent::ToolInput { index, json } => Event::Delta(pb::Delta {
                    content_block_index: index,
                    delta: Some(pb::delta::Delta::ToolUseInput(json)),
                }),
                StreamEvent::Stop { reason } => Event::Stop(pb::Stop {
                    stop_reason: reason,
                }),
                StreamEvent::Usage(u) => {
                    usage = Some(u);
                    continue;
                }
            };
            if !send(&tx, out).await {
                break Outcome::CallerGone;
            }
        };
        let took = self.upstream_started.elapsed();
        match outcome {
            Outcome::Done => {
                record.upstream_call(&self.model, None, took);
                let usage = usage.unwrap_or_else(|| {
                    tracing::warn!(
                        "the upstream stream ended without usage metadata; cost counts zero tokens"
                    );
                    Usage::default()
                });
                let model = self.router.decider.catalog.model(self.tier);
                let cost = self.router.cost(model, usage);
                record.answered(usage, cost);
                let metadata = pb::StreamMetadata {
                    usage: Some(pb_usage(usage)),
                    cost_usd: cost.actual.as_usd(),
                    baseline_cost_usd: cost.baseline.as_usd(),
                    latency: Some(latency(
                        record.started().elapsed(),
                        record.upstream(),
                        record.time_to_first_token(),
                    )),
                    attempts: record.attempts(),
                    request_id: self.request_id.clone(),
                };
                let code = if send(&tx, Event::Metadata(metadata)).await {
                    Code::Ok
                } else {
                    Code::Cancelled
                };
                record.finish(code);
            }
            Outcome::CallerGone => {
                record.upstream_call(&self.model, Some("cancelled"), took);
                record.finish(Code::Cancelled);
            }
            Outcome::Upstream(err) => {
                record.upstream_call(&self.model, Some(err.kind()), took);
                let status = from_backend(&err, &self.request_id);
                let status = Status::new(
                    status.code(),
                    format!(
                        "the model's stream failed after {tokens_sent} streamed tokens: {}",
                        status.message()
                    ),
                );
                record.finish(status.code());
                let _ = tx.send(Err(status)).await;
            }
            Outcome::Failed(status) => {
                record.upstream_call(&self.model, Some("deadline"), took);
                record.finish(status.code());
                let _ = tx.send(Err(status)).await;
            }
        }
    }
}

/// How a stream ended.
enum Outcome {
    /// Upstream finished normally.
    Done,
    /// The caller cancelled or disconnected.
    CallerGone,
    /// Bedrock failed mid-stream.
    Upstream(BackendError),
    /// The router ended it (deadline).
    Failed(Status),
}

async fn send(tx: &EventSender, event: pb::converse_stream_event::Event) -> bool {
    tx.send(Ok(pb::ConverseStreamEvent { event: Some(event) }))
        .await
        .is_ok()
}

fn content_block(block: OutputBlock) -> pb::ContentBlock {
    let block = match block {
        OutputBlock::Text(text) => pb::content_block::Block::Text(text),
        OutputBlock::ToolUse { id, name, input } => {
            pb::content_block::Block::ToolUse(pb::ToolUse {
                tool_use_id: id,
                name,
                input_json: input.to_string(),
            })
        }
    };
    pb::ContentBlock { block: Some(block) }
}

fn decision(routed: &Routed<'_>) -> pb::Decision {
    pb::Decision {
        tier: match routed.choice.tier {
            Tier::Strong => pb::Tier::Strong,
            Tier::Fast => pb::Tier::Fast,
        } as i32,
        model_id: routed.model.invoke_id.clone(),
        score: routed.classification.score(),
        threshold: routed.choice.threshold,
        reasons: routed
            .classification
            .top_reasons(REASONS)
            .map(|(feature, contribution)| pb::Reason {
                feature: feature.to_owned(),
                contribution,
            })
            .collect(),
        basis: match routed.choice.basis {
            Basis::Score => pb::DecisionBasis::Score,
            Basis::Forced => pb::DecisionBasis::Forced,
            Basis::Capability => pb::DecisionBasis::Capability,
        } as i32,
    }
}

fn pb_usage(usage: Usage) -> pb::Usage {
    pb::Usage {
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
        total_tokens: usage.input_tokens.saturating_add(usage.output_tokens),
    }
}

fn latency(total: Duration, upstream: Duration, ttft: Option<Duration>) -> pb::Latency {
    pb::Latency {
        upstream_ms: upstream.as_secs_f64() * 1e3,
        overhead_us: total.saturating_sub(upstream).as_secs_f64() * 1e6,
        time_to_first_token_ms: ttft.map_or(0.0, |t| t.as_secs_f64() * 1e3),
        total_ms: total.as_secs_f64() * 1e3,
    }
}

/// The stream type of ConverseStream replies.
pub type EventStreamResponse =
    Pin<Box<dyn Stream<Item = Result<pb::ConverseStreamEvent, Status>> + Send>>;

#[tonic::async_trait]
impl PromptRouter for RouterService {
    async fn converse(
        &self,
        request: Request<pb::ConverseRequest>,
    ) -> Result<Response<pb::ConverseResponse>, Status> {
        let ctx = Context::new("Converse", request.metadata(), self.router.call_timeout);
        let mut record = Record::start(
            self.router.telemetry,
            ctx.span.clone(),
            std::time::Instant::now(),
        );
        let result = self
            .router
            .converse(&ctx, request.into_inner(), &mut record)
            .instrument(ctx.span.clone())
            .await;
        record.finish(result.as_ref().map_or_else(Status::code, |_| Code::Ok));
        ctx.respond(result)
    }

    type ConverseStreamStream = EventStreamResponse;

    async fn converse_stream(
        &self,
        request: Request<pb::ConverseRequest>,
    ) -> Result<Response<Self::ConverseStreamStream>, Status> {
        let ctx = Context::new(
            "ConverseStream",
            request.metadata(),
            self.router.call_timeout,
        );
        let record = Record::start(
            self.router.telemetry,
            ctx.span.clone(),
            std::time::Instant::now(),
        );
        let result = self
            .router
            .open_stream(&ctx, request.into_inner(), record)
            .instrument(ctx.span.clone())
            .await
            .map(|s| Box::pin(s) as EventStreamResponse);
        ctx.respond(result)
    }

    async fn route(
        &self,
        request: Request<pb::ConverseRequest>,
    ) -> Result<Response<pb::RouteResponse>, Status> {
        let ctx = Context::new("Route", request.metadata(), self.router.call_timeout);
        let result = ChatRequest::from_pb(request.into_inner(), &self.router.limits)
            .map_err(|e| Status::invalid_argument(e.0))
            .and_then(|chat| {
                self.router
                    .decider
                    .decide(&chat)
                    .map(|routed| decision(&routed))
                    .map_err(|e| Status::invalid_argument(e.0))
            })
            .map(|decision| pb::RouteResponse {
                decision: Some(decision),
            });
        ctx.respond(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        let mut md = MetadataMap::new();
        for (value, expected) in [
            ("200m", Some(Duration::from_millis(200))),
            ("5S", Some(Duration::from_secs(5))),
            ("1H", Some(Duration::from_secs(3600))),
            ("1500u", Some(Duration::from_micros(1500))),
            ("7n", Some(Duration::from_nanos(7))),
            ("2M", Some(Duration::from_secs(120))),
            ("10x", None),
            ("m", None),
            ("", None),
        ] {
            md.insert("grpc-timeout", value.parse().expect("ascii"));
            assert_eq!(grpc_timeout(&md), expected, "{value:?}");
        }
    }
}
