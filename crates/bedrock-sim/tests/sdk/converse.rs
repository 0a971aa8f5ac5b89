//! Converse: answers, parameters arriving, tools, Bedrock's validation, model ids and regions.

use std::collections::HashMap;

use aws_sdk_bedrockruntime::operation::RequestId;
use aws_sdk_bedrockruntime::operation::converse::ConverseError;
use aws_sdk_bedrockruntime::primitives::Blob;
use aws_sdk_bedrockruntime::types::{
    AnyToolChoice, ContentBlock, ConversationRole, ConverseOutput, ImageBlock, ImageFormat,
    ImageSource, InferenceConfiguration, Message, StopReason, SystemContentBlock, Tool,
    ToolConfiguration, ToolInputSchema, ToolResultBlock, ToolResultContentBlock, ToolSpecification,
};
use aws_smithy_types::{Document, Number};
use bedrock_sim::{Operation, Outcome, count_tokens};
use serde_json::json;

use crate::*;

fn validation_message(err: aws_sdk_bedrockruntime::error::SdkError<ConverseError>) -> String {
    match err.into_service_error() {
        ConverseError::ValidationException(e) => e.message().unwrap_or_default().to_owned(),
        other => panic!("expected ValidationException, got {other:?}"),
    }
}

#[tokio::test]
async fn text_answer_names_the_model_and_usage_matches() {
    let h = sim().await;
    let c = client(&h);
    let out = c
        .converse()
        .model_id(HAIKU)
        .messages(user("What is a monad?"))
        .send()
        .await
        .unwrap();
    let text = text_of(out.output());
    assert!(text.starts_with(&format!("[{HAIKU}] ")), "{text}");
    assert_eq!(out.stop_reason(), &StopReason::EndTurn);
    let usage = out.usage().unwrap();
    assert_eq!(usage.output_tokens() as u32, count_tokens(&text));
    // Input = role "user" (1 token) + the text.
    assert_eq!(
        usage.input_tokens() as u32,
        1 + count_tokens("What is a monad?")
    );
    assert_eq!(
        usage.total_tokens(),
        usage.input_tokens() + usage.output_tokens()
    );
    let body_tokens = count_tokens(&text) - count_tokens(&format!("[{HAIKU}]"));
    assert!((20..=600 + 1).contains(&body_tokens), "{body_tokens}");

    // Deterministic in (model, prompt); another model answers differently and says so.
    let again = c
        .converse()
        .model_id(HAIKU)
        .messages(user("What is a monad?"))
        .send()
        .await
        .unwrap();
    assert_eq!(text_of(again.output()), text);
    let sonnet = c
        .converse()
        .model_id(SONNET)
        .messages(user("What is a monad?"))
        .send()
        .await
        .unwrap();
    assert!(text_of(sonnet.output()).starts_with(&format!("[{SONNET}] ")));

    let rec = h.received();
    assert_eq!(rec.len(), 3);
    assert_eq!(Some(rec[0].request_id.as_str()), out.request_id());
    assert_eq!(rec[0].operation, Operation::Converse);
    assert_eq!(rec[0].model_id, HAIKU);
    assert!(matches!(rec[0].outcome, Outcome::Answered { .. }));
    assert_eq!(h.stats().answered, 3);
}

#[tokio::test]
async fn image_arrives_and_is_counted() {
    let h = sim().await;
    let png: Vec<u8> = (0..1500u32).map(|i| i as u8).collect();
    let msg = Message::builder()
        .role(ConversationRole::User)
        .content(ContentBlock::Text("Describe this".into()))
        .content(ContentBlock::Image(
            ImageBlock::builder()
                .format(ImageFormat::Png)
                .source(ImageSource::Bytes(Blob::new(png.clone())))
                .build()
                .unwrap(),
        ))
        .build()
        .unwrap();
    let out = client(&h)
        .converse()
        .model_id(HAIKU)
        .messages(msg)
        .send()
        .await
        .unwrap();
    // role + text + ceil(1500 / 750) image tokens.
    assert_eq!(
        out.usage().unwrap().input_tokens() as u32,
        1 + count_tokens("Describe this") + 2
    );
    let body = &h.received()[0].body;
    let image = &body["messages"][0]["content"][1]["image"];
    assert_eq!(image["format"], "png");
    use base64::Engine as _;
    let sent = base64::engine::general_purpose::STANDARD
        .decode(image["source"]["bytes"].as_str().unwrap())
        .unwrap();
    assert_eq!(sent, png);
}

