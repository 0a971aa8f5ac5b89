//! One request's telemetry, gathered as the request goes and emitted exactly once: when the
//! handler finishes it, or — if the caller cancels or the server drops the request — when it is
//! dropped, as `cancelled`. So every request is counted once, however it ends, and so is an
//! upstream call still running at that moment.
//!
//! The request span gets `tier`, `model`, `attempts` and `outcome` once, at that end, and the
//! last line repeats none of them: text logs append every value a span field is given, so
//! recording them as they changed wrote `attempts=1 attempts=2 attempts=3`, and a tier and a
//! model before and after an escalation.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use metrics::{SharedString, counter, gauge, histogram};
use tonic::Code;
use tracing::Span;

use crate::{
    backend::CallClock,
    limits::Reservation,
    protocol::code_label,
    telemetry::{self, Telemetry},
};
use prompt_router_core::{
    caller::OTHER_LABEL,
    catalog::Tier,
    cost::{Cost, Nanodollars, Usage},
    policy::Basis,
    resilience::Move,
};

/// An upstream call under way: its labels and the clock the SDK's hooks move.
#[derive(Debug)]
struct Call {
    model: Arc<str>,
    region: Arc<str>,
    clock: CallClock,
}

/// The telemetry of one Converse or ConverseStream request.
#[derive(Debug)]
pub struct Record {
    telemetry: &'static Telemetry,
    span: Span,
    started: Instant,
    classify: Option<(Duration, f64)>,
    route: Option<(Tier, Basis, Arc<str>)>,
    call: Option<Call>,
    upstream: Duration,
    sdk: Duration,
    waited: Duration,
    attempts: u32,
    /// The kinds of move this request has made (bit per [`Move`]): each is counted once.
    moved: u8,
    ttft: Option<Duration>,
    answered: Option<(Usage, Cost)>,
    outcome: Option<Code>,
    /// The caller's metric label; [`OTHER_LABEL`] until the request is attributed.
    caller: Arc<str>,
    /// The spend the caller's budget holds for this request; released if the record ends
    /// without [`Record::settle_reservation`].
    reservation: Option<Reservation>,
}

impl Record {
    /// Starts the record of a request received now, logged under `span`.
    pub fn start(telemetry: &'static Telemetry, span: Span) -> Self {
        Self::start_at(telemetry, span, Instant::now())
    }

    /// Starts the record of a request received at `started`.
    pub fn start_at(telemetry: &'static Telemetry, span: Span, started: Instant) -> Self {
        gauge!(telemetry::INFLIGHT_REQUESTS).increment(1.0);
        Self {
            telemetry,
            span,
            started,
            classify: None,
            route: None,
            call: None,
            upstream: Duration::ZERO,
            sdk: Duration::ZERO,
            waited: Duration::ZERO,
            attempts: 0,
            moved: 0,
            ttft: None,
            answered: None,
            outcome: None,
            caller: Arc::from(OTHER_LABEL),
            reservation: None,
        }
    }

    /// When the request was received.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Notes the caller the request is attributed to, by its metric label.
    pub fn attributed(&mut self, label: &Arc<str>) {
        self.caller = Arc::clone(label);
    }

    /// Holds the spend the caller's budget reserved for the request.
    pub fn reserved(&mut self, reservation: Option<Reservation>) {
        self.reservation = reservation;
    }

    /// Settles the reservation to what the answer cost and the tokens it used.
    pub fn settle_reservation(&mut self, actual: Nanodollars, tokens: u64) {
        if let Some(reservation) = self.reservation.take() {
            reservation.settle(actual, tokens);
        }
    }

    /// Notes the classification (once a request): how long it took and the score.
    pub fn classified(&mut self, took: Duration, score: f64) {
        self.span.record("score", score);
        self.classify = Some((took, score));
    }

    /// Notes the decision (again, when another tier answered).
    pub fn routed(&mut self, tier: Tier, basis: Basis, model: &Arc<str>) {
        self.route = Some((tier, basis, Arc::clone(model)));
    }

