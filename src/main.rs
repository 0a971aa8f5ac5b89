//! The `prompt-router` command line: thin wrappers over the library.

use std::{
    io::{BufRead, IsTerminal, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::{ArgGroup, Args, Parser, Subcommand};
use prompt_router::{
    cli::{self, calibrate::Target},
    labels::{LabelStore as _, Store},
    load,
    server::{self, Options},
    setup, telemetry,
};
use prompt_router_core::{
    catalog::Tier,
    config::{Config, LogFormat, Overrides, StoreLocation},
    cost::usd_per_mtok,
    decide::Decider,
    eval::CostAssumptions,
    train::TrainOptions,
};
use tonic_health::pb::health_check_response::ServingStatus;

/// Routes each conversation to the cheapest Claude model on Amazon Bedrock that can answer it.
#[derive(Debug, Parser)]
#[command(name = "prompt-router", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the gRPC API (PromptRouter, health, reflection) and /metrics.
    Serve(ServeArgs),
    /// Run the Bedrock Runtime simulator alone, for a router started elsewhere.
    Simulate(SimulateArgs),
    /// Print the routing decision for each prompt (plain lines or JSON lines), calling no model.
    Route(ClassifyArgs),
    /// Score JSON lines ({"id","prompt"} or full requests) and print id, score, tier and reasons.
    Classify(ClassifyArgs),
    /// Measure routing quality on labelled JSON lines: APGR, CPT(50%), CPT(80%), cost saved.
    Eval(EvalArgs),
    /// Fit classifier weights on labelled files and write the weights file.
    Train(TrainArgs),
    /// Find the threshold that sends a target share to strong, or recovers a target quality gap.
    Calibrate(CalibrateArgs),
    /// Send a mix of prompts to a running router, at a fixed rate or concurrency, and summarise
    /// the replies.
    Load(LoadArgs),
    /// Ask a router's gRPC health service (or its metrics port's /ready); exit 0 when it is
    /// SERVING, 1 otherwise.
    Health(HealthArgs),
}

#[derive(Debug, Args)]
struct ConfigArgs {
    /// TOML config file; ROUTER__SECTION__KEY environment variables override it.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
}

impl ConfigArgs {
    /// Loads and checks the config, with the command's flags over the file and the environment.
    fn load(&self, overrides: Overrides) -> anyhow::Result<Config> {
        Ok(Config::load(
            self.config.as_deref(),
            std::env::vars(),
            &overrides,
        )?)
    }

    /// [`Self::load`] for a command that logs nothing: deprecation warnings go to stderr.
    fn load_quietly(&self, overrides: Overrides) -> anyhow::Result<Config> {
        let config = self.load(overrides)?;
        for warning in config.deprecations() {
            eprintln!("warning: {warning}");
        }
        Ok(config)
    }
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// gRPC listen address (overrides server.listen).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// /metrics listen address (overrides server.metrics_listen).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Start the built-in Bedrock simulator on loopback and call it instead of AWS
    /// (dummy credentials; no AWS account needed). Listens on 127.0.0.1 unless the config,
    /// the environment or a flag sets the addresses.
    #[arg(long)]
    simulate: bool,
    /// Log format (overrides telemetry.log_format).
    #[arg(long, value_name = "text|json")]
    log_format: Option<LogFormat>,
}

#[derive(Debug, Args)]
struct SimulateArgs {
    /// Listen address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

/// How the classifier is chosen, for the offline commands.
#[derive(Debug, Args)]
struct ModelArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Weights file written by `train` (overrides routing.weights_path; built-in weights by default).
    #[arg(long, value_name = "FILE")]
    weights: Option<PathBuf>,
    /// Routing threshold (overrides routing.threshold and the weights file's).
    #[arg(long, value_name = "T")]
    threshold: Option<f64>,
    /// Send this share (0–1) of each caller's requests to strong with the target-share
    /// controller, replayed in file order (overrides routing.target_strong_share; calibrate also
    /// finds the fixed threshold for it).
    #[arg(long, value_name = "S")]
    target_share: Option<f64>,
}

impl ModelArgs {
    fn decider(&self) -> anyhow::Result<(Config, Decider)> {
        let config = self.config.load_quietly(
            Overrides::default()
                .flag("--weights", "routing.weights_path", self.weights.as_ref())
                .flag("--threshold", "routing.threshold", self.threshold)
                .flag(
                    "--target-share",
                    "routing.target_strong_share",
                    self.target_share,
                ),
        )?;
        let decider = setup::decider(&config)?;
        Ok((config, decider))
    }
}

#[derive(Debug, Args)]
struct ClassifyArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// How many top contributing features to print.
    #[arg(long, default_value_t = 3)]
    reasons: usize,
    /// Also print every feature's value (`"features": {name: value}`).
    #[arg(long)]
    features: bool,
    /// Input file; stdin when absent or "-".
    file: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Output tokens assumed per answer when pricing (labelled sets carry no answers).
    #[arg(long, default_value_t = 256.0)]
    output_tokens: f64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Labelled JSON lines ({"id","prompt","strong_score","weak_score"}); stdin for "-".
    file: PathBuf,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("input").required(true).multiple(true).args(["files", "labels"])))]
