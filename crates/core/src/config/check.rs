//! Raw → checked: each section checks itself and goes on past a problem, so one run reports
//! every problem of the config, each with its key.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use super::{
    BedrockConfig, Config, LimitStoreConfig, MAX_DURATION_MS, Problem, QualityConfig,
    ResilienceConfig, RoutingConfig, ServerConfig, TlsConfig,
    raw::{
        ClientCert, Geography, RawAuth, RawBedrock, RawCaller, RawConfig, RawLimits, RawModel,
        RawModels, RawQuality, RawResilience, RawRouting, RawServer, RawTls,
    },
};
use crate::{
    caller::{Caller, CallerPolicy, Callers, OTHER_LABEL, TokenDigest},
    catalog::{Catalog, Model, Tier},
    cost::{Prices, price_from_usd_per_mtok},
    operating::{DEFAULT_CALLER, HORIZON, MAX_WINDOW, Settings},
    request::{Limits, MAX_CALLER_LEN},
};

/// The longest `limits.lease_ms`: a lease's unused headroom is stranded until it expires.
const MAX_LEASE_MS: u64 = 10_000;

/// The problems found so far.
#[derive(Debug, Default)]
struct Found(Vec<Problem>);

impl Found {
    fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            message: message.into(),
            origin: None,
        });
    }

    /// The one conversion of a `…_ms` setting into a `Duration`, at most [`MAX_DURATION_MS`].
    fn duration(&mut self, key: &str, ms: u64) -> Duration {
        if ms > MAX_DURATION_MS {
            self.add(
                key,
                format!("{ms} is above {MAX_DURATION_MS} (one day), the longest allowed"),
            );
        }
        Duration::from_millis(ms.min(MAX_DURATION_MS))
    }

    /// [`Self::duration`] for a setting that must be above 0.
    fn positive_duration(&mut self, key: &str, ms: u64) -> Duration {
        if ms == 0 {
            self.add(key, "must be above 0");
        }
        self.duration(key, ms)
    }

    fn at_least_one(&mut self, key: &str, value: usize) {
        if value == 0 {
            self.add(key, "must be at least 1");
        }
    }

    /// An optional share or threshold must lie in [0, 1] (NaN does not).
    fn unit_interval(&mut self, key: &str, value: Option<f64>) {
        if let Some(v) = value
            && !(0.0..=1.0).contains(&v)
        {
            self.add(key, format!("{v} is outside [0, 1]"));
        }
    }
}

/// Checks every section; the checked config, or every problem found.
pub(super) fn config(raw: RawConfig) -> Result<Config, Vec<Problem>> {
    let mut found = Found::default();
    let server = raw.server.check(&mut found);
    let bedrock = raw.bedrock.check(&mut found);
    let catalog = raw
        .models
        .check(bedrock.as_ref().map(|b| b.geography), &mut found);
    let callers = check_callers(
        &raw.callers,
        &raw.auth,
        server
            .tls
            .as_ref()
            .is_some_and(|tls| tls.client_ca_file.is_some()),
        &mut found,
    );
    let shares = raw
        .callers
        .into_iter()
        .map(|(name, caller)| (name, caller.target_strong_share))
        .collect();
    let routing = raw.routing.check(shares, &mut found);
    let resilience = raw.resilience.check(&mut found);
    let quality = raw.quality.check(&mut found);
    let (limits, limit_store) = raw.limits.check(&mut found);
    match (bedrock, catalog) {
        (Some(bedrock), Some(catalog)) if found.0.is_empty() => Ok(Config {
            server,
            bedrock,
            catalog,
            routing,
            resilience,
            quality,
            callers,
            limits,
            limit_store,
            telemetry: raw.telemetry,
            deprecations: Vec::new(),
        }),
        _ => Err(found.0),
    }
}

