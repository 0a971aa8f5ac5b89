//! TLS on the gRPC port (`server.tls.*`): the rustls server config built from the PEM files,
//! rebuilt when they change on disk, and what a verified client certificate says about its
//! holder.
//!
//! cert-manager and Kubernetes secret mounts replace the files in place, so on SIGHUP and every
//! `server.tls.reload_interval_ms` the three files are read again and their digest compared
//! with the one in force. A change that builds is in force for new connections (open ones keep
//! the config they shook hands with); one that does not (unparsable, a key that does not match
//! the certificate, a half-written rotation) is logged and the old config kept, and the next
//! look tries again. Messages name the file and what is wrong with it, never its contents.

use std::{
    path::Path,
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use anyhow::{Context as _, anyhow};
use rustls::{
    RootCertStore, ServerConfig, ServerConnection,
    crypto::{CryptoProvider, aws_lc_rs},
    server::WebPkiClientVerifier,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use sha2::{Digest as _, Sha256};
use tokio::{sync::watch, task::JoinHandle};
use tokio_rustls::TlsAcceptor;

use crate::telemetry;
use prompt_router_core::config::{ClientCert, TlsConfig};

/// Encrypted bytes a connection holds for a socket that does not take them: past this, writes
/// wait (rustls's default is 64 KiB), so memory per connection stays bounded.
pub const SEND_BUFFER: usize = 32 << 10;

/// The TLS config in force and the files it comes from.
#[derive(Debug)]
pub struct Tls {
    files: TlsConfig,
    current: RwLock<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    config: Arc<ServerConfig>,
    digest: [u8; 32],
}

/// What a look at the files found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The files are as they were.
    Unchanged,
    /// They changed and the new config is in force.
    Ok,
    /// They changed and do not build; why (naming the key and the file).
    Rejected(String),
}

impl Reload {
    /// The metric label, `None` for no change (not counted).
    fn outcome(&self) -> Option<&'static str> {
        match self {
            Self::Unchanged => None,
            Self::Ok => Some("ok"),
            Self::Rejected(_) => Some("rejected"),
        }
    }
}

/// The files' contents, read once per look.
struct Read {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Read {
    fn from(files: &TlsConfig) -> Result<Self, String> {
        Ok(Self {
            cert: read("server.tls.cert_file", &files.cert_file)?,
            key: read("server.tls.key_file", &files.key_file)?,
            client_ca: files
                .client_ca_file
                .as_deref()
                .map(|path| read("server.tls.client_ca_file", path))
                .transpose()?,
        })
    }

