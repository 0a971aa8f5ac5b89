//! CLI handlers for `classify`, `eval`, `train` and `calibrate`: plain functions over
//! `impl BufRead` / `impl Write`, streaming JSON lines. `main` wires them to subcommands.
//!
//! Input lines are either `{"id", "prompt"}` or a request in the `router.v1` JSON mapping (what
//! grpcurl users type: `{"id", "system": ["…"], "messages": [{"role": "ROLE_USER", "content":
//! [{"text": "…"}]}], "inferenceConfig": {"maxTokens": N}, …}`), validated as the server does.
//! Labelled lines add `"strong_score"` and `"weak_score"`, and may name their task family with
//! `"source"` (the shared sets' field) or `"family"`. A judged line, as in
//! `tests/data/realistic.jsonl`, is `{"id", "family", "judgement": "easy" | "hard", "why",
//! "request": {…}}`: the request is nested, and the judgement stands for labels (see
//! [`Judgement`]). Any other unknown field is an error, so a typo does not silently change a
//! score.

pub mod calibrate;
pub mod classify;
pub mod eval;
pub mod health;
pub mod train;

use std::{collections::BTreeMap, io::BufRead};

use anyhow::{Context as _, bail};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::{pb, server::convert::chat_request};
use prompt_router_core::{
    catalog::Tier,
    classify::{Classification, Classifier},
    decide::{self, Decider},
    eval::{CostAssumptions, EvalError, Row, at_decisions},
    operating::Point,
    policy::{Basis, TierChoice},
    request::{ChatRequest, Limits},
};

/// Whether `line` is a file header (`{"header": …}`, as `tests/data/realistic.jsonl` opens
/// with): it describes the file and is skipped wherever lines are read.
pub fn is_header(line: &str) -> bool {
    line.trim_start().starts_with("{\"header\"")
        && serde_json::from_str::<Map<String, Value>>(line)
            .is_ok_and(|m| m.len() == 1 && m.contains_key("header"))
}

/// Whether a line holds no row: blank, or a file header.
pub fn skipped(line: &str) -> bool {
    line.trim().is_empty() || is_header(line)
}

/// Parses and scores every line of `input` as the server would, each with its line number
/// (from 1) for error messages; blank lines and a header are skipped.
pub fn scored_lines<'a>(
    input: impl BufRead + 'a,
    classifier: &'a Classifier,
    limits: &'a Limits,
) -> impl Iterator<Item = (usize, anyhow::Result<(Request, Classification)>)> + 'a {
    input.lines().enumerate().filter_map(move |(i, line)| {
        let scored = match line {
            Err(e) => Err(anyhow::Error::from(e).context("reading")),
            Ok(line) if skipped(&line) => return None,
            Ok(line) => Request::parse(&line, limits).map(|r| {
                let c = decide::classify(classifier, &r.request);
                (r, c)
            }),
        };
        Some((i + 1, scored))
    })
}

/// Parses and routes every line of `input` (blank lines and a header skipped) through `decider`, in file order, as the
/// server routes requests in arrival order: a target-share caller's threshold moves from row to
/// row exactly as it would online. Each line comes with its number (from 1).
pub fn routed_lines<'a>(
    input: impl BufRead + 'a,
    decider: &'a Decider,
    limits: &'a Limits,
) -> impl Iterator<Item = (usize, anyhow::Result<(Request, Classification, TierChoice)>)> + 'a {
    input.lines().enumerate().filter_map(move |(i, line)| {
        let routed = match line {
            Err(e) => Err(anyhow::Error::from(e).context("reading")),
            Ok(line) if skipped(&line) => return None,
            Ok(line) => Request::parse(&line, limits).and_then(|r| {
                let decision = decider.decide(&r.request)?;
                Ok((r, decision.classification, decision.choice))
            }),
        };
        Some((i + 1, routed))
    })
}

/// A caller's operating point after a replay.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FinalPoint {
    /// The threshold the next request would be compared with.
    pub threshold: f64,
    /// Where it comes from (`fixed`, `target_share`, `warmup_pooled`, `warmup_fixed`).
    pub operating_point: &'static str,
}

