//! Every way a Bedrock call can fail, turned once, here, into [`BackendError`] (`From<SdkError>`).

use aws_sdk_bedrockruntime::{
    error::{DisplayErrorContext, ProvideErrorMetadata, SdkError},
    operation::{converse::ConverseError, converse_stream::ConverseStreamError},
    types::error::ConverseStreamOutputError,
};

/// A failed Bedrock call, by cause. `message` is Bedrock's text where it sent one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// ThrottlingException: over a quota.
    #[error("ThrottlingException: {message}")]
    Throttled {
        /// Bedrock's message.
        message: String,
    },
    /// ModelNotReadyException: the model is loading.
    #[error("ModelNotReadyException: {message}")]
    ModelNotReady {
        /// Bedrock's message.
        message: String,
    },
    /// ServiceUnavailableException.
    #[error("ServiceUnavailableException: {message}")]
    ServiceUnavailable {
        /// Bedrock's message.
        message: String,
    },
    /// InternalServerException.
    #[error("InternalServerException: {message}")]
    InternalServer {
        /// Bedrock's message.
        message: String,
    },
    /// ModelTimeoutException: the model took too long.
    #[error("ModelTimeoutException: {message}")]
    ModelTimeout {
        /// Bedrock's message.
        message: String,
    },
    /// ValidationException: Bedrock refused the request's content or parameters.
    #[error("ValidationException: {message}")]
    Validation {
        /// Bedrock's message.
        message: String,
    },
    /// AccessDeniedException: the router's credentials may not call this model.
    #[error("AccessDeniedException: {message}")]
    AccessDenied {
        /// Bedrock's message.
        message: String,
    },
    /// ResourceNotFoundException: the model or profile does not exist here.
    #[error("ResourceNotFoundException: {message}")]
    NotFound {
        /// Bedrock's message.
        message: String,
    },
    /// ModelErrorException: the model failed on this input.
    #[error("ModelErrorException: {message}")]
    ModelError {
        /// Bedrock's message.
        message: String,
    },
    /// ModelStreamErrorException: the model failed mid-stream.
    #[error("ModelStreamErrorException: {message}")]
    ModelStreamError {
        /// Bedrock's message.
        message: String,
    },
    /// No answer in time (connect, or the SDK's own timeouts).
    #[error("timed out: {message}")]
    Timeout {
        /// What timed out.
        message: String,
    },
    /// The connection failed or dropped.
    #[error("connection failed: {message}")]
    Connection {
        /// The transport's description.
        message: String,
    },
    /// An answer that could not be understood.
    #[error("unreadable response: {message}")]
    BadResponse {
        /// What was wrong.
        message: String,
    },
    /// The request could not be built (a bug: validation should have refused it).
    #[error("request could not be built: {message}")]
    Build {
        /// The builder's complaint.
        message: String,
    },
    /// An error Bedrock's model does not describe.
    #[error("unexpected error {code}: {message}")]
    Unknown {
        /// The error code, or "none".
        code: String,
        /// Its message.
        message: String,
    },
}

impl BackendError {
    /// Whether another attempt (on this or another target) may succeed: throttling, capacity,
    /// transient server faults and transport failures. Refusals of the request itself are final,
    /// and so is a model timeout, which has already used up most of the caller's time.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Throttled { .. }
            | Self::ModelNotReady { .. }
            | Self::ServiceUnavailable { .. }
            | Self::InternalServer { .. }
            | Self::ModelStreamError { .. }
            | Self::Timeout { .. }
            | Self::Connection { .. } => true,
            Self::ModelTimeout { .. }
            | Self::Validation { .. }
            | Self::AccessDenied { .. }
            | Self::NotFound { .. }
            | Self::ModelError { .. }
            | Self::BadResponse { .. }
            | Self::Build { .. }
            | Self::Unknown { .. } => false,
        }
    }

    /// Whether the failure counts against the target (this model through this source region)
    /// for outlier ejection. Throttling does not: it says this account is over a quota, not
    /// that the target is broken, so it moves the request on (backoff, another region, the
    /// retry budget) but never ejects; a storm of it would otherwise eject every target at
    /// once and keep them ejected after Bedrock recovered.
    pub fn faults_target(&self) -> bool {
        self.retryable() && !matches!(self, Self::Throttled { .. })
    }

    /// A bounded label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Throttled { .. } => "throttling",
            Self::ModelNotReady { .. } => "model_not_ready",
            Self::ServiceUnavailable { .. } => "service_unavailable",
            Self::InternalServer { .. } => "internal_server",
            Self::ModelTimeout { .. } => "model_timeout",
            Self::Validation { .. } => "validation",
            Self::AccessDenied { .. } => "access_denied",
            Self::NotFound { .. } => "not_found",
            Self::ModelError { .. } => "model_error",
            Self::ModelStreamError { .. } => "model_stream_error",
            Self::Timeout { .. } => "timeout",
            Self::Connection { .. } => "connection",
            Self::BadResponse { .. } => "bad_response",
            Self::Build { .. } => "build",
            Self::Unknown { .. } => "unknown",
        }
    }
}

