//! Shared set-up for integration tests: a real router on 127.0.0.1:0 with the in-process
//! Bedrock simulator behind the real SDK client, and a real tonic client.
#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

pub mod exposition;
pub mod grpc_raw;
pub mod http_client;
pub mod process;
pub mod redis;
pub mod tls;
pub mod world;

use bedrock_sim::SimHandle;
use prompt_router::{
    pb::{self, prompt_router_client::PromptRouterClient},
    server::{self, Options, Running},
};
use prompt_router_core::config::{Config, RawConfig};
use tonic::transport::Channel;

/// The `x-request-id` a reply or status carries.
pub fn request_id(metadata: &tonic::metadata::MetadataMap) -> String {
    metadata
        .get("x-request-id")
        .expect("an x-request-id")
        .to_str()
        .unwrap()
        .to_owned()
}

/// A router under test.
pub struct TestRouter {
    /// The running server.
    pub running: Running,
    /// A connected client.
    pub client: PromptRouterClient<Channel>,
}

impl TestRouter {
    /// The in-process simulator.
    pub fn sim(&self) -> &SimHandle {
        self.running
            .simulator
            .as_ref()
            .expect("started with --simulate")
    }

    /// Waits until the simulator has exactly `n` requests in flight: calls reach it, and
    /// cancels are noticed there, a moment after the client side acts.
    pub async fn until_upstream_in_flight(&self, n: u64) {
        eventually(&format!("{n} upstream requests in flight"), || {
            std::future::ready(self.sim().stats().in_flight == n)
        })
        .await;
    }

    /// Sends a ConverseStream request and collects its events, and the status that ended it if
    /// it did not end cleanly (a refusal before any event included).
    pub async fn stream(
        &mut self,
        request: pb::ConverseRequest,
    ) -> (Vec<pb::converse_stream_event::Event>, Option<tonic::Status>) {
        let mut stream = match self.client.converse_stream(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => return (Vec::new(), Some(status)),
        };
        let mut events = Vec::new();
        loop {
            match stream.message().await {
                Ok(Some(event)) => events.push(event.event.expect("event set")),
                Ok(None) => return (events, None),
                Err(status) => return (events, Some(status)),
            }
        }
    }

    /// A Converse call of one user turn.
    pub async fn ask(&mut self, text: &str) -> Result<pb::ConverseResponse, tonic::Status> {
        self.client
            .converse(ask(text))
            .await
            .map(tonic::Response::into_inner)
    }

