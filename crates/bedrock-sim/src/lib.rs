//! Bedrock Runtime simulator: a loopback HTTP server speaking Bedrock's real restJson1 wire
//! protocol for `Converse` and `ConverseStream`, so the real `aws-sdk-bedrockruntime` client (or
//! boto3) can be pointed at it with `endpoint_url`.
//!
//! It stands for Bedrock, so it knows only Bedrock's wire: nothing of the router (no
//! dependency on its crates, its gRPC stack, its metrics or the SDK that is its client, which
//! `tests/architecture.rs` checks). What belongs here is what Bedrock does and how it fails;
//! `prompt-router serve --simulate` and `prompt-router simulate` start it.
//!
//! # Answers
//! Deterministic in (invoked model id, everything the model sees). The text is
//! `"[<model id as invoked>] "` followed by sentences of short English words; its natural length
//! is the header plus 20–600 tokens (from the prompt hash) plus one token per 8 input tokens
//! (input counted up to 16 000). Stop sequences cut the text before their first occurrence
//! (`stop_sequence`), then `maxTokens` cuts it (`max_tokens`); otherwise `end_turn`. Without
//! `maxTokens` the model's output limit applies.
//!
//! Grades: every text answer is right or wrong for its prompt, as [`world`] decides from the
//! model's skill and the prompt's hidden difficulty (`[sim:difficulty=D]`, or a hash of the last
//! user message's text). The body's first sentence says which: `Right.` or `Wrong.` (3 tokens
//! either way, counted in the body's length; [`world::grade`] reads it back), so
//! `"[<model id>] Right. The data …"`. A tool call (and its `auto` preface) carries no grade.
//! The skill table is [`SimConfig::world`] (default: [`world::World::default`]).
//!
//! Tools: with `toolChoice` `tool`/`any` the answer is a single `toolUse` block (the named tool;
//! for `any` the tool named in the last message, else the first). With `auto` (or no choice), if
//! the last message's text contains a tool's name and carries no `toolResult`, the answer is a
//! short text block then the `toolUse`. The input is sample JSON built from the tool's JSON
//! schema; ids look like `tooluse_` + 22 base62 characters. `stopReason` is `tool_use`.
//!
//! # Tokenizer
//! A token is a run of 1–4 ASCII letters/digits (longer runs are cut every 4 characters) or any
//! other single non-whitespace character; whitespace is free. Input tokens = tokens of every
//! system text, every message's role and text, tool-use names and JSON inputs, tool-result
//! text/JSON, every tool spec's name, description and JSON schema (JSON as compact text), plus
//! per image `ceil(decoded bytes / 750)` clamped to 1..=1600. Output tokens = tokens of the text
//! blocks plus tokens of each tool call's compact JSON input; a stream sends one delta per token.
//!
//! # Fault directives (inside prompt text)
//! Read from system texts and the text of the last user message. Grammar:
//! `[sim:ITEM;ITEM;…]`, `ITEM = KEY | KEY=VALUE`, whitespace around items ignored:
//! - `fail=NAME` — HTTP error NAME (`ThrottlingException`, … as in [`BedrockError`]; the
//!   lowerCamel stream names are accepted too); with `after=K` a ConverseStream sends it as an
//!   exception event after K content deltas (Converse still gets the HTTP error).
//! - `drop` — close the connection without a response; with `after=K` (stream) after K deltas.
//! - `stall` / `stall=MS` — hold the connection (stream: after `after=K` deltas, default 0;
//!   Converse: before the response) forever / for MS milliseconds, then carry on.
//! - `times=N` — apply only to the first N matching attempts of this same prompt.
//! - `region=R`, `model=M` — apply only when signed for region R / invoked as M or its base id.
//! - `ttft=MS`, `tpt=MS` — latency override (time to first token, per token); `tokens=N` — the
//!   answer body is N tokens long instead of its natural length (the grade sentence included;
//!   no effect on a judge reply).
//! - `difficulty=D` — the prompt's hidden difficulty, a number in 0..=1; it changes nothing
//!   but the answers' grades. It ignores `times`/`region`/`model`, belongs in the last user
//!   message (in a system text it is a ValidationException) and may be given once.
//!
//! Several directives may appear; they are tried in order and the first that applies with a
//! fault wins. A malformed or unknown directive is a `ValidationException` naming it.
//!
//! # Judging
//! A Converse or ConverseStream request (to any model) is a judge request when the text of its
//! last user message (text blocks joined with `\n`) contains, in this order,
//! `<request>…</request>`, `<answer_a>…</answer_a>` and `<answer_b>…</answer_b>`. The blocks are
//! found from the end (the last `<answer_b>…</answer_b>`, the last `<answer_a>…</answer_a>`
//! before it, then the first `<request>` and the last `</request>` before `<answer_a>`), so a
//! judged request that itself mentions the tags still parses. The system text (the caller's
//! instructions) is not read, beyond directives.
//!
//! The reply is `"[<model id>] "`, one reasoning sentence, then a final line
//! `VERDICT: A`, `VERDICT: B` or `VERDICT: TIE` from the answers' grades ([`world::verdict`]):
//! the right answer wins; both right or both wrong tie; an answer without a grade counts as
//! wrong. Exactly:
//! - `Answer A is right and answer B is wrong.\nVERDICT: A` (and the mirror for B);
//! - `Both answers are right.\nVERDICT: TIE` / `Both answers are wrong.\nVERDICT: TIE`;
//! - with position bias, on a tie: `Both answers are right; the first one reads better.\nVERDICT: A`;
//! - unparsed: `Both answers have merits and I cannot choose between them.` (no VERDICT line).
//!
//! The reply is at most 24 tokens after the header; tools are ignored; stop sequences and
//! `maxTokens` cut it like any answer (a cut reply may lose its verdict); usage and latency are
//! as for any answer. Directives are read only from system texts and the text outside the three
//! blocks: those in the judged request or answers do not apply to the judge call.
//!
//! Knobs ([`JudgeConfig`], in [`SimConfig::judge`] and `GET|POST /_sim/judge`, e.g.
//! `{"positionBias":0.3,"unparsedRate":0.1}`): `positionBias` — probability that a tie is
//! judged `A`; `unparsedRate` — probability that the reply has no VERDICT line. Both draws are
//! deterministic per request (from the hash of everything the judge sees), so a retry gets the
//! same reply and the two orders of one pair draw independently.
//!
//! # Admin endpoints (same port, no auth)
//! `GET /_sim/requests` ([`Received`] list), `GET /_sim/stats` ([`SimStats`]),
//! `GET|POST /_sim/faults` ([`FaultConfig`] JSON, e.g.
//! `{"rules":[{"fault":{"http":"ThrottlingException"},"rate":0.5,"region":"us-east-1"}]}`),
//! `GET|POST /_sim/latency` ([`LatencyConfig`], `{"ttftMs":50,"perTokenMs":5}`),
//! `GET|POST /_sim/judge` ([`JudgeConfig`], see `# Judging`),
//! `POST /_sim/reset` (clears the log, counters and `times` attempt counts).
//!
//! # Where it differs from Bedrock
//! - Signatures are not verified; a missing `Authorization` is 403
//!   `MissingAuthenticationTokenException`, a scope for another service 403
//!   `InvalidSignatureException` (neither is a modelled error: the SDK shows them as unhandled
//!   errors with that `code()`). Bearer tokens are accepted as they are.
//! - Injected HTTP errors (ModelTimeoutException too) come back at once, without waiting.
//! - ConverseStream sends the 200 head and `messageStart` at once; `ttft` precedes the first delta.
//! - Bad JSON or bad base64 is a ValidationException "Malformed input request: …" (Bedrock may
//!   say SerializationException); an oversized body (`max_body_bytes`) is a ValidationException.
//! - Only the checks listed in `validate.rs` run; messages marked there as Coral-style or model
//!   errors follow Bedrock's style but are not known to be verbatim.

