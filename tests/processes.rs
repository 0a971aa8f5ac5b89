//! The binary as users run it: `simulate` and `serve` as separate processes talking over
//! loopback, the no-credentials advice, and `--help` on every command.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{
    exposition::Scrape,
    process::{BIN, Proc, field, serve_simulated},
};
use prompt_router::pb::prompt_router_client::PromptRouterClient;

#[tokio::test]
async fn serve_works_against_a_separately_started_simulator() {
    let sim = Proc::spawn(Command::new(BIN).args(["simulate", "--listen", "127.0.0.1:0"]));
    let endpoint = sim.wait_for_field("endpoint");
    assert!(endpoint.starts_with("http://127.0.0.1:"), "{endpoint}");

    let router = Proc::spawn(
        Command::new(BIN)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .env("ROUTER__BEDROCK__ENDPOINT_URL", &endpoint)
            .env("ROUTER__BEDROCK__REGION", "us-west-2")
            .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
            .env("AWS_SECRET_ACCESS_KEY", "not-a-secret")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE"),
    );
    let grpc_addr = router.wait_for_field("grpc_addr");
    let mut client = PromptRouterClient::connect(format!("http://{grpc_addr}"))
        .await
        .expect("connect");
    let reply = client
        .converse(common::ask("Hello from another process"))
        .await
        .expect("answer")
        .into_inner();
    let model = reply.decision.clone().unwrap().model_id;
    assert!(common::reply_text(&reply).starts_with(&format!("[{model}]")));

    let received: serde_json::Value =
        serde_json::from_str(&common::http_get(&format!("{endpoint}/_sim/requests")).await)
            .expect("json");
    let first = &received.as_array().expect("a list")[0];
    assert_eq!(first["modelId"], model.as_str());
    assert_eq!(
        first["sourceRegion"], "us-west-2",
        "the configured region signs the request"
    );

    // Wait off the runtime, so the still-open client can answer the server's graceful shutdown.
    let (router_exit, sim_exit) =
        tokio::task::spawn_blocking(move || (router.terminate(), sim.terminate()))
            .await
            .unwrap();
    assert!(router_exit.success(), "serve exits 0 on SIGTERM");
    assert!(sim_exit.success(), "simulate exits 0 on SIGTERM");
    drop(client);
}

#[test]
fn serve_without_credentials_suggests_simulate() {
    let home = std::env::temp_dir().join(format!("router-nocreds-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    let output = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .env_clear()
        .env("HOME", &home)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("run");
    let _ = std::fs::remove_dir_all(&home);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no AWS credentials"), "{stderr}");
    assert!(stderr.contains("serve --simulate"), "{stderr}");
}

#[test]
fn a_bad_config_names_the_field() {
    let output = Command::new(BIN)
        .args(["serve", "--simulate"])
        .env("ROUTER__BEDROCK__REGION", "eu-west-1")
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("models.strong.profile_geographies"),
        "{stderr}"
    );
}

#[test]
fn a_bad_flag_is_refused_with_the_key_it_sets() {
    let output = Command::new(BIN)
        .args(["classify", "--threshold", "1.5"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "config field `routing.threshold` (set by --threshold): 1.5 is outside [0, 1]"
        ),
        "{stderr}"
    );
}

#[test]
fn serve_warns_once_at_start_about_a_deprecated_key() {
    let router = Proc::spawn(serve_simulated(&[]).env("ROUTER__BEDROCK__CALL_TIMEOUT_MS", "60000"));
    let mut warnings = Vec::new();
    loop {
        let line = router
            .lines
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("process output");
        if line.contains("bedrock.call_timeout_ms") {
            warnings.push(line);
        } else if field(&line, "grpc_addr").is_some() {
            break;
        }
    }
    let [warning] = &warnings[..] else {
        panic!("{warnings:#?}");
    };
    assert!(
        warning.contains("WARN")
            && warning.contains("ROUTER__BEDROCK__CALL_TIMEOUT_MS")
            && warning.contains("`bedrock.default_deadline_ms`"),
        "{warning}"
    );
}

#[test]
fn every_command_has_help() {
    for command in [
        &[][..],
        &["serve"],
        &["simulate"],
        &["route"],
        &["classify"],
        &["eval"],
        &["train"],
        &["calibrate"],
        &["load"],
        &["health"],
    ] {
        let output = Command::new(BIN)
            .args(command)
            .arg("--help")
            .output()
            .expect("run");
        assert!(output.status.success(), "{command:?}");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.contains("Usage:"), "{command:?}: {text}");
    }
}