    /// Asks every one of `prompts`, from `callers` clients at once (each asks its share in
    /// order), and waits for every answer.
    pub async fn ask_all(&self, prompts: &[String], callers: usize) {
        let mut tasks = Vec::new();
        for chunk in prompts.chunks(prompts.len().div_ceil(callers)) {
            let mut client = self.client.clone();
            let chunk = chunk.to_vec();
            tasks.push(tokio::spawn(async move {
                for prompt in chunk {
                    client.converse(ask(&prompt)).await.unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    }

    /// The `/metrics` URL.
    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.running.metrics_addr)
    }
}

/// Starts a router with the simulator, after `adjust` edits its raw config.
pub async fn start_with(adjust: impl FnOnce(&mut RawConfig)) -> TestRouter {
    let mut raw = RawConfig::default();
    adjust(&mut raw);
    start_checked(Config::try_from(raw).expect("valid config")).await
}

/// Starts a router with the simulator and `config`, on loopback ports of its own.
pub async fn start_checked(config: Config) -> TestRouter {
    start_with_options(config, Options::default()).await
}

/// Starts a router with the simulator, `config` and `options`, on loopback ports of its own.
pub async fn start_with_options(mut config: Config, options: Options) -> TestRouter {
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.server.metrics_listen = "127.0.0.1:0".parse().unwrap();
    let options = Options {
        simulate: true,
        ..options
    };
    let running = server::start(config, options).await.expect("router starts");
    let client = PromptRouterClient::connect(format!("http://{}", running.grpc_addr))
        .await
        .expect("client connects");
    TestRouter { running, client }
}

/// Starts a router with the default config and the simulator.
pub async fn start() -> TestRouter {
    start_with(|_| {}).await
}

/// A text block.
pub fn text(t: &str) -> pb::ContentBlock {
    pb::ContentBlock {
        block: Some(pb::content_block::Block::Text(t.to_owned())),
    }
}

/// A user turn with one text block.
pub fn user(t: &str) -> pb::Message {
    pb::Message {
        role: pb::Role::User as i32,
        content: vec![text(t)],
    }
}

/// An assistant turn with one text block.
pub fn assistant(t: &str) -> pb::Message {
    pb::Message {
        role: pb::Role::Assistant as i32,
        content: vec![text(t)],
    }
}

/// A one-question request.
pub fn ask(t: &str) -> pb::ConverseRequest {
    pb::ConverseRequest {
        messages: vec![user(t)],
        ..Default::default()
    }
}

/// A request forced to one tier.
pub fn ask_forced(t: &str, mode: pb::RoutingMode) -> pb::ConverseRequest {
    pb::ConverseRequest {
        routing: Some(pb::RoutingOptions {
            mode: mode as i32,
            ..Default::default()
        }),
        ..ask(t)
    }
}

/// The load generator's built-in mix plus a throttled unary and a throttled streamed sample
/// (`prompt` carries the simulator directive), so error panels and counters have data.
pub fn throttled_mix(prompt: &str) -> Vec<prompt_router::load::Sample> {
    let mut samples = prompt_router::load::samples::built_in();
    for (name, stream) in [("throttled", false), ("throttled-stream", true)] {
        samples.push(prompt_router::load::Sample {
            name: name.to_owned(),
            request: prompt_router::load::samples::ask(prompt),
            stream,
        });
    }
    samples
}

/// A tiny valid PNG (1×1, red).
pub const PNG_1X1: &[u8] = &[
    0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x02, 0x00, 0x00, 0x00, 0x90, 0x77, 0x53,
    0xDE, 0x00, 0x00, 0x00, 0x0C, 0x49, 0x44, 0x41, 0x54, 0x08, 0xD7, 0x63, 0xF8, 0xCF, 0xC0, 0x00,
    0x00, 0x03, 0x01, 0x01, 0x00, 0x18, 0xDD, 0x8D, 0xB0, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4E,
    0x44, 0xAE, 0x42, 0x60, 0x82,
];

/// The concatenated text deltas of a stream's events.
pub fn streamed_text(events: &[pb::converse_stream_event::Event]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            pb::converse_stream_event::Event::Delta(pb::Delta {
                delta: Some(pb::delta::Delta::Text(t)),
                ..
            }) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

/// How many delta events a stream carried.
pub fn delta_count(events: &[pb::converse_stream_event::Event]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, pb::converse_stream_event::Event::Delta(_)))
        .count()
}

/// All text of a reply message.
pub fn reply_text(response: &pb::ConverseResponse) -> String {
    response
        .message
        .as_ref()
        .map(|m| {
            m.content
                .iter()
                .filter_map(|b| match &b.block {
                    Some(pb::content_block::Block::Text(t)) => Some(t.as_str()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Fetches a URL over plain HTTP/1.1 (/metrics, the simulator's admin API); the answer must be
/// an HTTP/1.1 200.
pub async fn http_get(url: &str) -> String {
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let reply = http_client::send(host, "GET", path, &[], b"")
        .await
        .expect("HTTP exchange");
    assert_eq!(
        (reply.version, reply.status),
        (http::Version::HTTP_11, 200),
        "{reply:?}"
    );
    reply.text()
}

/// Waits until `check` holds, for at most 10 s. A cancel or a finished call reaches the
/// simulator and the recorder a moment later, longer on a loaded machine: polling keeps such
/// tests exact without betting on a fixed sleep.
pub async fn eventually<F>(what: &str, mut check: impl FnMut() -> F)
where
    F: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not seen within 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
