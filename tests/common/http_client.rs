//! The tests' HTTP/1.1 client for plain-HTTP endpoints (`/metrics`, the simulator's wire and
//! admin API, Prometheus's API): hyper's client connection, one TCP connection per request, so
//! bodies are framed and de-chunked by hyper rather than split by hand. Tests that must send
//! what no client would (half a request, garbage) write raw bytes themselves.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;

/// Why an exchange failed: connecting, the HTTP exchange itself, or reading the body.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// A whole response.
#[derive(Debug)]
pub struct Reply {
    /// The HTTP version the server answered with.
    pub version: http::Version,
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: http::HeaderMap,
    /// The body, de-chunked.
    pub body: Bytes,
}

impl Reply {
    /// A header's value, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).expect("UTF-8 body")
    }
}

/// Sends one request to `addr` (`host:port`) on a new connection and reads the whole response.
pub async fn send(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Reply, Error> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    // Drives the connection; it ends by itself once `sender` is dropped.
    tokio::spawn(connection);
    let mut request = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = sender
        .send_request(request.body(Full::new(Bytes::copy_from_slice(body)))?)
        .await?;
    let version = response.version();
    let status = response.status().as_u16();
    let (parts, body) = response.into_parts();
    Ok(Reply {
        version,
        status,
        headers: parts.headers,
        body: body.collect().await?.to_bytes(),
    })
}
