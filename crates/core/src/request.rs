//! PURE. The request as the router works with it, and the rules a request must keep: every
//! problem becomes an [`InvalidRequest`] naming the field, never a panic. The wire format's
//! side (which protobuf field holds what, unknown enum values) is the server's
//! `convert` module, which builds these types through the checks here.
//!
//! Checking before any model is chosen means a bad request costs no upstream call and gets a
//! message about the caller's field rather than Bedrock's wording about its own.

use std::collections::HashSet;

// The checks the service's `convert` calls for every block are `#[inline]`: it is another
// crate, and without the hint each small check was a call (converting a one-message request
// took 11% longer than when both sides were one crate).

use serde_json::Value;

use crate::policy::RoutingMode;

/// A request that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The turns, oldest first; starts and ends with a user turn, roles alternate.
    pub messages: Vec<Turn>,
    /// System prompts.
    pub system: Vec<String>,
    /// Sampling and length parameters.
    pub inference: Inference,
    /// Tools the model may call.
    pub tools: Option<Tools>,
    /// How to choose the model.
    pub routing: Routing,
    images: usize,
}

/// One turn.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    /// Who wrote it.
    pub role: Role,
    /// Its content, in order; never empty.
    pub content: Vec<Block>,
}

/// The author of a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The caller.
    User,
    /// The model.
    Assistant,
}

/// One piece of content.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    /// Non-blank text.
    Text(String),
    /// An image whose bytes match its format.
    Image(Image),
    /// A tool call by the model.
    ToolUse(ToolUse),
    /// A tool's result.
    ToolResult(ToolResult),
}

/// An image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Its encoding.
    pub format: ImageFormat,
    /// The encoded bytes.
    pub data: Vec<u8>,
}

/// Image encodings Bedrock accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// PNG.
    Png,
    /// JPEG.
    Jpeg,
    /// GIF.
    Gif,
    /// WebP.
    Webp,
}

impl ImageFormat {
    /// Bedrock's name for the format.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpeg",
            Self::Gif => "gif",
            Self::Webp => "webp",
        }
    }

    /// Whether `data` starts with this format's signature.
    fn matches(self, data: &[u8]) -> bool {
        match self {
            Self::Png => data.starts_with(b"\x89PNG\r\n\x1a\n"),
            Self::Jpeg => data.starts_with(&[0xFF, 0xD8, 0xFF]),
            Self::Gif => data.starts_with(b"GIF87a") || data.starts_with(b"GIF89a"),
            Self::Webp => data.len() >= 12 && &data[..4] == b"RIFF" && &data[8..12] == b"WEBP",
        }
    }
}

/// A tool call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolUse {
    /// The call's id.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments, a JSON object.
    pub input: Value,
}

/// A tool's result.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolResult {
    /// The id of the call it answers.
    pub tool_use_id: String,
    /// The result's blocks.
    pub content: Vec<ToolResultBlock>,
    /// Whether the tool failed.
    pub is_error: bool,
}

/// One block of a tool result.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolResultBlock {
    /// Text.
    Text(String),
    /// A JSON value.
    Json(Value),
    /// An image.
    Image(Image),
}

/// Sampling and length parameters; `None` leaves the model's default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inference {
    /// Most tokens to generate.
    pub max_tokens: Option<u32>,
    /// Randomness in [0, 1].
    pub temperature: Option<f32>,
    /// Nucleus mass in [0, 1].
    pub top_p: Option<f32>,
    /// Top-k sampling.
    pub top_k: Option<u32>,
    /// Stop sequences.
    pub stop_sequences: Vec<String>,
}

/// Tools the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct Tools {
    /// The declarations, with unique names.
    pub specs: Vec<ToolSpec>,
    /// Whether and which tool must be called.
    pub choice: ToolChoice,
}

/// One tool's declaration.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    /// Unique name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// JSON Schema of its input.
    pub input_schema: Value,
}

/// How the model chooses a tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model decides.
    Auto,
    /// Some tool must be called.
    Any,
    /// This tool must be called.
    Tool(String),
}

/// Routing options.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    /// Automatic or forced.
    pub mode: RoutingMode,
    /// Threshold shift in [-1, 1]; positive prefers strong.
    pub quality_bias: f64,
    /// The caller's name, for logs.
    pub caller: String,
}

/// Per-request size limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Most turns in one request.
    pub max_messages: usize,
    /// Most images in one request.
    pub max_images: usize,
    /// Largest image, in bytes.
    pub max_image_bytes: usize,
    /// Most tools one request may declare.
    pub max_tools: usize,
}

