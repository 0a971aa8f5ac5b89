//! The label stores with real parts: the file store killed with SIGKILL mid-write, rotated and
//! restarted; real `redis-server` processes (started here, on free loopback ports, persistence
//! off) written by two routers and read by the real `train --labels` binary; a Redis outage
//! under a serving router.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Command, Stdio},
    sync::LazyLock,
    time::Duration,
};

use common::{
    exposition::Scrape,
    process::{BIN, Proc, serve_simulated},
    redis::RedisServer,
};
use prompt_router::labels::{
    LabelStore, ReadRows, Store, file::FileStore, redis::RedisStore, writer::Writer,
};
use prompt_router_core::{classify::Classifier, config::StoreLocation, quality::label::LabelRow};

/// A label row for request `id`: a hard (proof) or easy prompt's real features, the duel
/// outcome a strong model would win on hard prompts.
fn row(id: &str, caller: &str, hard: bool) -> LabelRow {
    static CLASSIFIER: LazyLock<Classifier> =
        LazyLock::new(|| Classifier::with_default_weights().unwrap());
    let prompt = if hard {
        format!("Prove step by step why lemma {id} implies the theorem, and derive the bound.")
    } else {
        format!("hi {id}")
    };
    common::world::duel_row(&CLASSIFIER, id, caller, &prompt, hard)
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("router-labels-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The child of [`kill_9_during_writes_loses_only_unacknowledged_rows`]: appends batches of 7
/// rows to the file store in `LABELS_CHILD_DIR` (rotating every 4 KiB) and prints each
/// acknowledged total, until killed.
#[test]
#[ignore = "run as a child process by kill_9_during_writes_loses_only_unacknowledged_rows"]
fn child_writer() {
    let dir = PathBuf::from(std::env::var("LABELS_CHILD_DIR").expect("LABELS_CHILD_DIR"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut store = FileStore::with_rotation(&dir, 4096).unwrap();
        let mut acked = 0usize;
        let mut out = std::io::stdout();
        loop {
            let batch: Vec<LabelRow> = (acked..acked + 7)
                .map(|i| row(&format!("c{i}"), "child", i % 3 == 0))
                .collect();
            store.append(&batch).await.unwrap();
            acked += batch.len();
            writeln!(out, "acked {acked}").unwrap();
            out.flush().unwrap();
        }
    });
}

#[test]
fn kill_9_during_writes_loses_only_unacknowledged_rows() {
    let dir = temp_dir("kill9");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_writer",
            "--ignored",
            "--nocapture",
            "--quiet",
        ])
        .env("LABELS_CHILD_DIR", &dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = 0;
    while acked < 400 {
        let line = lines.next().expect("the child prints").unwrap();
        if let Some(n) = line.strip_prefix("acked ") {
            acked = n.parse().unwrap();
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Totals printed before the kill were acknowledged too.
    for line in lines.map_while(Result::ok) {
        if let Some(n) = line.strip_prefix("acked ") {
            acked = n.parse().unwrap();
        }
    }
    let read = FileStore::read_dir(&dir).expect("the store reads after SIGKILL");
    assert!(read.torn <= 1, "{} torn lines", read.torn);
    assert!(
        read.rows.len() >= acked,
        "{} rows, {acked} acknowledged",
        read.rows.len()
    );
    for (i, r) in read.rows.iter().enumerate() {
        assert_eq!(
            r.request_id,
            format!("c{i}"),
            "rows in order, none lost or corrupt"
        );
        assert_eq!(*r, row(&r.request_id, "child", i % 3 == 0));
    }
    assert!(
        FileStore::files(&dir).unwrap().len() > 1,
        "the writes rotated"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn file_store_rotates_and_restarts_without_gluing_a_torn_tail() {
    let dir = temp_dir("restart");
    let ids = |read: &ReadRows| -> Vec<String> {
        read.rows.iter().map(|r| r.request_id.clone()).collect()
    };
    {
        let mut store = FileStore::with_rotation(&dir, 2048).unwrap();
        for i in 0..20 {
            store
                .append(&[row(&format!("a{i}"), "x", false)])
                .await
                .unwrap();
        }
    }
    let files = FileStore::files(&dir).unwrap();
    assert!(files.len() > 2, "{files:?}");
    // A crash mid-write leaves part of a row at the end of the last file.
    let (_, last) = files.last().unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(last).unwrap();
    f.write_all(br#"{"request_id":"torn","time_"#).unwrap();
    drop(f);

    let mut store = FileStore::with_rotation(&dir, 2048).unwrap();
    store.append(&[row("b0", "x", true)]).await.unwrap();
    let read = store.read_all().await.unwrap();
    assert_eq!(read.torn, 1);
    let mut want: Vec<String> = (0..20).map(|i| format!("a{i}")).collect();
    want.push("b0".to_owned());
    assert_eq!(ids(&read), want);
    assert_eq!(
        FileStore::files(&dir).unwrap().len(),
        files.len() + 1,
        "a reopened store starts a new file"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_routers_write_one_redis_and_train_reads_both() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut routers = Vec::new();
    for _ in 0..2 {
        let url = url.clone();
        routers.push(
            common::start_with(move |raw| raw.quality.store = Some(url))
                .await
                .running,
        );
    }
    for (n, router) in routers.iter().enumerate() {
        for i in 0..300 {
            let id = format!("r{n}-{i}");
            assert!(
                router
                    .labels()
                    .offer(row(&id, &format!("router{n}"), i % 3 == 0))
            );
        }
    }
    // Shutdown flushes what each writer holds.
    for router in routers {
        router.shutdown().await.unwrap();
    }
    let mut store = RedisStore::open(&url).unwrap();
    let read = store.read_all().await.unwrap();
    assert_eq!(read.rows.len(), 600);
    for n in 0..2 {
        assert_eq!(
            read.rows
                .iter()
                .filter(|r| r.caller == format!("router{n}"))
                .count(),
            300
        );
    }

    let dir = temp_dir("train-redis");
    let out = dir.join("w.json");
    let output = tokio::task::spawn_blocking({
        let (url, out) = (url.clone(), out.clone());
        move || {
            Command::new(BIN)
                .args(["train", "--labels", &url, "--out"])
                .arg(&out)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let held = read
        .rows
        .iter()
        .filter(|r| prompt_router_core::train::is_held_out(&r.request_id))
        .count();
    assert!(
        report.contains(&format!(
            "labels {url}: 600 rows, {} training, {held} held out",
            600 - held
        )),
        "{report}"
    );
    assert!(report.contains(&format!("held-out {url}")), "{report}");
    let weights = std::fs::read_to_string(&out).unwrap();
    let classifier =
        Classifier::new(prompt_router_core::classify::Weights::from_json(&weights).unwrap())
            .unwrap();
    assert!(
        classifier
            .classify_prompt(
                "Prove step by step why lemma 7 implies the theorem, and derive the bound."
            )
            .score()
            > classifier.classify_prompt("hi 7").score()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn up_gauge(scrape: &str) -> Option<f64> {
    Scrape::parse(scrape)
        .series
        .get("router_label_store_up")
        .map(|v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_the_router_serves_says_so_and_recovers() {
    let redis = RedisServer::start();
    let port = redis.port;
    let router = Proc::spawn(serve_simulated(&[]).env("ROUTER__QUALITY__STORE", redis.url()));
    let serving = router.wait_serving();
    let metrics = serving.metrics_url();
    let mut client = serving.client().await;
    let until_up = |want: f64| {
        let metrics = metrics.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while up_gauge(&common::http_get(&metrics).await) != Some(want) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "router_label_store_up never {want}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    until_up(1.0).await;

    drop(redis);
    until_up(0.0).await;
    let line = router.wait_for_line("held");
    assert!(line.contains("label store is down"), "{line}");
    assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");
    client
        .converse(common::ask("Still serving?"))
        .await
        .expect("served while Redis is down");

    let _redis = RedisServer::on(port);
    until_up(1.0).await;
    let line = router.wait_for_line("store");
    assert!(line.contains("label store is up"), "{line}");
    client
        .converse(common::ask("And after?"))
        .await
        .expect("served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_offered_during_an_outage_are_stored_when_redis_is_back() {
    let redis = RedisServer::start();
    let (port, url) = (redis.port, redis.url());
    drop(redis);
    let (sink, rx) = prompt_router::labels::LabelSink::channel(64);
    let writer = Writer::spawn(
        Store::open(&StoreLocation::Redis(url.clone())).unwrap(),
        url.clone(),
        rx,
    );
    for i in 0..50 {
        assert!(
            sink.offer(row(&format!("o{i}"), "x", false)),
            "held while down"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _redis = RedisServer::on(port);
    let mut store = RedisStore::open(&url).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let n = store.read_all().await.map_or(0, |r| r.rows.len());
        if n == 50 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} of 50 rows stored"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    writer.shutdown().await;
    let read = store.read_all().await.unwrap();
    let ids: Vec<&str> = read.rows.iter().map(|r| r.request_id.as_str()).collect();
    let want: Vec<String> = (0..50).map(|i| format!("o{i}")).collect();
    assert_eq!(ids, want.iter().map(String::as_str).collect::<Vec<_>>());
}
