//! Who a request is from, and what that caller may do: the callers `[callers.NAME]` names,
//! how each is recognised (a bearer token's SHA-256, a client-certificate SAN), and its policy
//! (which routing modes it may use, its rate limits and spend budgets).
//!
//! Pure: the service hashes the token and reads the certificate, then asks [`Callers`] who
//! that is ([`Callers::by_token_sha256`], [`Callers::by_san`]) and which caller and policy a
//! request gets ([`Callers::resolve`]); [`CallerPolicy::permit`] says whether the request's
//! routing options are allowed. Limits and budgets are enforced in the service, against the
//! numbers kept here.

use std::{collections::BTreeMap, fmt, sync::Arc};

use crate::{policy::RoutingMode, request::ChatRequest};

/// The metric label of every caller that `[callers.NAME]` does not name, so a label's values
/// are bounded by the config whatever names requests declare.
pub const OTHER_LABEL: &str = "other";

/// What happens to a caller's limits and budgets while the shared store is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreDown {
    /// Keep serving, enforcing the limits from this process's own counts.
    #[default]
    Open,
    /// Refuse the caller's requests with UNAVAILABLE until the store is back.
    Closed,
}

impl StoreDown {
    /// The metric-label and config form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closed => "closed",
        }
    }
}

/// One caller's policy, `[callers.NAME]` with `[callers.default]`'s values for what it leaves
/// unset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CallerPolicy {
    /// May the caller use `ROUTING_MODE_FORCE_STRONG`. (Forcing the fast tier is always allowed.)
    pub allow_force: bool,
    /// Largest `quality_bias` the caller may send; a larger one is refused.
    pub max_quality_bias: f64,
    /// Most output tokens (`inference_config.max_tokens`) the caller may ask for; `None`: any
    /// the models give.
    pub max_output_tokens: Option<u32>,
    /// Requests per second, on average; `None`: no limit.
    pub requests_per_second: Option<f64>,
    /// Requests that may come at once above the rate (the bucket's size).
    pub burst: u32,
    /// Tokens (input and output) per minute, on average; `None`: no limit.
    pub tokens_per_minute: Option<u64>,
    /// Spend per UTC day, in USD; `None`: no budget.
    pub usd_per_day: Option<f64>,
    /// Spend per UTC calendar month, in USD; `None`: no budget.
    pub usd_per_month: Option<f64>,
    /// Share (0–1) of a budget spent after which requests that would go to the strong tier go
    /// to the fast one instead.
    pub degrade_at: f64,
    /// What happens while the shared limit store is unreachable.
    pub on_store_down: StoreDown,
}

impl Default for CallerPolicy {
    fn default() -> Self {
        Self {
            allow_force: true,
            max_quality_bias: 1.0,
            max_output_tokens: None,
            requests_per_second: None,
            burst: 1,
            tokens_per_minute: None,
            usd_per_day: None,
            usd_per_month: None,
            degrade_at: 0.9,
            on_store_down: StoreDown::Open,
        }
    }
}

/// A request's routing options that its caller's policy does not allow: the rule (its config
/// key) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({rule})")]
pub struct Forbidden {
    /// The config key of the rule, e.g. `callers.batch.allow_force`.
    pub rule: String,
    /// What the request asked for that the rule does not allow.
    pub message: String,
}

impl CallerPolicy {
    /// Whether `request`'s routing options and output length are allowed; `key` is the
    /// policy's config table (`callers.NAME` or `callers.default`), for the refusal.
    pub fn permit(&self, key: &str, request: &ChatRequest) -> Result<(), Forbidden> {
        if request.routing.mode == RoutingMode::ForceStrong && !self.allow_force {
            return Err(Forbidden {
                rule: format!("{key}.allow_force"),
                message: "routing.mode FORCE_STRONG is not allowed for this caller".to_owned(),
            });
        }
        if request.routing.quality_bias > self.max_quality_bias {
            return Err(Forbidden {
                rule: format!("{key}.max_quality_bias"),
                message: format!(
                    "routing.quality_bias {} is above this caller's {}",
                    request.routing.quality_bias, self.max_quality_bias
                ),
            });
        }
        if let (Some(limit), Some(asked)) = (self.max_output_tokens, request.inference.max_tokens)
            && asked > limit
        {
            return Err(Forbidden {
                rule: format!("{key}.max_output_tokens"),
                message: format!(
                    "inference_config.max_tokens {asked} is above this caller's {limit}"
                ),
            });
        }
        Ok(())
    }
}

