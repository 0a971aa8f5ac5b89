//! Bedrock Runtime's HTTP responses: errors (`x-amzn-ErrorType`), the Converse JSON, the
//! ConverseStream response head and its channel-fed body.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Body, Frame};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::generate::{Answer, OutBlock};

/// Response body of every simulator response.
pub(crate) type SimBody = BoxBody<Bytes, BodyAbort>;

/// Ends a response body with an error, which makes hyper cut the connection mid-response.
#[derive(Debug, thiserror::Error)]
#[error("simulated connection drop")]
pub(crate) struct BodyAbort;

/// Returned by the HTTP service to make hyper close the connection without any response.
#[derive(Debug, thiserror::Error)]
#[error("simulated connection drop before the response")]
pub(crate) struct DropConnection;

/// The errors Bedrock Runtime models for Converse/ConverseStream, named exactly as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BedrockError {
    /// 403, caller lacks permission.
    AccessDeniedException,
    /// 404, model or profile not found for this account.
    ResourceNotFoundException,
    /// 429, account quota exceeded.
    ThrottlingException,
    /// 429, model is being loaded.
    ModelNotReadyException,
    /// 408, model took too long.
    ModelTimeoutException,
    /// 500, internal error.
    InternalServerException,
    /// 503, service unavailable.
    ServiceUnavailableException,
    /// 400, request invalid.
    ValidationException,
    /// 424, the model itself failed.
    ModelErrorException,
    /// Only inside a ConverseStream (`modelStreamErrorException`); sent as ModelErrorException on Converse.
    ModelStreamErrorException,
}

impl BedrockError {
    /// Every kind, for parsing names.
    pub const ALL: [Self; 10] = [
        Self::AccessDeniedException,
        Self::ResourceNotFoundException,
        Self::ThrottlingException,
        Self::ModelNotReadyException,
        Self::ModelTimeoutException,
        Self::InternalServerException,
        Self::ServiceUnavailableException,
        Self::ValidationException,
        Self::ModelErrorException,
        Self::ModelStreamErrorException,
    ];

    /// The shape name, as in `x-amzn-ErrorType`.
    pub fn name(self) -> &'static str {
        match self {
            Self::AccessDeniedException => "AccessDeniedException",
            Self::ResourceNotFoundException => "ResourceNotFoundException",
            Self::ThrottlingException => "ThrottlingException",
            Self::ModelNotReadyException => "ModelNotReadyException",
            Self::ModelTimeoutException => "ModelTimeoutException",
            Self::InternalServerException => "InternalServerException",
            Self::ServiceUnavailableException => "ServiceUnavailableException",
            Self::ValidationException => "ValidationException",
            Self::ModelErrorException => "ModelErrorException",
            Self::ModelStreamErrorException => "ModelStreamErrorException",
        }
    }

    /// HTTP status from the service model's `httpError` traits.
    pub fn status(self) -> u16 {
        match self {
            Self::AccessDeniedException => 403,
            Self::ResourceNotFoundException => 404,
            Self::ThrottlingException | Self::ModelNotReadyException => 429,
            Self::ModelTimeoutException => 408,
            Self::InternalServerException => 500,
            Self::ServiceUnavailableException => 503,
            Self::ValidationException => 400,
            Self::ModelErrorException | Self::ModelStreamErrorException => 424,
        }
    }

    /// The `ConverseStreamOutput` union member carrying this error mid-stream, if there is one.
    pub fn stream_member(self) -> Option<&'static str> {
        match self {
            Self::InternalServerException => Some("internalServerException"),
            Self::ModelStreamErrorException => Some("modelStreamErrorException"),
            Self::ValidationException => Some("validationException"),
            Self::ThrottlingException => Some("throttlingException"),
            Self::ServiceUnavailableException => Some("serviceUnavailableException"),
            _ => None,
        }
    }

    /// The error a non-streaming Converse returns for this kind.
    pub(crate) fn for_converse(self) -> Self {
        if self == Self::ModelStreamErrorException {
            Self::ModelErrorException
        } else {
            self
        }
    }

    /// Parses a shape name (`ThrottlingException`) or stream member name (`throttlingException`).
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s || k.stream_member() == Some(s))
    }

    /// A message in the style Bedrock uses for this error.
    pub(crate) fn default_message(self) -> &'static str {
        match self {
            Self::AccessDeniedException => {
                "You don't have access to the model with the specified model ID."
            }
            Self::ResourceNotFoundException => "The specified resource could not be found.",
            Self::ThrottlingException => "Too many requests, please wait before trying again.",
            Self::ModelNotReadyException => {
                "Model is not ready for inference. Wait and try your request again."
            }
            Self::ModelTimeoutException => {
                "Model has timed out in processing the request. Try your request again."
            }
            Self::InternalServerException => {
                "The system encountered an unexpected error during processing. Try your request again."
            }
            Self::ServiceUnavailableException => "Bedrock is unable to process your request.",
            Self::ValidationException => "The request failed validation.",
            Self::ModelErrorException => "The model returned an error. Try your request again.",
            Self::ModelStreamErrorException => {
                "The model stream was interrupted. Try your request again."
            }
        }
    }
}

