//! Random requests never panic: validation either accepts a request that keeps the invariants
//! the rest of the router relies on, or refuses it with INVALID_ARGUMENT naming a field; and the
//! real server answers every random request with OK or INVALID_ARGUMENT, nothing else.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use prompt_router::{
    pb,
    request::{ChatRequest, Limits, Role},
};
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
        Just("[1,2]".to_owned()),
        ".{0,12}",
    ]
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
        "[a-z0-9]{0,6}",
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
        ("[a-z0-9]{0,6}", "[a-z_]{0,6}", json_text()).prop_map(
            |(tool_use_id, name, input_json)| Block::ToolUse(pb::ToolUse {
                tool_use_id,
                name,
                input_json
            })
        ),
        tool_result.prop_map(Block::ToolResult),
    ])
    .prop_map(|block| pb::ContentBlock { block })
}

fn request() -> impl Strategy<Value = pb::ConverseRequest> {
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
    let tool = ("[a-z_ -]{0,8}", ".{0,8}", json_text()).prop_map(
        |(name, description, input_schema_json)| pb::Tool {
            name,
            description,
            input_schema_json,
        },
    );
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
        match ChatRequest::from_pb(req, &Limits::default()) {
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
            }
            Err(err) => prop_assert!(err.0.contains(": "), "the message names a field: {}", err.0),
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
    for _ in 0..200 {
        let req = strategy.new_tree(&mut runner).unwrap().current();
        match router.client.converse(req).await {
            Ok(_) => answered += 1,
            Err(status) => assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}"),
        }
    }
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
