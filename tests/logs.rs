//! The binary's logs. JSON lines: every request's line carries the request span (request id,
//! caller, tier, score, threshold and operating point, model, attempts, outcome, and for an
//! answer its tokens and cost) and the time split (total, upstream, SDK client, router), and prompt text appears only with
//! `telemetry.log_prompts = true`. Text lines: one event is one line whatever a caller sends,
//! every field holds exactly the value it was given, and each field appears once per line with
//! its final value.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::process::{Proc, serve_simulated};

use prompt_router::pb::{self, prompt_router_client::PromptRouterClient};
use serde_json::Value;
use tonic::transport::Channel;

/// A marker no log line may hold unless prompts are logged.
const SECRET: &str = "zebra-umbrella-4711";
/// A request id that closes the span's field list and adds fields, were it written bare.
const FORGED_ID: &str = r#"x}outcome=ok,caller="admin""#;
/// A caller name that would add a field were its quotes not escaped.
const FORGED_CALLER: &str = r#"billing" outcome="ok"#;
const HAIKU: &str = "anthropic.claude-3-haiku-20240307-v1:0";
const SONNET_US: &str = "us.anthropic.claude-3-5-sonnet-20241022-v2:0";

/// A prompt that writes a complete fake log line, clears the screen and hides a line break.
fn forged_prompt() -> String {
    format!(
        "What is {SECRET}?\n2026-01-01T00:00:00.000000Z  INFO request{{rpc=\"Converse\" request_id=forged}}: \
         prompt_router::server::record: request finished outcome=\"ok\"\r\n\u{1b}[2J\u{1b}[31mred\u{2028}tail\t\\"
    )
}

/// `prompt-router serve --simulate --log-format FORMAT`, its stderr read line by line.
struct Router {
    process: Proc,
    seen: Vec<String>,
}

impl Router {
    fn start(format: &str, log_prompts: bool) -> Self {
        let process = Proc::spawn(serve_simulated(&["--log-format", format]).env(
            "ROUTER__TELEMETRY__LOG_PROMPTS",
            if log_prompts { "true" } else { "false" },
        ));
        Self {
            process,
            seen: Vec::new(),
        }
    }

    /// Reads lines until one `matches`, keeping every line read in `seen`.
    fn wait_for_line(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.process.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!("no log line for {what}; saw:\n{}", self.seen.join("\n"))
            });
            self.seen.push(line.clone());
            if matches(&line) {
                return line;
            }
        }
    }

    /// Waits for the first JSON line `matches` accepts; every line must be JSON.
    fn wait_for(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let parse = |line: &str| -> Value {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
        };
        parse(&self.wait_for_line(what, |line| matches(&parse(line))))
    }

    fn finished(&mut self, request_id: &str) -> Value {
        self.wait_for(request_id, |line| {
            line["span"]["request_id"] == request_id
                && matches!(
                    line["message"].as_str(),
                    Some("request finished" | "request failed")
                )
        })
    }

    async fn client(&mut self) -> PromptRouterClient<Channel> {
        let serving = self.wait_for("start-up", |line| {
            line["message"] == "prompt-router serving"
        });
        let addr = serving["grpc_addr"].as_str().expect("grpc_addr").to_owned();
        PromptRouterClient::connect(format!("http://{addr}"))
            .await
            .expect("connect")
    }
}

fn request(prompt: &str, id: &str) -> tonic::Request<pb::ConverseRequest> {
    request_from(prompt, id, "log-test")
}

fn request_from(prompt: &str, id: &str, caller: &str) -> tonic::Request<pb::ConverseRequest> {
    let mut body = common::ask(prompt);
    body.routing = Some(pb::RoutingOptions {
        caller: caller.to_owned(),
        ..Default::default()
    });
    let mut request = tonic::Request::new(body);
    request
        .metadata_mut()
        .insert("x-request-id", id.parse().unwrap());
    request
}

