//! Label rows on their way to a store: duels and feedback hand rows to a [`LabelSink`], which
//! never blocks a caller's request; the store's writer ([`writer`]) takes them from the other
//! end and appends them to a [`LabelStore`]: local files ([`file`]) or a Redis stream
//! ([`redis`]). `train --labels` and the weights reload check read them back.

pub mod file;
pub mod redis;
pub mod writer;

use prompt_router_core::{config::StoreLocation, quality::label::LabelRow};
use tokio::sync::mpsc;

use crate::telemetry;

/// Where duels and feedback hand their label rows. Cloning shares the one channel.
#[derive(Debug, Clone)]
pub struct LabelSink {
    tx: Option<mpsc::Sender<LabelRow>>,
}

impl LabelSink {
    /// A sink that stores nothing (no `quality.store`).
    pub fn off() -> Self {
        Self { tx: None }
    }

    /// A sink holding at most `capacity` rows not yet taken by the writer, and the writer's end.
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<LabelRow>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Self { tx: Some(tx) }, rx)
    }

    /// Whether rows offered go anywhere.
    pub fn is_on(&self) -> bool {
        self.tx.is_some()
    }

    /// Hands a row to the writer without waiting; `false` when there is no store or the
    /// writer is that far behind (the row is dropped, never waited for, and counted).
    pub fn offer(&self, row: LabelRow) -> bool {
        let Some(tx) = &self.tx else {
            return false;
        };
        let source = source(&row);
        let sent = tx.try_send(row).is_ok();
        if !sent {
            metrics::counter!(telemetry::LABELS_TOTAL, "source" => source, "outcome" => "dropped")
                .increment(1);
        }
        sent
    }
}

/// The `source` label of a row's metrics: `duel` or `feedback`.
pub fn source(row: &LabelRow) -> &'static str {
    match row.label {
        prompt_router_core::quality::label::Label::Duel { .. } => "duel",
        prompt_router_core::quality::label::Label::Feedback { .. } => "feedback",
    }
}

/// What a store holds, as read back.
#[derive(Debug, Default)]
pub struct ReadRows {
    /// Every complete row, in the store's order.
    pub rows: Vec<LabelRow>,
    /// Torn last lines skipped (a write cut short by a crash; never acknowledged).
    pub torn: usize,
}

/// A place label rows are appended to and read back from.
pub trait LabelStore: Send {
    /// Appends `rows`; `Ok` means they are durable (acknowledged) and every later read sees
    /// them. On `Err`, some of them may still have been stored.
    fn append(&mut self, rows: &[LabelRow]) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Every row the store holds, oldest first.
    fn read_all(&mut self) -> impl Future<Output = anyhow::Result<ReadRows>> + Send;

    /// Whether the store can be reached now, for the writer's health while no rows flow.
    fn check(&mut self) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// A store at `location`: the file store's directory is created, a Redis connection is made
/// lazily (a Redis that is down now is not an error here).
#[derive(Debug)]
pub enum Store {
    /// `file:DIR`.
    File(file::FileStore),
    /// `redis://…`.
    Redis(redis::RedisStore),
}

impl Store {
    /// Opens the store at `location`.
    pub fn open(location: &StoreLocation) -> anyhow::Result<Self> {
        Ok(match location {
            StoreLocation::File(dir) => Self::File(file::FileStore::open(dir)?),
            StoreLocation::Redis(url) => Self::Redis(redis::RedisStore::open(url)?),
        })
    }
}

impl LabelStore for Store {
    async fn append(&mut self, rows: &[LabelRow]) -> anyhow::Result<()> {
        match self {
            Self::File(s) => s.append(rows).await,
            Self::Redis(s) => s.append(rows).await,
        }
    }

    async fn read_all(&mut self) -> anyhow::Result<ReadRows> {
        match self {
            Self::File(s) => s.read_all().await,
            Self::Redis(s) => s.read_all().await,
        }
    }

    async fn check(&mut self) -> anyhow::Result<()> {
        match self {
            Self::File(s) => s.check().await,
            Self::Redis(s) => s.check().await,
        }
    }
}
