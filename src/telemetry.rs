//! Every metric name, description and bucket set in one place; the Prometheus recorder; the
//! exact money counters; the log subscriber.
//!
//! The `metrics` crate's counters only take integers, and a dollar counter in micro-dollars
//! would lose Haiku's $0.25/M input price. Money is therefore counted here in nano-dollars
//! ([`Nanodollars`]) and rendered in dollars, appended to the recorder's exposition. Neither
//! crate offers a kept way to export a fractional counter: `metrics` 0.24's `CounterFn` takes
//! `u64`, metrics-exporter-prometheus 0.18 renders a counter's `AtomicU64` as an integer with
//! no scale, and a gauge would be exposed as `# TYPE … gauge`, which `rate()` must not be used
//! on (f64 counters are an open request upstream, metrics-rs/metrics#599).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::IsTerminal,
    sync::{Arc, Mutex, OnceLock, PoisonError},
    time::Duration,
};

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

use prompt_router_core::{config::LogFormat, cost::Nanodollars};

/// `router_requests_total{tier, model, outcome, reason, caller}`: handled requests, refused ones too.
pub const REQUESTS_TOTAL: &str = "router_requests_total";
/// `router_request_duration_seconds{tier, outcome}`: time from receipt to the last byte sent.
pub const REQUEST_DURATION: &str = "router_request_duration_seconds";
/// `router_overhead_seconds`: request time minus upstream time and retry backoff: the router's
/// own work and the SDK client's.
pub const OVERHEAD: &str = "router_overhead_seconds";
/// `router_sdk_overhead_seconds`: the AWS SDK client's part of the overhead (request building,
/// endpoint resolution, signing, response deserialisation), summed over a request's attempts.
pub const SDK_OVERHEAD: &str = "router_sdk_overhead_seconds";
/// `router_own_overhead_seconds`: the router's own part of the overhead.
pub const OWN_OVERHEAD: &str = "router_own_overhead_seconds";
/// `router_classify_duration_seconds`: time to score one request.
pub const CLASSIFY_DURATION: &str = "router_classify_duration_seconds";
/// `router_upstream_duration_seconds{model, region, outcome}`: time in Bedrock calls.
pub const UPSTREAM_DURATION: &str = "router_upstream_duration_seconds";
/// `router_time_to_first_token_seconds{model}`: receipt to first streamed token.
pub const TIME_TO_FIRST_TOKEN: &str = "router_time_to_first_token_seconds";
/// `router_complexity_score`: distribution of scores.
pub const COMPLEXITY_SCORE: &str = "router_complexity_score";
/// `router_tokens_total{model, direction, caller}`: tokens read and written.
pub const TOKENS_TOTAL: &str = "router_tokens_total";
/// `router_cost_usd_total{model, caller}`: cost at catalog prices.
pub const COST_USD_TOTAL: &str = "router_cost_usd_total";
/// `router_baseline_cost_usd_total{caller}`: the same tokens at the strong model's prices.
pub const BASELINE_COST_USD_TOTAL: &str = "router_baseline_cost_usd_total";
/// `router_upstream_errors_total{model, region, kind}`: failed Bedrock calls.
pub const UPSTREAM_ERRORS_TOTAL: &str = "router_upstream_errors_total";
/// `router_retries_total{model, kind}`: attempts repeated after a failure of `kind` on `model`.
pub const RETRIES_TOTAL: &str = "router_retries_total";
/// `router_fallbacks_total{model, kind}`: requests that moved at least once to another target of
/// this kind (`model` is the first one moved to), so that over requests it is a share of them.
pub const FALLBACKS_TOTAL: &str = "router_fallbacks_total";
/// `router_retry_budget_exhausted_total`: retries refused by the router-wide budget.
pub const RETRY_BUDGET_EXHAUSTED_TOTAL: &str = "router_retry_budget_exhausted_total";
/// `router_circuit_open{model, region}`: 1 while a target is ejected.
pub const CIRCUIT_OPEN: &str = "router_circuit_open";
/// `router_inflight_requests`: requests being handled.
pub const INFLIGHT_REQUESTS: &str = "router_inflight_requests";
/// `router_threshold{caller}`: the threshold in force for each configured caller and
/// `default` (before any request's quality bias).
pub const THRESHOLD: &str = "router_threshold";
/// `router_window_strong_share{caller}`: share of a target-share caller's window of
/// score-decided requests that went strong.
pub const WINDOW_STRONG_SHARE: &str = "router_window_strong_share";
/// `router_labels_total{source, outcome}`: label rows by source (`duel`, `feedback`) and
/// outcome (`stored`, `dropped`).
pub const LABELS_TOTAL: &str = "router_labels_total";
/// `router_label_store_up`: 1 while the label store takes writes, 0 while it fails.
pub const LABEL_STORE_UP: &str = "router_label_store_up";
/// `router_weights_reloads_total{outcome}`: weights reloads by outcome.
pub const WEIGHTS_RELOADS_TOTAL: &str = "router_weights_reloads_total";
/// `router_tls_reloads_total{outcome}`: changed TLS files put in force (`ok`) or refused
/// (`rejected`, the old ones kept).
pub const TLS_RELOADS_TOTAL: &str = "router_tls_reloads_total";
/// `router_auth_failures_total{reason}`: requests and handshakes refused for their
/// credentials, by reason (`missing`, `malformed`, `unknown_token`, `certificate`, `mismatch`).
pub const AUTH_FAILURES_TOTAL: &str = "router_auth_failures_total";
/// `router_weights_version`: the CRC-32 of the weights in force, the number in their
/// version `w-XXXXXXXX`.
pub const WEIGHTS_VERSION: &str = "router_weights_version";