    /// Notes that an upstream call to `model` through `region` starts; the call hands the
    /// returned clock to the backend, which splits its time between the SDK and upstream.
    pub fn start_call(&mut self, model: &Arc<str>, region: &Arc<str>) -> CallClock {
        let clock = CallClock::default();
        self.call = Some(Call {
            model: Arc::clone(model),
            region: Arc::clone(region),
            clock: clock.clone(),
        });
        clock
    }

    /// Ends the call under way: `None` when it answered, else the error kind. A stream's call
    /// ends with its last event, so its upstream time runs to the end of the stream.
    pub fn end_call(&mut self, error_kind: Option<&'static str>) {
        let Some(call) = self.call.take() else {
            return;
        };
        let split = call.clock.split();
        let took = split.upstream;
        self.attempts += 1;
        self.upstream += took;
        self.sdk += split.sdk;
        let outcome = error_kind.unwrap_or("ok");
        histogram!(
            telemetry::UPSTREAM_DURATION,
            "model" => Arc::clone(&call.model),
            "region" => Arc::clone(&call.region),
            "outcome" => outcome
        )
        .record(took.as_secs_f64());
        if let Some(kind) = error_kind {
            counter!(
                telemetry::UPSTREAM_ERRORS_TOTAL,
                "model" => call.model,
                "region" => call.region,
                "kind" => kind
            )
            .increment(1);
        }
    }

    /// Notes a retry after a failure of `kind` on `model`.
    pub fn retry(&mut self, model: &Arc<str>, kind: &'static str) {
        counter!(telemetry::RETRIES_TOTAL, "model" => Arc::clone(model), "kind" => kind)
            .increment(1);
    }

    /// Notes a move to another target, `model` being the one moved to. The counter counts
    /// requests, not moves: a request that goes round its regions twice, or tries another
    /// region of the other tier too, counts once per kind, so `router_fallbacks_total` over
    /// `router_requests_total` is the share of requests that needed a fallback of that kind.
    pub fn fallback(&mut self, model: &Arc<str>, kind: Move) {
        let bit = 1 << kind as u8;
        if self.moved & bit != 0 {
            return;
        }
        self.moved |= bit;
        counter!(telemetry::FALLBACKS_TOTAL, "model" => Arc::clone(model), "kind" => kind.as_str())
            .increment(1);
    }

    /// Notes a retry refused by the router-wide budget.
    pub fn retry_budget_exhausted(&mut self) {
        counter!(telemetry::RETRY_BUDGET_EXHAUSTED_TOTAL).increment(1);
    }

    /// Notes that the first token went out.
    pub fn first_token(&mut self) {
        if self.ttft.is_none() {
            self.ttft = Some(self.started.elapsed());
            if let Some(reservation) = &mut self.reservation {
                reservation.billed();
            }
        }
    }

    /// Time to first token, if one went out.
    pub fn time_to_first_token(&self) -> Option<Duration> {
        self.ttft
    }

    /// Notes the answer's usage and cost.
    pub fn answered(&mut self, usage: Usage, cost: Cost) {
        self.answered = Some((usage, cost));
    }

    /// Upstream calls ended so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Notes a backoff wait before a retry.
    pub fn backoff(&mut self, waited: Duration) {
        self.waited += waited;
    }

    /// Time spent upstream so far: from each request's hand-over to the transport to its
    /// response (a stream's to its end).
    pub fn upstream(&self) -> Duration {
        self.upstream
    }

    /// Time spent in the SDK client outside the transport so far, over every attempt.
    pub fn sdk(&self) -> Duration {
        self.sdk
    }

    /// Time spent backing off between attempts so far.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// What the router adds to `total`: what is neither upstream time nor a backoff wait (so
    /// retries under throttling do not read as a slow router): its own work and the SDK's.
    pub fn overhead(&self, total: Duration) -> Duration {
        total
            .saturating_sub(self.upstream)
            .saturating_sub(self.waited)
    }

    /// The router's own share of `total`: the overhead without the SDK client's work.
    pub fn own(&self, total: Duration) -> Duration {
        self.overhead(total).saturating_sub(self.sdk)
    }

