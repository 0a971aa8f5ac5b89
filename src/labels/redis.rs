//! The shared store (`quality.store = "redis://…"`): one Redis stream, [`STREAM_KEY`], that
//! every replica appends to. Each entry has one field, `row`, holding the row's JSON.
//!
//! Appends are `XADD … MAXLEN ~ MAX_ROWS * row JSON`, pipelined per batch; a batch is
//! acknowledged when Redis has answered every `XADD` (durable as far as the server's own
//! persistence is set up: AOF or RDB). Reads page through the stream with `XRANGE`, oldest
//! first, [`PAGE`] entries a call.
//!
//! The connection is Redis's `ConnectionManager`, made lazily: a Redis that is down at start
//! is not an error, and it reconnects by itself; the writer ([`super::writer`]) retries a
//! failed batch with its own backoff. TLS (`rediss://`) is not built in.

use std::time::Duration;

use anyhow::Context as _;
use prompt_router_core::quality::label::LabelRow;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{LabelStore, ReadRows};

/// The stream every router appends to.
pub const STREAM_KEY: &str = "prompt-router:labels";

/// The stream's bound, approximate (`MAXLEN ~`, which trims whole nodes, so cheaply): 200,000
/// rows of about 1 KB is some 200 MB of Redis memory, a hundred times what one retraining needs
/// (the target retrains on 2,000 labelled requests), and weeks of 1% duels at 10 req/s.
pub const MAX_ROWS: u64 = 200_000;

/// Entries per `XRANGE` call when reading.
pub const PAGE: usize = 1_000;

/// How long a connection attempt or a command may take before it counts as failed: Redis
/// answers in well under a millisecond on a network it shares with the router.
const TIMEOUT: Duration = Duration::from_secs(2);

/// A Redis stream of label rows.
pub struct RedisStore {
    conn: ConnectionManager,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("stream", &STREAM_KEY)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store on the server at `url`; connects on first use.
    pub fn open(url: &str) -> anyhow::Result<Self> {
        // The URL is not in the message: it may hold a password.
        let client = redis::Client::open(url).context("parsing the Redis URL (quality.store)")?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            // One reconnection attempt per command: the writer has its own backoff.
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .context("setting up the Redis connection")?;
        Ok(Self { conn })
    }
}

impl LabelStore for RedisStore {
    async fn append(&mut self, rows: &[LabelRow]) -> anyhow::Result<()> {
        let mut pipe = redis::pipe();
        for row in rows {
            let json = serde_json::to_string(row).context("encoding a label row")?;
            pipe.cmd("XADD")
                .arg(STREAM_KEY)
                .arg("MAXLEN")
                .arg("~")
                .arg(MAX_ROWS)
                .arg("*")
                .arg("row")
                .arg(json)
                .ignore();
        }
        pipe.query_async::<()>(&mut self.conn)
            .await
            .context("appending label rows to Redis")
    }

    async fn read_all(&mut self) -> anyhow::Result<ReadRows> {
        let mut out = ReadRows::default();
        let mut start = "-".to_owned();
        loop {
            let page: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
                .arg(STREAM_KEY)
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(PAGE)
                .query_async(&mut self.conn)
                .await
                .context("reading label rows from Redis")?;
            let Some((last, _)) = page.last() else {
                break;
            };
            start = format!("({last}");
            let full = page.len() == PAGE;
            for (id, fields) in page {
                let json = fields
                    .chunks_exact(2)
                    .find(|kv| kv[0] == "row")
                    .map(|kv| &kv[1])
                    .with_context(|| format!("stream entry {id} has no `row` field"))?;
                let row = serde_json::from_str(json)
                    .with_context(|| format!("stream entry {id} is not a label row"))?;
                out.rows.push(row);
            }
            if !full {
                break;
            }
        }
        Ok(out)
    }

    async fn check(&mut self) -> anyhow::Result<()> {
        redis::cmd("PING")
            .query_async::<()>(&mut self.conn)
            .await
            .context("pinging Redis")
    }
}
