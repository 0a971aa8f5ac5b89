//! The request at the edge: a `router.v1` [`pb::ConverseRequest`] into the router's own
//! [`ChatRequest`], taking ownership of its contents (no copies of the text). This side knows
//! the wire format (oneofs, enum numbers a client may send that we do not know); the rules a
//! request must keep are the domain's, in [`prompt_router_core::request`].

use std::collections::HashSet;

use crate::pb;
use prompt_router_core::{
    policy::RoutingMode,
    request::{
        Block, ChatRequest, Field, Image, ImageFormat, Inference, InvalidRequest, Limits, Role,
        Routing, ToolChoice, ToolResult, ToolResultBlock, ToolSpec, ToolUse, Tools, Turn,
        check_message_count, non_blank,
    },
};

/// Checks a gRPC request and converts it, naming the field of the first problem found.
pub fn chat_request(
    req: pb::ConverseRequest,
    limits: &Limits,
) -> Result<ChatRequest, InvalidRequest> {
    let system = req
        .system
        .into_iter()
        .enumerate()
        .map(|(i, text)| non_blank(&Field::indexed("system", i), text))
        .collect::<Result<Vec<_>, _>>()?;
    let messages = messages(req.messages, limits)?;
    let inference = inference(req.inference_config.unwrap_or_default())?;
    let tools = req.tool_config.map(|cfg| tools(cfg, limits)).transpose()?;
    let routing = routing(req.routing.unwrap_or_default())?;
    ChatRequest::new(messages, system, inference, tools, routing)
}

fn messages(raw: Vec<pb::Message>, limits: &Limits) -> Result<Vec<Turn>, InvalidRequest> {
    check_message_count(raw.len(), limits)?;
    let count = raw.len();
    let mut images = 0usize;
    let mut turns = Vec::with_capacity(count);
    for (i, message) in raw.into_iter().enumerate() {
        let field = Field::indexed("messages", i);
        let role = match pb::Role::try_from(message.role) {
            Ok(pb::Role::User) => Role::User,
            Ok(pb::Role::Assistant) => Role::Assistant,
            Ok(pb::Role::Unspecified) => {
                return Err(field
                    .child("role")
                    .invalid("must be ROLE_USER or ROLE_ASSISTANT"));
            }
            Err(_) => {
                return Err(field
                    .child("role")
                    .invalid(format!("unknown role {}", message.role)));
            }
        };
        Turn::check_position(&field, role, i, count, message.content.len())?;
        let content = message
            .content
            .into_iter()
            .enumerate()
            .map(|(j, block)| {
                content_block(&field.item("content", j), block, role, limits, &mut images)
            })
            .collect::<Result<Vec<_>, _>>()?;
        turns.push(Turn { role, content });
    }
    Ok(turns)
}

fn content_block(
    field: &Field<'_>,
    block: pb::ContentBlock,
    role: Role,
    limits: &Limits,
    images: &mut usize,
) -> Result<Block, InvalidRequest> {
    use pb::content_block::Block as B;
    match block.block {
        None => Err(field.invalid("empty content block: set text, image, tool_use or tool_result")),
        Some(B::Text(text)) => non_blank(&field.child("text"), text).map(Block::Text),
        Some(B::Image(img)) => image(&field.child("image"), img, limits, images).map(Block::Image),
        Some(B::ToolUse(call)) => ToolUse::new(
            &field.child("tool_use"),
            role,
            call.tool_use_id,
            call.name,
            &call.input_json,
        )
        .map(Block::ToolUse),
        Some(B::ToolResult(result)) => {
            let field = field.child("tool_result");
            ToolResult::check_position(&field, role, &result.tool_use_id)?;
            let is_error = match pb::ToolResultStatus::try_from(result.status) {
                Ok(pb::ToolResultStatus::Unspecified | pb::ToolResultStatus::Success) => false,
                Ok(pb::ToolResultStatus::Error) => true,
                Err(_) => {
                    return Err(field
                        .child("status")
                        .invalid(format!("unknown tool result status {}", result.status)));
                }
            };
            let content = result
                .content
                .into_iter()
                .enumerate()
                .map(|(k, c)| tool_result_block(&field.item("content", k), c, limits, images))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Block::ToolResult(ToolResult {
                tool_use_id: result.tool_use_id,
                content,
                is_error,
            }))
        }
    }
}

