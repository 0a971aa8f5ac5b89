//! Reloading the weights file under a running router: SIGHUP on a `serve --simulate` process
//! with requests in flight, a bad file refused, and the poll with the held-out check against a
//! file label store.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::{path::PathBuf, process::Command, time::Duration};

use common::{
    exposition::Scrape,
    process::{Proc, serve_simulated},
};
use prompt_router::labels::{LabelStore, file::FileStore};
use prompt_router_core::{
    classify::{Classifier, Weights},
    quality::label::LabelRow,
};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("router-reload-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The built-in weights with `edit` applied, and their version.
fn weights(edit: impl FnOnce(&mut Weights)) -> (String, String) {
    let mut w = Classifier::default_weights().unwrap();
    edit(&mut w);
    (w.to_json().unwrap(), w.version_id())
}

/// Writes `text` to `path` as `train` does: a whole file renamed into place.
fn replace(path: &std::path::Path, text: &str) {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text).unwrap();
    std::fs::rename(&partial, path).unwrap();
}

fn metric(scrape: &str, key: &str) -> Option<f64> {
    Scrape::parse(scrape)
        .series
        .get(key)
        .map(|v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_switches_weights_with_requests_in_flight_and_refuses_a_bad_file() {
    let dir = temp_dir("sighup");
    let path = dir.join("weights.json");
    let (a, version_a) = weights(|_| {});
    let (b, version_b) = weights(|w| w.bias += 0.25);
    replace(&path, &a);
    let router = Proc::spawn(serve_simulated(&[]).env("ROUTER__ROUTING__WEIGHTS_PATH", &path));
    let serving = router.wait_serving();
    let metrics = serving.metrics_url();
    let client = serving.client().await;

    // Requests held 1.5 s upstream, so some are in flight when the weights change.
    let send = |text: String| {
        let mut client = client.clone();
        tokio::spawn(async move {
            client
                .converse(common::ask(&format!("{text} [sim:stall=1500]")))
                .await
                .map(|r| r.into_inner().decision.unwrap().weights_version)
        })
    };
    let before: Vec<_> = (0..8).map(|i| send(format!("before {i}"))).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    replace(&path, &b);
    let pid = router.child.id().to_string();
    Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    let line = router.wait_for_line("trigger");
    assert!(
        line.contains(&format!("{version_a} -> {version_b}")),
        "{line}"
    );
    let after: Vec<_> = (0..8).map(|i| send(format!("after {i}"))).collect();
    for task in before {
        assert_eq!(
            task.await
                .unwrap()
                .expect("in flight across the reload, answered"),
            version_a,
            "a request keeps the classifier it started with"
        );
    }
    for task in after {
        assert_eq!(task.await.unwrap().expect("answered"), version_b);
    }

    replace(&path, "{\"version\": 1, \"bias\": ");
    Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    let line = router.wait_for_line("trigger");
    assert!(
        line.contains("refused") && line.contains("outcome=\"invalid\""),
        "{line}"
    );
    assert_eq!(
        send("still".to_owned()).await.unwrap().unwrap(),
        version_b,
        "the old weights keep answering"
    );
    let scrape = common::http_get(&metrics).await;
    assert_eq!(
        metric(
            &scrape,
            "router_weights_reloads_total{outcome=\"accepted\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&scrape, "router_weights_reloads_total{outcome=\"invalid\"}"),
        Some(1.0)
    );
    let crc = u32::from_str_radix(version_b.strip_prefix("w-").unwrap(), 16).unwrap();
    assert_eq!(
        metric(&scrape, "router_weights_version"),
        Some(f64::from(crc))
    );
    drop(client);
    let _ = tokio::task::spawn_blocking(move || router.terminate()).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Held-out label rows on which the built-in weights rank well: proofs the strong model wins,
/// small talk the fast one ties.
fn held_out_rows(n: usize) -> Vec<LabelRow> {
    let classifier = Classifier::with_default_weights().unwrap();
    (0..)
        .map(|i| format!("h{i}"))
        .filter(|id| prompt_router_core::train::is_held_out(id))
        .take(n)
        .enumerate()
        .map(|(i, id)| {
            let hard = i % 2 == 0;
            let prompt = if hard {
                format!(
                    "Prove step by step why lemma {i} implies the theorem, and derive the bound."
                )
            } else {
                format!("hi there {i}, thanks!")
            };
            common::world::duel_row(&classifier, &id, "", &prompt, hard)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_poll_refuses_weights_that_rank_the_held_out_labels_worse() {
    let dir = temp_dir("poll");
    let store = dir.join("labels");
    let mut labels = FileStore::open(&store).unwrap();
    labels.append(&held_out_rows(300)).await.unwrap();
    let path = dir.join("weights.json");
    let (a, version_a) = weights(|_| {});
    replace(&path, &a);
    let mut router = common::start_with(|raw| {
        raw.routing.weights_path = Some(path.display().to_string());
        raw.routing.weights_poll_ms = 100;
        raw.quality.store = Some(format!("file:{}", store.display()));
    })
    .await;
    let version = |r: prompt_router::pb::ConverseResponse| r.decision.unwrap().weights_version;
    assert_eq!(version(router.ask("hello").await.unwrap()), version_a);
    let metrics = router.metrics_url();
    let count = |outcome: &'static str| {
        let metrics = metrics.clone();
        async move {
            metric(
                &common::http_get(&metrics).await,
                &format!("router_weights_reloads_total{{outcome=\"{outcome}\"}}"),
            )
            .unwrap_or(0.0)
        }
    };

    // Every cue reversed: proofs now score lowest.
    let (reversed, _) = weights(|w| {
        for f in &mut w.features {
            f.weight = -f.weight;
        }
    });
    let worse_before = count("worse").await;
    replace(&path, &reversed);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while count("worse").await <= worse_before {
        assert!(
            std::time::Instant::now() < deadline,
            "the reversed weights were not refused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(version(router.ask("hello").await.unwrap()), version_a);

    // The same ranking with another bias passes the check.
    let (shifted, version_b) = weights(|w| w.bias -= 0.1);
    replace(&path, &shifted);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let v = version(router.ask("hello").await.unwrap());
        if v == version_b {
            break;
        }
        assert_eq!(v, version_a);
        assert!(
            std::time::Instant::now() < deadline,
            "the shifted weights were not taken"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    router.running.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