#[tokio::test]
async fn every_inference_parameter_arrives() {
    let h = sim().await;
    let out = client(&h)
        .converse()
        .model_id(SONNET)
        .system(SystemContentBlock::Text("You are terse.".into()))
        .messages(user("Hello"))
        .messages(assistant("Hi."))
        .messages(user("Explain borrow checking"))
        .inference_config(
            InferenceConfiguration::builder()
                .max_tokens(256)
                .temperature(0.2)
                .top_p(0.9)
                .stop_sequences("END")
                .build(),
        )
        .additional_model_request_fields(Document::Object(HashMap::from([(
            "top_k".to_owned(),
            Document::Number(Number::PosInt(40)),
        )])))
        .send()
        .await
        .unwrap();
    assert!(out.usage().unwrap().output_tokens() <= 256);
    let rec = &h.received()[0];
    let b = &rec.body;
    assert_eq!(b["system"], json!([{ "text": "You are terse." }]));
    assert_eq!(b["messages"].as_array().unwrap().len(), 3);
    assert_eq!(b["messages"][1]["role"], "assistant");
    let ic = &b["inferenceConfig"];
    assert_eq!(ic["maxTokens"], 256);
    assert!((ic["temperature"].as_f64().unwrap() - 0.2).abs() < 1e-6);
    assert!((ic["topP"].as_f64().unwrap() - 0.9).abs() < 1e-6);
    assert_eq!(ic["stopSequences"], json!(["END"]));
    assert_eq!(b["additionalModelRequestFields"], json!({ "top_k": 40 }));
    assert_eq!(rec.source_region.as_deref(), Some("us-east-1"));
    assert_eq!(rec.signing_service.as_deref(), Some("bedrock"));
    assert!(!rec.bearer_auth);
}

#[tokio::test]
async fn max_tokens_and_stop_sequences_cut_the_answer() {
    let h = sim().await;
    let c = client(&h);
    let prompt = "Tell me a long story about compilers";
    let cut = c
        .converse()
        .model_id(HAIKU)
        .messages(user(prompt))
        .inference_config(InferenceConfiguration::builder().max_tokens(25).build())
        .send()
        .await
        .unwrap();
    assert_eq!(cut.stop_reason(), &StopReason::MaxTokens);
    assert_eq!(cut.usage().unwrap().output_tokens(), 25);
    assert_eq!(count_tokens(&text_of(cut.output())), 25);

    let full = text_of(
        c.converse()
            .model_id(HAIKU)
            .messages(user(prompt))
            .send()
            .await
            .unwrap()
            .output(),
    );
    let body = &full[HAIKU.len() + 3..];
    let stop = body.split(' ').nth(4).unwrap().to_owned();
    let stopped = c
        .converse()
        .model_id(HAIKU)
        .messages(user(prompt))
        .inference_config(
            InferenceConfiguration::builder()
                .stop_sequences(stop.clone())
                .build(),
        )
        .send()
        .await
        .unwrap();
    let text = text_of(stopped.output());
    assert_eq!(stopped.stop_reason(), &StopReason::StopSequence);
    assert!(
        full.starts_with(&text) && !text.contains(&stop),
        "{text} / {stop}"
    );
    assert_eq!(
        stopped.usage().unwrap().output_tokens() as u32,
        count_tokens(&text)
    );
}

