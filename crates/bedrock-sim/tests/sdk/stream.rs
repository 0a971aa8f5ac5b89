//! ConverseStream: event order, usage, tool deltas, pacing, mid-stream faults.

use std::time::{Duration, Instant};

use aws_sdk_bedrockruntime::error::SdkError;
use aws_sdk_bedrockruntime::operation::converse_stream::{
    ConverseStreamError, ConverseStreamOutput as StreamResponse,
};
use aws_sdk_bedrockruntime::types::error::ConverseStreamOutputError;
use aws_sdk_bedrockruntime::types::{
    ContentBlockDelta, ContentBlockStart, ConversationRole, ConverseStreamOutput as Event,
    SpecificToolChoice, StopReason, ToolChoice, ToolConfiguration,
};
use bedrock_sim::{Operation, Outcome, count_tokens};

use crate::*;

type StreamErr = SdkError<ConverseStreamOutputError, aws_smithy_types::event_stream::RawMessage>;

async fn open(c: &aws_sdk_bedrockruntime::Client, model: &str, prompt: &str) -> StreamResponse {
    c.converse_stream()
        .model_id(model)
        .messages(user(prompt))
        .send()
        .await
        .unwrap()
}

/// Every event until the end of the stream or its first error.
async fn drain(mut out: StreamResponse) -> (Vec<Event>, Option<StreamErr>) {
    let mut events = Vec::new();
    loop {
        match quick(out.stream.recv()).await {
            Ok(Some(e)) => events.push(e),
            Ok(None) => return (events, None),
            Err(e) => return (events, Some(e)),
        }
    }
}