/// What the target-share controller did over a file, replayed in file order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Replay {
    /// Rows routed.
    pub rows: usize,
    /// Share of all rows that went strong (forced and capability-bound rows included).
    pub strong_share: f64,
    /// Score-decided rows of callers past their warm-up (at the target-share point).
    pub after_warmup_rows: usize,
    /// Share of those that went strong; `None` when there were none.
    pub after_warmup_strong_share: Option<f64>,
    /// Quality gap recovered by these decisions (labelled rows only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pgr: Option<f64>,
    /// Cost saved against all-strong by these decisions (labelled rows only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_saved: Option<f64>,
    /// Every configured caller and `default`, as the replay leaves them.
    pub final_points: BTreeMap<String, FinalPoint>,
}

impl Replay {
    /// Summarises the decisions `choices` (one per row, in order) and the decider's state after
    /// them; with labels, also the quality and cost of those decisions.
    pub fn new(
        decider: &Decider,
        choices: &[TierChoice],
        labelled: Option<(&[Row], &CostAssumptions)>,
    ) -> Result<Self, EvalError> {
        let strong: Vec<bool> = choices.iter().map(|c| c.tier == Tier::Strong).collect();
        let steered = choices
            .iter()
            .filter(|c| c.basis == Basis::Score && c.point == Point::TargetShare);
        let (after_warmup_rows, after_warmup_strong) = steered.fold((0, 0), |(n, k), c| {
            (n + 1, k + usize::from(c.tier == Tier::Strong))
        });
        let quality = labelled
            .map(|(rows, prices)| at_decisions(rows, &strong, prices))
            .transpose()?;
        Ok(Self {
            rows: choices.len(),
            strong_share: strong.iter().filter(|&&s| s).count() as f64
                / choices.len().max(1) as f64,
            after_warmup_rows,
            after_warmup_strong_share: (after_warmup_rows > 0)
                .then(|| after_warmup_strong as f64 / after_warmup_rows as f64),
            pgr: quality.map(|q| q.pgr),
            cost_saved: quality.map(|q| q.cost_saved),
            final_points: decider
                .operating
                .callers()
                .map(|c| {
                    (
                        c.caller.to_owned(),
                        FinalPoint {
                            threshold: c.in_force.threshold,
                            operating_point: c.in_force.point.as_str(),
                        },
                    )
                })
                .collect(),
        })
    }
}

/// An evaluation row from a classification and its labels.
pub fn row(c: &Classification, (strong, fast): (f64, f64)) -> Row {
    Row {
        score: c.score(),
        strong,
        fast,
        input_tokens: c.input_tokens(),
    }
}

/// Fields of a labelled line that are not part of the request (`id` is taken apart).
const LABEL_FIELDS: [&str; 2] = ["strong_score", "weak_score"];

/// A written judgement of a request: does the fast model answer it as well as the strong one?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    /// The fast model serves the caller as well.
    Easy,
    /// The strong model's answer is materially better.
    Hard,
}

impl Judgement {
    /// The labels a judgement stands for, on the shared sets' scale: `hard` is a prompt the
    /// strong model gets right and the fast one wrong (strong 1, fast 0), `easy` one both get
    /// right (1, 1). In training that is the soft label 1 for hard and 0.5 for easy — what the
    /// shared sets' rows of the same outcomes get — so both kinds of data estimate the same
    /// thing, the strong model's expected quality gain.
    pub fn labels(self) -> (f64, f64) {
        match self {
            Judgement::Easy => (1.0, 1.0),
            Judgement::Hard => (1.0, 0.0),
        }
    }

    fn parse(v: &Value) -> anyhow::Result<Self> {
        match v.as_str() {
            Some("easy") => Ok(Judgement::Easy),
            Some("hard") => Ok(Judgement::Hard),
            _ => bail!("`judgement` must be \"easy\" or \"hard\", got {v}"),
        }
    }
}

/// The request a JSON line's remaining fields hold: `prompt` (one user turn) or a whole request
/// in the `router.v1` JSON mapping, but not both.
pub fn request_of(mut fields: Map<String, Value>) -> anyhow::Result<pb::ConverseRequest> {
    match fields.remove("prompt") {
        Some(Value::String(text)) if fields.is_empty() => Ok(single_prompt(text)),
        Some(Value::String(_)) => {
            bail!("give either `prompt` or a request (`messages`, …), not both")
        }
        Some(_) => bail!("`prompt` must be a string"),
        None if fields.is_empty() => bail!("line has neither `prompt` nor `messages`"),
        None => serde_json::from_value(Value::Object(fields))
            .context("not a request in the router.v1 JSON mapping"),
    }
}