#![warn(missing_docs)]

mod admin;
mod events;
mod faults;
mod generate;
mod handler;
mod judge;
mod record;
mod request;
mod validate;
mod wire;
pub mod world;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

pub use faults::{Fault, FaultConfig, FaultRule};
pub use generate::count_tokens;
pub use judge::JudgeConfig;
pub use record::{Operation, Outcome, Received, SimStats};
pub use wire::BedrockError;

/// One model the simulator serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelSpec {
    /// Base model id, e.g. `anthropic.claude-3-haiku-20240307-v1:0`.
    pub id: String,
    /// Largest accepted `maxTokens` (and the default when it is absent).
    pub max_output_tokens: u32,
    /// Largest accepted input, in simulator tokens.
    pub context_window: u32,
    /// Whether the base id may be invoked on demand (false: an inference profile is required).
    pub on_demand: bool,
    /// Geography prefixes of its cross-region inference profiles (`us`, `eu`, `apac`).
    pub profiles: Vec<String>,
}

/// Simulated generation speed; changeable at runtime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LatencyConfig {
    /// Time to first token, ms (Converse waits it too).
    #[serde(default)]
    pub ttft_ms: u64,
    /// Delay between output tokens, ms.
    #[serde(default)]
    pub per_token_ms: u64,
}