/// `router_duels_total{outcome}`: duels by how they ended (a verdict, `unparsed`, `failed`,
/// `cancelled`) or why none started (`skipped_busy`, `skipped_budget`, `skipped_loaded`,
/// `skipped_draining`).
pub const DUELS_TOTAL: &str = "router_duels_total";
/// `router_duel_cost_usd_total`: what duels cost (the other tier's answers and the judge's).
pub const DUEL_COST_USD_TOTAL: &str = "router_duel_cost_usd_total";
/// `router_quality_recovered_ratio`: the online estimate of the share of the quality gap
/// recovered at the default caller's threshold, from the window of recent duels.
pub const QUALITY_RECOVERED: &str = "router_quality_recovered_ratio";
/// `router_quality_recovered_ratio_low`: the estimate's 95% interval, lower end.
pub const QUALITY_RECOVERED_LOW: &str = "router_quality_recovered_ratio_low";
/// `router_quality_recovered_ratio_high`: the estimate's 95% interval, upper end.
pub const QUALITY_RECOVERED_HIGH: &str = "router_quality_recovered_ratio_high";
/// `router_quality_duels`: duels in the estimate's window (its sample count).
pub const QUALITY_DUELS: &str = "router_quality_duels";
/// `router_quality_verdicts{outcome}`: the window's duels by verdict (strong_better, tie,
/// fast_better): the fast tier's losses, ties and wins against the strong one.
pub const QUALITY_VERDICTS: &str = "router_quality_verdicts";
/// `router_quality_recovered_floor`: `quality.recovered_floor`, when set.
pub const QUALITY_RECOVERED_FLOOR: &str = "router_quality_recovered_floor";
/// `router_quality_min_duels`: `quality.min_duels`, the samples the floor's alert needs.
pub const QUALITY_MIN_DUELS: &str = "router_quality_min_duels";
/// `router_feedback_total{outcome}`: Feedback calls, by what became of them (`stored`,
/// `dropped`, `invalid`, `not_found`, `already_given`, `no_store`).
pub const FEEDBACK_TOTAL: &str = "router_feedback_total";
/// `router_target_strong_share{caller}`: the strong share a target-share caller is steered
/// to now (its configured one, or what `routing.target_quality` set).
pub const TARGET_STRONG_SHARE: &str = "router_target_strong_share";
/// `router_operating_point_changes_total{caller}`: changes of a caller's target share by
/// `routing.target_quality`.
pub const OPERATING_POINT_CHANGES_TOTAL: &str = "router_operating_point_changes_total";

/// `router_limited_total{caller, limit}`: requests a caller's limit refused (`limit`:
/// requests, tokens, usd_per_day, usd_per_month, store_down).
pub const LIMITED_TOTAL: &str = "router_limited_total";
/// `router_degraded_total{caller}`: strong-bound requests sent fast because the caller is near
/// its spend budget.
pub const DEGRADED_TOTAL: &str = "router_degraded_total";
/// `router_caller_budget_used_ratio{caller, period}`: the caller's spend (reservations of
/// requests in flight included) over its budget, for callers with a budget.
pub const CALLER_BUDGET_USED: &str = "router_caller_budget_used_ratio";
/// `router_limit_store_up`: 1 while the shared limit store (`limits.redis_url`) answers.
pub const LIMIT_STORE_UP: &str = "router_limit_store_up";

