//! The `router.v1.PromptRouter` service: admit → validate → classify → decide → call (with
//! retries and fallbacks) → record → reply. The only layer that calls the backend and records
//! metrics.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context as TaskContext, Poll},
    time::Duration,
};

use tokio::{
    sync::{Semaphore, mpsc, oneshot, watch},
    time::Instant,
};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Code, Request, Response, Status, metadata::MetadataMap};
use tracing::{Instrument, Span, field::Empty};

use super::{
    admission::{self, Ticket},
    deadline,
    dispatch::{Dispatcher, Resilience, Walk, deadline_status},
    record::Record,
    status::from_backend,
};
use crate::{
    backend::{
        self, BackendError, Bedrock, Completion, ConverseParts, EventStream, OutputBlock,
        StreamEvent,
    },
    catalog::{Model, Tier},
    cost::{Cost, Usage},
    decide::{Decider, RoutingDecision},
    operating::Point,
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
/// Events buffered per stream between the upstream reader and the caller.
const STREAM_BUFFER: usize = 32;

/// Everything a request needs, shared by all requests.
#[derive(Debug)]
pub struct Router {
    /// Classifier, policy and catalog.
    pub decider: Decider,
    /// The Bedrock clients.
    pub bedrock: Bedrock,
    /// Retry budget, backoff, per-target breakers and region names.
    pub resilience: Resilience,
    /// Per-request size limits.
    pub limits: Limits,
    /// Upstream time allowed when the caller sets no deadline.
    pub call_timeout: Duration,
    /// Converse and ConverseStream requests handled at once; the admission layer refuses a
    /// request that finds none free.
    pub concurrency: Arc<Semaphore>,
    /// Whether prompt text may be logged.
    pub log_prompts: bool,
    /// Set when a shutdown's drain time is up: requests still running end at once with
    /// UNAVAILABLE, a failure on the router's side, instead of being dropped with the process.
    pub cut_off: watch::Sender<bool>,
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
        let request_id = request_id(metadata.get(REQUEST_ID).and_then(|v| v.to_str().ok()));
        let budget = deadline::grpc_timeout(metadata).map_or(call_timeout, deadline::budget);
        let span = tracing::info_span!(
            "request",
            rpc,
            request_id = request_id.as_str(),
            caller = Empty,
            tier = Empty,
            score = Empty,
            threshold = Empty,
            operating_point = Empty,
            model = Empty,
            attempts = Empty,
            outcome = Empty,
        );
        Self {
            request_id,
            deadline: received
                .checked_add(budget)
                .unwrap_or_else(|| received + call_timeout),
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
}

/// The caller's request id when it is usable (1 to 128 visible ASCII characters), else a new
/// random one.
pub(super) fn request_id(sent: Option<&str>) -> String {
    sent.filter(|id| !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| format!("{:032x}", fastrand::u128(..)), str::to_owned)
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
    fn new(routed: &RoutingDecision<'_>, resilience: &Resilience) -> Self {
        let first = Target {
            tier: routed.choice.tier,
            region: 0,
        };
        Self {
            decision: pb::Decision {
                tier: pb_tier(routed.choice.tier) as i32,
                model_id: routed.model.invoke_id.to_string(),
                score: routed.classification.score(),
                threshold: routed.choice.threshold,
                reasons: routed
                    .classification
                    .top_reasons(REASONS)
                    .map(|r| pb::Reason {
                        feature: r.feature.name().to_owned(),
                        contribution: r.effect,
                        description: r.feature.description().to_owned(),
                        toward: pb_tier(r.toward()) as i32,
                    })
                    .collect(),
                basis: pb_basis(routed.choice.basis) as i32,
                region: resilience.region(first).to_string(),
                operating_point: pb_operating_point(routed.choice.point) as i32,
            },
            basis: routed.choice.basis,
        }
    }

    /// The decision as answered by `target`, and the fallback that led there, if any.
    fn answered(
        self,
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
            model_id: model.invoke_id.to_string(),
            basis: pb_basis(basis) as i32,
            region: router.resilience.region(target).to_string(),
            ..self.decision
        };
        let fallback = Move::between(first, target).map(|kind| pb::Fallback {
            kind: match kind {
                Move::Region => pb::FallbackKind::Region,
                Move::Degrade => pb::FallbackKind::Degrade,
                Move::Escalate => pb::FallbackKind::Escalate,
            } as i32,
            from_model_id: router
                .decider
                .catalog
                .model(first.tier)
                .invoke_id
                .to_string(),
            from_region: router.resilience.region(first).to_string(),
            reason: walk.fallback_reason().to_owned(),
        });
        (decision, fallback)
    }
}

/// A request let in: its parts for Bedrock, its decision and its walk along the targets.
struct Admitted {
    parts: ConverseParts,
    decided: Decided,
    walk: Walk,
}

impl Router {
    /// `work`'s result, or the cut-off status if the drain time is up first.
    async fn until_cut_off<T>(
        &self,
        work: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        tokio::select! {
            result = work => result,
            () = self.cut_off() => Err(cut_off_status()),
        }
    }

    /// Completes when the drain time is up.
    async fn cut_off(&self) {
        let mut cut_off = self.cut_off.subscribe();
        if cut_off.wait_for(|cut| *cut).await.is_err() {
            // The sender lives as long as the router, so this is never reached; if it were,
            // no cut-off would ever come.
            std::future::pending::<()>().await;
        }
    }

    /// Validates and routes, noting both in the record.
    fn admit(
        &self,
        req: pb::ConverseRequest,
        record: &mut Record,
        ctx: &Context,
    ) -> Result<Admitted, Status> {
        let chat =
            ChatRequest::from_pb(req, &self.limits).map_err(|e| Status::invalid_argument(e.0))?;
        if !chat.routing.caller.is_empty() {
            ctx.span.record("caller", chat.routing.caller.as_str());
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
            tracing::info!(parent: &ctx.span, prompt = prompt.join("\n").as_str(), "prompt");
        }
        let classify_started = std::time::Instant::now();
        let routed = self
            .decider
            .decide(&chat)
            .map_err(|e| Status::invalid_argument(e.0))?;
        record.classified(classify_started.elapsed(), routed.classification.score());
        ctx.span.record("threshold", routed.choice.threshold);
        ctx.span
            .record("operating_point", routed.choice.point.as_str());
        record.routed(
            routed.choice.tier,
            routed.choice.basis,
            &routed.model.invoke_id,
        );
        let decided = Decided::new(&routed, &self.resilience);
        let walk = self
            .resilience
            .walk(routed.choice.tier, routed.other_tier_ok);
        // Built once, moving the request's text and images; each attempt sends a clone.
        let parts = backend::prepare(chat).map_err(|e| from_backend(&e, &ctx.request_id))?;
        Ok(Admitted {
            parts,
            decided,
            walk,
        })
    }

    fn dispatcher<'a>(&'a self, request_id: &'a str, deadline: Instant) -> Dispatcher<'a> {
        Dispatcher {
            resilience: &self.resilience,
            catalog: &self.decider.catalog,
            request_id,
            deadline,
        }
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
        let Admitted {
            parts,
            decided,
            mut walk,
        } = self.admit(req, record, ctx)?;
        let dispatcher = self.dispatcher(&ctx.request_id, ctx.deadline);
        let (completion, target) = dispatcher
            .attempt(&mut walk, record, |target, model, clock| {
                let parts = parts.clone();
                async move {
                    self.bedrock
                        .converse(target.region, &model.invoke_id, parts, &clock)
                        .await
                }
            })
            .await?;
        dispatcher.succeeded(&walk, target);
        record.end_call(None);
        let (decision, fallback) = decided.answered(self, &walk, target, record);
        let Completion {
            content,
            stop_reason,
            usage,
        } = completion;
        let cost = self.cost(self.decider.catalog.model(target.tier), usage);
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

/// The events of a streamed reply: whatever the relay task sent, then the status it ended with
/// if it failed. The final status has its own channel so it can always be delivered, even to a
/// caller who stopped reading and left the event buffer full.
struct Events {
    events: ReceiverStream<pb::ConverseStreamEvent>,
    end: Option<oneshot::Receiver<Status>>,
    /// The status the relay task ended with, held until the events before it are out.
    failed: Option<Status>,
}

impl Events {
    fn new(
        events: mpsc::Receiver<pb::ConverseStreamEvent>,
        end: oneshot::Receiver<Status>,
    ) -> Self {
        Self {
            events: ReceiverStream::new(events),
            end: Some(end),
            failed: None,
        }
    }
}

impl Stream for Events {
    type Item = Result<pb::ConverseStreamEvent, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        // The end first: the relay task ends (sends its status, or drops the sender when the
        // stream succeeded) only after queueing its last event, so once the end is seen every
        // event is in the queue. Looking at the queue first lost the last event (the metadata)
        // when the task queued it and ended between the two looks.
        if let Some(end) = self.end.as_mut()
            && let Poll::Ready(ended) = Pin::new(end).poll(cx)
        {
            self.end = None;
            self.failed = ended.ok();
        }
        match Pin::new(&mut self.events).poll_next(cx) {
            Poll::Ready(Some(event)) => Poll::Ready(Some(Ok(event))),
            _ if self.end.is_none() => Poll::Ready(self.failed.take().map(Err)),
            _ => Poll::Pending,
        }
    }
}

/// Where the relay task sends events, and the final status if the stream fails.
struct Outbox {
    events: mpsc::Sender<pb::ConverseStreamEvent>,
    end: oneshot::Sender<Status>,
    deadline: Instant,
}

impl Outbox {
    /// Sends one event, waiting for the caller to make room no longer than the deadline.
    async fn send(&self, event: pb::converse_stream_event::Event) -> Result<(), Outcome> {
        let sent = tokio::time::timeout_at(
            self.deadline,
            self.events
                .send(pb::ConverseStreamEvent { event: Some(event) }),
        )
        .await;
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Outcome::CallerGone),
            Err(_) => Err(Outcome::Failed(Status::deadline_exceeded(
                "the call's deadline passed while the caller was not reading the stream",
            ))),
        }
    }
}

