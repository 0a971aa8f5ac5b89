//! The label writer: one task that takes rows from the [`super::LabelSink`]'s channel, batches
//! them and appends them to the store, off every request's path.
//!
//! When the store fails, the router keeps serving: the writer holds at most [`BUFFER`] rows
//! (then the channel fills and [`super::LabelSink::offer`] drops and counts), retries the batch
//! with a doubling backoff up to [`MAX_BACKOFF`], and says so once per change of state: a log
//! line and `router_label_store_up`. While no rows flow it checks the store every
//! [`CHECK_INTERVAL`], so the gauge is true on a quiet router too. On shutdown it writes what
//! it holds, for at most [`FLUSH_TIMEOUT`]; what is left is dropped and counted.

use std::{collections::VecDeque, time::Duration};

use prompt_router_core::quality::label::LabelRow;
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::Instant,
};

use super::{LabelStore, source};
use crate::telemetry;

/// Rows appended per store call.
pub const BATCH: usize = 256;
/// Rows the writer holds while the store is slow or down (some 10 MB at about 1 KB a row).
pub const BUFFER: usize = 10_000;
/// First retry delay after a failed append.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest retry delay: outages of a store are mostly restarts of seconds, and one attempt
/// every 5 s costs nothing.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often an idle writer checks the store.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// How long the shutdown flush may take.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// A running writer.
#[derive(Debug)]
pub struct Writer {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Writer {
    /// Starts writing rows from `rx` to `store`; `name` is how logs name the store (with any
    /// password hidden).
    pub fn spawn<S: LabelStore + 'static>(
        store: S,
        name: String,
        rx: mpsc::Receiver<LabelRow>,
    ) -> Self {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(store, name, rx, stopped));
        Self { stop, task }
    }

    /// Writes the rows still held (for at most [`FLUSH_TIMEOUT`]) and stops.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "label writer task failed");
        }
    }
}

/// The store's health as last seen, logged and exported on each change.
struct Health {
    name: String,
    up: Option<bool>,
}

impl Health {
    fn up(&mut self) {
        if self.up != Some(true) {
            tracing::info!(store = %self.name, "label store is up");
            metrics::gauge!(telemetry::LABEL_STORE_UP).set(1.0);
        }
        self.up = Some(true);
    }

    fn down(&mut self, error: &anyhow::Error, held: usize) {
        if self.up != Some(false) {
            tracing::warn!(
                store = %self.name,
                error = format!("{error:#}"),
                held,
                "label store is down; serving goes on, rows are held and retried"
            );
            metrics::gauge!(telemetry::LABEL_STORE_UP).set(0.0);
        }
        self.up = Some(false);
    }
}

fn count(rows: impl IntoIterator<Item = &'static str>, outcome: &'static str) {
    for source in rows {
        metrics::counter!(telemetry::LABELS_TOTAL, "source" => source, "outcome" => outcome)
            .increment(1);
    }
}

async fn run<S: LabelStore>(
    mut store: S,
    name: String,
    mut rx: mpsc::Receiver<LabelRow>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut health = Health { name, up: None };
    let mut pending: VecDeque<LabelRow> = VecDeque::new();
    let mut backoff = MIN_BACKOFF;
    match store.check().await {
        Ok(()) => health.up(),
        Err(e) => health.down(&e, 0),
    }
    loop {
        if pending.is_empty() {
            tokio::select! {
                () = stopping(&mut stopped) => break,
                row = rx.recv() => match row {
                    Some(row) => pending.push_back(row),
                    None => break,
                },
                () = tokio::time::sleep(CHECK_INTERVAL) => {
                    match store.check().await {
                        Ok(()) => health.up(),
                        Err(e) => health.down(&e, 0),
                    }
                    continue;
                }
            }
        }
        while pending.len() < BUFFER {
            match rx.try_recv() {
                Ok(row) => pending.push_back(row),
                Err(_) => break,
            }
        }
        let n = pending.len().min(BATCH);
        let batch = &pending.make_contiguous()[..n];
        match store.append(batch).await {
            Ok(()) => {
                count(pending.drain(..n).map(|r| source(&r)), "stored");
                health.up();
                backoff = MIN_BACKOFF;
            }
            Err(e) => {
                health.down(&e, pending.len());
                let until = Instant::now() + backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                // Keep taking rows while waiting, up to the buffer, so offers do not fail
                // before it is full.
                let stop = loop {
                    tokio::select! {
                        () = stopping(&mut stopped) => break true,
                        () = tokio::time::sleep_until(until) => break false,
                        row = rx.recv(), if pending.len() < BUFFER => match row {
                            Some(row) => pending.push_back(row),
                            None => break true,
                        },
                    }
                };
                if stop {
                    break;
                }
            }
        }
    }
    flush(&mut store, &mut health, &mut rx, pending).await;
}

/// Resolves once a stop is asked for (or the writer's handle is gone).
async fn stopping(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// The shutdown flush: every row held or still in the channel, within [`FLUSH_TIMEOUT`].
async fn flush<S: LabelStore>(
    store: &mut S,
    health: &mut Health,
    rx: &mut mpsc::Receiver<LabelRow>,
    mut pending: VecDeque<LabelRow>,
) {
    rx.close();
    while let Ok(row) = rx.try_recv() {
        pending.push_back(row);
    }
    let deadline = Instant::now() + FLUSH_TIMEOUT;
    let mut backoff = MIN_BACKOFF;
    while !pending.is_empty() {
        let n = pending.len().min(BATCH);
        let batch = &pending.make_contiguous()[..n];
        let Ok(result) = tokio::time::timeout_at(deadline, store.append(batch)).await else {
            break;
        };
        match result {
            Ok(()) => {
                count(pending.drain(..n).map(|r| source(&r)), "stored");
                health.up();
            }
            Err(e) => {
                health.down(&e, pending.len());
                if Instant::now() + backoff >= deadline {
                    break;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    if !pending.is_empty() {
        tracing::warn!(
            store = %health.name,
            dropped = pending.len(),
            "label rows not stored by the end of the shutdown flush"
        );
        count(pending.iter().map(source), "dropped");
    }
}