impl Default for Limits {
    fn default() -> Self {
        // Bedrock's own limits for Claude: 20 images of at most 3.75 MB each.
        Self {
            max_messages: 1_000,
            max_images: 20,
            max_image_bytes: 3_750_000,
            max_tools: 256,
        }
    }
}

/// Why a request was refused: the field at fault (`messages[2].content[0].image.data`) and
/// what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidRequest {
    field: String,
    message: String,
}

impl InvalidRequest {
    /// `field` refused for `message`.
    pub fn new(field: impl std::fmt::Display, message: impl std::fmt::Display) -> Self {
        Self {
            field: field.to_string(),
            message: message.to_string(),
        }
    }

    /// The path of the field at fault, in the request's protobuf field names.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// What is wrong with the field.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Longest accepted caller name.
pub const MAX_CALLER_LEN: usize = 64;
/// Bedrock's limits on stop sequences and top_k for Anthropic models.
const MAX_STOP_SEQUENCES: usize = 2_500;
const MAX_TOP_K: u32 = 500;

/// A field's path in the request (`messages[2].content[0].image`), written out only when an
/// error names it, so a valid request costs no formatting.
#[derive(Debug, Clone, Copy)]
pub struct Field<'a> {
    parent: Option<&'a Field<'a>>,
    name: &'static str,
    index: Option<usize>,
}

impl<'a> Field<'a> {
    /// A top-level field, e.g. `inference_config`.
    #[inline]
    pub fn new(name: &'static str) -> Self {
        Self {
            parent: None,
            name,
            index: None,
        }
    }

    /// A top-level list element, e.g. `messages[2]`.
    pub fn indexed(name: &'static str, index: usize) -> Self {
        Self {
            parent: None,
            name,
            index: Some(index),
        }
    }

    /// A field inside this one.
    pub fn child(&'a self, name: &'static str) -> Field<'a> {
        Field {
            parent: Some(self),
            name,
            index: None,
        }
    }

    /// A list element inside this one.
    pub fn item(&'a self, name: &'static str, index: usize) -> Field<'a> {
        Field {
            parent: Some(self),
            name,
            index: Some(index),
        }
    }

    /// This field refused for `message`.
    pub fn invalid(&self, message: impl std::fmt::Display) -> InvalidRequest {
        InvalidRequest::new(self, message)
    }
}

impl std::fmt::Display for Field<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(parent) = self.parent {
            write!(f, "{parent}.")?;
        }
        f.write_str(self.name)?;
        match self.index {
            Some(i) => write!(f, "[{i}]"),
            None => Ok(()),
        }
    }
}

// === impl ChatRequest ===

impl ChatRequest {
    /// Assembles a request from parts checked on their own, checking what spans them: the
    /// tool blocks against each other and against the tool config.
    #[inline]
    pub fn new(
        messages: Vec<Turn>,
        system: Vec<String>,
        inference: Inference,
        tools: Option<Tools>,
        routing: Routing,
    ) -> Result<Self, InvalidRequest> {
        tool_links(&messages, tools.is_some())?;
        let images = messages
            .iter()
            .flat_map(|t| &t.content)
            .map(|block| match block {
                Block::Image(_) => 1,
                Block::ToolResult(result) => result
                    .content
                    .iter()
                    .filter(|c| matches!(c, ToolResultBlock::Image(_)))
                    .count(),
                Block::Text(_) | Block::ToolUse(_) => 0,
            })
            .sum();
        Ok(Self {
            messages,
            system,
            inference,
            tools,
            routing,
            images,
        })
    }

    /// Number of images anywhere in the request.
    pub fn image_count(&self) -> usize {
        self.images
    }

    /// Number of declared tools.
    pub fn tool_count(&self) -> usize {
        self.tools.as_ref().map_or(0, |t| t.specs.len())
    }
}

/// Text that says something: system prompts and text blocks must not be blank.
#[inline]
pub fn non_blank(field: &Field<'_>, text: String) -> Result<String, InvalidRequest> {
    if text.trim().is_empty() {
        Err(field.invalid("must not be empty"))
    } else {
        Ok(text)
    }
}

/// The number of turns against the limit: at least one, at most `limits.max_messages`.
#[inline]
pub fn check_message_count(count: usize, limits: &Limits) -> Result<(), InvalidRequest> {
    check_count(
        &Field::new("messages"),
        count,
        limits.max_messages,
        "messages",
        "at least one message is required",
    )
}

/// `count` `items` in `field`: at least one (else `none`), at most `max`.
fn check_count(
    field: &Field<'_>,
    count: usize,
    max: usize,
    items: &str,
    none: &str,
) -> Result<(), InvalidRequest> {
    if count == 0 {
        return Err(field.invalid(none));
    }
    if count > max {
        return Err(field.invalid(format!("{count} {items} exceed the limit of {max}")));
    }
    Ok(())
}