/// One input line: a prompt or a request, optionally labelled.
#[derive(Debug)]
pub struct Request {
    /// Caller's id, echoed back as given.
    pub id: Value,
    /// The request, validated as the server validates it.
    pub request: ChatRequest,
    /// The task family the line names (`family`, or the shared sets' `source`).
    pub family: Option<String>,
    /// The written judgement of a judged line.
    pub judgement: Option<Judgement>,
    strong_score: Option<f64>,
    fast_score: Option<f64>,
}

impl Request {
    /// Parses one JSON line: `{"id", "prompt"}` or a request in the gRPC JSON mapping, with
    /// optional labels; the request is checked exactly as the server checks it.
    pub fn parse(line: &str, limits: &Limits) -> anyhow::Result<Self> {
        let value: Value = serde_json::from_str(line).context("not a valid JSON line")?;
        let Value::Object(mut fields) = value else {
            bail!("a line must be a JSON object");
        };
        let id = fields.remove("id").unwrap_or(Value::Null);
        let family = match fields.remove("family").or_else(|| fields.remove("source")) {
            None | Some(Value::Null) => None,
            Some(Value::String(f)) => Some(f),
            Some(v) => bail!("`family` must be a string, got {v}"),
        };
        let judgement = fields
            .remove("judgement")
            .map(|v| Judgement::parse(&v))
            .transpose()?;
        let strong_score = score(&fields, "strong_score")?;
        let fast_score = score(&fields, "weak_score")?;
        for field in LABEL_FIELDS {
            fields.remove(field);
        }
        if judgement.is_some() {
            if strong_score.is_some() || fast_score.is_some() {
                bail!("give either `judgement` or `strong_score` and `weak_score`, not both");
            }
            fields.remove("why");
            fields = match fields.remove("request") {
                Some(Value::Object(request)) if fields.is_empty() => request,
                Some(Value::Object(_)) => bail!(
                    "a judged line holds `id`, `family`, `judgement`, `why` and `request`; also found: {}",
                    fields.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
                _ => bail!("a judged line needs its `request` as an object"),
            };
        }
        let request = chat_request(request_of(fields)?, limits)?;
        Ok(Self {
            id,
            request,
            family,
            judgement,
            strong_score,
            fast_score,
        })
    }

    /// A one-prompt request with the given id.
    pub fn prompt(id: Value, text: String, limits: &Limits) -> anyhow::Result<Self> {
        let request = chat_request(single_prompt(text), limits)?;
        Ok(Self {
            id,
            request,
            family: None,
            judgement: None,
            strong_score: None,
            fast_score: None,
        })
    }

    /// The id as text (strings verbatim, anything else as JSON), for the held-out split.
    pub fn id_text(&self) -> String {
        match &self.id {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }

    /// The labels of a labelled line: (strong_score, weak_score), or what its judgement
    /// stands for ([`Judgement::labels`]).
    pub fn labels(&self) -> anyhow::Result<(f64, f64)> {
        match (self.strong_score, self.fast_score, self.judgement) {
            (Some(s), Some(w), _) => Ok((s, w)),
            (None, None, Some(j)) => Ok(j.labels()),
            _ => bail!(
                "labelled line needs numeric `strong_score` and `weak_score`, or a `judgement`"
            ),
        }
    }
}

fn score(fields: &Map<String, Value>, name: &str) -> anyhow::Result<Option<f64>> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .with_context(|| format!("`{name}` must be a number")),
    }
}

