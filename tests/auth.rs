//! Caller identity: bearer tokens matched by their SHA-256, a declared `routing.caller` held to
//! the authenticated one, the policy's refusals, health open to all, reflection switched off,
//! and no secret in any log line, metric or status message. Real routers on loopback, real
//! tonic clients; the secrets test runs the real binary over TLS.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::{collections::BTreeSet, time::Duration};

use common::{
    TestRouter,
    exposition::Scrape,
    http_get,
    process::{self, Proc},
    tls::{Ca, Client, Files, SERVER_NAME, Validity},
};
use prompt_router::pb::{self, prompt_router_client::PromptRouterClient};
use prompt_router_core::config::{RawConfig, raw::RawCaller};
use prost::Message as _;
use sha2::{Digest as _, Sha256};
use tonic::{Code, Request, Status};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const SVC_TOKEN: &str = "svc-7f3a9c1e5b2d4f60a8e1c3b5d7f9a2c4";
const BATCH_TOKEN: &str = "batch-0e2c4a6b8d1f3e5a7c9b2d4f6a8c0e1b";

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `svc` and `batch` with tokens, `batch` not allowed to force the strong tier.
fn callers(raw: &mut RawConfig, required: bool) {
    raw.auth.required = required;
    raw.callers.insert(
        "svc".to_owned(),
        RawCaller {
            token_sha256: Some(sha256_hex(SVC_TOKEN)),
            ..RawCaller::default()
        },
    );
    raw.callers.insert(
        "batch".to_owned(),
        RawCaller {
            token_sha256: Some(sha256_hex(BATCH_TOKEN)),
            allow_force: Some(false),
            ..RawCaller::default()
        },
    );
}

fn with_authorization<M>(message: M, value: &str) -> Request<M> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", value.parse().unwrap());
    request
}

fn bearer<M>(message: M, token: &str) -> Request<M> {
    with_authorization(message, &format!("Bearer {token}"))
}

fn declaring(caller: &str) -> pb::ConverseRequest {
    let mut request = common::ask("Hello there");
    request.routing.get_or_insert_default().caller = caller.to_owned();
    request
}

fn assert_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, what: &str) -> Status {
    let status = result.expect_err(what);
    assert_eq!(status.code(), code, "{what}: {status:?}");
    status
}