/// Simulator settings. `Default` is Bedrock-like: the two default models, zero latency, no faults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct SimConfig {
    /// The model table.
    pub models: Vec<ModelSpec>,
    /// Initial latency.
    pub latency: LatencyConfig,
    /// Initial fault rules.
    pub faults: FaultConfig,
    /// Seed for fault rates and request ids, so runs repeat.
    pub seed: u64,
    /// Request bodies above this are rejected with a ValidationException.
    pub max_body_bytes: usize,
    /// How many requests `received()` keeps (oldest dropped first).
    pub max_recorded: usize,
    /// Like Bedrock, accept `us.`/`eu.`/`apac.` profiles only from `us-*`/`eu-*`/`ap-*` regions.
    pub enforce_profile_geography: bool,
    /// Model skills behind the answers' grades (see [`world`]).
    pub world: world::World,
    /// Initial judge behaviour (see `# Judging`).
    pub judge: JudgeConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        let profiles = |p: &[&str]| p.iter().map(|s| (*s).to_owned()).collect();
        Self {
            models: vec![
                ModelSpec {
                    id: "anthropic.claude-3-5-sonnet-20241022-v2:0".into(),
                    max_output_tokens: 8192,
                    context_window: 200_000,
                    on_demand: false,
                    profiles: profiles(&["us", "apac"]),
                },
                ModelSpec {
                    id: "anthropic.claude-3-haiku-20240307-v1:0".into(),
                    max_output_tokens: 4096,
                    context_window: 200_000,
                    on_demand: true,
                    profiles: profiles(&["us", "eu", "apac"]),
                },
            ],
            latency: LatencyConfig::default(),
            faults: FaultConfig::default(),
            seed: 0x5eed,
            max_body_bytes: 20 * 1024 * 1024,
            max_recorded: 1_000,
            enforce_profile_geography: true,
            world: world::World::default(),
            judge: JudgeConfig::default(),
        }
    }
}