impl RawServer {
    fn check(self, found: &mut Found) -> ServerConfig {
        if self.max_request_bytes < 1024 {
            found.add("server.max_request_bytes", "must be at least 1024");
        }
        found.at_least_one("server.max_concurrency", self.max_concurrency);
        found.at_least_one("server.max_route_concurrency", self.max_route_concurrency);
        found.at_least_one("server.max_connections", self.max_connections);
        // RFC 9113, 6.9.2: a window is at least the default 65,535 and below 2^31.
        if !(65_535..=0x7fff_ffff).contains(&self.http2_window_bytes) {
            found.add(
                "server.http2_window_bytes",
                format!("{} is outside [65535, 2147483647]", self.http2_window_bytes),
            );
        }
        // Admission charges a request of text 4 bytes per byte (its TEXT_COST): below 4 times
        // the largest request, the largest ordinary one could never be let in.
        if self.max_inflight_request_bytes < 4 * self.max_request_bytes as u64 {
            found.add(
                "server.max_inflight_request_bytes",
                format!(
                    "{} is below 4 × server.max_request_bytes ({}): handling a request takes up to 4 times its size, so the largest could never be let in",
                    self.max_inflight_request_bytes, self.max_request_bytes
                ),
            );
        }
        let keepalive_interval =
            found.duration("server.keepalive_interval_ms", self.keepalive_interval_ms);
        let tls = self.tls.map(|tls| tls.check(found));
        ServerConfig {
            tls,
            reflection: self.reflection,
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            max_request_bytes: self.max_request_bytes,
            max_concurrency: self.max_concurrency,
            max_route_concurrency: self.max_route_concurrency,
            max_inflight_request_bytes: self.max_inflight_request_bytes,
            max_connections: self.max_connections,
            http2_window_bytes: self.http2_window_bytes,
            header_read_timeout: found
                .positive_duration("server.header_read_timeout_ms", self.header_read_timeout_ms),
            request_read_timeout: found.positive_duration(
                "server.request_read_timeout_ms",
                self.request_read_timeout_ms,
            ),
            idle_timeout: found.positive_duration("server.idle_timeout_ms", self.idle_timeout_ms),
            keepalive_interval: (!keepalive_interval.is_zero()).then_some(keepalive_interval),
            shutdown_delay: found.duration("server.shutdown_delay_ms", self.shutdown_delay_ms),
            drain_timeout: found.duration("server.drain_timeout_ms", self.drain_timeout_ms),
        }
    }
}

impl RawTls {
    fn check(self, found: &mut Found) -> TlsConfig {
        for (key, path) in [
            ("server.tls.cert_file", &self.cert_file),
            ("server.tls.key_file", &self.key_file),
        ] {
            if path.trim().is_empty() {
                found.add(key, "must name a PEM file");
            }
        }
        if self
            .client_ca_file
            .as_ref()
            .is_some_and(|path| path.trim().is_empty())
        {
            found.add("server.tls.client_ca_file", "must name a PEM file when set");
        }
        if self.client_cert == ClientCert::Optional && self.client_ca_file.is_none() {
            found.add(
                "server.tls.client_cert",
                "is optional, and server.tls.client_ca_file is unset, so no client certificate is asked for",
            );
        }
        let reload = found.duration("server.tls.reload_interval_ms", self.reload_interval_ms);
        TlsConfig {
            cert_file: PathBuf::from(self.cert_file),
            key_file: PathBuf::from(self.key_file),
            client_ca_file: self.client_ca_file.map(PathBuf::from),
            client_cert: self.client_cert,
            reload_interval: (!reload.is_zero()).then_some(reload),
        }
    }
}

