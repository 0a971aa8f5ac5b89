//! Errors at the gRPC boundary: each cause gets the code of the README's error table, and a bounded
//! label for metrics. Internal details are logged here and never sent to the caller.

use tonic::{Code, Status};

use crate::backend::BackendError;

/// The gRPC status for a failed Bedrock call; `request_id` lets an operator find the log line.
pub fn from_backend(err: &BackendError, request_id: &str) -> Status {
    match err {
        BackendError::Throttled { message } => Status::resource_exhausted(format!(
            "Bedrock throttled the call (ThrottlingException): {message}"
        )),
        BackendError::ModelNotReady { message } => Status::unavailable(format!(
            "the model is not ready (ModelNotReadyException): {message}"
        )),
        BackendError::ServiceUnavailable { message } => Status::unavailable(format!(
            "Bedrock is unavailable (ServiceUnavailableException): {message}"
        )),
        BackendError::InternalServer { message } => Status::unavailable(format!(
            "Bedrock had an internal error (InternalServerException): {message}"
        )),
        BackendError::ModelTimeout { message } => Status::deadline_exceeded(format!(
            "the model timed out (ModelTimeoutException): {message}"
        )),
        BackendError::Validation { message } => Status::invalid_argument(format!(
            "Bedrock refused the request (ValidationException): {message}"
        )),
        BackendError::Connection { .. } => Status::unavailable("cannot reach Bedrock"),
        BackendError::Timeout { .. } => Status::unavailable("Bedrock did not answer in time"),
        BackendError::AccessDenied { .. }
        | BackendError::NotFound { .. }
        | BackendError::ModelError { .. }
        | BackendError::ModelStreamError { .. }
        | BackendError::BadResponse { .. }
        | BackendError::Build { .. }
        | BackendError::Unknown { .. } => {
            // Inside the request span, which names the request id.
            tracing::error!(kind = err.kind(), error = %err, "upstream call failed");
            internal(request_id)
        }
    }
}

/// An INTERNAL status that points at the logs instead of leaking details.
pub fn internal(request_id: &str) -> Status {
    Status::internal(format!(
        "internal error; the router's logs have the details (request id {request_id})"
    ))
}

/// The metric-label form of a gRPC code.
pub fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let status = from_backend(&err, "req-1");
            assert_eq!(status.code(), code, "{err}");
            assert!(!status.message().is_empty());
        }
    }

    #[test]
    fn internal_errors_do_not_leak_upstream_text() {
        let status = from_backend(
            &BackendError::AccessDenied {
                message: "arn:aws:iam::123456789012:role/secret".to_owned(),
            },
            "req-2",
        );
        assert!(
            !status.message().contains("arn:aws"),
            "{}",
            status.message()
        );
        assert!(status.message().contains("req-2"));
    }
}
