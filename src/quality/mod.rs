//! Duels: for a sampled request, once the caller has its answer and off the caller's path, the
//! other tier answers the same request and the judge grades the two answers in both orders
//! ([`prompt_router_core::quality::judge`]). Each parsed duel becomes a label row and enters the
//! window the online quality estimate is computed from.
//!
//! Eligible: Converse requests decided by score (AUTO mode; not forced, not capability-bound,
//! not answered by a fallback to the other tier) whose request has no tools, no tool blocks and
//! no images, and whose answer is text. Streams are excluded because their answer is never held
//! whole by the router (it is relayed as it comes; keeping a copy would grow a stream's memory
//! with its length); tool-using requests because a tool call is no answer a judge can grade
//! without running the tool; images because the judge is shown text only.
//!
//! Bounds, none of which a caller can notice:
//! - the caller's reply never waits: the duel is spawned after the reply is built, and only the
//!   sampling (one random number, the eligibility checks, rendering the request for the judge,
//!   cut to its bound without copying the rest) happens on the caller's path;
//! - `quality.duel_concurrency` duels at once; a sampled request finding none free has none
//!   (`skipped_busy`);
//! - no retries: each of a duel's calls is one attempt on the primary region within
//!   `bedrock.default_deadline_ms`, so duels spend none of the callers' retry budget and report
//!   nothing to the targets' breakers; a failed call fails the duel (`failed`);
//! - `quality.usd_per_hour` ([`spend`]): the duel's worst case is reserved before it starts and
//!   settled to its real cost after; a duel that does not fit has none (`skipped_budget`);
//! - load: a duel starts only while at least half of the caller slots (`server.max_concurrency`)
//!   are free, the answered request's own counted as free (`skipped_loaded`);
//! - drain: from the start of a shutdown no duel starts (`skipped_draining`) and running ones are
//!   cancelled (`cancelled`; their reservation is kept as spent, since what they cost is unknown).

pub mod spend;

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use metrics::{counter, gauge};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use self::spend::{Reservation, SpendCap};
use crate::{
    backend::{self, Bedrock, CallClock, OutputBlock},
    labels::LabelSink,
    telemetry::{self, Telemetry},
};
use prompt_router_core::{
    catalog::{Catalog, Tier},
    classify::NUM_FEATURES,
    config::QualityConfig,
    cost::{Nanodollars, Prices, Usage, price},
    decide::RoutingDecision,
    policy::Basis,
    quality::{
        estimate::{self, Duel, Recovery},
        judge::{self, Order},
        label::{DuelOutcome, Label, LabelRow, LabelTier},
    },
    request::{Block, ChatRequest, Inference, Role, Routing, Turn},
};

/// A duel starts only while at least this share of the caller slots is free.
const FREE_SLOTS_TO_DUEL: f64 = 0.5;
/// Tokens a call may count beyond one per byte of its text: role and formatting tokens.
const FRAMING_TOKENS: u64 = 256;

/// Why a duel ended or never started: the `outcome` label of `router_duels_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Judged, in both orders.
    Judged(DuelOutcome),
    /// A judge reply had no verdict line naming A, B or TIE.
    Unparsed,
    /// A call failed or timed out, or the other tier answered with no text.
    Failed,
    /// Cancelled by a shutdown.
    Cancelled,
    /// No duel slot free.
    SkippedBusy,
    /// The hourly cap had no room for the duel's worst case.
    SkippedBudget,
    /// Too few caller slots free.
    SkippedLoaded,
    /// A shutdown had started.
    SkippedDraining,
}

impl Ended {
    /// Every value, for making the series exist at zero.
    pub const ALL: [Self; 10] = [
        Self::Judged(DuelOutcome::StrongBetter),
        Self::Judged(DuelOutcome::Tie),
        Self::Judged(DuelOutcome::FastBetter),
        Self::Unparsed,
        Self::Failed,
        Self::Cancelled,
        Self::SkippedBusy,
        Self::SkippedBudget,
        Self::SkippedLoaded,
        Self::SkippedDraining,
    ];

