//! The raw layer: what a config file and `ROUTER__…` variables can say, as serde reads it,
//! with the defaults. Nothing here is checked; [`super::Config`] is built from a [`RawConfig`]
//! once, and everything past start-up takes that.

use std::{collections::BTreeMap, fmt, net::SocketAddr};

use serde::{Deserialize, Serialize};

use crate::request::Limits;

/// The whole configuration of the router, as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    /// Listening addresses and request limits.
    pub server: RawServer,
    /// Where and how Bedrock is called.
    pub bedrock: RawBedrock,
    /// The two model tiers.
    pub models: RawModels,
    /// Classifier, threshold and operating point.
    pub routing: RawRouting,
    /// Per-caller identity and policy, by caller name; `default` applies to every caller not
    /// named (and gives named callers what they leave unset).
    pub callers: BTreeMap<String, RawCaller>,
    /// Whether callers must authenticate.
    pub auth: RawAuth,
    /// Retries, fallbacks and outlier ejection.
    pub resilience: RawResilience,
    /// Duels, feedback, the labels they make and the online quality estimate.
    pub quality: RawQuality,
    /// Per-request size limits, and where callers' rate limits and spend are kept.
    pub limits: RawLimits,
    /// Logs.
    pub telemetry: TelemetryConfig,
}

/// Listening addresses and request limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawServer {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Prometheus `/metrics` listen address.
    pub metrics_listen: SocketAddr,
    /// Largest accepted gRPC request message, in bytes.
    pub max_request_bytes: usize,
    /// Most requests handled at once; beyond it requests are refused at once with
    /// RESOURCE_EXHAUSTED instead of queueing.
    pub max_concurrency: usize,
    /// On SIGTERM, how long to keep accepting requests while health reports NOT_SERVING, so load
    /// balancers stop sending before the listener closes (0 when a preStop hook already waits).
    pub shutdown_delay_ms: u64,
    /// On SIGTERM, how long in-flight requests may take to finish; those still running then end
    /// with UNAVAILABLE before the router exits.
    pub drain_timeout_ms: u64,
    /// Most `Route` calls handled at once; beyond it they are refused at once with
    /// RESOURCE_EXHAUSTED. `Route` calls no model, so it has its own, separate limit.
    pub max_route_concurrency: usize,
    /// Memory set aside for the requests in flight, in bytes: each request is charged what
    /// holding, decoding and sending it costs (its size and its shape), from the moment its
    /// length is known until it ends; one that does not fit is refused with RESOURCE_EXHAUSTED.
    pub max_inflight_request_bytes: u64,
    /// Most connections open at once on the gRPC port; beyond it new ones wait in the kernel's
    /// backlog.
    pub max_connections: usize,
    /// HTTP/2 receive window of a gRPC connection and of each call on it, in bytes: what a
    /// client may send before the router has read it, so it bounds per connection the memory
    /// unread data can take, and per round trip a client's upload speed.
    pub http2_window_bytes: u32,
    /// Time a client gets to send what it must before the router acts: a new gRPC connection's
    /// HTTP/2 preface, and on `/metrics` the head of a request (on a new connection or one kept
    /// alive), in milliseconds.
    pub header_read_timeout_ms: u64,
    /// Time a gRPC request message gets to arrive in full once its call has started, in
    /// milliseconds.
    pub request_read_timeout_ms: u64,
    /// A gRPC connection with no call open for this long is closed (GOAWAY), in milliseconds.
    pub idle_timeout_ms: u64,
    /// Interval of HTTP/2 PINGs on a gRPC connection that has been silent that long; a peer that
    /// does not answer within 20 s is disconnected. In milliseconds; 0 turns pings off.
    pub keepalive_interval_ms: u64,
    /// TLS on the gRPC port; unset: plaintext. (`/metrics` stays plaintext on its own port.)
    pub tls: Option<RawTls>,
    /// Whether the gRPC port serves reflection (lists the API to any client that asks).
    pub reflection: bool,
}

