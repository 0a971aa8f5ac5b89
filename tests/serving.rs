//! The serving path end to end: a real tonic client → the router on 127.0.0.1:0 → the real
//! aws-sdk-bedrockruntime client → the Bedrock simulator on loopback.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::{PNG_1X1, ask, ask_forced, assistant, reply_text, start, text, user};
use prompt_router::pb;
use tonic::Code;

const SONNET_US: &str = "us.anthropic.claude-3-5-sonnet-20241022-v2:0";
const HAIKU_US: &str = "us.anthropic.claude-3-haiku-20240307-v1:0";

/// Hand-priced: nano-dollars per token of the default catalog.
fn expected_cost(model: &str, usage: &pb::Usage) -> f64 {
    let (input, output) = if model == SONNET_US {
        (3_000, 15_000)
    } else {
        (250, 1_250)
    };
    (u64::from(usage.input_tokens) * input + u64::from(usage.output_tokens) * output) as f64 / 1e9
}

#[tokio::test]
async fn converse_answers_with_decision_cost_and_latency() {
    let mut router = start().await;
    let mut request = tonic::Request::new(ask("What is the capital of France?"));
    request
        .metadata_mut()
        .insert("x-request-id", "req-abc-123".parse().unwrap());
    let response = router.client.converse(request).await.expect("answer");
    assert_eq!(
        response.metadata().get("x-request-id").unwrap(),
        "req-abc-123"
    );
    let reply = response.into_inner();

    let decision = reply.decision.as_ref().expect("decision");
    assert_eq!(
        decision.tier,
        pb::Tier::Fast as i32,
        "a trivial question goes fast: {decision:?}"
    );
    assert_eq!(decision.model_id, HAIKU_US);
    assert!((0.0..=1.0).contains(&decision.score));
    assert!(decision.score < decision.threshold);
    assert!(!decision.reasons.is_empty());
    assert_eq!(decision.basis, pb::DecisionBasis::Score as i32);

    // The simulator names the model that answered, so this proves which one was called.
    let text = reply_text(&reply);
    assert!(text.starts_with(&format!("[{HAIKU_US}]")), "{text}");
    assert_eq!(reply.stop_reason, "end_turn");
    let usage = reply.usage.expect("usage");
    assert!(usage.input_tokens > 0 && usage.output_tokens > 0);
    assert_eq!(usage.total_tokens, usage.input_tokens + usage.output_tokens);

    assert!(
        (reply.cost_usd - expected_cost(HAIKU_US, &usage)).abs() < 1e-12,
        "{}",
        reply.cost_usd
    );
    assert!((reply.baseline_cost_usd - expected_cost(SONNET_US, &usage)).abs() < 1e-12);
    assert!(reply.baseline_cost_usd > reply.cost_usd * 10.0);
    let latency = reply.latency.expect("latency");
    assert!(latency.upstream_ms > 0.0 && latency.overhead_us > 0.0);
    assert!(latency.total_ms * 1e3 >= latency.upstream_ms * 1e3 + latency.overhead_us - 1.0);
    assert_eq!(reply.attempts, 1);
    assert_eq!(reply.request_id, "req-abc-123");

    let received = router.sim().received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].model_id, HAIKU_US);
    assert_eq!(received[0].signing_service.as_deref(), Some("bedrock"));
    assert_eq!(received[0].source_region.as_deref(), Some("us-east-1"));
}

#[tokio::test]
async fn a_generated_request_id_is_echoed() {
    let mut router = start().await;
    let response = router
        .client
        .converse(ask("Hi there"))
        .await
        .expect("answer");
    let header = common::request_id(response.metadata());
    assert_eq!(header.len(), 32);
    assert_eq!(response.into_inner().request_id, header);
}

