//! Classifier throughput on realistic mixed prompts (prose, code, maths, some non-ASCII) of
//! 100 B, 1 KB, 10 KB and 100 KB. Classifier construction and prompt building happen outside
//! the timed loop.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use prompt_router_core::classify::{Classifier, Part, Shape};

const PROSE: &str = "Our billing service retries failed card charges three times over two days. \
Explain why some customers are charged twice, and propose a fix that keeps retries idempotent. ";
const CODE: &str = "```python\ndef retry(charge, attempts=3):\n    for i in range(attempts):\n        \
if charge.submit() == 'ok':\n            return True\n    return False\n```\n";
const MATH: &str = "If p = 0.02 per attempt, the chance of at least one duplicate is 1 − (1 − p)^3 \
≈ 5.9%; prove this bound and derive E[charges] = Σ_{k=1}^{3} k·p^(k−1)·(1 − p). ";
const OTHER: &str = "Résumé des étapes : 1) vérifier l'idempotence ; 2) 再試行の回数を制限する。 ";

fn prompt(len: usize) -> String {
    let mut s = String::with_capacity(len + 256);
    let parts = [PROSE, CODE, MATH, OTHER];
    let mut i = 0;
    while s.len() < len {
        s.push_str(parts[i % parts.len()]);
        i += 1;
    }
    let mut cut = len;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s
}

fn bench(c: &mut Criterion) {
    let classifier = match Classifier::with_default_weights() {
        Ok(c) => c,
        Err(e) => panic!("default weights: {e}"),
    };
    let mut group = c.benchmark_group("classify");
    for (name, len) in [
        ("100B", 100),
        ("1KB", 1_000),
        ("10KB", 10_000),
        ("100KB", 100_000),
    ] {
        let text = prompt(len);
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), &text, |b, text| {
            b.iter(|| {
                let mut acc = classifier.begin();
                acc.push(Part::User { last: true }, black_box(text));
                black_box(acc.finish(Shape {
                    turns: 1,
                    ..Shape::default()
                }))
                .score()
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