struct TrainArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Where to write the weights.
    #[arg(long, value_name = "FILE", default_value = "weights/default.json")]
    out: PathBuf,
    /// L2 pull of size and shape features towards their prior weights.
    #[arg(long)]
    l2: Option<f64>,
    /// L2 pull of cue families towards their prior weights.
    #[arg(long)]
    cue_l2: Option<f64>,
    /// Smallest share of the logit's spread the length term must carry (0 turns it off).
    #[arg(long)]
    length_share: Option<f64>,
    /// Quality-gap recovery the stored default threshold must reach on the training rows.
    #[arg(long)]
    target_pgr: Option<f64>,
    /// Pull weights towards 0 with no sign bounds instead of towards the documented priors
    /// (for labelled samples of your own traffic).
    #[arg(long)]
    no_priors: bool,
    /// How many scored rows one judged row (`"judgement": "easy" | "hard"`) counts as.
    #[arg(long, default_value_t = 160.0)]
    judged_weight: f64,
    /// Skip the cross-validation by task family.
    #[arg(long)]
    no_cross_validation: bool,
    /// Output tokens assumed per answer in the cost figures.
    #[arg(long, default_value_t = 256.0)]
    output_tokens: f64,
    /// A label store written by duels and feedback (`file:DIR` or `redis://…`, as
    /// quality.store); repeat for several. 20% of its rows (crc32(request id) % 5 == 0) are
    /// held out for the report.
    #[arg(long, value_name = "STORE")]
    labels: Vec<StoreLocation>,
    /// Weights file whose weights the fit is pulled towards (the running weights); with
    /// --labels the built-in weights by default, otherwise the documented priors (train::spec).
    #[arg(long, value_name = "WEIGHTS.json", conflicts_with = "no_priors")]
    prior: Option<PathBuf>,
    /// Labelled or judged JSON-lines files; 20% of each (crc32(id) % 5 == 0) is held out for
    /// the report.
    files: Vec<PathBuf>,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("target").required(true).args(["target_share", "target_pgr"]))]
struct CalibrateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Recover this share (0–1) of the quality gap (needs labelled lines).
    #[arg(long)]
    target_pgr: Option<f64>,
    /// Output tokens assumed per answer when pricing the replay (labelled samples).
    #[arg(long, default_value_t = 256.0)]
    output_tokens: f64,
    /// Prompt sample or labelled JSON lines; stdin when absent or "-".
    file: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("pace").required(true).args(["rate", "closed_loop"])))]
struct LoadArgs {
    /// The router's gRPC address (host:port or http:// URL).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:50051")]
    target: String,
    /// Requests per second, e.g. 50 or 50/s (open loop: each request due on a fixed schedule).
    #[arg(long, value_name = "R/s", value_parser = load::parse_rate)]
    rate: Option<f64>,
    /// Closed loop instead of a rate: keep --concurrency requests in flight, each sent as soon
    /// as the one before it is answered.
    #[arg(long)]
    closed_loop: bool,
    /// How long to send, e.g. 30s, 5m.
    #[arg(long, value_name = "D", value_parser = load::parse_duration)]
    duration: std::time::Duration,
    /// JSON lines of samples ({"prompt"} or a router.v1 request, optional "stream", "name");
    /// the built-in mix when absent.
    #[arg(long, value_name = "FILE.jsonl")]
    prompts: Option<PathBuf>,
    /// Most requests in flight; in an open loop a slot that finds them all busy is counted, not
    /// sent; a closed loop keeps this many in flight.
    #[arg(long, value_name = "N", default_value_t = 64)]
    concurrency: usize,
    /// Deadline of each request, e.g. 30s.
    #[arg(long, value_name = "D", default_value = "60s", value_parser = load::parse_duration)]
    timeout: std::time::Duration,
    /// Seed of the sample choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct HealthArgs {
    /// The router's gRPC address (host:port or http:// URL).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:50051")]
    addr: String,
    /// The service to ask about; "" (the default) is the whole server.
    #[arg(long, default_value = "")]
    service: String,
    /// Give up after this long, e.g. 2s.
    #[arg(long, value_name = "D", default_value = "2s", value_parser = load::parse_duration)]
    timeout: std::time::Duration,
    /// Ask `GET /ready` on this metrics address (host:port) instead of gRPC health: for a
    /// router whose gRPC port speaks TLS.
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["addr", "service"])]
    ready: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => runtime().and_then(|rt| rt.block_on(serve(args))),
        Command::Simulate(args) => runtime().and_then(|rt| rt.block_on(simulate(args))),
        Command::Route(args) => classify(&args, true),
        Command::Classify(args) => classify(&args, false),
        Command::Eval(args) => eval(&args),
        Command::Train(args) => train(&args),
        Command::Calibrate(args) => calibrate(&args),
        Command::Load(args) => runtime().and_then(|rt| rt.block_on(load(args))),
        Command::Health(args) => runtime().and_then(|rt| rt.block_on(health(&args))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let overrides = Overrides::default()
        .flag("--listen", "server.listen", args.listen)
        .flag(
            "--metrics-listen",
            "server.metrics_listen",
            args.metrics_listen,
        )
        .flag("--log-format", "telemetry.log_format", args.log_format);
    let overrides = if args.simulate {
        server::simulate_on_loopback(overrides)
    } else {
        overrides
    };
    let config = args.config.load(overrides)?;
    telemetry::init_logs(config.telemetry.log_format);
    for warning in config.deprecations() {
        tracing::warn!("{warning}");
    }
    let stop = shutdown_signal()?;
    let running = server::start(
        config,
        Options {
            simulate: args.simulate,
            ..Options::default()
        },
    )
    .await?;
    stop.await;
    tracing::info!("shutting down");
    running.shutdown().await
}

async fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    telemetry::init_logs(LogFormat::Text);
    let stop = shutdown_signal()?;
    let handle = bedrock_sim::start(args.listen, bedrock_sim::SimConfig::default())
        .await
        .with_context(|| format!("starting the simulator on {}", args.listen))?;
    tracing::info!(endpoint = %handle.endpoint_url(), "Bedrock simulator listening");
    stop.await;
    handle.shutdown().await;
    Ok(())
}

/// Installs the SIGTERM and Ctrl-C handlers at once, before anything announces it is serving
/// (a signal arriving before them would kill the process without a graceful shutdown), and
/// resolves on either.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the Ctrl-C handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

async fn load(args: LoadArgs) -> anyhow::Result<()> {
    let samples = match &args.prompts {
        Some(path) => load::samples::read(input(Some(path))?)
            .with_context(|| format!("reading {}", path.display()))?,
        None => load::samples::built_in(),
    };
    let options = load::LoadOptions {
        target: args.target,
        pace: args.rate.map_or(load::Pace::ClosedLoop, load::Pace::Rate),
        duration: args.duration,
        concurrency: args.concurrency,
        timeout: args.timeout,
        seed: args.seed,
        // A line rewritten in place is for a person watching, not for a file or a pipe.
        progress: std::io::stderr().is_terminal(),
    };
    let summary = load::run(&options, &samples).await?;
    let mut out = stdout();
    if args.json {
        serde_json::to_writer(&mut out, &summary)?;
        writeln!(out)?;
    } else {
        writeln!(out, "{summary}")?;
    }
    out.flush()?;
    Ok(())
}

async fn health(args: &HealthArgs) -> anyhow::Result<()> {
    if let Some(addr) = &args.ready {
        let ready = cli::health::ready(addr, args.timeout).await?;
        writeln!(
            stdout(),
            "{}",
            if ready { "SERVING" } else { "NOT_SERVING" }
        )?;
        anyhow::ensure!(ready, "{addr} reports NOT_SERVING on /ready");
        return Ok(());
    }
    let status = cli::health::check(&args.addr, &args.service, args.timeout).await?;
    writeln!(stdout(), "{}", status.as_str_name())?;
    anyhow::ensure!(
        status == ServingStatus::Serving,
        "{} reports {} for service {:?}",
        args.addr,
        status.as_str_name(),
        args.service
    );
    Ok(())
}

fn classify(args: &ClassifyArgs, plain_text: bool) -> anyhow::Result<()> {
    let (config, decider) = args.model.decider()?;
    let options = cli::classify::ClassifyOptions {
        reasons: args.reasons,
        features: args.features,
        plain_text,
        limits: config.limits,
    };
    let summary = cli::classify::run(&decider, options, input(args.file.as_deref())?, stdout())?;
    if summary.errors > 0 {
        eprintln!(
            "{} lines classified, {} refused (see their error lines)",
            summary.classified, summary.errors
        );
    }
    Ok(())
}

/// Eval prices from the config's catalog, so "cost saved" uses the prices the router uses.
fn prices(config: &Config, output_tokens: f64) -> CostAssumptions {
    let strong = config.catalog.model(Tier::Strong).prices;
    let fast = config.catalog.model(Tier::Fast).prices;
    CostAssumptions {
        strong_input: usd_per_mtok(strong.input),
        strong_output: usd_per_mtok(strong.output),
        fast_input: usd_per_mtok(fast.input),
        fast_output: usd_per_mtok(fast.output),
        output_tokens,
    }
}

