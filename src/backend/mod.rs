//! The Bedrock boundary: the real `aws-sdk-bedrockruntime` client, its construction, the two
//! calls the router makes and the translation of their answers. Nothing above this module
//! touches SDK types.

mod clock;
mod convert;
mod error;

use std::time::Duration;

use aws_sdk_bedrockruntime::{
    Client,
    config::{
        BehaviorVersion, Credentials, ProvideCredentials, Region, retry::RetryConfig,
        timeout::TimeoutConfig,
    },
    primitives::event_stream::EventReceiver,
    types::{self as bt, error::ConverseStreamOutputError},
};
use serde_json::Value;

pub use self::clock::{CallClock, CallTime};
pub use self::convert::ConverseParts;
pub use self::error::BackendError;
use prompt_router_core::{config::BedrockConfig, cost::Usage, request::ChatRequest};

/// The Bedrock Runtime clients the router calls models with, one per source region.
#[derive(Debug, Clone)]
pub struct Bedrock {
    regions: Vec<Client>,
    stream_idle_timeout: Duration,
}

/// How the client finds its credentials.
#[derive(Debug, Clone)]
pub enum Auth {
    /// The AWS default chain: environment, profile, web identity (IRSA), ECS, IMDS.
    DefaultChain,
    /// Fixed dummy keys, for endpoints that do not check signatures (the simulator).
    Dummy,
}

/// The start-up problems that stop the router from calling Bedrock.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// No credentials in the default chain.
    #[error(
        "no AWS credentials found ({0}). Configure credentials (environment, profile, IRSA, instance role), \
         or try the router offline with `prompt-router serve --simulate`"
    )]
    NoCredentials(String),
}

/// A whole answer from Converse.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The assistant's content blocks.
    pub content: Vec<OutputBlock>,
    /// Bedrock's stop reason (end_turn, max_tokens, stop_sequence, tool_use, …).
    pub stop_reason: String,
    /// Tokens read and written.
    pub usage: Usage,
}

/// One block of an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputBlock {
    /// Text.
    Text(String),
    /// A tool call.
    ToolUse {
        /// The call's id.
        id: String,
        /// The tool.
        name: String,
        /// Its arguments.
        input: Value,
    },
}

/// One event of a streamed answer, as the router uses it.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// A tool-use block starts.
    ToolUseStart {
        /// Block index.
        index: u32,
        /// The call's id.
        id: String,
        /// The tool.
        name: String,
    },
    /// More text.
    Text {
        /// Block index.
        index: u32,
        /// The text.
        text: String,
    },
    /// More of a tool call's JSON input.
    ToolInput {
        /// Block index.
        index: u32,
        /// The fragment.
        json: String,
    },
    /// Generation stopped.
    Stop {
        /// Bedrock's stop reason.
        reason: String,
    },
    /// Final token counts.
    Usage(Usage),
}

/// A streamed answer being received.
#[derive(Debug)]
pub struct EventStream {
    rx: EventReceiver<bt::ConverseStreamOutput, ConverseStreamOutputError>,
    idle_timeout: Duration,
}

/// Fills a Converse or ConverseStream request builder: the two have the same setters but are
/// different types.
macro_rules! with_parts {
    ($builder:expr, $model_id:expr, $parts:expr) => {{
        let parts: ConverseParts = $parts;
        $builder
            .model_id($model_id)
            .set_messages(Some(parts.messages))
            .set_system((!parts.system.is_empty()).then_some(parts.system))
            .set_inference_config(parts.inference)
            .set_tool_config(parts.tools)
            .set_additional_model_request_fields(parts.additional)
    }};
}

impl Bedrock {
    /// Builds one client per source region of `config` (the first is the primary). With
    /// [`Auth::DefaultChain`] it checks once that credentials resolve, so a machine without any
    /// fails at start with advice, not per request.
    pub async fn connect(config: &BedrockConfig, auth: Auth) -> Result<Self, SetupError> {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(config.connect_timeout)
            .build();
        let base = match auth {
            Auth::DefaultChain => {
                let shared = aws_config::defaults(BehaviorVersion::latest())
                    .region(Region::new(config.region.clone()))
                    .load()
                    .await;
                // A Bedrock API key (bearer token) replaces SigV4 credentials entirely.
                if std::env::var_os("AWS_BEARER_TOKEN_BEDROCK").is_none() {
                    check_credentials(&shared).await?;
                }
                aws_sdk_bedrockruntime::config::Builder::from(&shared)
            }
            Auth::Dummy => aws_sdk_bedrockruntime::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .credentials_provider(Credentials::new(
                    "prompt-router-dummy",
                    "prompt-router-dummy",
                    None,
                    None,
                    "prompt-router",
                )),
        };
        let regions = config
            .regions()
            .into_iter()
            .map(|region| {
                // The router owns retries and fallbacks (it can switch model or region, the SDK
                // cannot), so the SDK makes exactly one attempt per call.
                let mut builder = base
                    .clone()
                    .region(Region::new(region))
                    .retry_config(RetryConfig::disabled())
                    .timeout_config(timeouts.clone());
                if let Some(url) = &config.endpoint_url {
                    builder = builder.endpoint_url(url);
                }
                Client::from_conf(builder.build())
            })
            .collect();
        Ok(Self {
            regions,
            stream_idle_timeout: config.stream_idle_timeout,
        })
    }

    fn client(&self, region: usize) -> Result<&Client, BackendError> {
        self.regions.get(region).ok_or_else(|| BackendError::Build {
            message: format!("no client for region index {region}"),
        })
    }