/// A stream being served after the handler returned: everything the relay task owns.
struct StreamJob {
    router: Arc<Router>,
    parts: ConverseParts,
    decided: Decided,
    walk: Walk,
    request_id: String,
    deadline: Instant,
    record: Record,
    /// The request's slot and memory charge, held until the relay ends.
    _ticket: Option<Ticket>,
}

/// How a stream ended.
enum Outcome {
    /// Upstream finished normally.
    Done,
    /// The caller cancelled or disconnected.
    CallerGone,
    /// Bedrock failed mid-stream, after this many text deltas.
    Upstream(BackendError, u32),
    /// The router ended it (deadline).
    Failed(Status),
}

impl StreamJob {
    /// Opens the upstream stream on the first target that accepts it.
    async fn open(&mut self) -> Result<(EventStream, Target), Status> {
        let Self {
            router,
            parts,
            walk,
            record,
            request_id,
            deadline,
            ..
        } = self;
        let bedrock = &router.bedrock;
        let parts = &*parts;
        router
            .dispatcher(request_id, *deadline)
            .attempt(walk, record, |target, model, clock| {
                let parts = parts.clone();
                async move {
                    bedrock
                        .converse_stream(target.region, &model.invoke_id, parts, &clock)
                        .await
                }
            })
            .await
    }