#[tokio::test]
async fn route_decides_without_calling_a_model() {
    let mut router = start().await;
    let hard = "Prove that there are infinitely many primes p such that p ≡ 3 (mod 4). \
                Then derive an asymptotic bound for their counting function, step by step, \
                and explain why Dirichlet's theorem implies the result. "
        .repeat(6);
    let easy = router
        .client
        .route(ask("hi"))
        .await
        .expect("route")
        .into_inner()
        .decision
        .unwrap();
    let strong = router
        .client
        .route(ask(&hard))
        .await
        .expect("route")
        .into_inner()
        .decision
        .unwrap();
    assert_eq!(easy.tier, pb::Tier::Fast as i32);
    assert!(
        strong.score > easy.score,
        "{} <= {}",
        strong.score,
        easy.score
    );
    let forced = router
        .client
        .route(ask_forced("hi", pb::RoutingMode::ForceStrong))
        .await
        .expect("route")
        .into_inner()
        .decision
        .unwrap();
    assert_eq!(
        (forced.tier, forced.model_id.as_str()),
        (pb::Tier::Strong as i32, SONNET_US)
    );
    assert_eq!(forced.basis, pb::DecisionBasis::Forced as i32);
    assert_eq!(
        router.sim().stats().received,
        0,
        "Route must not call Bedrock"
    );
}

#[tokio::test]
async fn forced_and_capability_routing_call_the_right_model() {
    let mut router = start().await;
    let strong = router
        .client
        .converse(ask_forced("hi", pb::RoutingMode::ForceStrong))
        .await
        .unwrap()
        .into_inner();
    assert!(reply_text(&strong).starts_with(&format!("[{SONNET_US}]")));
    assert_eq!(strong.cost_usd, strong.baseline_cost_usd);

    // Haiku cannot write 5,000 tokens; the router must not send it there even when forced.
    let long = pb::ConverseRequest {
        inference_config: Some(pb::InferenceConfig {
            max_tokens: Some(5_000),
            ..Default::default()
        }),
        ..ask_forced("hi", pb::RoutingMode::ForceFast)
    };
    let reply = router.client.converse(long).await.unwrap().into_inner();
    let decision = reply.decision.unwrap();
    assert_eq!(
        (decision.tier, decision.basis),
        (
            pb::Tier::Strong as i32,
            pb::DecisionBasis::Capability as i32
        )
    );
    assert_eq!(
        router.sim().received()[1].body["inferenceConfig"]["maxTokens"],
        5_000
    );
}

#[tokio::test]
async fn every_inference_parameter_reaches_bedrock() {
    let mut router = start().await;
    let request = pb::ConverseRequest {
        messages: vec![
            user("Name three colours."),
            assistant("Red, green, blue."),
            user("Three more, please."),
        ],
        system: vec!["You are terse.".to_owned(), "Answer in English.".to_owned()],
        inference_config: Some(pb::InferenceConfig {
            max_tokens: Some(64),
            temperature: Some(0.25),
            top_p: Some(0.5),
            top_k: Some(40),
            stop_sequences: vec!["END".to_owned(), "STOP".to_owned()],
        }),
        tool_config: None,
        routing: Some(pb::RoutingOptions {
            mode: pb::RoutingMode::ForceFast as i32,
            quality_bias: 0.0,
            caller: "billing".into(),
        }),
    };
    let reply = router
        .client
        .converse(request)
        .await
        .expect("answer")
        .into_inner();
    assert!(reply.usage.unwrap().output_tokens <= 64);

    let body = &router.sim().received()[0].body;
    assert_eq!(body["inferenceConfig"]["maxTokens"], 64);
    assert_eq!(body["inferenceConfig"]["temperature"], 0.25);
    assert_eq!(body["inferenceConfig"]["topP"], 0.5);
    assert_eq!(
        body["inferenceConfig"]["stopSequences"],
        serde_json::json!(["END", "STOP"])
    );
    assert_eq!(body["additionalModelRequestFields"]["top_k"], 40);
    assert_eq!(
        body["system"],
        serde_json::json!([{"text": "You are terse."}, {"text": "Answer in English."}])
    );
    let roles: Vec<&str> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "user"]);
    assert_eq!(
        body["messages"][2]["content"][0]["text"],
        "Three more, please."
    );
}

#[tokio::test]
async fn max_tokens_cuts_the_answer() {
    let mut router = start().await;
    let request = pb::ConverseRequest {
        inference_config: Some(pb::InferenceConfig {
            max_tokens: Some(5),
            ..Default::default()
        }),
        ..ask("Tell me a long story about the sea.")
    };
    let reply = router.client.converse(request).await.unwrap().into_inner();
    assert_eq!(reply.stop_reason, "max_tokens");
    assert_eq!(reply.usage.unwrap().output_tokens, 5);
}

