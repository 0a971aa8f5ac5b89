//! TLS on the gRPC port: real routers on loopback with certificates made here, real TLS
//! clients (a tonic channel over tokio-rustls, and raw HTTP/2 over TLS where a test needs to
//! see the server's certificate or keep one connection across a rotation).
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use common::{
    exposition::Scrape,
    grpc_raw, http_get,
    process::{self, Proc},
    tls::{Ca, Client, Files, Leaf, SERVER_NAME, Validity},
};
use prompt_router::{
    pb::prompt_router_client::PromptRouterClient,
    server::{self, Options, Running},
};
use prompt_router_core::config::{ClientCert, Config, Overrides, RawConfig, raw::RawCaller};
use prost::Message as _;
use sha2::Digest as _;
use tonic::Code;

/// Starts a router with the simulator, TLS from `files`, after `adjust`.
async fn start(files: &Files, reload_ms: u64, adjust: impl FnOnce(&mut RawConfig)) -> Running {
    let mut raw = RawConfig::default();
    raw.server.tls = Some(files.raw(reload_ms));
    adjust(&mut raw);
    try_start(raw).await.expect("router starts")
}

async fn try_start(raw: RawConfig) -> anyhow::Result<Running> {
    let mut config = Config::try_from(raw).expect("valid config");
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.server.metrics_listen = "127.0.0.1:0".parse().unwrap();
    server::start(
        config,
        Options {
            simulate: true,
            ..Options::default()
        },
    )
    .await
}

fn server_leaf(ca: &Ca, serial: u64) -> Leaf {
    ca.issue(&[SERVER_NAME], serial, Validity::Current)
}

async fn scrape(running: &Running) -> Scrape {
    Scrape::parse(&http_get(&format!("http://{}/metrics", running.metrics_addr)).await)
}

/// `Route` of one user turn over a raw HTTP/2 connection: no model call, an OK decision.
async fn route(send: &mut h2::client::SendRequest<bytes::Bytes>) -> Code {
    let message = common::ask("Hello there").encode_to_vec();
    grpc_raw::call(send, "Route", grpc_raw::frame(&message), None)
        .await
        .code
}