    /// The metric-label form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Judged(outcome) => outcome.as_str(),
            Self::Unparsed => "unparsed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::SkippedBusy => "skipped_busy",
            Self::SkippedBudget => "skipped_budget",
            Self::SkippedLoaded => "skipped_loaded",
            Self::SkippedDraining => "skipped_draining",
        }
    }

    fn count(self) {
        counter!(telemetry::DUELS_TOTAL, "outcome" => self.as_str()).increment(1);
    }
}

/// What a sampled request keeps from its decision for its duel: built on the caller's path,
/// so only what the duel cannot get later.
#[derive(Debug)]
pub struct Sampled {
    request: String,
    request_bytes: usize,
    score: f64,
    features: [f64; NUM_FEATURES],
    input_tokens: f64,
    caller: String,
    weights_version: Arc<str>,
    max_tokens: Option<u32>,
    prompt: Option<String>,
}

/// An answered request's duel, ready to start.
#[derive(Debug)]
pub struct Job {
    /// What the decision left.
    pub sampled: Sampled,
    /// The request's parts, as the caller's answering call sent them.
    pub parts: backend::ConverseParts,
    /// The tier that answered the caller.
    pub answered: Tier,
    /// Why (only score-decided answers are dueled).
    pub basis: Basis,
    /// The caller's answer.
    pub answer: Vec<OutputBlock>,
    /// The request id the caller saw.
    pub request_id: String,
    /// Where the label row goes.
    pub labels: LabelSink,
    /// The threshold in force for the default caller, which the estimate is computed at.
    pub threshold: f64,
}

/// The duel runner, shared by all requests.
#[derive(Debug)]
pub struct Duels {
    rate: f64,
    store_prompts: bool,
    bedrock: Bedrock,
    catalog: Catalog,
    judge_model: Arc<str>,
    judge_prices: Prices,
    deadline: Duration,
    slots: Arc<Semaphore>,
    callers: Arc<Semaphore>,
    max_concurrency: usize,
    spend: Mutex<SpendCap>,
    window: Mutex<VecDeque<Duel>>,
    window_len: usize,
    stop: watch::Sender<bool>,
    telemetry: &'static Telemetry,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is complete before the guard drops.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Room for a duel and its worst case, taken before it starts.
struct Claimed {
    slot: OwnedSemaphorePermit,
    reservation: Reservation,
    worst: Nanodollars,
}

impl Duels {
    /// The runner for `config`; `callers` is the router's caller-slot semaphore of
    /// `max_concurrency` slots, read to see whether the router is loaded. A judge model outside
    /// the catalog is priced at the strong model's prices.
    pub fn new(
        config: &QualityConfig,
        catalog: &Catalog,
        bedrock: Bedrock,
        deadline: Duration,
        callers: Arc<Semaphore>,
        max_concurrency: usize,
        telemetry: &'static Telemetry,
    ) -> Self {
        let strong = catalog.model(Tier::Strong);
        let judge_model: Arc<str> = config
            .judge_model
            .as_deref()
            .map_or_else(|| Arc::clone(&strong.invoke_id), Arc::from);
        let judge_prices = catalog
            .models()
            .into_iter()
            .find(|m| *m.invoke_id == *judge_model)
            .map_or(strong.prices, |m| m.prices);
        for ended in Ended::ALL {
            counter!(telemetry::DUELS_TOTAL, "outcome" => ended.as_str()).increment(0);
        }
        gauge!(telemetry::QUALITY_DUELS).set(0.0);
        gauge!(telemetry::QUALITY_MIN_DUELS).set(config.min_duels as f64);
        if let Some(floor) = config.recovered_floor {
            gauge!(telemetry::QUALITY_RECOVERED_FLOOR).set(floor);
        }
        Self {
            rate: config.duel_rate,
            store_prompts: config.store_prompts,
            bedrock,
            catalog: catalog.clone(),
            judge_model,
            judge_prices,
            deadline,
            slots: Arc::new(Semaphore::new(config.duel_concurrency)),
            callers,
            max_concurrency,
            // Rounded down, so the cap in force is never above the configured one.
            spend: Mutex::new(SpendCap::new(
                Nanodollars((config.usd_per_hour * 1e9).floor() as u64),
                Instant::now(),
            )),
            window: Mutex::new(VecDeque::with_capacity(config.window)),
            window_len: config.window,
            stop: watch::channel(false).0,
            telemetry,
        }
    }

