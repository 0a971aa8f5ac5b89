//! The Feedback RPC end to end: a real router with the simulator behind the real SDK client,
//! a real tonic client, the label rows read off the sink's channel.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{TestRouter, exposition::Scrape};
use prompt_router::{labels::LabelSink, pb, server::Options};
use prompt_router_core::{
    classify::Feature,
    config::{Config, RawConfig},
    quality::label::{Label, LabelRow, LabelTier},
};
use tokio::sync::mpsc;
use tonic::Code;
use tonic_types::StatusExt as _;

/// A router whose label rows land in the returned channel (holding `rows` at most), after
/// `adjust` edits its config.
async fn start(
    rows: usize,
    adjust: impl FnOnce(&mut RawConfig),
) -> (TestRouter, mpsc::Receiver<LabelRow>) {
    let mut raw = RawConfig::default();
    adjust(&mut raw);
    let (sink, rx) = LabelSink::channel(rows);
    let router = common::start_with_options(
        Config::try_from(raw).expect("valid config"),
        Options {
            labels: Some(sink),
            ..Options::default()
        },
    )
    .await;
    (router, rx)
}

fn scored(request_id: &str, score: f64) -> pb::FeedbackRequest {
    pb::FeedbackRequest {
        request_id: request_id.to_owned(),
        score: Some(score),
        ..Default::default()
    }
}

async fn feedback(
    router: &mut TestRouter,
    request: pb::FeedbackRequest,
) -> Result<pb::FeedbackResponse, tonic::Status> {
    router
        .client
        .feedback(request)
        .await
        .map(tonic::Response::into_inner)
}

/// The field a status's BadRequest details name.
fn field(status: &tonic::Status) -> String {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let details = status
        .get_details_bad_request()
        .expect("BadRequest details");
    details.field_violations[0].field.clone()
}

fn caller(text: &str, name: &str) -> pb::ConverseRequest {
    pb::ConverseRequest {
        routing: Some(pb::RoutingOptions {
            caller: name.to_owned(),
            ..Default::default()
        }),
        ..common::ask(text)
    }
}