    /// Calls Converse on `model_id` through source region number `region` and waits for the
    /// whole answer; `clock` learns how the call's time splits between the SDK and upstream.
    pub async fn converse(
        &self,
        region: usize,
        model_id: &str,
        parts: ConverseParts,
        clock: &CallClock,
    ) -> Result<Completion, BackendError> {
        let client = self.client(region)?;
        clock.sdk_starts();
        let sent = with_parts!(client.converse(), model_id, parts)
            .customize()
            .interceptor(clock.interceptor())
            .send()
            .await;
        clock.sdk_returned(false);
        let output = sent.map_err(BackendError::from)?;
        let content = match output.output {
            Some(bt::ConverseOutput::Message(message)) => message
                .content
                .into_iter()
                .filter_map(output_block)
                .collect(),
            _ => {
                return Err(BackendError::BadResponse {
                    message: "Converse answered without a message".to_owned(),
                });
            }
        };
        Ok(Completion {
            content,
            stop_reason: output.stop_reason.as_str().to_owned(),
            usage: usage(output.usage.as_ref()),
        })
    }

    /// Starts ConverseStream on `model_id` through source region number `region`; returns once
    /// Bedrock has accepted the call, so a refusal (throttling, validation) arrives here rather
    /// than as a stream event. From then on `clock` counts the call as upstream time: the
    /// SDK's share of a stream is its work up to the response head.
    pub async fn converse_stream(
        &self,
        region: usize,
        model_id: &str,
        parts: ConverseParts,
        clock: &CallClock,
    ) -> Result<EventStream, BackendError> {
        let client = self.client(region)?;
        clock.sdk_starts();
        let sent = with_parts!(client.converse_stream(), model_id, parts)
            .customize()
            .interceptor(clock.interceptor())
            .send()
            .await;
        clock.sdk_returned(sent.is_ok());
        let output = sent.map_err(BackendError::from)?;
        Ok(EventStream {
            rx: output.stream,
            idle_timeout: self.stream_idle_timeout,
        })
    }
}

impl EventStream {
    /// The next event the router cares about; `None` when Bedrock ends the stream. A silence
    /// longer than the idle timeout is a [`BackendError::Timeout`].
    pub async fn next(&mut self) -> Result<Option<StreamEvent>, BackendError> {
        loop {
            let received = tokio::time::timeout(self.idle_timeout, self.rx.recv())
                .await
                .map_err(|_| BackendError::Timeout {
                    message: format!("no stream event for {} ms", self.idle_timeout.as_millis()),
                })?;
            let Some(event) = received.map_err(BackendError::from)? else {
                return Ok(None);
            };
            if let Some(event) = stream_event(event) {
                return Ok(Some(event));
            }
        }
    }
}

async fn check_credentials(shared: &aws_config::SdkConfig) -> Result<(), SetupError> {
    let provider = shared
        .credentials_provider()
        .ok_or_else(|| SetupError::NoCredentials("no credentials provider".to_owned()))?;
    provider
        .provide_credentials()
        .await
        .map(drop)
        .map_err(|e| SetupError::NoCredentials(e.to_string()))
}

/// Turns a validated request into what every attempt sends, once per request: attempts clone it.
pub fn prepare(req: ChatRequest) -> Result<ConverseParts, BackendError> {
    convert::converse_parts(req).map_err(|e| BackendError::Build {
        message: e.to_string(),
    })
}

fn output_block(block: bt::ContentBlock) -> Option<OutputBlock> {
    match block {
        bt::ContentBlock::Text(text) => Some(OutputBlock::Text(text)),
        bt::ContentBlock::ToolUse(tool_use) => Some(OutputBlock::ToolUse {
            input: convert::to_json(&tool_use.input),
            id: tool_use.tool_use_id,
            name: tool_use.name,
        }),
        // Reasoning, citations and the like are not part of the router's API yet.
        _ => None,
    }
}

fn stream_event(event: bt::ConverseStreamOutput) -> Option<StreamEvent> {
    match event {
        bt::ConverseStreamOutput::ContentBlockStart(start) => match start.start {
            Some(bt::ContentBlockStart::ToolUse(tool_use)) => Some(StreamEvent::ToolUseStart {
                index: index(start.content_block_index),
                id: tool_use.tool_use_id,
                name: tool_use.name,
            }),
            _ => None,
        },
        bt::ConverseStreamOutput::ContentBlockDelta(delta) => {
            let idx = index(delta.content_block_index);
            match delta.delta {
                Some(bt::ContentBlockDelta::Text(text)) => {
                    Some(StreamEvent::Text { index: idx, text })
                }
                Some(bt::ContentBlockDelta::ToolUse(tool_use)) => Some(StreamEvent::ToolInput {
                    index: idx,
                    json: tool_use.input,
                }),
                _ => None,
            }
        }
        bt::ConverseStreamOutput::MessageStop(stop) => Some(StreamEvent::Stop {
            reason: stop.stop_reason.as_str().to_owned(),
        }),
        bt::ConverseStreamOutput::Metadata(metadata) => {
            Some(StreamEvent::Usage(usage(metadata.usage.as_ref())))
        }
        _ => None,
    }
}

fn index(i: i32) -> u32 {
    u32::try_from(i).unwrap_or(0)
}

fn usage(usage: Option<&bt::TokenUsage>) -> Usage {
    usage.map_or_else(Usage::default, |u| Usage {
        input_tokens: u32::try_from(u.input_tokens).unwrap_or(0),
        output_tokens: u32::try_from(u.output_tokens).unwrap_or(0),
    })
}
