//! Random requests never panic: validation either accepts a request that keeps the invariants
//! the rest of the router relies on (tool blocks included: declared tools, results that answer
//! the calls just before them), or refuses it with INVALID_ARGUMENT naming a field; and the real
//! server answers every random request with OK or INVALID_ARGUMENT, nothing else, and never
//! passes on a request that Bedrock (the simulator, which checks tool blocks as Bedrock does)
//! refuses.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::HashSet;

use prompt_router::{pb, server::convert::chat_request};
use prompt_router_core::request::{Block, ChatRequest, Limits, Role};
use proptest::prelude::*;

fn enum_value() -> impl Strategy<Value = i32> {
    prop_oneof![0..5i32, any::<i32>()]
}

fn float() -> impl Strategy<Value = f32> {
    prop_oneof![0.0f32..=1.0, any::<f32>()]
}

fn json_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("{}".to_owned()),
        Just(r#"{"type":"object","properties":{"q":{"type":"string"}}}"#.to_owned()),
        Just(r#"{"type":"object","required":["q"]}"#.to_owned()),
        Just(r#"{"type":"object","properties":{"q":"string"}}"#.to_owned()),
        Just(r#"{"type":"string"}"#.to_owned()),
        Just("[1,2]".to_owned()),
        ".{0,12}",
    ]
}

/// Tool-use ids: a few that match each other, and random ones, some not of Bedrock's shape.
fn tool_use_id() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("t1".to_owned()),
        Just("t2".to_owned()),
        Just("tooluse_x.y:z".to_owned()),
        "[a-z0-9 .]{0,6}",
    ]
}

fn tool_name() -> impl Strategy<Value = String> {
    prop_oneof![Just("search".to_owned()), "[a-z_ -]{0,6}"]
}

fn tool_use_block(tool_use_id: String) -> pb::ContentBlock {
    pb::ContentBlock {
        block: Some(pb::content_block::Block::ToolUse(pb::ToolUse {
            tool_use_id,
            name: "search".to_owned(),
            input_json: r#"{"q":"x"}"#.to_owned(),
        })),
    }
}

fn tool_result_block(tool_use_id: String) -> pb::ContentBlock {
    pb::ContentBlock {
        block: Some(pb::content_block::Block::ToolResult(pb::ToolResult {
            tool_use_id,
            content: vec![pb::ToolResultContent {
                block: Some(pb::tool_result_content::Block::Text("3 hits".to_owned())),
            }],
            status: 0,
        })),
    }
}

fn text(t: &str) -> pb::ContentBlock {
    pb::ContentBlock {
        block: Some(pb::content_block::Block::Text(t.to_owned())),
    }
}

/// An agent loop, close to valid: an ask, an assistant turn calling some tools, a user turn
/// answering some calls (maybe others, maybe after text), and maybe a second round. Random
/// blocks rarely line up like this, so most tool-linked conversations come from here.
fn tool_turns() -> impl Strategy<Value = Vec<pb::Message>> {
    let ids = || {
        prop::sample::subsequence(vec!["t1", "t2", "t3"], 0..=3)
            .prop_shuffle()
            .prop_map(|ids| ids.into_iter().map(str::to_owned).collect::<Vec<_>>())
    };
    let round = (
        ids(),
        prop::option::weighted(0.25, ids()),
        prop::bool::weighted(0.2),
        any::<bool>(),
    )
        .prop_map(|(calls, others, text_first, text_after)| {
            // Mostly every call answered, in reverse order; else some other set of ids.
            let results = others.unwrap_or_else(|| calls.iter().rev().cloned().collect());
            let mut call_turn = vec![text("Let me look.")];
            call_turn.extend(calls.into_iter().map(tool_use_block));
            let mut answer: Vec<pb::ContentBlock> = Vec::new();
            if text_first {
                answer.push(text("Here:"));
            }
            answer.extend(results.into_iter().map(tool_result_block));
            if text_after || answer.is_empty() {
                answer.push(text("And now?"));
            }
            [
                pb::Message {
                    role: pb::Role::Assistant as i32,
                    content: call_turn,
                },
                pb::Message {
                    role: pb::Role::User as i32,
                    content: answer,
                },
            ]
        });
    prop::collection::vec(round, 1..3).prop_map(|rounds| {
        let mut turns = vec![pb::Message {
            role: pb::Role::User as i32,
            content: vec![text("Find a flight")],
        }];
        turns.extend(rounds.into_iter().flatten());
        turns
    })
}

