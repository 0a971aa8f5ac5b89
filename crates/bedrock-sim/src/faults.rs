//! Fault injection: runtime rate rules and `[sim:…]` directives inside prompt text.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::request::ConverseRequest;
use super::wire::BedrockError;

/// What happens instead of, or in the middle of, a normal answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Fault {
    /// An HTTP error response before any output (`ModelStreamErrorException` is not allowed here).
    Http(BedrockError),
    /// ConverseStream: an exception event after `after` content deltas, then the stream ends.
    /// Converse: the same error as an HTTP response (ModelStreamErrorException → ModelErrorException).
    MidStream {
        /// Must have a `ConverseStreamOutput` error member (see [`BedrockError::stream_member`]).
        error: BedrockError,
        /// Content deltas sent before the exception.
        #[serde(default)]
        after: u32,
    },
    /// Close the TCP connection: before any response (`after` absent, and always on Converse),
    /// or on ConverseStream after `after` content deltas.
    Drop {
        /// Content deltas sent before the connection is cut.
        #[serde(default)]
        after: Option<u32>,
    },
    /// Stop sending and hold the connection open: on ConverseStream after `after` deltas, on
    /// Converse before the response. Resumes after `ms`, or never (until the client leaves).
    Stall {
        /// Content deltas sent before the stall (ConverseStream only).
        #[serde(default)]
        after: u32,
        /// Stall length; absent = until the client goes away or the simulator shuts down.
        #[serde(default)]
        ms: Option<u64>,
    },
}

/// A fault fired at random with probability `rate`, optionally only for one region or model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultRule {
    /// What to inject.
    pub fault: Fault,
    /// Probability per matching request, 0.0–1.0.
    pub rate: f64,
    /// Only requests signed for this source region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Only requests for this model id (as invoked, or its base model id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// The runtime-changeable rate rules; the first rule that matches and fires wins.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultConfig {
    /// Rules, evaluated in order.
    #[serde(default)]
    pub rules: Vec<FaultRule>,
}

/// One parsed `[sim:…]` directive.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Directive {
    pub source: String,
    pub fault: Option<Fault>,
    pub times: Option<u32>,
    pub region: Option<String>,
    pub model: Option<String>,
    pub ttft_ms: Option<u64>,
    pub per_token_ms: Option<u64>,
    pub tokens: Option<u32>,
    pub difficulty: Option<f64>,
}

/// Per-request overrides and the fault chosen for it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Plan {
    pub fault: Option<Fault>,
    pub ttft_ms: Option<u64>,
    pub per_token_ms: Option<u64>,
    pub tokens: Option<u32>,
}

/// What the filters of rules and directives match against.
pub(crate) struct MatchCtx<'a> {
    pub region: Option<&'a str>,
    pub invoked_model: &'a str,
    pub base_model: &'a str,
    pub prompt_hash: u64,
}

impl MatchCtx<'_> {
    fn matches(&self, region: Option<&str>, model: Option<&str>) -> bool {
        region.is_none_or(|r| self.region == Some(r))
            && model.is_none_or(|m| m == self.invoked_model || m == self.base_model)
    }
}

const KEYS: &str = "fail, after, drop, stall, times, region, model, ttft, tpt, tokens, difficulty";

/// Text searched for directives: system prompts, and the text of the last user message (or
/// `user_text` in its place, for a judge request) so that directives in earlier turns of a
/// conversation do not fire again. Returns (system texts, user texts).
pub(crate) fn directive_texts<'a>(
    req: &'a ConverseRequest,
    user_text: Option<&'a str>,
) -> (Vec<&'a str>, Vec<&'a str>) {
    let system = req
        .system
        .iter()
        .filter_map(|b| b.text.as_deref())
        .collect();
    let user = match user_text {
        Some(text) => vec![text],
        None => req
            .messages
            .iter()
            .flatten()
            .rev()
            .find(|m| m.role == "user")
            .map(|m| m.content.iter().filter_map(|b| b.text.as_deref()).collect())
            .unwrap_or_default(),
    };
    (system, user)
}

/// Parses every `[sim:…]` directive in `text`; any malformed one is an error naming it.
pub(crate) fn parse_directives(text: &str) -> Result<Vec<Directive>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("[sim:") {
        let after_open = &rest[start + "[sim:".len()..];
        let Some(end) = after_open.find(']') else {
            let shown: String = rest[start..].chars().take(40).collect();
            return Err(format!(
                "Invalid simulator directive {shown}…: missing closing ']'."
            ));
        };
        let source = format!("[sim:{}]", &after_open[..end]);
        let d = parse_one(&after_open[..end], &source)
            .map_err(|why| format!("Invalid simulator directive {source}: {why}."))?;
        out.push(d);
        rest = &after_open[end + 1..];
    }
    Ok(out)
}

