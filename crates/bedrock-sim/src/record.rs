//! What the simulator received and how each request ended, plus the counters.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::faults::Fault;
use super::lock;

/// Which Bedrock operation a request called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Operation {
    /// `POST /model/{id}/converse`.
    Converse,
    /// `POST /model/{id}/converse-stream`.
    ConverseStream,
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", tag = "outcome")]
pub enum Outcome {
    /// Still being handled.
    InFlight,
    /// A complete answer was sent.
    #[serde(rename_all = "camelCase")]
    Answered {
        /// Bedrock `stopReason`.
        stop_reason: String,
        /// `usage.inputTokens`.
        input_tokens: u32,
        /// `usage.outputTokens`.
        output_tokens: u32,
    },
    /// An HTTP error response (validation, auth, or injected).
    #[serde(rename_all = "camelCase")]
    Error {
        /// `x-amzn-ErrorType` name, e.g. `ThrottlingException`.
        kind: String,
        /// HTTP status.
        status: u16,
        /// The `message` sent.
        message: String,
    },
    /// An exception event ended a ConverseStream.
    #[serde(rename_all = "camelCase")]
    StreamError {
        /// `:exception-type`, e.g. `throttlingException`.
        kind: String,
        /// Content deltas sent before it.
        after_deltas: u32,
    },
    /// The simulator cut the connection on purpose (fault injection).
    Dropped,
    /// The client went away (or the simulator shut down) before the response was complete.
    Cancelled,
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Self::InFlight => "in_flight",
            Self::Answered { .. } => "answered",
            Self::Error { .. } => "error",
            Self::StreamError { .. } => "stream_error",
            Self::Dropped => "dropped",
            Self::Cancelled => "cancelled",
        }
    }
}

/// One request as the simulator received it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Received {
    /// 1, 2, … in arrival order.
    pub seq: u64,
    /// The `x-amzn-RequestId` sent back.
    pub request_id: String,
    /// Converse or ConverseStream.
    pub operation: Operation,
    /// The model id from the path, percent-decoded.
    pub model_id: String,
    /// Region from the SigV4 credential scope (None for Bearer or missing auth).
    pub source_region: Option<String>,
    /// Service name from the SigV4 credential scope (should be `bedrock`).
    pub signing_service: Option<String>,
    /// True when the request used `Authorization: Bearer` (Bedrock API keys).
    pub bearer_auth: bool,
    /// The JSON body as parsed (Null if it was not JSON).
    pub body: Value,
    /// The fault injected into this request, if any.
    pub fault: Option<Fault>,
    /// How it ended.
    pub outcome: Outcome,
}

/// Request counters since start (or the last reset).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SimStats {
    /// Model requests received (admin calls not counted).
    pub received: u64,
    /// Ended with a complete answer.
    pub answered: u64,
    /// Ended with an error response, a stream exception or an injected drop.
    pub failed: u64,
    /// The client went away before completion.
    pub cancelled: u64,
    /// Not finished yet.
    pub in_flight: u64,
    /// Timers armed for simulated latency, stalls and stream drains (a zero latency arms none).
    pub timers: u64,
}

struct Inner {
    log: VecDeque<Received>,
    next_seq: u64,
    stats: SimStats,
    max: usize,
}

/// The request log (bounded, oldest dropped first) and counters.
pub(crate) struct Recorder {
    inner: Mutex<Inner>,
}

impl Recorder {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                log: VecDeque::new(),
                next_seq: 1,
                stats: SimStats::default(),
                max: max.max(1),
            }),
        }
    }

    /// Records a new in-flight request; the guard settles its outcome (Cancelled if dropped).
    pub(crate) fn begin(self: &Arc<Self>, mut r: Received) -> RequestGuard {
        let mut g = lock(&self.inner);
        r.seq = g.next_seq;
        g.next_seq += 1;
        g.stats.received += 1;
        g.stats.in_flight += 1;
        if g.log.len() >= g.max {
            g.log.pop_front();
        }
        let guard = RequestGuard {
            rec: Arc::clone(self),
            seq: r.seq,
            request_id: r.request_id.clone(),
            model_id: r.model_id.clone(),
            operation: r.operation,
            done: false,
        };
        g.log.push_back(r);
        guard
    }

    pub(crate) fn snapshot(&self) -> Vec<Received> {
        lock(&self.inner).log.iter().cloned().collect()
    }

    pub(crate) fn stats(&self) -> SimStats {
        lock(&self.inner).stats
    }

    /// Sleeps for `d`, counting the timer. A zero wait returns at once without one:
    /// `tokio::time::sleep(Duration::ZERO)` still waits for the timer wheel's next 1 ms tick,
    /// which would put a millisecond under every zero-latency call.
    pub(crate) async fn sleep(&self, d: Duration) {
        if d.is_zero() {
            return;
        }
        lock(&self.inner).stats.timers += 1;
        tokio::time::sleep(d).await;
    }

    /// Clears the log and counters; requests still in flight stay counted as received.
    pub(crate) fn reset(&self) {
        let mut g = lock(&self.inner);
        g.log.clear();
        let in_flight = g.stats.in_flight;
        g.stats = SimStats {
            received: in_flight,
            in_flight,
            ..SimStats::default()
        };
    }

    fn update(&self, seq: u64, f: impl FnOnce(&mut Received)) {
        let mut g = lock(&self.inner);
        // Seqs are increasing, so the entry (if not yet evicted) is found by binary search.
        if let Ok(i) = g.log.binary_search_by_key(&seq, |r| r.seq) {
            f(&mut g.log[i]);
        }
    }

    fn settle(&self, seq: u64, outcome: Outcome) {
        let mut g = lock(&self.inner);
        g.stats.in_flight = g.stats.in_flight.saturating_sub(1);
        match outcome {
            Outcome::InFlight => {}
            Outcome::Answered { .. } => g.stats.answered += 1,
            Outcome::Error { .. } | Outcome::StreamError { .. } | Outcome::Dropped => {
                g.stats.failed += 1
            }
            Outcome::Cancelled => g.stats.cancelled += 1,
        }
        if let Ok(i) = g.log.binary_search_by_key(&seq, |r| r.seq) {
            g.log[i].outcome = outcome;
        }
    }
}

/// Settles a request's outcome exactly once; dropping it unsettled (the client went away and
/// hyper dropped the handler or the stream body) records `Cancelled`.
pub(crate) struct RequestGuard {
    rec: Arc<Recorder>,
    seq: u64,
    request_id: String,
    model_id: String,
    operation: Operation,
    done: bool,
}

impl RequestGuard {
    pub(crate) fn set_body(&self, body: Value) {
        self.rec.update(self.seq, |r| r.body = body);
    }

    pub(crate) fn set_fault(&self, fault: Option<Fault>) {
        self.rec.update(self.seq, |r| r.fault = fault);
    }

    pub(crate) fn request_id(&self) -> &str {
        &self.request_id
    }

    /// The recorder this request reports to.
    pub(crate) fn recorder(&self) -> Arc<Recorder> {
        Arc::clone(&self.rec)
    }

    pub(crate) fn finish(mut self, outcome: Outcome) {
        self.settle(outcome);
    }

    fn settle(&mut self, outcome: Outcome) {
        if self.done {
            return;
        }
        self.done = true;
        tracing::info!(
            request_id = %self.request_id,
            seq = self.seq,
            operation = ?self.operation,
            model_id = %self.model_id,
            outcome = outcome.label(),
            "bedrock sim request finished"
        );
        self.rec.settle(self.seq, outcome);
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.settle(Outcome::Cancelled);
    }
}
