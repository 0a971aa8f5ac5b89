//! The router's errors, and the one place they become gRPC statuses: each cause gets the code
//! of the README's error table (which is also its metric label, through
//! [`code_label`](crate::protocol::code_label)), invalid requests carry a `BadRequest` field
//! violation in the status details, and internal details are logged here, never sent to the
//! caller.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::{
    backend::BackendError,
    limits::{Limit, Limited},
};
use prompt_router_core::{
    caller::{Forbidden, Refusal},
    policy::Unservable,
    request::InvalidRequest,
};

/// Why a request failed, from the transport's first look at it to a stream's last event.
#[derive(Debug)]
pub enum Error {
    /// The request breaks a rule; names the field.
    InvalidRequest(InvalidRequest),
    /// No configured model can serve the request.
    Unservable(Unservable),
    /// The request message is not valid protobuf; prost's message names the field.
    Undecodable(String),
    /// The call did not carry exactly one whole request message.
    Framing(Framing),
    /// A limit of the router's was reached.
    Overloaded(Overload),
    /// A deadline passed.
    Deadline(Deadline),
    /// Bedrock failed the call after `attempts` calls; `error` is the last one's failure.
    Upstream {
        /// The last call's failure.
        error: BackendError,
        /// Calls made for the request, the failed last one included.
        attempts: u32,
        /// The request's id, for the log line an internal status points at.
        request_id: String,
    },
    /// Every target of the request is ejected after repeated failures.
    Ejected,
    /// Bedrock's stream failed after `deltas` text deltas had gone to the caller.
    StreamBroken {
        /// The failure.
        error: BackendError,
        /// Text deltas sent before it.
        deltas: u32,
        /// The request's id, for the log line an internal status points at.
        request_id: String,
    },
    /// The shutdown's drain time ran out before the request finished.
    CutOff,
    /// A reply that is not valid protobuf (seen by a client of this crate's codec).
    UndecodableReply(String),
    /// A feedback that cannot be joined to a request or recorded.
    Feedback(Feedback),
    /// Missing or wrong credentials; says which, never what was sent.
    Unauthenticated(String),
    /// The caller's policy does not allow what the request asks; names the rule.
    Forbidden(Forbidden),
    /// A caller's rate limit or spend budget refused the request, or the shared limit store
    /// is unreachable and the caller's policy fails closed; names the limit.
    Limited(Limited),
}

/// Why a feedback was refused (its fields were valid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feedback {
    /// No request with this id is remembered: never answered here, older than
    /// `quality.feedback_ttl_ms`, or pushed out by `quality.feedback_capacity` newer ones.
    Unknown(String),
    /// The request already has a recorded feedback.
    AlreadyGiven(String),
    /// No label store is configured, so the router keeps no requests to join feedback to.
    NoStore,
}

/// How a call's request message failed to arrive whole and alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No message at all.
    NoMessage,
    /// The body ended `have` bytes into the 5-byte message prefix.
    PrefixCutShort {
        /// Bytes of the prefix that arrived.
        have: usize,
    },
    /// The body ended `have` bytes into a message of `len`.
    MessageCutShort {
        /// Bytes of the message that arrived.
        have: usize,
        /// The length the prefix announced.
        len: usize,
    },
    /// A second message followed the first.
    SecondMessage,
    /// The body ended after the message had gone on, in a state that cannot end early.
    EndedEarly,
}

/// Which of the router's limits refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overload {
    /// No slot free; `key` is the config key of the limit.
    Concurrency {
        /// `server.max_concurrency` or `server.max_route_concurrency`.
        key: &'static str,
    },
    /// No slot free for health and reflection calls.
    OtherCalls,
    /// The message announced is larger than `server.max_request_bytes`.
    RequestBytes {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Handling the request would take more than `server.max_inflight_request_bytes` alone.
    RequestMemory {
        /// What it would take.
        bytes: u64,
        /// The limit.
        max: u64,
    },
    /// `server.max_inflight_request_bytes` is taken by requests in flight.
    MemoryInFlight,
}

/// Which deadline passed, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// The call's deadline, before the model answered.
    BeforeAnswer,
    /// The call's deadline, during a stream after this many text deltas.
    AfterDeltas(u32),
    /// The call's deadline, while the caller was not reading the stream.
    CallerNotReading,
    /// `server.request_read_timeout_ms`: the request did not arrive in full in time.
    RequestRead(Duration),
}

impl From<InvalidRequest> for Error {
    fn from(err: InvalidRequest) -> Self {
        Self::InvalidRequest(err)
    }
}

