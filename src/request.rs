//! PURE. The request as the router works with it, and the one place where a gRPC request is
//! checked: every problem becomes an [`InvalidRequest`] naming the field, never a panic.
//!
//! Checking here, before any model is chosen, means a bad request costs no upstream call and gets
//! a message about the caller's field rather than Bedrock's wording about its own.

use serde_json::Value;

use crate::{pb, policy::RoutingMode};

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

/// Why a request was refused; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRequest(pub String);

/// Longest accepted caller name.
pub const MAX_CALLER_LEN: usize = 64;
/// Bedrock's limits on stop sequences and top_k for Anthropic models.
const MAX_STOP_SEQUENCES: usize = 2_500;
const MAX_TOP_K: u32 = 500;

/// A field's path in the request (`messages[2].content[0].image`), written out only when an
/// error names it, so a valid request costs no formatting.
#[derive(Debug, Clone, Copy)]
struct Field<'a> {
    parent: Option<&'a Field<'a>>,
    name: &'static str,
    index: Option<usize>,
}

impl<'a> Field<'a> {
    /// A top-level list element, e.g. `messages[2]`.
    fn indexed(name: &'static str, index: usize) -> Self {
        Self {
            parent: None,
            name,
            index: Some(index),
        }
    }

    /// A field inside this one.
    fn child(&'a self, name: &'static str) -> Field<'a> {
        Field {
            parent: Some(self),
            name,
            index: None,
        }
    }

    /// A list element inside this one.
    fn item(&'a self, name: &'static str, index: usize) -> Field<'a> {
        Field {
            parent: Some(self),
            name,
            index: Some(index),
        }
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

fn invalid(field: impl std::fmt::Display, message: impl std::fmt::Display) -> InvalidRequest {
    InvalidRequest(format!("{field}: {message}"))
}

