//! The whole routing decision for one request (`Decider::decide`: classify, operating point,
//! policy) on a 1 KB one-turn prompt, as the service makes it per request. The decider and the
//! request are built outside the timed loop.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use prompt_router_core::{
    classify::Classifier,
    config::{Config, RawConfig},
    decide::Decider,
    operating::OperatingPoints,
    policy::RoutingMode,
    request::{Block, ChatRequest, Inference, Role, Routing, Turn},
};

const ASK: &str = "Our billing service retries failed card charges three times over two days. \
Explain why some customers are charged twice, and propose a fix that keeps retries idempotent. ";

fn bench(c: &mut Criterion) {
    let config = match Config::try_from(RawConfig::default()) {
        Ok(c) => c,
        Err(e) => panic!("default config: {e}"),
    };
    let classifier = match Classifier::with_default_weights() {
        Ok(c) => c,
        Err(e) => panic!("default weights: {e}"),
    };
    let operating = OperatingPoints::new(
        classifier.threshold(),
        config.routing.share,
        None,
        Vec::new(),
    );
    let decider = Decider::new(classifier, operating, config.catalog.clone());
    let text = ASK.repeat(1_000 / ASK.len() + 1);
    let routing = match Routing::new(RoutingMode::Auto, 0.0, String::new()) {
        Ok(r) => r,
        Err(e) => panic!("routing: {e}"),
    };
    let turn = Turn {
        role: Role::User,
        content: vec![Block::Text(text)],
    };
    let req = match ChatRequest::new(vec![turn], Vec::new(), Inference::default(), None, routing) {
        Ok(r) => r,
        Err(e) => panic!("request: {e}"),
    };
    c.bench_function("decide/1KB", |b| {
        b.iter(|| match decider.decide(black_box(&req)) {
            Ok(d) => black_box(d.choice.tier),
            Err(e) => panic!("decide: {e}"),
        });
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
