//! The `router.v1.PromptRouter` service: admit → validate → classify → decide → call (with
//! retries and fallbacks) → record → reply. The only layer that calls the backend and records
//! metrics. Every RPC starts the same way ([`RouterState::begin`], [`RouterState::decide`]); Converse
//! and ConverseStream then call the same way ([`RouterState::answer`]) and end a success the same
//! way ([`RouterState::settle`]); the stream's relay is [`super::stream`], the replies
//! [`super::reply`].

use std::{sync::Arc, time::Duration};

use tokio::sync::{Semaphore, watch};
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

use super::{
    admission::{self, Ticket},
    auth,
    context::Context,
    convert,
    dispatch::{Dispatcher, Resilience, Walk},
    error::Error,
    feedback::{Recent, Routed},
    record::Record,
    reply::{Answered, Decided, Summary},
    stream::{EventStreamResponse, StreamJob},
    target::QualityTarget,
    tls::Peer,
};
use crate::{
    backend::{self, BackendError, Bedrock, CallClock, Completion, ConverseParts},
    labels::LabelSink,
    limits::{Limiter, Reservation},
    pb::{self, prompt_router_server::PromptRouter},
    quality::{Duels, Job, Sampled},
    telemetry::{self, Telemetry},
};
use prompt_router_core::{
    caller::{Callers, Refusal, Resolved},
    catalog::{Model, Tier},
    cost::{Cost, Usage},
    decide::{Decider, RoutingDecision},
    limits::Ask,
    operating::DEFAULT_CALLER,
    request::{Block, ChatRequest, Limits},
    resilience::Target,
};

/// Everything a request needs, shared by all requests.
#[derive(Debug)]
pub struct RouterState {
    /// Classifier, policy and catalog.
    pub decider: Decider,
    /// The Bedrock clients.
    pub bedrock: Bedrock,
    /// Retry budget, backoff, per-target breakers and region names.
    pub resilience: Resilience,
    /// Per-request size limits.
    pub limits: Limits,
    /// Upstream time allowed when the caller sets no deadline.
    pub default_deadline: Duration,
    /// Converse and ConverseStream requests handled at once; the admission layer refuses a
    /// request that finds none free.
    pub concurrency: Arc<Semaphore>,
    /// Whether prompt text may be logged.
    pub log_prompts: bool,
    /// Set when a shutdown's drain time is up: requests still running end at once with
    /// UNAVAILABLE, a failure on the router's side, instead of being dropped with the process.
    pub cut_off: watch::Sender<bool>,
    /// Set when a shutdown starts: `/ready` answers 503, as gRPC health says NOT_SERVING.
    pub draining: watch::Sender<bool>,
    /// Where duels and feedback hand their label rows.
    pub labels: LabelSink,
    /// The duel runner.
    pub duels: Arc<Duels>,
    /// The recent answered requests, for feedback to join to (kept only with a label store).
    pub recent: Recent,
    /// `routing.target_quality`, for [`RouterState::retarget`].
    pub quality_target: Option<QualityTarget>,
    /// Who callers are and each one's policy.
    pub callers: Callers,
    /// Callers' rate limits and spend budgets.
    pub limiter: Limiter,
    /// Metrics.
    pub telemetry: &'static Telemetry,
}

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct RouterService {
    router: Arc<RouterState>,
}

impl RouterService {
    /// Wraps the shared router.
    pub fn new(router: Arc<RouterState>) -> Self {
        Self { router }
    }
}

/// A call as every RPC starts it: its context, its slot and memory charge, its message.
struct Started<M> {
    ctx: Context,
    ticket: Option<Ticket>,
    request: M,
}

/// A request converted, attributed to its caller and decided; `took` is how long classifying
/// took.
struct Considered<'s> {
    chat: ChatRequest,
    routed: RoutingDecision<'s>,
    took: Duration,
    caller: Resolved<'s>,
}

/// A decided request ready for its calls: its parts for Bedrock, its decision, its walk
/// along the targets, and what its duel needs if it was sampled for one.
struct Admitted {
    parts: ConverseParts,
    decided: Decided,
    walk: Walk,
    duel: Option<Sampled>,
    feedback: Option<Routed>,
}