    /// One digest of the three files, each with its length first so that bytes cannot move
    /// from one file to the next unnoticed.
    fn digest(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        for part in [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()] {
            let part = part.map_or(&[][..], Vec::as_slice);
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        hasher.finalize().into()
    }

    fn build(&self, files: &TlsConfig) -> Result<Arc<ServerConfig>, String> {
        let provider = Arc::new(aws_lc_rs::default_provider());
        let certs = certificates("server.tls.cert_file", &files.cert_file, &self.cert)?;
        // The parser's own message could quote a line of the key file, so it is not passed on.
        let key = PrivateKeyDer::from_pem_slice(&self.key).map_err(|_| {
            format!(
                "server.tls.key_file: {} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
                files.key_file.display()
            )
        })?;
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("server.tls: {e}"))?;
        let builder = match (&self.client_ca, &files.client_ca_file) {
            (Some(pem), Some(path)) => builder.with_client_cert_verifier(client_verifier(
                path,
                pem,
                files.client_cert,
                Arc::clone(&provider),
            )?),
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|e| {
            format!(
                "server.tls.key_file: {} does not go with the certificate in {}: {e}",
                files.key_file.display(),
                files.cert_file.display()
            )
        })?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{key}: cannot read {}: {e}", path.display()))
}

fn certificates(
    key: &str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{key}: {} is not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{key}: {} holds no certificate", path.display()));
    }
    Ok(certs)
}

/// Verifies client certificates against the CA bundle; requires one at the handshake unless
/// `server.tls.client_cert` is `optional`.
fn client_verifier(
    path: &Path,
    pem: &[u8],
    client_cert: ClientCert,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    const KEY: &str = "server.tls.client_ca_file";
    let mut roots = RootCertStore::empty();
    for cert in certificates(KEY, path, pem)? {
        roots.add(cert).map_err(|e| {
            format!(
                "{KEY}: a certificate in {} is unusable: {e}",
                path.display()
            )
        })?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let verifier = match client_cert {
        ClientCert::Required => verifier,
        ClientCert::Optional => verifier.allow_unauthenticated(),
    };
    verifier
        .build()
        .map_err(|e| format!("{KEY}: {}: {e}", path.display()))
}

impl Tls {
    /// Reads and builds `files`; the error names the key of the file that is missing or bad.
    pub fn load(files: &TlsConfig) -> anyhow::Result<Self> {
        let read = Read::from(files).map_err(|e| anyhow!(e))?;
        let config = read.build(files).map_err(|e| anyhow!(e))?;
        Ok(Self {
            files: files.clone(),
            current: RwLock::new(Loaded {
                config,
                digest: read.digest(),
            }),
        })
    }

    /// The acceptor new connections shake hands with.
    pub fn acceptor(&self) -> TlsAcceptor {
        let config = Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .config,
        );
        TlsAcceptor::from(config)
    }

    /// Reads the files and, if they changed, builds and puts in force the new config; logs and
    /// counts a change's outcome.
    pub fn reload(&self) -> Reload {
        let outcome = self.look();
        if let Some(label) = outcome.outcome() {
            metrics::counter!(telemetry::TLS_RELOADS_TOTAL, "outcome" => label).increment(1);
        }
        match &outcome {
            Reload::Unchanged => {}
            Reload::Ok => tracing::info!(
                cert_file = %self.files.cert_file.display(),
                "TLS files changed; new connections use them"
            ),
            Reload::Rejected(why) => tracing::warn!(
                cert_file = %self.files.cert_file.display(),
                "TLS files changed and are refused, the ones in force are kept: {why}"
            ),
        }
        outcome
    }

    fn look(&self) -> Reload {
        let read = match Read::from(&self.files) {
            Ok(read) => read,
            Err(why) => return Reload::Rejected(why),
        };
        let digest = read.digest();
        let in_force = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .digest;
        if digest == in_force {
            return Reload::Unchanged;
        }
        match read.build(&self.files) {
            Ok(config) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) =
                    Loaded { config, digest };
                Reload::Ok
            }
            Err(why) => Reload::Rejected(why),
        }
    }

    /// Counts a handshake that failed for the client's certificate (none sent, expired, from
    /// another CA); other failures (a client not speaking TLS, a reset) are not credentials.
    pub fn refused(error: &std::io::Error) {
        let certificate = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .is_some_and(|e| {
                matches!(
                    e,
                    rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
                )
            });
        if certificate {
            metrics::counter!(telemetry::AUTH_FAILURES_TOTAL, "reason" => "certificate")
                .increment(1);
        }
    }
}

