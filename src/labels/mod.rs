//! Label rows on their way to a store: duels and feedback hand rows to a [`LabelSink`], which
//! never blocks a caller's request; the store's writer takes them from the other end.

use prompt_router_core::quality::label::LabelRow;
use tokio::sync::mpsc;

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
    /// writer is that far behind (the row is dropped, never waited for).
    pub fn offer(&self, row: LabelRow) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.try_send(row).is_ok())
    }
}
