//! Typed configuration: defaults, then a TOML file, then `ROUTER__SECTION__KEY` environment
//! overrides, validated once at start with messages that name the offending field.
//!
//! Secrets never live here: Bedrock credentials come from the AWS default credential chain.

use std::{collections::BTreeMap, fmt, net::SocketAddr, path::Path};

use serde::{Deserialize, Serialize};

use crate::{
    operating::{DEFAULT_CALLER, HORIZON, MAX_WINDOW, Settings},
    request::{Limits, MAX_CALLER_LEN},
};

/// The prefix of environment variables that override config fields.
pub const ENV_PREFIX: &str = "ROUTER__";

/// The whole configuration of the router.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listening addresses and request limits.
    pub server: ServerConfig,
    /// Where and how Bedrock is called.
    pub bedrock: BedrockConfig,
    /// The two model tiers.
    pub models: ModelsConfig,
    /// Classifier, threshold and operating point.
    pub routing: RoutingConfig,
    /// Per-caller policy, by the name callers send in `routing.caller`; `default` applies to
    /// every caller not named.
    pub callers: BTreeMap<String, CallerConfig>,
    /// Retries, fallbacks and outlier ejection.
    pub resilience: ResilienceConfig,
    /// Per-request size limits.
    pub limits: Limits,
    /// Logs.
    pub telemetry: TelemetryConfig,
}

/// Listening addresses and request limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
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
}

impl Default for ServerConfig {
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
        }
    }
}

/// Where and how Bedrock is called.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BedrockConfig {
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
    /// Time allowed for one whole upstream call when the caller sets no deadline, in milliseconds.
    pub call_timeout_ms: u64,
    /// Longest silence allowed between two events of a streamed answer, in milliseconds (the
    /// SDK's stalled-stream protection does not cover event streams).
    pub stream_idle_timeout_ms: u64,
}

impl Default for BedrockConfig {
    fn default() -> Self {
        Self {
            region: "us-east-1".to_owned(),
            fallback_regions: None,
            geography: None,
            endpoint_url: None,
            connect_timeout_ms: 3_000,
            call_timeout_ms: 120_000,
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
pub struct ModelsConfig {
    /// The strong tier (Claude 3.5 Sonnet v2 by default).
    pub strong: ModelConfig,
    /// The fast tier (Claude 3 Haiku by default).
    pub fast: ModelConfig,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        Self {
            strong: ModelConfig::sonnet_3_5_v2(),
            fast: ModelConfig::haiku_3(),
        }
    }
}

/// One model: its id, where its inference profiles exist, prices, limits and capabilities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
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

impl Default for ModelConfig {
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

impl ModelConfig {
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
pub struct RoutingConfig {
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
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            threshold: None,
            weights_path: None,
            target_strong_share: None,
            share_window: 1_000,
            share_warmup: 100,
        }
    }
}

/// One caller's policy (`[callers.NAME]`). Later policies (tokens, rate limits, budgets) join it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallerConfig {
    /// Share (0–1) of this caller's AUTO requests to send to the strong tier; unset:
    /// `[callers.default]`'s, then `routing.target_strong_share`, then the fixed threshold.
    pub target_strong_share: Option<f64>,
}

/// Retries, fallbacks and outlier ejection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResilienceConfig {
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

impl Default for ResilienceConfig {
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// A configuration that could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file or an override is not valid TOML of the right shape.
    #[error("{origin}: {message}")]
    Parse {
        /// The file or the environment variable.
        origin: String,
        /// What is wrong, with the field's path.
        message: String,
    },
    /// A field has a value the router cannot run with.
    #[error("config field `{field}`: {message}")]
    Invalid {
        /// The field's dotted path.
        field: String,
        /// What is wrong and what to do.
        message: String,
    },
}

impl ConfigError {
    fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl Config {
    /// Loads defaults, then `path` (if any), then `ROUTER__…` overrides from `env`, and validates.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        // Merging at the TOML level lets a file override one field of a default model (say, its
        // price) and keep the rest, which struct-level serde defaults cannot do.
        let mut table =
            toml::Table::try_from(Config::default()).map_err(|e| ConfigError::Parse {
                origin: "built-in defaults".to_owned(),
                message: e.to_string(),
            })?;
        if let Some(path) = path {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?;
            let file = text
                .parse::<toml::Table>()
                .map_err(|e| ConfigError::Parse {
                    origin: path.display().to_string(),
                    message: e.to_string(),
                })?;
            merge(&mut table, file);
        }
        for (key, value) in env {
            if let Some(rest) = key.strip_prefix(ENV_PREFIX) {
                apply_override(&mut table, &key, rest, &value)?;
            }
        }
        let origin = path.map_or_else(|| "configuration".to_owned(), |p| p.display().to_string());
        let config: Config =
            Config::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Parse {
                origin,
                message: e.to_string(),
            })?;
        config.validate()
    }