/// Looks at the files on SIGHUP and every `interval` (if set), until `shutdown`.
pub fn spawn(
    tls: Arc<Tls>,
    interval: Option<Duration>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    Ok(tokio::spawn(async move {
        // The files were read at start: the first look is one interval on.
        let mut tick = interval.map(|every| {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        });
        loop {
            let polled = async {
                match &mut tick {
                    Some(tick) => {
                        tick.tick().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return,
                _ = hangup.recv() => {}
                () = polled => {}
            }
            let tls = Arc::clone(&tls);
            // Reading files and parsing keys blocks; it stays off the request workers.
            let _ = tokio::task::spawn_blocking(move || tls.reload()).await;
        }
    }))
}

/// The peer of a connection whose client certificate was verified: the names its leaf
/// certificate's subject alternative names give (DNS names and URIs, such as SPIFFE ids).
#[derive(Debug, Clone)]
pub struct Peer {
    sans: Arc<[String]>,
}

impl Peer {
    /// The verified client of `connection`, if it sent a certificate.
    pub fn of(connection: &ServerConnection) -> Option<Self> {
        let leaf = connection.peer_certificates()?.first()?;
        Some(Self {
            sans: subject_alt_names(leaf).into(),
        })
    }

    /// The certificate's DNS and URI SANs.
    pub fn sans(&self) -> impl Iterator<Item = &str> {
        self.sans.iter().map(String::as_str)
    }
}

/// The DNS names and URIs in a DER certificate's subjectAltName extension (RFC 5280,
/// 4.2.1.6); none when it has none or cannot be read. The certificate has been verified by
/// then, so this only walks a structure webpki has already parsed.
pub fn subject_alt_names(cert: &[u8]) -> Vec<String> {
    san_extension(cert).map(general_names).unwrap_or_default()
}

/// DER tags this walk meets.
mod tag {
    pub const SEQUENCE: u8 = 0x30;
    pub const OID: u8 = 0x06;
    pub const BOOLEAN: u8 = 0x01;
    pub const OCTET_STRING: u8 = 0x04;
    /// `[3] EXPLICIT Extensions` in TBSCertificate.
    pub const EXTENSIONS: u8 = 0xa3;
    /// `dNSName [2] IA5String` in GeneralName.
    pub const DNS_NAME: u8 = 0x82;
    /// `uniformResourceIdentifier [6] IA5String` in GeneralName.
    pub const URI: u8 = 0x86;
}

/// id-ce-subjectAltName, 2.5.29.17, as DER content octets.
const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

/// One DER element off the front of `input`: its tag, its contents and the rest.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    // High tag numbers (0x1f) do not occur in the structures walked here.
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, rest) = rest.split_at(count);
        let len = bytes
            .iter()
            .fold(0usize, |len, &b| (len << 8) | usize::from(b));
        (len, rest)
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

/// The elements of a constructed value's contents.
fn elements(mut contents: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (tag, value, rest) = element(contents)?;
        contents = rest;
        Some((tag, value))
    })
}

/// The contents of the subjectAltName extension's value (GeneralNames).
fn san_extension(cert: &[u8]) -> Option<&[u8]> {
    let (tag::SEQUENCE, certificate, _) = element(cert)? else {
        return None;
    };
    let (tag::SEQUENCE, tbs, _) = element(certificate)? else {
        return None;
    };
    let (_, extensions) = elements(tbs).find(|&(tag, _)| tag == tag::EXTENSIONS)?;
    let (tag::SEQUENCE, extensions, _) = element(extensions)? else {
        return None;
    };
    elements(extensions).find_map(|(tag, extension)| {
        if tag != tag::SEQUENCE {
            return None;
        }
        let mut parts = elements(extension);
        let (tag::OID, SUBJECT_ALT_NAME) = parts.next()? else {
            return None;
        };
        let (mut tag, mut value) = parts.next()?;
        if tag == tag::BOOLEAN {
            (tag, value) = parts.next()?;
        }
        (tag == tag::OCTET_STRING).then_some(value)
    })
}

fn general_names(extension: &[u8]) -> Vec<String> {
    let Some((tag::SEQUENCE, names, _)) = element(extension) else {
        return Vec::new();
    };
    elements(names)
        .filter(|&(tag, _)| tag == tag::DNS_NAME || tag == tag::URI)
        .filter_map(|(_, name)| std::str::from_utf8(name).ok().map(str::to_owned))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate made with rcgen, with a DNS, a URI and an IP SAN.
    fn cert_with(sans: Vec<rcgen::SanType>) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = sans;
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn dns_and_uri_sans_are_read_and_an_ip_is_not() {
        let der = cert_with(vec![
            rcgen::SanType::DnsName("batch.internal".try_into().expect("dns")),
            rcgen::SanType::URI("spiffe://prod/ns/batch/sa/worker".try_into().expect("uri")),
            rcgen::SanType::IpAddress([10, 0, 0, 1].into()),
        ]);
        assert_eq!(
            subject_alt_names(&der),
            ["batch.internal", "spiffe://prod/ns/batch/sa/worker"]
        );
    }

    #[test]
    fn a_certificate_without_sans_has_none() {
        assert!(subject_alt_names(&cert_with(Vec::new())).is_empty());
    }

    #[test]
    fn truncated_or_garbage_input_gives_no_names() {
        let der = cert_with(vec![rcgen::SanType::DnsName(
            "a.example".try_into().expect("dns"),
        )]);
        for cut in [0, 1, 2, 10, der.len() / 2, der.len() - 1] {
            assert!(subject_alt_names(&der[..cut]).is_empty(), "cut at {cut}");
        }
        assert!(subject_alt_names(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_empty());
        assert!(subject_alt_names(&[0x1f, 0x01, 0x00]).is_empty());
    }
}
