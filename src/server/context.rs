//! Per-request facts from a call's metadata: its request id, its deadline (from `grpc-timeout`,
//! less the margin [`deadline`](super::deadline) keeps) and its span; and how a reply or an
//! error leaves with them.

use std::time::Duration;

use tokio::time::Instant;
use tonic::{Response, Status, metadata::MetadataMap};
use tracing::{Span, field::Empty};

use super::{auth::Failure, deadline, error::Error};
use crate::protocol::REQUEST_ID;

/// Per-request facts from the call's metadata.
pub struct Context {
    /// The caller's id when usable, else a new one.
    pub request_id: String,
    /// When the router answers at the latest.
    pub deadline: Instant,
    /// The request's span.
    pub span: Span,
    /// The caller its credentials identified, if any.
    pub authenticated: Option<std::sync::Arc<str>>,
    /// Why its credentials were refused, if they were.
    pub refused: Option<Failure>,
}

impl Context {
    /// The context of an `rpc` call received now with `metadata`; `default_deadline` is the time
    /// allowed when the caller sets no deadline.
    pub fn new(rpc: &'static str, metadata: &MetadataMap, default_deadline: Duration) -> Self {
        let received = Instant::now();
        let request_id = request_id(metadata.get(REQUEST_ID).and_then(|v| v.to_str().ok()));
        let budget = deadline::grpc_timeout(metadata).map_or(default_deadline, deadline::budget);
        let span = tracing::info_span!(
            "request",
            rpc,
            request_id = request_id.as_str(),
            caller = Empty,
            tier = Empty,
            score = Empty,
            threshold = Empty,
            operating_point = Empty,
            model = Empty,
            attempts = Empty,
            outcome = Empty,
            input_tokens = Empty,
            output_tokens = Empty,
            cost_usd = Empty,
        );
        Self {
            request_id,
            deadline: received
                .checked_add(budget)
                .unwrap_or_else(|| received + default_deadline),
            span,
            authenticated: None,
            refused: None,
        }
    }

    /// The caller the credentials identified (`None`: they named none), or UNAUTHENTICATED if
    /// they were refused.
    pub fn credentials(&self) -> Result<Option<&str>, Error> {
        match self.refused {
            Some(failure) => Err(Error::Unauthenticated(failure.message().to_owned())),
            None => Ok(self.authenticated.as_deref()),
        }
    }

    /// The status of `err`, built inside the request span (an internal error's log line
    /// names the request) and carrying the request id.
    pub fn status(&self, err: Error) -> Status {
        let mut status: Status = self.span.in_scope(|| err.into());
        self.tag(status.metadata_mut());
        status
    }

    /// The reply, or the error's status, with the request id.
    pub fn respond<T>(&self, result: Result<T, Status>) -> Result<Response<T>, Status> {
        result.map(|body| {
            let mut response = Response::new(body);
            self.tag(response.metadata_mut());
            response
        })
    }

    fn tag(&self, metadata: &mut MetadataMap) {
        if let Ok(value) = self.request_id.parse() {
            metadata.insert(REQUEST_ID, value);
        }
    }
}

/// The caller's request id when it is usable (1 to 128 visible ASCII characters), else a new
/// random one.
pub fn request_id(sent: Option<&str>) -> String {
    sent.filter(|id| !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| format!("{:032x}", fastrand::u128(..)), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_timeout_does_not_overflow_the_deadline() {
        let mut md = MetadataMap::new();
        md.insert("grpc-timeout", "99999999H".parse().expect("ascii"));
        let ctx = Context::new("Converse", &md, Duration::from_secs(120));
        assert!(ctx.deadline > Instant::now());
    }
}