fn num<T: std::str::FromStr>(key: &str, value: Option<&str>) -> Result<T, String> {
    let v = value.ok_or_else(|| format!("'{key}' needs a value"))?;
    v.parse()
        .map_err(|_| format!("'{key}={v}' is not a non-negative integer"))
}

fn unit_interval(key: &str, value: Option<&str>) -> Result<f64, String> {
    let v = value.ok_or_else(|| format!("'{key}' needs a value"))?;
    v.parse::<f64>()
        .ok()
        .filter(|x| (0.0..=1.0).contains(x))
        .ok_or_else(|| format!("'{key}={v}' is not a number within 0..=1"))
}

fn parse_one(body: &str, source: &str) -> Result<Directive, String> {
    let mut d = Directive {
        source: source.to_owned(),
        ..Directive::default()
    };
    let (mut fail, mut after, mut drop, mut stall) = (None, None, false, None::<Option<u64>>);
    let mut seen = Vec::new();
    for item in body.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (item, None),
        };
        if seen.contains(&key) {
            return Err(format!("'{key}' given twice"));
        }
        seen.push(key);
        match key {
            "fail" => {
                let name = value.ok_or("'fail' needs an error name")?;
                fail = Some(
                    BedrockError::from_name(name)
                        .ok_or_else(|| format!("unknown error '{name}'"))?,
                );
            }
            "after" => after = Some(num::<u32>(key, value)?),
            "drop" if value.is_none() => drop = true,
            "stall" => stall = Some(value.map(|_| num::<u64>(key, value)).transpose()?),
            "times" => {
                let n = num::<u32>(key, value)?;
                if n == 0 {
                    return Err("'times' must be at least 1".into());
                }
                d.times = Some(n);
            }
            "region" => d.region = Some(value.ok_or("'region' needs a value")?.to_owned()),
            "model" => d.model = Some(value.ok_or("'model' needs a value")?.to_owned()),
            "ttft" => d.ttft_ms = Some(num(key, value)?),
            "tpt" => d.per_token_ms = Some(num(key, value)?),
            "tokens" => d.tokens = Some(num(key, value)?),
            "difficulty" => d.difficulty = Some(unit_interval(key, value)?),
            _ => return Err(format!("unknown key '{item}' (known: {KEYS})")),
        }
    }
    d.fault = match (fail, drop, stall) {
        (None, false, None) if after.is_some() => {
            return Err("'after' needs fail, drop or stall".into());
        }
        (None, false, None) => None,
        (Some(error), false, None) => Some(match after {
            None if error == BedrockError::ModelStreamErrorException => {
                return Err(
                    "ModelStreamErrorException only exists inside a stream; add after=K".into(),
                );
            }
            None => Fault::Http(error),
            Some(_) if error.stream_member().is_none() => {
                return Err(format!(
                    "{} cannot be sent inside a stream (stream errors: internalServerException, \
                     modelStreamErrorException, validationException, throttlingException, \
                     serviceUnavailableException)",
                    error.name()
                ));
            }
            Some(after) => Fault::MidStream { error, after },
        }),
        (None, true, None) => Some(Fault::Drop { after }),
        (None, false, Some(ms)) => Some(Fault::Stall {
            after: after.unwrap_or(0),
            ms,
        }),
        _ => return Err("use only one of fail, drop, stall".into()),
    };
    Ok(d)
}