    /// Every source region to call, the configured one first.
    pub fn regions(&self) -> Vec<String> {
        let primary = self.bedrock.region.clone();
        let fallbacks = match &self.bedrock.fallback_regions {
            Some(list) => list.clone(),
            None => {
                let pair: &[&str] = match self.geography() {
                    Some(Geography::Us) => &["us-east-1", "us-west-2"],
                    Some(Geography::Eu) => &["eu-central-1", "eu-west-1"],
                    Some(Geography::Apac) => &["ap-northeast-1", "ap-southeast-1"],
                    None => &[],
                };
                pair.iter()
                    .find(|r| **r != primary)
                    .map(|r| vec![(*r).to_owned()])
                    .unwrap_or_default()
            }
        };
        std::iter::once(primary).chain(fallbacks).collect()
    }

    /// The target strong share of `caller`: its own `[callers.NAME]`, then `[callers.default]`,
    /// then `routing.target_strong_share`; `None` means the fixed threshold.
    pub fn target_strong_share(&self, caller: &str) -> Option<f64> {
        let own = |name: &str| self.callers.get(name).and_then(|c| c.target_strong_share);
        own(caller)
            .or_else(|| own(DEFAULT_CALLER))
            .or(self.routing.target_strong_share)
    }

    /// The callers `[callers.NAME]` lists (`default` excepted), each with its target share.
    pub fn named_callers(&self) -> impl Iterator<Item = (String, Option<f64>)> + '_ {
        self.callers
            .keys()
            .filter(|name| *name != DEFAULT_CALLER)
            .map(|name| (name.clone(), self.target_strong_share(name)))
    }

    /// The operating point's window settings.
    pub fn share_settings(&self) -> Settings {
        Settings {
            window: self.routing.share_window,
            warmup: self.routing.share_warmup,
            horizon: HORIZON,
        }
    }

    /// The geography the configured source region calls profiles in.
    pub fn geography(&self) -> Option<Geography> {
        self.bedrock
            .geography
            .or_else(|| Geography::of_region(&self.bedrock.region))
    }

    /// Checks every field once, naming the field in the message.
    pub fn validate(self) -> Result<Self, ConfigError> {
        if self.bedrock.region.trim().is_empty() {
            return Err(ConfigError::invalid("bedrock.region", "must not be empty"));
        }
        let Some(geography) = self.geography() else {
            return Err(ConfigError::invalid(
                "bedrock.geography",
                format!(
                    "cannot tell the inference-profile geography of region {:?}; set it to us, eu or apac",
                    self.bedrock.region
                ),
            ));
        };
        if let Some(url) = &self.bedrock.endpoint_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ConfigError::invalid(
                "bedrock.endpoint_url",
                format!("{url:?} is not an http:// or https:// URL"),
            ));
        }
        for (field, value) in [
            (
                "bedrock.connect_timeout_ms",
                self.bedrock.connect_timeout_ms,
            ),
            ("bedrock.call_timeout_ms", self.bedrock.call_timeout_ms),
            (
                "bedrock.stream_idle_timeout_ms",
                self.bedrock.stream_idle_timeout_ms,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(field, "must be above 0"));
            }
        }
        if let Some(own) = Geography::of_region(&self.bedrock.region)
            && own != geography
        {
            return Err(ConfigError::invalid(
                "bedrock.geography",
                format!(
                    "\"{geography}\" profiles cannot be called from region {:?}, which is in \"{own}\"",
                    self.bedrock.region
                ),
            ));
        }
        if self.server.max_request_bytes < 1024 {
            return Err(ConfigError::invalid(
                "server.max_request_bytes",
                "must be at least 1024",
            ));
        }
        let mut seen = vec![self.bedrock.region.as_str()];
        for (i, region) in self.bedrock.fallback_regions.iter().flatten().enumerate() {
            let field = format!("bedrock.fallback_regions[{i}]");
            if Geography::of_region(region) != Some(geography) {
                return Err(ConfigError::invalid(
                    field,
                    format!(
                        "{region:?} is not in geography \"{geography}\": inference profiles are called from regions of their own geography"
                    ),
                ));
            }
            if seen.contains(&region.as_str()) {
                return Err(ConfigError::invalid(
                    field,
                    format!("{region:?} is listed twice"),
                ));
            }
            seen.push(region);
        }
        let r = &self.resilience;
        if !(1..=10).contains(&r.max_attempts) {
            return Err(ConfigError::invalid(
                "resilience.max_attempts",
                "must be 1 to 10",
            ));
        }
        if r.backoff_base_ms > r.backoff_max_ms {
            return Err(ConfigError::invalid(
                "resilience.backoff_base_ms",
                "must not exceed resilience.backoff_max_ms",
            ));
        }
        for (field, value) in [
            ("resilience.retry_budget_ratio", r.retry_budget_ratio),
            (
                "resilience.retry_budget_min_per_sec",
                r.retry_budget_min_per_sec,
            ),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(ConfigError::invalid(
                    field,
                    format!("{value} must be 0 or more"),
                ));
            }
        }
        if r.breaker_failures == 0 {
            return Err(ConfigError::invalid(
                "resilience.breaker_failures",
                "must be at least 1",
            ));
        }
        if r.max_ejected_percent > 100 {
            return Err(ConfigError::invalid(
                "resilience.max_ejected_percent",
                format!("{} is above 100", r.max_ejected_percent),
            ));
        }
        for (field, value) in [
            ("server.max_concurrency", self.server.max_concurrency),
            (
                "server.max_route_concurrency",
                self.server.max_route_concurrency,
            ),
            ("server.max_connections", self.server.max_connections),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(field, "must be at least 1"));
            }
        }
        for (field, value) in [
            (
                "server.header_read_timeout_ms",
                self.server.header_read_timeout_ms,
            ),
            (
                "server.request_read_timeout_ms",
                self.server.request_read_timeout_ms,
            ),
            ("server.idle_timeout_ms", self.server.idle_timeout_ms),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(field, "must be above 0"));
            }
        }
        let server = &self.server;
        // RFC 9113, 6.9.2: a window is at least the default 65,535 and below 2^31.
        if !(65_535..=0x7fff_ffff).contains(&server.http2_window_bytes) {
            return Err(ConfigError::invalid(
                "server.http2_window_bytes",
                format!(
                    "{} is outside [65535, 2147483647]",
                    server.http2_window_bytes
                ),
            ));
        }
        // Admission charges a request of text 4 bytes per byte (its TEXT_COST): below 4 times
        // the largest request, the largest ordinary one could never be let in.
        if server.max_inflight_request_bytes < 4 * server.max_request_bytes as u64 {
            return Err(ConfigError::invalid(
                "server.max_inflight_request_bytes",
                format!(
                    "{} is below 4 × server.max_request_bytes ({}): handling a request takes up to 4 times its size, so the largest could never be let in",
                    server.max_inflight_request_bytes, server.max_request_bytes
                ),
            ));
        }
        if self.limits.max_messages == 0 {
            return Err(ConfigError::invalid(
                "limits.max_messages",
                "must be at least 1",
            ));
        }
        validate_model("models.strong", &self.models.strong, geography)?;
        validate_model("models.fast", &self.models.fast, geography)?;
        unit_interval("routing.threshold", self.routing.threshold)?;
        unit_interval(
            "routing.target_strong_share",
            self.routing.target_strong_share,
        )?;
        let (window, warmup) = (self.routing.share_window, self.routing.share_warmup);
        if !(1..=MAX_WINDOW).contains(&window) {
            return Err(ConfigError::invalid(
                "routing.share_window",
                format!("{window} is outside [1, {MAX_WINDOW}] (a window's counts are 16-bit)"),
            ));
        }
        if !(1..=window).contains(&warmup) {
            return Err(ConfigError::invalid(
                "routing.share_warmup",
                format!("{warmup} is outside [1, routing.share_window = {window}]"),
            ));
        }
        for (name, caller) in &self.callers {
            // The names callers send: the same rules as the request's `routing.caller`.
            let field = format!("callers.{name}");
            if name.is_empty() || name.chars().count() > MAX_CALLER_LEN {
                return Err(ConfigError::invalid(
                    field,
                    format!("a caller name has 1 to {MAX_CALLER_LEN} characters"),
                ));
            }
            if name.chars().any(char::is_control) {
                return Err(ConfigError::invalid(
                    field,
                    "a caller name has no control characters",
                ));
            }
            unit_interval(
                &format!("{field}.target_strong_share"),
                caller.target_strong_share,
            )?;
        }
        Ok(self)
    }
}

