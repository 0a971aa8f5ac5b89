//! TLS for tests: a CA and the certificates it issues (made here with rcgen, none committed),
//! their PEM files for `server.tls.*`, and clients that shake hands with a router over TLS —
//! a tonic `Channel`, or a raw HTTP/2 connection whose server certificate the test can see.

use std::{
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _},
};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};
use tonic::transport::{Channel, Endpoint};

/// The name the router's certificates are issued for, and clients ask for.
pub const SERVER_NAME: &str = "localhost";

/// A certificate authority.
pub struct Ca {
    /// Its certificate, PEM: the bundle `server.tls.client_ca_file` or a client trusts.
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key.
pub struct Leaf {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM (PKCS#8).
    pub key_pem: String,
    /// The certificate, DER (what a peer sees).
    pub der: CertificateDer<'static>,
}

/// Whether a certificate is valid now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// From 1975 to 4096, rcgen's default.
    Current,
    /// 2020 only.
    Expired,
}

impl Ca {
    /// A new CA called `name`.
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `sans` (DNS names, or URIs when they hold `://`), with `serial`.
    pub fn issue(&self, sans: &[&str], serial: u64, validity: Validity) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("leaf {serial}"));
        params.subject_alt_names = sans
            .iter()
            .map(|san| {
                if san.contains("://") {
                    SanType::URI((*san).try_into().unwrap())
                } else {
                    SanType::DnsName((*san).try_into().unwrap())
                }
            })
            .collect();
        params.serial_number = Some(serial.into());
        if validity == Validity::Expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

/// `server.tls.*`'s files in a directory of their own.
pub struct Files {
    /// The directory.
    pub dir: PathBuf,
}

impl Files {
    /// A new directory holding `server` (cert and key) and, with `client_ca`, that bundle.
    pub fn new(server: &Leaf, client_ca: Option<&Ca>) -> Self {
        let dir = std::env::temp_dir().join(format!("router-tls-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let files = Self { dir };
        files.write(server);
        if let Some(ca) = client_ca {
            std::fs::write(files.client_ca(), &ca.pem).unwrap();
        }
        files
    }

    /// Replaces the certificate and key, as a rotation does.
    pub fn write(&self, server: &Leaf) {
        std::fs::write(self.cert(), &server.cert_pem).unwrap();
        std::fs::write(self.key(), &server.key_pem).unwrap();
    }

    /// The certificate's path.
    pub fn cert(&self) -> PathBuf {
        self.dir.join("tls.crt")
    }

    /// The key's path.
    pub fn key(&self) -> PathBuf {
        self.dir.join("tls.key")
    }

    /// The client CA bundle's path.
    pub fn client_ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The `server.tls` table for these files, `client_ca_file` only if written.
    pub fn raw(&self, reload_interval_ms: u64) -> prompt_router_core::config::raw::RawTls {
        let path = |p: &Path| p.display().to_string();
        prompt_router_core::config::raw::RawTls {
            cert_file: path(&self.cert()),
            key_file: path(&self.key()),
            client_ca_file: self.client_ca().exists().then(|| path(&self.client_ca())),
            reload_interval_ms,
            ..Default::default()
        }
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TLS client that trusts `ca` and, with an identity, presents that certificate.
#[derive(Clone)]
pub struct Client {
    connector: TlsConnector,
}

impl Client {
    /// Trusts `ca`; presents `identity` when asked for a client certificate.
    pub fn new(ca: &Ca, identity: Option<&Leaf>) -> Self {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match identity {
            Some(leaf) => builder
                .with_client_auth_cert(
                    vec![leaf.der.clone()],
                    PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Self {
            connector: TlsConnector::from(Arc::new(config)),
        }
    }

    /// A TLS connection to `addr`, handshake done.
    pub async fn handshake(&self, addr: SocketAddr) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from(SERVER_NAME).unwrap();
        self.connector.connect(name, tcp).await
    }

    /// A raw HTTP/2 connection over TLS, its connection task spawned, and the certificate the
    /// server presented on it.
    pub async fn h2(
        &self,
        addr: SocketAddr,
    ) -> (h2::client::SendRequest<Bytes>, CertificateDer<'static>) {
        let tls = self.handshake(addr).await.expect("TLS handshake");
        let served = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        let (send, connection) = h2::client::handshake(tls).await.expect("HTTP/2 handshake");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        (send, served)
    }

    /// A tonic channel to `addr` over TLS.
    pub async fn channel(&self, addr: SocketAddr) -> Result<Channel, tonic::transport::Error> {
        Endpoint::from_shared(format!("http://{SERVER_NAME}:{}", addr.port()))
            .unwrap()
            .connect_with_connector(Connect {
                client: self.clone(),
                addr,
            })
            .await
    }
}

/// Connects tonic's channel through [`Client::handshake`].
#[derive(Clone)]
struct Connect {
    client: Client,
    addr: SocketAddr,
}

impl tower_service::Service<http::Uri> for Connect {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let (client, addr) = (self.client.clone(), self.addr);
        Box::pin(async move { client.handshake(addr).await.map(TokioIo::new) })
    }
}