fn tool_result_block(
    field: &Field<'_>,
    block: pb::ToolResultContent,
    limits: &Limits,
    images: &mut usize,
) -> Result<ToolResultBlock, InvalidRequest> {
    use pb::tool_result_content::Block as B;
    match block.block {
        None => Err(field.invalid("empty block: set text, json or image")),
        Some(B::Text(text)) => Ok(ToolResultBlock::Text(text)),
        Some(B::Json(json)) => ToolResultBlock::json(&field.child("json"), &json),
        Some(B::Image(img)) => {
            image(&field.child("image"), img, limits, images).map(ToolResultBlock::Image)
        }
    }
}

fn image(
    field: &Field<'_>,
    img: pb::Image,
    limits: &Limits,
    images: &mut usize,
) -> Result<Image, InvalidRequest> {
    let format = match pb::ImageFormat::try_from(img.format) {
        Ok(pb::ImageFormat::Png) => ImageFormat::Png,
        Ok(pb::ImageFormat::Jpeg) => ImageFormat::Jpeg,
        Ok(pb::ImageFormat::Gif) => ImageFormat::Gif,
        Ok(pb::ImageFormat::Webp) => ImageFormat::Webp,
        Ok(pb::ImageFormat::Unspecified) => {
            return Err(field
                .child("format")
                .invalid("must be set (PNG, JPEG, GIF or WEBP)"));
        }
        Err(_) => {
            return Err(field
                .child("format")
                .invalid(format!("unknown image format {}", img.format)));
        }
    };
    Image::new(field, format, img.data, limits, images)
}

fn inference(cfg: pb::InferenceConfig) -> Result<Inference, InvalidRequest> {
    Inference {
        max_tokens: cfg.max_tokens,
        temperature: cfg.temperature,
        top_p: cfg.top_p,
        top_k: cfg.top_k,
        stop_sequences: cfg.stop_sequences,
    }
    .checked()
}