// === impl Turn ===

impl Turn {
    /// Checks that a turn of `role` may stand at `index` of `count` (the conversation starts and
    /// ends with the user, roles alternate) and that it has content; `field` is the turn's.
    #[inline]
    pub fn check_position(
        field: &Field<'_>,
        role: Role,
        index: usize,
        count: usize,
        blocks: usize,
    ) -> Result<(), InvalidRequest> {
        let expected = if index.is_multiple_of(2) {
            Role::User
        } else {
            Role::Assistant
        };
        if role != expected {
            return Err(field.child("role").invalid(if index == 0 {
                "the conversation must start with a user message"
            } else {
                "roles must alternate between user and assistant"
            }));
        }
        if index + 1 == count && role != Role::User {
            return Err(field
                .child("role")
                .invalid("the last message must be from the user"));
        }
        if blocks == 0 {
            return Err(field
                .child("content")
                .invalid("at least one content block is required"));
        }
        Ok(())
    }
}

// === impl Image ===

impl Image {
    /// An image of `format`, the `images`-th of its request so far (counted here); `field` is
    /// the image's.
    pub fn new(
        field: &Field<'_>,
        format: ImageFormat,
        data: Vec<u8>,
        limits: &Limits,
        images: &mut usize,
    ) -> Result<Self, InvalidRequest> {
        *images += 1;
        if *images > limits.max_images {
            return Err(field.invalid(format!(
                "more than {} images in one request",
                limits.max_images
            )));
        }
        let data_field = field.child("data");
        if data.is_empty() {
            return Err(data_field.invalid("must not be empty"));
        }
        if data.len() > limits.max_image_bytes {
            return Err(data_field.invalid(format!(
                "{} bytes exceed the limit of {}",
                data.len(),
                limits.max_image_bytes
            )));
        }
        if !format.matches(&data) {
            return Err(data_field.invalid(format!(
                "the bytes are not a {} image",
                format.as_str().to_ascii_uppercase()
            )));
        }
        Ok(Self { format, data })
    }
}

// === impl ToolUse ===

impl ToolUse {
    /// A tool call in a turn of `role`; `field` is the block's `tool_use`.
    pub fn new(
        field: &Field<'_>,
        role: Role,
        id: String,
        name: String,
        input_json: &str,
    ) -> Result<Self, InvalidRequest> {
        if role != Role::Assistant {
            return Err(field.invalid("only assistant messages can hold tool calls"));
        }
        tool_use_id(&field.child("tool_use_id"), &id)?;
        tool_name(&field.child("name"), &name)?;
        let input = json_object(&field.child("input_json"), input_json)?;
        Ok(Self { id, name, input })
    }
}

// === impl ToolResult ===

impl ToolResult {
    /// Checks that a tool result answering `tool_use_id` may stand in a turn of `role`; `field`
    /// is the block's `tool_result`.
    pub fn check_position(
        field: &Field<'_>,
        role: Role,
        tool_use_id: &str,
    ) -> Result<(), InvalidRequest> {
        if role != Role::User {
            return Err(field.invalid("only user messages can hold tool results"));
        }
        self::tool_use_id(&field.child("tool_use_id"), tool_use_id)
    }
}

impl ToolResultBlock {
    /// A JSON result block from its text; `field` is the block's `json`.
    pub fn json(field: &Field<'_>, text: &str) -> Result<Self, InvalidRequest> {
        serde_json::from_str(text)
            .map(Self::Json)
            .map_err(|e| field.invalid(format!("not valid JSON: {e}")))
    }
}

// === impl Inference ===

impl Inference {
    /// These parameters if each is in the range Bedrock accepts.
    #[inline]
    pub fn checked(self) -> Result<Self, InvalidRequest> {
        if self.max_tokens == Some(0) {
            return Err(InvalidRequest::new(
                "inference_config.max_tokens",
                "must be at least 1",
            ));
        }
        for (name, value) in [("temperature", self.temperature), ("top_p", self.top_p)] {
            if let Some(v) = value
                && !(0.0..=1.0).contains(&v)
            {
                return Err(InvalidRequest::new(
                    format_args!("inference_config.{name}"),
                    format_args!("{v} is outside [0, 1]"),
                ));
            }
        }
        if let Some(k) = self.top_k
            && !(1..=MAX_TOP_K).contains(&k)
        {
            return Err(InvalidRequest::new(
                "inference_config.top_k",
                format_args!("{k} is outside [1, {MAX_TOP_K}]"),
            ));
        }
        if self.stop_sequences.len() > MAX_STOP_SEQUENCES {
            return Err(InvalidRequest::new(
                "inference_config.stop_sequences",
                format_args!(
                    "{} exceed the limit of {MAX_STOP_SEQUENCES}",
                    self.stop_sequences.len()
                ),
            ));
        }
        if let Some(i) = self.stop_sequences.iter().position(String::is_empty) {
            return Err(InvalidRequest::new(
                format_args!("inference_config.stop_sequences[{i}]"),
                "must not be empty",
            ));
        }
        Ok(self)
    }
}