/// The request span's fields on a finished-request line.
fn assert_span(line: &Value, id: &str, rpc: &str, outcome: &str) {
    let span = &line["span"];
    assert_eq!(span["request_id"], id, "{line}");
    assert_eq!(span["rpc"], rpc, "{line}");
    assert_eq!(span["caller"], "log-test", "{line}");
    assert!(
        matches!(span["tier"].as_str(), Some("fast" | "strong")),
        "{line}"
    );
    let score = span["score"].as_f64().expect("score");
    assert!((0.0..=1.0).contains(&score), "{line}");
    let threshold = span["threshold"].as_f64().expect("threshold");
    assert!((0.0..=1.0).contains(&threshold), "{line}");
    assert_eq!(span["operating_point"], "fixed", "{line}");
    assert!(
        span["model"]
            .as_str()
            .is_some_and(|m| m.contains("anthropic.")),
        "{line}"
    );
    assert!(span["attempts"].as_u64().is_some_and(|a| a >= 1), "{line}");
    assert_eq!(span["outcome"], outcome, "{line}");
    // Once, on the span: the event does not repeat it.
    assert!(line.get("outcome").is_none(), "{line}");
    assert!(
        line["total_ms"].is_number() && line["upstream_ms"].is_number(),
        "{line}"
    );
    // Every one of these requests went upstream: the SDK client's and the router's own time.
    assert!(line["sdk_us"].as_f64().is_some_and(|us| us > 0.0), "{line}");
    assert!(
        line["router_us"].as_f64().is_some_and(|us| us > 0.0),
        "{line}"
    );
}

#[tokio::test]
async fn json_logs_carry_the_request_span_and_no_prompt() {
    let mut router = Router::start("json", false);
    let mut client = router.client().await;

    let reply = client
        .converse(request(&format!("What is {SECRET}?"), "logs-unary-1"))
        .await
        .expect("answer");
    assert_eq!(
        reply.metadata().get("x-request-id").unwrap(),
        "logs-unary-1"
    );
    assert_eq!(reply.get_ref().request_id, "logs-unary-1");
    let line = router.finished("logs-unary-1");
    assert_span(&line, "logs-unary-1", "Converse", "ok");
    let decision = reply.get_ref().decision.as_ref().expect("decision");
    assert_eq!(line["span"]["threshold"].as_f64(), Some(decision.threshold));
    let latency = reply.get_ref().latency.as_ref().expect("latency");
    assert_eq!(line["sdk_us"].as_f64(), Some(latency.sdk_us), "{line}");
    assert_eq!(
        line["upstream_ms"].as_f64(),
        Some(latency.upstream_ms),
        "{line}"
    );
    assert_eq!(line["level"], "INFO");
    // What the request used and cost, on the line that also names its caller and tier.
    let usage = reply.get_ref().usage.as_ref().expect("usage");
    assert_eq!(
        line["span"]["input_tokens"].as_u64(),
        Some(u64::from(usage.input_tokens)),
        "{line}"
    );
    assert_eq!(
        line["span"]["output_tokens"].as_u64(),
        Some(u64::from(usage.output_tokens)),
        "{line}"
    );
    assert_eq!(
        line["span"]["cost_usd"].as_f64(),
        Some(reply.get_ref().cost_usd),
        "{line}"
    );

    let mut stream = client
        .converse_stream(request(&format!("Stream {SECRET}"), "logs-stream-1"))
        .await
        .expect("stream")
        .into_inner();
    while stream.message().await.expect("event").is_some() {}
    assert_span(
        &router.finished("logs-stream-1"),
        "logs-stream-1",
        "ConverseStream",
        "ok",
    );

    let status = client
        .converse(request(
            &format!("{SECRET} [sim:fail=ThrottlingException]"),
            "logs-throttled-1",
        ))
        .await
        .expect_err("throttled");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(
        status.metadata().get("x-request-id").unwrap(),
        "logs-throttled-1"
    );
    let line = router.finished("logs-throttled-1");
    assert_span(&line, "logs-throttled-1", "Converse", "resource_exhausted");
    assert_eq!(line["level"], "WARN");

    // Without an id the router makes one and echoes it.
    let reply = client.converse(common::ask("hello")).await.expect("answer");
    let generated = common::request_id(reply.metadata());
    assert_eq!(generated.len(), 32, "{generated}");
    router.finished(&generated);

    for line in &router.seen {
        assert!(!line.contains(SECRET), "prompt text logged: {line}");
    }
}

#[tokio::test]
async fn log_prompts_logs_the_last_user_turn() {
    let mut router = Router::start("json", true);
    let mut client = router.client().await;
    client
        .converse(request(&format!("What is {SECRET}?"), "logs-prompt-1"))
        .await
        .expect("answer");
    let line = router.wait_for("the prompt line", |line| line["message"] == "prompt");
    assert_eq!(line["prompt"], format!("What is {SECRET}?"));
    assert_eq!(line["span"]["request_id"], "logs-prompt-1");
    router.finished("logs-prompt-1");
}

