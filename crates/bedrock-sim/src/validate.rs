//! Bedrock's own request checks.
//!
//! Messages seen verbatim in public error reports: invalid model identifier, on-demand
//! throughput, maximum tokens over the model limit, must start with a user message, must
//! alternate roles, blank text field, empty content field, toolConfig required for tool blocks.
//! Bedrock-style but unverified: the Coral "1 validation error detected" constraint messages,
//! "Malformed input request", blank system text, unmatched `toolResult` ids, tool name and
//! tool choice errors, extra `additionalModelRequestFields` keys.

use std::collections::HashSet;

use base64::Engine as _;
use serde_json::Value;

use super::ModelSpec;
use super::generate::ToolMode;
use super::request::{ContentBlock, ConverseRequest, ImageBlock, ToolSpec};
use super::wire::WireError;

const INVALID_MODEL: &str = "The provided model identifier is invalid.";

/// A model id resolved against the model table.
pub(crate) struct Resolved<'a> {
    pub spec: &'a ModelSpec,
}

/// Source-region prefix a geography's inference profiles may be called from; other geographies
/// are not checked.
fn geography_region_prefix(geo: &str) -> Option<&'static str> {
    match geo {
        "us" => Some("us-"),
        "eu" => Some("eu-"),
        "apac" => Some("ap-"),
        _ => None,
    }
}

/// Resolves a base id, `GEO.base` profile id, or the ARN form of either.
pub(crate) fn resolve_model<'a>(
    models: &'a [ModelSpec],
    id: &str,
    region: Option<&str>,
    enforce_geography: bool,
) -> Result<Resolved<'a>, WireError> {
    let invalid = || WireError::validation(INVALID_MODEL);
    let (name, arn_kind) = match id.strip_prefix("arn:") {
        Some(arn) => {
            let parts: Vec<&str> = arn.splitn(5, ':').collect();
            let [partition, "bedrock", _region, _account, resource] = parts[..] else {
                return Err(invalid());
            };
            if !partition.starts_with("aws") {
                return Err(invalid());
            }
            match resource.split_once('/') {
                Some(("foundation-model", m)) => (m, Some(false)),
                Some(("inference-profile", p)) => (p, Some(true)),
                _ => return Err(invalid()),
            }
        }
        None => (id, None),
    };
    for spec in models {
        if name == spec.id && arn_kind != Some(true) {
            if !spec.on_demand {
                return Err(WireError::validation(format!(
                    "Invocation of model ID {} with on-demand throughput isn\u{2019}t supported. Retry your request \
                     with the ID or ARN of an inference profile that contains this model.",
                    spec.id
                )));
            }
            return Ok(Resolved { spec });
        }
        let profile = spec.profiles.iter().find(|geo| {
            name.strip_prefix(geo.as_str())
                .and_then(|r| r.strip_prefix('.'))
                == Some(spec.id.as_str())
        });
        if let Some(geo) = profile {
            if arn_kind == Some(false) {
                return Err(invalid());
            }
            let allowed = match (enforce_geography, geography_region_prefix(geo), region) {
                (true, Some(prefix), Some(r)) => r.starts_with(prefix),
                _ => true,
            };
            return if allowed {
                Ok(Resolved { spec })
            } else {
                Err(invalid())
            };
        }
    }
    Err(invalid())
}

fn coral(value: impl std::fmt::Display, path: &str, constraint: &str) -> WireError {
    WireError::validation(format!(
        "1 validation error detected: Value '{value}' at '{path}' failed to satisfy constraint: {constraint}"
    ))
}

fn malformed(why: impl std::fmt::Display) -> WireError {
    WireError::validation(format!(
        "Malformed input request: {why}, please reformat your input and try again."
    ))
}

/// The outcome of validation: the effective max tokens and how tools are to be used.
pub(crate) struct Checked<'a> {
    pub max_tokens: u32,
    pub tool_mode: ToolMode<'a>,
}

/// Runs Bedrock's checks on a parsed request for the resolved model.
pub(crate) fn validate<'a>(
    req: &'a ConverseRequest,
    spec: &ModelSpec,
) -> Result<Checked<'a>, WireError> {
    check_messages(req)?;
    for (i, b) in req.system.iter().enumerate() {
        if b.text.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err(WireError::validation(format!(
                "The text field in the SystemContentBlock object at system.{i} is blank. Add text to the text field, and try again."
            )));
        }
    }
    let max_tokens = check_inference(req, spec)?;
    check_additional_fields(req.additional_model_request_fields.as_ref())?;
    let tool_mode = check_tools(req)?;
    Ok(Checked {
        max_tokens,
        tool_mode,
    })
}