impl From<Unservable> for Error {
    fn from(err: Unservable) -> Self {
        Self::Unservable(err)
    }
}

impl From<Refusal> for Error {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Unauthenticated(message) => Self::Unauthenticated(message),
            Refusal::Forbidden(forbidden) => Self::Forbidden(forbidden),
        }
    }
}

impl From<Limited> for Error {
    fn from(limited: Limited) -> Self {
        Self::Limited(limited)
    }
}

impl From<Forbidden> for Error {
    fn from(forbidden: Forbidden) -> Self {
        Self::Forbidden(forbidden)
    }
}

// === impl Error ===

impl Error {
    /// The gRPC code of the README's error table.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidRequest(_)
            | Self::Unservable(_)
            | Self::Undecodable(_)
            | Self::Framing(_) => Code::InvalidArgument,
            Self::Overloaded(_) => Code::ResourceExhausted,
            Self::Deadline(_) => Code::DeadlineExceeded,
            Self::Upstream { error, .. } | Self::StreamBroken { error, .. } => upstream_code(error),
            Self::Ejected | Self::CutOff => Code::Unavailable,
            Self::UndecodableReply(_) => Code::Internal,
            Self::Feedback(Feedback::Unknown(_)) => Code::NotFound,
            Self::Feedback(Feedback::AlreadyGiven(_)) => Code::AlreadyExists,
            Self::Feedback(Feedback::NoStore) => Code::FailedPrecondition,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::Forbidden(_) => Code::PermissionDenied,
            Self::Limited(Limited {
                limit: Limit::StoreDown,
                ..
            }) => Code::Unavailable,
            Self::Limited(_) => Code::ResourceExhausted,
        }
    }
}

/// The code of a Bedrock failure; no `_` arm, so a new kind needs a decision.
fn upstream_code(err: &BackendError) -> Code {
    match err {
        BackendError::Throttled { .. } => Code::ResourceExhausted,
        BackendError::ModelTimeout { .. } => Code::DeadlineExceeded,
        BackendError::Validation { .. } => Code::InvalidArgument,
        BackendError::ModelNotReady { .. }
        | BackendError::ServiceUnavailable { .. }
        | BackendError::InternalServer { .. }
        | BackendError::Connection { .. }
        | BackendError::Timeout { .. } => Code::Unavailable,
        BackendError::AccessDenied { .. }
        | BackendError::NotFound { .. }
        | BackendError::ModelError { .. }
        | BackendError::ModelStreamError { .. }
        | BackendError::BadResponse { .. }
        | BackendError::Build { .. }
        | BackendError::Unknown { .. } => Code::Internal,
    }
}

/// What the caller is told about a Bedrock failure. An internal one is logged (inside the
/// request span, which names the request id) and the caller gets only the id.
fn upstream_message(err: &BackendError, request_id: &str) -> String {
    match err {
        BackendError::Throttled { message } => {
            format!("Bedrock throttled the call (ThrottlingException): {message}")
        }
        BackendError::ModelNotReady { message } => {
            format!("the model is not ready (ModelNotReadyException): {message}")
        }
        BackendError::ServiceUnavailable { message } => {
            format!("Bedrock is unavailable (ServiceUnavailableException): {message}")
        }
        BackendError::InternalServer { message } => {
            format!("Bedrock had an internal error (InternalServerException): {message}")
        }
        BackendError::ModelTimeout { message } => {
            format!("the model timed out (ModelTimeoutException): {message}")
        }
        BackendError::Validation { message } => {
            format!("Bedrock refused the request (ValidationException): {message}")
        }
        BackendError::Connection { .. } => "cannot reach Bedrock".to_owned(),
        BackendError::Timeout { .. } => "Bedrock did not answer in time".to_owned(),
        BackendError::AccessDenied { .. }
        | BackendError::NotFound { .. }
        | BackendError::ModelError { .. }
        | BackendError::ModelStreamError { .. }
        | BackendError::BadResponse { .. }
        | BackendError::Build { .. }
        | BackendError::Unknown { .. } => {
            tracing::error!(kind = err.kind(), error = %err, "upstream call failed");
            format!("internal error; the router's logs have the details (request id {request_id})")
        }
    }
}

impl std::fmt::Display for Framing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoMessage => f.write_str("the call carried no request message"),
            Self::PrefixCutShort { have } => write!(
                f,
                "the request ended {have} bytes into the 5-byte gRPC message prefix"
            ),
            Self::MessageCutShort { have, len } => write!(
                f,
                "the request message was cut short: {have} of its {len} bytes arrived"
            ),
            Self::SecondMessage => f.write_str("the call carried more than one request message"),
            Self::EndedEarly => f.write_str("the request ended early"),
        }
    }
}