/// Whether a client gets an answer from `addr` at all: the handshake, then a call.
async fn served(client: &Client, addr: SocketAddr) -> Result<(), String> {
    let channel = client.channel(addr).await.map_err(|e| format!("{e:?}"))?;
    PromptRouterClient::new(channel)
        .route(common::ask("Hello there"))
        .await
        .map(drop)
        .map_err(|status| format!("{status:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_converse_goes_over_tls_and_a_plaintext_client_gets_nothing() {
    let ca = Ca::new("server ca");
    let files = Files::new(&server_leaf(&ca, 1), None);
    let running = start(&files, 0, |_| {}).await;
    let channel = Client::new(&ca, None)
        .channel(running.grpc_addr)
        .await
        .expect("TLS connects");
    let reply = PromptRouterClient::new(channel)
        .converse(common::ask("Hello there"))
        .await
        .expect("answered over TLS")
        .into_inner();
    assert!(!common::reply_text(&reply).is_empty());

    // A client speaking HTTP/2 in the clear is not served.
    let plain = async {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", running.grpc_addr))
                .unwrap()
                .connect()
                .await
                .map_err(|e| e.to_string())?;
        PromptRouterClient::new(channel)
            .route(common::ask("Hello there"))
            .await
            .map_err(|e| e.to_string())
    };
    let plain = tokio::time::timeout(Duration::from_secs(30), plain)
        .await
        .expect("the plaintext attempt ends");
    assert!(plain.is_err(), "{plain:?}");
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_names_the_caller_by_its_certificate_san() {
    let ca = Ca::new("one ca");
    let files = Files::new(&server_leaf(&ca, 1), Some(&ca));
    let running = start(&files, 0, |raw| {
        raw.callers.insert(
            "batch".to_owned(),
            RawCaller {
                san: Some("spiffe://test/ns/batch/sa/worker".to_owned()),
                ..RawCaller::default()
            },
        );
    })
    .await;
    let identity = ca.issue(
        &["worker.batch.internal", "spiffe://test/ns/batch/sa/worker"],
        10,
        Validity::Current,
    );
    let channel = Client::new(&ca, Some(&identity))
        .channel(running.grpc_addr)
        .await
        .expect("mTLS connects");
    let mut client = PromptRouterClient::new(channel);
    let reply = client
        .converse(common::ask("Hello there"))
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(reply.decision.expect("a decision").caller, "batch");

    // A certificate the CA signed whose SANs name no caller is a caller without a name.
    let anonymous = ca.issue(&["someone.internal"], 11, Validity::Current);
    let channel = Client::new(&ca, Some(&anonymous))
        .channel(running.grpc_addr)
        .await
        .expect("mTLS connects");
    let decision = PromptRouterClient::new(channel)
        .route(common::ask("Hello there"))
        .await
        .expect("routed")
        .into_inner()
        .decision
        .expect("a decision");
    assert_eq!(decision.caller, "");
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_no_certificate_an_expired_one_and_another_cas() {
    let ca = Ca::new("trusted ca");
    let other = Ca::new("other ca");
    let files = Files::new(&server_leaf(&ca, 1), Some(&ca));
    let running = start(&files, 0, |_| {}).await;
    let addr = running.grpc_addr;
    let before = scrape(&running)
        .await
        .sum("router_auth_failures_total", &["reason=\"certificate\""]);

    let good = ca.issue(&["good.internal"], 2, Validity::Current);
    served(&Client::new(&ca, Some(&good)), addr)
        .await
        .expect("a good certificate is served");
    let expired = ca.issue(&["old.internal"], 3, Validity::Expired);
    let foreign = other.issue(&["foreign.internal"], 4, Validity::Current);
    for (what, client) in [
        ("no certificate", Client::new(&ca, None)),
        ("an expired certificate", Client::new(&ca, Some(&expired))),
        ("another CA's certificate", Client::new(&ca, Some(&foreign))),
    ] {
        let result = tokio::time::timeout(Duration::from_secs(30), served(&client, addr))
            .await
            .expect("the attempt ends");
        assert!(result.is_err(), "{what} was served");
    }
    common::eventually("three refused handshakes counted", || async {
        scrape(&running)
            .await
            .sum("router_auth_failures_total", &["reason=\"certificate\""])
            >= before + 3.0
    })
    .await;
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_optional_client_certificates_a_token_caller_connects_without_one() {
    let ca = Ca::new("optional ca");
    let other = Ca::new("other ca");
    let files = Files::new(&server_leaf(&ca, 1), Some(&ca));
    let token = "opt-token-5c1e9a7b3d";
    let digest: String = sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let running = start(&files, 0, |raw| {
        raw.server.tls.as_mut().unwrap().client_cert = ClientCert::Optional;
        raw.auth.required = true;
        raw.callers.insert(
            "svc".to_owned(),
            RawCaller {
                token_sha256: Some(digest),
                ..RawCaller::default()
            },
        );
        raw.callers.insert(
            "mesh".to_owned(),
            RawCaller {
                san: Some("mesh.internal".to_owned()),
                ..RawCaller::default()
            },
        );
    })
    .await;
    let addr = running.grpc_addr;
    let mut client = PromptRouterClient::new(
        Client::new(&ca, None)
            .channel(addr)
            .await
            .expect("connects without a certificate"),
    );
    let mut request = tonic::Request::new(common::ask("Hello there"));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let decision = client.route(request).await.expect("routed").into_inner();
    assert_eq!(decision.decision.unwrap().caller, "svc");
    let status = client
        .route(common::ask("Hello there"))
        .await
        .expect_err("auth.required and no credentials");
    assert_eq!(status.code(), Code::Unauthenticated);

    let mesh = ca.issue(&["mesh.internal"], 2, Validity::Current);
    let decision =
        PromptRouterClient::new(Client::new(&ca, Some(&mesh)).channel(addr).await.unwrap())
            .route(common::ask("Hello there"))
            .await
            .expect("routed")
            .into_inner();
    assert_eq!(decision.decision.unwrap().caller, "mesh");
    // A certificate that is sent must still be good.
    let foreign = other.issue(&["mesh.internal"], 3, Validity::Current);
    let expired = ca.issue(&["mesh.internal"], 4, Validity::Expired);
    for leaf in [&foreign, &expired] {
        let result = tokio::time::timeout(
            Duration::from_secs(30),
            served(&Client::new(&ca, Some(leaf)), addr),
        )
        .await
        .expect("the attempt ends");
        assert!(result.is_err(), "{result:?}");
    }
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_reaches_new_connections_while_old_ones_keep_theirs() {
    let ca = Ca::new("rotating ca");
    let first = server_leaf(&ca, 1);
    let files = Files::new(&first, None);
    let running = start(&files, 50, |_| {}).await;
    let client = Client::new(&ca, None);
    let (mut old, served) = client.h2(running.grpc_addr).await;
    assert_eq!(served, first.der);
    assert_eq!(route(&mut old).await, Code::Ok);

    let second = server_leaf(&ca, 2);
    files.write(&second);
    common::eventually("a new connection sees the new certificate", || async {
        client.h2(running.grpc_addr).await.1 == second.der
    })
    .await;
    // The connection made before the rotation is the same one, still serving.
    assert_eq!(route(&mut old).await, Code::Ok);
    let reloads = scrape(&running).await;
    assert!(reloads.sum("router_tls_reloads_total", &["outcome=\"ok\""]) >= 1.0);
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_files_of_a_router_that_does_not_poll_them() {
    let ca = Ca::new("hangup ca");
    let first = server_leaf(&ca, 1);
    let files = Files::new(&first, None);
    let config = files.dir.join("router.toml");
    std::fs::write(
        &config,
        format!(
            "[server.tls]\ncert_file = {:?}\nkey_file = {:?}\nreload_interval_ms = 0\n",
            files.cert().display().to_string(),
            files.key().display().to_string(),
        ),
    )
    .unwrap();
    let proc = Proc::spawn(&mut process::serve_simulated(&[
        "--config",
        config.to_str().unwrap(),
    ]));
    let addr = proc.wait_serving().grpc;
    let client = Client::new(&ca, None);
    assert_eq!(client.h2(addr).await.1, first.der);

    let second = server_leaf(&ca, 2);
    files.write(&second);
    // Not polled: the old certificate until the signal.
    assert_eq!(client.h2(addr).await.1, first.der);
    let pid = proc.child.id().to_string();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(hup.success());
    common::eventually("a new connection sees the new certificate", || async {
        client.h2(addr).await.1 == second.der
    })
    .await;
    let stopped = tokio::task::spawn_blocking(move || proc.terminate())
        .await
        .unwrap();
    assert!(stopped.success(), "{stopped:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_rotation_keeps_the_old_certificate_and_counts_rejected() {
    let ca = Ca::new("careful ca");
    let first = server_leaf(&ca, 1);
    let files = Files::new(&first, None);
    let running = start(&files, 50, |_| {}).await;
    let before = scrape(&running)
        .await
        .sum("router_tls_reloads_total", &["outcome=\"rejected\""]);

    // A new certificate with the old key: the pair does not match.
    let second = server_leaf(&ca, 2);
    std::fs::write(files.cert(), &second.cert_pem).unwrap();
    common::eventually("the mismatched pair is rejected", || async {
        scrape(&running)
            .await
            .sum("router_tls_reloads_total", &["outcome=\"rejected\""])
            > before
    })
    .await;
    let client = Client::new(&ca, None);
    assert_eq!(client.h2(running.grpc_addr).await.1, first.der);

    // A key file that is not PEM at all.
    std::fs::write(files.cert(), &first.cert_pem).unwrap();
    std::fs::write(files.key(), "not a key\n").unwrap();
    let rejected = scrape(&running)
        .await
        .sum("router_tls_reloads_total", &["outcome=\"rejected\""]);
    common::eventually("the unparsable key is rejected", || async {
        scrape(&running)
            .await
            .sum("router_tls_reloads_total", &["outcome=\"rejected\""])
            > rejected
    })
    .await;
    let (mut send, served) = client.h2(running.grpc_addr).await;
    assert_eq!(served, first.der);
    assert_eq!(route(&mut send).await, Code::Ok);
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_bad_file_stops_the_start_naming_its_key() {
    let ca = Ca::new("start ca");
    let files = Files::new(&server_leaf(&ca, 1), None);
    let other_key = server_leaf(&ca, 2).key_pem;
    let write = |name: &str, text: &str| {
        let path = files.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let with = |adjust: &dyn Fn(&mut prompt_router_core::config::raw::RawTls)| {
        let mut raw = RawConfig::default();
        let mut tls = files.raw(0);
        adjust(&mut tls);
        raw.server.tls = Some(tls);
        raw
    };
    let garbage = write("garbage.key", "-----BEGIN PRIVATE KEY-----\nnope\n");
    let other = write("other.key", &other_key);
    let empty = write("empty-ca.crt", "");
    let cases = [
        (
            "server.tls.cert_file",
            with(&|tls| tls.cert_file = "/nonexistent.crt".into()),
        ),
        (
            "server.tls.key_file",
            with(&|tls| tls.key_file = garbage.clone()),
        ),
        (
            "server.tls.key_file",
            with(&|tls| tls.key_file = other.clone()),
        ),
        (
            "server.tls.client_ca_file",
            with(&|tls| tls.client_ca_file = Some(empty.clone())),
        ),
    ];
    for (key, raw) in cases {
        let error = try_start(raw).await.expect_err("refused");
        let message = format!("{error:#}");
        assert!(message.contains(key), "{key}: {message}");
        assert!(!message.contains("nope"), "{message}");
    }
}

#[test]
fn the_simulated_quick_start_listens_on_loopback_unless_told_otherwise() {
    let load = |env: &[(&str, &str)], flags: Overrides| {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let config =
            Config::load(None, env, &server::simulate_on_loopback(flags)).expect("valid config");
        (config.server.listen, config.server.metrics_listen)
    };
    let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
    assert_eq!(
        load(&[], Overrides::default()),
        (addr("127.0.0.1:50051"), addr("127.0.0.1:9464"))
    );
    assert_eq!(
        load(
            &[("ROUTER__SERVER__LISTEN", "0.0.0.0:50051")],
            Overrides::default()
        ),
        (addr("0.0.0.0:50051"), addr("127.0.0.1:9464"))
    );
    let flags = Overrides::default().flag(
        "--metrics-listen",
        "server.metrics_listen",
        Some(addr("0.0.0.0:9000")),
    );
    assert_eq!(
        load(&[], flags),
        (addr("127.0.0.1:50051"), addr("0.0.0.0:9000"))
    );
    // Without --simulate the defaults stay those of a deployment.
    let plain = Config::load(
        None,
        BTreeMap::<String, String>::new(),
        &Overrides::default(),
    )
    .expect("valid config");
    assert_eq!(plain.server.listen, addr("0.0.0.0:50051"));
}

#[test]
fn the_memory_bound_counts_each_connections_tls_buffers() {
    let ca = Ca::new("bound ca");
    let files = Files::new(&server_leaf(&ca, 1), None);
    let plain = Config::try_from(RawConfig::default()).unwrap();
    let mut raw = RawConfig::default();
    raw.server.tls = Some(files.raw(0));
    let tls = Config::try_from(raw).unwrap();
    let added = server::memory_bound(&tls) - server::memory_bound(&plain);
    // At least the encrypted bytes each connection may hold for a slow socket.
    let per_connection = added / plain.server.max_connections as u64;
    assert!(
        per_connection >= server::tls::SEND_BUFFER as u64,
        "{per_connection} B per connection"
    );
}