/// TLS on the gRPC port (`server.tls.*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawTls {
    /// The server's certificate chain, PEM, leaf first.
    pub cert_file: String,
    /// The server's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
    /// CA certificates, PEM: set, clients must present a certificate one of them signed
    /// (mTLS), and its SAN can identify the caller (`callers.NAME.san`).
    pub client_ca_file: Option<String>,
    /// With `client_ca_file`: must every client present a certificate at the handshake
    /// (`required`), or may one connect without and identify itself with a token (`optional`)?
    pub client_cert: ClientCert,
    /// How often the three files are checked for a change and reloaded (new connections get
    /// the new ones), in milliseconds; 0: only on SIGHUP.
    pub reload_interval_ms: u64,
}

impl Default for RawTls {
    fn default() -> Self {
        Self {
            cert_file: String::new(),
            key_file: String::new(),
            client_ca_file: None,
            client_cert: ClientCert::Required,
            reload_interval_ms: 30_000,
        }
    }
}

/// Whether a client must present a certificate (`server.tls.client_cert`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientCert {
    /// The handshake fails without a certificate that chains to `client_ca_file`.
    #[default]
    Required,
    /// A certificate, if sent, must chain to `client_ca_file`; a client may send none.
    Optional,
}

/// Whether callers must authenticate (`auth.*`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawAuth {
    /// When true, a request without a valid bearer token or client certificate gets
    /// UNAUTHENTICATED (health checks excepted).
    pub required: bool,
}

/// Per-request size limits and the store of callers' rate limits and spend (`limits.*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawLimits {
    /// Most turns in one request.
    pub max_messages: usize,
    /// Most images in one request.
    pub max_images: usize,
    /// Largest image, in bytes.
    pub max_image_bytes: usize,
    /// Most tools one request may declare.
    pub max_tools: usize,
    /// Redis that keeps callers' rate limits and spend, shared by every replica, e.g.
    /// `redis://127.0.0.1:6379`; unset: kept in this process.
    pub redis_url: Option<String>,
    /// Longest a limit check may wait on Redis before the store counts as unreachable, in
    /// milliseconds.
    pub redis_timeout_ms: u64,
    /// Lifetime of a lease (a chunk of each caller's rates and spend headroom reserved in
    /// Redis, spent without asking it again), in milliseconds; 0: every request asks Redis.
    pub lease_ms: u64,
}

impl Default for RawLimits {
    fn default() -> Self {
        let sizes = Limits::default();
        Self {
            max_messages: sizes.max_messages,
            max_images: sizes.max_images,
            max_image_bytes: sizes.max_image_bytes,
            max_tools: sizes.max_tools,
            redis_url: None,
            redis_timeout_ms: 250,
            lease_ms: 100,
        }
    }
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 50051)),
            metrics_listen: SocketAddr::from(([0, 0, 0, 0], 9464)),
            max_request_bytes: 20 * 1024 * 1024,
            max_concurrency: 512,
            shutdown_delay_ms: 0,
            drain_timeout_ms: 20_000,
            max_route_concurrency: 64,
            max_inflight_request_bytes: 128 * 1024 * 1024,
            max_connections: 1024,
            http2_window_bytes: 128 * 1024,
            header_read_timeout_ms: 10_000,
            request_read_timeout_ms: 30_000,
            idle_timeout_ms: 300_000,
            keepalive_interval_ms: 60_000,
            tls: None,
            reflection: true,
        }
    }
}

