//! The binary's JSON logs: every request's line carries the request span (request id, caller,
//! tier, score, threshold and operating point, model, attempts, outcome) and the time split
//! (total, upstream, SDK client, router), and prompt text appears only with
//! `telemetry.log_prompts = true`.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::process::{Proc, serve_simulated};

use prompt_router::pb::{self, prompt_router_client::PromptRouterClient};
use serde_json::Value;
use tonic::transport::Channel;

/// A marker no log line may hold unless prompts are logged.
const SECRET: &str = "zebra-umbrella-4711";

/// `prompt-router serve --simulate --log-format json`, its stderr parsed line by line.
struct Router {
    process: Proc,
    seen: Vec<String>,
}

impl Router {
    fn start(log_prompts: bool) -> Self {
        let process = Proc::spawn(serve_simulated(&["--log-format", "json"]).env(
            "ROUTER__TELEMETRY__LOG_PROMPTS",
            if log_prompts { "true" } else { "false" },
        ));
        Self {
            process,
            seen: Vec::new(),
        }
    }

    /// Waits for the first JSON line `matches` accepts; every line read is kept in `seen`.
    fn wait_for(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.process.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!("no log line for {what}; saw:\n{}", self.seen.join("\n"))
            });
            self.seen.push(line.clone());
            let json: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            if matches(&json) {
                return json;
            }
        }
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
    let mut body = common::ask(prompt);
    body.routing = Some(pb::RoutingOptions {
        caller: "log-test".to_owned(),
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
    assert_eq!(line["outcome"], outcome, "{line}");
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
    let mut router = Router::start(false);
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
    let generated = reply
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(generated.len(), 32, "{generated}");
    router.finished(&generated);

    for line in &router.seen {
        assert!(!line.contains(SECRET), "prompt text logged: {line}");
    }
}

#[tokio::test]
async fn log_prompts_logs_the_last_user_turn() {
    let mut router = Router::start(true);
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