/// Seconds-range buckets for whole requests and upstream calls. Model calls mostly take
/// 0.5–10 s, so that range is dense: with a 2.5 → 5 s bucket, a simulated soak whose true p99
/// was 2.8 s showed a p99 of 4.9 s.
const REQUEST_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0,
    20.0, 30.0, 60.0, 120.0,
];
/// Time-to-first-token buckets, dense from 0.2 to 1.5 s where Haiku and Sonnet answer (a
/// 0.25 → 0.5 s bucket put every 0.27 s first token at a p50 of 0.375 s).
const TTFT_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0,
];
/// Microsecond-range buckets: the router's own work should sit in the lowest ones. Dense from
/// 100 µs to 1 ms, where the whole overhead lies (the SDK client's ~80 µs a call and the
/// router's ~20 µs on a 2-core machine, more when it is busy).
const OVERHEAD_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_15, 0.000_2, 0.000_25, 0.000_3, 0.000_4, 0.000_5,
    0.000_75, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1,
];
/// Classification should take a few microseconds.
const CLASSIFY_BUCKETS: &[f64] = &[
    0.000_000_5,
    0.000_001,
    0.000_002,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.001,
];

/// The process-wide Prometheus recorder and money counters.
#[derive(Debug)]
pub struct Telemetry {
    handle: PrometheusHandle,
    money: Mutex<Money>,
}

#[derive(Debug, Default)]
struct Money {
    /// By model and caller label.
    cost: BTreeMap<(Arc<str>, Arc<str>), Nanodollars>,
    /// By caller label.
    baseline: BTreeMap<Arc<str>, Nanodollars>,
    duels: Nanodollars,
}

static TELEMETRY: OnceLock<Telemetry> = OnceLock::new();

/// Installs the global recorder on first call (later calls reuse it) and returns it.
///
/// The recorder is process-wide because the `metrics` macros are; servers started in the same
/// process (as in tests) share it.
pub fn install() -> Result<&'static Telemetry, BuildError> {
    if let Some(telemetry) = TELEMETRY.get() {
        return Ok(telemetry);
    }
    let mut builder = PrometheusBuilder::new();
    for (name, buckets) in [
        (REQUEST_DURATION, REQUEST_BUCKETS),
        (UPSTREAM_DURATION, REQUEST_BUCKETS),
        (TIME_TO_FIRST_TOKEN, TTFT_BUCKETS),
        (OVERHEAD, OVERHEAD_BUCKETS),
        (SDK_OVERHEAD, OVERHEAD_BUCKETS),
        (OWN_OVERHEAD, OVERHEAD_BUCKETS),
        (CLASSIFY_DURATION, CLASSIFY_BUCKETS),
        (COMPLEXITY_SCORE, &score_buckets()),
    ] {
        builder = builder.set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets)?;
    }
    Ok(TELEMETRY.get_or_init(move || {
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder can only come from another library in this process; the `metrics`
        // macros then write to it, and /metrics shows only the money counters.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::error!(
                "another metrics recorder was installed first; /metrics will lack the router's families"
            );
        }
        describe();
        Telemetry {
            handle,
            money: Mutex::new(Money::default()),
        }
    }))
}

fn score_buckets() -> Vec<f64> {
    (1..=20).map(|i| f64::from(i) * 0.05).collect()
}

