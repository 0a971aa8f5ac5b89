//! Configuration in two layers. [`raw`] is what a file and `ROUTER__SECTION__KEY` variables
//! say, as serde reads it; [`Config`] is the checked form, built once by `TryFrom` (or by
//! [`Config::load`], which layers defaults, a TOML file, the environment and command-line
//! flags first): every section checked, every problem reported at once with its key, the
//! catalog, the source regions and every `Duration` built here and nowhere else. Everything
//! past start-up takes a [`Config`], so nothing downstream checks again.
//!
//! Plain data and one file read: nothing async, nothing of tonic, aws or metrics, so the
//! checked config belongs to the core with the types it builds (catalog, limits, operating
//! point settings). Secrets never live here: Bedrock credentials come from the AWS default
//! credential chain.

mod check;
mod load;
pub mod raw;
#[cfg(test)]
mod tests;

use std::{collections::BTreeMap, fmt, net::SocketAddr, path::PathBuf, time::Duration};

pub use self::{
    load::{ENV_PREFIX, Overrides},
    raw::{ClientCert, Geography, LogFormat, RawConfig, TelemetryConfig},
};
use crate::{
    caller::Callers,
    catalog::Catalog,
    operating::{DEFAULT_CALLER, Settings},
    request::Limits,
};

/// The longest any `…_ms` setting may be: one day. Deadlines and timers are `Instant`s plus
/// these, which must not overflow on any platform's clock.
pub const MAX_DURATION_MS: u64 = 24 * 60 * 60 * 1000;

/// The checked configuration of the router.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listening addresses, request and connection bounds.
    pub server: ServerConfig,
    /// Where and how Bedrock is called.
    pub bedrock: BedrockConfig,
    /// The two model tiers as the router calls them (`models.*`).
    pub catalog: Catalog,
    /// Classifier, threshold and each caller's operating point (`routing.*`, `callers.*`).
    pub routing: RoutingConfig,
    /// Retries, fallbacks and outlier ejection.
    pub resilience: ResilienceConfig,
    /// Duels, feedback, labels and the online quality estimate (`quality.*`).
    pub quality: QualityConfig,
    /// Who callers are, how they are recognised, and each one's policy (`callers.*`, `auth.*`).
    pub callers: Callers,
    /// Per-request size limits.
    pub limits: Limits,
    /// Where callers' rate limits and spend are kept (`limits.redis_url`).
    pub limit_store: LimitStoreConfig,
    /// Logs.
    pub telemetry: TelemetryConfig,
    deprecations: Vec<String>,
}

/// Listening addresses, request and connection bounds (`server.*`).
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Prometheus `/metrics` listen address.
    pub metrics_listen: SocketAddr,
    /// Largest accepted gRPC request message, in bytes.
    pub max_request_bytes: usize,
    /// Converse and ConverseStream calls handled at once.
    pub max_concurrency: usize,
    /// `Route` calls handled at once.
    pub max_route_concurrency: usize,
    /// Memory set aside for the requests in flight, in bytes.
    pub max_inflight_request_bytes: u64,
    /// gRPC connections open at once.
    pub max_connections: usize,
    /// HTTP/2 receive window of a connection and of each call, in bytes.
    pub http2_window_bytes: u32,
    /// Time to send a connection's preface, or a `/metrics` request's head.
    pub header_read_timeout: Duration,
    /// Time a request message gets to arrive in full.
    pub request_read_timeout: Duration,
    /// A connection with no call open this long is closed.
    pub idle_timeout: Duration,
    /// Silence after which a connection is pinged; `None`: no pings.
    pub keepalive_interval: Option<Duration>,
    /// On SIGTERM, time to keep serving while health reports NOT_SERVING.
    pub shutdown_delay: Duration,
    /// On SIGTERM, time in-flight requests get to finish.
    pub drain_timeout: Duration,
    /// TLS on the gRPC port; `None`: plaintext.
    pub tls: Option<TlsConfig>,
    /// Whether the gRPC port serves reflection.
    pub reflection: bool,
}

/// TLS on the gRPC port (`server.tls.*`).
#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    /// The certificate chain, PEM.
    pub cert_file: PathBuf,
    /// The private key, PEM.
    pub key_file: PathBuf,
    /// CA bundle that client certificates must chain to; `None`: no client certificates.
    pub client_ca_file: Option<PathBuf>,
    /// Whether a client must present a certificate (with `client_ca_file`).
    pub client_cert: ClientCert,
    /// How often the files are checked for a change; `None`: only on SIGHUP.
    pub reload_interval: Option<Duration>,
}

