//! The crate graph states the architecture, and this test holds it: each workspace crate's
//! normal dependencies (as `cargo tree -p CRATE -e normal` lists them, with that crate's own
//! features) include none of the crates it must not know.

// Test helpers outside #[test] fns are not covered by clippy's allow-*-in-tests settings.
#![allow(clippy::expect_used)]

use std::process::Command;

/// A crate, and the prefixes of package names it must not depend on, directly or not.
const RULES: &[(&str, &[&str])] = &[
    // The decision core is pure: no async runtime, no gRPC or generated types, no AWS SDK,
    // no metrics, no HTTP stack, no logging.
    (
        "prompt-router-core",
        &[
            "tokio",
            "tonic",
            "prost",
            "aws-",
            "metrics",
            "hyper",
            "h2",
            "tower",
            "tracing",
            "bedrock-sim",
            "prompt-router",
        ],
    ),
    // The simulator stands for Bedrock: it knows Bedrock's wire, not the router, its gRPC
    // stack, its metrics or the SDK that is its client.
    (
        "bedrock-sim",
        &[
            "prompt-router",
            "tonic",
            "prost",
            "metrics",
            "aws-sdk-",
            "aws-config",
        ],
    ),
];

fn normal_dependencies(krate: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .args(["tree", "-e", "normal", "--prefix", "none", "-p", krate])
        .args(["--format", "{p}"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -p {krate}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

#[test]
fn each_crate_depends_only_on_what_its_layer_may_know() {
    for (krate, forbidden) in RULES {
        let deps = normal_dependencies(krate);
        assert!(
            deps.iter().any(|d| d == krate),
            "cargo tree lists {krate} itself: {deps:?}"
        );
        let bad: Vec<&String> = deps
            .iter()
            .filter(|d| *d != krate && forbidden.iter().any(|f| d.starts_with(f)))
            .collect();
        assert!(bad.is_empty(), "{krate} must not depend on {bad:?}");
    }
}
