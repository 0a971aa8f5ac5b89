//! gRPC over raw HTTP/2 (the `h2` crate): for requests no gRPC client would send — garbage
//! bytes, a message cut short, headers with no body, a body that trickles.

use std::net::SocketAddr;

use bytes::Bytes;
use h2::client::SendRequest;
use tonic::Code;

/// An HTTP/2 connection to `addr`, its connection task spawned.
pub async fn connect(addr: SocketAddr) -> SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (send, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    send
}

/// The headers of a gRPC call to `method` of router.v1.PromptRouter.
pub fn request(method: &str, request_id: Option<&str>) -> http::Request<()> {
    let mut builder = http::Request::post(format!("http://router/router.v1.PromptRouter/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(id) = request_id {
        builder = builder.header("x-request-id", id);
    }
    builder.body(()).expect("request")
}

/// `message` framed as one gRPC message: no compression, its length, its bytes.
pub fn frame(message: &[u8]) -> Bytes {
    let mut framed = vec![0];
    framed.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(message);
    Bytes::from(framed)
}

/// How a call ended, as the server said.
#[derive(Debug)]
pub struct Reply {
    /// The grpc-status code.
    pub code: Code,
    /// The grpc-message, percent-decoded.
    pub message: String,
    /// The request id the server echoed.
    pub request_id: Option<String>,
}

/// Sends `body` (already framed, or deliberately not) as the whole request and reads the reply.
pub async fn call(
    send: &mut SendRequest<Bytes>,
    method: &str,
    body: Bytes,
    request_id: Option<&str>,
) -> Reply {
    let mut ready = send.clone().ready().await.expect("connection ready");
    let (response, mut stream) = ready
        .send_request(request(method, request_id), false)
        .expect("send headers");
    stream.send_data(body, true).expect("send body");
    reply(response).await
}

/// Reads a reply to the end: the status from a trailers-only response or from the trailers.
pub async fn reply(response: h2::client::ResponseFuture) -> Reply {
    let response = response.await.expect("response headers");
    let request_id = response
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_owned());
    if response.headers().contains_key("grpc-status") {
        return status(response.headers(), request_id);
    }
    let mut body = response.into_body();
    while let Some(data) = body.data().await {
        let data = data.expect("response data");
        let _ = body.flow_control().release_capacity(data.len());
    }
    let trailers = body
        .trailers()
        .await
        .expect("trailers")
        .expect("a gRPC reply ends with trailers");
    status(&trailers, request_id)
}

fn status(headers: &http::HeaderMap, request_id: Option<String>) -> Reply {
    let code = headers
        .get("grpc-status")
        .map(|v| Code::from_bytes(v.as_bytes()))
        .expect("grpc-status");
    let message = headers
        .get("grpc-message")
        .map(|v| {
            percent_encoding::percent_decode(v.as_bytes())
                .decode_utf8_lossy()
                .into_owned()
        })
        .unwrap_or_default();
    Reply {
        code,
        message,
        request_id,
    }
}