/// Where callers' rate limits and spend are kept (`limits.redis_url`, `limits.redis_timeout_ms`,
/// `limits.lease_ms`).
#[derive(Clone, PartialEq)]
pub struct LimitStoreConfig {
    /// Redis shared by every replica; `None`: in this process.
    pub redis_url: Option<String>,
    /// Longest a check waits on Redis before the store counts as unreachable.
    pub timeout: Duration,
    /// Lifetime of a caller's lease from Redis; zero: no leases, every request asks Redis.
    pub lease: Duration,
}

/// Where and how Bedrock is called (`bedrock.*`).
#[derive(Debug, Clone, PartialEq)]
pub struct BedrockConfig {
    /// The source region called first.
    pub region: String,
    /// The further source regions, in order: `bedrock.fallback_regions`, or the geography's
    /// partner region when that is unset.
    pub fallback_regions: Vec<String>,
    /// The geography whose inference profiles are called.
    pub geography: Geography,
    /// Any Bedrock-compatible endpoint; AWS's own when `None`.
    pub endpoint_url: Option<String>,
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// The deadline of a request whose caller sets none.
    pub default_deadline: Duration,
    /// Longest silence between two events of a streamed answer.
    pub stream_idle_timeout: Duration,
}

impl BedrockConfig {
    /// Every source region to call, the configured one first.
    pub fn regions(&self) -> Vec<String> {
        std::iter::once(&self.region)
            .chain(&self.fallback_regions)
            .cloned()
            .collect()
    }
}

/// Classifier, threshold and each caller's operating point (`routing.*`, `callers.*`).
#[derive(Debug, Clone, PartialEq)]
pub struct RoutingConfig {
    /// The fixed threshold; the weights file's when `None`.
    pub threshold: Option<f64>,
    /// A weights file written by `train`; the built-in weights when `None`.
    pub weights_path: Option<PathBuf>,
    /// The target-share windows' settings.
    pub share: Settings,
    /// Share of the quality gap to recover (`routing.target_quality`); `None`: no target.
    pub target_quality: Option<f64>,
    /// How often the weights file is checked for a change; `None`: only on SIGHUP.
    pub weights_poll: Option<Duration>,
    target_strong_share: Option<f64>,
    callers: BTreeMap<String, Option<f64>>,
}

impl RoutingConfig {
    /// The target strong share of `caller`: its own `[callers.NAME]`, then `[callers.default]`,
    /// then `routing.target_strong_share`; `None` means the fixed threshold.
    pub fn target_strong_share(&self, caller: &str) -> Option<f64> {
        let own = |name: &str| self.callers.get(name).copied().flatten();
        own(caller)
            .or_else(|| own(DEFAULT_CALLER))
            .or(self.target_strong_share)
    }

    /// The callers `[callers.NAME]` lists (`default` excepted), each with its target share.
    pub fn named_callers(&self) -> impl Iterator<Item = (String, Option<f64>)> + '_ {
        self.callers
            .keys()
            .filter(|name| *name != DEFAULT_CALLER)
            .map(|name| (name.clone(), self.target_strong_share(name)))
    }
}

/// Retries, fallbacks and outlier ejection (`resilience.*`).
#[derive(Debug, Clone, PartialEq)]
pub struct ResilienceConfig {
    /// Most upstream attempts per request, over all targets.
    pub max_attempts: u32,
    /// First retry's backoff ceiling.
    pub backoff_base: Duration,
    /// Largest backoff.
    pub backoff_max: Duration,
    /// Retries allowed per first attempt, averaged over time.
    pub retry_budget_ratio: f64,
    /// Retries always allowed per second.
    pub retry_budget_min_per_sec: f64,
    /// A strong request may be answered by the fast model when every strong target fails.
    pub degrade_to_fast: bool,
    /// A fast request may be answered by the strong model when every fast target fails.
    pub escalate_to_strong: bool,
    /// Consecutive failures that eject a target.
    pub breaker_failures: u32,
    /// How long an ejected target stays out before a probe.
    pub breaker_cooldown: Duration,
    /// Most of a model's targets, in percent rounded down, ejected at once (0 to 100).
    pub max_ejected_percent: u32,
}