impl ChatRequest {
    /// Checks a gRPC request and takes ownership of its contents (no copies of the text).
    pub fn from_pb(req: pb::ConverseRequest, limits: &Limits) -> Result<Self, InvalidRequest> {
        let system = req
            .system
            .into_iter()
            .enumerate()
            .map(|(i, text)| {
                if text.trim().is_empty() {
                    Err(invalid(format!("system[{i}]"), "must not be empty"))
                } else {
                    Ok(text)
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (messages, images) = messages(req.messages, limits)?;
        tool_links(&messages, req.tool_config.is_some())?;
        let inference = inference(req.inference_config.unwrap_or_default())?;
        let tools = req.tool_config.map(|cfg| tools(cfg, limits)).transpose()?;
        let routing = routing(req.routing.unwrap_or_default())?;
        Ok(Self {
            messages,
            system,
            inference,
            tools,
            routing,
            images,
        })
    }

    /// Number of images anywhere in the request (counted once, by validation).
    pub fn image_count(&self) -> usize {
        self.images
    }

    /// Number of declared tools.
    pub fn tool_count(&self) -> usize {
        self.tools.as_ref().map_or(0, |t| t.specs.len())
    }
}

/// The validated turns and the number of images they hold.
fn messages(raw: Vec<pb::Message>, limits: &Limits) -> Result<(Vec<Turn>, usize), InvalidRequest> {
    if raw.is_empty() {
        return Err(invalid("messages", "at least one message is required"));
    }
    if raw.len() > limits.max_messages {
        return Err(invalid(
            "messages",
            format!(
                "{} messages exceed the limit of {}",
                raw.len(),
                limits.max_messages
            ),
        ));
    }
    let count = raw.len();
    let mut images = 0usize;
    let mut turns = Vec::with_capacity(count);
    for (i, message) in raw.into_iter().enumerate() {
        let field = Field::indexed("messages", i);
        let role = match pb::Role::try_from(message.role) {
            Ok(pb::Role::User) => Role::User,
            Ok(pb::Role::Assistant) => Role::Assistant,
            Ok(pb::Role::Unspecified) => {
                return Err(invalid(
                    field.child("role"),
                    "must be ROLE_USER or ROLE_ASSISTANT",
                ));
            }
            Err(_) => {
                return Err(invalid(
                    field.child("role"),
                    format!("unknown role {}", message.role),
                ));
            }
        };
        let expected = if i % 2 == 0 {
            Role::User
        } else {
            Role::Assistant
        };
        if role != expected {
            let message = if i == 0 {
                "the conversation must start with a user message".to_owned()
            } else {
                "roles must alternate between user and assistant".to_owned()
            };
            return Err(invalid(field.child("role"), message));
        }
        if i + 1 == count && role != Role::User {
            return Err(invalid(
                field.child("role"),
                "the last message must be from the user",
            ));
        }
        if message.content.is_empty() {
            return Err(invalid(
                field.child("content"),
                "at least one content block is required",
            ));
        }
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
    Ok((turns, images))
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
        None => Err(invalid(
            field,
            "empty content block: set text, image, tool_use or tool_result",
        )),
        Some(B::Text(text)) => {
            if text.trim().is_empty() {
                Err(invalid(field.child("text"), "must not be empty"))
            } else {
                Ok(Block::Text(text))
            }
        }
        Some(B::Image(img)) => Ok(Block::Image(image(
            &field.child("image"),
            img,
            limits,
            images,
        )?)),
        Some(B::ToolUse(tool_use)) => {
            if role != Role::Assistant {
                return Err(invalid(
                    field.child("tool_use"),
                    "only assistant messages can hold tool calls",
                ));
            }
            tool_use_id(
                &field.child("tool_use").child("tool_use_id"),
                &tool_use.tool_use_id,
            )?;
            if !valid_tool_name(&tool_use.name) {
                return Err(invalid(
                    field.child("tool_use").child("name"),
                    format!(
                        "{:?} is not 1 to 64 letters, digits, '_' or '-'",
                        tool_use.name
                    ),
                ));
            }
            let input = json_object(
                &field.child("tool_use").child("input_json"),
                &tool_use.input_json,
            )?;
            Ok(Block::ToolUse(ToolUse {
                id: tool_use.tool_use_id,
                name: tool_use.name,
                input,
            }))
        }
        Some(B::ToolResult(result)) => {
            if role != Role::User {
                return Err(invalid(
                    field.child("tool_result"),
                    "only user messages can hold tool results",
                ));
            }
            tool_use_id(
                &field.child("tool_result").child("tool_use_id"),
                &result.tool_use_id,
            )?;
            let is_error = match pb::ToolResultStatus::try_from(result.status) {
                Ok(pb::ToolResultStatus::Unspecified | pb::ToolResultStatus::Success) => false,
                Ok(pb::ToolResultStatus::Error) => true,
                Err(_) => {
                    return Err(invalid(
                        field.child("tool_result").child("status"),
                        format!("unknown tool result status {}", result.status),
                    ));
                }
            };
            let content = result
                .content
                .into_iter()
                .enumerate()
                .map(|(k, c)| {
                    tool_result_block(
                        &field.child("tool_result").item("content", k),
                        c,
                        limits,
                        images,
                    )
                })
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
        None => Err(invalid(field, "empty block: set text, json or image")),
        Some(B::Text(text)) => Ok(ToolResultBlock::Text(text)),
        Some(B::Json(json)) => serde_json::from_str(&json)
            .map(ToolResultBlock::Json)
            .map_err(|e| invalid(field.child("json"), format!("not valid JSON: {e}"))),
        Some(B::Image(img)) => Ok(ToolResultBlock::Image(image(
            &field.child("image"),
            img,
            limits,
            images,
        )?)),
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
            return Err(invalid(
                field.child("format"),
                "must be set (PNG, JPEG, GIF or WEBP)",
            ));
        }
        Err(_) => {
            return Err(invalid(
                field.child("format"),
                format!("unknown image format {}", img.format),
            ));
        }
    };
    *images += 1;
    if *images > limits.max_images {
        return Err(invalid(
            field,
            format!("more than {} images in one request", limits.max_images),
        ));
    }
    if img.data.is_empty() {
        return Err(invalid(field.child("data"), "must not be empty"));
    }
    if img.data.len() > limits.max_image_bytes {
        return Err(invalid(
            field.child("data"),
            format!(
                "{} bytes exceed the limit of {}",
                img.data.len(),
                limits.max_image_bytes
            ),
        ));
    }
    if !format.matches(&img.data) {
        return Err(invalid(
            field.child("data"),
            format!(
                "the bytes are not a {} image",
                format.as_str().to_ascii_uppercase()
            ),
        ));
    }
    Ok(Image {
        format,
        data: img.data,
    })
}

fn json_object(field: &Field<'_>, text: &str) -> Result<Value, InvalidRequest> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| invalid(field, format!("not valid JSON: {e}")))?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(invalid(field, "must be a JSON object"))
    }
}

fn inference(cfg: pb::InferenceConfig) -> Result<Inference, InvalidRequest> {
    if cfg.max_tokens == Some(0) {
        return Err(invalid("inference_config.max_tokens", "must be at least 1"));
    }
    for (name, value) in [("temperature", cfg.temperature), ("top_p", cfg.top_p)] {
        if let Some(v) = value
            && !(0.0..=1.0).contains(&v)
        {
            return Err(invalid(
                format!("inference_config.{name}"),
                format!("{v} is outside [0, 1]"),
            ));
        }
    }
    if let Some(k) = cfg.top_k
        && !(1..=MAX_TOP_K).contains(&k)
    {
        return Err(invalid(
            "inference_config.top_k",
            format!("{k} is outside [1, {MAX_TOP_K}]"),
        ));
    }
    if cfg.stop_sequences.len() > MAX_STOP_SEQUENCES {
        return Err(invalid(
            "inference_config.stop_sequences",
            format!(
                "{} exceed the limit of {MAX_STOP_SEQUENCES}",
                cfg.stop_sequences.len()
            ),
        ));
    }
    if let Some(i) = cfg.stop_sequences.iter().position(String::is_empty) {
        return Err(invalid(
            format!("inference_config.stop_sequences[{i}]"),
            "must not be empty",
        ));
    }
    Ok(Inference {
        max_tokens: cfg.max_tokens,
        temperature: cfg.temperature,
        top_p: cfg.top_p,
        top_k: cfg.top_k,
        stop_sequences: cfg.stop_sequences,
    })
}

/// Bedrock's rule for tool names, declared or called: 1 to 64 of `[a-zA-Z0-9_-]`.
fn valid_tool_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
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
        Err(invalid(
            field,
            format!("{id:?} is not 1 to 64 letters, digits, '_', '-', '.' or ':'"),
        ))
    }
}