impl RawBedrock {
    /// `None` when the geography cannot be told (a problem says so).
    fn check(self, found: &mut Found) -> Option<BedrockConfig> {
        if self.region.trim().is_empty() {
            found.add("bedrock.region", "must not be empty");
        }
        if let Some(url) = &self.endpoint_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            found.add(
                "bedrock.endpoint_url",
                format!("{url:?} is not an http:// or https:// URL"),
            );
        }
        let connect_timeout =
            found.positive_duration("bedrock.connect_timeout_ms", self.connect_timeout_ms);
        let default_deadline =
            found.positive_duration("bedrock.default_deadline_ms", self.default_deadline_ms);
        let stream_idle_timeout = found.positive_duration(
            "bedrock.stream_idle_timeout_ms",
            self.stream_idle_timeout_ms,
        );
        let own = Geography::of_region(&self.region);
        let Some(geography) = self.geography.or(own) else {
            found.add(
                "bedrock.geography",
                format!(
                    "cannot tell the inference-profile geography of region {:?}; set it to us, eu or apac",
                    self.region
                ),
            );
            return None;
        };
        if let Some(own) = own
            && own != geography
        {
            found.add(
                "bedrock.geography",
                format!(
                    "\"{geography}\" profiles cannot be called from region {:?}, which is in \"{own}\"",
                    self.region
                ),
            );
        }
        let fallback_regions = match self.fallback_regions {
            Some(list) => {
                for (i, region) in list.iter().enumerate() {
                    let key = format!("bedrock.fallback_regions[{i}]");
                    if Geography::of_region(region) != Some(geography) {
                        found.add(
                            key,
                            format!(
                                "{region:?} is not in geography \"{geography}\": inference profiles are called from regions of their own geography"
                            ),
                        );
                    } else if *region == self.region || list[..i].contains(region) {
                        found.add(key, format!("{region:?} is listed twice"));
                    }
                }
                list
            }
            None => {
                let pair: &[&str] = match geography {
                    Geography::Us => &["us-east-1", "us-west-2"],
                    Geography::Eu => &["eu-central-1", "eu-west-1"],
                    Geography::Apac => &["ap-northeast-1", "ap-southeast-1"],
                };
                pair.iter()
                    .find(|r| **r != self.region)
                    .map(|r| vec![(*r).to_owned()])
                    .unwrap_or_default()
            }
        };
        Some(BedrockConfig {
            region: self.region,
            fallback_regions,
            geography,
            endpoint_url: self.endpoint_url,
            connect_timeout,
            default_deadline,
            stream_idle_timeout,
        })
    }
}

impl RawModels {
    /// `None` when the geography is unknown (its problem is already reported).
    fn check(self, geography: Option<Geography>, found: &mut Found) -> Option<Catalog> {
        let strong = self
            .strong
            .check("models.strong", Tier::Strong, geography, found);
        let fast = self.fast.check("models.fast", Tier::Fast, geography, found);
        Some(Catalog::new(strong?, fast?))
    }
}

impl RawModel {
    fn check(
        self,
        key: &str,
        tier: Tier,
        geography: Option<Geography>,
        found: &mut Found,
    ) -> Option<Model> {
        if self.id.trim().is_empty() {
            found.add(format!("{key}.id"), "must not be empty");
        }
        let mut price = |name: &str, usd_per_mtok: f64| {
            price_from_usd_per_mtok(usd_per_mtok).unwrap_or_else(|message| {
                found.add(format!("{key}.{name}"), message);
                0
            })
        };
        let prices = Prices {
            input: price("input_usd_per_mtok", self.input_usd_per_mtok),
            output: price("output_usd_per_mtok", self.output_usd_per_mtok),
        };
        if self.max_output_tokens == 0 {
            found.add(format!("{key}.max_output_tokens"), "must be above 0");
        }
        let geography = geography?;
        if !self.on_demand && !self.profile_geographies.contains(&geography) {
            let offered: Vec<String> = self
                .profile_geographies
                .iter()
                .map(ToString::to_string)
                .collect();
            found.add(
                format!("{key}.profile_geographies"),
                format!(
                    "{} has no cross-region inference profile in geography \"{geography}\" (it has: {}). \
                     Use a region in one of those geographies, or set [{key}] explicitly to a model \
                     offered in \"{geography}\" (id and profile_geographies), or on_demand = true to call \
                     the base model id in-region",
                    self.id,
                    if offered.is_empty() {
                        "none".to_owned()
                    } else {
                        offered.join(", ")
                    },
                ),
            );
        }
        let invoke_id: Arc<str> = if self.on_demand {
            Arc::from(self.id)
        } else {
            Arc::from(format!("{}.{}", geography.prefix(), self.id))
        };
        Some(Model {
            tier,
            invoke_id,
            prices,
            max_output_tokens: self.max_output_tokens,
            images: self.images,
            tools: self.tools,
        })
    }
}