#[tokio::test]
async fn images_arrive_as_bytes() {
    use base64::Engine as _;
    let mut router = start().await;
    let request = pb::ConverseRequest {
        messages: vec![pb::Message {
            role: pb::Role::User as i32,
            content: vec![
                text("What colour is this pixel?"),
                pb::ContentBlock {
                    block: Some(pb::content_block::Block::Image(pb::Image {
                        format: pb::ImageFormat::Png as i32,
                        data: PNG_1X1.to_vec(),
                    })),
                },
            ],
        }],
        ..Default::default()
    };
    let reply = router
        .client
        .converse(request)
        .await
        .expect("answer")
        .into_inner();
    assert!(!reply_text(&reply).is_empty());
    let image = &router.sim().received()[0].body["messages"][0]["content"][1]["image"];
    assert_eq!(image["format"], "png");
    let sent = base64::engine::general_purpose::STANDARD
        .decode(image["source"]["bytes"].as_str().unwrap())
        .unwrap();
    assert_eq!(sent, PNG_1X1);
}

#[tokio::test]
async fn tool_use_round_trip() {
    let mut router = start().await;
    let tools = pb::ToolConfig {
        tools: vec![pb::Tool {
            name: "get_weather".into(),
            description: "Current weather for a city".into(),
            input_schema_json:
                r#"{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}"#
                    .into(),
        }],
        tool_choice: Some(pb::ToolChoice {
            mode: pb::ToolChoiceMode::Tool as i32,
            name: "get_weather".into(),
        }),
    };
    let first = pb::ConverseRequest {
        tool_config: Some(tools.clone()),
        ..ask("What's the weather in Paris?")
    };
    let reply = router
        .client
        .converse(first)
        .await
        .expect("answer")
        .into_inner();
    assert_eq!(reply.stop_reason, "tool_use");
    let message = reply.message.unwrap();
    let tool_use = message
        .content
        .iter()
        .find_map(|b| match &b.block {
            Some(pb::content_block::Block::ToolUse(t)) => Some(t.clone()),
            _ => None,
        })
        .expect("a tool call");
    assert_eq!(tool_use.name, "get_weather");
    let input: serde_json::Value = serde_json::from_str(&tool_use.input_json).unwrap();
    assert!(input["city"].is_string(), "{input}");
    let sent_tools = &router.sim().received()[0].body["toolConfig"];
    assert_eq!(sent_tools["tools"][0]["toolSpec"]["name"], "get_weather");
    assert_eq!(sent_tools["toolChoice"]["tool"]["name"], "get_weather");

    let follow_up = pb::ConverseRequest {
        messages: vec![
            user("What's the weather in Paris?"),
            message,
            pb::Message {
                role: pb::Role::User as i32,
                content: vec![pb::ContentBlock {
                    block: Some(pb::content_block::Block::ToolResult(pb::ToolResult {
                        tool_use_id: tool_use.tool_use_id.clone(),
                        content: vec![pb::ToolResultContent {
                            block: Some(pb::tool_result_content::Block::Json(
                                r#"{"celsius":18}"#.into(),
                            )),
                        }],
                        status: pb::ToolResultStatus::Success as i32,
                    })),
                }],
            },
        ],
        tool_config: Some(pb::ToolConfig {
            tool_choice: None,
            ..tools
        }),
        ..Default::default()
    };
    let reply = router
        .client
        .converse(follow_up)
        .await
        .expect("answer")
        .into_inner();
    assert_eq!(reply.stop_reason, "end_turn");
    let body = &router.sim().received()[1].body;
    assert_eq!(
        body["messages"][1]["content"][0]["toolUse"]["toolUseId"],
        tool_use.tool_use_id.as_str()
    );
    assert_eq!(
        body["messages"][2]["content"][0]["toolResult"]["content"][0]["json"]["celsius"],
        18
    );
}