impl std::fmt::Display for Overload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Concurrency { key } => write!(
                f,
                "the router is at its concurrency limit ({key}); retry with backoff"
            ),
            Self::OtherCalls => f.write_str(
                "the router is at its limit of health and reflection calls; retry with backoff",
            ),
            Self::RequestBytes { len, max } => write!(
                f,
                "the request message is {len} bytes; server.max_request_bytes allows {max}"
            ),
            Self::RequestMemory { bytes, max } => write!(
                f,
                "handling this request would take {} MiB, more than server.max_inflight_request_bytes ({} MiB) allows",
                bytes >> 20,
                max >> 20
            ),
            Self::MemoryInFlight => f.write_str(
                "the router is at its memory limit for requests in flight (server.max_inflight_request_bytes); retry with backoff",
            ),
        }
    }
}

impl std::fmt::Display for Deadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BeforeAnswer => {
                f.write_str("the call's deadline passed before the model answered")
            }
            Self::AfterDeltas(deltas) => {
                write!(f, "the call's deadline passed after {deltas} text deltas")
            }
            Self::CallerNotReading => f.write_str(
                "the call's deadline passed while the caller was not reading the stream",
            ),
            Self::RequestRead(timeout) => write!(
                f,
                "the request did not arrive in full within server.request_read_timeout_ms ({} ms)",
                timeout.as_millis()
            ),
        }
    }
}

