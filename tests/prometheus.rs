//! A real Prometheus scrapes a router under load, with deploy/prometheus/rules.yml loaded, and
//! every PromQL expression we ship is evaluated through its HTTP API: each dashboard query and
//! recording rule must parse and return a finite value; each alert must parse and every series
//! it reads must exist. `promtool` checks the rule file and a real scrape, and runs the alerts'
//! unit tests (deploy/prometheus/rules_test.yml).
//!
//! Needs Debian's `prometheus` package (`prometheus` and `promtool` on PATH); .ci/run installs
//! it. Without them this test fails, it does not skip.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use bedrock_sim::LatencyConfig;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use prompt_router::{
    load::{self, LoadOptions, Pace, Sample},
    pb,
};
use serde_json::Value;

/// The scrape job's name: the metrics Service's name, as the ServiceMonitor would set it.
const JOB: &str = "prompt-router-metrics";
/// What Grafana would put in place of its interval variables, for 1 s scrapes and this test's
/// minute of data.
const GRAFANA_VARIABLES: &[(&str, &str)] = &[
    ("$__rate_interval", "1m"),
    ("$__interval", "15s"),
    ("$__range", "5m"),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A program on PATH, or a failure that says how to get it.
fn tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|path| path.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not on PATH. This test needs a real Prometheus: install Debian's \
                 `prometheus` package (apt-get install -y prometheus), as .ci/run does."
            )
        })
}

fn run_tool(program: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    drop(input);
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{} {args:?} failed:\n{text}",
        program.display()
    );
    text
}

/// A `prometheus` process with its own config and storage in a temporary directory.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    addr: String,
}

impl Prometheus {
    fn start(metrics_addr: &str, rules: &Path) -> Self {
        let dir = std::env::temp_dir().join(format!("router-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: [\"{metrics_addr}\"]\n",
            rules.display()
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        // Prometheus cannot report a port it chose, so take a free one and hand it over.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(tool("prometheus"))
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Self { child, dir, addr }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// A GET; `None` while Prometheus does not answer (starting up).
    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let reply = common::http_client::send(&self.addr, "GET", path, &[], b"")
            .await
            .ok()?;
        Some((reply.status, reply.text()))
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some((200, _)) = self.get("/-/ready").await {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited with {status}:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("prometheus not ready after 60 s:\n{}", self.log());
    }

    /// An instant query: the sample values, or Prometheus's error message.
    async fn query(&self, expr: &str) -> Result<Vec<f64>, String> {
        let path = format!(
            "/api/v1/query?query={}",
            utf8_percent_encode(expr, NON_ALPHANUMERIC)
        );
        let (_, body) = self.get(&path).await.ok_or("no HTTP answer")?;
        let json: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if json["status"] != "success" {
            return Err(format!("{}: {}", json["errorType"], json["error"]));
        }
        let data = &json["data"];
        let value = |pair: &Value| -> f64 {
            // Prometheus writes values as strings: "1.5", "NaN", "+Inf".
            pair[1].as_str().unwrap().parse().unwrap()
        };
        Ok(match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| value(&s["value"]))
                .collect(),
            Some("scalar") => vec![value(&data["result"])],
            other => return Err(format!("unexpected result type {other:?}")),
        })
    }

    async fn alert_states(&self) -> BTreeMap<String, String> {
        let (_, body) = self.get("/api/v1/alerts").await.expect("alerts");
        let json: Value = serde_json::from_str(&body).unwrap();
        json["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["labels"]["alertname"].as_str().unwrap().to_owned(),
                    a["state"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Every `router_…`, `router:…` and `up` selector in a PromQL expression, with its matchers.
fn selectors(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let skip_to = |from: usize, close: char| {
        let mut i = from + 1;
        while i < chars.len() && chars[i] != close {
            i += if chars[i] == '\\' { 2 } else { 1 };
        }
        i + 1
    };
    let mut found = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '[' {
            i = skip_to(i, if c == '"' { '"' } else { ']' });
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let name: String = chars[start..i].iter().collect();
            if name.starts_with("router_") || name.starts_with("router:") || name == "up" {
                let mut selector = name;
                if chars.get(i) == Some(&'{') {
                    let mut end = i + 1;
                    while end < chars.len() && chars[end] != '}' {
                        end = if chars[end] == '"' {
                            skip_to(end, '"')
                        } else {
                            end + 1
                        };
                    }
                    selector.extend(&chars[i..=end.min(chars.len() - 1)]);
                    i = end + 1;
                }
                found.push(selector);
            }
        } else {
            i += 1;
        }
    }
    found
}

/// One expression's verdict.
enum Verdict {
    Data(Vec<f64>),
    Failed(String),
}

fn dashboard_exprs() -> Vec<(String, String)> {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/grafana/dashboards/prompt-router.json"))
            .unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let mut expr = target["expr"].as_str().unwrap().to_owned();
            for (variable, value) in GRAFANA_VARIABLES {
                expr = expr.replace(variable, value);
            }
            assert!(!expr.contains('$'), "unsubstituted variable in {expr}");
            let title = format!(
                "panel \"{}\" {}",
                panel["title"].as_str().unwrap(),
                target["refId"].as_str().unwrap()
            );
            exprs.push((title, expr));
        }
    }
    exprs
}

/// (records, alerts) of the rule file: name → expression.
fn rules() -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let text = std::fs::read_to_string(root().join("deploy/prometheus/rules.yml")).unwrap();
    let rules: Value = serde_norway::from_str(&text).unwrap();
    let (mut records, mut alerts) = (BTreeMap::new(), BTreeMap::new());
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let expr = rule["expr"].as_str().unwrap().trim().to_owned();
            if let Some(name) = rule["record"].as_str() {
                records.insert(name.to_owned(), expr);
            } else {
                alerts.insert(rule["alert"].as_str().unwrap().to_owned(), expr);
            }
        }
    }
    (records, alerts)
}