    /// Whether `chat`, decided as `routed`, gets a duel: sampled at `quality.duel_rate` among
    /// the eligible (the module's rule; the answer's own checks come in [`Self::start`]). Only
    /// a sampled request pays for rendering its text for the judge.
    pub fn sample(&self, chat: &ChatRequest, routed: &RoutingDecision<'_>) -> Option<Sampled> {
        let eligible = routed.choice.basis == Basis::Score
            && routed.other_tier_ok
            && chat.tools.is_none()
            && chat.image_count() == 0
            && !chat
                .messages
                .iter()
                .flat_map(|t| &t.content)
                .any(|b| matches!(b, Block::ToolUse(_) | Block::ToolResult(_)));
        if !eligible || self.rate <= 0.0 || fastrand::f64() >= self.rate {
            return None;
        }
        let classification = &routed.classification;
        let (request, request_bytes) = judge::render_request(chat);
        Some(Sampled {
            request,
            request_bytes,
            score: classification.score(),
            features: *classification.values(),
            input_tokens: classification.input_tokens(),
            caller: chat.routing.caller.clone(),
            weights_version: Arc::clone(&routed.weights_version),
            max_tokens: chat.inference.max_tokens,
            prompt: self.store_prompts.then(|| newest_ask(chat)),
        })
    }

    /// Starts `job`'s duel unless the router is draining or loaded, no duel slot is free, or
    /// the hour's cap has no room for its worst case (each counted); never waits.
    pub fn start(self: &Arc<Self>, job: Job) {
        if job.basis != Basis::Score {
            return;
        }
        let Some(fast_or_strong) = text_of(&job.answer) else {
            return;
        };
        let claimed = match self.claim(&job) {
            Ok(claimed) => claimed,
            Err(skipped) => return skipped.count(),
        };
        let duels = Arc::clone(self);
        tokio::spawn(async move {
            let Claimed {
                slot,
                reservation,
                worst,
            } = claimed;
            let mut stop = duels.stop.subscribe();
            let mut cost = Nanodollars(0);
            let ended = {
                let run = duels.run(&job, fast_or_strong, &mut cost);
                tokio::select! {
                    ended = run => ended,
                    _ = stop.wait_for(|stop| *stop) => Ended::Cancelled,
                }
            };
            // A cancelled call may have been billed for what it wrote: the cap keeps the
            // worst case; the counter shows only what is known.
            let settled = if ended == Ended::Cancelled {
                worst
            } else {
                cost
            };
            lock(&duels.spend).settle(reservation, settled);
            duels.telemetry.add_duel_cost(cost);
            drop(slot);
            ended.count();
            if let Ended::Judged(outcome) = ended {
                duels.judged(&job, outcome);
            }
        });
    }

    fn claim(&self, job: &Job) -> Result<Claimed, Ended> {
        if *self.stop.borrow() {
            return Err(Ended::SkippedDraining);
        }
        // The answered request still holds its slot, about to give it back.
        let free = (self.callers.available_permits() + 1) as f64;
        if free < FREE_SLOTS_TO_DUEL * self.max_concurrency as f64 {
            return Err(Ended::SkippedLoaded);
        }
        let slot = Arc::clone(&self.slots)
            .try_acquire_owned()
            .map_err(|_| Ended::SkippedBusy)?;
        let worst = self.worst_case(job);
        let reservation = lock(&self.spend)
            .reserve(worst, Instant::now())
            .ok_or(Ended::SkippedBudget)?;
        Ok(Claimed {
            slot,
            reservation,
            worst,
        })
    }

