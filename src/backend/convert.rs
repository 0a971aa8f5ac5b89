//! Between the router's request types and the SDK's Converse shapes, both directions.

use aws_sdk_bedrockruntime::types as bt;
use aws_smithy_types::{Blob, Document, Number, error::operation::BuildError};
use serde_json::Value;

use prompt_router_core::request::{
    Block, ChatRequest, Image, ImageFormat, Role, ToolChoice, ToolResultBlock, Tools,
};

/// The parts of a Converse call that do not depend on the model.
#[derive(Debug, Clone)]
pub struct ConverseParts {
    /// The turns.
    pub messages: Vec<bt::Message>,
    /// System prompts.
    pub system: Vec<bt::SystemContentBlock>,
    /// max_tokens, temperature, top_p, stop sequences.
    pub inference: Option<bt::InferenceConfiguration>,
    /// Tools.
    pub tools: Option<bt::ToolConfiguration>,
    /// Model-specific fields Converse has no slot for (Anthropic's `top_k`).
    pub additional: Option<Document>,
}

impl ConverseParts {
    /// Caps `maxTokens` at `limit` (sets it when unset) and returns the value now in force: the
    /// most the call can write, which a duel's spend reservation counts on.
    pub fn cap_max_tokens(&mut self, limit: u32) -> u32 {
        let inference = self.inference.take();
        let current = inference
            .as_ref()
            .and_then(|i| i.max_tokens)
            .map(|t| u32::try_from(t).unwrap_or(0));
        let capped = current.map_or(limit, |c| c.min(limit));
        let builder = bt::InferenceConfiguration::builder().max_tokens(clamp_i32(capped));
        self.inference = Some(match inference {
            Some(i) => builder
                .set_temperature(i.temperature)
                .set_top_p(i.top_p)
                .set_stop_sequences(i.stop_sequences)
                .build(),
            None => builder.build(),
        });
        capped
    }
}

