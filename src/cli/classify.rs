//! `classify`: JSON lines in, one decision per line out.
//!
//! Output per input line: `{"id", "score", "tier": "strong" | "fast", "model_id", "threshold",
//! "operating_point", "basis", "reasons": [{"feature", "description", "contribution" (score
//! units), "toward": "strong" | "fast"}]}` (and `"features"` with `--features`), the tier
//! decided exactly as the server decides it (threshold, forced modes, capability rules; a
//! caller's target strong share replayed in file order). A line that cannot be parsed or classified
//! produces `{"line": N, "error": "…"}` (N counts from 1) and processing goes on; blank lines
//! are skipped.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use serde::Serialize;

use super::Request;
use prompt_router_core::{classify::Feature, decide::Decider, request::Limits};

/// Counts of what `classify` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClassifySummary {
    /// Lines classified.
    pub classified: usize,
    /// Lines that produced an error line.
    pub errors: usize,
}

/// One of a [`DecisionLine`]'s reasons.
#[derive(Serialize)]
struct LineReason {
    feature: &'static str,
    description: &'static str,
    contribution: f64,
    toward: &'static str,
}

/// Options for `classify` (and `route`, which is `classify` reading plain-text lines too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassifyOptions {
    /// How many top reasons to print per line.
    pub reasons: usize,
    /// Print every feature's value too.
    pub features: bool,
    /// Read a line that is not a JSON object as one prompt (its id is the line number).
    pub plain_text: bool,
    /// Request limits the lines are validated against, as the server's.
    pub limits: Limits,
}

/// The JSON line `classify` writes for one routed input line (see the module docs).
#[derive(Serialize)]
struct DecisionLine<'a> {
    id: &'a serde_json::Value,
    score: f64,
    tier: &'static str,
    model_id: &'a str,
    threshold: f64,
    operating_point: &'static str,
    basis: &'static str,
    reasons: Vec<LineReason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    features: Option<BTreeMap<&'static str, f64>>,
}

#[derive(Serialize)]
struct LineError {
    line: usize,
    error: String,
}

/// Classifies every line of `input`, writing one JSON line per input line to `out`.
pub fn run(
    decider: &Decider,
    opts: ClassifyOptions,
    input: impl BufRead,
    mut out: impl Write,
) -> anyhow::Result<ClassifySummary> {
    let mut summary = ClassifySummary::default();
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        if super::skipped(&line) {
            continue;
        }
        let parsed = if opts.plain_text && !line.trim_start().starts_with('{') {
            Request::prompt(serde_json::Value::from(i + 1), line, &opts.limits)
        } else {
            Request::parse(&line, &opts.limits)
        };
        let result = parsed.and_then(|r| {
            let decision = decider.decide(&r.request)?;
            let decision_line = DecisionLine {
                id: &r.id,
                score: decision.classification.score(),
                tier: decision.choice.tier.as_str(),
                model_id: &decision.model.invoke_id,
                threshold: decision.choice.threshold,
                operating_point: decision.choice.point.as_str(),
                basis: decision.choice.basis.as_str(),
                reasons: decision
                    .classification
                    .top_reasons(opts.reasons)
                    .map(|r| LineReason {
                        feature: r.feature.name(),
                        description: r.feature.description(),
                        contribution: r.effect,
                        toward: r.toward().as_str(),
                    })
                    .collect(),
                features: opts.features.then(|| {
                    Feature::ALL
                        .iter()
                        .map(|f| f.name())
                        .zip(decision.classification.values().iter().copied())
                        .collect()
                }),
            };
            Ok(serde_json::to_vec(&decision_line)?)
        });
        match result {
            Ok(json) => {
                out.write_all(&json)?;
                summary.classified += 1;
            }
            Err(e) => {
                let err = LineError {
                    line: i + 1,
                    error: format!("{e:#}"),
                };
                serde_json::to_writer(&mut out, &err)?;
                summary.errors += 1;
            }
        }
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_configured_limits_apply() {
        let decider = crate::setup::decider_with(|_| {});
        let opts = super::ClassifyOptions {
            reasons: 1,
            features: false,
            plain_text: false,
            limits: prompt_router_core::request::Limits {
                max_tools: 1,
                ..prompt_router_core::request::Limits::default()
            },
        };
        let line = r#"{"messages":[{"role":"ROLE_USER","content":[{"text":"x"}]}],"toolConfig":{"tools":[{"name":"a","inputSchemaJson":"{\"type\":\"object\"}"},{"name":"b","inputSchemaJson":"{\"type\":\"object\"}"}]}}"#;
        let mut out = Vec::new();
        let s = super::run(&decider, opts, line.as_bytes(), &mut out).unwrap();
        assert_eq!(s.errors, 1);
        assert!(
            String::from_utf8(out)
                .unwrap()
                .contains("exceed the limit of 1")
        );
    }

    #[test]
    fn plain_text_lines_are_prompts_when_asked() {
        let decider = crate::setup::decider_with(|_| {});
        let mut out = Vec::new();
        let opts = super::ClassifyOptions {
            reasons: 1,
            features: false,
            plain_text: true,
            limits: prompt_router_core::request::Limits::default(),
        };
        let input = "hello there\n{\"prompt\": \"and hello again\"}\n";
        let s = super::run(&decider, opts, input.as_bytes(), &mut out).unwrap();
        assert_eq!(s.classified, 2);
        let first: serde_json::Value =
            serde_json::from_slice(out.split(|b| *b == b'\n').next().unwrap()).unwrap();
        assert_eq!(first["id"], 1);
        assert_eq!(first["tier"], "fast");
    }

    use super::*;

    #[test]
    fn good_and_bad_lines() {
        let decider = crate::setup::decider_with(|raw| raw.routing.threshold = Some(0.0));
        let input = "{\"id\":\"a\",\"prompt\":\"hi\"}\nnot json\n\n{\"id\":3,\"messages\":[{\"role\":\"ROLE_USER\",\"content\":[{\"text\":\"x\"}]}]}\n{\"id\":4,\"messages\":[]}\n";
        let mut out = Vec::new();
        let opts = ClassifyOptions {
            reasons: 2,
            features: true,
            plain_text: false,
            limits: prompt_router_core::request::Limits::default(),
        };
        let s = run(&decider, opts, input.as_bytes(), &mut out).unwrap();
        assert_eq!(
            s,
            ClassifySummary {
                classified: 2,
                errors: 2
            }
        );
        let lines: Vec<serde_json::Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0]["id"], "a");
        assert_eq!(lines[0]["tier"], "strong");
        assert_eq!(lines[0]["reasons"].as_array().unwrap().len(), 2);
        assert_eq!(
            lines[0]["features"].as_object().unwrap().len(),
            prompt_router_core::classify::NUM_FEATURES
        );
        assert_eq!(lines[1]["line"], 2);
        assert_eq!(lines[2]["id"], 3);
        assert_eq!(lines[3]["line"], 5);
        assert_eq!(
            lines[0]["model_id"],
            "us.anthropic.claude-3-5-sonnet-20241022-v2:0"
        );
        assert!(
            lines[3]["error"]
                .as_str()
                .unwrap()
                .contains("messages: at least one message")
        );
    }
}