/// Chooses overrides and the fault for one request. Directives come first, in order: each one
/// whose filters match counts an attempt for (prompt, directive) and applies while that count is
/// within `times`; the first applied directive with a fault ends the search. Rate rules are
/// consulted only when no directive chose a fault.
pub(crate) fn decide(
    directives: &[Directive],
    rules: &[FaultRule],
    ctx: &MatchCtx<'_>,
    attempts: &mut HashMap<(u64, usize), u32>,
    rng: &mut fastrand::Rng,
) -> Plan {
    let mut plan = Plan::default();
    for (i, d) in directives.iter().enumerate() {
        if !ctx.matches(d.region.as_deref(), d.model.as_deref()) {
            continue;
        }
        // Only `times=` needs a count, so only those directives keep an entry: a long run of
        // directive prompts without it leaves the map empty.
        if let Some(times) = d.times {
            let n = attempts.entry((ctx.prompt_hash, i)).or_insert(0);
            *n = n.saturating_add(1);
            if *n > times {
                continue;
            }
        }
        plan.ttft_ms = plan.ttft_ms.or(d.ttft_ms);
        plan.per_token_ms = plan.per_token_ms.or(d.per_token_ms);
        plan.tokens = plan.tokens.or(d.tokens);
        if d.fault.is_some() {
            plan.fault.clone_from(&d.fault);
            return plan;
        }
    }
    plan.fault = rules
        .iter()
        .filter(|r| ctx.matches(r.region.as_deref(), r.model.as_deref()))
        .find(|r| rng.f64() < r.rate)
        .map(|r| r.fault.clone());
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(region: Option<&str>) -> MatchCtx<'_> {
        MatchCtx {
            region,
            invoked_model: "us.m",
            base_model: "m",
            prompt_hash: 9,
        }
    }

    #[test]
    fn parses_the_grammar() {
        let ds = parse_directives(
            "hi [sim:fail=ThrottlingException; times=2; region=us-east-1] x [sim:stall=50;after=3]",
        )
        .expect("valid");
        assert_eq!(ds.len(), 2);
        assert_eq!(
            ds[0].fault,
            Some(Fault::Http(BedrockError::ThrottlingException))
        );
        assert_eq!(
            (ds[0].times, ds[0].region.as_deref()),
            (Some(2), Some("us-east-1"))
        );
        assert_eq!(
            ds[1].fault,
            Some(Fault::Stall {
                after: 3,
                ms: Some(50)
            })
        );
        let d = &parse_directives("[sim:fail=throttlingException;after=4]").expect("valid")[0];
        assert_eq!(
            d.fault,
            Some(Fault::MidStream {
                error: BedrockError::ThrottlingException,
                after: 4
            })
        );
        let d = &parse_directives("[sim:drop;after=1][sim:ttft=5;tpt=1;tokens=30]").expect("valid");
        assert_eq!(d[0].fault, Some(Fault::Drop { after: Some(1) }));
        assert_eq!(
            (d[1].ttft_ms, d[1].per_token_ms, d[1].tokens),
            (Some(5), Some(1), Some(30))
        );
    }

    #[test]
    fn rejects_bad_directives_by_name() {
        for (text, needle) in [
            (
                "[sim:fial=ThrottlingException]",
                "unknown key 'fial=ThrottlingException'",
            ),
            ("[sim:fail=Throttled]", "unknown error 'Throttled'"),
            (
                "[sim:fail=ModelTimeoutException;after=2]",
                "cannot be sent inside a stream",
            ),
            ("[sim:fail=ModelStreamErrorException]", "add after=K"),
            ("[sim:after=2]", "'after' needs"),
            ("[sim:drop;stall]", "only one of"),
            ("[sim:times=0;drop]", "at least 1"),
            ("[sim:fail=ThrottlingException", "missing closing"),
            ("[sim:tokens=-1]", "not a non-negative integer"),
        ] {
            let err = parse_directives(text).expect_err(text);
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn times_counts_attempts_per_prompt_and_chains_directives() {
        let ds = parse_directives(
            "[sim:fail=ThrottlingException;times=1][sim:fail=ServiceUnavailableException;times=1]",
        )
        .expect("valid");
        let mut attempts = HashMap::new();
        let mut rng = fastrand::Rng::with_seed(1);
        let mut next = || decide(&ds, &[], &ctx(None), &mut attempts, &mut rng).fault;
        assert_eq!(next(), Some(Fault::Http(BedrockError::ThrottlingException)));
        assert_eq!(
            next(),
            Some(Fault::Http(BedrockError::ServiceUnavailableException))
        );
        assert_eq!(next(), None);
    }

    #[test]
    fn filters_and_rates() {
        let ds =
            parse_directives("[sim:fail=ThrottlingException;region=us-east-1]").expect("valid");
        let mut attempts = HashMap::new();
        let mut rng = fastrand::Rng::with_seed(1);
        assert_eq!(
            decide(&ds, &[], &ctx(Some("us-west-2")), &mut attempts, &mut rng).fault,
            None
        );
        assert!(
            decide(&ds, &[], &ctx(Some("us-east-1")), &mut attempts, &mut rng)
                .fault
                .is_some()
        );
        let rule = |rate, model: &str| FaultRule {
            fault: Fault::Drop { after: None },
            rate,
            region: None,
            model: Some(model.into()),
        };
        let plan = |rules: &[FaultRule], rng: &mut fastrand::Rng| {
            decide(&[], rules, &ctx(None), &mut HashMap::new(), rng)
        };
        assert!(plan(&[rule(1.0, "m")], &mut rng).fault.is_some());
        assert!(plan(&[rule(1.0, "other")], &mut rng).fault.is_none());
        assert!(plan(&[rule(0.0, "us.m")], &mut rng).fault.is_none());
    }
}