// === impl Tools ===

impl Tools {
    /// Checks the number of tools a request declares (`count`) against the limit, before any
    /// is read.
    pub fn check_count(count: usize, limits: &Limits) -> Result<(), InvalidRequest> {
        check_count(
            &Field::new("tool_config.tools"),
            count,
            limits.max_tools,
            "tools",
            "at least one tool is required when tool_config is set",
        )
    }

    /// The declared tools and the choice among them, which must name one of them.
    pub fn new(specs: Vec<ToolSpec>, choice: ToolChoice) -> Result<Self, InvalidRequest> {
        if let ToolChoice::Tool(name) = &choice
            && !specs.iter().any(|s| &s.name == name)
        {
            return Err(InvalidRequest::new(
                "tool_config.tool_choice.name",
                format_args!("{name:?} is not one of the declared tools"),
            ));
        }
        Ok(Self { specs, choice })
    }
}

impl ToolSpec {
    /// A tool declaration whose name is not in `names` yet (it is added); `field` is the
    /// tool's.
    pub fn new(
        field: &Field<'_>,
        name: String,
        description: String,
        input_schema_json: &str,
        names: &mut HashSet<String>,
    ) -> Result<Self, InvalidRequest> {
        tool_name(&field.child("name"), &name)?;
        // A set, not a scan of the names so far: a request may hold many tools.
        if !names.insert(name.clone()) {
            return Err(field
                .child("name")
                .invalid(format!("duplicate tool name {name:?}")));
        }
        let schema_field = field.child("input_schema_json");
        let input_schema = json_object(&schema_field, input_schema_json)?;
        object_schema(&schema_field, &input_schema)?;
        Ok(Self {
            name,
            description,
            input_schema,
        })
    }
}

// === impl Routing ===

impl Routing {
    /// Routing options, if the bias is in [-1, 1] and the caller's name is short and printable.
    #[inline]
    pub fn new(
        mode: RoutingMode,
        quality_bias: f64,
        caller: String,
    ) -> Result<Self, InvalidRequest> {
        if !(-1.0..=1.0).contains(&quality_bias) {
            return Err(InvalidRequest::new(
                "routing.quality_bias",
                format_args!("{quality_bias} is outside [-1, 1]"),
            ));
        }
        if caller.chars().count() > MAX_CALLER_LEN {
            return Err(InvalidRequest::new(
                "routing.caller",
                format_args!("longer than {MAX_CALLER_LEN} characters"),
            ));
        }
        if caller.chars().any(char::is_control) {
            return Err(InvalidRequest::new(
                "routing.caller",
                "must not contain control characters",
            ));
        }
        Ok(Self {
            mode,
            quality_bias,
            caller,
        })
    }
}

fn json_object(field: &Field<'_>, text: &str) -> Result<Value, InvalidRequest> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| field.invalid(format!("not valid JSON: {e}")))?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(field.invalid("must be a JSON object"))
    }
}

/// Bedrock's rule for tool names, declared or called: 1 to 64 of `[a-zA-Z0-9_-]`.
fn tool_name(field: &Field<'_>, name: &str) -> Result<(), InvalidRequest> {
    let valid = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(field.invalid(format!(
            "{name:?} is not 1 to 64 letters, digits, '_' or '-'"
        )))
    }
}

/// Bedrock's rule for tool-use ids: 1 to 64 of `[a-zA-Z0-9_.:-]` (older API references allow
/// neither `.` nor `:`; the ids Bedrock hands out are `tooluse_` and base62).
fn tool_use_id(field: &Field<'_>, id: &str) -> Result<(), InvalidRequest> {
    let valid = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
    if valid {
        Ok(())
    } else {
        Err(field.invalid(format!(
            "{id:?} is not 1 to 64 letters, digits, '_', '-', '.' or ':'"
        )))
    }
}