/// An agent loop with, mostly, one declared tool and nothing else random.
fn tool_request() -> impl Strategy<Value = pb::ConverseRequest> {
    let schema = prop_oneof![
        3 => Just(r#"{"type":"object","properties":{"q":{"type":"string"}},"required":["q"]}"#.to_owned()),
        1 => json_text(),
    ];
    (tool_turns(), prop::option::weighted(0.9, schema)).prop_map(|(messages, schema)| {
        pb::ConverseRequest {
            messages,
            tool_config: schema.map(|input_schema_json| pb::ToolConfig {
                tools: vec![pb::Tool {
                    name: "search".to_owned(),
                    description: "Search flights".to_owned(),
                    input_schema_json,
                }],
                tool_choice: None,
            }),
            ..Default::default()
        }
    })
}

/// The tool invariants of an accepted request.
fn tool_links_hold(chat: &ChatRequest) -> Result<(), TestCaseError> {
    let mut calls: HashSet<&str> = HashSet::new();
    for turn in &chat.messages {
        let uses: Vec<&str> = turn
            .content
            .iter()
            .filter_map(|b| match b {
                Block::ToolUse(u) => Some(u.id.as_str()),
                _ => None,
            })
            .collect();
        let results: Vec<&str> = turn
            .content
            .iter()
            .filter_map(|b| match b {
                Block::ToolResult(r) => Some(r.tool_use_id.as_str()),
                _ => None,
            })
            .collect();
        if !uses.is_empty() || !results.is_empty() {
            prop_assert!(chat.tools.is_some(), "tool blocks without tool_config");
        }
        if turn.role == Role::User {
            prop_assert!(results.iter().all(|id| calls.contains(id)), "an unknown id");
            prop_assert!(
                calls.iter().all(|id| results.contains(id)),
                "an unanswered call"
            );
            let leading = turn
                .content
                .iter()
                .take_while(|b| matches!(b, Block::ToolResult(_)))
                .count();
            prop_assert_eq!(leading, results.len(), "results after other blocks");
        }
        calls = uses.into_iter().collect();
    }
    for spec in chat.tools.iter().flat_map(|t| &t.specs) {
        prop_assert_eq!(&spec.input_schema["type"], "object");
    }
    Ok(())
}

fn image() -> impl Strategy<Value = pb::Image> {
    let data = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..24),
        Just(b"\x89PNG\r\n\x1a\n\0\0".to_vec()),
        Just(vec![0xFF, 0xD8, 0xFF, 0xE0]),
    ];
    (enum_value(), data).prop_map(|(format, data)| pb::Image { format, data })
}

fn block() -> impl Strategy<Value = pb::ContentBlock> {
    use pb::content_block::Block;
    let tool_result = (
        tool_use_id(),
        prop::collection::vec(".{0,8}", 0..2),
        json_text(),
        enum_value(),
    )
        .prop_map(|(tool_use_id, texts, json, status)| pb::ToolResult {
            tool_use_id,
            content: texts
                .into_iter()
                .map(|t| pb::ToolResultContent {
                    block: Some(pb::tool_result_content::Block::Text(t)),
                })
                .chain([pb::ToolResultContent {
                    block: Some(pb::tool_result_content::Block::Json(json)),
                }])
                .collect(),
            status,
        });
    prop::option::of(prop_oneof![
        ".{0,24}".prop_map(Block::Text),
        image().prop_map(Block::Image),
        (tool_use_id(), tool_name(), json_text()).prop_map(|(tool_use_id, name, input_json)| {
            Block::ToolUse(pb::ToolUse {
                tool_use_id,
                name,
                input_json,
            })
        }),
        tool_result.prop_map(Block::ToolResult),
    ])
    .prop_map(|block| pb::ContentBlock { block })
}

fn request() -> impl Strategy<Value = pb::ConverseRequest> {
    prop_oneof![random_request(), tool_request()]
}