fn describe() {
    describe_counter!(
        REQUESTS_TOTAL,
        "Requests handled, by tier, model, outcome (ok or gRPC code) and decision reason; refused before routing: tier, model and reason \"none\"."
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Time from receiving a request to sending its last byte."
    );
    describe_histogram!(
        OVERHEAD,
        Unit::Seconds,
        "Router overhead: request time minus upstream time (hand-over to the transport to response) and retry backoff; the router's own work and the SDK client's."
    );
    describe_histogram!(
        SDK_OVERHEAD,
        Unit::Seconds,
        "The AWS SDK client's part of the overhead per request, over every attempt: request building, endpoint resolution, signing, response deserialisation."
    );
    describe_histogram!(
        OWN_OVERHEAD,
        Unit::Seconds,
        "The router's own part of the overhead per request: the overhead minus the SDK client's part."
    );
    describe_histogram!(
        CLASSIFY_DURATION,
        Unit::Seconds,
        "Time to score one request's complexity."
    );
    describe_histogram!(
        UPSTREAM_DURATION,
        Unit::Seconds,
        "Time waiting on Bedrock calls (from handing the request to the transport to the response; a stream to its end), by model, source region and outcome."
    );
    describe_histogram!(
        TIME_TO_FIRST_TOKEN,
        Unit::Seconds,
        "Time from receiving a streamed request to sending its first token."
    );
    describe_histogram!(
        COMPLEXITY_SCORE,
        "Complexity scores of routed requests, 0 (trivial) to 1 (hard)."
    );
    describe_counter!(
        TOKENS_TOTAL,
        "Tokens read (input) and written (output), by model."
    );
    describe_counter!(
        UPSTREAM_ERRORS_TOTAL,
        "Failed Bedrock calls, by model, source region and error kind."
    );
    describe_counter!(
        RETRIES_TOTAL,
        "Upstream attempts repeated after a failure, by the failed model and the error kind."
    );
    describe_counter!(
        FALLBACKS_TOTAL,
        "Requests that moved at least once to another target of this kind (region, degrade, escalate), by the first model moved to; counted once per request and kind."
    );
    describe_counter!(
        RETRY_BUDGET_EXHAUSTED_TOTAL,
        "Retries refused because the router-wide retry budget was spent."
    );
    describe_gauge!(
        CIRCUIT_OPEN,
        "1 while a target (a model through a source region) is ejected after repeated failures."
    );
    describe_gauge!(INFLIGHT_REQUESTS, "Requests being handled now.");
    describe_counter!(
        LIMITED_TOTAL,
        "Requests refused by a caller's limit: requests (requests_per_second), tokens (tokens_per_minute), usd_per_day, usd_per_month, or store_down (the shared limit store unreachable and on_store_down closed)."
    );
    describe_counter!(
        DEGRADED_TOTAL,
        "Strong-bound requests routed to the fast tier because their caller is near its spend budget (decision basis budget)."
    );
    describe_gauge!(
        CALLER_BUDGET_USED,
        "A caller's spend in the current UTC day or month (requests in flight counted at their worst case) over its budget; only callers with a budget."
    );
    describe_gauge!(
        LIMIT_STORE_UP,
        "1 while the shared limit store (limits.redis_url) answers, 0 while callers' limits are kept from this process's own counts (or refused, per on_store_down)."
    );
    describe_gauge!(
        THRESHOLD,
        "Threshold in force by caller (configured callers and \"default\"), before a request's quality bias: fixed, or following the caller's target strong share."
    );
    describe_gauge!(
        WINDOW_STRONG_SHARE,
        "Share of a target-share caller's recent score-decided requests (its window) that went strong."
    );
    describe_counter!(
        LABELS_TOTAL,
        "Label rows by source (duel, feedback) and outcome: stored (acknowledged by the store), dropped (buffer full, or left at shutdown)."
    );
    describe_gauge!(
        LABEL_STORE_UP,
        "1 while the label store (quality.store) takes writes, 0 while it fails."
    );
    describe_counter!(
        WEIGHTS_RELOADS_TOTAL,
        "Weights reloads (SIGHUP or routing.weights_poll) by outcome: accepted, unchanged, unreadable, invalid, worse."
    );
    describe_counter!(
        TLS_RELOADS_TOTAL,
        "Changed TLS files (server.tls.*) by outcome: ok (in force for new connections) or rejected (the old ones kept)."
    );
    describe_counter!(
        AUTH_FAILURES_TOTAL,
        "Requests and TLS handshakes refused for their credentials, by reason: missing, malformed, unknown_token, certificate, mismatch."
    );
    describe_gauge!(
        WEIGHTS_VERSION,
        "CRC-32 of the weights in force, as a number: the weights version is w- and its 8 hex digits."
    );
    describe_counter!(
        DUELS_TOTAL,
        "Duels by how they ended (strong_better, tie, fast_better, unparsed, failed, cancelled) or why none started (skipped_busy, skipped_budget, skipped_loaded, skipped_draining)."
    );
    describe_gauge!(
        QUALITY_RECOVERED,
        "Online estimate of the share of the quality gap between the tiers recovered at the default caller's threshold, from the recent duels; NaN while no gap is seen."
    );
    describe_gauge!(
        QUALITY_RECOVERED_LOW,
        "Lower end of the recovered share's 95% interval."
    );
    describe_gauge!(
        QUALITY_RECOVERED_HIGH,
        "Upper end of the recovered share's 95% interval."
    );
    describe_gauge!(
        QUALITY_DUELS,
        "Duels in the window the quality estimate is computed from."
    );
    describe_gauge!(
        QUALITY_VERDICTS,
        "The estimate window's duels by verdict: strong_better (a fast loss), tie, fast_better (a fast win)."
    );
    describe_gauge!(
        QUALITY_RECOVERED_FLOOR,
        "quality.recovered_floor: the recovered share below which the quality alert fires."
    );
    describe_gauge!(
        QUALITY_MIN_DUELS,
        "quality.min_duels: duels the estimate needs before the floor's alert may fire."
    );
    describe_counter!(
        FEEDBACK_TOTAL,
        "Feedback calls by outcome: stored (handed to the label store), dropped (its writer was behind), invalid, not_found, already_given, no_store."
    );
    describe_gauge!(
        TARGET_STRONG_SHARE,
        "Strong share a target-share caller is steered to now: its configured share, or the one routing.target_quality chose."
    );
    describe_counter!(
        OPERATING_POINT_CHANGES_TOTAL,
        "Changes of a caller's target strong share by routing.target_quality (each one logged with its reason)."
    );
}