impl std::fmt::Display for Feedback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unknown(id) => write!(
                f,
                "no recent answered request has id {id:?}: unknown, older than quality.feedback_ttl_ms, \
                 or pushed out by quality.feedback_capacity newer ones"
            ),
            Self::AlreadyGiven(id) => {
                write!(f, "request {id:?} already has a recorded feedback")
            }
            Self::NoStore => f.write_str(
                "feedback is not recorded: no label store is configured (quality.store)",
            ),
        }
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let code = err.code();
        let violation = |field: &str, description: String| {
            ErrorDetails::with_bad_request_violation(field, description)
        };
        match err {
            Error::InvalidRequest(invalid) => Status::with_error_details(
                code,
                invalid.to_string(),
                violation(invalid.field(), invalid.message().to_owned()),
            ),
            Error::Unservable(unservable) => match unservable.field() {
                Some(field) => Status::with_error_details(
                    code,
                    unservable.to_string(),
                    violation(field, unservable.reason()),
                ),
                None => Status::new(code, unservable.to_string()),
            },
            Error::Undecodable(message) | Error::UndecodableReply(message) => {
                Status::new(code, format!("undecodable message: {message}"))
            }
            Error::Framing(framing) => Status::new(code, framing.to_string()),
            Error::Overloaded(overload) => Status::new(code, overload.to_string()),
            Error::Deadline(deadline) => Status::new(code, deadline.to_string()),
            Error::Feedback(feedback) => Status::new(code, feedback.to_string()),
            Error::Unauthenticated(message) => Status::new(code, message),
            Error::Forbidden(forbidden) => Status::new(code, forbidden.to_string()),
            Error::Limited(limited) => match limited.retry_after {
                Some(after) => Status::with_error_details(
                    code,
                    limited.to_string(),
                    ErrorDetails::with_retry_info(Some(after)),
                ),
                None => Status::new(code, limited.to_string()),
            },
            Error::Upstream {
                error,
                attempts,
                request_id,
            } => {
                let message = upstream_message(&error, &request_id);
                // One call needs no count; after retries, the count says the router tried.
                if attempts > 1 {
                    Status::new(code, format!("{message} (after {attempts} attempts)"))
                } else {
                    Status::new(code, message)
                }
            }
            Error::Ejected => Status::new(
                code,
                "every Bedrock target for this request is ejected after repeated failures; retry later",
            ),
            Error::StreamBroken {
                error,
                deltas,
                request_id,
            } => Status::new(
                code,
                format!(
                    "the model's stream failed after {deltas} text deltas: {}",
                    upstream_message(&error, &request_id)
                ),
            ),
            Error::CutOff => Status::new(
                code,
                "the router is shutting down and its drain time (server.drain_timeout_ms) ran out before \
                 this request finished; retry",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prompt_router_core::request::Field;

    fn upstream(error: BackendError) -> Status {
        Status::from(Error::Upstream {
            error,
            attempts: 1,
            request_id: "req-1".to_owned(),
        })
    }

    #[test]
    fn every_backend_error_has_the_designed_code() {
        let m = || "m".to_owned();
        let cases = [
            (
                BackendError::Throttled { message: m() },
                Code::ResourceExhausted,
            ),
            (
                BackendError::ModelNotReady { message: m() },
                Code::Unavailable,
            ),
            (
                BackendError::ServiceUnavailable { message: m() },
                Code::Unavailable,
            ),
            (
                BackendError::InternalServer { message: m() },
                Code::Unavailable,
            ),
            (
                BackendError::ModelTimeout { message: m() },
                Code::DeadlineExceeded,
            ),
            (
                BackendError::Validation { message: m() },
                Code::InvalidArgument,
            ),
            (BackendError::AccessDenied { message: m() }, Code::Internal),
            (BackendError::NotFound { message: m() }, Code::Internal),
            (BackendError::ModelError { message: m() }, Code::Internal),
            (
                BackendError::ModelStreamError { message: m() },
                Code::Internal,
            ),
            (BackendError::Timeout { message: m() }, Code::Unavailable),
            (BackendError::Connection { message: m() }, Code::Unavailable),
            (BackendError::BadResponse { message: m() }, Code::Internal),
            (BackendError::Build { message: m() }, Code::Internal),
            (
                BackendError::Unknown {
                    code: m(),
                    message: m(),
                },
                Code::Internal,
            ),
        ];
        for (err, code) in cases {
            let shown = err.to_string();
            let status = upstream(err);
            assert_eq!(status.code(), code, "{shown}");
            assert!(!status.message().is_empty());
        }
    }

    #[test]
    fn internal_errors_do_not_leak_upstream_text() {
        let status = upstream(BackendError::AccessDenied {
            message: "arn:aws:iam::123456789012:role/secret".to_owned(),
        });
        assert!(
            !status.message().contains("arn:aws"),
            "{}",
            status.message()
        );
        assert!(status.message().contains("req-1"));
    }

    #[test]
    fn retries_are_counted_in_the_message_and_a_broken_stream_says_when() {
        let throttled = || BackendError::Throttled {
            message: "slow down".to_owned(),
        };
        let status = Status::from(Error::Upstream {
            error: throttled(),
            attempts: 4,
            request_id: "req-3".to_owned(),
        });
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(
            status.message().ends_with("slow down (after 4 attempts)"),
            "{}",
            status.message()
        );
        let status = Status::from(Error::StreamBroken {
            error: throttled(),
            deltas: 3,
            request_id: "req-3".to_owned(),
        });
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(
            status
                .message()
                .starts_with("the model's stream failed after 3 text deltas: Bedrock throttled"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn invalid_requests_carry_the_field_in_bad_request_details() {
        let field = Field::indexed("messages", 2);
        let status = Status::from(Error::from(
            field
                .child("role")
                .invalid("the last message must be from the user"),
        ));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "messages[2].role: the last message must be from the user"
        );
        let violations = status.get_details_bad_request().expect("details");
        assert_eq!(violations.field_violations.len(), 1);
        assert_eq!(violations.field_violations[0].field, "messages[2].role");
        assert_eq!(
            violations.field_violations[0].description,
            "the last message must be from the user"
        );

        let status = Status::from(Error::from(Unservable::Tools));
        assert_eq!(status.code(), Code::InvalidArgument);
        let violations = status.get_details_bad_request().expect("details");
        assert_eq!(violations.field_violations[0].field, "tool_config");
        let status = Status::from(Error::from(Unservable::Combination));
        assert!(status.get_details_bad_request().is_none());
    }

    #[test]
    fn limits_name_their_key_and_carry_retry_info() {
        let limited = |limit, retry_after| {
            Status::from(Error::from(Limited {
                limit,
                key: "callers.batch".to_owned(),
                retry_after,
            }))
        };
        let status = limited(Limit::Requests, Some(Duration::from_millis(1_500)));
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "the caller's rate limit (callers.batch.requests_per_second) is reached; retry in 1.500 s"
        );
        assert_eq!(
            status.get_details_retry_info().and_then(|r| r.retry_delay),
            Some(Duration::from_millis(1_500))
        );
        let status = limited(Limit::UsdPerMonth, Some(Duration::from_secs(3_600)));
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().contains("callers.batch.usd_per_month"));
        assert!(status.message().contains("3600 s"));
        let status = limited(Limit::StoreDown, None);
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains("limits.redis_url"));
        assert!(status.message().contains("callers.batch.on_store_down"));
        assert!(status.get_details_retry_info().is_none());
    }
}
