//! Raw HTTP for what the SDK never sends (no auth, Bearer, broken bodies) and the admin API.

use std::net::SocketAddr;

use bedrock_sim::{Outcome, SimConfig};
use serde_json::{Value, json};

use crate::http_client;
use crate::*;

const SIGV4: &str = "AWS4-HMAC-SHA256 Credential=AKID/20261125/us-east-1/bedrock/aws4_request, \
                     SignedHeaders=host;x-amz-date, Signature=00";

struct Reply {
    status: u16,
    headers: http::HeaderMap,
    body: Value,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One HTTP/1.1 request with a JSON content type and any body bytes (what the SDK never sends:
/// no auth, a Bearer token, broken JSON); the body is read as JSON (`Null` if it is not).
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &[u8],
) -> Reply {
    let mut headers = vec![("content-type", "application/json")];
    headers.extend(auth.map(|a| ("authorization", a)));
    let reply = quick(http_client::send(
        &addr.to_string(),
        method,
        path,
        &headers,
        body,
    ))
    .await
    .unwrap();
    Reply {
        status: reply.status,
        headers: reply.headers,
        body: serde_json::from_slice(&reply.body).unwrap_or(Value::Null),
    }
}

fn converse_path(model: &str) -> String {
    format!("/model/{}/converse", model.replace(':', "%3A"))
}

fn hello() -> Vec<u8> {
    json!({ "messages": [{ "role": "user", "content": [{ "text": "hello" }] }] })
        .to_string()
        .into_bytes()
}

#[tokio::test]
async fn auth_is_required_but_not_verified() {
    let h = sim().await;
    let path = converse_path(HAIKU);
    let r = http(h.addr(), "POST", &path, None, &hello()).await;
    assert_eq!(r.status, 403);
    assert!(
        r.header("x-amzn-ErrorType")
            .unwrap()
            .starts_with("MissingAuthenticationTokenException:")
    );
    assert_eq!(r.body["message"], "Missing Authentication Token");

    let r = http(
        h.addr(),
        "POST",
        &path,
        Some("Bearer bedrock-api-key-abc"),
        &hello(),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(r.header("x-amzn-RequestId").is_some());
    assert!(
        r.body["output"]["message"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with(&format!("[{HAIKU}]"))
    );

    let wrong_service = SIGV4.replace("/bedrock/", "/s3/");
    let r = http(h.addr(), "POST", &path, Some(&wrong_service), &hello()).await;
    assert_eq!(r.status, 403);
    assert!(
        r.header("x-amzn-ErrorType")
            .unwrap()
            .starts_with("InvalidSignatureException:")
    );

    let rec = h.received();
    assert!(rec[1].bearer_auth && rec[1].source_region.is_none());
    assert_eq!(rec[2].signing_service.as_deref(), Some("s3"));
    assert_eq!(
        rec[0].body,
        serde_json::from_slice::<Value>(&hello()).unwrap()
    );
}

#[tokio::test]
async fn broken_bodies_are_validation_errors() {
    let h = sim_with(SimConfig {
        max_body_bytes: 2048,
        ..SimConfig::default()
    })
    .await;
    let path = converse_path(HAIKU);
    let expect_validation = |r: &Reply| {
        assert_eq!(r.status, 400, "{:?}", r.body);
        assert_eq!(
            r.header("x-amzn-ErrorType"),
            Some("ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/")
        );
        r.body["message"].as_str().unwrap().to_owned()
    };
    let m = expect_validation(&http(h.addr(), "POST", &path, Some(SIGV4), b"{not json").await);
    assert!(m.starts_with("Malformed input request:"), "{m}");
    let m = expect_validation(
        &http(
            h.addr(),
            "POST",
            &path,
            Some(SIGV4),
            br#"{"messages":"nope"}"#,
        )
        .await,
    );
    assert!(m.starts_with("Malformed input request:"), "{m}");
    let bad_image = json!({ "messages": [{ "role": "user", "content": [
        { "image": { "format": "png", "source": { "bytes": "***" } } }] }] });
    let m = expect_validation(
        &http(
            h.addr(),
            "POST",
            &path,
            Some(SIGV4),
            bad_image.to_string().as_bytes(),
        )
        .await,
    );
    assert!(m.contains("not valid base64"), "{m}");
    let huge = vec![b' '; 4096];
    let m = expect_validation(&http(h.addr(), "POST", &path, Some(SIGV4), &huge).await);
    assert!(m.contains("maximum size of 2048 bytes"), "{m}");
    let extra = json!({ "messages": [{ "role": "user", "content": [{ "text": "x" }] }],
                        "additionalModelRequestFields": { "top_q": 1 } });
    let m = expect_validation(
        &http(
            h.addr(),
            "POST",
            &path,
            Some(SIGV4),
            extra.to_string().as_bytes(),
        )
        .await,
    );
    assert!(m.contains("top_q"), "{m}");

    let r = http(
        h.addr(),
        "POST",
        "/model/x/invoke-something",
        Some(SIGV4),
        b"{}",
    )
    .await;
    assert_eq!(r.status, 404);
    assert!(
        r.header("x-amzn-ErrorType")
            .unwrap()
            .starts_with("UnknownOperationException")
    );
    assert_eq!(h.stats().received, 5, "unknown operations are not recorded");
}

#[tokio::test]
async fn admin_endpoints_drive_an_out_of_process_simulator() {
    let h = sim().await;
    let a = h.addr();
    let faults = json!({ "rules": [{ "fault": { "http": "ThrottlingException" }, "rate": 1.0, "region": "us-east-1" }] });
    let r = http(
        a,
        "POST",
        "/_sim/faults",
        None,
        faults.to_string().as_bytes(),
    )
    .await;
    assert_eq!((r.status, &r.body), (200, &faults));
    let r = http(a, "POST", &converse_path(HAIKU), Some(SIGV4), &hello()).await;
    assert_eq!(r.status, 429);
    assert_eq!(
        r.body["message"],
        "Too many requests, please wait before trying again."
    );

    let r = http(
        a,
        "POST",
        "/_sim/faults",
        None,
        br#"{"rules":[{"fault":{"http":"Nope"},"rate":1}]}"#,
    )
    .await;
    assert_eq!(r.status, 400);
    let r = http(a, "POST", "/_sim/faults", None, br#"{"rules":[]}"#).await;
    assert_eq!(r.status, 200);
    let r = http(
        a,
        "POST",
        "/_sim/latency",
        None,
        br#"{"ttftMs":30,"perTokenMs":1}"#,
    )
    .await;
    assert_eq!(r.body, json!({ "ttftMs": 30, "perTokenMs": 1 }));
    assert_eq!(h.latency().ttft_ms, 30);

    let r = http(a, "GET", "/_sim/requests", None, b"").await;
    let list = r.body.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["modelId"], HAIKU);
    assert_eq!(list[0]["sourceRegion"], "us-east-1");
    assert_eq!(list[0]["fault"], json!({ "http": "ThrottlingException" }));
    assert_eq!(list[0]["outcome"]["outcome"], "error");
    assert_eq!(
        list[0]["body"]["messages"][0]["content"][0]["text"],
        "hello"
    );
    let r = http(a, "GET", "/_sim/stats", None, b"").await;
    assert_eq!(
        r.body,
        json!({ "received": 1, "answered": 0, "failed": 1, "cancelled": 0, "inFlight": 0, "timers": 0 })
    );
    assert!(matches!(
        h.received()[0].outcome,
        Outcome::Error { status: 429, .. }
    ));

    let r = http(a, "POST", "/_sim/reset", None, b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(h.stats().received, 0);
    assert_eq!(http(a, "GET", "/_sim/nothing", None, b"").await.status, 404);
}