#[tokio::test]
async fn feedback_on_an_answer_lands_as_a_label_row_once() {
    let (mut router, mut rows) = start(16, |_| {}).await;
    let prompt = "Prove that the square root of 2 is irrational, step by step.";
    let reply = router
        .client
        .converse(caller(prompt, "billing"))
        .await
        .unwrap()
        .into_inner();
    let decision = reply.decision.clone().unwrap();
    let got = feedback(
        &mut router,
        pb::FeedbackRequest {
            reason: "missed the last step".to_owned(),
            ..scored(&reply.request_id, 0.25)
        },
    )
    .await
    .unwrap();
    assert!(got.stored);
    let row = rows.try_recv().expect("a row on the sink");
    assert_eq!(row.request_id, reply.request_id);
    assert_eq!(row.caller, "billing");
    assert_eq!(row.score, decision.score);
    assert_eq!(row.weights_version, decision.weights_version);
    let tier = if decision.tier == pb::Tier::Strong as i32 {
        LabelTier::Strong
    } else {
        LabelTier::Fast
    };
    assert_eq!(row.tier, tier);
    assert_eq!(
        row.label,
        Label::Feedback {
            score: 0.25,
            reason: Some("missed the last step".to_owned()),
        }
    );
    assert_eq!(row.prompt, None, "no prompt without quality.store_prompts");
    assert!(
        row.features[Feature::Proof.name()] > 0.0,
        "{:?}",
        row.features
    );
    assert!(row.example().is_ok(), "train reads it");
    // A second grade of the same answer would weigh it twice: refused, and no row.
    let again = feedback(&mut router, scored(&reply.request_id, 1.0))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");
    assert!(rows.try_recv().is_err());

    // Streams are remembered the same way; a thumb is a score of 0 or 1.
    let (events, end) = router.stream(common::ask("What is 2 + 2?")).await;
    assert!(end.is_none(), "{end:?}");
    let Some(pb::converse_stream_event::Event::Metadata(meta)) = events.last() else {
        panic!("metadata last: {events:?}");
    };
    let got = feedback(
        &mut router,
        pb::FeedbackRequest {
            request_id: meta.request_id.clone(),
            thumb: pb::Thumb::Up as i32,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(got.stored);
    let row = rows.try_recv().expect("the stream's row");
    assert_eq!(row.request_id, meta.request_id);
    assert_eq!(row.caller, "");
    assert!(matches!(row.label, Label::Feedback { score, reason: None } if score == 1.0));

    let text = common::http_get(&router.metrics_url()).await;
    let metrics = Scrape::parse(&text);
    assert!(
        metrics.value("router_feedback_total{outcome=\"stored\"}") >= 2.0,
        "{text}"
    );
    assert!(metrics.value("router_feedback_total{outcome=\"already_given\"}") >= 1.0);
    router.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn unknown_ids_and_bad_grades_are_refused_naming_the_field() {
    let (mut router, mut rows) = start(16, |_| {}).await;
    let reply = router.ask("Hello there").await.unwrap();
    let id = reply.request_id.as_str();

    let unknown = feedback(&mut router, scored("no-such-request", 0.5))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    assert!(unknown.message().contains("no-such-request"), "{unknown:?}");
    // A Route call decides but is not answered: nothing to grade.
    let routed = router
        .client
        .route(common::ask("Hello there"))
        .await
        .unwrap();
    let route_id = common::request_id(routed.metadata());
    let status = feedback(&mut router, scored(&route_id, 0.5))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    let cases = [
        (scored(id, 1.5), "score"),
        (scored(id, -0.1), "score"),
        (scored(id, f64::NAN), "score"),
        (
            pb::FeedbackRequest {
                request_id: id.to_owned(),
                ..Default::default()
            },
            "score",
        ),
        (
            pb::FeedbackRequest {
                thumb: pb::Thumb::Down as i32,
                ..scored(id, 0.5)
            },
            "score",
        ),
        (
            pb::FeedbackRequest {
                thumb: 9,
                ..Default::default()
            },
            "request_id",
        ),
        (
            pb::FeedbackRequest {
                thumb: 9,
                request_id: id.to_owned(),
                ..Default::default()
            },
            "thumb",
        ),
        (
            pb::FeedbackRequest {
                reason: "x".repeat(1025),
                ..scored(id, 0.5)
            },
            "reason",
        ),
        (scored(&"y".repeat(129), 0.5), "request_id"),
    ];
    for (request, expected) in cases {
        let status = feedback(&mut router, request.clone()).await.unwrap_err();
        assert_eq!(field(&status), expected, "{request:?}: {status:?}");
    }
    assert!(rows.try_recv().is_err(), "refusals leave no row");
    // The refusals took nothing: the answer can still be graded.
    assert!(feedback(&mut router, scored(id, 0.5)).await.unwrap().stored);
    assert!(rows.try_recv().is_ok());
    router.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn requests_expire_after_the_ttl() {
    let (mut router, _rows) = start(16, |raw| raw.quality.feedback_ttl_ms = 200).await;
    let reply = router.ask("Hello there").await.unwrap();
    // Only a lower bound on time: the entry is at least this old, however slow the machine.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let status = feedback(&mut router, scored(&reply.request_id, 0.5))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    router.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_oldest_requests_make_room_at_capacity() {
    let (mut router, mut rows) = start(16, |raw| raw.quality.feedback_capacity = 3).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            router
                .ask(&format!("Question {i}?"))
                .await
                .unwrap()
                .request_id,
        );
    }
    for old in &ids[..2] {
        let status = feedback(&mut router, scored(old, 0.5)).await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{old}: {status:?}");
    }
    for kept in &ids[2..] {
        assert!(
            feedback(&mut router, scored(kept, 0.5))
                .await
                .unwrap()
                .stored
        );
        assert_eq!(&rows.try_recv().unwrap().request_id, kept);
    }
    router.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_row_the_writer_cannot_take_is_not_recorded_and_can_be_sent_again() {
    let (mut router, mut rows) = start(1, |raw| raw.quality.store_prompts = true).await;
    let first = router.ask("First question?").await.unwrap().request_id;
    let second = router.ask("Second question?").await.unwrap().request_id;
    assert!(
        feedback(&mut router, scored(&first, 0.5))
            .await
            .unwrap()
            .stored
    );
    // The channel holds one row and nobody takes it: the next is dropped, not waited for.
    assert!(
        !feedback(&mut router, scored(&second, 0.5))
            .await
            .unwrap()
            .stored
    );
    let row = rows.try_recv().unwrap();
    assert_eq!(row.request_id, first);
    assert_eq!(row.prompt.as_deref(), Some("First question?"));
    let again = feedback(&mut router, scored(&second, 0.75)).await.unwrap();
    assert!(again.stored, "a dropped feedback may be sent again");
    let row = rows.try_recv().unwrap();
    assert_eq!(row.request_id, second);
    assert_eq!(row.prompt.as_deref(), Some("Second question?"));
    router.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn without_a_label_store_feedback_is_refused() {
    let mut router = common::start().await;
    let reply = router.ask("Hello there").await.unwrap();
    let status = feedback(&mut router, scored(&reply.request_id, 0.5))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("quality.store"), "{status:?}");
    router.running.shutdown().await.unwrap();
}