#[tokio::test]
async fn json_logs_stay_valid_with_hostile_values() {
    let mut router = Router::start("json", true);
    let mut client = router.client().await;
    let prompt = forged_prompt();
    client
        .converse(request_from(&prompt, FORGED_ID, FORGED_CALLER))
        .await
        .expect("answer");
    // wait_for parses every line as JSON.
    let line = router.wait_for("the prompt line", |line| line["message"] == "prompt");
    assert_eq!(line["prompt"], prompt.as_str());
    assert_eq!(line["span"]["request_id"], FORGED_ID);
    let line = router.finished(FORGED_ID);
    assert_eq!(line["span"]["caller"], FORGED_CALLER);
    assert_eq!(line["span"]["outcome"], "ok");
}

/// One text log line taken apart: `TIME LEVEL span{k=v …}: target: message k=v …`.
#[derive(Debug)]
struct TextLine {
    message: String,
    /// The span's fields, then the event's, in order; quoted values unescaped.
    fields: Vec<(String, String)>,
}

impl TextLine {
    /// Every value of `key` on the line.
    fn all(&self, key: &str) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The one value of `key`.
    fn one(&self, key: &str) -> &str {
        match self.all(key).as_slice() {
            [value] => value,
            values => panic!("{key} has {} values: {self:?}", values.len()),
        }
    }
}

/// Parses a line the way a log reader would, or says why it cannot.
fn parse_text(line: &str) -> Result<TextLine, String> {
    let fail = |why: &str| Err(format!("{why}: {line:?}"));
    let Some((time, rest)) = line.split_once(' ') else {
        return fail("no timestamp");
    };
    if !time.starts_with(|c: char| c.is_ascii_digit()) || !time.ends_with('Z') {
        return fail("no timestamp");
    }
    let Some((level, mut rest)) = rest.trim_start().split_once(' ') else {
        return fail("no level");
    };
    if !matches!(level, "TRACE" | "DEBUG" | "INFO" | "WARN" | "ERROR") {
        return fail("no level");
    }
    let mut fields = Vec::new();
    // Spans: `name{fields}:`, directly one after another, then a space.
    loop {
        let name = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let Some(mut inside) = rest[name..].strip_prefix('{').filter(|_| name > 0) else {
            break;
        };
        loop {
            let Some((key, value, after)) = field(inside, true) else {
                return fail("a span field does not parse");
            };
            fields.push((key, value));
            match after.as_bytes().first() {
                Some(b' ') => inside = &after[1..],
                Some(b'}') => {
                    inside = &after[1..];
                    break;
                }
                _ => return fail("a span field runs on"),
            }
        }
        let Some(after) = inside.strip_prefix(':') else {
            return fail("a span's fields end before the span does");
        };
        rest = after;
        if let Some(after) = rest.strip_prefix(' ') {
            rest = after;
            break;
        }
    }
    let Some((_target, mut rest)) = rest.split_once(": ") else {
        return fail("no target");
    };
    let mut words = Vec::new();
    let mut in_fields = false;
    while !rest.is_empty() {
        if let Some((key, value, after)) = field(rest, false) {
            in_fields = true;
            fields.push((key, value));
            rest = match after.strip_prefix(' ') {
                Some(next) => next,
                None if after.is_empty() => after,
                None => return fail("an event field runs on"),
            };
        } else if in_fields {
            return fail("words after the fields");
        } else {
            let (word, next) = rest.split_once(' ').unwrap_or((rest, ""));
            words.push(word);
            rest = next;
        }
    }
    Ok(TextLine {
        message: words.join(" "),
        fields,
    })
}

/// `key=value` at the start of `text`: the key, the value (unescaped when quoted) and the rest.
fn field(text: &str, in_span: bool) -> Option<(String, String, &str)> {
    let key_len = text.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))?;
    if key_len == 0 || !text[key_len..].starts_with('=') {
        return None;
    }
    let key = text[..key_len].to_owned();
    let value = &text[key_len + 1..];
    let Some(quoted) = value.strip_prefix('"') else {
        let end = value
            .find(|c: char| c == ' ' || (in_span && c == '}'))
            .unwrap_or(value.len());
        return Some((key, value[..end].to_owned(), &value[end..]));
    };
    let mut out = String::new();
    let mut chars = quoted.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Some((key, out, &quoted[at + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                '"' => out.push('"'),
                '\\' => out.push('\\'),
                'u' => {
                    let (open, _) = chars.next()?;
                    let close = quoted[open..].find('}')? + open;
                    let code = u32::from_str_radix(&quoted[open + 1..close], 16).ok()?;
                    out.push(char::from_u32(code)?);
                    while chars.next()?.0 < close {}
                }
                _ => return None,
            },
            c => out.push(c),
        }
    }
    None
}

impl Router {
    /// A client of a router started with text logs.
    async fn text_client(&mut self) -> PromptRouterClient<Channel> {
        let serving = self.wait_for_line("start-up", |line| line.contains("prompt-router serving"));
        let serving = parse_text(&serving).unwrap();
        PromptRouterClient::connect(format!("http://{}", serving.one("grpc_addr")))
            .await
            .expect("connect")
    }