impl RawRouting {
    fn check(self, callers: BTreeMap<String, Option<f64>>, found: &mut Found) -> RoutingConfig {
        found.unit_interval("routing.threshold", self.threshold);
        found.unit_interval("routing.target_strong_share", self.target_strong_share);
        found.unit_interval("routing.target_quality", self.target_quality);
        let weights_poll = found.duration("routing.weights_poll_ms", self.weights_poll_ms);
        let (window, warmup) = (self.share_window, self.share_warmup);
        if !(1..=MAX_WINDOW).contains(&window) {
            found.add(
                "routing.share_window",
                format!("{window} is outside [1, {MAX_WINDOW}] (a window's counts are 16-bit)"),
            );
        }
        if !(1..=window).contains(&warmup) {
            found.add(
                "routing.share_warmup",
                format!("{warmup} is outside [1, routing.share_window = {window}]"),
            );
        }
        for (name, share) in &callers {
            found.unit_interval(&format!("callers.{name}.target_strong_share"), *share);
        }
        // The quality target moves target shares: with none to start from, it would do
        // nothing. (An out-of-range target is reported already.)
        let shares = self.target_strong_share.is_some() || callers.values().any(Option::is_some);
        if self
            .target_quality
            .is_some_and(|q| (0.0..=1.0).contains(&q))
            && !shares
        {
            found.add(
                "routing.target_quality",
                "steers target strong shares, and none is set: set routing.target_strong_share \
                 (or a caller's), the share used until quality.min_duels duels",
            );
        }
        RoutingConfig {
            threshold: self.threshold,
            weights_path: self.weights_path.map(PathBuf::from),
            share: Settings {
                window,
                warmup,
                horizon: HORIZON,
            },
            target_quality: self.target_quality,
            weights_poll: (!weights_poll.is_zero()).then_some(weights_poll),
            target_strong_share: self.target_strong_share,
            callers,
        }
    }
}

impl RawResilience {
    fn check(self, found: &mut Found) -> ResilienceConfig {
        if !(1..=10).contains(&self.max_attempts) {
            found.add("resilience.max_attempts", "must be 1 to 10");
        }
        if self.backoff_base_ms > self.backoff_max_ms {
            found.add(
                "resilience.backoff_base_ms",
                "must not exceed resilience.backoff_max_ms",
            );
        }
        for (key, value) in [
            ("resilience.retry_budget_ratio", self.retry_budget_ratio),
            (
                "resilience.retry_budget_min_per_sec",
                self.retry_budget_min_per_sec,
            ),
        ] {
            if !value.is_finite() || value < 0.0 {
                found.add(key, format!("{value} must be 0 or more"));
            }
        }
        if self.breaker_failures == 0 {
            found.add("resilience.breaker_failures", "must be at least 1");
        }
        if self.max_ejected_percent > 100 {
            found.add(
                "resilience.max_ejected_percent",
                format!("{} is above 100", self.max_ejected_percent),
            );
        }
        ResilienceConfig {
            max_attempts: self.max_attempts,
            backoff_base: found.duration("resilience.backoff_base_ms", self.backoff_base_ms),
            backoff_max: found.duration("resilience.backoff_max_ms", self.backoff_max_ms),
            retry_budget_ratio: self.retry_budget_ratio,
            retry_budget_min_per_sec: self.retry_budget_min_per_sec,
            degrade_to_fast: self.degrade_to_fast,
            escalate_to_strong: self.escalate_to_strong,
            breaker_failures: self.breaker_failures,
            breaker_cooldown: found
                .duration("resilience.breaker_cooldown_ms", self.breaker_cooldown_ms),
            max_ejected_percent: self.max_ejected_percent,
        }
    }
}

impl RawQuality {
    fn check(self, found: &mut Found) -> QualityConfig {
        found.unit_interval("quality.duel_rate", Some(self.duel_rate));
        found.unit_interval("quality.recovered_floor", self.recovered_floor);
        if !self.usd_per_hour.is_finite() || self.usd_per_hour < 0.0 {
            found.add(
                "quality.usd_per_hour",
                format!("{} must be 0 or more", self.usd_per_hour),
            );
        }
        if let Some(model) = &self.judge_model
            && model.trim().is_empty()
        {
            found.add("quality.judge_model", "must not be empty when set");
        }
        found.at_least_one("quality.duel_concurrency", self.duel_concurrency);
        found.at_least_one("quality.feedback_capacity", self.feedback_capacity);
        found.at_least_one("quality.window", self.window);
        if !(1..=self.window).contains(&self.min_duels) {
            found.add(
                "quality.min_duels",
                format!(
                    "{} is outside [1, quality.window = {}]",
                    self.min_duels, self.window
                ),
            );
        }
        let store = self.store.and_then(|s| {
            s.parse()
                .map_err(|message: String| found.add("quality.store", message))
                .ok()
        });
        QualityConfig {
            duel_rate: self.duel_rate,
            judge_model: self.judge_model,
            usd_per_hour: self.usd_per_hour,
            duel_concurrency: self.duel_concurrency,
            store,
            store_prompts: self.store_prompts,
            feedback_capacity: self.feedback_capacity,
            feedback_ttl: found.positive_duration("quality.feedback_ttl_ms", self.feedback_ttl_ms),
            window: self.window,
            min_duels: self.min_duels,
            recovered_floor: self.recovered_floor,
        }
    }
}

