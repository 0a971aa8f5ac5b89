//! Who a call's credentials say it is from: a bearer token in `authorization`, matched by its
//! SHA-256 against `callers.NAME.token_sha256`, and a verified client certificate's SANs,
//! matched against `callers.NAME.san`. Run for every PromptRouter RPC; health is another
//! service and never asks.
//!
//! Wrong credentials are never ignored, whether or not `auth.required` is set: a token no
//! caller has, a malformed `authorization`, or a token and a certificate naming two callers
//! are refused with UNAUTHENTICATED. The messages say what was wrong and never echo what was
//! sent.

use std::sync::Arc;

use sha2::{Digest as _, Sha256};
use tonic::metadata::MetadataMap;

use super::tls::Peer;
use crate::telemetry;
use prompt_router_core::caller::{Callers, TokenDigest};

/// The metadata key of the bearer token.
const AUTHORIZATION: &str = "authorization";

/// Why credentials were refused: the `reason` label and the message of the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// `auth.required` and no credentials.
    Missing,
    /// An `authorization` value that is not one `Bearer <token>`.
    Malformed,
    /// A token no caller has.
    UnknownToken,
    /// `auth.required` and a client certificate whose SANs name no caller.
    Certificate,
    /// The token and the certificate name different callers, or the certificate two.
    Mismatch,
}

impl Failure {
    /// Every kind, for the counters made at start.
    pub const ALL: [Self; 5] = [
        Self::Missing,
        Self::Malformed,
        Self::UnknownToken,
        Self::Certificate,
        Self::Mismatch,
    ];

    /// Makes every `router_auth_failures_total` series exist at zero, so rates and alerts work
    /// from the first scrape.
    pub fn register() {
        for failure in Self::ALL {
            metrics::counter!(telemetry::AUTH_FAILURES_TOTAL, "reason" => failure.reason())
                .increment(0);
        }
    }

    /// The `router_auth_failures_total` label.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::UnknownToken => "unknown_token",
            Self::Certificate => "certificate",
            Self::Mismatch => "mismatch",
        }
    }

    /// The status message.
    pub fn message(self) -> &'static str {
        match self {
            Self::Missing => {
                "this router requires credentials: a bearer token in `authorization` or a client certificate (auth.required)"
            }
            Self::Malformed => "`authorization` must be one `Bearer <token>`",
            Self::UnknownToken => {
                "the bearer token in `authorization` is not one this router knows"
            }
            Self::Certificate => {
                "the client certificate's SANs name no caller (callers.NAME.san), and auth.required is set"
            }
            Self::Mismatch => {
                "the credentials name more than one caller (the bearer token and the client certificate must be the same caller's)"
            }
        }
    }
}

/// The caller `metadata`'s token and `peer`'s certificate identify, `None` when they send
/// none that identifies one (allowed unless `auth.required`); a refusal is counted.
pub fn identify(
    callers: &Callers,
    metadata: &MetadataMap,
    peer: Option<&Peer>,
) -> Result<Option<Arc<str>>, Failure> {
    let identified = identified(callers, metadata, peer);
    if let Err(failure) = identified {
        metrics::counter!(telemetry::AUTH_FAILURES_TOTAL, "reason" => failure.reason())
            .increment(1);
    }
    identified
}

fn identified(
    callers: &Callers,
    metadata: &MetadataMap,
    peer: Option<&Peer>,
) -> Result<Option<Arc<str>>, Failure> {
    let by_token = bearer(metadata)?
        .map(|token| {
            let digest = TokenDigest(Sha256::digest(token.as_bytes()).into());
            callers
                .by_token_sha256(&digest)
                .ok_or(Failure::UnknownToken)
        })
        .transpose()?;
    let mut by_cert = None;
    for name in peer.into_iter().flat_map(Peer::sans) {
        if let Some(caller) = callers.by_san(name) {
            if by_cert.is_some_and(|seen: &Arc<str>| seen != caller) {
                return Err(Failure::Mismatch);
            }
            by_cert = Some(caller);
        }
    }
    match (by_token, by_cert) {
        (Some(token), Some(cert)) if token != cert => Err(Failure::Mismatch),
        (Some(caller), _) | (None, Some(caller)) => Ok(Some(Arc::clone(caller))),
        (None, None) if callers.required && peer.is_some() => Err(Failure::Certificate),
        (None, None) if callers.required => Err(Failure::Missing),
        (None, None) => Ok(None),
    }
}

/// The token of `authorization: Bearer <token>`, if the header is there.
fn bearer(metadata: &MetadataMap) -> Result<Option<&str>, Failure> {
    let mut values = metadata.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Failure::Malformed);
    }
    let value = value.to_str().map_err(|_| Failure::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(Failure::Malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer")
        || token.is_empty()
        || token.contains(|c: char| c.is_ascii_whitespace())
    {
        return Err(Failure::Malformed);
    }
    Ok(Some(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_authorization(values: &[&str]) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        for value in values {
            metadata.append(AUTHORIZATION, value.parse().expect("ascii"));
        }
        metadata
    }

    #[test]
    fn bearer_takes_one_well_formed_header() {
        assert_eq!(bearer(&MetadataMap::new()), Ok(None));
        assert_eq!(
            bearer(&with_authorization(&["Bearer abc"])),
            Ok(Some("abc"))
        );
        assert_eq!(
            bearer(&with_authorization(&["bearer  abc "])),
            Ok(Some("abc"))
        );
        for bad in [
            &["Basic abc"][..],
            &["Bearer"],
            &["Bearer "],
            &["Bearer a b"],
            &["abc"],
            &["Bearer a", "Bearer b"],
        ] {
            assert_eq!(
                bearer(&with_authorization(bad)),
                Err(Failure::Malformed),
                "{bad:?}"
            );
        }
    }
}
