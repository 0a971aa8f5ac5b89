//! The deploy/ files against each other and against the code: every YAML parses; Services,
//! ServiceMonitor, HPA and PDB point at what exists; the ConfigMap's config is valid and mounted
//! where `--config` points; the gRPC probes ask the health service the server really registers,
//! on the port it really listens on; the drain budget covers the router's drain; the Dockerfile
//! copies only paths that exist; the dashboard and provisioning files are well formed.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use prompt_router::{
    cli::health,
    pb::prompt_router_server::PromptRouterServer,
    server::{self, Options, RouterService},
};
use prompt_router_core::config::{Config, Overrides};
use serde::Deserialize as _;
use serde_json::Value;
use tonic::server::NamedService;
use tonic_health::pb::health_check_response::ServingStatus;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every document of a YAML file, as JSON values.
fn yaml_docs(path: &Path) -> Vec<Value> {
    serde_norway::Deserializer::from_str(&read(path))
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|doc| !doc.is_null())
        .collect()
}

fn yaml(path: &Path) -> Value {
    let mut docs = yaml_docs(path);
    assert_eq!(docs.len(), 1, "{}: one document expected", path.display());
    docs.remove(0)
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {value}"))
}

fn u64_at(value: &Value, pointer: &str) -> u64 {
    value
        .pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no number at {pointer} in {value}"))
}

fn labels(value: &Value, pointer: &str) -> BTreeMap<String, String> {
    serde_json::from_value(value.pointer(pointer).cloned().unwrap_or(Value::Null))
        .unwrap_or_else(|e| panic!("labels at {pointer}: {e}"))
}

/// Whether every label of `selector` is in `labels` with the same value.
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The kustomize base: every resource by (kind, name), plus the kustomization itself.
struct Base {
    kustomization: Value,
    resources: BTreeMap<(String, String), Value>,
}

