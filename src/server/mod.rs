//! Starting and stopping the router: the gRPC server (PromptRouter, health, reflection), the
//! `/metrics` listener and, with `--simulate`, the in-process Bedrock simulator.

mod admission;
mod auth;
pub mod codec;
mod conn;
mod context;
pub mod convert;
mod deadline;
mod dispatch;
pub mod error;
mod feedback;
mod metrics_http;
mod record;
mod reply;
mod service;
mod stream;
mod target;
pub mod tls;
mod weigh;

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    net::TcpListener,
    sync::{Semaphore, watch},
    task::JoinHandle,
};
use tonic::service::Routes;
use tonic_health::server::HealthReporter;

pub use self::service::{RouterService, RouterState};
pub use self::target::{Change, QualityTarget};
use self::{admission::Admission, dispatch::Resilience, feedback::Recent};
use crate::{
    backend::{Auth, Bedrock},
    labels::{LabelSink, Store, writer::Writer},
    limits::Limiter,
    pb::prompt_router_server::PromptRouterServer,
    quality::Duels,
    reload, setup, telemetry,
};
use prompt_router_core::{
    classify::Weights,
    config::{Config, Overrides, RawConfig},
};

/// Largest request message of the health and reflection services: theirs are a few bytes, and
/// tonic's default (4 MiB) times the calls a client can open would be memory nothing accounts.
const SMALL_MESSAGE: usize = 64 * 1024;

/// Resident memory of a router at rest: code, runtime, SDK clients, classifier (measured: 17
/// MiB after one call, release build).
const BASELINE_BYTES: u64 = 24 << 20;
/// Per open gRPC connection besides its receive window: hyper's and h2's state and buffers
/// (measured: 19 KiB per idle connection).
const CONNECTION_BYTES: u64 = 24 << 10;
/// Per open gRPC connection over TLS besides [`CONNECTION_BYTES`]: rustls's session state
/// (measured: 9 KiB more per idle connection than without TLS), one 16 KiB record being read,
/// and the encrypted bytes waiting for the socket, at most [`tls::SEND_BUFFER`].
const TLS_CONNECTION_BYTES: u64 = (9 << 10) + (17 << 10) + tls::SEND_BUFFER as u64;
/// Per model call in flight besides its request: the SDK's call state, its upstream
/// connection, the answer (measured: 53 KiB with 512 held open).
const CALL_BYTES: u64 = 64 << 10;

/// The most resident memory the router takes with `config`'s settings, whatever its clients
/// do: the sum of what each bound lets them hold, plus a sixth for the allocator (README,
/// "Memory and connections"). The `hostile` bench measures peaks against it and
/// `tests/deploy.rs` keeps the Kubernetes memory limit above it.
pub fn memory_bound(config: &Config) -> u64 {
    let server = &config.server;
    let held = BASELINE_BYTES
        + feedback::memory_bound(&config.quality)
        + server.max_inflight_request_bytes
        + server.max_connections as u64 * (u64::from(server.http2_window_bytes) + CONNECTION_BYTES)
        + server
            .tls
            .as_ref()
            .map_or(0, |_| server.max_connections as u64 * TLS_CONNECTION_BYTES)
        + server.max_concurrency as u64 * CALL_BYTES
        + admission::OTHER_CONCURRENCY as u64 * 2 * SMALL_MESSAGE as u64
        + metrics_http::MAX_CONNECTIONS as u64 * CONNECTION_BYTES;
    held + held / 6
}

/// `--simulate`'s defaults under `overrides`: the listen addresses that neither the file, a
/// variable nor a flag sets bind loopback on their usual ports, so the quick start is not
/// reachable from the network.
pub fn simulate_on_loopback(overrides: Overrides) -> Overrides {
    let defaults = RawConfig::default().server;
    let loopback = |addr: SocketAddr| Some(SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port())));
    overrides
        .fallback("--simulate", "server.listen", loopback(defaults.listen))
        .fallback(
            "--simulate",
            "server.metrics_listen",
            loopback(defaults.metrics_listen),
        )
}

/// How to start the router, beyond its config.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Start the Bedrock simulator in-process and call it instead of AWS.
    pub simulate: bool,
    /// Hand label rows to this sink instead of `quality.store`'s (tests, embedding).
    pub labels: Option<LabelSink>,
}

/// A running router.
#[derive(Debug)]
pub struct Running {
    /// The bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// The bound `/metrics` address.
    pub metrics_addr: SocketAddr,
    /// The in-process simulator, when started with `--simulate`.
    pub simulator: Option<bedrock_sim::SimHandle>,
    health: HealthReporter,
    stop_grpc: watch::Sender<bool>,
    stop_side: watch::Sender<bool>,
    grpc: JoinHandle<()>,
    shutdown_delay: Duration,
    drain_timeout: Duration,
    concurrency: Arc<Semaphore>,
    max_concurrency: usize,
    cut_off: watch::Sender<bool>,
    draining: watch::Sender<bool>,
    duels: Arc<Duels>,
    side_tasks: Vec<JoinHandle<()>>,
    labels: LabelSink,
    label_writer: Option<Writer>,
}