/// Where and how Bedrock is called.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawBedrock {
    /// The AWS source region requests are sent to first, e.g. `us-east-1`.
    pub region: String,
    /// Further source regions of the same geography, tried in order when the first throttles or
    /// fails: each has its own quotas for the same inference profile. Unset: one well-known
    /// region of the geography (us-east-1/us-west-2, eu-central-1/eu-west-1,
    /// ap-northeast-1/ap-southeast-1); `[]`: none.
    pub fallback_regions: Option<Vec<String>>,
    /// The inference-profile geography (`us`, `eu`, `apac`); derived from `region` when unset.
    pub geography: Option<Geography>,
    /// Any Bedrock-compatible endpoint (a proxy, a VPC endpoint, the simulator); AWS's own when unset.
    pub endpoint_url: Option<String>,
    /// Time allowed to open a connection, in milliseconds.
    pub connect_timeout_ms: u64,
    /// The deadline of a request whose caller sets none, in milliseconds: every attempt,
    /// backoff and fallback of the request must fit in it, as in a caller's own deadline.
    /// `call_timeout_ms`, its old name, still works (see `super::load`).
    pub default_deadline_ms: u64,
    /// Longest silence allowed between two events of a streamed answer, in milliseconds (the
    /// SDK's stalled-stream protection does not cover event streams).
    pub stream_idle_timeout_ms: u64,
}

impl Default for RawBedrock {
    fn default() -> Self {
        Self {
            region: "us-east-1".to_owned(),
            fallback_regions: None,
            geography: None,
            endpoint_url: None,
            connect_timeout_ms: 3_000,
            default_deadline_ms: 120_000,
            stream_idle_timeout_ms: 30_000,
        }
    }
}

/// A cross-region inference profile geography: the prefix of the profile id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Geography {
    /// United States (`us.` profiles).
    Us,
    /// Europe (`eu.` profiles).
    Eu,
    /// Asia Pacific (`apac.` profiles).
    Apac,
}

impl Geography {
    /// The geography whose profiles a source region can call, from the region's name.
    pub fn of_region(region: &str) -> Option<Self> {
        if region.starts_with("us-") {
            Some(Self::Us)
        } else if region.starts_with("eu-") {
            Some(Self::Eu)
        } else if region.starts_with("ap-") {
            Some(Self::Apac)
        } else {
            None
        }
    }

    /// The profile-id prefix, without the dot.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Us => "us",
            Self::Eu => "eu",
            Self::Apac => "apac",
        }
    }
}

impl fmt::Display for Geography {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.prefix())
    }
}

/// The two model tiers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawModels {
    /// The strong tier (Claude 3.5 Sonnet v2 by default).
    pub strong: RawModel,
    /// The fast tier (Claude 3 Haiku by default).
    pub fast: RawModel,
}

impl Default for RawModels {
    fn default() -> Self {
        Self {
            strong: RawModel::sonnet_3_5_v2(),
            fast: RawModel::haiku_3(),
        }
    }
}

/// One model: its id, where its inference profiles exist, prices, limits and capabilities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawModel {
    /// The Bedrock base model id, e.g. `anthropic.claude-3-haiku-20240307-v1:0`.
    pub id: String,
    /// Geographies with a cross-region inference profile `{geography}.{id}` for this model.
    pub profile_geographies: Vec<Geography>,
    /// Call the base model id in the source region instead of an inference profile.
    pub on_demand: bool,
    /// Price of input tokens, USD per million.
    pub input_usd_per_mtok: f64,
    /// Price of output tokens, USD per million.
    pub output_usd_per_mtok: f64,
    /// Most output tokens the model may generate in one call.
    pub max_output_tokens: u32,
    /// Whether the model accepts images.
    pub images: bool,
    /// Whether the model supports tool use.
    pub tools: bool,
}

impl Default for RawModel {
    fn default() -> Self {
        Self {
            id: String::new(),
            profile_geographies: Vec::new(),
            on_demand: false,
            input_usd_per_mtok: 0.0,
            output_usd_per_mtok: 0.0,
            max_output_tokens: 4096,
            images: true,
            tools: true,
        }
    }
}

impl RawModel {
    /// Claude 3.5 Sonnet v2: the default strong model. It has no EU inference profile.
    pub fn sonnet_3_5_v2() -> Self {
        Self {
            id: "anthropic.claude-3-5-sonnet-20241022-v2:0".to_owned(),
            profile_geographies: vec![Geography::Us, Geography::Apac],
            on_demand: false,
            input_usd_per_mtok: 3.0,
            output_usd_per_mtok: 15.0,
            max_output_tokens: 8192,
            images: true,
            tools: true,
        }
    }

