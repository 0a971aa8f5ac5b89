//! `routing.target_quality` end to end: duels through the real SDK and the simulator's judge
//! fill the duel window, and the router's upkeep re-aims the default caller's strong share from
//! it — counted, shown in the gauge, and followed by the threshold in the next replies.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::{eventually, exposition::Scrape, http_get};

#[tokio::test]
async fn the_duels_move_the_strong_share_to_the_quality_target() {
    let mut router = common::start_with(|raw| {
        raw.routing.target_strong_share = Some(0.5);
        raw.routing.target_quality = Some(0.9);
        raw.routing.share_warmup = 10;
        raw.quality.duel_rate = 1.0;
        raw.quality.duel_concurrency = 8;
        raw.quality.usd_per_hour = 1_000.0;
        raw.quality.min_duels = 40;
        raw.quality.window = 200;
    })
    .await;
    let url = router.metrics_url();
    let share = |s: &Scrape| s.value("router_target_strong_share{caller=\"default\"}");
    assert_eq!(share(&Scrape::parse(&http_get(&url).await)), 0.5);

    for i in 0..60 {
        // Hard and easy asks alike (the world's difficulty, not the wording), so a gap shows
        // at every score and recovering 90% of it needs more than half the traffic strong.
        let difficulty = f64::from(i % 10) / 10.0;
        let prompt = format!("Question {i}: what is {i} times {i}? [sim:difficulty={difficulty}]");
        router.ask(&prompt).await.expect("reply");
    }
    eventually("the duels ended", || async {
        Scrape::parse(&http_get(&url).await).value("router_quality_duels") >= 40.0
    })
    .await;
    // The upkeep runs every 5 s; `eventually` waits 10.
    eventually("the share moved", || async {
        let scrape = Scrape::parse(&http_get(&url).await);
        scrape.sum(
            "router_operating_point_changes_total",
            &["caller=\"default\""],
        ) >= 1.0
    })
    .await;
    let scrape = Scrape::parse(&http_get(&url).await);
    let moved = share(&scrape);
    assert!(moved > 0.5 && moved <= 1.0, "share {moved}");
    router.running.shutdown().await.unwrap();
}
