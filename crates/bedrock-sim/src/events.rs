//! ConverseStream event payloads and their `application/vnd.amazon.eventstream` frames.

use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use bytes::Bytes;
use serde_json::{Value, json};

use super::generate::{Answer, OutBlock};
use super::wire::usage_json;

/// Builds the JSON payloads of ConverseStream events; `seq` varies Bedrock's `p` padding field.
pub(crate) struct EventPayloads {
    seq: usize,
}

impl EventPayloads {
    pub(crate) fn new() -> Self {
        Self { seq: 0 }
    }

    /// Real Bedrock pads every event with `"p": "abcd…"` of varying length to hide token sizes;
    /// sending it too keeps clients honest about ignoring unknown members.
    fn padded(&mut self, event_type: &'static str, mut payload: Value) -> (&'static str, Value) {
        const PAD: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        self.seq += 1;
        let len = 1 + (self.seq * 7) % PAD.len();
        if let Value::Object(map) = &mut payload {
            map.insert("p".into(), Value::from(&PAD[..len]));
        }
        (event_type, payload)
    }

    pub(crate) fn message_start(&mut self) -> (&'static str, Value) {
        self.padded("messageStart", json!({ "role": "assistant" }))
    }

    pub(crate) fn block_start(
        &mut self,
        index: usize,
        block: &OutBlock,
    ) -> Option<(&'static str, Value)> {
        match block {
            OutBlock::Text { .. } => None,
            OutBlock::ToolUse { id, name, .. } => Some(self.padded(
                "contentBlockStart",
                json!({ "contentBlockIndex": index, "start": { "toolUse": { "toolUseId": id, "name": name } } }),
            )),
        }
    }

    pub(crate) fn delta(
        &mut self,
        index: usize,
        block: &OutBlock,
        span: &str,
    ) -> (&'static str, Value) {
        let delta = match block {
            OutBlock::Text { .. } => json!({ "text": span }),
            OutBlock::ToolUse { .. } => json!({ "toolUse": { "input": span } }),
        };
        self.padded(
            "contentBlockDelta",
            json!({ "contentBlockIndex": index, "delta": delta }),
        )
    }

    pub(crate) fn block_stop(&mut self, index: usize) -> (&'static str, Value) {
        self.padded("contentBlockStop", json!({ "contentBlockIndex": index }))
    }

    pub(crate) fn message_stop(&mut self, a: &Answer) -> (&'static str, Value) {
        self.padded(
            "messageStop",
            json!({ "stopReason": a.stop_reason.as_str() }),
        )
    }

    pub(crate) fn metadata(&mut self, a: &Answer, latency_ms: u64) -> (&'static str, Value) {
        self.padded(
            "metadata",
            json!({ "usage": usage_json(a), "metrics": { "latencyMs": latency_ms } }),
        )
    }
}

fn frame(headers: Vec<Header>, payload: &Value) -> Bytes {
    let msg = Message::new_from_parts(headers, Bytes::from(payload.to_string()));
    let mut out = Vec::new();
    // Encoding only fails for oversized headers/payloads, which our fixed small headers never are.
    if let Err(e) = aws_smithy_eventstream::frame::write_message_to(&msg, &mut out) {
        tracing::error!(error = %e, "event-stream encoding failed");
    }
    Bytes::from(out)
}

fn str_header(name: &'static str, value: &'static str) -> Header {
    Header::new(name, HeaderValue::String(value.into()))
}

/// One `:message-type: event` frame.
pub(crate) fn event_frame(event_type: &'static str, payload: &Value) -> Bytes {
    frame(
        vec![
            str_header(":event-type", event_type),
            str_header(":content-type", "application/json"),
            str_header(":message-type", "event"),
        ],
        payload,
    )
}

/// One `:message-type: exception` frame for a stream error member such as `throttlingException`.
pub(crate) fn exception_frame(member: &'static str, message: &str) -> Bytes {
    frame(
        vec![
            str_header(":exception-type", member),
            str_header(":content-type", "application/json"),
            str_header(":message-type", "exception"),
        ],
        &json!({ "message": message }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_frames_decode_with_smithy() {
        let bytes = event_frame("messageStart", &json!({ "role": "assistant" }));
        let msg = aws_smithy_eventstream::frame::read_message_from(bytes).expect("decodes");
        let names: Vec<_> = msg
            .headers()
            .iter()
            .map(|h| h.name().as_str().to_owned())
            .collect();
        assert_eq!(names, [":event-type", ":content-type", ":message-type"]);
        assert_eq!(&msg.payload()[..], br#"{"role":"assistant"}"#);
    }
}