/// A request holding one user turn.
pub fn single_prompt(text: String) -> pb::ConverseRequest {
    pb::ConverseRequest {
        messages: vec![pb::Message {
            role: pb::Role::User as i32,
            content: vec![pb::ContentBlock {
                block: Some(pb::content_block::Block::Text(text)),
            }],
        }],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prompt_router_core::classify::{Feature, Weights};

    fn classifier() -> Classifier {
        Classifier::new(Weights::neutral()).unwrap()
    }

    #[test]
    fn full_request_shape() {
        // "iVBORw0KGgo=" is the 8-byte PNG signature.
        let line = r#"{"id":7,"system":["You are terse."],"messages":[
            {"role":"ROLE_USER","content":[{"text":"Hello"},{"image":{"format":"IMAGE_FORMAT_PNG","data":"iVBORw0KGgo="}}]},
            {"role":"ROLE_ASSISTANT","content":[{"text":"Hi"}]},
            {"role":"ROLE_USER","content":[{"text":"Why?"}]}],
            "inferenceConfig":{"maxTokens":4096},
            "toolConfig":{"tools":[{"name":"a","inputSchemaJson":"{\"type\":\"object\"}"},{"name":"b","inputSchemaJson":"{\"type\":\"object\"}"}]}}"#;
        let r = Request::parse(line, &Limits::default()).unwrap();
        assert_eq!(r.id_text(), "7");
        let c = decide::classify(&classifier(), &r.request);
        assert!((c.value(Feature::Images) - 2f64.ln()).abs() < 1e-12);
        assert!((c.value(Feature::Tools) - 3f64.ln()).abs() < 1e-12);
        assert!((c.value(Feature::Turns) - 3f64.ln()).abs() < 1e-12);
        assert!((c.value(Feature::MaxTokens) - 4f64.ln()).abs() < 1e-12);
        assert!(c.value(Feature::ContextTokens) > 0.0);
    }

    #[test]
    fn prompt_line_and_errors() {
        let r = Request::parse(
            r#"{"id":"a","prompt":"hi","source":"x"}"#,
            &Limits::default(),
        )
        .unwrap();
        assert!(
            decide::classify(&classifier(), &r.request)
                .score()
                .is_finite()
        );
        let err = |line: &str| {
            format!(
                "{:#}",
                Request::parse(line, &Limits::default()).unwrap_err()
            )
        };
        assert!(err(r#"{"id":"a"}"#).contains("neither `prompt` nor `messages`"));
        assert!(
            err(r#"{"messages":[{"role":"ROLE_SYSTEM","content":[]}]}"#).contains("ROLE_SYSTEM")
        );
        assert!(
            err(r#"{"messages":[{"role":"ROLE_USER","content":[{"text":" "}]}]}"#)
                .contains("must not be empty")
        );
        assert!(err(r#"{"prompt":"x","messages":[]}"#).contains("not both"));
        assert!(err(r#"{"prompt":"x","temprature":1}"#).contains("not both"));
        assert!(
            err(r#"{"messages":[{"role":"ROLE_USER","content":[{"text":"x"}]}],"temprature":1}"#)
                .contains("temprature")
        );
        assert!(err("{not json").contains("not a valid JSON line"));
        let r = Request::parse(r#"{"prompt":"x","strong_score":1}"#, &Limits::default()).unwrap();
        assert!(r.labels().is_err());
        let r = Request::parse(
            r#"{"prompt":"x","strong_score":1,"weak_score":0}"#,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(r.labels().unwrap(), (1.0, 0.0));
    }

    #[test]
    fn headers_are_recognised() {
        assert!(is_header(r#"{"header": {"about": "x"}}"#));
        assert!(!is_header(r#"{"header": {}, "prompt": "hi"}"#));
        assert!(!is_header(r#"{"prompt": "header"}"#));
    }

    #[test]
    fn judged_lines() {
        let line = r#"{"id":"x.a","family":"sql","judgement":"hard","why":"streaks","request":{"messages":[{"role":"ROLE_USER","content":[{"text":"Longest streak?"}]}]}}"#;
        let r = Request::parse(line, &Limits::default()).unwrap();
        assert_eq!(r.judgement, Some(Judgement::Hard));
        assert_eq!(r.family.as_deref(), Some("sql"));
        assert_eq!(r.labels().unwrap(), (1.0, 0.0));
        let err = |line: &str| {
            format!(
                "{:#}",
                Request::parse(line, &Limits::default()).unwrap_err()
            )
        };
        assert!(err(&line.replace("hard", "medium")).contains("`judgement` must be"));
        assert!(err(&line.replace("\"why\"", "\"whyy\"")).contains("also found: whyy"));
        assert!(err(r#"{"judgement":"easy","prompt":"hi"}"#).contains("`request` as an object"));
    }
}