/// An HTTP-level error response: status, `x-amzn-ErrorType` name and message.
#[derive(Debug, Clone)]
pub(crate) struct WireError {
    pub name: &'static str,
    pub status: u16,
    pub message: String,
}

impl WireError {
    pub(crate) fn new(kind: BedrockError, message: impl Into<String>) -> Self {
        Self {
            name: kind.name(),
            status: kind.status(),
            message: message.into(),
        }
    }

    pub(crate) fn validation(message: impl Into<String>) -> Self {
        Self::new(BedrockError::ValidationException, message)
    }
}

fn full(body: impl Into<Bytes>) -> SimBody {
    Full::new(body.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

fn with_request_id(mut resp: Response<SimBody>, request_id: &str) -> Response<SimBody> {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        resp.headers_mut().insert("x-amzn-RequestId", v);
    }
    resp
}

/// A plain JSON response (used by the admin endpoints too).
pub(crate) fn json_response(status: u16, body: &Value) -> Response<SimBody> {
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// An error exactly as Bedrock sends one: status, `x-amzn-ErrorType`, `{"message": …}`.
pub(crate) fn error_response(err: &WireError, request_id: &str) -> Response<SimBody> {
    let mut resp = json_response(err.status, &json!({ "message": err.message }));
    let error_type = format!(
        "{}:http://internal.amazon.com/coral/com.amazon.bedrock/",
        err.name
    );
    if let Ok(v) = HeaderValue::from_str(&error_type) {
        resp.headers_mut().insert("x-amzn-ErrorType", v);
    }
    with_request_id(resp, request_id)
}

fn block_json(block: &OutBlock) -> Value {
    match block {
        OutBlock::Text { text } => json!({ "text": text }),
        OutBlock::ToolUse {
            id, name, input, ..
        } => {
            json!({ "toolUse": { "toolUseId": id, "name": name, "input": input } })
        }
    }
}

pub(crate) fn usage_json(a: &Answer) -> Value {
    json!({
        "inputTokens": a.input_tokens,
        "outputTokens": a.output_tokens,
        "totalTokens": a.input_tokens.saturating_add(a.output_tokens),
    })
}

/// The `Converse` 200 response.
pub(crate) fn converse_response(
    a: &Answer,
    latency_ms: u64,
    request_id: &str,
) -> Response<SimBody> {
    let content: Vec<Value> = a.blocks.iter().map(block_json).collect();
    let body = json!({
        "output": { "message": { "role": "assistant", "content": content } },
        "stopReason": a.stop_reason.as_str(),
        "usage": usage_json(a),
        "metrics": { "latencyMs": latency_ms },
    });
    with_request_id(json_response(200, &body), request_id)
}

/// The `ConverseStream` 200 response head; events follow on `body`.
pub(crate) fn stream_response(body: ChannelBody, request_id: &str) -> Response<SimBody> {
    let mut resp = Response::new(body.boxed());
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.amazon.eventstream"),
    );
    with_request_id(resp, request_id)
}

/// A response body fed by the stream task through a channel, so events leave as they are made.
pub(crate) struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, BodyAbort>>,
}

impl ChannelBody {
    pub(crate) fn channel() -> (mpsc::Sender<Result<Bytes, BodyAbort>>, Self) {
        let (tx, rx) = mpsc::channel(16);
        (tx, Self { rx })
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BodyAbort;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyAbort>>> {
        self.rx
            .poll_recv(cx)
            .map(|item| item.map(|r| r.map(Frame::data)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_round_trip() {
        for k in BedrockError::ALL {
            assert_eq!(BedrockError::from_name(k.name()), Some(k));
            if let Some(m) = k.stream_member() {
                assert_eq!(BedrockError::from_name(m), Some(k));
            }
        }
        assert_eq!(BedrockError::from_name("Throttling"), None);
    }
}