    /// The lines of the request with id `id` (those whose fields hold its id), once the line
    /// that ends it has been read.
    fn lines_of(&mut self, id: &str) -> Vec<TextLine> {
        let parse = |line: &String| parse_text(line).unwrap_or_else(|e| panic!("{e}"));
        let ends = |line: &str| {
            let line = parse(&line.to_owned());
            matches!(line.message.as_str(), "request finished" | "request failed")
                && line.all("request_id").contains(&id)
        };
        if !self.seen.iter().any(|line| ends(line)) {
            self.wait_for_line(id, ends);
        }
        self.seen
            .iter()
            .map(parse)
            .filter(|line| line.all("request_id").contains(&id))
            .collect()
    }
}

#[tokio::test]
async fn text_logs_cannot_be_forged() {
    let mut router = Router::start("text", true);
    let mut client = router.text_client().await;
    let prompt = forged_prompt();
    client
        .converse(request_from(&prompt, FORGED_ID, FORGED_CALLER))
        .await
        .expect("answer");
    let lines = router.lines_of(FORGED_ID);
    let messages: Vec<&str> = lines.iter().map(|l| l.message.as_str()).collect();
    assert_eq!(messages, ["prompt", "request finished"], "{lines:#?}");
    assert_eq!(lines[0].one("prompt"), prompt);
    for line in &lines {
        assert_eq!(line.one("request_id"), FORGED_ID, "{line:?}");
        assert_eq!(line.one("caller"), FORGED_CALLER, "{line:?}");
    }
    assert_eq!(lines[1].one("outcome"), "ok");
    // Every line the process wrote is a whole log line: the prompt's fake line, its escape
    // sequences and its hidden line break stayed inside the prompt field.
    for line in &router.seen {
        parse_text(line).unwrap_or_else(|e| panic!("{e}"));
        assert!(!line.contains(['\u{1b}', '\r', '\u{2028}']), "{line:?}");
    }
    let finished = router
        .seen
        .iter()
        .filter(|line| parse_text(line).unwrap().message == "request finished")
        .count();
    assert_eq!(finished, 1, "{:#?}", router.seen);
}

#[tokio::test]
async fn text_logs_name_each_field_once_with_its_final_value() {
    let mut router = Router::start("text", false);
    let mut client = router.text_client().await;
    // Haiku fails in both regions, so Sonnet answers: tier, model and attempts all change.
    client
        .converse(request(
            &format!("Hello [sim:fail=ServiceUnavailableException;model={HAIKU}]"),
            "logs-escalated-1",
        ))
        .await
        .expect("escalated answer");
    // A stream retried in the fallback region.
    let mut stream = client
        .converse_stream(request(
            "Hello [sim:fail=ThrottlingException;region=us-east-1]",
            "logs-stream-retried-1",
        ))
        .await
        .expect("stream")
        .into_inner();
    while stream.message().await.expect("event").is_some() {}
    // An upstream failure logged inside the request before its end.
    let status = client
        .converse(request(
            "Hello [sim:fail=AccessDeniedException]",
            "logs-internal-1",
        ))
        .await
        .expect_err("access denied");
    assert_eq!(status.code(), tonic::Code::Internal);

    for (id, tier, model, attempts, outcome) in [
        ("logs-escalated-1", "strong", SONNET_US, "3", "ok"),
        (
            "logs-stream-retried-1",
            "fast",
            "us.anthropic.claude-3-haiku-20240307-v1:0",
            "2",
            "ok",
        ),
        (
            "logs-internal-1",
            "fast",
            "us.anthropic.claude-3-haiku-20240307-v1:0",
            "1",
            "internal",
        ),
    ] {
        let lines = router.lines_of(id);
        for line in &lines {
            let mut keys: Vec<&str> = line.fields.iter().map(|(k, _)| k.as_str()).collect();
            keys.sort_unstable();
            let before = keys.len();
            keys.dedup();
            assert_eq!(keys.len(), before, "a field repeats: {line:?}");
        }
        let last = lines.last().unwrap();
        assert_eq!(last.one("tier"), tier, "{last:?}");
        assert_eq!(last.one("model"), model, "{last:?}");
        assert_eq!(last.one("attempts"), attempts, "{last:?}");
        assert_eq!(last.one("outcome"), outcome, "{last:?}");
        if outcome == "internal" {
            assert!(
                lines.iter().any(|l| l.message == "upstream call failed"),
                "{lines:#?}"
            );
        }
    }
}