fn check_messages(req: &ConverseRequest) -> Result<(), WireError> {
    let start = || {
        WireError::validation(
            "A conversation must start with a user message. Try again with a conversation that starts with a user message.",
        )
    };
    let messages = req.messages.as_deref().unwrap_or_default();
    let mut previous: Option<&str> = None;
    let mut uses_tools = false;
    let mut previous_tool_ids: HashSet<&str> = HashSet::new();
    for (i, m) in messages.iter().enumerate() {
        if m.role != "user" && m.role != "assistant" {
            return Err(coral(
                &m.role,
                &format!("messages.{i}.member.role"),
                "Member must satisfy enum value set: [user, assistant]",
            ));
        }
        if i == 0 && m.role != "user" {
            return Err(start());
        }
        if previous == Some(m.role.as_str()) {
            return Err(WireError::validation(
                "A conversation must alternate between user and assistant roles. Make sure the conversation \
                 alternates between user and assistant roles and try again.",
            ));
        }
        previous = Some(&m.role);
        if m.content.is_empty() {
            return Err(WireError::validation(format!(
                "The content field in the Message object at messages.{i} is empty. Add a ContentBlock object to the \
                 content field and try again."
            )));
        }
        let mut tool_ids = HashSet::new();
        for (j, block) in m.content.iter().enumerate() {
            check_block(block, i, j)?;
            if let Some(tu) = &block.tool_use {
                uses_tools = true;
                tool_ids.insert(tu.tool_use_id.as_str());
            }
            if let Some(tr) = &block.tool_result {
                uses_tools = true;
                if !previous_tool_ids.contains(tr.tool_use_id.as_str()) {
                    return Err(WireError::validation(format!(
                        "messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: {}. Each \
                         `tool_result` block must have a corresponding `tool_use` block in the previous message.",
                        tr.tool_use_id
                    )));
                }
            }
        }
        previous_tool_ids = tool_ids;
    }
    if messages.is_empty() {
        return Err(start());
    }
    if uses_tools && req.tool_config.is_none() {
        return Err(WireError::validation(
            "The toolConfig field must be defined when using toolUse and toolResult content blocks.",
        ));
    }
    Ok(())
}

fn check_block(block: &ContentBlock, i: usize, j: usize) -> Result<(), WireError> {
    if block.text.as_deref().is_some_and(|t| t.trim().is_empty()) {
        return Err(WireError::validation(format!(
            "The text field in the ContentBlock object at messages.{i}.content.{j} is blank. Add text to the text \
             field, and try again."
        )));
    }
    if let Some(image) = &block.image {
        check_image(
            image,
            &format!("messages.{i}.member.content.{j}.member.image"),
        )?;
    }
    if let Some(tr) = &block.tool_result {
        for c in tr.content.iter().filter_map(|c| c.image.as_ref()) {
            check_image(
                c,
                &format!("messages.{i}.member.content.{j}.member.toolResult.content.member.image"),
            )?;
        }
    }
    Ok(())
}

fn check_image(image: &ImageBlock, path: &str) -> Result<(), WireError> {
    if !["png", "jpeg", "gif", "webp"].contains(&image.format.as_str()) {
        return Err(coral(
            &image.format,
            &format!("{path}.format"),
            "Member must satisfy enum value set: [png, jpeg, gif, webp]",
        ));
    }
    if image.source.s3_location.is_some() {
        return Err(WireError::validation(
            "The simulator does not support s3Location image sources.",
        ));
    }
    let bytes = image.source.bytes.as_deref().unwrap_or("");
    match base64::engine::general_purpose::STANDARD.decode(bytes) {
        Ok(b) if !b.is_empty() => Ok(()),
        Ok(_) => Err(coral(
            "",
            &format!("{path}.source.bytes"),
            "Member must have length greater than or equal to 1",
        )),
        Err(e) => Err(malformed(format!(
            "{path}.source.bytes is not valid base64 ({e})"
        ))),
    }
}

fn check_inference(req: &ConverseRequest, spec: &ModelSpec) -> Result<u32, WireError> {
    let Some(cfg) = &req.inference_config else {
        return Ok(spec.max_output_tokens);
    };
    for (name, value) in [("temperature", cfg.temperature), ("topP", cfg.top_p)] {
        let path = format!("inferenceConfig.{name}");
        match value {
            Some(v) if v < 0.0 => {
                return Err(coral(
                    v,
                    &path,
                    "Member must have value greater than or equal to 0",
                ));
            }
            Some(v) if v > 1.0 => {
                return Err(coral(
                    v,
                    &path,
                    "Member must have value less than or equal to 1",
                ));
            }
            _ => {}
        }
    }
    if cfg.stop_sequences.iter().flatten().any(String::is_empty) {
        return Err(coral(
            "",
            "inferenceConfig.stopSequences",
            "Member must satisfy constraint: [Member must have length greater than or equal to 1]",
        ));
    }
    match cfg.max_tokens {
        None => Ok(spec.max_output_tokens),
        Some(m) if m < 1 => Err(coral(
            m,
            "inferenceConfig.maxTokens",
            "Member must have value greater than or equal to 1",
        )),
        Some(m) if m > i64::from(spec.max_output_tokens) => Err(WireError::validation(format!(
            "The maximum tokens you requested exceeds the model limit of {limit}. Try again with a maximum tokens \
             value that is lower than {limit}.",
            limit = spec.max_output_tokens
        ))),
        Some(m) => Ok(u32::try_from(m).unwrap_or(spec.max_output_tokens)),
    }
}