/// How long requests cut off at the end of the drain get to send their status before the
/// server is stopped regardless.
const CUT_OFF_GRACE: Duration = Duration::from_secs(1);

/// Label rows offered and not yet taken by the writer: a burst of duels and feedback the
/// writer takes in batches of [`crate::labels::writer::BATCH`].
const LABEL_CHANNEL: usize = 1_024;

/// The label sink and its writer for `quality.store` (off without one).
fn configured_labels(config: &Config) -> anyhow::Result<(LabelSink, Option<Writer>)> {
    let Some(location) = &config.quality.store else {
        return Ok((LabelSink::off(), None));
    };
    let store = Store::open(location)
        .with_context(|| format!("opening the label store {location} (quality.store)"))?;
    let (sink, rx) = LabelSink::channel(LABEL_CHANNEL);
    Ok((sink, Some(Writer::spawn(store, location.to_string(), rx))))
}

/// Builds the shared router state from a checked config, with the label writer when
/// `quality.store` is set (and no sink of the embedding program's own is given) and the weights
/// the classifier was built from.
pub async fn build_state(
    config: &Config,
    auth: Auth,
    labels: Option<LabelSink>,
) -> anyhow::Result<(RouterState, Option<Writer>, Weights)> {
    let weights = setup::load_weights(config.routing.weights_path.as_deref())?;
    let decider = setup::decider_from(config, weights.clone())?;
    let bedrock = Bedrock::connect(&config.bedrock, auth).await?;
    let telemetry = telemetry::install().context("installing the metrics recorder")?;
    telemetry.register(
        decider.catalog.models().map(|m| &m.invoke_id),
        config.callers.labels(),
    );
    auth::Failure::register();
    let resilience = Resilience::new(
        &config.resilience,
        &config.bedrock.regions(),
        &decider.catalog,
    );
    let (labels, writer) = match labels {
        Some(sink) => (sink, None),
        None => configured_labels(config)?,
    };
    let concurrency = Arc::new(Semaphore::new(config.server.max_concurrency));
    let duels = Arc::new(Duels::new(
        &config.quality,
        &decider.catalog,
        bedrock.clone(),
        config.bedrock.default_deadline,
        Arc::clone(&concurrency),
        config.server.max_concurrency,
        telemetry,
    ));
    let state = RouterState {
        decider,
        bedrock,
        resilience,
        concurrency,
        limits: config.limits,
        default_deadline: config.bedrock.default_deadline,
        log_prompts: config.telemetry.log_prompts,
        cut_off: watch::channel(false).0,
        draining: watch::channel(false).0,
        labels,
        duels,
        quality_target: config.routing.target_quality.map(|target| QualityTarget {
            target,
            min_duels: config.quality.min_duels,
        }),
        recent: Recent::new(
            config.quality.feedback_capacity,
            config.quality.feedback_ttl,
            config.quality.store_prompts,
        ),
        limiter: Limiter::new(&config.limit_store, &config.callers)?,
        callers: config.callers.clone(),
        telemetry,
    };
    Ok((state, writer, weights))
}