    /// The most the duel can cost: the other tier writing its whole `maxTokens` on the
    /// request, then two judge calls reading the largest message and writing their
    /// `maxTokens`, a token counted as at least a byte.
    fn worst_case(&self, job: &Job) -> Nanodollars {
        let other = self.catalog.model(job.answered.other());
        let other_out = self.other_max_tokens(job);
        let other_in = job.sampled.request_bytes as u64 + FRAMING_TOKENS;
        let judge_in = (judge::SYSTEM.len() + judge::MAX_MESSAGE_BYTES) as u64 + FRAMING_TOKENS;
        let call = |input: u64, output: u32, prices: Prices| {
            price(
                Usage {
                    input_tokens: u32::try_from(input).unwrap_or(u32::MAX),
                    output_tokens: output,
                },
                prices,
            )
        };
        let judged = call(judge_in, judge::JUDGE_MAX_TOKENS, self.judge_prices);
        Nanodollars(
            call(other_in, other_out, other.prices)
                .0
                .saturating_add(judged.0.saturating_mul(2)),
        )
    }

    /// The duel's calls: the other tier, then the judge in both orders (the second only if the
    /// first parsed); what they cost is added to `cost` as each returns.
    async fn run(&self, job: &Job, caller_answer: String, cost: &mut Nanodollars) -> Ended {
        let other = self.catalog.model(job.answered.other());
        let mut parts = job.parts.clone();
        parts.cap_max_tokens(self.other_max_tokens(job));
        let Some(completion) = self.call(&other.invoke_id, other.prices, parts, cost).await else {
            return Ended::Failed;
        };
        let Some(other_answer) = text_of(&completion.content) else {
            return Ended::Failed;
        };
        let (fast, strong) = match job.answered {
            Tier::Fast => (caller_answer, other_answer),
            Tier::Strong => (other_answer, caller_answer),
        };
        let mut verdicts = [None; 2];
        for (order, verdict) in Order::BOTH.into_iter().zip(&mut verdicts) {
            let message = order.message(&job.sampled.request, &fast, &strong);
            let Some(parts) = judge_parts(message) else {
                return Ended::Failed;
            };
            let Some(reply) = self
                .call(&self.judge_model, self.judge_prices, parts, cost)
                .await
            else {
                return Ended::Failed;
            };
            *verdict = text_of(&reply.content).as_deref().and_then(judge::parse);
            if verdict.is_none() {
                return Ended::Unparsed;
            }
        }
        judge::combine(verdicts[0], verdicts[1]).map_or(Ended::Unparsed, Ended::Judged)
    }

    /// The other tier's `maxTokens`: the request's, within the model's limit.
    fn other_max_tokens(&self, job: &Job) -> u32 {
        let limit = self.catalog.model(job.answered.other()).max_output_tokens;
        job.sampled.max_tokens.map_or(limit, |m| m.min(limit))
    }

    /// One attempt on the primary region within the deadline; its cost is added to `cost`.
    async fn call(
        &self,
        model: &str,
        prices: Prices,
        parts: backend::ConverseParts,
        cost: &mut Nanodollars,
    ) -> Option<backend::Completion> {
        let clock = CallClock::default();
        let called = tokio::time::timeout(
            self.deadline,
            self.bedrock.converse(0, model, parts, &clock),
        )
        .await;
        match called {
            Ok(Ok(completion)) => {
                cost.0 = cost.0.saturating_add(price(completion.usage, prices).0);
                Some(completion)
            }
            Ok(Err(error)) => {
                tracing::debug!(model, kind = error.kind(), "duel call failed");
                None
            }
            Err(_) => {
                tracing::debug!(model, "duel call timed out");
                None
            }
        }
    }