impl RawLimits {
    fn check(self, found: &mut Found) -> (Limits, LimitStoreConfig) {
        found.at_least_one("limits.max_messages", self.max_messages);
        if let Some(url) = &self.redis_url
            && !url.starts_with("redis://")
        {
            // The client is built without TLS, as for quality.store.
            found.add(
                "limits.redis_url",
                "must be a redis:// URL (rediss:// is not supported: the Redis client is built without TLS)",
            );
        }
        let timeout = found.positive_duration("limits.redis_timeout_ms", self.redis_timeout_ms);
        if self.lease_ms > MAX_LEASE_MS {
            // Headroom stranded in an idle replica's lease goes back only when it expires.
            found.add(
                "limits.lease_ms",
                format!(
                    "{} is above {MAX_LEASE_MS}, the longest lease allowed",
                    self.lease_ms
                ),
            );
        }
        let lease = Duration::from_millis(self.lease_ms.min(MAX_LEASE_MS));
        (
            Limits {
                max_messages: self.max_messages,
                max_images: self.max_images,
                max_image_bytes: self.max_image_bytes,
                max_tools: self.max_tools,
            },
            LimitStoreConfig {
                redis_url: self.redis_url,
                timeout,
                lease,
            },
        )
    }
}

/// Builds every caller's policy and the credentials that identify callers; reads the
/// `token_sha256_file`s.
fn check_callers(
    raw: &BTreeMap<String, RawCaller>,
    auth: &RawAuth,
    client_certs: bool,
    found: &mut Found,
) -> Callers {
    let builtin = RawCaller::default();
    let default = raw.get(DEFAULT_CALLER).unwrap_or(&builtin);
    let mut tokens = BTreeMap::new();
    let mut sans = BTreeMap::<String, Arc<str>>::new();
    let mut named = BTreeMap::new();
    let default_policy = policy("callers.default", default, &builtin, found);
    for (name, caller) in raw {
        // The names callers send: the same rules as the request's `routing.caller`.
        let key = format!("callers.{name}");
        if name.is_empty() || name.chars().count() > MAX_CALLER_LEN {
            found.add(
                &key,
                format!("a caller name has 1 to {MAX_CALLER_LEN} characters"),
            );
        }
        if name.chars().any(char::is_control) {
            found.add(&key, "a caller name has no control characters");
        }
        if name == OTHER_LABEL {
            found.add(
                &key,
                format!("\"{OTHER_LABEL}\" is the metric label of every caller not named, so it cannot name one"),
            );
        }
        let digest = token_digest(&key, caller, found);
        if name == DEFAULT_CALLER {
            if digest.is_some() || caller.san.is_some() {
                found.add(
                    &key,
                    "the default policy is everyone's not named, so it has no token or SAN",
                );
            }
            continue;
        }
        let shared: Arc<str> = Arc::from(name.as_str());
        if let Some(digest) = digest
            && let Some(other) = tokens.insert(digest, Arc::clone(&shared))
        {
            found.add(
                format!("{key}.token_sha256"),
                format!("the same token identifies callers.{other}"),
            );
        }
        if let Some(san) = &caller.san {
            if san.trim().is_empty() {
                found.add(format!("{key}.san"), "must not be empty when set");
            }
            if !client_certs {
                found.add(
                    format!("{key}.san"),
                    "identifies callers by client certificate, and server.tls.client_ca_file is unset, so none is asked for",
                );
            }
            if let Some(other) = sans.insert(san.clone(), Arc::clone(&shared)) {
                found.add(
                    format!("{key}.san"),
                    format!("{san:?} already identifies callers.{other}"),
                );
            }
        }
        named.insert(
            name.clone(),
            Caller {
                name: shared,
                policy: policy(&key, caller, default, found),
                has_credentials: digest.is_some() || caller.san.is_some(),
                key,
            },
        );
    }
    if auth.required && tokens.is_empty() && sans.is_empty() {
        found.add(
            "auth.required",
            "no caller has a token_sha256, token_sha256_file or san, so every request would be refused",
        );
    }
    Callers::new(auth.required, named, default_policy, tokens, sans)
}

