//! The `router.v1.PromptRouter` service: admit → validate → classify → decide → call (with
//! retries and fallbacks) → record → reply. The only layer that calls the backend and records
//! metrics.

use std::{pin::Pin, sync::Arc, time::Duration};

use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    time::Instant,
};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Code, Request, Response, Status, metadata::MetadataMap};
use tracing::{Instrument, Span, field::Empty};

use super::{
    dispatch::{Answered, Dispatcher, Resilience, Walk, deadline_status},
    record::Record,
    status::from_backend,
};
use crate::{
    backend::{BackendError, Bedrock, Completion, EventStream, OutputBlock, StreamEvent},
    catalog::{Model, Tier},
    cost::{Cost, Usage},
    decide::{Decider, Routed},
    pb::{self, prompt_router_server::PromptRouter},
    policy::Basis,
    request::{Block, ChatRequest, Limits},
    resilience::{Move, Target},
    telemetry::Telemetry,
};

/// The request-id metadata key, read from callers and echoed back.
pub const REQUEST_ID: &str = "x-request-id";
/// How many top features a decision names.
const REASONS: usize = 3;
/// Answer slightly before the caller's deadline so the caller gets DEADLINE_EXCEEDED from us
/// (with a message) rather than a bare cancellation from its own or the transport's timer, which
/// started earlier than ours (the request spent time on the wire). A tenth of the budget, at
/// most 20 ms.
const DEADLINE_MARGIN: Duration = Duration::from_millis(20);
/// Events buffered per stream between the upstream reader and the caller.
const STREAM_BUFFER: usize = 32;

/// Everything a request needs, shared by all requests.
#[derive(Debug)]
pub struct Router {
    /// Classifier, policy and catalog.
    pub decider: Decider,
    /// The Bedrock clients.
    pub bedrock: Bedrock,
    /// Retry budget, backoff and per-target breakers.
    pub resilience: Resilience,
    /// Per-request size limits.
    pub limits: Limits,
    /// Upstream time allowed when the caller sets no deadline.
    pub call_timeout: Duration,
    /// Requests handled at once; a request that finds none free is refused.
    pub concurrency: Arc<Semaphore>,
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
        let budget = grpc_timeout(metadata).map_or(call_timeout, |t| {
            t.saturating_sub(DEADLINE_MARGIN.min(t / 10))
        });
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