/// What an answered request leaves for after its reply: what feedback on it will need, and
/// a sampled request's duel material (its sampling and its parts).
struct Followups {
    feedback: Option<Routed>,
    duel: Option<(Sampled, ConverseParts)>,
}

impl RouterState {
    /// The start of every RPC: the slot and memory charge admission took, the context from
    /// the metadata (with the caller the credentials identify), the message.
    fn begin<M>(&self, rpc: &'static str, request: Request<M>) -> Started<M> {
        let ticket = admission::claim(request.extensions());
        let mut ctx = Context::new(rpc, request.metadata(), self.default_deadline);
        match auth::identify(
            &self.callers,
            request.metadata(),
            request.extensions().get::<Peer>(),
        ) {
            Ok(caller) => ctx.authenticated = caller,
            Err(failure) => ctx.refused = Some(failure),
        }
        Started {
            ctx,
            ticket,
            request: request.into_inner(),
        }
    }

    /// Converts the message, attributes it to its caller, checks the caller's policy allows
    /// it, and decides, for every RPC.
    fn decide(&self, ctx: &Context, request: pb::ConverseRequest) -> Result<Considered<'_>, Error> {
        let mut chat = convert::chat_request(request, &self.limits)?;
        let caller = self
            .callers
            .resolve(ctx.credentials()?, &chat.routing.caller)
            .inspect_err(|refusal| {
                // A caller that has credentials, named in the request without them.
                if matches!(refusal, Refusal::Unauthenticated(_)) {
                    metrics::counter!(telemetry::AUTH_FAILURES_TOTAL, "reason" => auth::Failure::Missing.reason())
                        .increment(1);
                }
            })?;
        caller.policy.permit(caller.key, &chat)?;
        if let Some(name) = &ctx.authenticated {
            // The operating point, logs and labels key on the caller the credentials name.
            chat.routing.caller = name.to_string();
        }
        if !chat.routing.caller.is_empty() {
            ctx.span.record("caller", chat.routing.caller.as_str());
        }
        let classify_started = std::time::Instant::now();
        let routed = self.decider.decide(&chat)?;
        let took = classify_started.elapsed();
        ctx.span.record("threshold", routed.choice.threshold);
        ctx.span
            .record("operating_point", routed.choice.point.as_str());
        Ok(Considered {
            chat,
            routed,
            took,
            caller,
        })
    }

    /// Applies the caller's rate limits and budgets to a decided request: refused, or
    /// admitted with its spend reserved, sent fast instead of strong near the budget, or kept
    /// from falling back to a tier whose cost the budget has no room for.
    async fn limit<'s>(
        &'s self,
        chat: &ChatRequest,
        routed: &mut RoutingDecision<'s>,
        caller: &Resolved<'_>,
    ) -> Result<Option<Reservation>, Error> {
        let catalog = &self.decider.catalog;
        let Some(ask) = Ask::of(
            caller.policy,
            chat,
            routed.choice.tier,
            routed.degradable(chat, catalog),
            routed.other_tier_ok,
            catalog,
        ) else {
            return Ok(None);
        };
        let admission = self
            .limiter
            .admit(caller.label, caller.key, caller.policy, &ask)
            .await?;
        if admission.degraded {
            routed.degrade(catalog);
        }
        if admission.narrowed {
            routed.other_tier_ok = false;
        }
        Ok(admission.reservation)
    }

    /// Decides a request that will call a model, noting the decision in the record, and
    /// builds what its calls send; samples it for a duel if `duel` (Converse) allows.
    async fn admit(
        &self,
        ctx: &Context,
        request: pb::ConverseRequest,
        record: &mut Record,
        duel: bool,
    ) -> Result<Admitted, Error> {
        let Considered {
            chat,
            mut routed,
            took,
            caller,
        } = self.decide(ctx, request)?;
        record.attributed(caller.label);
        let reservation = self.limit(&chat, &mut routed, &caller).await?;
        record.reserved(reservation);
        if self.log_prompts {
            log_prompt(ctx, &chat);
        }
        record.classified(took, routed.classification.score());
        record.routed(
            routed.choice.tier,
            routed.choice.basis,
            &routed.model.invoke_id,
        );
        let decided = Decided::new(&routed, &chat.routing.caller, &self.resilience);
        let walk = self
            .resilience
            .walk(routed.choice.tier, routed.other_tier_ok);
        let duel = if duel {
            self.duels.sample(&chat, &routed)
        } else {
            None
        };
        let feedback = self.for_feedback(&chat, &routed);
        // Built once, moving the request's text and images; each attempt sends a clone.
        let parts = backend::prepare(chat).map_err(|error| Error::Upstream {
            error,
            attempts: 0,
            request_id: ctx.request_id.clone(),
        })?;
        Ok(Admitted {
            parts,
            decided,
            walk,
            duel,
            feedback,
        })
    }

    /// Admits a request and calls `call` along its targets until one answers; notes in the
    /// record who did, and returns what feedback on the request will need. The answering call
    /// stays open in the record. With `duel`, a request sampled for a duel comes back with its
    /// duel's material.
    async fn answer<'s, T, F, Fut>(
        &'s self,
        ctx: &'s Context,
        request: pb::ConverseRequest,
        record: &mut Record,
        duel: bool,
        call: F,
    ) -> Result<(T, Answered, Followups), Error>
    where
        F: Fn(Target, &'s Model, ConverseParts, CallClock) -> Fut,
        Fut: Future<Output = Result<T, BackendError>>,
    {
        let Admitted {
            parts,
            decided,
            mut walk,
            duel,
            feedback,
        } = self.admit(ctx, request, record, duel).await?;
        let dispatcher = Dispatcher {
            resilience: &self.resilience,
            catalog: &self.decider.catalog,
            request_id: &ctx.request_id,
            deadline: ctx.deadline,
        };
        let (value, target) = dispatcher
            .attempt(&mut walk, record, |target, model, clock| {
                call(target, model, parts.clone(), clock)
            })
            .await?;
        let answered = decided.answered(&self.decider.catalog, &self.resilience, &walk, target);
        record.routed(answered.tier, answered.basis, &answered.model);
        let followups = Followups {
            feedback,
            duel: duel.map(|sampled| (sampled, parts)),
        };
        Ok((value, answered, followups))
    }

    /// The end of a success, Converse's and a stream's: the answering call ends, the cost is
    /// counted, the request is kept for feedback, and the reply's summary is read off the
    /// record.
    pub(super) fn settle(
        &self,
        record: &mut Record,
        tier: Tier,
        usage: Usage,
        request_id: &str,
        fallback: Option<pb::Fallback>,
        feedback: Option<Routed>,
    ) -> Summary {
        record.end_call(None);
        if let Some(routed) = feedback {
            self.recent
                .remember(request_id, routed, tier, std::time::Instant::now());
        }
        let cost = Cost::of(
            usage,
            self.decider.catalog.model(tier).prices,
            self.decider.catalog.model(Tier::Strong).prices,
        );
        record.answered(usage, cost);
        record.settle_reservation(
            cost.actual,
            u64::from(usage.input_tokens) + u64::from(usage.output_tokens),
        );
        Summary::new(record, usage, cost, request_id, fallback)
    }

    /// `work`'s result, or the cut-off error if the drain time is up first.
    async fn until_cut_off<T>(
        &self,
        work: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        tokio::select! {
            result = work => result,
            () = self.cut_off() => Err(Error::CutOff),
        }
    }

    /// Completes when the drain time is up.
    pub(super) async fn cut_off(&self) {
        let mut cut_off = self.cut_off.subscribe();
        if cut_off.wait_for(|cut| *cut).await.is_err() {
            // The sender lives as long as the router, so this is never reached; if it were,
            // no cut-off would ever come.
            std::future::pending::<()>().await;
        }
    }

    async fn converse(
        &self,
        ctx: &Context,
        request: pb::ConverseRequest,
        record: &mut Record,
    ) -> Result<pb::ConverseResponse, Error> {
        let (completion, answered, Followups { feedback, duel }) = self
            .answer(
                ctx,
                request,
                record,
                true,
                |target, model, parts, clock| async move {
                    self.bedrock
                        .converse(target.region, &model.invoke_id, parts, &clock)
                        .await
                },
            )
            .await?;
        let Completion {
            content,
            stop_reason,
            usage,
        } = completion;
        let summary = self.settle(
            record,
            answered.tier,
            usage,
            &ctx.request_id,
            answered.fallback,
            feedback,
        );
        if let Some((sampled, parts)) = duel {
            self.duels.start(Job {
                sampled,
                parts,
                answered: answered.tier,
                basis: answered.basis,
                answer: content.clone(),
                request_id: ctx.request_id.clone(),
                labels: self.labels.clone(),
                threshold: self.decider.operating.in_force(DEFAULT_CALLER).threshold,
            });
        }
        Ok(summary.converse(content, stop_reason, answered.decision))
    }
}

