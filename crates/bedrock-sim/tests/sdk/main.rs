//! The Bedrock simulator driven by the real `aws-sdk-bedrockruntime` client (and raw HTTP for
//! what the SDK never sends). One test binary, several files, to link the SDK only once.

// Test helpers outside #[test] fns are not covered by clippy's allow-*-in-tests settings.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod converse;
mod faults;
mod judge;
// The router's tests' HTTP client, whose other users read more of a reply than this binary does.
#[allow(dead_code)]
#[path = "../../../../tests/common/http_client.rs"]
mod http_client;
mod raw;
mod stream;

use std::future::Future;
use std::time::Duration;

use aws_sdk_bedrockruntime::config::retry::RetryConfig;
use aws_sdk_bedrockruntime::config::{Credentials, Region};
use aws_sdk_bedrockruntime::types::{ContentBlock, ConversationRole, ConverseOutput, Message};
use aws_sdk_bedrockruntime::{Client, Config};
use bedrock_sim::{SimConfig, SimHandle, SimStats, start};

pub const HAIKU: &str = "us.anthropic.claude-3-haiku-20240307-v1:0";
pub const HAIKU_BASE: &str = "anthropic.claude-3-haiku-20240307-v1:0";
pub const SONNET: &str = "us.anthropic.claude-3-5-sonnet-20241022-v2:0";
pub const SONNET_BASE: &str = "anthropic.claude-3-5-sonnet-20241022-v2:0";

pub async fn sim() -> SimHandle {
    sim_with(SimConfig::default()).await
}

pub async fn sim_with(cfg: SimConfig) -> SimHandle {
    start("127.0.0.1:0".parse().unwrap(), cfg).await.unwrap()
}

pub fn config(h: &SimHandle, region: &str) -> aws_sdk_bedrockruntime::config::Builder {
    Config::builder()
        .behavior_version_latest()
        .endpoint_url(h.endpoint_url())
        .region(Region::new(region.to_owned()))
        .credentials_provider(Credentials::new(
            "AKIDSIMTEST",
            "secret",
            None,
            None,
            "test",
        ))
        .retry_config(RetryConfig::disabled())
}

/// A client for region us-east-1 with retries off.
pub fn client(h: &SimHandle) -> Client {
    client_in(h, "us-east-1")
}

pub fn client_in(h: &SimHandle, region: &str) -> Client {
    Client::from_conf(config(h, region).build())
}

pub fn user(text: &str) -> Message {
    Message::builder()
        .role(ConversationRole::User)
        .content(ContentBlock::Text(text.into()))
        .build()
        .unwrap()
}

pub fn assistant(text: &str) -> Message {
    Message::builder()
        .role(ConversationRole::Assistant)
        .content(ContentBlock::Text(text.into()))
        .build()
        .unwrap()
}

/// The text blocks of a Converse answer, concatenated.
pub fn text_of(out: Option<&ConverseOutput>) -> String {
    let Some(ConverseOutput::Message(m)) = out else {
        panic!("no message in {out:?}")
    };
    m.content()
        .iter()
        .filter_map(|b| b.as_text().ok())
        .cloned()
        .collect()
}

/// Polls until `cond(stats)` holds (the simulator settles outcomes asynchronously).
pub async fn wait_for_stats(h: &SimHandle, cond: impl Fn(&SimStats) -> bool) -> SimStats {
    for _ in 0..500 {
        let s = h.stats();
        if cond(&s) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition never held; stats = {:?}", h.stats());
}

/// Fails the test if `f` takes longer than a few seconds (guards against hangs).
pub async fn quick<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("took too long")
}