/// What Bedrock and the Claude models require of the tool blocks of a conversation, checked
/// here so that a broken one costs no upstream call and its message names our field: tool
/// blocks need a `tool_config`; the user turn after an assistant turn with tool calls answers
/// each of them, with its results before any other block; and a result answers a call of the
/// turn just before it (Bedrock: "Each `tool_result` block must have a corresponding
/// `tool_use` block in the previous message").
fn tool_links(turns: &[Turn], declared: bool) -> Result<(), InvalidRequest> {
    use std::collections::HashMap;
    // Most requests hold no tool block: they pay one pass over the blocks, not the maps.
    let has_tool_blocks = turns
        .iter()
        .flat_map(|t| &t.content)
        .any(|b| matches!(b, Block::ToolUse(_) | Block::ToolResult(_)));
    if !has_tool_blocks {
        return Ok(());
    }
    // Call id → its block's index, for the assistant turn just before. Maps, not scans: a
    // request may hold many calls.
    let mut calls: HashMap<&str, usize> = HashMap::new();
    for (i, turn) in turns.iter().enumerate() {
        let field = Field::indexed("messages", i);
        if turn.role == Role::Assistant {
            calls.clear();
            for (j, block) in turn.content.iter().enumerate() {
                if let Block::ToolUse(call) = block {
                    needs_tool_config(declared, &field.item("content", j), "tool_use")?;
                    calls.insert(call.id.as_str(), j);
                }
            }
            continue;
        }
        let mut answered: HashSet<&str> = HashSet::new();
        let mut other_block = false;
        for (j, block) in turn.content.iter().enumerate() {
            let Block::ToolResult(result) = block else {
                other_block = true;
                continue;
            };
            let at = field.item("content", j);
            needs_tool_config(declared, &at, "tool_result")?;
            if !calls.contains_key(result.tool_use_id.as_str()) {
                return Err(InvalidRequest::new(
                    at.child("tool_result").child("tool_use_id"),
                    format!(
                        "{:?} matches no tool_use in the previous message",
                        result.tool_use_id
                    ),
                ));
            }
            if other_block {
                return Err(InvalidRequest::new(
                    at.child("tool_result"),
                    "tool results must come before the message's other blocks",
                ));
            }
            answered.insert(result.tool_use_id.as_str());
        }
        let unanswered = calls
            .iter()
            .filter(|(id, _)| !answered.contains(**id))
            .min_by_key(|(_, j)| **j);
        if let Some((id, &j)) = unanswered {
            let previous = Field::indexed("messages", i - 1);
            return Err(InvalidRequest::new(
                previous
                    .item("content", j)
                    .child("tool_use")
                    .child("tool_use_id"),
                format!("{id:?} has no tool_result in the next message"),
            ));
        }
        calls.clear();
    }
    Ok(())
}

fn needs_tool_config(
    declared: bool,
    field: &Field<'_>,
    kind: &'static str,
) -> Result<(), InvalidRequest> {
    if declared {
        Ok(())
    } else {
        Err(InvalidRequest::new(
            field.child(kind),
            "tool_config must be set when the messages hold tool_use or tool_result blocks",
        ))
    }
}

/// The JSON Schema of a tool's input: an object schema (Bedrock: "The top level schema type
/// must be object"), whose `properties`, if any, are schemas and whose `required`, if any,
/// names properties, as JSON Schema defines those keywords. Deeper checks are Bedrock's.
fn object_schema(field: &Field<'_>, schema: &Value) -> Result<(), InvalidRequest> {
    if schema.get("type") != Some(&Value::from("object")) {
        return Err(InvalidRequest::new(
            field,
            "must be a JSON Schema whose top-level \"type\" is \"object\"",
        ));
    }
    if let Some(properties) = schema.get("properties") {
        let schemas = properties
            .as_object()
            .is_some_and(|p| p.values().all(|s| s.is_object() || s.is_boolean()));
        if !schemas {
            return Err(InvalidRequest::new(
                field,
                "\"properties\" must be an object whose values are schemas",
            ));
        }
    }
    if let Some(required) = schema.get("required") {
        let names = required
            .as_array()
            .is_some_and(|r| r.iter().all(Value::is_string));
        if !names {
            return Err(InvalidRequest::new(
                field,
                "\"required\" must be an array of property names",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

    #[test]
    fn every_format_signature_is_recognised() {
        assert!(ImageFormat::Png.matches(PNG));
        assert!(ImageFormat::Jpeg.matches(&[0xFF, 0xD8, 0xFF, 0xE0]));
        assert!(ImageFormat::Gif.matches(b"GIF89a...."));
        assert!(ImageFormat::Webp.matches(b"RIFF\0\0\0\0WEBPVP8 "));
        assert!(!ImageFormat::Webp.matches(b"RIFF"));
    }
}