impl Telemetry {
    /// Makes the money series of `models` and `callers` (every caller label) exist at zero, so
    /// rates work from the first scrape.
    pub fn register<'a>(
        &self,
        models: impl IntoIterator<Item = &'a Arc<str>>,
        callers: impl IntoIterator<Item = &'a Arc<str>> + Clone,
    ) {
        let mut money = self.money.lock().unwrap_or_else(PoisonError::into_inner);
        for caller in callers.clone() {
            money.baseline.entry(Arc::clone(caller)).or_default();
        }
        for model in models {
            for caller in callers.clone() {
                money
                    .cost
                    .entry((Arc::clone(model), Arc::clone(caller)))
                    .or_default();
            }
        }
    }

    /// Adds one answered request's cost, for `caller`'s label.
    pub fn add_cost(
        &self,
        model: &Arc<str>,
        caller: &Arc<str>,
        actual: Nanodollars,
        baseline: Nanodollars,
    ) {
        let mut money = self.money.lock().unwrap_or_else(PoisonError::into_inner);
        // Registered at start for every catalog model and caller label, so no key is built
        // here on the request path.
        money
            .cost
            .entry((Arc::clone(model), Arc::clone(caller)))
            .or_default()
            .0 += actual.0;
        money.baseline.entry(Arc::clone(caller)).or_default().0 += baseline.0;
    }

    /// Adds one duel's cost.
    pub fn add_duel_cost(&self, cost: Nanodollars) {
        let mut money = self.money.lock().unwrap_or_else(PoisonError::into_inner);
        money.duels.0 += cost.0;
    }

    /// The Prometheus text exposition of every router metric.
    pub fn render(&self) -> String {
        let mut out = self.handle.render();
        let money = self
            .money
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = writeln!(
            out,
            "# HELP {COST_USD_TOTAL} Cost of Bedrock calls at the catalog's prices, in US dollars.\n# TYPE {COST_USD_TOTAL} counter"
        );
        for ((model, caller), amount) in &money.cost {
            let _ = writeln!(
                out,
                "{COST_USD_TOTAL}{{model=\"{}\",caller=\"{}\"}} {amount}",
                escape_label(model),
                escape_label(caller)
            );
        }
        let _ = writeln!(
            out,
            "# HELP {BASELINE_COST_USD_TOTAL} What the same tokens would have cost on the strong model, in US dollars.\n# TYPE {BASELINE_COST_USD_TOTAL} counter"
        );
        for (caller, amount) in &money.baseline {
            let _ = writeln!(
                out,
                "{BASELINE_COST_USD_TOTAL}{{caller=\"{}\"}} {amount}",
                escape_label(caller)
            );
        }
        let _ = writeln!(
            out,
            "# HELP {DUEL_COST_USD_TOTAL} Cost of duels (the other tier's answers and the judge's calls) at the catalog's prices, in US dollars.\n# TYPE {DUEL_COST_USD_TOTAL} counter\n{DUEL_COST_USD_TOTAL} {}",
            money.duels
        );
        out
    }

    /// Housekeeping the exporter needs now and then (draining histogram buffers).
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }
}

/// How often [`Telemetry::run_upkeep`] should run.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Starts the log subscriber: `RUST_LOG` filters (default `info`), text or JSON lines.
pub fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // try_init: a second call (tests, embedding) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.fmt_fields(crate::logfmt::TextFields).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_renders_as_exact_dollar_counters() {
        let telemetry = install().expect("recorder");
        let (model, caller) = (Arc::from("test.model-a"), Arc::from("billing"));
        telemetry.register([&model], [&caller]);
        telemetry.add_cost(
            &model,
            &caller,
            Nanodollars(875_000),
            Nanodollars(10_500_000),
        );
        let text = telemetry.render();
        assert!(
            text.contains("# TYPE router_cost_usd_total counter"),
            "{text}"
        );
        assert!(
            text.contains(
                "router_cost_usd_total{model=\"test.model-a\",caller=\"billing\"} 0.000875000"
            ),
            "{text}"
        );
        assert!(
            text.contains("router_baseline_cost_usd_total{caller=\"billing\"} 0.010500000"),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