    /// Claude 3 Haiku: the default fast model.
    pub fn haiku_3() -> Self {
        Self {
            id: "anthropic.claude-3-haiku-20240307-v1:0".to_owned(),
            profile_geographies: vec![Geography::Us, Geography::Eu, Geography::Apac],
            on_demand: false,
            input_usd_per_mtok: 0.25,
            output_usd_per_mtok: 1.25,
            max_output_tokens: 4096,
            images: true,
            tools: true,
        }
    }
}

/// Classifier, threshold and operating point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawRouting {
    /// Score at or above which a request goes to the strong tier; the weights file's when unset.
    pub threshold: Option<f64>,
    /// A weights file written by `prompt-router train`; the built-in weights when unset.
    pub weights_path: Option<String>,
    /// Share (0–1) of each caller's AUTO requests to send to the strong tier, for callers whose
    /// `[callers.NAME]` (or `[callers.default]`) sets none; unset: the fixed threshold.
    pub target_strong_share: Option<f64>,
    /// Scores of recent requests kept per target-share caller, to set its threshold from.
    pub share_window: usize,
    /// Scores a target-share caller's window needs before its threshold comes from it.
    pub share_warmup: usize,
    /// Share (0–1) of the quality gap between the tiers to recover: the operating point becomes
    /// the lowest strong share whose recovery, estimated from recent duels with a confidence
    /// margin, meets it; until there are `quality.min_duels` duels, the target share applies.
    /// Unset: no quality target.
    pub target_quality: Option<f64>,
    /// How often the weights file is checked for a change and reloaded, in milliseconds
    /// (SIGHUP reloads at once); 0: only on SIGHUP.
    pub weights_poll_ms: u64,
}

impl Default for RawRouting {
    fn default() -> Self {
        Self {
            threshold: None,
            weights_path: None,
            target_strong_share: None,
            share_window: 1_000,
            share_warmup: 100,
            target_quality: None,
            weights_poll_ms: 10_000,
        }
    }
}

/// One caller's identity and policy (`[callers.NAME]`). What a named caller leaves unset,
/// `[callers.default]` gives.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawCaller {
    /// Share (0–1) of this caller's AUTO requests to send to the strong tier; unset:
    /// `[callers.default]`'s, then `routing.target_strong_share`, then the fixed threshold.
    pub target_strong_share: Option<f64>,
    /// Hex SHA-256 of the bearer token (`authorization: Bearer …`) that identifies this caller.
    pub token_sha256: Option<String>,
    /// A file holding that hex SHA-256 (a mounted secret); instead of `token_sha256`.
    pub token_sha256_file: Option<String>,
    /// A client-certificate SAN (DNS name or URI, e.g. a SPIFFE id) that identifies this
    /// caller; needs `server.tls.client_ca_file`.
    pub san: Option<String>,
    /// May the caller force the strong tier (`ROUTING_MODE_FORCE_STRONG`); default true.
    pub allow_force: Option<bool>,
    /// Largest `routing.quality_bias` the caller may send (−1 to 1); default 1.
    pub max_quality_bias: Option<f64>,
    /// Most output tokens the caller may ask for; default: what the models give.
    pub max_output_tokens: Option<u32>,
    /// Requests per second, on average; default: no limit.
    pub requests_per_second: Option<f64>,
    /// Requests that may arrive at once above the rate; default: the rate rounded up, at least 1.
    pub burst: Option<u32>,
    /// Input and output tokens per minute, on average; default: no limit.
    pub tokens_per_minute: Option<u64>,
    /// Spend per UTC day, in USD; default: no budget.
    pub usd_per_day: Option<f64>,
    /// Spend per UTC calendar month, in USD; default: no budget.
    pub usd_per_month: Option<f64>,
    /// Share (0–1) of a budget after which requests bound for the strong tier go to the fast
    /// one; default 0.9.
    pub degrade_at: Option<f64>,
    /// While the shared limit store is unreachable: `open` (serve, counting in this process)
    /// or `closed` (refuse with UNAVAILABLE); default `open`.
    pub on_store_down: Option<crate::caller::StoreDown>,
}