impl FaultConfig {
    /// Rejects rules that cannot be carried out (rate outside 0–1, stream-only errors as HTTP
    /// errors, HTTP-only errors mid-stream).
    pub fn validate(&self) -> Result<(), String> {
        for (i, r) in self.rules.iter().enumerate() {
            if !(0.0..=1.0).contains(&r.rate) {
                return Err(format!("rules[{i}].rate must be within 0..=1"));
            }
            match &r.fault {
                Fault::Http(BedrockError::ModelStreamErrorException) => {
                    return Err(format!(
                        "rules[{i}]: ModelStreamErrorException only exists mid-stream"
                    ));
                }
                Fault::MidStream { error, .. } if error.stream_member().is_none() => {
                    return Err(format!(
                        "rules[{i}]: {} cannot be sent inside a stream",
                        error.name()
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Locks a mutex, ignoring poisoning: every critical section leaves the data consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// State shared by the server, its handlers and the handle.
struct State {
    cfg: SimConfig,
    latency: Mutex<LatencyConfig>,
    faults: Mutex<FaultConfig>,
    judge: Mutex<JudgeConfig>,
    rng: Mutex<fastrand::Rng>,
    attempts: Mutex<HashMap<(u64, usize), u32>>,
    recorder: Arc<record::Recorder>,
}

impl State {
    fn set_faults(&self, faults: FaultConfig) -> Result<(), String> {
        faults.validate()?;
        tracing::info!(rules = faults.rules.len(), "bedrock sim faults set");
        *lock(&self.faults) = faults;
        Ok(())
    }

    fn set_judge(&self, judge: JudgeConfig) -> Result<(), String> {
        judge.validate()?;
        tracing::info!(
            position_bias = judge.position_bias,
            unparsed_rate = judge.unparsed_rate,
            "bedrock sim judge set"
        );
        *lock(&self.judge) = judge;
        Ok(())
    }

    fn reset(&self) {
        self.recorder.reset();
        lock(&self.attempts).clear();
    }

    /// A UUID-v4-shaped id, like Bedrock's `x-amzn-RequestId`.
    fn new_request_id(&self) -> String {
        let mut rng = lock(&self.rng);
        let (a, b) = (rng.u64(..), rng.u64(..));
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0x0fff,
            0x8000 | ((b >> 48) & 0x3fff),
            b & 0xffff_ffff_ffff
        )
    }
}

/// A running simulator. Dropping it stops the server, like [`SimHandle::shutdown`] without waiting.
pub struct SimHandle {
    addr: SocketAddr,
    state: Arc<State>,
    stop: watch::Sender<()>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHandle")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Binds `listen` (port 0 picks a free port) and serves on the current tokio runtime.
pub async fn start(listen: SocketAddr, cfg: SimConfig) -> io::Result<SimHandle> {
    cfg.faults
        .validate()
        .and_then(|()| cfg.world.validate())
        .and_then(|()| cfg.judge.validate())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let state = Arc::new(State {
        latency: Mutex::new(cfg.latency),
        faults: Mutex::new(cfg.faults.clone()),
        judge: Mutex::new(cfg.judge),
        rng: Mutex::new(fastrand::Rng::with_seed(cfg.seed)),
        attempts: Mutex::new(HashMap::new()),
        recorder: Arc::new(record::Recorder::new(cfg.max_recorded)),
        cfg,
    });
    let (stop, stopped) = watch::channel(());
    let task = tokio::spawn(serve(listener, Arc::clone(&state), stopped));
    tracing::info!(%addr, "bedrock simulator listening");
    Ok(SimHandle {
        addr,
        state,
        stop,
        task,
    })
}

impl SimHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, for the SDK's `endpoint_url`.
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received so far (the newest `max_recorded`), oldest first.
    pub fn received(&self) -> Vec<Received> {
        self.state.recorder.snapshot()
    }

    /// Counters.
    pub fn stats(&self) -> SimStats {
        self.state.recorder.stats()
    }

    /// Current latency.
    pub fn latency(&self) -> LatencyConfig {
        *lock(&self.state.latency)
    }

    /// Changes latency for requests that arrive from now on.
    pub fn set_latency(&self, latency: LatencyConfig) {
        *lock(&self.state.latency) = latency;
    }

    /// Current fault rules.
    pub fn faults(&self) -> FaultConfig {
        lock(&self.state.faults).clone()
    }

    /// Replaces the fault rules (see [`FaultConfig::validate`]).
    pub fn set_faults(&self, faults: FaultConfig) -> Result<(), String> {
        self.state.set_faults(faults)
    }

    /// Current judge behaviour.
    pub fn judge(&self) -> JudgeConfig {
        *lock(&self.state.judge)
    }

    /// Changes judge behaviour for requests that arrive from now on (see [`JudgeConfig::validate`]).
    pub fn set_judge(&self, judge: JudgeConfig) -> Result<(), String> {
        self.state.set_judge(judge)
    }

    /// Clears the request log, counters and directive attempt counts.
    pub fn reset(&self) {
        self.state.reset();
    }

    /// Stops accepting, closes every connection (in-flight requests count as cancelled) and waits.
    pub async fn shutdown(self) {
        let Self { stop, task, .. } = self;
        drop(stop);
        if let Err(e) = task.await {
            tracing::warn!(error = %e, "bedrock simulator task failed");
        }
    }
}

async fn serve(listener: TcpListener, state: Arc<State>, mut stopped: watch::Receiver<()>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            // Err means the handle's sender was dropped: shut down.
            changed = stopped.changed() => if changed.is_err() { break },
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    conns.spawn(serve_connection(stream, peer, Arc::clone(&state)));
                }
                Err(e) => {
                    // Typically EMFILE; back off instead of spinning.
                    tracing::warn!(error = %e, "bedrock sim accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.shutdown().await;
    tracing::info!("bedrock simulator stopped");
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, state: Arc<State>) {
    // Small event frames must leave at once, not wait for Nagle.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "set_nodelay failed");
    }
    let service = service_fn(move |req| handler::handle(Arc::clone(&state), req));
    if let Err(e) = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(%peer, error = %e, "bedrock sim connection ended with an error");
    }
}