fn text_deltas(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ContentBlockDelta(d) => match d.delta() {
                Some(ContentBlockDelta::Text(t)) => Some(t.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn events_arrive_in_order_with_consistent_usage() {
    let h = sim().await;
    let c = client(&h);
    let prompt = "Explain TCP slow start";
    let (events, err) = drain(open(&c, HAIKU, prompt).await).await;
    assert!(err.is_none(), "{err:?}");
    let Event::MessageStart(start) = &events[0] else {
        panic!("{:?}", events[0])
    };
    assert_eq!(start.role(), &ConversationRole::Assistant);
    let n = events.len();
    let Event::ContentBlockStop(stop) = &events[n - 3] else {
        panic!("{:?}", events[n - 3])
    };
    assert_eq!(stop.content_block_index(), 0);
    let Event::MessageStop(ms) = &events[n - 2] else {
        panic!("{:?}", events[n - 2])
    };
    assert_eq!(ms.stop_reason(), &StopReason::EndTurn);
    let Event::Metadata(meta) = &events[n - 1] else {
        panic!("{:?}", events[n - 1])
    };
    assert!(
        events[1..n - 3]
            .iter()
            .all(|e| matches!(e, Event::ContentBlockDelta(d) if d.content_block_index() == 0))
    );

    let deltas = text_deltas(&events);
    let text = deltas.concat();
    let usage = meta.usage().unwrap();
    assert_eq!(usage.output_tokens() as usize, deltas.len());
    assert_eq!(usage.output_tokens() as u32, count_tokens(&text));
    assert_eq!(
        usage.total_tokens(),
        usage.input_tokens() + usage.output_tokens()
    );
    assert!(meta.metrics().is_some());

    // Same answer and input count as Converse gives for the same prompt.
    let unary = c
        .converse()
        .model_id(HAIKU)
        .messages(user(prompt))
        .send()
        .await
        .unwrap();
    assert_eq!(text_of(unary.output()), text);
    assert_eq!(unary.usage().unwrap().input_tokens(), usage.input_tokens());

    let rec = &h.received()[0];
    assert_eq!(rec.operation, Operation::ConverseStream);
    assert!(
        matches!(rec.outcome, Outcome::Answered { output_tokens, .. } if output_tokens as usize == deltas.len())
    );
}

#[tokio::test]
async fn tool_use_streams_as_json_fragments() {
    let h = sim().await;
    let tools = ToolConfiguration::builder()
        .tools(crate::converse::weather_tool())
        .tool_choice(ToolChoice::Tool(
            SpecificToolChoice::builder()
                .name("get_weather")
                .build()
                .unwrap(),
        ))
        .build()
        .unwrap();
    let out = client(&h)
        .converse_stream()
        .model_id(SONNET)
        .messages(user("Weather in Porto?"))
        .tool_config(tools)
        .send()
        .await
        .unwrap();
    let (events, err) = drain(out).await;
    assert!(err.is_none());
    let Event::ContentBlockStart(start) = &events[1] else {
        panic!("{:?}", events[1])
    };
    let Some(ContentBlockStart::ToolUse(tu)) = start.start() else {
        panic!()
    };
    assert_eq!(tu.name(), "get_weather");
    assert!(tu.tool_use_id().starts_with("tooluse_"));
    let json: String = events
        .iter()
        .filter_map(|e| match e {
            Event::ContentBlockDelta(d) => match d.delta() {
                Some(ContentBlockDelta::ToolUse(t)) => Some(t.input().to_owned()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    let input: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(input["city"].is_string());
    let Some(Event::MessageStop(stop)) = events.iter().rev().nth(1) else {
        panic!()
    };
    assert_eq!(stop.stop_reason(), &StopReason::ToolUse);
    let Some(Event::Metadata(meta)) = events.last() else {
        panic!()
    };
    assert_eq!(
        meta.usage().unwrap().output_tokens() as u32,
        count_tokens(&json)
    );
}

#[tokio::test]
async fn deltas_leave_as_they_are_generated() {
    let h = sim().await;
    let started = Instant::now();
    let mut out = open(&client(&h), HAIKU, "[sim:ttft=0;tpt=5;tokens=20] pace").await;
    let mut first = None;
    let mut last = Duration::ZERO;
    while let Some(e) = quick(out.stream.recv()).await.unwrap() {
        if let Event::ContentBlockDelta(_) = e {
            first.get_or_insert(started.elapsed());
            last = started.elapsed();
        }
    }
    // 20 header + 20 body tokens, 5 ms apart: ~195 ms from the first delta to the last.
    let first = first.unwrap();
    assert!(
        last - first >= Duration::from_millis(150),
        "first {first:?} last {last:?}"
    );
    assert!(first < last / 2, "first {first:?} last {last:?}");
}

#[tokio::test]
async fn mid_stream_exceptions_are_typed() {
    let h = sim().await;
    let c = client(&h);
    for (i, name) in [
        "throttlingException",
        "modelStreamErrorException",
        "internalServerException",
        "serviceUnavailableException",
        "validationException",
    ]
    .into_iter()
    .enumerate()
    {
        let (events, err) =
            drain(open(&c, HAIKU, &format!("[sim:fail={name};after=3] q{i}")).await).await;
        assert_eq!(text_deltas(&events).len(), 3, "{name}");
        let e = err.unwrap().into_service_error();
        let ok = match (&e, name) {
            (ConverseStreamOutputError::ThrottlingException(x), "throttlingException") => {
                x.message().is_some()
            }
            (
                ConverseStreamOutputError::ModelStreamErrorException(x),
                "modelStreamErrorException",
            ) => x.message().is_some(),
            (ConverseStreamOutputError::InternalServerException(x), "internalServerException") => {
                x.message().is_some()
            }
            (
                ConverseStreamOutputError::ServiceUnavailableException(x),
                "serviceUnavailableException",
            ) => x.message().is_some(),
            (ConverseStreamOutputError::ValidationException(x), "validationException") => {
                x.message().is_some()
            }
            _ => false,
        };
        assert!(ok, "{name}: {e:?}");
    }
    let rec = h.received();
    assert!(
        matches!(&rec[0].outcome, Outcome::StreamError { kind, after_deltas: 3 } if kind == "throttlingException")
    );
    assert_eq!(h.stats().failed, 5);
}

#[tokio::test]
async fn http_errors_before_the_stream_are_typed() {
    let h = sim().await;
    let err = client(&h)
        .converse_stream()
        .model_id(HAIKU)
        .messages(user("[sim:fail=ServiceUnavailableException]"))
        .send()
        .await
        .unwrap_err();
    assert!(matches!(
        err.into_service_error(),
        ConverseStreamError::ServiceUnavailableException(_)
    ));
}

#[tokio::test]
async fn dropped_connection_mid_stream_is_an_sdk_error() {
    let h = sim().await;
    let (events, err) = drain(open(&client(&h), HAIKU, "[sim:drop;after=2] bye").await).await;
    assert_eq!(text_deltas(&events).len(), 2);
    let err = err.expect("the stream must fail, not end cleanly");
    assert!(!matches!(err, SdkError::ServiceError(_)), "{err:?}");
    wait_for_stats(&h, |s| s.failed == 1 && s.in_flight == 0).await;
    assert_eq!(h.received()[0].outcome, Outcome::Dropped);
}

#[tokio::test]
async fn stalled_stream_holds_then_client_gives_up() {
    // aws-sdk-bedrockruntime installs stalled-stream protection on Converse only, not on
    // ConverseStream: a stalled event stream never errors by itself, the caller must time out.
    let h = sim().await;
    let mut out = open(&client(&h), HAIKU, "[sim:stall;after=2] hold").await;
    let mut deltas = 0;
    loop {
        match tokio::time::timeout(Duration::from_millis(300), out.stream.recv()).await {
            Ok(Ok(Some(Event::ContentBlockDelta(_)))) => deltas += 1,
            Ok(Ok(Some(_))) => {}
            Ok(other) => panic!("stream ended: {other:?}"),
            Err(_elapsed) => break,
        }
    }
    assert_eq!(deltas, 2);
    assert_eq!(h.stats().in_flight, 1);
    drop(out);
    let s = wait_for_stats(&h, |s| s.cancelled == 1).await;
    assert_eq!(s.in_flight, 0);
    assert_eq!(h.received()[0].outcome, Outcome::Cancelled);
}

#[tokio::test]
async fn timed_stall_resumes() {
    let h = sim().await;
    let started = Instant::now();
    let (events, err) =
        drain(open(&client(&h), HAIKU, "[sim:stall=120;after=1;tokens=5] wait").await).await;
    assert!(err.is_none());
    assert!(started.elapsed() >= Duration::from_millis(120));
    assert!(matches!(events.last(), Some(Event::Metadata(_))));
}