/// Checks that an optional share or threshold lies in [0, 1] (NaN does not).
fn unit_interval(field: &str, value: Option<f64>) -> Result<(), ConfigError> {
    match value {
        Some(v) if !(0.0..=1.0).contains(&v) => Err(ConfigError::invalid(
            field,
            format!("{v} is outside [0, 1]"),
        )),
        _ => Ok(()),
    }
}

fn validate_model(
    field: &str,
    model: &ModelConfig,
    geography: Geography,
) -> Result<(), ConfigError> {
    if model.id.trim().is_empty() {
        return Err(ConfigError::invalid(
            format!("{field}.id"),
            "must not be empty",
        ));
    }
    if !model.on_demand && !model.profile_geographies.contains(&geography) {
        let offered: Vec<String> = model
            .profile_geographies
            .iter()
            .map(ToString::to_string)
            .collect();
        return Err(ConfigError::invalid(
            format!("{field}.profile_geographies"),
            format!(
                "{} has no cross-region inference profile in geography \"{geography}\" (it has: {}). \
                 Use a region in one of those geographies, or set [{field}] explicitly to a model \
                 offered in \"{geography}\" (id and profile_geographies), or on_demand = true to call \
                 the base model id in-region",
                model.id,
                if offered.is_empty() {
                    "none".to_owned()
                } else {
                    offered.join(", ")
                },
            ),
        ));
    }
    for (name, price) in [
        ("input_usd_per_mtok", model.input_usd_per_mtok),
        ("output_usd_per_mtok", model.output_usd_per_mtok),
    ] {
        crate::cost::price_from_usd_per_mtok(price)
            .map_err(|message| ConfigError::invalid(format!("{field}.{name}"), message))?;
    }
    if model.max_output_tokens == 0 {
        return Err(ConfigError::invalid(
            format!("{field}.max_output_tokens"),
            "must be above 0",
        ));
    }
    Ok(())
}