fn random_request() -> impl Strategy<Value = pb::ConverseRequest> {
    let message = (
        prop_oneof![1..3i32, enum_value()],
        prop::collection::vec(block(), 0..3),
    )
        .prop_map(|(role, content)| pb::Message { role, content });
    let inference = (
        prop::option::of(prop_oneof![1..9000u32, any::<u32>()]),
        prop::option::of(float()),
        prop::option::of(float()),
        prop::option::of(any::<u32>()),
        prop::collection::vec(".{0,3}", 0..3),
    )
        .prop_map(|(max_tokens, temperature, top_p, top_k, stop_sequences)| {
            pb::InferenceConfig {
                max_tokens,
                temperature,
                top_p,
                top_k,
                stop_sequences,
            }
        });
    let tool =
        (tool_name(), ".{0,8}", json_text()).prop_map(|(name, description, input_schema_json)| {
            pb::Tool {
                name,
                description,
                input_schema_json,
            }
        });
    let tools = (
        prop::collection::vec(tool, 0..3),
        prop::option::of(
            (enum_value(), "[a-z_]{0,6}").prop_map(|(mode, name)| pb::ToolChoice { mode, name }),
        ),
    )
        .prop_map(|(tools, tool_choice)| pb::ToolConfig { tools, tool_choice });
    let routing = (
        enum_value(),
        prop_oneof![-1.0f64..=1.0, any::<f64>()],
        ".{0,70}",
    )
        .prop_map(|(mode, quality_bias, caller)| pb::RoutingOptions {
            mode,
            quality_bias,
            caller,
        });
    (
        prop::collection::vec(message, 0..5),
        prop::collection::vec(".{0,10}", 0..3),
        prop::option::of(inference),
        prop::option::of(tools),
        prop::option::of(routing),
    )
        .prop_map(
            |(messages, system, inference_config, tool_config, routing)| pb::ConverseRequest {
                messages,
                system,
                inference_config,
                tool_config,
                routing,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn validation_never_panics_and_keeps_its_invariants(req in request()) {
        match chat_request(req, &Limits::default()) {
            Ok(chat) => {
                prop_assert!(!chat.messages.is_empty());
                prop_assert_eq!(chat.messages.first().map(|t| t.role), Some(Role::User));
                prop_assert_eq!(chat.messages.last().map(|t| t.role), Some(Role::User));
                prop_assert!(chat.messages.windows(2).all(|w| w[0].role != w[1].role));
                prop_assert!(chat.messages.iter().all(|t| !t.content.is_empty()));
                prop_assert!(chat.inference.temperature.is_none_or(|t| (0.0..=1.0).contains(&t)));
                prop_assert!(chat.inference.top_p.is_none_or(|p| (0.0..=1.0).contains(&p)));
                prop_assert!(chat.inference.max_tokens.is_none_or(|m| m >= 1));
                prop_assert!((-1.0..=1.0).contains(&chat.routing.quality_bias));
                tool_links_hold(&chat)?;
            }
            Err(err) => prop_assert!(!err.field().is_empty(), "the error names a field: {err}"),
        }
    }
}

#[tokio::test]
async fn the_server_answers_random_requests_with_ok_or_invalid_argument() {
    use proptest::{strategy::ValueTree, test_runner::TestRunner};
    let mut router = common::start().await;
    let mut runner = TestRunner::deterministic();
    let strategy = request();
    let mut answered = 0;
    let mut tools_answered = 0;
    for _ in 0..200 {
        let req = strategy.new_tree(&mut runner).unwrap().current();
        let tool_blocks = req.messages.iter().flat_map(|m| &m.content).any(|b| {
            matches!(
                b.block,
                Some(
                    pb::content_block::Block::ToolUse(_) | pb::content_block::Block::ToolResult(_)
                )
            )
        });
        match router.client.converse(req.clone()).await {
            Ok(_) => {
                answered += 1;
                tools_answered += usize::from(tool_blocks);
            }
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
                // What validation lets through, Bedrock accepts.
                assert!(
                    !status.message().contains("Bedrock refused the request"),
                    "passed on a request Bedrock refuses (tool blocks: {tool_blocks}): {status:?}\n{req:?}"
                );
            }
        }
    }
    assert!(tools_answered > 0, "no tool conversation got through");
    // Random requests are mostly invalid; the point is that nothing else comes back.
    assert!(
        router
            .client
            .converse(common::ask("still alive?"))
            .await
            .is_ok(),
        "after {answered} answered"
    );
}