#[tokio::test]
async fn stream_events_arrive_in_order_with_final_usage() {
    use pb::converse_stream_event::Event;
    let mut router = start().await;
    let question = "Explain briefly why the sky is blue.";
    let (events, error) = router.stream(ask(question)).await;
    assert!(error.is_none(), "{error:?}");

    let Some(Event::Decision(decision)) = events.first() else {
        panic!("decision first: {events:?}")
    };
    let Some(Event::Metadata(metadata)) = events.last() else {
        panic!("metadata last: {events:?}")
    };
    let Some(Event::Stop(stop)) = events.get(events.len() - 2) else {
        panic!("stop before metadata")
    };
    assert_eq!(stop.stop_reason, "end_turn");
    let deltas: Vec<&str> = events[1..events.len() - 2]
        .iter()
        .map(|e| match e {
            Event::Delta(pb::Delta {
                delta: Some(pb::delta::Delta::Text(t)),
                ..
            }) => t.as_str(),
            other => panic!("only text deltas in between: {other:?}"),
        })
        .collect();
    let streamed: String = deltas.concat();
    assert!(
        streamed.starts_with(&format!("[{}]", decision.model_id)),
        "{streamed}"
    );

    let usage = metadata.usage.expect("usage");
    assert_eq!(
        usage.output_tokens as usize,
        deltas.len(),
        "the simulator sends one delta per token"
    );
    assert!((metadata.cost_usd - expected_cost(&decision.model_id, &usage)).abs() < 1e-12);
    let latency = metadata.latency.expect("latency");
    assert!(
        latency.time_to_first_token_ms > 0.0 && latency.time_to_first_token_ms <= latency.total_ms
    );
    assert_eq!(metadata.attempts, 1);

    // The same prompt through Converse gives the same text and usage: one code path.
    let whole = router
        .client
        .converse(ask(question))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply_text(&whole), streamed);
    assert_eq!(whole.usage.unwrap(), usage);
}

#[tokio::test]
async fn streamed_tool_calls_carry_start_and_input() {
    use pb::converse_stream_event::Event;
    let mut router = start().await;
    let request = pb::ConverseRequest {
        tool_config: Some(pb::ToolConfig {
            tools: vec![pb::Tool {
                name: "lookup".into(),
                description: String::new(),
                input_schema_json: r#"{"type":"object","properties":{"q":{"type":"string"}}}"#
                    .into(),
            }],
            tool_choice: Some(pb::ToolChoice {
                mode: pb::ToolChoiceMode::Any as i32,
                name: String::new(),
            }),
        }),
        ..ask("Look something up")
    };
    let (events, error) = router.stream(request).await;
    assert!(error.is_none(), "{error:?}");
    let start = events.iter().find_map(|e| match e {
        Event::ContentBlockStart(s) => s.tool_use.clone(),
        _ => None,
    });
    assert_eq!(start.expect("tool start").name, "lookup");
    let input: String = events
        .iter()
        .filter_map(|e| match e {
            Event::Delta(pb::Delta {
                delta: Some(pb::delta::Delta::ToolUseInput(j)),
                ..
            }) => Some(j.as_str()),
            _ => None,
        })
        .collect();
    let parsed: serde_json::Value = serde_json::from_str(&input).expect("the fragments form JSON");
    assert!(parsed.is_object());
    let Some(Event::Stop(stop)) = events.get(events.len() - 2) else {
        panic!("stop")
    };
    assert_eq!(stop.stop_reason, "tool_use");
}

const ERROR_TABLE: &[(&str, Code)] = &[
    ("ThrottlingException", Code::ResourceExhausted),
    ("ModelNotReadyException", Code::Unavailable),
    ("ServiceUnavailableException", Code::Unavailable),
    ("InternalServerException", Code::Unavailable),
    ("ModelTimeoutException", Code::DeadlineExceeded),
    ("ValidationException", Code::InvalidArgument),
    ("AccessDeniedException", Code::Internal),
    ("ResourceNotFoundException", Code::Internal),
    ("ModelErrorException", Code::Internal),
];