    /// Waits for the first upstream event, retrying on another target if the stream fails
    /// before it: until then the caller has seen nothing, so the switch is invisible.
    async fn first_event(
        &mut self,
        mut upstream: EventStream,
        mut target: Target,
        outbox: &Outbox,
    ) -> Result<(EventStream, Target, Option<StreamEvent>), Outcome> {
        loop {
            let next = tokio::select! {
                next = tokio::time::timeout_at(self.deadline, upstream.next()) => next,
                () = outbox.events.closed() => return Err(Outcome::CallerGone),
            };
            let err = match next {
                Err(_) => return Err(Outcome::Failed(deadline_status())),
                Ok(Ok(event)) => {
                    self.router
                        .dispatcher(&self.request_id, self.deadline)
                        .succeeded(&self.walk, target);
                    return Ok((upstream, target, event));
                }
                Ok(Err(err)) => err,
            };
            if !err.retryable() {
                return Err(Outcome::Upstream(err, 0));
            }
            self.record.end_call(Some(err.kind()));
            self.router
                .dispatcher(&self.request_id, self.deadline)
                .failed(&mut self.walk, target, err);
            (upstream, target) = self.open().await.map_err(Outcome::Failed)?;
        }
    }

    /// Relays upstream events to the caller until the stream ends, fails, passes its deadline
    /// or the caller goes away (which drops the upstream stream and so closes its connection).
    async fn pump(mut self, upstream: EventStream, target: Target, outbox: Outbox) {
        let router = Arc::clone(&self.router);
        let outcome = tokio::select! {
            outcome = self.relay(upstream, target, &outbox) => outcome,
            () = router.cut_off() => Outcome::Failed(cut_off_status()),
        };
        self.finish(outcome, outbox);
    }