impl Base {
    fn load() -> Self {
        let dir = root().join("deploy/k8s");
        let kustomization = yaml(&dir.join("kustomization.yaml"));
        let listed: Vec<&str> = kustomization["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .map(|r| r.as_str().expect("resource path"))
            .collect();
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
            .collect();
        on_disk.sort();
        let mut sorted = listed.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, on_disk, "kustomization.yaml lists every manifest");
        let mut resources = BTreeMap::new();
        for file in listed {
            for doc in yaml_docs(&dir.join(file)) {
                let key = (
                    str_at(&doc, "/kind").to_owned(),
                    str_at(&doc, "/metadata/name").to_owned(),
                );
                assert!(
                    resources.insert(key.clone(), doc).is_none(),
                    "{key:?} twice"
                );
            }
        }
        Self {
            kustomization,
            resources,
        }
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        self.resources
            .get(&(kind.to_owned(), name.to_owned()))
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    }

    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.resources
            .iter()
            .filter(|((k, _), _)| k == kind)
            .map(|(_, v)| v)
            .collect()
    }

    fn deployment(&self) -> &Value {
        let deployments = self.of_kind("Deployment");
        assert_eq!(deployments.len(), 1);
        deployments[0]
    }

    fn container(&self) -> &Value {
        let containers = self.deployment()["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("containers");
        assert_eq!(containers.len(), 1);
        &containers[0]
    }

    fn container_port(&self, name: &str) -> u64 {
        self.container()["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| u64_at(p, "/containerPort"))
            .unwrap_or_else(|| panic!("no container port named {name}"))
    }

    /// The config file the container runs with: `--config` resolved through the volume mount
    /// to the ConfigMap generator's file.
    fn config_file(&self) -> PathBuf {
        let args: Vec<&str> = self.container()["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let at = args
            .iter()
            .position(|a| *a == "--config")
            .expect("--config");
        let config_path = Path::new(args[at + 1]);
        let mount = self.container()["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| config_path.starts_with(str_at(m, "/mountPath")))
            .expect("a volume mounted where --config points");
        let volume_name = str_at(mount, "/name");
        let volume = self.deployment()["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == volume_name)
            .expect("the mounted volume");
        let config_map = str_at(volume, "/configMap/name");
        let generator = self.kustomization["configMapGenerator"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["name"] == config_map)
            .unwrap_or_else(|| panic!("no configMapGenerator named {config_map}"));
        let key = config_path
            .strip_prefix(str_at(mount, "/mountPath"))
            .unwrap();
        let file = generator["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .find(|f| Path::new(f).file_name() == Some(key.as_os_str()))
            .unwrap_or_else(|| panic!("the generator has no file {}", key.display()));
        root().join("deploy/k8s").join(file)
    }

    fn config(&self) -> Config {
        let path = self.config_file();
        let config = Config::load(Some(&path), Vec::new(), &Overrides::default())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            config.deprecations(),
            [] as [String; 0],
            "{}",
            path.display()
        );
        config
    }
}

#[test]
fn every_yaml_file_parses() {
    let mut count = 0;
    let mut dirs = vec![root().join("deploy")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                assert!(!yaml_docs(&path).is_empty(), "{} is empty", path.display());
                count += 1;
            }
        }
    }
    assert!(count >= 10, "found only {count} YAML files");
}

#[test]
fn services_monitors_and_budgets_point_at_the_deployment() {
    let base = Base::load();
    let deployment = base.deployment();
    let name = str_at(deployment, "/metadata/name");
    let selector = labels(deployment, "/spec/selector/matchLabels");
    let pod_labels = labels(deployment, "/spec/template/metadata/labels");
    assert!(
        selects(&selector, &pod_labels),
        "Deployment selects its pods"
    );

    let container_ports: Vec<&str> = base.container()["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| str_at(p, "/name"))
        .collect();
    let services = base.of_kind("Service");
    assert_eq!(services.len(), 2, "a gRPC and a metrics Service");
    for service in &services {
        let service_name = str_at(service, "/metadata/name");
        assert!(
            selects(&labels(service, "/spec/selector"), &pod_labels),
            "{service_name} selects the pods"
        );
        for port in service["spec"]["ports"].as_array().unwrap() {
            let target = str_at(port, "/targetPort");
            assert!(
                container_ports.contains(&target),
                "{service_name}: targetPort {target} names a container port"
            );
            assert_eq!(
                str_at(port, "/name"),
                target,
                "{service_name}: port names match the container's"
            );
        }
    }
    let grpc = base.get("Service", name);
    assert_eq!(
        grpc["spec"]["clusterIP"], "None",
        "headless, for client-side balancing"
    );
    assert_eq!(grpc["spec"]["ports"][0]["name"], "grpc");
    let metrics = base.get("Service", &format!("{name}-metrics"));
    assert_eq!(metrics["spec"]["ports"][0]["name"], "metrics");

    let monitors = base.of_kind("ServiceMonitor");
    assert_eq!(monitors.len(), 1);
    let monitor_selector = labels(monitors[0], "/spec/selector/matchLabels");
    assert!(selects(
        &monitor_selector,
        &labels(metrics, "/metadata/labels")
    ));
    assert!(
        !selects(&monitor_selector, &labels(grpc, "/metadata/labels")),
        "the ServiceMonitor must not pick the gRPC Service"
    );
    for endpoint in monitors[0]["spec"]["endpoints"].as_array().unwrap() {
        assert_eq!(str_at(endpoint, "/port"), "metrics");
        assert_eq!(str_at(endpoint, "/path"), "/metrics");
    }

    let hpa = &base.of_kind("HorizontalPodAutoscaler")[0];
    assert_eq!(str_at(hpa, "/spec/scaleTargetRef/kind"), "Deployment");
    assert_eq!(str_at(hpa, "/spec/scaleTargetRef/apiVersion"), "apps/v1");
    assert_eq!(str_at(hpa, "/spec/scaleTargetRef/name"), name);
    assert!(
        u64_at(hpa, "/spec/minReplicas") >= 2,
        "a PDB needs two pods"
    );
    assert!(
        deployment["spec"].get("replicas").is_none(),
        "the HPA owns the replica count"
    );

    let pdb = &base.of_kind("PodDisruptionBudget")[0];
    assert_eq!(labels(pdb, "/spec/selector/matchLabels"), selector);

    let account = str_at(deployment, "/spec/template/spec/serviceAccountName");
    let account = base.get("ServiceAccount", account);
    assert!(
        str_at(account, "/metadata/annotations/eks.amazonaws.com~1role-arn")
            .starts_with("arn:aws:iam::"),
        "IRSA role annotation"
    );
}

#[test]
fn probes_ports_and_drain_match_the_router() {
    let base = Base::load();
    let config = base.config();
    let container = base.container();
    let grpc_port = base.container_port("grpc");
    assert_eq!(grpc_port, u64::from(config.server.listen.port()));
    assert_eq!(
        base.container_port("metrics"),
        u64::from(config.server.metrics_listen.port())
    );
    assert!(
        config.server.listen.ip().is_unspecified()
            && config.server.metrics_listen.ip().is_unspecified(),
        "listen on every interface in a pod"
    );
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        assert_eq!(
            u64_at(&container[probe], "/grpc/port"),
            grpc_port,
            "{probe} asks the gRPC port"
        );
    }
    assert_eq!(
        str_at(container, "/readinessProbe/grpc/service"),
        <PromptRouterServer<RouterService> as NamedService>::NAME,
        "readiness follows the router service, which turns NOT_SERVING when draining"
    );
    assert!(container["livenessProbe"]["grpc"].get("service").is_none());

    let pod = &base.deployment()["spec"]["template"]["spec"];
    let grace = u64_at(pod, "/terminationGracePeriodSeconds");
    let pre_stop = u64_at(container, "/lifecycle/preStop/sleep/seconds");
    assert!(
        config.server.drain_timeout >= config.bedrock.default_deadline,
        "the drain must outlast a call without a deadline"
    );
    let drain = config.server.drain_timeout.as_secs_f64().ceil() as u64;
    assert!(
        grace > pre_stop + drain,
        "terminationGracePeriodSeconds {grace} <= preStop {pre_stop} s + drain {drain} s"
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        container["securityContext"]["readOnlyRootFilesystem"], true,
        "the router writes no files"
    );
}

#[test]
fn the_memory_limit_sits_above_the_routers_bound() {
    let base = Base::load();
    let config = base.config();
    let limit = str_at(base.container(), "/resources/limits/memory");
    let limit: u64 = limit
        .strip_suffix("Mi")
        .and_then(|mi| mi.parse::<u64>().ok())
        .map(|mi| mi << 20)
        .unwrap_or_else(|| panic!("a limit in Mi, not {limit:?}"));
    let bound = server::memory_bound(&config);
    println!(
        "memory limit {} MiB, the router's bound {} MiB",
        limit >> 20,
        bound >> 20
    );
    // A fifth above: headroom for what the bound's measured parts miss.
    assert!(
        limit >= bound + bound / 5,
        "limit {} MiB is not a fifth above the bound of {} MiB",
        limit >> 20,
        bound >> 20
    );
}

/// Runs the binary off the runtime, so the in-process router keeps serving meanwhile.
async fn run_bin(args: &[&str]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(common::process::BIN)
            .args(args)
            .output()
    })
    .await
    .unwrap()
    .unwrap()
}