fn eval(args: &EvalArgs) -> anyhow::Result<()> {
    let (config, decider) = args.model.decider()?;
    let options = cli::eval::EvalOptions {
        prices: prices(&config, args.output_tokens),
        json: args.json,
        limits: config.limits,
    };
    cli::eval::run(&decider, &options, input(Some(&args.file))?, stdout())?;
    Ok(())
}

/// The pull towards the running weights when only label stores are trained on. Rows of the
/// router's own traffic are the domain, so they set the signs and length's part themselves;
/// next to the log-loss summed over the thousands of rows a retraining has, an L2 of 20 on the
/// standardised weights keeps a weight the rows barely vary near the running one and does not
/// outvote what they show (on `tests/retrain.rs`'s mix, L2 from 1 to 100 gave the same APGR
/// within 0.003).
const OWN_TRAFFIC_L2: f64 = 20.0;

fn train(args: &TrainArgs) -> anyhow::Result<()> {
    let config = args.config.load_quietly(Overrides::default())?;
    let mut fit = TrainOptions::default();
    if args.files.is_empty() {
        fit = TrainOptions {
            l2: OWN_TRAFFIC_L2,
            cue_l2: OWN_TRAFFIC_L2,
            length_share: 0.0,
            sign_bounds: false,
            ..fit
        };
    }
    if let Some(l2) = args.l2 {
        fit.l2 = l2;
    }
    if let Some(l2) = args.cue_l2 {
        fit.cue_l2 = l2;
    }
    if let Some(share) = args.length_share {
        fit.length_share = share;
    }
    if let Some(target) = args.target_pgr {
        fit.target_pgr = target;
    }
    fit.priors = !args.no_priors;
    let prior_name = match (&args.prior, args.labels.is_empty() || args.no_priors) {
        (Some(path), _) => Some(path.display().to_string()),
        (None, false) => Some("the built-in weights".to_owned()),
        (None, true) => None,
    };
    if prior_name.is_some() {
        let weights = setup::load_weights(args.prior.as_deref())?;
        fit.prior_weights = Some(prompt_router_core::train::prior_of(&weights));
    }
    let labels = if args.labels.is_empty() {
        Vec::new()
    } else {
        runtime()?.block_on(read_label_stores(&args.labels))?
    };
    let options = cli::train::TrainCliOptions {
        train: fit,
        judged_weight: args.judged_weight,
        cross_validate: !args.no_cross_validation,
        prices: prices(&config, args.output_tokens),
        limits: config.limits,
        prior_name,
    };
    let inputs = args
        .files
        .iter()
        .map(|path| Ok((path.display().to_string(), input(Some(path))?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Write to a temporary file first so a failed run never leaves a half-written weights file.
    let partial = args.out.with_extension("json.partial");
    let file = std::fs::File::create(&partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    cli::train::run(
        inputs,
        labels,
        &options,
        std::io::BufWriter::new(file),
        stdout(),
    )?;
    std::fs::rename(&partial, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    Ok(())
}

/// Every row of each store, named as logs name it (a Redis password hidden).
async fn read_label_stores(
    stores: &[StoreLocation],
) -> anyhow::Result<Vec<(String, prompt_router::labels::ReadRows)>> {
    let mut out = Vec::new();
    for location in stores {
        let mut store = Store::open(location)?;
        let rows = store
            .read_all()
            .await
            .with_context(|| format!("reading the label store {location}"))?;
        out.push((location.to_string(), rows));
    }
    Ok(out)
}

fn calibrate(args: &CalibrateArgs) -> anyhow::Result<()> {
    let (config, decider) = args.model.decider()?;
    let target = match (args.model.target_share, args.target_pgr) {
        (Some(share), _) => Target::Share(share),
        (None, Some(pgr)) => Target::Pgr(pgr),
        (None, None) => anyhow::bail!("give --target-share or --target-pgr"),
    };
    let options = cli::calibrate::CalibrateOptions {
        target,
        limits: config.limits,
        prices: prices(&config, args.output_tokens),
    };
    cli::calibrate::run(&decider, &options, input(args.file.as_deref())?, stdout())?;
    Ok(())
}

fn stdout() -> impl Write {
    std::io::BufWriter::new(std::io::stdout().lock())
}

/// A reader over `path`, or stdin for `None` or "-".
fn input(path: Option<&Path>) -> anyhow::Result<Box<dyn BufRead>> {
    match path {
        Some(p) if p != Path::new("-") => {
            let file =
                std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
            Ok(Box::new(std::io::BufReader::new(file)))
        }
        _ => Ok(Box::new(std::io::BufReader::new(std::io::stdin()))),
    }
}