/// What Bedrock and the Claude models require of the tool blocks of a conversation, checked
/// here so that a broken one costs no upstream call and its message names our field: tool
/// blocks need a `tool_config`; the user turn after an assistant turn with tool calls answers
/// each of them, with its results before any other block; and a result answers a call of the
/// turn just before it (Bedrock: "Each `tool_result` block must have a corresponding
/// `tool_use` block in the previous message").
fn tool_links(turns: &[Turn], declared: bool) -> Result<(), InvalidRequest> {
    use std::collections::{HashMap, HashSet};
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
                return Err(invalid(
                    at.child("tool_result").child("tool_use_id"),
                    format!(
                        "{:?} matches no tool_use in the previous message",
                        result.tool_use_id
                    ),
                ));
            }
            if other_block {
                return Err(invalid(
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
            return Err(invalid(
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
        Err(invalid(
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
        return Err(invalid(
            field,
            "must be a JSON Schema whose top-level \"type\" is \"object\"",
        ));
    }
    if let Some(properties) = schema.get("properties") {
        let schemas = properties
            .as_object()
            .is_some_and(|p| p.values().all(|s| s.is_object() || s.is_boolean()));
        if !schemas {
            return Err(invalid(
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
            return Err(invalid(
                field,
                "\"required\" must be an array of property names",
            ));
        }
    }
    Ok(())
}

fn tools(cfg: pb::ToolConfig, limits: &Limits) -> Result<Tools, InvalidRequest> {
    if cfg.tools.is_empty() {
        return Err(invalid(
            "tool_config.tools",
            "at least one tool is required when tool_config is set",
        ));
    }
    if cfg.tools.len() > limits.max_tools {
        return Err(invalid(
            "tool_config.tools",
            format!(
                "{} tools exceed the limit of {}",
                cfg.tools.len(),
                limits.max_tools
            ),
        ));
    }
    let mut specs: Vec<ToolSpec> = Vec::with_capacity(cfg.tools.len());
    let mut names = std::collections::HashSet::with_capacity(cfg.tools.len());
    for (i, tool) in cfg.tools.into_iter().enumerate() {
        let field = Field::indexed("tool_config.tools", i);
        if !valid_tool_name(&tool.name) {
            return Err(invalid(
                field.child("name"),
                format!("{:?} is not 1 to 64 letters, digits, '_' or '-'", tool.name),
            ));
        }
        // A set, not a scan of the names so far: a request may hold many tools.
        if !names.insert(tool.name.clone()) {
            return Err(invalid(
                field.child("name"),
                format!("duplicate tool name {:?}", tool.name),
            ));
        }
        let schema_field = field.child("input_schema_json");
        let input_schema = json_object(&schema_field, &tool.input_schema_json)?;
        object_schema(&schema_field, &input_schema)?;
        specs.push(ToolSpec {
            name: tool.name,
            description: tool.description,
            input_schema,
        });
    }
    let choice_cfg = cfg.tool_choice.unwrap_or_default();
    let choice = match pb::ToolChoiceMode::try_from(choice_cfg.mode) {
        Ok(pb::ToolChoiceMode::Unspecified | pb::ToolChoiceMode::Auto) => ToolChoice::Auto,
        Ok(pb::ToolChoiceMode::Any) => ToolChoice::Any,
        Ok(pb::ToolChoiceMode::Tool) => {
            if !specs.iter().any(|s| s.name == choice_cfg.name) {
                return Err(invalid(
                    "tool_config.tool_choice.name",
                    format!("{:?} is not one of the declared tools", choice_cfg.name),
                ));
            }
            ToolChoice::Tool(choice_cfg.name)
        }
        Err(_) => {
            return Err(invalid(
                "tool_config.tool_choice.mode",
                format!("unknown tool choice mode {}", choice_cfg.mode),
            ));
        }
    };
    Ok(Tools { specs, choice })
}

fn routing(cfg: pb::RoutingOptions) -> Result<Routing, InvalidRequest> {
    let mode = match pb::RoutingMode::try_from(cfg.mode) {
        Ok(pb::RoutingMode::Unspecified | pb::RoutingMode::Auto) => RoutingMode::Auto,
        Ok(pb::RoutingMode::ForceStrong) => RoutingMode::ForceStrong,
        Ok(pb::RoutingMode::ForceFast) => RoutingMode::ForceFast,
        Err(_) => {
            return Err(invalid(
                "routing.mode",
                format!("unknown routing mode {}", cfg.mode),
            ));
        }
    };
    if !(-1.0..=1.0).contains(&cfg.quality_bias) {
        return Err(invalid(
            "routing.quality_bias",
            format!("{} is outside [-1, 1]", cfg.quality_bias),
        ));
    }
    if cfg.caller.chars().count() > MAX_CALLER_LEN {
        return Err(invalid(
            "routing.caller",
            format!("longer than {MAX_CALLER_LEN} characters"),
        ));
    }
    if cfg.caller.chars().any(char::is_control) {
        return Err(invalid(
            "routing.caller",
            "must not contain control characters",
        ));
    }
    Ok(Routing {
        mode,
        quality_bias: cfg.quality_bias,
        caller: cfg.caller,
    })
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
        ChatRequest::from_pb(req, &Limits::default())
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
                err.0.starts_with(expected),
                "expected {expected:?}, got {:?}",
                err.0
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
        let err = ChatRequest::from_pb(image_request(pb::ImageFormat::Png as i32, PNG), &limits)
            .expect_err("limit");
        assert!(err.0.contains("more than 0 images"), "{}", err.0);
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
            err.0,
            "tool_config.tools[2].name: duplicate tool name \"a\""
        );
        let limits = Limits {
            max_tools: 2,
            ..Limits::default()
        };
        let err = ChatRequest::from_pb(with_tools(vec![tool("a"), tool("b"), tool("c")]), &limits)
            .expect_err("limit");
        assert_eq!(err.0, "tool_config.tools: 3 tools exceed the limit of 2");
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
                err.0.starts_with(expected),
                "expected {expected:?}, got {:?}",
                err.0
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
            check(bad_name).expect_err("bad name").0,
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
            err.0
                .starts_with("messages[0].content[1].tool_result.content[0].json: not valid JSON"),
            "{}",
            err.0
        );
    }

    #[test]
    fn every_format_signature_is_recognised() {
        assert!(ImageFormat::Png.matches(PNG));
        assert!(ImageFormat::Jpeg.matches(&[0xFF, 0xD8, 0xFF, 0xE0]));
        assert!(ImageFormat::Gif.matches(b"GIF89a...."));
        assert!(ImageFormat::Webp.matches(b"RIFF\0\0\0\0WEBPVP8 "));
        assert!(!ImageFormat::Webp.matches(b"RIFF"));
    }
}