/// Every SDK error of the three Bedrock error shapes the router sees, as one of ours: the one
/// place an SDK failure gets its kind.
impl<E: ServiceFailure, R: std::fmt::Debug> From<SdkError<E, R>> for BackendError {
    fn from(err: SdkError<E, R>) -> Self {
        let message = match &err {
            SdkError::ServiceError(_) => String::new(),
            other => DisplayErrorContext(other).to_string(),
        };
        match err {
            SdkError::ServiceError(service) => service.into_err().into_backend_error(),
            SdkError::TimeoutError(_) => Self::Timeout { message },
            SdkError::DispatchFailure(failure) if failure.is_timeout() => Self::Timeout { message },
            SdkError::DispatchFailure(_) => Self::Connection { message },
            SdkError::ResponseError(_) => Self::BadResponse { message },
            SdkError::ConstructionFailure(_) => Self::Build { message },
            _ => Self::Unknown {
                code: "none".to_owned(),
                message,
            },
        }
    }
}

/// A modelled Bedrock error of one operation, told apart by its variant.
pub trait ServiceFailure: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static {
    /// Ours for this error.
    fn into_backend_error(self) -> BackendError;
}

fn message_of(err: &impl ProvideErrorMetadata) -> String {
    err.message().unwrap_or_default().to_owned()
}

fn unknown(err: &impl ProvideErrorMetadata) -> BackendError {
    BackendError::Unknown {
        code: err.code().unwrap_or("none").to_owned(),
        message: message_of(err),
    }
}

/// Implements [`ServiceFailure`] for an operation's error enum: the nine errors Converse and
/// ConverseStream share, plus any the operation adds. The SDK's enums are #[non_exhaustive], so
/// each needs a catch-all arm; ours has none.
macro_rules! operation_failure {
    ($error:ident $(, $variant:ident => $ours:ident)*) => {
        impl ServiceFailure for $error {
            fn into_backend_error(self) -> BackendError {
                let message = message_of(&self);
                match self {
                    Self::ThrottlingException(_) => BackendError::Throttled { message },
                    Self::ModelNotReadyException(_) => BackendError::ModelNotReady { message },
                    Self::ServiceUnavailableException(_) => BackendError::ServiceUnavailable { message },
                    Self::InternalServerException(_) => BackendError::InternalServer { message },
                    Self::ModelTimeoutException(_) => BackendError::ModelTimeout { message },
                    Self::ValidationException(_) => BackendError::Validation { message },
                    Self::AccessDeniedException(_) => BackendError::AccessDenied { message },
                    Self::ResourceNotFoundException(_) => BackendError::NotFound { message },
                    Self::ModelErrorException(_) => BackendError::ModelError { message },
                    $(Self::$variant(_) => BackendError::$ours { message },)*
                    other => unknown(&other),
                }
            }
        }
    };
}

operation_failure!(ConverseError);
operation_failure!(ConverseStreamError, ModelStreamErrorException => ModelStreamError);

// Mid-stream exceptions arrive as typed variants whose `code()` is None, so the variant is the
// only reliable signal here.
impl ServiceFailure for ConverseStreamOutputError {
    fn into_backend_error(self) -> BackendError {
        let message = message_of(&self);
        match self {
            Self::ThrottlingException(_) => BackendError::Throttled { message },
            Self::ServiceUnavailableException(_) => BackendError::ServiceUnavailable { message },
            Self::InternalServerException(_) => BackendError::InternalServer { message },
            Self::ValidationException(_) => BackendError::Validation { message },
            Self::ModelStreamErrorException(_) => BackendError::ModelStreamError { message },
            other => unknown(&other),
        }
    }
}