pub(crate) fn weather_tool() -> Tool {
    let schema = Document::Object(HashMap::from([
        ("type".to_owned(), Document::String("object".into())),
        (
            "properties".to_owned(),
            Document::Object(HashMap::from([
                (
                    "city".to_owned(),
                    Document::Object(HashMap::from([(
                        "type".to_owned(),
                        Document::String("string".into()),
                    )])),
                ),
                (
                    "days".to_owned(),
                    Document::Object(HashMap::from([(
                        "type".to_owned(),
                        Document::String("integer".into()),
                    )])),
                ),
            ])),
        ),
        (
            "required".to_owned(),
            Document::Array(vec![Document::String("city".into())]),
        ),
    ]));
    Tool::ToolSpec(
        ToolSpecification::builder()
            .name("get_weather")
            .description("Weather forecast for a city")
            .input_schema(ToolInputSchema::Json(schema))
            .build()
            .unwrap(),
    )
}

#[tokio::test]
async fn tool_use_round_trip() {
    let h = sim().await;
    let c = client(&h);
    let tools = ToolConfiguration::builder()
        .tools(weather_tool())
        .tool_choice(aws_sdk_bedrockruntime::types::ToolChoice::Any(
            AnyToolChoice::builder().build(),
        ))
        .build()
        .unwrap();
    let first = c
        .converse()
        .model_id(SONNET)
        .messages(user("Will it rain in Lisbon?"))
        .tool_config(tools.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(first.stop_reason(), &StopReason::ToolUse);
    let Some(ConverseOutput::Message(reply)) = first.output() else {
        panic!()
    };
    assert_eq!(
        reply.content().len(),
        1,
        "forced tool use has no text block"
    );
    let tool_use = reply.content()[0].as_tool_use().unwrap().clone();
    assert_eq!(tool_use.name(), "get_weather");
    assert!(tool_use.tool_use_id().starts_with("tooluse_"));
    let Document::Object(input) = tool_use.input() else {
        panic!("{:?}", tool_use.input())
    };
    assert!(matches!(input.get("city"), Some(Document::String(_))));
    assert!(matches!(input.get("days"), Some(Document::Number(_))));

    let result = Message::builder()
        .role(ConversationRole::User)
        .content(ContentBlock::ToolResult(
            ToolResultBlock::builder()
                .tool_use_id(tool_use.tool_use_id())
                .content(ToolResultContentBlock::Text("Sunny, 24C".into()))
                .build()
                .unwrap(),
        ))
        .build()
        .unwrap();
    let auto = ToolConfiguration::builder()
        .tools(weather_tool())
        .build()
        .unwrap();
    let second = c
        .converse()
        .model_id(SONNET)
        .messages(user("Will it rain in Lisbon? Use get_weather."))
        .messages(reply.clone())
        .messages(result)
        .tool_config(auto.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(second.stop_reason(), &StopReason::EndTurn);
    assert!(text_of(second.output()).starts_with(&format!("[{SONNET}]")));
    let sent = &h.received()[1].body["messages"][2]["content"][0]["toolResult"];
    assert_eq!(sent["toolUseId"], tool_use.tool_use_id());

    // auto + a prompt naming the tool: a short text block, then the call.
    let named = c
        .converse()
        .model_id(HAIKU)
        .messages(user("Call get_weather for Oslo"))
        .tool_config(auto)
        .send()
        .await
        .unwrap();
    assert_eq!(named.stop_reason(), &StopReason::ToolUse);
    let Some(ConverseOutput::Message(m)) = named.output() else {
        panic!()
    };
    assert!(m.content()[0].is_text() && m.content()[1].is_tool_use());
}

#[tokio::test]
async fn bedrock_validation_errors() {
    let h = sim().await;
    let c = client(&h);
    let send = |model: &str, msgs: Vec<Message>, max: Option<i32>, temp: Option<f32>| {
        c.converse()
            .model_id(model)
            .set_messages(Some(msgs))
            .inference_config(
                InferenceConfiguration::builder()
                    .set_max_tokens(max)
                    .set_temperature(temp)
                    .build(),
            )
            .send()
    };
    let msg = |m: &str, msgs, max, temp| {
        let fut = send(m, msgs, max, temp);
        async move { validation_message(fut.await.unwrap_err()) }
    };
    assert_eq!(
        msg("anthropic.claude-9", vec![user("hi")], None, None).await,
        "The provided model identifier is invalid."
    );
    assert_eq!(
        msg(SONNET_BASE, vec![user("hi")], None, None).await,
        "Invocation of model ID anthropic.claude-3-5-sonnet-20241022-v2:0 with on-demand throughput isn\u{2019}t \
         supported. Retry your request with the ID or ARN of an inference profile that contains this model."
    );
    assert_eq!(
        msg(SONNET, vec![user("hi")], Some(9000), None).await,
        "The maximum tokens you requested exceeds the model limit of 8192. Try again with a maximum tokens value \
         that is lower than 8192."
    );
    assert!(
        msg(HAIKU, vec![user("hi")], Some(4097), None)
            .await
            .contains("model limit of 4096")
    );
    assert!(
        msg(HAIKU, vec![user("hi")], None, Some(1.5))
            .await
            .contains("'inferenceConfig.temperature'")
    );
    assert!(
        msg(HAIKU, vec![], None, None)
            .await
            .starts_with("A conversation must start with a user message.")
    );
    assert!(
        msg(HAIKU, vec![assistant("hi")], None, None)
            .await
            .starts_with("A conversation must start with a user message.")
    );
    assert!(
        msg(HAIKU, vec![user("a"), user("b")], None, None)
            .await
            .starts_with("A conversation must alternate between user and assistant roles.")
    );
    assert_eq!(
        msg(HAIKU, vec![user("  ")], None, None).await,
        "The text field in the ContentBlock object at messages.0.content.0 is blank. Add text to the text field, and try again."
    );
    // No EU profile for Sonnet 3.5 v2; an EU profile called from a US region is refused too.
    let eu_sonnet = "eu.anthropic.claude-3-5-sonnet-20241022-v2:0";
    assert_eq!(
        msg(eu_sonnet, vec![user("hi")], None, None).await,
        "The provided model identifier is invalid."
    );
    let eu_haiku = "eu.anthropic.claude-3-haiku-20240307-v1:0";
    assert_eq!(
        msg(eu_haiku, vec![user("hi")], None, None).await,
        "The provided model identifier is invalid."
    );
    assert!(
        msg(
            HAIKU,
            vec![user("[sim:fial=ThrottlingException]")],
            None,
            None
        )
        .await
        .contains("unknown key 'fial")
    );
    // Haiku 3's base id works on demand.
    c.converse()
        .model_id(HAIKU_BASE)
        .messages(user("hi"))
        .send()
        .await
        .unwrap();

    let failed = h
        .received()
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Error { status: 400, .. }))
        .count();
    assert_eq!(failed, 12);
    assert_eq!(h.stats().failed, 12);
}

#[tokio::test]
async fn percent_encoded_ids_and_source_region() {
    let h = sim().await;
    let eu = client_in(&h, "eu-west-1");
    let eu_haiku = "eu.anthropic.claude-3-haiku-20240307-v1:0";
    let out = eu
        .converse()
        .model_id(eu_haiku)
        .messages(user("hi"))
        .send()
        .await
        .unwrap();
    assert!(text_of(out.output()).starts_with(&format!("[{eu_haiku}]")));
    let arn = "arn:aws:bedrock:us-west-2:123456789012:inference-profile/us.anthropic.claude-3-5-sonnet-20241022-v2:0";
    client_in(&h, "us-west-2")
        .converse()
        .model_id(arn)
        .messages(user("hi"))
        .send()
        .await
        .unwrap();
    let rec = h.received();
    assert_eq!(
        (rec[0].model_id.as_str(), rec[0].source_region.as_deref()),
        (eu_haiku, Some("eu-west-1"))
    );
    assert_eq!(
        (rec[1].model_id.as_str(), rec[1].source_region.as_deref()),
        (arn, Some("us-west-2"))
    );
}