/// The probes' questions, asked of a router started with the ConfigMap's config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configmap_config_serves_what_the_probes_ask() {
    let base = Base::load();
    let mut config = base.config();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.server.metrics_listen = "127.0.0.1:0".parse().unwrap();
    let running = server::start(
        config,
        Options {
            simulate: true,
            ..Options::default()
        },
    )
    .await
    .expect("router starts");
    let addr = running.grpc_addr.to_string();
    let readiness = str_at(base.container(), "/readinessProbe/grpc/service").to_owned();
    for service in ["", readiness.as_str()] {
        let status = health::check(&addr, service, Duration::from_secs(5))
            .await
            .expect("health answers");
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }
    // The Dockerfile's HEALTHCHECK runs the binary's `health` subcommand.
    let ok = run_bin(&["health", "--addr", &addr]).await;
    assert!(ok.status.success(), "{ok:?}");
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "SERVING");
    let unknown = run_bin(&["health", "--addr", &addr, "--service", "no.such.Service"]).await;
    assert!(!unknown.status.success());
    // The plaintext question on the metrics port, for a router whose gRPC port speaks TLS.
    let metrics = running.metrics_addr.to_string();
    let ready = run_bin(&["health", "--ready", &metrics]).await;
    assert!(ready.status.success(), "{ready:?}");
    assert_eq!(String::from_utf8_lossy(&ready.stdout).trim(), "SERVING");
    running.shutdown().await.expect("clean shutdown");
    let gone = run_bin(&["health", "--addr", &addr, "--timeout", "1s"]).await;
    assert!(!gone.status.success(), "a stopped router is not healthy");
    let gone = run_bin(&["health", "--ready", &metrics, "--timeout", "1s"]).await;
    assert!(!gone.status.success(), "a stopped router is not ready");
}

#[test]
fn dockerfile_copies_existing_paths_and_matches_the_config() {
    let dockerfile = read(&root().join("deploy/Dockerfile")).replace("\\\n", " ");
    let ignored: Vec<String> = read(&root().join(".dockerignore"))
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    let mut copies = 0;
    for line in dockerfile.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("COPY ") else {
            continue;
        };
        if rest.starts_with("--from=") {
            continue;
        }
        let words: Vec<&str> = rest.split_whitespace().collect();
        for source in &words[..words.len() - 1] {
            assert!(
                root().join(source).exists(),
                "COPY source {source} does not exist"
            );
            assert!(
                !ignored.iter().any(|pattern| {
                    pattern == source || source.starts_with(&format!("{pattern}/"))
                }),
                "COPY source {source} is excluded by .dockerignore"
            );
            copies += 1;
        }
    }
    assert!(copies >= 5, "{copies} COPY sources");

    // The dependency layer builds against stub benches: one per [[bench]] of Cargo.toml.
    let manifest: toml::Table = read(&root().join("Cargo.toml")).parse().unwrap();
    for bench in manifest["bench"].as_array().unwrap() {
        let name = bench["name"].as_str().unwrap();
        assert!(
            dockerfile.contains(&format!("benches/{name}.rs")),
            "the Dockerfile stubs bench {name}"
        );
    }

    // ... and against stub member crates: each member's manifest is copied before the
    // dependency build, its lib.rs stubbed, and its sources copied after.
    for member in manifest["workspace"]["members"].as_array().unwrap() {
        let member = member.as_str().unwrap();
        for needed in [
            format!("COPY {member}/Cargo.toml {member}/"),
            format!("{member}/src/lib.rs"),
            format!("COPY {member}/src {member}/src"),
        ] {
            assert!(dockerfile.contains(&needed), "the Dockerfile has {needed}");
        }
    }

    let config = Base::load().config();
    let expose = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("EXPOSE "))
        .expect("EXPOSE");
    for port in [
        config.server.listen.port(),
        config.server.metrics_listen.port(),
    ] {
        assert!(
            expose.split_whitespace().any(|p| p == port.to_string()),
            "EXPOSE {port}"
        );
    }
    assert!(dockerfile.contains("\"health\", \"--addr\", \"127.0.0.1:50051\""));
    assert!(dockerfile.contains("\"--config\", \"/etc/prompt-router/router.toml\""));
    assert!(dockerfile.contains("USER 65532"), "non-root");
}