    fn dispatcher<'a>(&'a self, router: &'a Router) -> Dispatcher<'a> {
        Dispatcher {
            resilience: &router.resilience,
            catalog: &router.decider.catalog,
            request_id: &self.request_id,
            deadline: self.deadline,
        }
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

/// The routing decision of a request, before and after its calls.
#[derive(Debug, Clone)]
struct Decided {
    /// The decision as the policy made it (tier, model and region of the first choice).
    decision: pb::Decision,
    /// The policy's basis, kept for the metrics of a request answered by its first choice.
    basis: Basis,
}

impl Decided {
    fn new(routed: &Routed<'_>, primary_region: &str) -> Self {
        Self {
            decision: pb::Decision {
                tier: pb_tier(routed.choice.tier) as i32,
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
                basis: pb_basis(routed.choice.basis) as i32,
                region: primary_region.to_owned(),
            },
            basis: routed.choice.basis,
        }
    }

    /// The decision as answered by `target`, and the fallback that led there, if any.
    fn answered(
        &self,
        router: &Router,
        walk: &Walk,
        target: Target,
        record: &mut Record,
    ) -> (pb::Decision, Option<pb::Fallback>) {
        let first = walk.first();
        let model = router.decider.catalog.model(target.tier);
        let basis = if target.tier == first.tier {
            self.basis
        } else {
            Basis::Fallback
        };
        record.routed(target.tier, basis, &model.invoke_id);
        let decision = pb::Decision {
            tier: pb_tier(target.tier) as i32,
            model_id: model.invoke_id.clone(),
            basis: pb_basis(basis) as i32,
            region: router.resilience.region(target).to_owned(),
            ..self.decision.clone()
        };
        let fallback = Move::between(first, target).map(|kind| pb::Fallback {
            kind: match kind {
                Move::Region => pb::FallbackKind::Region,
                Move::Degrade => pb::FallbackKind::Degrade,
                Move::Escalate => pb::FallbackKind::Escalate,
            } as i32,
            from_model_id: router.decider.catalog.model(first.tier).invoke_id.clone(),
            from_region: router.resilience.region(first).to_owned(),
            reason: walk.fallback_reason().to_owned(),
        });
        (decision, fallback)
    }
}

impl Router {
    /// Takes a concurrency slot or refuses at once: queueing would only turn overload into
    /// timeouts for everyone.
    fn admit_slot(self: &Arc<Self>) -> Result<OwnedSemaphorePermit, Status> {
        Arc::clone(&self.concurrency).try_acquire_owned().map_err(|_| {
            Status::resource_exhausted("the router is at its concurrency limit (server.max_concurrency); retry with backoff")
        })
    }

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
        let decided = Decided::new(&routed, self.bedrock.region_name(0));
        let mut walk = self
            .resilience
            .walk(routed.choice.tier, routed.other_tier_ok);
        let (completion, answered) = ctx
            .dispatcher(self)
            .attempt(&mut walk, record, |target, model| {
                self.bedrock
                    .converse(target.region, &model.invoke_id, &chat)
            })
            .await?;
        let model = self.decider.catalog.model(answered.target.tier);
        record.upstream_call(
            &model.invoke_id,
            self.resilience.region(answered.target),
            None,
            answered.started.elapsed(),
        );
        let (decision, fallback) = decided.answered(self, &walk, answered.target, record);
        let Completion {
            content,
            stop_reason,
            usage,
        } = completion;
        let cost = self.cost(model, usage);
        record.answered(usage, cost);
        Ok(pb::ConverseResponse {
            message: Some(pb::Message {
                role: pb::Role::Assistant as i32,
                content: content.into_iter().map(content_block).collect(),
            }),
            stop_reason,
            usage: Some(pb_usage(usage)),
            decision: Some(decision),
            cost_usd: cost.actual.as_usd(),
            baseline_cost_usd: cost.baseline.as_usd(),
            latency: Some(latency(record)),
            attempts: record.attempts(),
            request_id: ctx.request_id.clone(),
            fallback,
        })
    }
}

/// A stream being served after the handler returned: everything the relay task owns.
struct StreamJob {
    router: Arc<Router>,
    chat: ChatRequest,
    decided: Decided,
    walk: Walk,
    request_id: String,
    deadline: Instant,
    record: Record,
    _slot: OwnedSemaphorePermit,
}

type EventSender = mpsc::Sender<Result<pb::ConverseStreamEvent, Status>>;

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

impl StreamJob {
    /// Opens the upstream stream on the first target that accepts it.
    async fn open(&mut self) -> Result<(EventStream, Answered), Status> {
        let Self {
            router,
            chat,
            walk,
            record,
            request_id,
            deadline,
            ..
        } = self;
        let dispatcher = Dispatcher {
            resilience: &router.resilience,
            catalog: &router.decider.catalog,
            request_id,
            deadline: *deadline,
        };
        let bedrock = &router.bedrock;
        let chat = &*chat;
        dispatcher
            .attempt(walk, record, |target, model| {
                bedrock.converse_stream(target.region, &model.invoke_id, chat)
            })
            .await
    }

    /// Waits for the first upstream event, retrying on another target if the stream fails
    /// before it: until then the caller has seen nothing, so the switch is invisible.
    async fn first_event(
        &mut self,
        mut upstream: EventStream,
        mut answered: Answered,
        tx: &EventSender,
    ) -> Result<(EventStream, Answered, Option<StreamEvent>), Outcome> {
        loop {
            let next = tokio::select! {
                next = tokio::time::timeout_at(self.deadline, upstream.next()) => next,
                () = tx.closed() => return Err(Outcome::CallerGone),
            };
            let err = match next {
                Err(_) => return Err(Outcome::Failed(deadline_status())),
                Ok(Ok(event)) => return Ok((upstream, answered, event)),
                Ok(Err(err)) => err,
            };
            let model = self.router.decider.catalog.model(answered.target.tier);
            let region = self.router.resilience.region(answered.target);
            self.record.upstream_call(
                &model.invoke_id,
                region,
                Some(err.kind()),
                answered.started.elapsed(),
            );
            if !err.retryable() {
                return Err(Outcome::Upstream(err));
            }
            self.walk.failed(answered.target, err);
            (upstream, answered) = self.open().await.map_err(Outcome::Failed)?;
        }
    }