    /// A judged duel: its label row offered, its verdict in the window, the estimate's gauges
    /// updated.
    fn judged(&self, job: &Job, outcome: DuelOutcome) {
        let sampled = &job.sampled;
        let row = LabelRow {
            request_id: job.request_id.clone(),
            time_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            caller: sampled.caller.clone(),
            tier: LabelTier::from(job.answered),
            score: sampled.score,
            weights_version: sampled.weights_version.to_string(),
            features: LabelRow::feature_map(&sampled.features),
            input_tokens: sampled.input_tokens,
            label: Label::Duel { outcome },
            prompt: sampled.prompt.clone(),
        };
        job.labels.offer(row);
        let snapshot = {
            let mut window = lock(&self.window);
            if window.len() == self.window_len {
                window.pop_front();
            }
            window.push_back(Duel {
                score: sampled.score,
                outcome,
            });
            Vec::from(window.clone())
        };
        publish(&snapshot, estimate::recovery(&snapshot, job.threshold));
    }

    /// The recent duels (at most `quality.window`, oldest first) the estimate is computed from.
    pub fn snapshot(&self) -> Vec<Duel> {
        Vec::from(lock(&self.window).clone())
    }

    /// Starts no more duels and cancels the running ones: the router is shutting down.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }
}

/// The judge's request for `message`: the pairwise prompt as system text, temperature 0,
/// `maxTokens` small.
fn judge_parts(message: String) -> Option<backend::ConverseParts> {
    let routing = Routing::new(
        prompt_router_core::policy::RoutingMode::Auto,
        0.0,
        String::new(),
    )
    .ok()?;
    let chat = ChatRequest::new(
        vec![Turn {
            role: Role::User,
            content: vec![Block::Text(message)],
        }],
        vec![judge::SYSTEM.to_owned()],
        Inference {
            max_tokens: Some(judge::JUDGE_MAX_TOKENS),
            temperature: Some(0.0),
            ..Inference::default()
        },
        None,
        routing,
    )
    .ok()?;
    backend::prepare(chat).ok()
}

/// The gauges of the online estimate of `duels`.
fn publish(duels: &[Duel], recovery: Option<Recovery>) {
    gauge!(telemetry::QUALITY_DUELS).set(duels.len() as f64);
    let (ratio, low, high) =
        recovery.map_or((f64::NAN, f64::NAN, f64::NAN), |r| (r.ratio, r.low, r.high));
    gauge!(telemetry::QUALITY_RECOVERED).set(ratio);
    gauge!(telemetry::QUALITY_RECOVERED_LOW).set(low);
    gauge!(telemetry::QUALITY_RECOVERED_HIGH).set(high);
    for outcome in [
        DuelOutcome::StrongBetter,
        DuelOutcome::Tie,
        DuelOutcome::FastBetter,
    ] {
        let n = duels.iter().filter(|d| d.outcome == outcome).count();
        gauge!(telemetry::QUALITY_VERDICTS, "outcome" => outcome.as_str()).set(n as f64);
    }
}

/// An answer's text, if it is all text and says something.
fn text_of(content: &[OutputBlock]) -> Option<String> {
    let mut text = String::new();
    for block in content {
        match block {
            OutputBlock::Text(t) => text.push_str(t),
            OutputBlock::ToolUse { .. } => return None,
        }
    }
    (!text.trim().is_empty()).then_some(text)
}

/// The text of the newest ask (the last user turn's text), for a label's `prompt`.
fn newest_ask(chat: &ChatRequest) -> String {
    let texts: Vec<&str> = chat
        .messages
        .iter()
        .rev()
        .find(|t| t.role == Role::User)
        .into_iter()
        .flat_map(|t| &t.content)
        .filter_map(|b| match b {
            Block::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    texts.join("\n")
}