/// Anthropic models take `top_k` here; any other key is rejected the way the model rejects it.
fn check_additional_fields(fields: Option<&Value>) -> Result<(), WireError> {
    let Some(fields) = fields else { return Ok(()) };
    let Some(map) = fields.as_object() else {
        return Err(malformed(
            "additionalModelRequestFields must be a JSON object",
        ));
    };
    for (key, value) in map {
        match key.as_str() {
            "top_k" if value.as_u64().is_some() => {}
            "top_k" => {
                return Err(malformed(format!(
                    "#/top_k: expected a non-negative integer, found: {value}"
                )));
            }
            other => {
                return Err(WireError::validation(format!(
                    "The model returned the following errors: {other}: Extra inputs are not permitted"
                )));
            }
        }
    }
    Ok(())
}

fn valid_tool_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn check_tools(req: &ConverseRequest) -> Result<ToolMode<'_>, WireError> {
    let Some(cfg) = &req.tool_config else {
        return Ok(ToolMode::None);
    };
    if cfg.tools.is_empty() {
        return Err(coral(
            "[]",
            "toolConfig.tools",
            "Member must have length greater than or equal to 1",
        ));
    }
    let specs: Vec<&ToolSpec> = cfg
        .tools
        .iter()
        .filter_map(|t| t.tool_spec.as_ref())
        .collect();
    let mut names = HashSet::new();
    for (i, s) in specs.iter().enumerate() {
        if !valid_tool_name(&s.name) {
            return Err(coral(
                &s.name,
                &format!("toolConfig.tools.{i}.member.toolSpec.name"),
                "Member must satisfy regular expression pattern: [a-zA-Z0-9_-]+",
            ));
        }
        if !names.insert(s.name.as_str()) {
            return Err(WireError::validation(
                "The model returned the following errors: tools: Tool names must be unique.",
            ));
        }
    }
    let last_user = req.messages.iter().flatten().next_back();
    let last_text: Vec<&str> = last_user
        .iter()
        .flat_map(|m| m.content.iter().filter_map(|b| b.text.as_deref()))
        .collect();
    let named = specs
        .iter()
        .copied()
        .find(|s| last_text.iter().any(|t| t.contains(s.name.as_str())));
    let answering_results =
        last_user.is_some_and(|m| m.content.iter().any(|b| b.tool_result.is_some()));
    let choice = cfg.tool_choice.as_ref();
    if let Some(wanted) = choice.and_then(|c| c.tool.as_ref()) {
        return specs
            .iter()
            .copied()
            .find(|s| s.name == wanted.name)
            .map(ToolMode::Forced)
            .ok_or_else(|| {
                WireError::validation(format!(
                    "The model returned the following errors: tool_choice.name: Tool '{}' not found in tools.",
                    wanted.name
                ))
            });
    }
    if choice.is_some_and(|c| c.any.is_some()) {
        return Ok(named
            .or(specs.first().copied())
            .map_or(ToolMode::None, ToolMode::Forced));
    }
    Ok(match named {
        Some(spec) if !answering_results => ToolMode::Auto(spec),
        _ => ToolMode::None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SimConfig;

    fn resolves(id: &str, region: Option<&str>, enforce: bool) -> Result<String, String> {
        let models = SimConfig::default().models;
        resolve_model(&models, id, region, enforce)
            .map(|r| r.spec.id.clone())
            .map_err(|e| e.message)
    }

    #[test]
    fn model_id_forms() {
        let haiku = "anthropic.claude-3-haiku-20240307-v1:0";
        let sonnet = "anthropic.claude-3-5-sonnet-20241022-v2:0";
        assert_eq!(
            resolves(haiku, Some("us-east-1"), true).as_deref(),
            Ok(haiku)
        );
        let fm = format!("arn:aws:bedrock:us-east-1::foundation-model/{haiku}");
        assert_eq!(resolves(&fm, Some("us-east-1"), true).as_deref(), Ok(haiku));
        let fm_profile = format!("arn:aws:bedrock:us-east-1::foundation-model/us.{haiku}");
        assert_eq!(
            resolves(&fm_profile, None, true),
            Err(INVALID_MODEL.to_owned())
        );
        let apac = format!("apac.{sonnet}");
        assert_eq!(
            resolves(&apac, Some("ap-southeast-2"), true).as_deref(),
            Ok(sonnet)
        );
        assert_eq!(
            resolves(&apac, Some("us-east-1"), true),
            Err(INVALID_MODEL.to_owned())
        );
        assert_eq!(
            resolves(&apac, Some("us-east-1"), false).as_deref(),
            Ok(sonnet)
        );
        assert_eq!(resolves(&apac, None, true).as_deref(), Ok(sonnet));
        assert!(resolves(sonnet, None, true).is_err_and(|m| m.contains("on-demand throughput")));
        assert_eq!(
            resolves(&format!("eu.{sonnet}"), Some("eu-west-1"), true),
            Err(INVALID_MODEL.to_owned())
        );
    }
}