#[test]
fn dashboard_and_provisioning_are_well_formed() {
    let dashboard: Value = serde_json::from_str(&read(
        &root().join("deploy/grafana/dashboards/prompt-router.json"),
    ))
    .expect("dashboard JSON");
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        variables.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "a Prometheus data source variable"
    );
    let mut ids = Vec::new();
    let mut exprs = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        ids.push(u64_at(panel, "/id"));
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{panel}");
        for target in panel["targets"].as_array().unwrap() {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{target}");
            assert!(!str_at(target, "/expr").is_empty());
            exprs += 1;
        }
    }
    let count = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), count, "panel ids are unique");
    assert!(exprs >= 20, "{exprs} queries");
    // The quality row: the recovered share with its interval beside the savings, in one panel.
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(
        panels
            .iter()
            .any(|p| p["type"] == "row" && p["title"] == "Quality kept vs money saved")
    );
    let kept = panels
        .iter()
        .find(|p| p["title"] == "Quality kept vs money saved" && p["type"] == "timeseries")
        .expect("the quality kept vs money saved panel");
    let kept_exprs: Vec<&str> = kept["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| str_at(t, "/expr"))
        .collect();
    for series in [
        "router_quality_recovered_ratio)",
        "router_quality_recovered_ratio_low",
        "router_quality_recovered_ratio_high",
        "router_quality_recovered_floor",
        "router_baseline_cost_usd_total",
    ] {
        assert!(
            kept_exprs.iter().any(|e| e.contains(series)),
            "{series}: {kept_exprs:?}"
        );
    }

    let provisioning = root().join("deploy/grafana/provisioning");
    let providers = yaml(&provisioning.join("dashboards/prompt-router.yml"));
    assert_eq!(providers["providers"][0]["type"], "file");
    let sources = yaml(&provisioning.join("datasources/prometheus.yml"));
    assert_eq!(sources["datasources"][0]["type"], "prometheus");
}

#[test]
fn every_alert_has_a_runbook() {
    let rules = yaml(&root().join("deploy/prometheus/rules.yml"));
    let mut alerts = 0;
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            if rule.get("alert").is_none() {
                continue;
            }
            alerts += 1;
            for key in ["summary", "description", "runbook"] {
                assert!(
                    rule["annotations"][key]
                        .as_str()
                        .is_some_and(|s| !s.is_empty()),
                    "{}: no {key}",
                    rule["alert"]
                );
            }
            assert!(rule["labels"]["severity"].is_string(), "{}", rule["alert"]);
        }
    }
    assert!(alerts >= 6, "{alerts} alerts");
}

/// The README's production example is a config the router accepts, keys and values alike.
#[test]
fn the_readme_production_example_is_a_valid_config() {
    let readme = read(&root().join("README.md"));
    let section = readme
        .split("## In production")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("the README's production section");
    let toml_text = section
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("its router.toml");
    // The token digest file is read at the check; the TLS files only when serving.
    let dir = std::env::temp_dir().join(format!("router-readme-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("reports.sha256"), format!("{}\n", "ab".repeat(32))).unwrap();
    let toml_text = toml_text.replace("/tmp/secure/", &format!("{}/", dir.display()));
    let raw: prompt_router_core::config::RawConfig = toml::from_str(&toml_text).unwrap();
    let config = Config::try_from(raw).unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(config.callers.required);
    assert!(config.server.tls.is_some() && !config.server.reflection);
    assert!(config.limit_store.redis_url.is_some());
    assert_eq!(
        config.callers.by_san("billing.internal").map(|n| &**n),
        Some("billing")
    );
}