#[test]
fn route_prints_one_decision_per_prompt() {
    let dir = std::env::temp_dir().join(format!("router-route-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("prompts.jsonl");
    std::fs::write(
        &file,
        "hi\n{\"prompt\": \"Prove that sqrt(2) is irrational, step by step.\"}\n\n",
    )
    .unwrap();
    let output = Command::new(BIN)
        .args(["route"])
        .arg(&file)
        .output()
        .expect("run");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["tier"], "fast");
    assert_eq!(
        lines[0]["id"], 1,
        "a plain line is identified by its number"
    );
    assert_eq!(
        lines[0]["model_id"],
        "us.anthropic.claude-3-haiku-20240307-v1:0"
    );
    assert!(lines[1]["score"].as_f64().unwrap() > lines[0]["score"].as_f64().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_accepted_requests_refuses_new_ones_and_exits_0() {
    let router = Proc::spawn(serve_simulated(&[]).env("ROUTER__SERVER__DRAIN_TIMEOUT_MS", "10000"));
    let serving = router.wait_serving();
    let endpoint = format!("http://{}", serving.grpc);
    let metrics = serving.metrics_url();
    let client = serving.client().await;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..20 {
        let mut client = client.clone();
        calls.spawn(async move {
            client
                .converse(common::ask(&format!("Slow one {i} [sim:ttft=2000]")))
                .await
        });
    }
    let metrics = &metrics;
    common::eventually("all 20 requests in flight", || async move {
        Scrape::parse(&common::http_get(metrics).await).sum("router_inflight_requests", &[]) == 20.0
    })
    .await;
    router.sigterm();

    // A new caller is refused once the listener closes, while the accepted calls still run.
    let endpoint = &endpoint;
    common::eventually("a new request refused", || async move {
        match PromptRouterClient::connect(endpoint.clone()).await {
            Err(_) => true,
            Ok(mut late) => late.converse(common::ask("too late")).await.is_err(),
        }
    })
    .await;
    assert!(
        calls.try_join_next().is_none(),
        "the refusal came while the accepted calls were still running"
    );
    let mut ok = 0;
    while let Some(joined) = calls.join_next().await {
        joined.unwrap().expect("every accepted request completes");
        ok += 1;
    }
    println!("SIGTERM under load: {ok} of 20 accepted requests completed; new connections refused");
    assert_eq!(ok, 20);
    drop(client);
    let mut router = router;
    let status = tokio::task::spawn_blocking(move || router.child.wait())
        .await
        .unwrap()
        .expect("wait");
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_not_serving_as_soon_as_shutdown_starts() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let router = Proc::spawn(serve_simulated(&[]).env("ROUTER__SERVER__SHUTDOWN_DELAY_MS", "1500"));
    let serving = router.wait_serving();
    let (grpc_addr, metrics_addr) = (serving.grpc, serving.metrics.to_string());
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc_addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = HealthClient::new(channel.clone());
    // Both names: the router's own, and "" (the whole server) that probes without a name ask about.
    async fn statuses(health: &HealthClient<tonic::transport::Channel>) -> Vec<i32> {
        let mut statuses = Vec::new();
        for service in ["", "router.v1.PromptRouter"] {
            let request = HealthCheckRequest {
                service: service.to_owned(),
            };
            let reply = health.clone().check(request).await.unwrap();
            statuses.push(reply.into_inner().status);
        }
        statuses
    }
    // The plaintext HTTP probes on the metrics port say the same, for a TLS gRPC port.
    let ready = |addr: String| async move {
        common::http_client::send(&addr, "GET", "/ready", &[], b"")
            .await
            .expect("HTTP exchange")
            .status
    };
    assert_eq!(statuses(&health).await, [ServingStatus::Serving as i32; 2]);
    assert_eq!(ready(metrics_addr.clone()).await, 200);
    router.sigterm();
    let probe = &health;
    common::eventually("NOT_SERVING on SIGTERM", || async move {
        statuses(probe).await == [ServingStatus::NotServing as i32; 2]
    })
    .await;
    assert_eq!(ready(metrics_addr.clone()).await, 503);
    let live = common::http_client::send(&metrics_addr, "GET", "/live", &[], b"")
        .await
        .expect("HTTP exchange");
    assert_eq!(live.status, 200);
    // During the delay requests are still served: balancers are catching up.
    let mut client = PromptRouterClient::new(channel);
    client
        .converse(common::ask("still served"))
        .await
        .expect("served during the delay");
    drop((health, client));
    let mut router = router;
    let status = tokio::task::spawn_blocking(move || router.child.wait())
        .await
        .unwrap()
        .expect("wait");
    assert!(status.success());
}

#[tokio::test]
async fn an_independent_aws_client_parses_the_simulator() {
    let sim = Proc::spawn(Command::new(BIN).args(["simulate", "--listen", "127.0.0.1:0"]));
    let endpoint = sim.wait_for_field("endpoint");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/boto3_check.py");
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3").arg(script).arg(&endpoint).output()
    })
    .await
    .unwrap()
    .expect("python3 must be installed (scripts/test installs boto3)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "boto3 check failed (scripts/test installs boto3):\n{stdout}\n{stderr}"
    );
    for check in [
        "converse ok",
        "converse_stream ok",
        "error ok: ThrottlingException 429",
        "typed ValidationException ok",
        "mid-stream exception ok",
    ] {
        assert!(stdout.contains(check), "{check}:\n{stdout}");
    }
}