    /// Ends the request with `code` and emits everything.
    pub fn finish(mut self, code: Code) {
        self.outcome = Some(code);
    }

    fn emit(&mut self) {
        let code = self.outcome.unwrap_or(Code::Cancelled);
        // A call still under way was cut short by the request's end.
        self.end_call(Some(if code == Code::DeadlineExceeded {
            "deadline"
        } else {
            "cancelled"
        }));
        let outcome = code_label(code);
        let total = self.started.elapsed();
        let (tier, basis, model) = match &self.route {
            Some((tier, basis, model)) => {
                self.span.record("tier", tier.as_str());
                self.span.record("model", &**model);
                (
                    tier.as_str(),
                    basis.as_str(),
                    SharedString::from(Arc::clone(model)),
                )
            }
            None => ("none", "none", SharedString::const_str("none")),
        };
        self.span.record("attempts", self.attempts);
        self.span.record("outcome", outcome);
        let own = self.own(total);
        counter!(telemetry::REQUESTS_TOTAL, "tier" => tier, "model" => model.clone(), "outcome" => outcome, "reason" => basis, "caller" => Arc::clone(&self.caller))
            .increment(1);
        histogram!(telemetry::REQUEST_DURATION, "tier" => tier, "outcome" => outcome)
            .record(total.as_secs_f64());
        if let Some((took, score)) = self.classify {
            histogram!(telemetry::CLASSIFY_DURATION).record(took.as_secs_f64());
            histogram!(telemetry::COMPLEXITY_SCORE).record(score);
        }
        if self.attempts > 0 {
            histogram!(telemetry::OVERHEAD).record(self.overhead(total).as_secs_f64());
            histogram!(telemetry::SDK_OVERHEAD).record(self.sdk.as_secs_f64());
            histogram!(telemetry::OWN_OVERHEAD).record(own.as_secs_f64());
        }
        if let Some(ttft) = self.ttft {
            histogram!(telemetry::TIME_TO_FIRST_TOKEN, "model" => model.clone())
                .record(ttft.as_secs_f64());
        }
        if let Some((usage, cost)) = self.answered {
            let caller = &self.caller;
            counter!(telemetry::TOKENS_TOTAL, "model" => model.clone(), "direction" => "input", "caller" => Arc::clone(caller))
                .increment(u64::from(usage.input_tokens));
            counter!(telemetry::TOKENS_TOTAL, "model" => model.clone(), "direction" => "output", "caller" => Arc::clone(caller))
                .increment(u64::from(usage.output_tokens));
            if let Some((_, _, model)) = &self.route {
                self.telemetry
                    .add_cost(model, caller, cost.actual, cost.baseline);
            }
            self.span.record("input_tokens", usage.input_tokens);
            self.span.record("output_tokens", usage.output_tokens);
            self.span.record("cost_usd", cost.actual.as_usd());
        }
        gauge!(telemetry::INFLIGHT_REQUESTS).decrement(1.0);
        let _entered = self.span.enter();
        let total_ms = total.as_secs_f64() * 1e3;
        let upstream_ms = self.upstream.as_secs_f64() * 1e3;
        let sdk_us = self.sdk.as_secs_f64() * 1e6;
        let router_us = own.as_secs_f64() * 1e6;
        if is_routine(code) {
            tracing::info!(total_ms, upstream_ms, sdk_us, router_us, "request finished");
        } else {
            tracing::warn!(total_ms, upstream_ms, sdk_us, router_us, "request failed");
        }
    }
}

/// Whether a request that ended with `code` is logged at INFO: it succeeded, or it ended by the
/// caller's doing (a bad request, a cancel, its deadline). Any other code is a WARN.
pub(super) fn is_routine(code: Code) -> bool {
    matches!(
        code,
        Code::Ok | Code::InvalidArgument | Code::Cancelled | Code::DeadlineExceeded
    )
}

impl Drop for Record {
    fn drop(&mut self) {
        self.emit();
    }
}