/// A SHA-256 digest of a bearer token, as `token_sha256` gives it. Never printed: a digest of
/// a short token is as good as the token to whoever can search for it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenDigest(pub [u8; 32]);

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenDigest(…)")
    }
}

impl TokenDigest {
    /// Reads 64 hex digits (either case, surrounding whitespace ignored, as a secret file
    /// often ends in a newline).
    pub fn from_hex(text: &str) -> Option<Self> {
        let text = text.trim().as_bytes();
        if text.len() != 64 {
            return None;
        }
        let mut digest = [0; 32];
        for (byte, pair) in digest.iter_mut().zip(text.chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).ok()?;
            *byte = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(Self(digest))
    }
}

/// One configured caller.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    /// Its name, as `[callers.NAME]` gives it.
    pub name: Arc<str>,
    /// Its config table, `callers.NAME`, which refusals name.
    pub key: String,
    /// Its policy.
    pub policy: CallerPolicy,
    /// Whether it has credentials (a token or a SAN): then only those identify it, and a
    /// request that merely declares its name is refused.
    pub has_credentials: bool,
}

/// Why a request gets no caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No credentials where they are needed (UNAUTHENTICATED).
    #[error("{0}")]
    Unauthenticated(String),
    /// Credentials for one caller, a declared name of another (PERMISSION_DENIED).
    #[error(transparent)]
    Forbidden(Forbidden),
}

/// The caller a request is attributed to: the authenticated one, else the declared one.
#[derive(Debug, Clone, Copy)]
pub struct Resolved<'a> {
    /// Its metric label: a configured name, else [`OTHER_LABEL`].
    pub label: &'a Arc<str>,
    /// The config table its policy comes from (`callers.NAME` or `callers.default`).
    pub key: &'a str,
    /// Its policy.
    pub policy: &'a CallerPolicy,
    /// Whether credentials identified it.
    pub authenticated: bool,
}

/// Every configured caller, how each is recognised, and the default policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Callers {
    /// `auth.required`: a request without valid credentials is refused.
    pub required: bool,
    named: BTreeMap<String, Caller>,
    default: CallerPolicy,
    default_key: String,
    other_label: Arc<str>,
    tokens: BTreeMap<TokenDigest, Arc<str>>,
    sans: BTreeMap<String, Arc<str>>,
}

impl Default for Callers {
    fn default() -> Self {
        Self::new(
            false,
            BTreeMap::new(),
            CallerPolicy::default(),
            BTreeMap::new(),
            BTreeMap::new(),
        )
    }
}

impl Callers {
    /// The callers config names, the default policy, and the credentials that identify them
    /// (each digest and SAN once: the config check refuses a second).
    pub fn new(
        required: bool,
        named: BTreeMap<String, Caller>,
        default: CallerPolicy,
        tokens: BTreeMap<TokenDigest, Arc<str>>,
        sans: BTreeMap<String, Arc<str>>,
    ) -> Self {
        Self {
            required,
            named,
            default,
            default_key: "callers.default".to_owned(),
            other_label: Arc::from(OTHER_LABEL),
            tokens,
            sans,
        }
    }

    /// The caller whose `token_sha256` is `digest`.
    pub fn by_token_sha256(&self, digest: &TokenDigest) -> Option<&Arc<str>> {
        self.tokens.get(digest)
    }

    /// The caller whose `san` is `san`.
    pub fn by_san(&self, san: &str) -> Option<&Arc<str>> {
        self.sans.get(san)
    }