/// Binds the listeners and starts serving; returns once both ports accept connections.
pub async fn start(mut config: Config, options: Options) -> anyhow::Result<Running> {
    // Before anything starts: a bad certificate or key stops the start with the key's name.
    let tls = config
        .server
        .tls
        .as_ref()
        .map(tls::Tls::load)
        .transpose()?
        .map(Arc::new);
    let simulator = if options.simulate {
        let handle = bedrock_sim::start(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            bedrock_sim::SimConfig::default(),
        )
        .await
        .context("starting the Bedrock simulator")?;
        tracing::info!(endpoint = %handle.endpoint_url(), "Bedrock simulator started; no AWS calls will be made");
        config.bedrock.endpoint_url = Some(handle.endpoint_url());
        Some(handle)
    } else {
        None
    };
    let auth = if options.simulate {
        Auth::Dummy
    } else {
        Auth::DefaultChain
    };
    let (router, label_writer, weights) = build_state(&config, auth, options.labels).await?;
    let router = Arc::new(router);
    let labels = router.labels.clone();
    let telemetry = router.telemetry;
    let duels = Arc::clone(&router.duels);
    let concurrency = Arc::clone(&router.concurrency);
    let cut_off = router.cut_off.clone();
    let draining = router.draining.clone();

    let grpc_listener = TcpListener::bind(config.server.listen)
        .await
        .with_context(|| {
            format!(
                "binding the gRPC address {} (server.listen)",
                config.server.listen
            )
        })?;
    let metrics_listener = TcpListener::bind(config.server.metrics_listen)
        .await
        .with_context(|| {
            format!(
                "binding the metrics address {} (server.metrics_listen)",
                config.server.metrics_listen
            )
        })?;
    let grpc_addr = grpc_listener.local_addr()?;
    let metrics_addr = metrics_listener.local_addr()?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<PromptRouterServer<RouterService>>()
        .await;
    // Each version lists every service, both reflection versions included, whichever a
    // client speaks (grpcurl before 1.9 speaks only v1alpha).
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
    };
    let router_service = PromptRouterServer::new(RouterService::new(Arc::clone(&router)))
        .max_decoding_message_size(config.server.max_request_bytes);
    let mut routes = Routes::new(health_service.max_decoding_message_size(SMALL_MESSAGE))
        .add_service(router_service);
    if config.server.reflection {
        routes = routes
            .add_service(
                reflection()
                    .build_v1()?
                    .max_decoding_message_size(SMALL_MESSAGE),
            )
            .add_service(
                reflection()
                    .build_v1alpha()?
                    .max_decoding_message_size(SMALL_MESSAGE),
            );
    }
    let routes = routes.prepare();
    let admission = Arc::new(Admission::new(
        &config.server,
        Arc::clone(&concurrency),
        telemetry,
    )?);

    let (stop_grpc, grpc_shutdown) = watch::channel(false);
    let (stop_side, side_shutdown) = watch::channel(false);
    let grpc = tokio::spawn(conn::serve(
        grpc_listener,
        admission.layer(routes),
        conn::Bounds::new(&config.server),
        tls.clone(),
        grpc_shutdown,
    ));
    let metrics = tokio::spawn(metrics_http::serve(
        metrics_listener,
        Arc::clone(&router),
        config.server.header_read_timeout,
        side_shutdown.clone(),
    ));
    let reloader = match &config.routing.weights_path {
        Some(path) => Some(reload::Reloader::new(
            path.clone(),
            Arc::clone(&router),
            weights,
            config.quality.store.clone(),
        )),
        None => None,
    };
    let reloads = reload::spawn(reloader, config.routing.weights_poll, side_shutdown.clone())?;
    let mut side_tasks = vec![metrics, reloads];
    if let Some(tls) = tls {
        let interval = config.server.tls.as_ref().and_then(|t| t.reload_interval);
        side_tasks.push(tls::spawn(tls, interval, side_shutdown.clone())?);
    }
    let mut upkeep_shutdown = side_shutdown;
    let steered = Arc::clone(&router);
    let upkeep = tokio::spawn(async move {
        let mut tick = tokio::time::interval(telemetry::UPKEEP_INTERVAL);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    telemetry.run_upkeep();
                    // The quality target follows the duels at the upkeep's pace: a duel takes
                    // seconds, and one more changes the estimate little.
                    if steered.quality_target.is_some() {
                        steered.retarget(&steered.duels.snapshot());
                    }
                }
                _ = upkeep_shutdown.wait_for(|stop| *stop) => return,
            }
        }
    });
    side_tasks.push(upkeep);
    tracing::info!(%grpc_addr, %metrics_addr, tls = config.server.tls.is_some(), "prompt-router serving");
    Ok(Running {
        grpc_addr,
        metrics_addr,
        simulator,
        health,
        stop_grpc,
        stop_side,
        grpc,
        shutdown_delay: config.server.shutdown_delay,
        drain_timeout: config.server.drain_timeout,
        concurrency,
        max_concurrency: config.server.max_concurrency,
        cut_off,
        draining,
        duels,
        side_tasks,
        labels,
        label_writer,
    })
}

impl Running {
    /// Where label rows go (off without `quality.store`): the handle duels and feedback use.
    pub fn labels(&self) -> &LabelSink {
        &self.labels
    }

    /// Stops the duels (none starts, running ones are cancelled), reports NOT_SERVING, keeps
    /// serving for `server.shutdown_delay_ms`, stops accepting, lets in-flight requests finish
    /// within `server.drain_timeout_ms`, ends those still running with UNAVAILABLE, then stops.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.duels.stop();
        self.draining.send_replace(true);
        self.health
            .set_not_serving::<PromptRouterServer<RouterService>>()
            .await;
        // The empty name is the whole server, which is what probes without a service ask about.
        self.health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        tokio::time::sleep(self.shutdown_delay).await;
        let _ = self.stop_grpc.send(true);
        match tokio::time::timeout(self.drain_timeout, &mut self.grpc).await {
            Ok(joined) => joined.context("gRPC server task")?,
            Err(_) => {
                let cut_off = self.max_concurrency - self.concurrency.available_permits();
                tracing::warn!(
                    cut_off,
                    drain_timeout_ms = self.drain_timeout.as_millis(),
                    "drain time is up; ending the requests still in flight with UNAVAILABLE"
                );
                self.cut_off.send_replace(true);
                match tokio::time::timeout(CUT_OFF_GRACE, &mut self.grpc).await {
                    Ok(joined) => joined.context("gRPC server task")?,
                    Err(_) => {
                        tracing::warn!("connections still open after the cut-off; closing them");
                        self.grpc.abort();
                    }
                }
            }
        }
        // After the drain no request offers rows: the writer stores what it holds.
        if let Some(writer) = self.label_writer {
            writer.shutdown().await;
        }
        // Metrics stay up through the drain, so the last scrape sees every request's outcome.
        let _ = self.stop_side.send(true);
        for task in self.side_tasks {
            let _ = task.await;
        }
        if let Some(sim) = self.simulator {
            sim.shutdown().await;
        }
        Ok(())
    }
}