fn tools(cfg: pb::ToolConfig, limits: &Limits) -> Result<Tools, InvalidRequest> {
    Tools::check_count(cfg.tools.len(), limits)?;
    let mut names = HashSet::with_capacity(cfg.tools.len());
    let specs = cfg
        .tools
        .into_iter()
        .enumerate()
        .map(|(i, tool)| {
            ToolSpec::new(
                &Field::indexed("tool_config.tools", i),
                tool.name,
                tool.description,
                &tool.input_schema_json,
                &mut names,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let choice = cfg.tool_choice.unwrap_or_default();
    let choice = match pb::ToolChoiceMode::try_from(choice.mode) {
        Ok(pb::ToolChoiceMode::Unspecified | pb::ToolChoiceMode::Auto) => ToolChoice::Auto,
        Ok(pb::ToolChoiceMode::Any) => ToolChoice::Any,
        Ok(pb::ToolChoiceMode::Tool) => ToolChoice::Tool(choice.name),
        Err(_) => {
            return Err(InvalidRequest::new(
                "tool_config.tool_choice.mode",
                format_args!("unknown tool choice mode {}", choice.mode),
            ));
        }
    };
    Tools::new(specs, choice)
}

fn routing(cfg: pb::RoutingOptions) -> Result<Routing, InvalidRequest> {
    let mode = match pb::RoutingMode::try_from(cfg.mode) {
        Ok(pb::RoutingMode::Unspecified | pb::RoutingMode::Auto) => RoutingMode::Auto,
        Ok(pb::RoutingMode::ForceStrong) => RoutingMode::ForceStrong,
        Ok(pb::RoutingMode::ForceFast) => RoutingMode::ForceFast,
        Err(_) => {
            return Err(InvalidRequest::new(
                "routing.mode",
                format_args!("unknown routing mode {}", cfg.mode),
            ));
        }
    };
    Routing::new(mode, cfg.quality_bias, cfg.caller)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
    const OBJECT_SCHEMA: &str = r#"{"type":"object"}"#;

    fn user(text: &str) -> pb::Message {
        pb::Message {
            role: pb::Role::User as i32,
            content: vec![text_block(text)],
        }
    }

    fn text_block(text: &str) -> pb::ContentBlock {
        pb::ContentBlock {
            block: Some(pb::content_block::Block::Text(text.to_owned())),
        }
    }

    fn request(messages: Vec<pb::Message>) -> pb::ConverseRequest {
        pb::ConverseRequest {
            messages,
            ..Default::default()
        }
    }

    fn check(req: pb::ConverseRequest) -> Result<ChatRequest, InvalidRequest> {
        chat_request(req, &Limits::default())
    }

    fn image_request(format: i32, data: &[u8]) -> pb::ConverseRequest {
        request(vec![pb::Message {
            role: pb::Role::User as i32,
            content: vec![
                text_block("What is in this picture?"),
                pb::ContentBlock {
                    block: Some(pb::content_block::Block::Image(pb::Image {
                        format,
                        data: data.to_vec(),
                    })),
                },
            ],
        }])
    }

    #[test]
    fn a_plain_question_passes() {
        let chat = check(request(vec![user("Hello")])).expect("valid");
        assert_eq!(chat.messages.len(), 1);
        assert_eq!(chat.routing.mode, RoutingMode::Auto);
    }

    #[test]
    fn invalid_requests_name_the_problem() {
        let assistant = pb::Message {
            role: pb::Role::Assistant as i32,
            content: vec![text_block("Hi")],
        };
        let with_inference = |cfg: pb::InferenceConfig| pb::ConverseRequest {
            inference_config: Some(cfg),
            ..request(vec![user("Hello")])
        };
        let cases: Vec<(pb::ConverseRequest, &str)> = vec![
            (
                request(vec![]),
                "messages: at least one message is required",
            ),
            (
                request(vec![user("   ")]),
                "messages[0].content[0].text: must not be empty",
            ),
            (
                request(vec![user("a"), assistant.clone()]),
                "messages[1].role: the last message must be from the user",
            ),
            (
                request(vec![assistant, user("a")]),
                "messages[0].role: the conversation must start with a user message",
            ),
            (
                request(vec![user("a"), user("b")]),
                "messages[1].role: roles must alternate",
            ),
            (
                request(vec![pb::Message {
                    role: 7,
                    content: vec![text_block("x")],
                }]),
                "messages[0].role: unknown role 7",
            ),
            (
                request(vec![pb::Message {
                    role: pb::Role::User as i32,
                    content: vec![],
                }]),
                "messages[0].content: at least one content block is required",
            ),
            (
                with_inference(pb::InferenceConfig {
                    temperature: Some(1.5),
                    ..Default::default()
                }),
                "inference_config.temperature: 1.5 is outside [0, 1]",
            ),
            (
                with_inference(pb::InferenceConfig {
                    top_p: Some(-0.1),
                    ..Default::default()
                }),
                "inference_config.top_p: -0.1 is outside [0, 1]",
            ),
            (
                with_inference(pb::InferenceConfig {
                    max_tokens: Some(0),
                    ..Default::default()
                }),
                "inference_config.max_tokens: must be at least 1",
            ),
            (
                with_inference(pb::InferenceConfig {
                    top_k: Some(0),
                    ..Default::default()
                }),
                "inference_config.top_k: 0 is outside [1, 500]",
            ),
            (
                with_inference(pb::InferenceConfig {
                    stop_sequences: vec![String::new()],
                    ..Default::default()
                }),
                "inference_config.stop_sequences[0]: must not be empty",
            ),
            (
                image_request(pb::ImageFormat::Png as i32, b"not a png at all"),
                "messages[0].content[1].image.data: the bytes are not a PNG image",
            ),
            (
                image_request(pb::ImageFormat::Jpeg as i32, PNG),
                "messages[0].content[1].image.data: the bytes are not a JPEG image",
            ),
            (
                image_request(9, PNG),
                "messages[0].content[1].image.format: unknown image format 9",
            ),
            (
                image_request(0, PNG),
                "messages[0].content[1].image.format: must be set",
            ),
            (
                image_request(pb::ImageFormat::Png as i32, b""),
                "messages[0].content[1].image.data: must not be empty",
            ),
            (
                pb::ConverseRequest {
                    routing: Some(pb::RoutingOptions {
                        mode: 9,
                        ..Default::default()
                    }),
                    ..request(vec![user("Hello")])
                },
                "routing.mode: unknown routing mode 9",
            ),
            (
                pb::ConverseRequest {
                    routing: Some(pb::RoutingOptions {
                        quality_bias: 2.0,
                        ..Default::default()
                    }),
                    ..request(vec![user("Hello")])
                },
                "routing.quality_bias: 2 is outside [-1, 1]",
            ),
            (
                pb::ConverseRequest {
                    routing: Some(pb::RoutingOptions {
                        quality_bias: f64::NAN,
                        ..Default::default()
                    }),
                    ..request(vec![user("Hello")])
                },
                "routing.quality_bias: NaN is outside [-1, 1]",
            ),
            (
                pb::ConverseRequest {
                    system: vec![String::new()],
                    ..request(vec![user("Hello")])
                },
                "system[0]: must not be empty",
            ),
            (
                pb::ConverseRequest {
                    tool_config: Some(pb::ToolConfig {
                        tools: vec![pb::Tool {
                            name: "get weather".into(),
                            description: String::new(),
                            input_schema_json: OBJECT_SCHEMA.into(),
                        }],
                        tool_choice: None,
                    }),
                    ..request(vec![user("Hello")])
                },
                "tool_config.tools[0].name: \"get weather\" is not 1 to 64 letters",
            ),
            (
                pb::ConverseRequest {
                    tool_config: Some(pb::ToolConfig {
                        tools: vec![pb::Tool {
                            name: "weather".into(),
                            description: String::new(),
                            input_schema_json: "[1]".into(),
                        }],
                        tool_choice: None,
                    }),
                    ..request(vec![user("Hello")])
                },
                "tool_config.tools[0].input_schema_json: must be a JSON object",
            ),
        ];
        for (req, expected) in cases {
            let err = check(req).expect_err(expected);
            assert!(
                err.to_string().starts_with(expected),
                "expected {expected:?}, got {:?}",
                err.to_string()
            );
        }
    }

    #[test]
    fn images_are_counted_and_limited() {
        let chat = check(image_request(pb::ImageFormat::Png as i32, PNG)).expect("valid");
        assert_eq!(chat.image_count(), 1);
        let limits = Limits {
            max_images: 0,
            ..Limits::default()
        };
        let err = chat_request(image_request(pb::ImageFormat::Png as i32, PNG), &limits)
            .expect_err("limit");
        assert!(err.to_string().contains("more than 0 images"), "{err}");
    }

    #[test]
    fn tools_are_limited_and_unique() {
        let tool = |name: &str| pb::Tool {
            name: name.to_owned(),
            description: String::new(),
            input_schema_json: OBJECT_SCHEMA.to_owned(),
        };
        let with_tools = |tools: Vec<pb::Tool>| pb::ConverseRequest {
            tool_config: Some(pb::ToolConfig {
                tools,
                tool_choice: None,
            }),
            ..request(vec![user("Hello")])
        };
        let err = check(with_tools(vec![tool("a"), tool("b"), tool("a")])).expect_err("duplicate");
        assert_eq!(
            err.to_string(),
            "tool_config.tools[2].name: duplicate tool name \"a\""
        );
        let limits = Limits {
            max_tools: 2,
            ..Limits::default()
        };
        let err = chat_request(with_tools(vec![tool("a"), tool("b"), tool("c")]), &limits)
            .expect_err("limit");
        assert_eq!(
            err.to_string(),
            "tool_config.tools: 3 tools exceed the limit of 2"
        );
    }

    fn tool_use(id: &str) -> pb::ContentBlock {
        pb::ContentBlock {
            block: Some(pb::content_block::Block::ToolUse(pb::ToolUse {
                tool_use_id: id.to_owned(),
                name: "search".to_owned(),
                input_json: "{}".to_owned(),
            })),
        }
    }

    fn tool_result(id: &str) -> pb::ContentBlock {
        pb::ContentBlock {
            block: Some(pb::content_block::Block::ToolResult(pb::ToolResult {
                tool_use_id: id.to_owned(),
                content: vec![pb::ToolResultContent {
                    block: Some(pb::tool_result_content::Block::Text("3 hits".to_owned())),
                }],
                status: 0,
            })),
        }
    }

    fn turn(role: pb::Role, content: Vec<pb::ContentBlock>) -> pb::Message {
        pb::Message {
            role: role as i32,
            content,
        }
    }

    /// A conversation with `turns`, declaring one tool whose input schema is `schema`, or
    /// none.
    fn with_tools(turns: Vec<pb::Message>, schema: Option<&str>) -> pb::ConverseRequest {
        pb::ConverseRequest {
            tool_config: schema.map(|schema| pb::ToolConfig {
                tools: vec![pb::Tool {
                    name: "search".to_owned(),
                    description: String::new(),
                    input_schema_json: schema.to_owned(),
                }],
                tool_choice: None,
            }),
            ..request(turns)
        }
    }

    #[test]
    fn tool_blocks_are_checked_against_each_other_and_the_tool_config() {
        use pb::Role::{Assistant as A, User as U};
        let schema = Some(OBJECT_SCHEMA);
        let cases: Vec<(pb::ConverseRequest, &str)> = vec![
            (
                with_tools(
                    vec![
                        user("Find flights"),
                        turn(A, vec![tool_use("t1")]),
                        turn(U, vec![tool_result("t1")]),
                    ],
                    None,
                ),
                "messages[1].content[0].tool_use: tool_config must be set when the messages hold",
            ),
            (
                with_tools(vec![turn(U, vec![tool_result("t1")])], None),
                "messages[0].content[0].tool_result: tool_config must be set",
            ),
            (
                with_tools(vec![turn(U, vec![tool_result("t1")])], schema),
                "messages[0].content[0].tool_result.tool_use_id: \"t1\" matches no tool_use in the previous message",
            ),
            (
                with_tools(
                    vec![
                        user("Find flights"),
                        turn(A, vec![tool_use("t1")]),
                        turn(U, vec![tool_result("t2")]),
                    ],
                    schema,
                ),
                "messages[2].content[0].tool_result.tool_use_id: \"t2\" matches no tool_use",
            ),
            (
                // A call answered once cannot be answered again two turns later.
                with_tools(
                    vec![
                        user("Find flights"),
                        turn(A, vec![tool_use("t1")]),
                        turn(U, vec![tool_result("t1")]),
                        turn(A, vec![text_block("Which day?")]),
                        turn(U, vec![tool_result("t1")]),
                    ],
                    schema,
                ),
                "messages[4].content[0].tool_result.tool_use_id: \"t1\" matches no tool_use",
            ),
            (
                with_tools(
                    vec![
                        user("Find flights"),
                        turn(
                            A,
                            vec![text_block("Two searches"), tool_use("t1"), tool_use("t2")],
                        ),
                        turn(U, vec![tool_result("t1")]),
                    ],
                    schema,
                ),
                "messages[1].content[2].tool_use.tool_use_id: \"t2\" has no tool_result in the next message",
            ),
            (
                with_tools(
                    vec![
                        user("Find flights"),
                        turn(A, vec![tool_use("t1")]),
                        user("never mind"),
                    ],
                    schema,
                ),
                "messages[1].content[0].tool_use.tool_use_id: \"t1\" has no tool_result",
            ),
            (
                with_tools(
                    vec![
                        user("Find flights"),
                        turn(A, vec![tool_use("t1")]),
                        turn(U, vec![text_block("Here:"), tool_result("t1")]),
                    ],
                    schema,
                ),
                "messages[2].content[1].tool_result: tool results must come before the message's other blocks",
            ),
            (
                with_tools(
                    vec![
                        user("Find flights"),
                        turn(A, vec![tool_use("call 1")]),
                        turn(U, vec![tool_result("call 1")]),
                    ],
                    schema,
                ),
                "messages[1].content[0].tool_use.tool_use_id: \"call 1\" is not 1 to 64 letters",
            ),
            (
                with_tools(
                    vec![
                        user("Find flights"),
                        turn(A, vec![tool_use(&"t".repeat(65))]),
                        turn(U, vec![tool_result("t1")]),
                    ],
                    schema,
                ),
                "messages[1].content[0].tool_use.tool_use_id: \"ttt",
            ),
            (
                with_tools(vec![user("Find flights")], Some("{}")),
                "tool_config.tools[0].input_schema_json: must be a JSON Schema whose top-level \"type\" is \"object\"",
            ),
            (
                with_tools(vec![user("Find flights")], Some(r#"{"type":"string"}"#)),
                "tool_config.tools[0].input_schema_json: must be a JSON Schema whose top-level",
            ),
            (
                with_tools(
                    vec![user("Find flights")],
                    Some(r#"{"type":"object","properties":["q"]}"#),
                ),
                "tool_config.tools[0].input_schema_json: \"properties\" must be an object whose values are schemas",
            ),
            (
                with_tools(
                    vec![user("Find flights")],
                    Some(r#"{"type":"object","properties":{"q":"string"}}"#),
                ),
                "tool_config.tools[0].input_schema_json: \"properties\" must be",
            ),
            (
                with_tools(
                    vec![user("Find flights")],
                    Some(r#"{"type":"object","required":"q"}"#),
                ),
                "tool_config.tools[0].input_schema_json: \"required\" must be an array of property names",
            ),
        ];
        for (req, expected) in cases {
            let err = check(req).expect_err(expected);
            assert!(
                err.to_string().starts_with(expected),
                "expected {expected:?}, got {:?}",
                err.to_string()
            );
        }
        let mut bad_name = with_tools(
            vec![
                user("Find flights"),
                turn(A, vec![tool_use("t1")]),
                turn(U, vec![tool_result("t1")]),
            ],
            schema,
        );
        if let Some(pb::content_block::Block::ToolUse(call)) =
            &mut bad_name.messages[1].content[0].block
        {
            call.name = "web search".to_owned();
        }
        assert_eq!(
            check(bad_name).expect_err("bad name").to_string(),
            "messages[1].content[0].tool_use.name: \"web search\" is not 1 to 64 letters, digits, '_' or '-'"
        );
    }

    #[test]
    fn valid_tool_conversations_pass() {
        use pb::Role::{Assistant as A, User as U};
        let schemas = [
            OBJECT_SCHEMA,
            r#"{"type":"object","properties":{"q":{"type":"string"},"any":true},"required":["q"]}"#,
            r#"{"type":"object","properties":{},"additionalProperties":false}"#,
        ];
        for schema in schemas {
            let req = with_tools(
                vec![
                    user("Find flights, then hotels"),
                    turn(
                        A,
                        vec![
                            text_block("Searching both"),
                            tool_use("tooluse_AbC123"),
                            tool_use("toolu_01.x:y-z"),
                        ],
                    ),
                    // Results in any order, then text.
                    turn(
                        U,
                        vec![
                            tool_result("toolu_01.x:y-z"),
                            tool_result("tooluse_AbC123"),
                            text_block("Cheapest first, please"),
                        ],
                    ),
                    turn(A, vec![tool_use("t3")]),
                    turn(U, vec![tool_result("t3")]),
                ],
                Some(schema),
            );
            let chat = check(req).unwrap_or_else(|e| panic!("{schema}: {e}"));
            assert_eq!(chat.messages.len(), 5);
        }
    }

    #[test]
    fn nested_fields_are_named_in_full() {
        let req = request(vec![pb::Message {
            role: pb::Role::User as i32,
            content: vec![
                text_block("Here is the result"),
                pb::ContentBlock {
                    block: Some(pb::content_block::Block::ToolResult(pb::ToolResult {
                        tool_use_id: "t1".to_owned(),
                        content: vec![pb::ToolResultContent {
                            block: Some(pb::tool_result_content::Block::Json("{".to_owned())),
                        }],
                        status: 0,
                    })),
                },
            ],
        }]);
        let err = check(req).expect_err("bad json");
        assert!(
            err.to_string()
                .starts_with("messages[0].content[1].tool_result.content[0].json: not valid JSON"),
            "{}",
            err
        );
    }

    #[test]
    fn the_field_and_the_problem_come_apart() {
        let req = pb::ConverseRequest {
            inference_config: Some(pb::InferenceConfig {
                temperature: Some(1.5),
                ..Default::default()
            }),
            ..request(vec![user("Hello")])
        };
        let err = check(req).expect_err("temperature");
        assert_eq!(err.field(), "inference_config.temperature");
        assert_eq!(err.message(), "1.5 is outside [0, 1]");
        let err = check(image_request(pb::ImageFormat::Gif as i32, PNG)).expect_err("bytes");
        assert_eq!(err.field(), "messages[0].content[1].image.data");
    }
}