    /// Relays upstream events to the caller until the stream ends, fails, passes its deadline
    /// or the caller goes away (which drops the upstream stream and so closes its connection).
    async fn pump(mut self, upstream: EventStream, answered: Answered, tx: EventSender) {
        use pb::converse_stream_event::Event;
        let (mut upstream, answered, mut pending) =
            match self.first_event(upstream, answered, &tx).await {
                Ok(first) => first,
                Err(outcome) => return self.finish(outcome, None, 0, &tx).await,
            };
        let (decision, fallback) =
            self.decided
                .answered(&self.router, &self.walk, answered.target, &mut self.record);
        if !send(&tx, Event::Decision(decision)).await {
            return self
                .finish(Outcome::CallerGone, Some(answered), 0, &tx)
                .await;
        }
        let mut usage = None;
        let mut tokens_sent = 0u32;
        let outcome = loop {
            let event = match pending.take() {
                Some(event) => event,
                None => {
                    let next = tokio::select! {
                        next = tokio::time::timeout_at(self.deadline, upstream.next()) => next,
                        () = tx.closed() => break Outcome::CallerGone,
                    };
                    match next {
                        Err(_) => {
                            break Outcome::Failed(Status::deadline_exceeded(format!(
                                "the call's deadline passed after {tokens_sent} streamed tokens"
                            )));
                        }
                        Ok(Err(err)) => break Outcome::Upstream(err),
                        Ok(Ok(None)) => break Outcome::Done,
                        Ok(Ok(Some(event))) => event,
                    }
                }
            };
            let out = match event {
                StreamEvent::Text { index, text } => {
                    self.record.first_token();
                    tokens_sent += 1;
                    Event::Delta(pb::Delta {
                        content_block_index: index,
                        delta: Some(pb::delta::Delta::Text(text)),
                    })
                }
                StreamEvent::ToolUseStart { index, id, name } => {
                    self.record.first_token();
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
        if let Outcome::Done = outcome {
            let model = self.router.decider.catalog.model(answered.target.tier);
            self.record.upstream_call(
                &model.invoke_id,
                self.router.resilience.region(answered.target),
                None,
                answered.started.elapsed(),
            );
            let usage = usage.unwrap_or_else(|| {
                tracing::warn!(
                    "the upstream stream ended without usage metadata; cost counts zero tokens"
                );
                Usage::default()
            });
            let cost = self.router.cost(model, usage);
            self.record.answered(usage, cost);
            let metadata = pb::StreamMetadata {
                usage: Some(pb_usage(usage)),
                cost_usd: cost.actual.as_usd(),
                baseline_cost_usd: cost.baseline.as_usd(),
                latency: Some(latency(&self.record)),
                attempts: self.record.attempts(),
                request_id: self.request_id.clone(),
                fallback,
            };
            let code = if send(&tx, Event::Metadata(metadata)).await {
                Code::Ok
            } else {
                Code::Cancelled
            };
            self.record.finish(code);
        } else {
            self.finish(outcome, Some(answered), tokens_sent, &tx).await;
        }
    }

    /// Ends a stream that did not complete: records the last call and sends the status.
    async fn finish(
        mut self,
        outcome: Outcome,
        answered: Option<Answered>,
        tokens_sent: u32,
        tx: &EventSender,
    ) {
        let kind = match &outcome {
            Outcome::Done => None,
            Outcome::CallerGone => Some("cancelled"),
            Outcome::Upstream(err) => Some(err.kind()),
            Outcome::Failed(status) if status.code() == Code::DeadlineExceeded => Some("deadline"),
            Outcome::Failed(_) => None,
        };
        if let (Some(answered), Some(kind)) = (answered, kind) {
            let model = self.router.decider.catalog.model(answered.target.tier);
            self.record.upstream_call(
                &model.invoke_id,
                self.router.resilience.region(answered.target),
                Some(kind),
                answered.started.elapsed(),
            );
        }
        let status = match outcome {
            Outcome::Done => return,
            Outcome::CallerGone => {
                self.record.finish(Code::Cancelled);
                return;
            }
            Outcome::Upstream(err) => {
                let status = from_backend(&err, &self.request_id);
                Status::new(
                    status.code(),
                    format!(
                        "the model's stream failed after {tokens_sent} streamed tokens: {}",
                        status.message()
                    ),
                )
            }
            Outcome::Failed(status) => status,
        };
        self.record.finish(status.code());
        let _ = tx.send(Err(status)).await;
    }
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

fn pb_tier(tier: Tier) -> pb::Tier {
    match tier {
        Tier::Strong => pb::Tier::Strong,
        Tier::Fast => pb::Tier::Fast,
    }
}

fn pb_basis(basis: Basis) -> pb::DecisionBasis {
    match basis {
        Basis::Score => pb::DecisionBasis::Score,
        Basis::Forced => pb::DecisionBasis::Forced,
        Basis::Capability => pb::DecisionBasis::Capability,
        Basis::Fallback => pb::DecisionBasis::Fallback,
    }
}

fn pb_usage(usage: Usage) -> pb::Usage {
    pb::Usage {
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
        total_tokens: usage.input_tokens.saturating_add(usage.output_tokens),
    }
}

fn latency(record: &Record) -> pb::Latency {
    let total = record.started().elapsed();
    pb::Latency {
        upstream_ms: record.upstream().as_secs_f64() * 1e3,
        overhead_us: record.overhead(total).as_secs_f64() * 1e6,
        time_to_first_token_ms: record
            .time_to_first_token()
            .map_or(0.0, |t| t.as_secs_f64() * 1e3),
        total_ms: total.as_secs_f64() * 1e3,
        retry_wait_ms: record.waited().as_secs_f64() * 1e3,
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
        let result = match self.router.admit_slot() {
            Ok(_slot) => {
                self.router
                    .converse(&ctx, request.into_inner(), &mut record)
                    .instrument(ctx.span.clone())
                    .await
            }
            Err(status) => Err(status),
        };
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
        let mut record = Record::start(
            self.router.telemetry,
            ctx.span.clone(),
            std::time::Instant::now(),
        );
        let admitted = self.router.admit_slot().and_then(|slot| {
            let (chat, routed) = self
                .router
                .admit(request.into_inner(), &mut record, &ctx.span)?;
            let decided = Decided::new(&routed, self.router.bedrock.region_name(0));
            let walk = self
                .router
                .resilience
                .walk(routed.choice.tier, routed.other_tier_ok);
            Ok((chat, decided, walk, slot))
        });
        let (chat, decided, walk, slot) = match admitted {
            Ok(admitted) => admitted,
            Err(status) => {
                record.finish(status.code());
                return ctx.respond(Err(status));
            }
        };
        let mut job = StreamJob {
            router: Arc::clone(&self.router),
            chat,
            decided,
            walk,
            request_id: ctx.request_id.clone(),
            deadline: ctx.deadline,
            record,
            _slot: slot,
        };
        // A refusal before any event is an ordinary error status, not a broken stream.
        let (upstream, answered) = match job.open().instrument(ctx.span.clone()).await {
            Ok(opened) => opened,
            Err(status) => {
                job.record.finish(status.code());
                return ctx.respond(Err(status));
            }
        };
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(
            job.pump(upstream, answered, tx)
                .instrument(ctx.span.clone()),
        );
        ctx.respond(Ok(Box::pin(ReceiverStream::new(rx)) as EventStreamResponse))
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
                    .map(|routed| {
                        Decided::new(&routed, self.router.bedrock.region_name(0)).decision
                    })
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