    async fn relay(&mut self, upstream: EventStream, target: Target, outbox: &Outbox) -> Outcome {
        use pb::converse_stream_event::Event;
        let (mut upstream, target, mut pending) =
            match self.first_event(upstream, target, outbox).await {
                Ok(first) => first,
                Err(outcome) => return outcome,
            };
        let decided = self.decided.clone();
        let (decision, fallback) =
            decided.answered(&self.router, &self.walk, target, &mut self.record);
        if let Err(outcome) = outbox.send(Event::Decision(decision)).await {
            return outcome;
        }
        let mut usage = None;
        let mut deltas = 0u32;
        loop {
            let event = match pending.take() {
                Some(event) => event,
                None => {
                    let next = tokio::select! {
                        next = tokio::time::timeout_at(self.deadline, upstream.next()) => next,
                        () = outbox.events.closed() => return Outcome::CallerGone,
                    };
                    match next {
                        Err(_) => {
                            return Outcome::Failed(Status::deadline_exceeded(format!(
                                "the call's deadline passed after {deltas} text deltas"
                            )));
                        }
                        Ok(Err(err)) => return Outcome::Upstream(err, deltas),
                        Ok(Ok(None)) => break,
                        Ok(Ok(Some(event))) => event,
                    }
                }
            };
            let out = match event {
                StreamEvent::Text { index, text } => {
                    self.record.first_token();
                    deltas += 1;
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
            if let Err(outcome) = outbox.send(out).await {
                return outcome;
            }
        }
        self.record.end_call(None);
        let usage = usage.unwrap_or_else(|| {
            tracing::warn!(
                "the upstream stream ended without usage metadata; cost counts zero tokens"
            );
            Usage::default()
        });
        let cost = self
            .router
            .cost(self.router.decider.catalog.model(target.tier), usage);
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
        match outbox.send(Event::Metadata(metadata)).await {
            Ok(()) => Outcome::Done,
            Err(outcome) => outcome,
        }
    }

    /// Records how the stream ended and hands its status to the caller. A call still under way
    /// (caller gone, deadline) is ended by the record itself with the matching outcome.
    fn finish(mut self, outcome: Outcome, outbox: Outbox) {
        let status = match outcome {
            Outcome::Done => {
                self.record.finish(Code::Ok);
                return;
            }
            Outcome::CallerGone => {
                self.record.finish(Code::Cancelled);
                return;
            }
            Outcome::Upstream(err, deltas) => {
                self.record.end_call(Some(err.kind()));
                let status = from_backend(&err, &self.request_id);
                Status::new(
                    status.code(),
                    format!(
                        "the model's stream failed after {deltas} text deltas: {}",
                        status.message()
                    ),
                )
            }
            Outcome::Failed(status) => status,
        };
        self.record.finish(status.code());
        let _ = outbox.end.send(status);
    }
}

/// The status of a request still running when the drain time is up.
fn cut_off_status() -> Status {
    Status::unavailable(
        "the router is shutting down and its drain time (server.drain_timeout_ms) ran out before \
         this request finished; retry",
    )
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

fn pb_operating_point(point: Point) -> pb::OperatingPoint {
    match point {
        Point::Fixed => pb::OperatingPoint::Fixed,
        Point::TargetShare => pb::OperatingPoint::TargetShare,
        Point::WarmupPooled => pb::OperatingPoint::WarmupPooled,
        Point::WarmupFixed => pb::OperatingPoint::WarmupFixed,
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
        sdk_us: record.sdk().as_secs_f64() * 1e6,
        router_us: record.own(total).as_secs_f64() * 1e6,
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
        let _ticket = admission::claim(request.extensions());
        let ctx = Context::new("Converse", request.metadata(), self.router.call_timeout);
        let mut record = Record::start(self.router.telemetry, ctx.span.clone());
        let work = self
            .router
            .converse(&ctx, request.into_inner(), &mut record)
            .instrument(ctx.span.clone());
        let result = self.router.until_cut_off(work).await;
        record.finish(result.as_ref().map_or_else(Status::code, |_| Code::Ok));
        ctx.respond(result)
    }

    type ConverseStreamStream = EventStreamResponse;

    async fn converse_stream(
        &self,
        request: Request<pb::ConverseRequest>,
    ) -> Result<Response<Self::ConverseStreamStream>, Status> {
        let ticket = admission::claim(request.extensions());
        let ctx = Context::new(
            "ConverseStream",
            request.metadata(),
            self.router.call_timeout,
        );
        let mut record = Record::start(self.router.telemetry, ctx.span.clone());
        let admitted = ctx
            .span
            .in_scope(|| self.router.admit(request.into_inner(), &mut record, &ctx));
        let admitted = match admitted {
            Ok(admitted) => admitted,
            Err(status) => {
                record.finish(status.code());
                return ctx.respond(Err(status));
            }
        };
        let mut job = StreamJob {
            router: Arc::clone(&self.router),
            parts: admitted.parts,
            decided: admitted.decided,
            walk: admitted.walk,
            request_id: ctx.request_id.clone(),
            deadline: ctx.deadline,
            record,
            _ticket: ticket,
        };
        // A refusal before any event is an ordinary error status, not a broken stream.
        let opened = self
            .router
            .until_cut_off(job.open().instrument(ctx.span.clone()))
            .await;
        let (upstream, target) = match opened {
            Ok(opened) => opened,
            Err(status) => {
                job.record.finish(status.code());
                return ctx.respond(Err(status));
            }
        };
        let (events, events_rx) = mpsc::channel(STREAM_BUFFER);
        let (end, end_rx) = oneshot::channel();
        let outbox = Outbox {
            events,
            end,
            deadline: ctx.deadline,
        };
        tokio::spawn(
            job.pump(upstream, target, outbox)
                .instrument(ctx.span.clone()),
        );
        let stream = Events::new(events_rx, end_rx);
        ctx.respond(Ok(Box::pin(stream) as EventStreamResponse))
    }

    async fn route(
        &self,
        request: Request<pb::ConverseRequest>,
    ) -> Result<Response<pb::RouteResponse>, Status> {
        let _ticket = admission::claim(request.extensions());
        let ctx = Context::new("Route", request.metadata(), self.router.call_timeout);
        let result = ChatRequest::from_pb(request.into_inner(), &self.router.limits)
            .map_err(|e| Status::invalid_argument(e.0))
            .and_then(|chat| {
                self.router
                    .decider
                    .decide(&chat)
                    .map(|routed| Decided::new(&routed, &self.router.resilience).decision)
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

    #[tokio::test]
    async fn a_stream_ends_after_every_queued_event() {
        use tokio_stream::StreamExt as _;
        let event = |text: &str| pb::ConverseStreamEvent {
            event: Some(pb::converse_stream_event::Event::Stop(pb::Stop {
                stop_reason: text.to_owned(),
            })),
        };
        for status in [None, Some(Status::unavailable("upstream failed"))] {
            let (events, events_rx) = mpsc::channel(4);
            let (end, end_rx) = oneshot::channel();
            let mut stream = Events::new(events_rx, end_rx);
            events.send(event("a")).await.expect("queued");
            events.send(event("b")).await.expect("queued");
            // The relay task's last moves: the status (if it failed), then both senders go.
            if let Some(status) = status.clone() {
                end.send(status).expect("sent");
            } else {
                drop(end);
            }
            drop(events);
            let mut seen = Vec::new();
            while let Some(item) = stream.next().await {
                seen.push(item.map_or_else(|s| s.message().to_owned(), |e| format!("{e:?}")));
            }
            assert_eq!(seen.len(), 2 + usize::from(status.is_some()), "{seen:?}");
            assert!(
                seen[0].contains("\"a\"") && seen[1].contains("\"b\""),
                "{seen:?}"
            );
            if status.is_some() {
                assert_eq!(seen[2], "upstream failed");
            }
        }
    }

    #[test]
    fn a_huge_timeout_does_not_overflow_the_deadline() {
        let mut md = MetadataMap::new();
        md.insert("grpc-timeout", "99999999H".parse().expect("ascii"));
        let ctx = Context::new("Converse", &md, Duration::from_secs(120));
        assert!(ctx.deadline > Instant::now());
    }
}