/// Builds the SDK's request shapes from a validated request, moving its text and image bytes
/// rather than copying them.
pub fn converse_parts(req: ChatRequest) -> Result<ConverseParts, BuildError> {
    let ChatRequest {
        messages,
        system,
        inference: inf,
        tools,
        ..
    } = req;
    let messages = messages
        .into_iter()
        .map(|turn| {
            let role = match turn.role {
                Role::User => bt::ConversationRole::User,
                Role::Assistant => bt::ConversationRole::Assistant,
            };
            let content = turn
                .content
                .into_iter()
                .map(content_block)
                .collect::<Result<Vec<_>, _>>()?;
            bt::Message::builder()
                .role(role)
                .set_content(Some(content))
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let system = system
        .into_iter()
        .map(bt::SystemContentBlock::Text)
        .collect();
    let additional = inf.top_k.map(|k| {
        Document::Object(
            [(
                "top_k".to_owned(),
                Document::Number(Number::PosInt(u64::from(k))),
            )]
            .into(),
        )
    });
    let inference = (inf.max_tokens.is_some()
        || inf.temperature.is_some()
        || inf.top_p.is_some()
        || !inf.stop_sequences.is_empty())
    .then(|| {
        bt::InferenceConfiguration::builder()
            .set_max_tokens(inf.max_tokens.map(clamp_i32))
            .set_temperature(inf.temperature)
            .set_top_p(inf.top_p)
            .set_stop_sequences((!inf.stop_sequences.is_empty()).then_some(inf.stop_sequences))
            .build()
    });
    let tools = tools.map(tool_config).transpose()?;
    Ok(ConverseParts {
        messages,
        system,
        inference,
        tools,
        additional,
    })
}

fn content_block(block: Block) -> Result<bt::ContentBlock, BuildError> {
    Ok(match block {
        Block::Text(text) => bt::ContentBlock::Text(text),
        Block::Image(image) => bt::ContentBlock::Image(image_block(image)?),
        Block::ToolUse(tool_use) => bt::ContentBlock::ToolUse(
            bt::ToolUseBlock::builder()
                .tool_use_id(tool_use.id)
                .name(tool_use.name)
                .input(to_document(&tool_use.input))
                .build()?,
        ),
        Block::ToolResult(result) => {
            let content = result
                .content
                .into_iter()
                .map(|c| {
                    Ok(match c {
                        ToolResultBlock::Text(t) => bt::ToolResultContentBlock::Text(t),
                        ToolResultBlock::Json(v) => {
                            bt::ToolResultContentBlock::Json(to_document(&v))
                        }
                        ToolResultBlock::Image(i) => {
                            bt::ToolResultContentBlock::Image(image_block(i)?)
                        }
                    })
                })
                .collect::<Result<Vec<_>, BuildError>>()?;
            bt::ContentBlock::ToolResult(
                bt::ToolResultBlock::builder()
                    .tool_use_id(result.tool_use_id)
                    .set_content(Some(content))
                    .status(if result.is_error {
                        bt::ToolResultStatus::Error
                    } else {
                        bt::ToolResultStatus::Success
                    })
                    .build()?,
            )
        }
    })
}

fn image_block(image: Image) -> Result<bt::ImageBlock, BuildError> {
    let format = match image.format {
        ImageFormat::Png => bt::ImageFormat::Png,
        ImageFormat::Jpeg => bt::ImageFormat::Jpeg,
        ImageFormat::Gif => bt::ImageFormat::Gif,
        ImageFormat::Webp => bt::ImageFormat::Webp,
    };
    bt::ImageBlock::builder()
        .format(format)
        .source(bt::ImageSource::Bytes(Blob::new(image.data)))
        .build()
}

fn tool_config(tools: Tools) -> Result<bt::ToolConfiguration, BuildError> {
    let specs = tools
        .specs
        .into_iter()
        .map(|spec| {
            bt::ToolSpecification::builder()
                .input_schema(bt::ToolInputSchema::Json(to_document(&spec.input_schema)))
                .name(spec.name)
                .set_description((!spec.description.is_empty()).then_some(spec.description))
                .build()
                .map(bt::Tool::ToolSpec)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let choice = match tools.choice {
        ToolChoice::Auto => bt::ToolChoice::Auto(bt::AutoToolChoice::builder().build()),
        ToolChoice::Any => bt::ToolChoice::Any(bt::AnyToolChoice::builder().build()),
        ToolChoice::Tool(name) => {
            bt::ToolChoice::Tool(bt::SpecificToolChoice::builder().name(name).build()?)
        }
    };
    bt::ToolConfiguration::builder()
        .set_tools(Some(specs))
        .tool_choice(choice)
        .build()
}

fn clamp_i32(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// A JSON value as a Smithy document.
pub fn to_document(value: &Value) -> Document {
    match value {
        Value::Null => Document::Null,
        Value::Bool(b) => Document::Bool(*b),
        Value::Number(n) => Document::Number(if let Some(u) = n.as_u64() {
            Number::PosInt(u)
        } else if let Some(i) = n.as_i64() {
            Number::NegInt(i)
        } else {
            Number::Float(n.as_f64().unwrap_or(0.0))
        }),
        Value::String(s) => Document::String(s.clone()),
        Value::Array(items) => Document::Array(items.iter().map(to_document).collect()),
        Value::Object(map) => Document::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), to_document(v)))
                .collect(),
        ),
    }
}

/// A Smithy document as a JSON value (non-finite floats, which JSON cannot hold, become null).
pub fn to_json(doc: &Document) -> Value {
    match doc {
        Document::Null => Value::Null,
        Document::Bool(b) => Value::Bool(*b),
        Document::Number(Number::PosInt(u)) => Value::from(*u),
        Document::Number(Number::NegInt(i)) => Value::from(*i),
        Document::Number(Number::Float(f)) => {
            serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number)
        }
        Document::String(s) => Value::String(s.clone()),
        Document::Array(items) => Value::Array(items.iter().map(to_json).collect()),
        Document::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), to_json(v))).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn json_strategy() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e9f64..1e9).prop_map(Value::from),
            ".{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(".{0,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    #[test]
    fn capping_max_tokens_keeps_the_rest_of_the_inference_config() {
        let mut parts = ConverseParts {
            messages: Vec::new(),
            system: Vec::new(),
            inference: None,
            tools: None,
            additional: None,
        };
        assert_eq!(parts.cap_max_tokens(4_096), 4_096);
        assert_eq!(parts.cap_max_tokens(8_192), 4_096);
        parts.inference = Some(
            bt::InferenceConfiguration::builder()
                .max_tokens(100)
                .temperature(0.5)
                .stop_sequences("END")
                .build(),
        );
        assert_eq!(parts.cap_max_tokens(50), 50);
        let inference = parts.inference.unwrap();
        assert_eq!(inference.max_tokens, Some(50));
        assert_eq!(inference.temperature, Some(0.5));
        assert_eq!(inference.stop_sequences, Some(vec!["END".to_owned()]));
    }

    proptest! {
        #[test]
        fn json_survives_a_document_round_trip(value in json_strategy()) {
            prop_assert_eq!(to_json(&to_document(&value)), value);
        }
    }
}