    /// Whether any caller is identified by a client certificate.
    pub fn any_san(&self) -> bool {
        !self.sans.is_empty()
    }

    /// Whether any credentials are configured at all.
    pub fn any_credentials(&self) -> bool {
        !self.tokens.is_empty() || !self.sans.is_empty()
    }

    /// The configured callers, by name.
    pub fn named(&self) -> impl Iterator<Item = &Caller> {
        self.named.values()
    }

    /// Every value the `caller` metric label takes: the configured names and [`OTHER_LABEL`].
    pub fn labels(&self) -> impl Iterator<Item = &Arc<str>> + Clone {
        self.named
            .values()
            .map(|caller| &caller.name)
            .chain(std::iter::once(&self.other_label))
    }

    /// The policy of callers config does not name.
    pub fn default_policy(&self) -> &CallerPolicy {
        &self.default
    }

    /// The caller of a request that credentials identified as `authenticated` (if any) and
    /// that declares `declared` in `routing.caller` (empty: none).
    ///
    /// - Identified: the declared name must be empty or the same.
    /// - Not identified: refused when `auth.required`, or when the declared caller has
    ///   credentials; otherwise the declared caller's policy (the default for one config
    ///   does not name).
    pub fn resolve(
        &self,
        authenticated: Option<&str>,
        declared: &str,
    ) -> Result<Resolved<'_>, Refusal> {
        if let Some(name) = authenticated {
            if !declared.is_empty() && declared != name {
                return Err(Refusal::Forbidden(Forbidden {
                    rule: "routing.caller".to_owned(),
                    message: format!(
                        "routing.caller {declared:?} is not the authenticated caller {name:?}"
                    ),
                }));
            }
            return Ok(self.resolved(name, true));
        }
        if self.required {
            return Err(Refusal::Unauthenticated(
                "this router requires credentials: a bearer token in `authorization` or a \
                 client certificate (auth.required)"
                    .to_owned(),
            ));
        }
        if let Some(caller) = self.named.get(declared)
            && caller.has_credentials
        {
            return Err(Refusal::Unauthenticated(format!(
                "caller {declared:?} is identified by its credentials, and the request sent none"
            )));
        }
        Ok(self.resolved(declared, false))
    }

    fn resolved(&self, name: &str, authenticated: bool) -> Resolved<'_> {
        match self.named.get_key_value(name) {
            Some((_, caller)) => Resolved {
                label: &caller.name,
                key: &caller.key,
                policy: &caller.policy,
                authenticated,
            },
            None => Resolved {
                label: &self.other_label,
                key: &self.default_key,
                policy: &self.default,
                authenticated,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{Block, Inference, Role, Routing, Turn};

    fn callers(required: bool) -> Callers {
        let caller = |name: &str, has_credentials| {
            (
                name.to_owned(),
                Caller {
                    name: Arc::from(name),
                    key: format!("callers.{name}"),
                    policy: CallerPolicy {
                        allow_force: false,
                        ..CallerPolicy::default()
                    },
                    has_credentials,
                },
            )
        };
        let named = [caller("billing", true), caller("batch", false)]
            .into_iter()
            .collect();
        let tokens = [(TokenDigest([7; 32]), Arc::from("billing"))]
            .into_iter()
            .collect();
        Callers::new(
            required,
            named,
            CallerPolicy::default(),
            tokens,
            BTreeMap::new(),
        )
    }

    /// A label and policy key, or the refusal's kind.
    type Outcome = Result<(String, String), &'static str>;

    /// (authenticated, declared, auth.required) → its outcome.
    #[test]
    fn resolve_follows_the_documented_rules() {
        let ok = |label: &str, key: &str| Ok((label.to_owned(), key.to_owned()));
        let cases: [(Option<&str>, &str, bool, Outcome); 9] = [
            (Some("billing"), "", false, ok("billing", "callers.billing")),
            (
                Some("billing"),
                "billing",
                true,
                ok("billing", "callers.billing"),
            ),
            (Some("billing"), "batch", false, Err("forbidden")),
            (None, "billing", false, Err("unauthenticated")),
            (None, "batch", false, ok("batch", "callers.batch")),
            (None, "", false, ok(OTHER_LABEL, "callers.default")),
            (None, "anyone", false, ok(OTHER_LABEL, "callers.default")),
            (None, "batch", true, Err("unauthenticated")),
            (None, "", true, Err("unauthenticated")),
        ];
        for (authenticated, declared, required, want) in cases {
            let callers = callers(required);
            let got = callers
                .resolve(authenticated, declared)
                .map(|r| (r.label.to_string(), r.key.to_owned()))
                .map_err(|refusal| match refusal {
                    Refusal::Unauthenticated(_) => "unauthenticated",
                    Refusal::Forbidden(_) => "forbidden",
                });
            assert_eq!(
                got, want,
                "{authenticated:?} {declared:?} required={required}"
            );
        }
    }

    #[test]
    fn labels_are_the_configured_names_and_other() {
        let callers = callers(false);
        let labels: Vec<&str> = callers.labels().map(|l| &**l).collect();
        assert_eq!(labels, ["batch", "billing", OTHER_LABEL]);
    }

    #[test]
    fn a_digest_is_64_hex_digits_and_never_printed() {
        let hex = "0a".repeat(32);
        assert_eq!(TokenDigest::from_hex(&hex), Some(TokenDigest([10; 32])));
        assert_eq!(
            TokenDigest::from_hex(&format!(" {}\n", hex.to_uppercase())),
            Some(TokenDigest([10; 32]))
        );
        for bad in [
            "",
            "0a",
            &"0g".repeat(32),
            &"0a".repeat(33),
            &"é".repeat(32),
        ] {
            assert_eq!(TokenDigest::from_hex(bad), None, "{bad}");
        }
        assert_eq!(format!("{:?}", TokenDigest([10; 32])), "TokenDigest(…)");
    }

    fn request(mode: RoutingMode, bias: f64, max_tokens: Option<u32>) -> ChatRequest {
        let turn = Turn {
            role: Role::User,
            content: vec![Block::Text("hello".to_owned())],
        };
        let inference = Inference {
            max_tokens,
            ..Inference::default()
        };
        let routing = Routing::new(mode, bias, String::new()).expect("valid routing");
        ChatRequest::new(vec![turn], Vec::new(), inference, None, routing).expect("valid request")
    }

    #[test]
    fn permit_names_the_rule_it_breaks() {
        let strict = CallerPolicy {
            allow_force: false,
            max_quality_bias: 0.2,
            max_output_tokens: Some(512),
            ..CallerPolicy::default()
        };
        let rule = |policy: &CallerPolicy, req: &ChatRequest| {
            policy.permit("callers.batch", req).err().map(|f| f.rule)
        };
        let cases = [
            (request(RoutingMode::Auto, 0.0, None), None),
            (request(RoutingMode::ForceFast, 0.2, Some(512)), None),
            (
                request(RoutingMode::ForceStrong, 0.0, None),
                Some("callers.batch.allow_force"),
            ),
            (
                request(RoutingMode::Auto, 0.3, None),
                Some("callers.batch.max_quality_bias"),
            ),
            (
                request(RoutingMode::Auto, 0.0, Some(513)),
                Some("callers.batch.max_output_tokens"),
            ),
        ];
        for (req, want) in &cases {
            assert_eq!(rule(&strict, req).as_deref(), *want, "{req:?}");
            assert_eq!(rule(&CallerPolicy::default(), req), None, "{req:?}");
        }
        let forbidden = strict
            .permit("callers.batch", &cases[2].0)
            .expect_err("refused");
        assert_eq!(
            forbidden.to_string(),
            "routing.mode FORCE_STRONG is not allowed for this caller (callers.batch.allow_force)"
        );
    }
}