#[tokio::test]
async fn every_bedrock_error_kind_maps_to_its_grpc_code() {
    // One attempt and no ejection: this test is about the mapping, not the resilience rules.
    let mut router = common::start_with(|config| {
        config.resilience.max_attempts = 1;
        config.resilience.breaker_failures = 1_000;
    })
    .await;
    for (kind, code) in ERROR_TABLE {
        let prompt = format!("Hello [sim:fail={kind}]");
        let status = router.client.converse(ask(&prompt)).await.expect_err(kind);
        assert_eq!(status.code(), *code, "{kind}: {status:?}");
        assert!(!status.message().is_empty(), "{kind}");
        if *code == Code::Internal {
            assert!(
                status.message().contains("request id"),
                "{kind}: {}",
                status.message()
            );
        } else {
            assert!(
                status.message().contains(kind),
                "{kind}: {}",
                status.message()
            );
        }
        assert!(status.metadata().get("x-request-id").is_some());

        let stream_status = match router.client.converse_stream(ask(&prompt)).await {
            Err(status) => status,
            Ok(_) => panic!("{kind}: a refused stream must fail before any event"),
        };
        assert_eq!(
            stream_status.code(),
            *code,
            "stream {kind}: {stream_status:?}"
        );
    }
}

#[tokio::test]
async fn mid_stream_exceptions_end_the_stream_with_a_status() {
    use pb::converse_stream_event::Event;
    let mut router = start().await;
    for (kind, code) in [
        ("throttlingException", Code::ResourceExhausted),
        ("serviceUnavailableException", Code::Unavailable),
        ("internalServerException", Code::Unavailable),
        ("validationException", Code::InvalidArgument),
        ("modelStreamErrorException", Code::Internal),
    ] {
        let (events, error) = router
            .stream(ask(&format!("Go on [sim:fail={kind};after=3]")))
            .await;
        let status = error.unwrap_or_else(|| panic!("{kind}: the stream must end in an error"));
        assert_eq!(status.code(), code, "{kind}: {status:?}");
        assert!(
            status.message().contains("after 3 text deltas"),
            "{kind}: {}",
            status.message()
        );
        assert!(matches!(events.first(), Some(Event::Decision(_))));
        assert_eq!(common::delta_count(&events), 3, "{kind}");
        assert!(
            !events.iter().any(|e| matches!(e, Event::Metadata(_))),
            "{kind}: no metadata after a failure"
        );
    }
}

#[tokio::test]
async fn bedrock_validation_messages_reach_the_caller() {
    let mut router = start_with_strong("anthropic.claude-3-5-sonnet-20241022-v2:0").await;
    // The base Sonnet v2 id cannot be invoked on demand; Bedrock says so and the caller hears it.
    let status = router
        .client
        .converse(ask_forced("hi", pb::RoutingMode::ForceStrong))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("on-demand throughput"),
        "{}",
        status.message()
    );
}

async fn start_with_strong(base_id: &str) -> common::TestRouter {
    let id = base_id.to_owned();
    common::start_with(move |config| {
        config.models.strong.id = id;
        config.models.strong.on_demand = true;
    })
    .await
}

/// The status `rpc` (Converse, ConverseStream or Route) refuses `request` with.
async fn refusal(
    router: &mut common::TestRouter,
    rpc: &str,
    request: &pb::ConverseRequest,
) -> tonic::Status {
    match rpc {
        "Converse" => router.client.converse(request.clone()).await.map(drop),
        "ConverseStream" => router
            .client
            .converse_stream(request.clone())
            .await
            .map(drop),
        _ => router.client.route(request.clone()).await.map(drop),
    }
    .expect_err(rpc)
}