/// Duels, feedback, labels and the online quality estimate (`quality.*`).
#[derive(Debug, Clone, PartialEq)]
pub struct QualityConfig {
    /// Share of answered requests that get a duel (0: none).
    pub duel_rate: f64,
    /// The model id the judge calls, as invoked; `None`: the strong model's.
    pub judge_model: Option<String>,
    /// Most USD per hour duels may spend.
    pub usd_per_hour: f64,
    /// Duels running at once.
    pub duel_concurrency: usize,
    /// Where label rows go; `None`: not stored.
    pub store: Option<StoreLocation>,
    /// Store each label's prompt text.
    pub store_prompts: bool,
    /// Recent requests kept for feedback.
    pub feedback_capacity: usize,
    /// How long a request can be given feedback.
    pub feedback_ttl: Duration,
    /// Recent duels the estimate is computed from.
    pub window: usize,
    /// Duels before the estimate acts.
    pub min_duels: usize,
    /// The recovered share below which the quality alert fires.
    pub recovered_floor: Option<f64>,
}

/// Where label rows are stored: `quality.store`, and `train --labels`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A directory of rotated JSON-lines files (`file:PATH`).
    File(PathBuf),
    /// A Redis server's stream (`redis://…`, kept as written).
    Redis(String),
}

impl std::str::FromStr for StoreLocation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("file:") {
            if path.is_empty() {
                return Err(
                    "file: needs a directory path, e.g. file:/var/lib/prompt-router/labels"
                        .to_owned(),
                );
            }
            Ok(Self::File(PathBuf::from(path)))
        } else if s.starts_with("redis://") {
            Ok(Self::Redis(s.to_owned()))
        } else if s.starts_with("rediss://") {
            Err("rediss:// (Redis over TLS) is not built into this router's Redis client; use redis:// on a private network or a TLS sidecar".to_owned())
        } else {
            Err(format!("{s:?} is neither file:PATH nor a redis:// URL"))
        }
    }
}

impl fmt::Display for StoreLocation {
    /// As written, but a Redis URL's password is hidden: this goes to logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "file:{}", path.display()),
            Self::Redis(url) => write_url(f, url),
        }
    }
}

/// Writes `url` with its password (if any) hidden.
fn write_url(f: &mut fmt::Formatter<'_>, url: &str) -> fmt::Result {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            write!(f, "{}://***{}", &url[..scheme], &url[at..])
        }
        _ => f.write_str(url),
    }
}

impl fmt::Debug for LimitStoreConfig {
    /// The URL's password hidden, as in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Url<'a>(&'a str);
        impl fmt::Debug for Url<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_url(f, self.0)
            }
        }
        f.debug_struct("LimitStoreConfig")
            .field("redis_url", &self.redis_url.as_deref().map(Url))
            .field("timeout", &self.timeout)
            .field("lease", &self.lease)
            .finish()
    }
}

impl Config {
    /// What was set under a deprecated name, one line each, to be logged once at start.
    pub fn deprecations(&self) -> &[String] {
        &self.deprecations
    }
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, ConfigError> {
        check::config(raw).map_err(ConfigError::Invalid)
    }
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
    /// The file, a variable or a flag is not valid TOML of the right shape.
    #[error("{origin}: {message}")]
    Parse {
        /// The file, the environment variable or the flag.
        origin: String,
        /// What is wrong, with the field's path.
        message: String,
    },
    /// Fields have values the router cannot run with: all of them, each with its key.
    #[error("{}", Problems(.0))]
    Invalid(Vec<Problem>),
}

/// A field whose value the router cannot run with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The field's dotted path, e.g. `callers.batch.target_strong_share`.
    pub key: String,
    /// What is wrong and what to do.
    pub message: String,
    /// What set the value when it was not the file: `set by ROUTER__…`, `set by --flag`.
    pub origin: Option<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config field `{}`", self.key)?;
        if let Some(origin) = &self.origin {
            write!(f, " ({origin})")?;
        }
        write!(f, ": {}", self.message)
    }
}

struct Problems<'a>(&'a [Problem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            [one] => write!(f, "{one}"),
            many => {
                write!(f, "{} config fields are invalid:", many.len())?;
                many.iter().try_for_each(|p| write!(f, "\n  {p}"))
            }
        }
    }
}