/// Retries, fallbacks and outlier ejection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawResilience {
    /// Most upstream attempts per request, over all targets (1 = no retries).
    pub max_attempts: u32,
    /// First retry's backoff ceiling, in milliseconds; doubles per retry, with full jitter.
    pub backoff_base_ms: u64,
    /// Largest backoff, in milliseconds.
    pub backoff_max_ms: u64,
    /// Retries allowed per first attempt, averaged over time (0.5: retries add at most 50% load).
    pub retry_budget_ratio: f64,
    /// Retries always allowed per second, so a quiet router can still retry.
    pub retry_budget_min_per_sec: f64,
    /// Let a strong request be answered by the fast model when every strong target fails.
    pub degrade_to_fast: bool,
    /// Let a fast request be answered by the strong model when every fast target fails.
    pub escalate_to_strong: bool,
    /// Consecutive failures after which a target (model in a region) is ejected.
    pub breaker_failures: u32,
    /// How long an ejected target is skipped before one probe request may try it.
    pub breaker_cooldown_ms: u64,
    /// Most of a model's targets (its source regions), in percent rounded down, ejected at once.
    pub max_ejected_percent: u32,
}

impl Default for RawResilience {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            backoff_base_ms: 25,
            backoff_max_ms: 1_000,
            retry_budget_ratio: 0.5,
            retry_budget_min_per_sec: 10.0,
            degrade_to_fast: true,
            escalate_to_strong: true,
            breaker_failures: 5,
            breaker_cooldown_ms: 10_000,
            max_ejected_percent: 50,
        }
    }
}

/// Duels, feedback, the labels they make and the online quality estimate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawQuality {
    /// Share (0–1) of answered requests that get a duel: off the caller's path, the other tier
    /// answers the same request and the judge grades the two answers. 0: no duels.
    pub duel_rate: f64,
    /// The model id the judge calls, as invoked (e.g. an inference profile id); the strong
    /// model's when unset.
    pub judge_model: Option<String>,
    /// Most USD per hour that duels (the other tier's answers and the judge's calls) may spend.
    pub usd_per_hour: f64,
    /// Duels running at once; a sampled request finding none free has no duel.
    pub duel_concurrency: usize,
    /// Where label rows go: `file:PATH` (a directory, rotated files; no server needed) or a
    /// `redis://` URL (a stream shared by every replica). Unset: labels are not stored.
    pub store: Option<String>,
    /// Store each label's prompt text with it (off: only the feature vector is stored).
    pub store_prompts: bool,
    /// Recent requests kept for `Feedback` to join to, by request id.
    pub feedback_capacity: usize,
    /// How long a request can still be given feedback, in milliseconds.
    pub feedback_ttl_ms: u64,
    /// Recent duels the online estimate is computed from.
    pub window: usize,
    /// Duels the estimate needs before `routing.target_quality` and the floor act on it.
    pub min_duels: usize,
    /// The recovered share below which the quality alert fires (with `min_duels` duels);
    /// unset: no floor.
    pub recovered_floor: Option<f64>,
}

impl Default for RawQuality {
    fn default() -> Self {
        Self {
            duel_rate: 0.0,
            judge_model: None,
            usd_per_hour: 1.0,
            duel_concurrency: 4,
            store: None,
            store_prompts: false,
            feedback_capacity: 100_000,
            feedback_ttl_ms: 3_600_000,
            window: 2_000,
            min_duels: 200,
            recovered_floor: None,
        }
    }
}

/// Log output.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Log format: human-readable text or JSON lines.
    pub log_format: LogFormat,
    /// Log prompt text (off by default: prompts may hold personal data).
    pub log_prompts: bool,
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    /// The config file's spellings, for `--log-format`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format {other:?}: use text or json")),
        }
    }
}