/// The built-in mix plus throttled (unary and streamed) and invalid requests, so every error
/// panel and the error-ratio alerts have something to show.
fn samples() -> Vec<Sample> {
    let mut samples = common::throttled_mix("Quick one [sim:fail=ThrottlingException]");
    samples.push(Sample {
        name: "invalid".to_owned(),
        request: pb::ConverseRequest::default(),
        stream: false,
    });
    samples
}

/// A dashboard query or recording rule: it must parse and return at least one finite value.
async fn judge(prometheus: &Prometheus, expr: &str) -> Verdict {
    match prometheus.query(expr).await {
        Err(error) => Verdict::Failed(format!("query error: {error}")),
        Ok(values) if values.iter().any(|v| v.is_finite()) => Verdict::Data(values),
        Ok(values) => Verdict::Failed(format!("no finite value: {values:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_rules_evaluate_on_a_real_prometheus() {
    let started = Instant::now();
    let promtool = tool("promtool");
    let rules_file = root().join("deploy/prometheus/rules.yml");
    run_tool(
        &promtool,
        &["check", "rules", rules_file.to_str().unwrap()],
        None,
    );
    let rules_test = root().join("deploy/prometheus/rules_test.yml");
    run_tool(
        &promtool,
        &["test", "rules", rules_test.to_str().unwrap()],
        None,
    );

    // Duels on, and a floor no estimate reaches, so the quality panels have data and the
    // quality alert runs on it.
    // Limits in a real Redis, and a day budget no load reaches, so the callers' panels (budget
    // used, limit store up) have data.
    let redis = common::redis::RedisServer::start();
    let router = common::start_with(|raw| {
        raw.quality.duel_rate = 0.5;
        raw.quality.recovered_floor = Some(1.0);
        raw.quality.min_duels = 1;
        raw.limits.redis_url = Some(redis.url());
        raw.callers.insert(
            "default".to_owned(),
            prompt_router_core::config::raw::RawCaller {
                usd_per_day: Some(1_000.0),
                ..Default::default()
            },
        );
    })
    .await;
    router.sim().set_latency(LatencyConfig {
        ttft_ms: 20,
        per_token_ms: 0,
    });
    let mut prometheus = Prometheus::start(&router.running.metrics_addr.to_string(), &rules_file);
    prometheus.wait_ready().await;

    let options = LoadOptions {
        target: router.running.grpc_addr.to_string(),
        pace: Pace::Rate(20.0),
        duration: Duration::from_secs(8),
        concurrency: 32,
        timeout: Duration::from_secs(10),
        seed: 5,
        progress: false,
    };
    let summary = load::run(&options, &samples()).await.expect("load runs");
    println!("load: {summary}");

    // Wait until Prometheus has scraped the final counts and the rules have run on them.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let scraped = prometheus.query("sum(router_requests_total)").await;
        if scraped.as_deref() == Ok(&[summary.sent as f64][..]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never saw {} requests (last: {scraped:?}):\n{}",
            summary.sent,
            prometheus.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    let scrape = common::http_get(&router.metrics_url()).await;
    run_tool(&promtool, &["check", "metrics"], Some(&scrape));

    let (records, alerts) = rules();
    let mut verdicts: Vec<(String, String, Verdict)> = Vec::new();
    for (title, expr) in dashboard_exprs() {
        let verdict = judge(&prometheus, &expr).await;
        verdicts.push((title, expr, verdict));
    }
    for (name, expr) in &records {
        for (what, query) in [("expression", expr), ("recorded series", name)] {
            let verdict = judge(&prometheus, query).await;
            verdicts.push((format!("rule {name} ({what})"), query.clone(), verdict));
        }
    }
    for (name, expr) in &alerts {
        let verdict = match prometheus.query(expr).await {
            Err(error) => Verdict::Failed(format!("query error: {error}")),
            Ok(_) => {
                let mut verdict = Verdict::Data(Vec::new());
                for selector in selectors(expr) {
                    match prometheus.query(&selector).await {
                        Ok(values) if !values.is_empty() => {}
                        Ok(_) => {
                            verdict = Verdict::Failed(format!("no series for {selector}"));
                            break;
                        }
                        Err(error) => {
                            verdict = Verdict::Failed(format!("{selector}: {error}"));
                            break;
                        }
                    }
                }
                verdict
            }
        };
        verdicts.push((format!("alert {name}"), expr.clone(), verdict));
    }

    let mut report = String::new();
    let mut failed = 0;
    for (title, expr, verdict) in &verdicts {
        let (mark, detail) = match verdict {
            Verdict::Data(values) => ("ok     ", format!("{values:?}")),
            Verdict::Failed(reason) => {
                failed += 1;
                ("FAILED ", reason.clone())
            }
        };
        let _ = writeln!(
            report,
            "{mark} {title}: {detail}\n          {}",
            expr.replace('\n', " ")
        );
    }
    println!("{report}");
    println!(
        "{} expressions, {failed} failed, in {:.1} s",
        verdicts.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        failed, 0,
        "expressions without data or that do not parse:\n{report}"
    );
    assert!(verdicts.len() >= 40, "{} expressions", verdicts.len());

    // The traffic's error ratio (throttled requests) is above the alerts' 5%, and no estimate
    // reaches a floor of 1: these alerts must have left the inactive state, which shows the
    // rules run on live data.
    let states = prometheus.alert_states().await;
    for alert in [
        "RouterErrorRatioHigh",
        "RouterBedrockThrottling",
        "RouterQualityBelowFloor",
    ] {
        assert!(
            matches!(
                states.get(alert).map(String::as_str),
                Some("pending" | "firing")
            ),
            "{alert}: {states:?}"
        );
    }
}

#[test]
fn selectors_are_found_outside_strings_and_ranges() {
    assert_eq!(
        selectors(
            "sum(rate(router_requests_total{outcome!~\"ok|a}b\"}[5m])) / on () up{job=\"x\"} \
             and router:errors:ratio_rate5m > 0.05"
        ),
        [
            "router_requests_total{outcome!~\"ok|a}b\"}",
            "up{job=\"x\"}",
            "router:errors:ratio_rate5m"
        ]
    );
}