/// A caller's token digest, from `token_sha256` or the file `token_sha256_file` names. The
/// value is never repeated in a message: it identifies a secret.
fn token_digest(key: &str, caller: &RawCaller, found: &mut Found) -> Option<TokenDigest> {
    let (field, text) = match (&caller.token_sha256, &caller.token_sha256_file) {
        (None, None) => return None,
        (Some(_), Some(_)) => {
            found.add(
                format!("{key}.token_sha256_file"),
                "set token_sha256 or token_sha256_file, not both",
            );
            return None;
        }
        (Some(hex), None) => ("token_sha256", hex.clone()),
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(text) => ("token_sha256_file", text),
            Err(error) => {
                found.add(
                    format!("{key}.token_sha256_file"),
                    format!("cannot read {path}: {error}"),
                );
                return None;
            }
        },
    };
    let digest = TokenDigest::from_hex(&text);
    if digest.is_none() {
        found.add(
            format!("{key}.{field}"),
            "is not a SHA-256 in hex (64 hex digits), e.g. the output of `printf %s TOKEN | sha256sum`",
        );
    }
    digest
}

/// `caller`'s policy, with `default`'s value (then the built-in one) for each key it leaves
/// unset; `key` is its table, for messages.
fn policy(key: &str, caller: &RawCaller, default: &RawCaller, found: &mut Found) -> CallerPolicy {
    let builtin = CallerPolicy::default();
    let max_quality_bias = caller
        .max_quality_bias
        .or(default.max_quality_bias)
        .unwrap_or(builtin.max_quality_bias);
    if !(-1.0..=1.0).contains(&max_quality_bias) {
        found.add(
            format!("{key}.max_quality_bias"),
            format!("{max_quality_bias} is outside [-1, 1]"),
        );
    }
    let requests_per_second = caller.requests_per_second.or(default.requests_per_second);
    if let Some(rate) = requests_per_second
        && !(rate.is_finite() && rate > 0.0)
    {
        found.add(
            format!("{key}.requests_per_second"),
            format!("{rate} is not a positive number"),
        );
    }
    let burst = caller.burst.or(default.burst).unwrap_or_else(|| {
        requests_per_second.map_or(builtin.burst, |rate| rate.ceil().clamp(1.0, 1e6) as u32)
    });
    found.at_least_one(&format!("{key}.burst"), burst as usize);
    let tokens_per_minute = caller.tokens_per_minute.or(default.tokens_per_minute);
    if tokens_per_minute == Some(0) {
        found.add(format!("{key}.tokens_per_minute"), "must be above 0");
    }
    let max_output_tokens = caller.max_output_tokens.or(default.max_output_tokens);
    if max_output_tokens == Some(0) {
        found.add(format!("{key}.max_output_tokens"), "must be above 0");
    }
    let usd_per_day = caller.usd_per_day.or(default.usd_per_day);
    let usd_per_month = caller.usd_per_month.or(default.usd_per_month);
    for (field, budget) in [
        ("usd_per_day", usd_per_day),
        ("usd_per_month", usd_per_month),
    ] {
        if let Some(usd) = budget
            && !(usd.is_finite() && usd > 0.0)
        {
            found.add(
                format!("{key}.{field}"),
                format!("{usd} is not a positive number"),
            );
        }
    }
    let degrade_at = caller
        .degrade_at
        .or(default.degrade_at)
        .unwrap_or(builtin.degrade_at);
    found.unit_interval(&format!("{key}.degrade_at"), Some(degrade_at));
    CallerPolicy {
        allow_force: caller
            .allow_force
            .or(default.allow_force)
            .unwrap_or(builtin.allow_force),
        max_quality_bias,
        max_output_tokens,
        requests_per_second,
        burst,
        tokens_per_minute,
        usd_per_day,
        usd_per_month,
        degrade_at,
        on_store_down: caller
            .on_store_down
            .or(default.on_store_down)
            .unwrap_or(builtin.on_store_down),
    }
}
