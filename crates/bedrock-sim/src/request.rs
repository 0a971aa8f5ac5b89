//! The `ConverseRequest`/`ConverseStreamRequest` JSON body, as botocore's service model names it.

use serde::Deserialize;
use serde_json::{Map, Value};

impl ConverseRequest {
    /// The last user message's text blocks joined with `\n`: the text `world` grades.
    pub(crate) fn last_user_text(&self) -> String {
        self.messages
            .iter()
            .flatten()
            .rev()
            .find(|m| m.role == "user")
            .map(|m| {
                m.content
                    .iter()
                    .filter_map(|b| b.text.as_deref())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    }
}

/// The body both operations share.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConverseRequest {
    pub messages: Option<Vec<Message>>,
    #[serde(default)]
    pub system: Vec<SystemBlock>,
    pub inference_config: Option<InferenceConfig>,
    pub tool_config: Option<ToolConfig>,
    pub additional_model_request_fields: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Message {
    pub role: String,
    pub content: Vec<ContentBlock>,
}

/// A union in the model; unknown members (document, video, …) are kept in `other`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ContentBlock {
    pub text: Option<String>,
    pub image: Option<ImageBlock>,
    pub tool_use: Option<ToolUseBlock>,
    pub tool_result: Option<ToolResultBlock>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ImageBlock {
    pub format: String,
    pub source: ImageSource,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ImageSource {
    pub bytes: Option<String>,
    pub s3_location: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ToolUseBlock {
    pub tool_use_id: String,
    pub name: String,
    #[serde(default)]
    pub input: Value,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ToolResultBlock {
    pub tool_use_id: String,
    #[serde(default)]
    pub content: Vec<ToolResultContent>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ToolResultContent {
    pub text: Option<String>,
    pub json: Option<Value>,
    pub image: Option<ImageBlock>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct SystemBlock {
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct InferenceConfig {
    pub max_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub stop_sequences: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ToolConfig {
    pub tools: Vec<Tool>,
    pub tool_choice: Option<ToolChoice>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Tool {
    pub tool_spec: Option<ToolSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ToolSpec {
    pub name: String,
    pub description: Option<String>,
    pub input_schema: ToolInputSchema,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ToolInputSchema {
    pub json: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ToolChoice {
    pub any: Option<Value>,
    pub tool: Option<SpecificTool>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct SpecificTool {
    pub name: String,
}