#[tokio::test]
async fn invalid_requests_are_refused_before_bedrock() {
    let mut router = start().await;
    let with_inference = |cfg: pb::InferenceConfig| pb::ConverseRequest {
        inference_config: Some(cfg),
        ..ask("Hello")
    };
    let image = |format: i32, data: &[u8]| pb::ConverseRequest {
        messages: vec![pb::Message {
            role: pb::Role::User as i32,
            content: vec![pb::ContentBlock {
                block: Some(pb::content_block::Block::Image(pb::Image {
                    format,
                    data: data.to_vec(),
                })),
            }],
        }],
        ..Default::default()
    };
    let tool_use = |id: &str| pb::ContentBlock {
        block: Some(pb::content_block::Block::ToolUse(pb::ToolUse {
            tool_use_id: id.to_owned(),
            name: "get_weather".to_owned(),
            input_json: r#"{"city":"Paris"}"#.to_owned(),
        })),
    };
    let tool_result = |id: &str| pb::ContentBlock {
        block: Some(pb::content_block::Block::ToolResult(pb::ToolResult {
            tool_use_id: id.to_owned(),
            content: vec![pb::ToolResultContent {
                block: Some(pb::tool_result_content::Block::Json(
                    r#"{"celsius":18}"#.to_owned(),
                )),
            }],
            status: pb::ToolResultStatus::Success as i32,
        })),
    };
    let weather = |schema: &str| pb::ToolConfig {
        tools: vec![pb::Tool {
            name: "get_weather".to_owned(),
            description: "Current weather for a city".to_owned(),
            input_schema_json: schema.to_owned(),
        }],
        tool_choice: None,
    };
    let tool_loop =
        |call: &str, answer: &str, tool_config: Option<pb::ToolConfig>| pb::ConverseRequest {
            messages: vec![
                user("Weather in Paris?"),
                pb::Message {
                    role: pb::Role::Assistant as i32,
                    content: vec![tool_use(call)],
                },
                pb::Message {
                    role: pb::Role::User as i32,
                    content: vec![tool_result(answer)],
                },
            ],
            tool_config,
            ..Default::default()
        };
    let object = r#"{"type":"object","properties":{"city":{"type":"string"}}}"#;
    let cases: Vec<(&str, pb::ConverseRequest, &str)> = vec![
        (
            "tool blocks without tool_config",
            tool_loop("t1", "t1", None),
            "messages[1].content[0].tool_use: tool_config must be set when the messages hold tool_use or tool_result blocks",
        ),
        (
            "tool result for an unknown call",
            tool_loop("t1", "t2", Some(weather(object))),
            "messages[2].content[0].tool_result.tool_use_id: \"t2\" matches no tool_use in the previous message",
        ),
        (
            "input schema not an object schema",
            tool_loop(
                "t1",
                "t1",
                Some(weather(r#"{"properties":{"city":{"type":"string"}}}"#)),
            ),
            "tool_config.tools[0].input_schema_json: must be a JSON Schema whose top-level \"type\" is \"object\"",
        ),
        (
            "no messages",
            pb::ConverseRequest::default(),
            "messages: at least one message is required",
        ),
        (
            "empty text",
            ask(""),
            "messages[0].content[0].text: must not be empty",
        ),
        (
            "last not user",
            pb::ConverseRequest {
                messages: vec![user("a"), assistant("b")],
                ..Default::default()
            },
            "the last message must be from the user",
        ),
        (
            "temperature",
            with_inference(pb::InferenceConfig {
                temperature: Some(1.5),
                ..Default::default()
            }),
            "inference_config.temperature: 1.5 is outside [0, 1]",
        ),
        (
            "top_p",
            with_inference(pb::InferenceConfig {
                top_p: Some(-0.1),
                ..Default::default()
            }),
            "inference_config.top_p: -0.1 is outside [0, 1]",
        ),
        (
            "max_tokens 0",
            with_inference(pb::InferenceConfig {
                max_tokens: Some(0),
                ..Default::default()
            }),
            "inference_config.max_tokens: must be at least 1",
        ),
        (
            "max_tokens over every limit",
            with_inference(pb::InferenceConfig {
                max_tokens: Some(9_000),
                ..Default::default()
            }),
            "inference_config.max_tokens: 9000 exceeds",
        ),
        (
            "bad image bytes",
            image(pb::ImageFormat::Png as i32, b"GIF89a not a png"),
            "image.data: the bytes are not a PNG image",
        ),
        (
            "unknown image format",
            image(42, PNG_1X1),
            "image.format: unknown image format 42",
        ),
        (
            "unknown role",
            pb::ConverseRequest {
                messages: vec![pb::Message {
                    role: 5,
                    content: vec![text("x")],
                }],
                ..Default::default()
            },
            "messages[0].role: unknown role 5",
        ),
        (
            "unknown mode",
            pb::ConverseRequest {
                routing: Some(pb::RoutingOptions {
                    mode: 17,
                    ..Default::default()
                }),
                ..ask("x")
            },
            "routing.mode: unknown routing mode 17",
        ),
    ];
    for (name, request, expected) in cases {
        for rpc in ["Converse", "ConverseStream", "Route"] {
            let status = refusal(&mut router, rpc, &request).await;
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "{rpc} {name}: {status:?}"
            );
            assert!(
                status.message().contains(expected),
                "{rpc} {name}: {}",
                status.message()
            );
        }
    }
    assert_eq!(
        router.sim().stats().received,
        0,
        "no invalid request may reach Bedrock"
    );
}

#[tokio::test]
async fn invalid_requests_carry_the_field_as_a_bad_request_violation() {
    use tonic_types::StatusExt as _;
    let mut router = start().await;
    let request = pb::ConverseRequest {
        inference_config: Some(pb::InferenceConfig {
            temperature: Some(1.5),
            ..Default::default()
        }),
        ..ask("Hello")
    };
    let unservable = pb::ConverseRequest {
        inference_config: Some(pb::InferenceConfig {
            max_tokens: Some(9_000),
            ..Default::default()
        }),
        ..ask("Hello")
    };
    let cases = [
        (
            request,
            "inference_config.temperature",
            "1.5 is outside [0, 1]",
        ),
        (
            unservable,
            "inference_config.max_tokens",
            "9000 exceeds the largest output limit of the configured models (8192 tokens)",
        ),
    ];
    for (request, field, description) in cases {
        for rpc in ["Converse", "ConverseStream", "Route"] {
            let status = refusal(&mut router, rpc, &request).await;
            assert_eq!(status.code(), Code::InvalidArgument, "{rpc}: {status:?}");
            assert_eq!(status.message(), format!("{field}: {description}"), "{rpc}");
            let bad_request = status
                .get_details_bad_request()
                .unwrap_or_else(|| panic!("{rpc}: no BadRequest details in {status:?}"));
            assert_eq!(bad_request.field_violations.len(), 1, "{rpc}");
            assert_eq!(bad_request.field_violations[0].field, field, "{rpc}");
            assert_eq!(
                bad_request.field_violations[0].description, description,
                "{rpc}"
            );
        }
    }
}

#[tokio::test]
async fn a_stalled_stream_ends_with_a_clear_status() {
    let mut router = common::start_with(|config| config.bedrock.stream_idle_timeout_ms = 200).await;
    let started = std::time::Instant::now();
    let (events, error) = router.stream(ask("Keep going [sim:stall;after=2]")).await;
    let status = error.expect("the stall must end the stream");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("after 2 text deltas"),
        "{}",
        status.message()
    );
    assert_eq!(common::delta_count(&events), 2);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // The router dropped the upstream stream, closing its connection.
    router.until_upstream_in_flight(0).await;
    assert_eq!(router.sim().stats().cancelled, 1);
}