/// Logs the text of the request's last turn; image bytes and tool payloads do not belong in
/// logs.
fn log_prompt(ctx: &Context, chat: &ChatRequest) {
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

/// The code a finished request is counted with.
fn code<T>(result: &Result<T, Status>) -> Code {
    result
        .as_ref()
        .map_or_else(|status| status.code(), |_| Code::Ok)
}

#[tonic::async_trait]
impl PromptRouter for RouterService {
    async fn converse(
        &self,
        request: Request<pb::ConverseRequest>,
    ) -> Result<Response<pb::ConverseResponse>, Status> {
        let Started {
            ctx,
            ticket: _ticket,
            request,
        } = self.router.begin("Converse", request);
        let mut record = Record::start(self.router.telemetry, ctx.span.clone());
        let work = self
            .router
            .converse(&ctx, request, &mut record)
            .instrument(ctx.span.clone());
        let result = self
            .router
            .until_cut_off(work)
            .await
            .map_err(|e| ctx.status(e));
        record.finish(code(&result));
        ctx.respond(result)
    }

    type ConverseStreamStream = EventStreamResponse;

    async fn converse_stream(
        &self,
        request: Request<pb::ConverseRequest>,
    ) -> Result<Response<Self::ConverseStreamStream>, Status> {
        let Started {
            ctx,
            ticket,
            request,
        } = self.router.begin("ConverseStream", request);
        let router = &self.router;
        let mut record = Record::start(router.telemetry, ctx.span.clone());
        // Until the first event the caller has seen nothing, so a failure is an ordinary
        // status and a retry on another target is invisible.
        let opened = router
            .answer(
                &ctx,
                request,
                &mut record,
                false,
                |target, model, parts, clock| async move {
                    let mut upstream = router
                        .bedrock
                        .converse_stream(target.region, &model.invoke_id, parts, &clock)
                        .await?;
                    let first = upstream.next().await?;
                    Ok((upstream, first))
                },
            )
            .instrument(ctx.span.clone());
        let ((upstream, first), answered, Followups { feedback, .. }) =
            match router.until_cut_off(opened).await {
                Ok(opened) => opened,
                Err(err) => {
                    let status = ctx.status(err);
                    record.finish(status.code());
                    return Err(status);
                }
            };
        let job = StreamJob {
            router: Arc::clone(router),
            record,
            request_id: ctx.request_id.clone(),
            deadline: ctx.deadline,
            feedback,
            _ticket: ticket,
        };
        let stream = job.spawn(upstream, first, answered, ctx.span.clone());
        ctx.respond(Ok(stream))
    }

    async fn route(
        &self,
        request: Request<pb::ConverseRequest>,
    ) -> Result<Response<pb::RouteResponse>, Status> {
        let Started {
            ctx,
            ticket: _ticket,
            request,
        } = self.router.begin("Route", request);
        let result = self
            .router
            .decide(&ctx, request)
            .map(|considered| pb::RouteResponse {
                decision: Some(
                    Decided::new(
                        &considered.routed,
                        &considered.chat.routing.caller,
                        &self.router.resilience,
                    )
                    .decision,
                ),
            })
            .map_err(|e| ctx.status(e));
        ctx.respond(result)
    }

    async fn feedback(
        &self,
        request: Request<pb::FeedbackRequest>,
    ) -> Result<Response<pb::FeedbackResponse>, Status> {
        let Started {
            ctx,
            ticket: _ticket,
            request,
        } = self.router.begin("Feedback", request);
        let result = ctx
            .credentials()
            .and_then(|_| self.router.feedback(&ctx, request))
            .map_err(|e| ctx.status(e));
        ctx.respond(result)
    }
}