/// Deep-merges `overlay` into `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base_table)), toml::Value::Table(overlay_table)) => {
                merge(base_table, overlay_table);
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Sets `SECTION.KEY` in `table` from one `ROUTER__SECTION__KEY=value` variable. The value is read
/// as a TOML value when it parses as one (numbers, booleans, arrays), else as a plain string.
fn apply_override(
    table: &mut toml::Table,
    var: &str,
    path: &str,
    raw: &str,
) -> Result<(), ConfigError> {
    let keys: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
    if keys.iter().any(String::is_empty) {
        return Err(ConfigError::Parse {
            origin: var.to_owned(),
            message: "empty key in the variable name".to_owned(),
        });
    }
    let value = parse_env_value(raw);
    let mut node = table;
    let (last, parents) = keys.split_last().ok_or_else(|| ConfigError::Parse {
        origin: var.to_owned(),
        message: "no key in the variable name".to_owned(),
    })?;
    for key in parents {
        let entry = node
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        node = entry.as_table_mut().ok_or_else(|| ConfigError::Parse {
            origin: var.to_owned(),
            message: format!("`{key}` is not a section"),
        })?;
    }
    node.insert(last.clone(), value);
    Ok(())
}

fn parse_env_value(raw: &str) -> toml::Value {
    let probe = format!("v = {raw}");
    match probe.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_owned())),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn env_from(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn load_str(toml_text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!("router-config-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).map_err(|source| ConfigError::Read {
            path: dir.display().to_string(),
            source,
        })?;
        let path = dir.join("router.toml");
        std::fs::write(&path, toml_text).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let result = Config::load(Some(&path), env_from(env));
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    #[test]
    fn defaults_are_valid_and_use_us_profiles() {
        let config = Config::load(None, env_from(&[])).expect("defaults valid");
        assert_eq!(config.geography(), Some(Geography::Us));
        assert_eq!(config.models.strong.max_output_tokens, 8192);
        assert_eq!(config.models.fast.max_output_tokens, 4096);
    }

    #[test]
    fn env_overrides_file() {
        let config = load_str(
            "[bedrock]\nregion = \"us-west-2\"\n",
            &[
                ("ROUTER__BEDROCK__ENDPOINT_URL", "http://127.0.0.1:8080"),
                ("ROUTER__ROUTING__THRESHOLD", "0.4"),
                ("ROUTER__SERVER__LISTEN", "127.0.0.1:7000"),
                ("UNRELATED", "x"),
            ],
        )
        .expect("valid");
        assert_eq!(config.bedrock.region, "us-west-2");
        assert_eq!(
            config.bedrock.endpoint_url.as_deref(),
            Some("http://127.0.0.1:8080")
        );
        assert_eq!(config.routing.threshold, Some(0.4));
        assert_eq!(
            config.server.listen,
            SocketAddr::from(([127, 0, 0, 1], 7000))
        );
    }

    #[test]
    fn eu_without_explicit_strong_model_is_a_clear_error() {
        let err = load_str("[bedrock]\nregion = \"eu-central-1\"\n", &[]).expect_err("must fail");
        let text = err.to_string();
        assert!(text.contains("models.strong.profile_geographies"), "{text}");
        assert!(text.contains("\"eu\""), "{text}");
    }

    #[test]
    fn eu_with_explicit_strong_model_is_accepted() {
        let config = load_str(
            "[bedrock]\nregion = \"eu-central-1\"\n[models.strong]\nid = \"anthropic.claude-3-7-sonnet-20250219-v1:0\"\nprofile_geographies = [\"eu\", \"us\"]\ninput_usd_per_mtok = 3.0\noutput_usd_per_mtok = 15.0\nmax_output_tokens = 8192\n",
            &[],
        )
        .expect("valid");
        assert_eq!(config.geography(), Some(Geography::Eu));
    }

    #[test]
    fn a_file_overrides_one_field_of_a_default_model() {
        let config = load_str("[models.fast]\ninput_usd_per_mtok = 0.3\n", &[]).expect("valid");
        assert_eq!(config.models.fast.input_usd_per_mtok, 0.3);
        assert_eq!(config.models.fast.id, ModelConfig::haiku_3().id);
        assert_eq!(config.models.fast.max_output_tokens, 4096);
    }

    #[test]
    fn fallback_regions_default_to_a_partner_in_the_geography() {
        let regions = |file: &str| load_str(file, &[]).expect("valid").regions();
        assert_eq!(regions(""), ["us-east-1", "us-west-2"]);
        assert_eq!(
            regions("[bedrock]\nregion = \"us-west-2\"\n"),
            ["us-west-2", "us-east-1"]
        );
        assert_eq!(
            regions("[bedrock]\nregion = \"ap-southeast-1\"\n"),
            ["ap-southeast-1", "ap-northeast-1"]
        );
        assert_eq!(regions("[bedrock]\nfallback_regions = []\n"), ["us-east-1"]);
        assert_eq!(
            regions("[bedrock]\nfallback_regions = [\"us-east-2\", \"us-west-2\"]\n"),
            ["us-east-1", "us-east-2", "us-west-2"]
        );
    }

    #[test]
    fn target_share_precedence_is_caller_then_default_then_routing() {
        let config = load_str(
            "[routing]\ntarget_strong_share = 0.5\n\
             [callers.batch]\ntarget_strong_share = 0.1\n\
             [callers.default]\ntarget_strong_share = 0.3\n\
             [callers.billing]\n",
            &[],
        )
        .expect("valid");
        assert_eq!(config.target_strong_share("batch"), Some(0.1));
        assert_eq!(config.target_strong_share("billing"), Some(0.3));
        assert_eq!(config.target_strong_share("anyone"), Some(0.3));
        let named: Vec<_> = config.named_callers().collect();
        assert_eq!(
            named,
            [
                ("batch".to_owned(), Some(0.1)),
                ("billing".to_owned(), Some(0.3))
            ]
        );
        let config =
            load_str("[routing]\ntarget_strong_share = 0.5\n[callers.x]\n", &[]).expect("valid");
        assert_eq!(config.target_strong_share("x"), Some(0.5));
        assert_eq!(config.target_strong_share("y"), Some(0.5));
        let fixed = load_str("[callers.x]\n", &[]).expect("valid");
        assert_eq!(fixed.target_strong_share("x"), None);
        assert_eq!(fixed.target_strong_share(DEFAULT_CALLER), None);
    }

    #[test]
    fn env_sets_a_callers_target_share() {
        let config = load_str(
            "[callers.batch]\ntarget_strong_share = 0.1\n",
            &[
                ("ROUTER__CALLERS__BATCH__TARGET_STRONG_SHARE", "0.25"),
                ("ROUTER__CALLERS__ETL__TARGET_STRONG_SHARE", "0.4"),
                ("ROUTER__ROUTING__SHARE_WINDOW", "500"),
            ],
        )
        .expect("valid");
        assert_eq!(config.target_strong_share("batch"), Some(0.25));
        assert_eq!(config.target_strong_share("etl"), Some(0.4));
        assert_eq!(config.routing.share_window, 500);
        assert_eq!(config.routing.share_warmup, 100);
    }

    #[test]
    fn share_errors_name_the_key_and_the_range() {
        let message =
            |file: &str, env: &[(&str, &str)]| load_str(file, env).expect_err(file).to_string();
        assert_eq!(
            message("[callers.batch]\ntarget_strong_share = 1.5\n", &[]),
            "config field `callers.batch.target_strong_share`: 1.5 is outside [0, 1]"
        );
        assert_eq!(
            message("", &[("ROUTER__CALLERS__ETL__TARGET_STRONG_SHARE", "-0.1")]),
            "config field `callers.etl.target_strong_share`: -0.1 is outside [0, 1]"
        );
        assert_eq!(
            message("[routing]\ntarget_strong_share = nan\n", &[]),
            "config field `routing.target_strong_share`: NaN is outside [0, 1]"
        );
        let unknown = message("[callers.batch]\ntarget_share = 0.3\n", &[]);
        assert!(
            unknown.contains("unknown field `target_share`"),
            "{unknown}"
        );
        let not_a_table = message("[callers]\nbatch = 0.3\n", &[]);
        assert!(not_a_table.contains("callers"), "{not_a_table}");
    }

    #[test]
    fn invalid_fields_are_named() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case<'_>] = &[
            ("[routing]\nthreshold = 1.5\n", &[], "routing.threshold"),
            (
                "[bedrock]\nregion = \"sa-east-1\"\n",
                &[],
                "bedrock.geography",
            ),
            (
                "",
                &[("ROUTER__BEDROCK__ENDPOINT_URL", "localhost:1")],
                "bedrock.endpoint_url",
            ),
            (
                "[models.fast]\ninput_usd_per_mtok = -1.0\nid = \"x\"\nprofile_geographies = [\"us\"]\n",
                &[],
                "models.fast.input_usd_per_mtok",
            ),
            ("[models.fast]\nid = \"\"\n", &[], "models.fast.id"),
            ("[server]\nlisten = \"nope\"\n", &[], "server.listen"),
            ("[bedrock]\nregoin = \"us-east-1\"\n", &[], "regoin"),
            (
                "[bedrock]\nfallback_regions = [\"eu-west-1\"]\n",
                &[],
                "bedrock.fallback_regions[0]",
            ),
            (
                "[bedrock]\nfallback_regions = [\"us-east-1\"]\n",
                &[],
                "bedrock.fallback_regions[0]",
            ),
            (
                "[resilience]\nmax_attempts = 0\n",
                &[],
                "resilience.max_attempts",
            ),
            (
                "[resilience]\nretry_budget_ratio = -1.0\n",
                &[],
                "resilience.retry_budget_ratio",
            ),
            (
                "[resilience]\nbackoff_base_ms = 5000\n",
                &[],
                "resilience.backoff_base_ms",
            ),
            (
                "[resilience]\nmax_ejected_percent = 101\n",
                &[],
                "resilience.max_ejected_percent",
            ),
            (
                "[server]\nmax_concurrency = 0\n",
                &[],
                "server.max_concurrency",
            ),
            (
                "[server]\nmax_route_concurrency = 0\n",
                &[],
                "server.max_route_concurrency",
            ),
            (
                "[server]\nidle_timeout_ms = 0\n",
                &[],
                "server.idle_timeout_ms",
            ),
            (
                "[server]\nhttp2_window_bytes = 1024\n",
                &[],
                "server.http2_window_bytes",
            ),
            (
                "[server]\nmax_inflight_request_bytes = 1024\n",
                &[],
                "server.max_inflight_request_bytes",
            ),
            ("[limits]\nmax_messages = 0\n", &[], "limits.max_messages"),
            (
                "[bedrock]\nstream_idle_timeout_ms = 0\n",
                &[],
                "bedrock.stream_idle_timeout_ms",
            ),
            (
                "[bedrock]\ngeography = \"apac\"\n",
                &[],
                "bedrock.geography",
            ),
            (
                "[routing]\nshare_window = 70000\n",
                &[],
                "routing.share_window",
            ),
            (
                "[routing]\nshare_window = 50\n",
                &[],
                "routing.share_warmup",
            ),
            ("[routing]\nshare_warmup = 0\n", &[], "routing.share_warmup"),
            (
                "[callers.\"\"]\ntarget_strong_share = 0.5\n",
                &[],
                "callers.",
            ),
            (
                "[callers.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa]\n",
                &[],
                "callers.aaaa",
            ),
        ];
        for (file, env, field) in cases {
            let err = load_str(file, env).expect_err(file);
            assert!(err.to_string().contains(field), "{file}: {err}");
        }
    }
}
