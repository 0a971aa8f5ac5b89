//! Routing overhead: a Converse round trip through the router versus the same call made
//! directly with the SDK and as a bare HTTP/1 request to the same simulator (zero simulated
//! latency): the differences are what the router and the SDK add, to set beside the split the
//! router reports (printed after the round trips: medians of `routerUs`, `sdkUs`, `upstreamMs`).
//! Also the pure decision (validate + classify + policy) on its own, at the fixed threshold and
//! through a warm target-share controller, and the controller alone; the caller's round
//! trip with duels on against off; and the round trip through a router that authenticates the
//! caller by bearer token and applies its rate limits and budgets kept in a real Redis on
//! loopback (`redis-server` must be installed: scripts/test installs it).
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/redis.rs"]
mod redis;

use std::{hint::black_box, net::SocketAddr, time::Duration};

use aws_sdk_bedrockruntime::{
    Client,
    config::{BehaviorVersion, Credentials, Region, retry::RetryConfig},
    types::{ContentBlock, ConversationRole, Message},
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use prompt_router::{
    pb::{self, prompt_router_client::PromptRouterClient},
    server::{self, Options, convert::chat_request},
    setup,
};
use prompt_router_core::{
    config::{Config, RawConfig, raw::RawCaller},
    decide::Decider,
    operating::OperatingPoints,
    request::Limits,
};

const PROMPT: &str = "Summarise the main trade-offs between optimistic and pessimistic locking \
                      in a relational database, with one example of each.";

fn request() -> pb::ConverseRequest {
    pb::ConverseRequest {
        messages: vec![pb::Message {
            role: pb::Role::User as i32,
            content: vec![pb::ContentBlock {
                block: Some(pb::content_block::Block::Text(PROMPT.to_owned())),
            }],
        }],
        // A short answer keeps the simulator's share of the time small and equal on both paths.
        inference_config: Some(pb::InferenceConfig {
            max_tokens: Some(16),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The bearer token of the guarded router's one caller.
const TOKEN: &str = "bench-token-0123456789abcdef";

/// A production-like policy: a token, a request and token rate and day and month budgets
/// that the bench never reaches, kept in Redis at `redis_url`.
fn guarded(raw: &mut RawConfig, redis_url: String) {
    raw.auth.required = true;
    raw.callers.insert(
        "bench".to_owned(),
        RawCaller {
            // `printf %s bench-token-0123456789abcdef | sha256sum`
            token_sha256: Some(
                "55aa0586ae8cf4fd70162ddfcda5246cacc189e6eb1effff3dad7d93a86571f1".to_owned(),
            ),
            allow_force: Some(false),
            requests_per_second: Some(5_000.0),
            tokens_per_minute: Some(100_000_000),
            usd_per_day: Some(10_000.0),
            usd_per_month: Some(100_000.0),
            ..RawCaller::default()
        },
    );
    raw.limits.redis_url = Some(redis_url);
}

fn start_router(
    rt: &tokio::runtime::Runtime,
    adjust: impl FnOnce(&mut RawConfig),
) -> server::Running {
    let mut raw = RawConfig::default();
    raw.server.listen = "127.0.0.1:0".parse().unwrap();
    raw.server.metrics_listen = "127.0.0.1:0".parse().unwrap();
    adjust(&mut raw);
    rt.block_on(server::start(
        Config::try_from(raw).unwrap(),
        Options {
            simulate: true,
            ..Options::default()
        },
    ))
    .unwrap()
}

fn with_token(request: pb::ConverseRequest) -> tonic::Request<pb::ConverseRequest> {
    let mut request = tonic::Request::new(request);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    request
}

fn round_trip(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let running = start_router(&rt, |_| {});
    let redis = redis::RedisServer::start();
    let guarded_router = start_router(&rt, |raw| guarded(raw, redis.url()));
    let mut guarded_client = rt
        .block_on(PromptRouterClient::connect(format!(
            "http://{}",
            guarded_router.grpc_addr
        )))
        .unwrap();
    let endpoint = running.simulator.as_ref().unwrap().endpoint_url();
    let mut router = rt
        .block_on(PromptRouterClient::connect(format!(
            "http://{}",
            running.grpc_addr
        )))
        .unwrap();
    let decided = rt
        .block_on(router.route(request()))
        .unwrap()
        .into_inner()
        .decision
        .unwrap();

    let direct = Client::from_conf(
        aws_sdk_bedrockruntime::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .credentials_provider(Credentials::new("x", "x", None, None, "bench"))
            .retry_config(RetryConfig::disabled())
            .build(),
    );
    let message = Message::builder()
        .role(ConversationRole::User)
        .content(ContentBlock::Text(PROMPT.to_owned()))
        .build()
        .unwrap();

    let mut group = c.benchmark_group("converse_round_trip");
    group.throughput(Throughput::Elements(1));
    // Round trips are ~0.1–1 ms; more samples than the default tighten the median's interval.
    group.sample_size(200);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("direct_sdk", |b| {
        b.iter(|| {
            rt.block_on(
                direct
                    .converse()
                    .model_id(&decided.model_id)
                    .messages(message.clone())
                    .inference_config(
                        aws_sdk_bedrockruntime::types::InferenceConfiguration::builder()
                            .max_tokens(16)
                            .build(),
                    )
                    .send(),
            )
            .unwrap()
        });
    });
    group.bench_function("through_router", |b| {
        b.iter(|| rt.block_on(router.converse(request())).unwrap());
    });
    group.bench_function("through_router_with_auth_and_limits", |b| {
        b.iter(|| {
            rt.block_on(guarded_client.converse(with_token(request())))
                .unwrap()
        });
    });
    let sim_addr = running.simulator.as_ref().unwrap().addr();
    let mut bare = rt.block_on(BareHttp::connect(sim_addr, &decided.model_id));
    group.bench_function("bare_http", |b| {
        b.iter(|| rt.block_on(bare.converse()));
    });
    group.finish();
    reported_split(&rt, &mut router);
    let [plain, guarded] = alternating(
        &rt,
        40,
        [&mut || tonic::Request::new(request()), &mut || {
            with_token(request())
        }],
        [&mut router, &mut guarded_client],
    );
    println!(
        "converse_round_trip: over 4,000 requests each in alternating blocks, p50/p99: round trip \
         through_router {:.1}/{:.1} µs, with_auth_and_limits {:.1}/{:.1} µs; routerUs {:.1}/{:.1} \
         µs and {:.1}/{:.1} µs",
        plain[0].0,
        plain[0].1,
        guarded[0].0,
        guarded[0].1,
        plain[1].0,
        plain[1].1,
        guarded[1].0,
        guarded[1].1
    );
    rt.block_on(running.shutdown()).unwrap();
    rt.block_on(guarded_router.shutdown()).unwrap();
}

/// The client's round trip and the router's own time (`routerUs`) of `calls[0]` and
/// `calls[1]`, in alternating blocks of 200 requests (`blocks` blocks in all) so drift on a
/// shared machine falls on both alike: per call, p50 and p99 of each, in µs.
fn alternating(
    rt: &tokio::runtime::Runtime,
    blocks: usize,
    calls: [&mut dyn FnMut() -> tonic::Request<pb::ConverseRequest>; 2],
    clients: [&mut PromptRouterClient<tonic::transport::Channel>; 2],
) -> [[(f64, f64); 2]; 2] {
    let mut times: [[Vec<f64>; 2]; 2] = Default::default();
    let [make_a, make_b] = calls;
    let [client_a, client_b] = clients;
    let mut sides = [(make_a, client_a), (make_b, client_b)];
    for block in 0..blocks {
        let (make, client) = &mut sides[block % 2];
        let out = &mut times[block % 2];
        for _ in 0..200 {
            let sent = std::time::Instant::now();
            let reply = rt.block_on(client.converse(make())).unwrap().into_inner();
            out[0].push(sent.elapsed().as_secs_f64() * 1e6);
            out[1].push(reply.latency.unwrap().router_us);
        }
    }
    times.map(|series| {
        series.map(|mut values| {
            values.sort_by(f64::total_cmp);
            let at = |q: f64| values[((values.len() - 1) as f64 * q) as usize];
            (at(0.5), at(0.99))
        })
    })
}

/// Medians of the split the router reports for the round trips above.
fn reported_split(
    rt: &tokio::runtime::Runtime,
    router: &mut PromptRouterClient<tonic::transport::Channel>,
) {
    let mut parts: [Vec<f64>; 4] = Default::default();
    for _ in 0..2_000 {
        let latency = rt
            .block_on(router.converse(request()))
            .unwrap()
            .into_inner()
            .latency
            .unwrap();
        for (part, value) in parts.iter_mut().zip([
            latency.router_us,
            latency.sdk_us,
            latency.upstream_ms * 1e3,
            latency.total_ms * 1e3,
        ]) {
            part.push(value);
        }
    }
    let [own, sdk, upstream, total] = parts.map(|mut values| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    });
    println!(
        "converse_round_trip: the router reports (medians of 2,000 replies) routerUs {own:.1} µs, \
         sdkUs {sdk:.1} µs, upstream {upstream:.1} µs, total {total:.1} µs"
    );
}

/// The simulator's Converse as a bare HTTP/1.1 keep-alive request, with the body the SDK
/// sends and a signature the simulator reads but does not check: the round trip with no SDK.
struct BareHttp {
    stream: tokio::io::BufStream<tokio::net::TcpStream>,
    request: Vec<u8>,
    body: Vec<u8>,
}

impl BareHttp {
    async fn connect(addr: SocketAddr, model_id: &str) -> Self {
        let body = serde_json::json!({
            "inferenceConfig": {"maxTokens": 16},
            "messages": [{"content": [{"text": PROMPT}], "role": "user"}],
        })
        .to_string();
        let request = format!(
            "POST /model/{}/converse HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
             authorization: AWS4-HMAC-SHA256 Credential=x/20260101/us-east-1/bedrock/aws4_request, \
             SignedHeaders=host, Signature=0\r\ncontent-length: {}\r\n\r\n{body}",
            model_id.replace(':', "%3A"),
            body.len()
        );
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Self {
            stream: tokio::io::BufStream::new(stream),
            request: request.into_bytes(),
            body: Vec::new(),
        }
    }

    async fn converse(&mut self) -> usize {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        self.stream.write_all(&self.request).await.unwrap();
        self.stream.flush().await.unwrap();
        let mut length = 0;
        let mut line = String::new();
        loop {
            line.clear();
            self.stream.read_line(&mut line).await.unwrap();
            let header = line.trim_end().to_ascii_lowercase();
            if header.is_empty() {
                break;
            }
            if let Some(value) = header.strip_prefix("content-length:") {
                length = value.trim().parse().unwrap();
            }
        }
        self.body.resize(length, 0);
        self.stream.read_exact(&mut self.body).await.unwrap();
        assert!(self.body.starts_with(b"{"), "a Converse answer");
        length
    }
}

/// Requests of many lengths and kinds, to fill a target-share window with a spread of scores.
fn warm_up(decider: &Decider, limits: &Limits) {
    let asks = [
        "hi",
        "What are your opening hours?",
        "Translate 'see you tomorrow' into Spanish.",
        PROMPT,
        "Prove that the square root of 2 is irrational.",
        "Design a rate limiter for a multi-tenant API and discuss its failure modes.",
    ];
    for i in 0..2_000 {
        let text = format!(
            "{} {}",
            asks[i % asks.len()],
            "More context. ".repeat(i % 7)
        );
        let mut req = request();
        req.messages[0].content[0].block = Some(pb::content_block::Block::Text(text));
        let chat = chat_request(req, limits).unwrap();
        decider.decide(&chat).unwrap();
    }
}

fn decision(c: &mut Criterion) {
    let fixed = setup::decider(&Config::try_from(RawConfig::default()).unwrap()).unwrap();
    let mut raw = RawConfig::default();
    raw.routing.target_strong_share = Some(0.3);
    let target_share = setup::decider(&Config::try_from(raw).unwrap()).unwrap();
    let limits = Limits::default();
    // Past warm-up, with a full window: the state every request but a caller's first few sees.
    warm_up(&target_share, &limits);
    let mut group = c.benchmark_group("decide");
    group.throughput(Throughput::Bytes(PROMPT.len() as u64));
    for (name, decider) in [
        ("validate_classify_policy", &fixed),
        ("validate_classify_policy_target_share", &target_share),
    ] {
        group.bench_function(name, |b| {
            // Building the protobuf request is the caller's work, so it stays out of the timing.
            b.iter_batched(
                request,
                |req| {
                    let chat = chat_request(req, &limits).unwrap();
                    black_box(decider.decide(&chat).unwrap().choice)
                },
                criterion::BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

/// The controller alone: one warm caller's `observe` (lock, push, cursor step, unlock).
fn controller(c: &mut Criterion) {
    let share = Config::try_from(RawConfig::default())
        .unwrap()
        .routing
        .share;
    let points = OperatingPoints::new(0.5, share, Some(0.3), []);
    // A fixed spread of scores, cycled, so the window keeps moving as live traffic does.
    let scores: Vec<f64> = (0..4096u32)
        .map(|i| f64::from(i.wrapping_mul(2_654_435_761) % 1000) / 1000.0)
        .collect();
    for &score in &scores {
        points.observe("", score);
    }
    let mut group = c.benchmark_group("operating::OperatingPoints");
    group.throughput(Throughput::Elements(1));
    let mut next = scores.iter().cycle();
    group.bench_function("observe_warm", |b| {
        b.iter(|| black_box(points.observe("", *next.next().unwrap())));
    });
    group.finish();
}

/// Caller latency with duels on (`quality.duel_rate = 1.0`) against off: two routers, each
/// with its own simulator, the same request; criterion's estimate, then p50/p99 of the
/// client-side round trip over 4,000 requests each, taken in alternating blocks of 200 so
/// drift on a shared machine falls on both alike. The cap is set out of reach so the duels
/// really run (as many as `quality.duel_concurrency` allows); the duels' outcomes are printed.
fn duel_overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let start = |duel_rate: f64| {
        let mut raw = RawConfig::default();
        raw.server.listen = "127.0.0.1:0".parse().unwrap();
        raw.server.metrics_listen = "127.0.0.1:0".parse().unwrap();
        raw.quality.duel_rate = duel_rate;
        raw.quality.usd_per_hour = 1e6;
        let running = rt
            .block_on(server::start(
                Config::try_from(raw).unwrap(),
                Options {
                    simulate: true,
                    ..Options::default()
                },
            ))
            .unwrap();
        let client = rt
            .block_on(PromptRouterClient::connect(format!(
                "http://{}",
                running.grpc_addr
            )))
            .unwrap();
        (running, client)
    };
    let (off, mut off_client) = start(0.0);
    let (on, mut on_client) = start(1.0);

    let mut group = c.benchmark_group("converse_round_trip_duels");
    group.throughput(Throughput::Elements(1));
    group.sample_size(200);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("duel_rate_0", |b| {
        b.iter(|| rt.block_on(off_client.converse(request())).unwrap());
    });
    group.bench_function("duel_rate_1", |b| {
        b.iter(|| rt.block_on(on_client.converse(request())).unwrap());
    });
    group.finish();

    // Per router: the client's round trips, and the router's own time as its replies report it.
    let [off_us, on_us] = alternating(
        &rt,
        40,
        [&mut || tonic::Request::new(request()), &mut || {
            tonic::Request::new(request())
        }],
        [&mut off_client, &mut on_client],
    );
    let duels: Vec<String> = prompt_router::telemetry::install()
        .unwrap()
        .render()
        .lines()
        .filter(|l| l.starts_with("router_duels_total{"))
        .map(|l| l.trim_start_matches("router_duels_total").to_owned())
        .collect();
    println!(
        "converse_round_trip_duels: over 4,000 requests each, p50/p99: round trip duel_rate 0 \
         {:.1}/{:.1} µs, duel_rate 1.0 {:.1}/{:.1} µs; routerUs duel_rate 0 {:.1}/{:.1} µs, \
         duel_rate 1.0 {:.1}/{:.1} µs; duels {}",
        off_us[0].0,
        off_us[0].1,
        on_us[0].0,
        on_us[0].1,
        off_us[1].0,
        off_us[1].1,
        on_us[1].0,
        on_us[1].1,
        duels.join(" ")
    );
    rt.block_on(on.shutdown()).unwrap();
    rt.block_on(off.shutdown()).unwrap();
}

criterion_group!(benches, decision, controller, round_trip, duel_overhead);
criterion_main!(benches);