async fn failures(router: &TestRouter, reason: &str) -> f64 {
    Scrape::parse(&http_get(&router.metrics_url()).await).sum(
        "router_auth_failures_total",
        &[&format!("reason=\"{reason}\"")],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_required_only_a_known_token_is_served_and_names_the_caller() {
    let mut router = common::start_with(|raw| callers(raw, true)).await;
    let (missing, unknown, malformed) = (
        failures(&router, "missing").await,
        failures(&router, "unknown_token").await,
        failures(&router, "malformed").await,
    );
    let client = &mut router.client;

    let status = assert_code(
        client.converse(common::ask("Hello there")).await,
        Code::Unauthenticated,
        "no token",
    );
    assert!(status.message().contains("auth.required"), "{status:?}");
    assert_code(
        client
            .converse(bearer(common::ask("Hello there"), "not-a-token-we-know"))
            .await,
        Code::Unauthenticated,
        "an unknown token",
    );
    for value in ["Basic c3ZjOnB3", "Bearer", SVC_TOKEN] {
        assert_code(
            client
                .converse(with_authorization(common::ask("Hello there"), value))
                .await,
            Code::Unauthenticated,
            "a malformed authorization",
        );
    }
    // Every PromptRouter RPC asks, streams and feedback included.
    assert_code(
        client.route(common::ask("Hello there")).await,
        Code::Unauthenticated,
        "Route without a token",
    );
    assert_code(
        client.converse_stream(common::ask("Hello there")).await,
        Code::Unauthenticated,
        "ConverseStream without a token",
    );
    assert_code(
        client
            .feedback(pb::FeedbackRequest {
                request_id: "r-1".to_owned(),
                ..pb::FeedbackRequest::default()
            })
            .await,
        Code::Unauthenticated,
        "Feedback without a token",
    );

    let reply = client
        .converse(bearer(common::ask("Hello there"), SVC_TOKEN))
        .await
        .expect("a known token is served")
        .into_inner();
    assert_eq!(reply.decision.unwrap().caller, "svc");
    // The caller declared the same as the token's, or not at all, is the token's.
    let decision = client
        .route(bearer(declaring("svc"), SVC_TOKEN))
        .await
        .expect("same caller")
        .into_inner()
        .decision
        .unwrap();
    assert_eq!(decision.caller, "svc");
    let mut streamed = client
        .converse_stream(bearer(common::ask("Hello there"), SVC_TOKEN))
        .await
        .expect("a stream opens")
        .into_inner();
    while streamed.message().await.expect("stream event").is_some() {}

    assert!(failures(&router, "missing").await >= missing + 4.0);
    assert!(failures(&router, "unknown_token").await > unknown);
    assert!(failures(&router, "malformed").await >= malformed + 3.0);
    router.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_caller_other_than_the_tokens_and_a_forbidden_force_are_permission_denied() {
    let mut router = common::start_with(|raw| callers(raw, true)).await;
    let client = &mut router.client;
    let status = assert_code(
        client.converse(bearer(declaring("batch"), SVC_TOKEN)).await,
        Code::PermissionDenied,
        "svc's token declaring batch",
    );
    assert!(status.message().contains("routing.caller"), "{status:?}");

    let forced = common::ask_forced("Hello there", pb::RoutingMode::ForceStrong);
    let status = assert_code(
        client.converse(bearer(forced.clone(), BATCH_TOKEN)).await,
        Code::PermissionDenied,
        "batch forcing strong",
    );
    assert!(
        status.message().contains("callers.batch.allow_force"),
        "{status:?}"
    );
    // svc may.
    let reply = client
        .converse(bearer(forced, SVC_TOKEN))
        .await
        .expect("svc may force")
        .into_inner();
    assert_eq!(reply.decision.unwrap().caller, "svc");
    router.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_auth_required_wrong_credentials_are_still_refused() {
    let mut router = common::start_with(|raw| callers(raw, false)).await;
    let client = &mut router.client;
    let decision = client
        .route(common::ask("Hello there"))
        .await
        .expect("no credentials: served as no one")
        .into_inner()
        .decision
        .unwrap();
    assert_eq!(decision.caller, "");
    assert_code(
        client
            .route(bearer(common::ask("Hello there"), "guessed"))
            .await,
        Code::Unauthenticated,
        "an unknown token",
    );
    let status = assert_code(
        client.route(declaring("svc")).await,
        Code::Unauthenticated,
        "declaring a caller that has a token, without it",
    );
    assert!(status.message().contains("svc"), "{status:?}");
    let decision = client
        .route(bearer(common::ask("Hello there"), BATCH_TOKEN))
        .await
        .expect("a known token")
        .into_inner()
        .decision
        .unwrap();
    assert_eq!(decision.caller, "batch");
    router.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_without_credentials() {
    let router = common::start_with(|raw| callers(raw, true)).await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", router.running.grpc_addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "router.v1.PromptRouter"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .expect("health answers")
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
    router.running.shutdown().await.unwrap();
}

/// The status of a reflection `ListServices` call, over raw HTTP/2.
async fn list_services(router: &TestRouter) -> Code {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_request::MessageRequest,
    };
    let send = common::grpc_raw::connect(router.running.grpc_addr).await;
    let request = http::Request::post(
        "http://router/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    )
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap();
    let message = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    }
    .encode_to_vec();
    let mut ready = send.clone().ready().await.unwrap();
    let (response, mut stream) = ready.send_request(request, false).unwrap();
    // An unknown service may be answered before the body is sent.
    let _ = stream.send_data(common::grpc_raw::frame(&message), true);
    common::grpc_raw::reply(response).await.code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_can_be_switched_off() {
    let on = common::start().await;
    assert_eq!(list_services(&on).await, Code::Ok);
    on.running.shutdown().await.unwrap();
    let off = common::start_with(|raw| raw.server.reflection = false).await;
    assert_eq!(list_services(&off).await, Code::Unimplemented);
    off.running.shutdown().await.unwrap();
}

/// The base64 body lines of a PEM text.
fn pem_body(pem: &str) -> Vec<String> {
    pem.lines()
        .filter(|line| !line.starts_with("-----") && line.len() >= 16)
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_digest_or_key_appears_in_logs_metrics_or_messages() {
    let ca = Ca::new("secrets ca");
    let server = ca.issue(&[SERVER_NAME], 1, Validity::Current);
    let files = Files::new(&server, Some(&ca));
    let config = files.dir.join("router.toml");
    let digest = sha256_hex(SVC_TOKEN);
    std::fs::write(
        &config,
        format!(
            "[server.tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\n\
             reload_interval_ms = 50\n\n[auth]\nrequired = true\n\n\
             [callers.svc]\ntoken_sha256 = \"{digest}\"\nallow_force = false\n\n\
             [callers.mesh]\nsan = \"spiffe://test/mesh\"\n",
            files.cert().display().to_string(),
            files.key().display().to_string(),
            files.client_ca().display().to_string(),
        ),
    )
    .unwrap();
    let proc = Proc::spawn(
        process::serve_simulated(&["--config", config.to_str().unwrap()]).env("RUST_LOG", "debug"),
    );
    let serving = proc.wait_serving();
    let (grpc_addr, metrics_addr) = (serving.grpc, serving.metrics.to_string());

    let identity = ca.issue(&["spiffe://test/mesh"], 2, Validity::Current);
    let client = Client::new(&ca, Some(&identity));
    let mut router = PromptRouterClient::new(client.channel(grpc_addr).await.unwrap());
    let mut messages = Vec::new();
    let mut collect = |result: Result<tonic::Response<pb::ConverseResponse>, Status>| {
        if let Err(status) = result {
            messages.push(format!("{status:?}"));
        }
    };
    collect(router.converse(common::ask("Hello there")).await);
    // With the mesh certificate, svc's token names a second caller.
    collect(
        router
            .converse(bearer(common::ask("Hello there"), SVC_TOKEN))
            .await,
    );
    let wrong = format!("{}x", &SVC_TOKEN[..SVC_TOKEN.len() - 1]);
    collect(
        router
            .converse(bearer(common::ask("Hello there"), &wrong))
            .await,
    );
    collect(
        router
            .converse(with_authorization(
                common::ask("Hello there"),
                &format!("Token {SVC_TOKEN}"),
            ))
            .await,
    );
    collect(
        router
            .converse(bearer(
                common::ask_forced("Hello there", pb::RoutingMode::ForceStrong),
                SVC_TOKEN,
            ))
            .await,
    );
    collect(router.converse(declaring("svc")).await);
    // A refused handshake and a bad rotation write their own lines.
    let stranger = Ca::new("stranger").issue(&["x.internal"], 3, Validity::Current);
    let refused = Client::new(&ca, Some(&stranger)).channel(grpc_addr).await;
    if let Ok(channel) = refused {
        collect(
            PromptRouterClient::new(channel)
                .converse(common::ask("Hello there"))
                .await,
        );
    }
    std::fs::write(
        files.key(),
        ca.issue(&[SERVER_NAME], 4, Validity::Current).key_pem,
    )
    .unwrap();
    let metrics_url = format!("http://{metrics_addr}/metrics");
    common::eventually("the mismatched key is rejected", || async {
        Scrape::parse(&http_get(&metrics_url).await)
            .sum("router_tls_reloads_total", &["outcome=\"rejected\""])
            >= 1.0
    })
    .await;
    let metrics = http_get(&metrics_url).await;
    assert!(
        messages.len() >= 6,
        "the bad calls were refused: {messages:?}"
    );

    let logs = tokio::task::spawn_blocking(move || {
        proc.sigterm();
        let mut logs = Vec::new();
        while let Ok(line) = proc.lines.recv_timeout(Duration::from_secs(30)) {
            logs.push(line);
        }
        logs
    })
    .await
    .unwrap();
    assert!(
        logs.iter().any(|l| l.contains("are refused")),
        "the rejected rotation is logged"
    );
    let key_pem = std::fs::read_to_string(files.key()).unwrap();
    let mut secrets: BTreeSet<String> = [SVC_TOKEN.to_owned(), wrong, digest.clone()].into();
    secrets.insert(digest.to_uppercase());
    secrets.extend(pem_body(&server.key_pem));
    secrets.extend(pem_body(&key_pem));
    secrets.extend(pem_body(&identity.key_pem));
    for (place, texts) in [
        ("logs", logs),
        ("metrics", vec![metrics]),
        ("status messages", messages),
    ] {
        for text in &texts {
            for secret in &secrets {
                assert!(
                    !text.contains(secret.as_str()),
                    "a secret in the {place}: {text}"
                );
            }
        }
    }
}