#[tokio::test]
async fn reflection_lists_every_service_in_v1_and_v1alpha() {
    use tonic_reflection::pb::{v1, v1alpha};
    let router = start().await;
    let url = format!("http://{}", router.running.grpc_addr);
    let expected = [
        "router.v1.PromptRouter",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];

    let channel = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut replies = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("v1 reflection is served")
        .into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        replies.message().await.unwrap().unwrap().message_response
    else {
        panic!("a service list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for name in expected {
        assert!(
            names.iter().any(|n| n == name),
            "v1 lacks {name}: {names:?}"
        );
    }

    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let requests = [
        v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
            ),
        },
        // What `grpcurl describe grpc.reflection.v1.ServerReflection` asks.
        v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                    "grpc.reflection.v1.ServerReflection".to_owned(),
                ),
            ),
        },
    ];
    let mut replies = client
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .expect("v1alpha reflection is served")
        .into_inner();
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        replies.message().await.unwrap().unwrap().message_response
    else {
        panic!("a service list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for name in expected {
        assert!(
            names.iter().any(|n| n == name),
            "v1alpha lacks {name}: {names:?}"
        );
    }
    let described = replies.message().await.unwrap().unwrap().message_response;
    assert!(
        matches!(
            described,
            Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(_))
        ),
        "{described:?}"
    );
}
