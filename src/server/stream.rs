//! A ConverseStream reply after its first upstream event: the relay task that moves events
//! from Bedrock to the caller, and the stream the caller reads, which ends with the relay's
//! status when it failed.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context as TaskContext, Poll},
};

use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Code, Status};

use super::{
    admission::Ticket,
    error::{Deadline, Error},
    feedback::Routed,
    record::Record,
    reply::Answered,
    service::RouterState,
};
use crate::{
    backend::{EventStream, StreamEvent},
    pb::{self, converse_stream_event::Event},
};
use prompt_router_core::cost::Usage;

/// Events buffered per stream between the upstream reader and the caller.
const STREAM_BUFFER: usize = 32;

/// The stream type of ConverseStream replies.
pub type EventStreamResponse =
    Pin<Box<dyn Stream<Item = Result<pb::ConverseStreamEvent, Status>> + Send>>;

/// A stream being served after the handler returned: everything the relay task owns.
pub struct StreamJob {
    /// The shared router.
    pub router: Arc<RouterState>,
    /// The request's record, finished when the relay ends.
    pub record: Record,
    /// The request id.
    pub request_id: String,
    /// When the router answers at the latest.
    pub deadline: Instant,
    /// What feedback on the request needs, kept once the stream is answered in full.
    pub feedback: Option<Routed>,
    /// The request's slot and memory charge, held until the relay ends.
    pub _ticket: Option<Ticket>,
}

/// How a stream ended.
enum Outcome {
    /// Upstream finished normally.
    Done,
    /// The caller cancelled or disconnected.
    CallerGone,
    /// Bedrock, the deadline or the cut-off ended it.
    Failed(Error),
}

impl StreamJob {
    /// Starts relaying `upstream`, whose first event (`None` if it ended at once) is `first`,
    /// answered as `answered`; returns the stream for the caller.
    pub fn spawn(
        self,
        upstream: EventStream,
        first: Option<StreamEvent>,
        answered: Answered,
        span: tracing::Span,
    ) -> EventStreamResponse {
        use tracing::Instrument as _;
        let (events, events_rx) = mpsc::channel(STREAM_BUFFER);
        let (end, end_rx) = oneshot::channel();
        let outbox = Outbox {
            events,
            end,
            deadline: self.deadline,
        };
        tokio::spawn(
            self.pump(upstream, first, answered, outbox)
                .instrument(span),
        );
        Box::pin(Events::new(events_rx, end_rx))
    }

    /// Relays upstream events to the caller until the stream ends, fails, passes its deadline
    /// or the caller goes away (which drops the upstream stream and so closes its connection).
    async fn pump(
        mut self,
        upstream: EventStream,
        first: Option<StreamEvent>,
        answered: Answered,
        outbox: Outbox,
    ) {
        let router = Arc::clone(&self.router);
        let outcome = tokio::select! {
            outcome = self.relay(upstream, first, answered, &outbox) => outcome,
            () = router.cut_off() => Outcome::Failed(Error::CutOff),
        };
        let status: Status = match outcome {
            Outcome::Done => {
                self.record.finish(Code::Ok);
                return;
            }
            Outcome::CallerGone => {
                self.record.finish(Code::Cancelled);
                return;
            }
            // Inside the request span (the task is instrumented with it), like the handler's.
            Outcome::Failed(err) => err.into(),
        };
        // A call still under way (deadline, cut-off) is ended by the record itself.
        self.record.finish(status.code());
        let _ = outbox.end.send(status);
    }

    async fn relay(
        &mut self,
        mut upstream: EventStream,
        first: Option<StreamEvent>,
        answered: Answered,
        outbox: &Outbox,
    ) -> Outcome {
        let Answered {
            decision,
            fallback,
            tier,
            ..
        } = answered;
        if let Err(outcome) = outbox.send(Event::Decision(decision)).await {
            return outcome;
        }
        let mut usage = None;
        let mut deltas = 0u32;
        let mut ended = first.is_none();
        let mut pending = first;
        loop {
            let event = match pending.take() {
                Some(event) => event,
                None if ended => break,
                None => {
                    let next = tokio::select! {
                        next = tokio::time::timeout_at(self.deadline, upstream.next()) => next,
                        () = outbox.events.closed() => return Outcome::CallerGone,
                    };
                    match next {
                        Err(_) => {
                            return Outcome::Failed(Error::Deadline(Deadline::AfterDeltas(deltas)));
                        }
                        Ok(Err(error)) => {
                            self.record.end_call(Some(error.kind()));
                            return Outcome::Failed(Error::StreamBroken {
                                error,
                                deltas,
                                request_id: self.request_id.clone(),
                            });
                        }
                        Ok(Ok(None)) => {
                            ended = true;
                            continue;
                        }
                        Ok(Ok(Some(event))) => event,
                    }
                }
            };
            let out = match event {
                StreamEvent::Text { index, text } => {
                    self.record.first_token();
                    deltas += 1;
                    Event::Delta(pb::Delta {
                        content_block_index: index,
                        delta: Some(pb::delta::Delta::Text(text)),
                    })
                }
                StreamEvent::ToolUseStart { index, id, name } => {
                    self.record.first_token();
                    Event::ContentBlockStart(pb::ContentBlockStart {
                        content_block_index: index,
                        tool_use: Some(pb::ToolUseStart {
                            tool_use_id: id,
                            name,
                        }),
                    })
                }
                StreamEvent::ToolInput { index, json } => Event::Delta(pb::Delta {
                    content_block_index: index,
                    delta: Some(pb::delta::Delta::ToolUseInput(json)),
                }),
                StreamEvent::Stop { reason } => Event::Stop(pb::Stop {
                    stop_reason: reason,
                }),
                StreamEvent::Usage(u) => {
                    usage = Some(u);
                    continue;
                }
            };
            if let Err(outcome) = outbox.send(out).await {
                return outcome;
            }
        }
        let usage = usage.unwrap_or_else(|| {
            tracing::warn!(
                "the upstream stream ended without usage metadata; cost counts zero tokens"
            );
            Usage::default()
        });
        let summary = self.router.settle(
            &mut self.record,
            tier,
            usage,
            &self.request_id,
            fallback,
            self.feedback.take(),
        );
        match outbox
            .send(Event::Metadata(summary.stream_metadata()))
            .await
        {
            Ok(()) => Outcome::Done,
            Err(outcome) => outcome,
        }
    }
}

/// Where the relay task sends events, and the final status if the stream fails.
struct Outbox {
    events: mpsc::Sender<pb::ConverseStreamEvent>,
    end: oneshot::Sender<Status>,
    deadline: Instant,
}

impl Outbox {
    /// Sends one event, waiting for the caller to make room no longer than the deadline.
    async fn send(&self, event: Event) -> Result<(), Outcome> {
        let sent = tokio::time::timeout_at(
            self.deadline,
            self.events
                .send(pb::ConverseStreamEvent { event: Some(event) }),
        )
        .await;
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Outcome::CallerGone),
            Err(_) => Err(Outcome::Failed(Error::Deadline(Deadline::CallerNotReading))),
        }
    }
}

/// The events of a streamed reply: whatever the relay task sent, then the status it ended with
/// if it failed. The final status has its own channel so it can always be delivered, even to a
/// caller who stopped reading and left the event buffer full.
struct Events {
    events: ReceiverStream<pb::ConverseStreamEvent>,
    end: Option<oneshot::Receiver<Status>>,
    /// The status the relay task ended with, held until the events before it are out.
    failed: Option<Status>,
}

impl Events {
    fn new(
        events: mpsc::Receiver<pb::ConverseStreamEvent>,
        end: oneshot::Receiver<Status>,
    ) -> Self {
        Self {
            events: ReceiverStream::new(events),
            end: Some(end),
            failed: None,
        }
    }
}

impl Stream for Events {
    type Item = Result<pb::ConverseStreamEvent, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        // The end first: the relay task ends (sends its status, or drops the sender when the
        // stream succeeded) only after queueing its last event, so once the end is seen every
        // event is in the queue. Looking at the queue first lost the last event (the metadata)
        // when the task queued it and ended between the two looks.
        if let Some(end) = self.end.as_mut()
            && let Poll::Ready(ended) = Pin::new(end).poll(cx)
        {
            self.end = None;
            self.failed = ended.ok();
        }
        match Pin::new(&mut self.events).poll_next(cx) {
            Poll::Ready(Some(event)) => Poll::Ready(Some(Ok(event))),
            _ if self.end.is_none() => Poll::Ready(self.failed.take().map(Err)),
            _ => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stream_ends_after_every_queued_event() {
        use tokio_stream::StreamExt as _;
        let event = |text: &str| pb::ConverseStreamEvent {
            event: Some(Event::Stop(pb::Stop {
                stop_reason: text.to_owned(),
            })),
        };
        for failed in [false, true] {
            let status: Option<Status> = failed.then(|| Error::CutOff.into());
            let (events, events_rx) = mpsc::channel(4);
            let (end, end_rx) = oneshot::channel();
            let mut stream = Events::new(events_rx, end_rx);
            events.send(event("a")).await.expect("queued");
            events.send(event("b")).await.expect("queued");
            // The relay task's last moves: the status (if it failed), then both senders go.
            if let Some(status) = status.clone() {
                end.send(status).expect("sent");
            } else {
                drop(end);
            }
            drop(events);
            let mut seen = Vec::new();
            while let Some(item) = stream.next().await {
                seen.push(item.map_or_else(|s| s.message().to_owned(), |e| format!("{e:?}")));
            }
            assert_eq!(seen.len(), 2 + usize::from(failed), "{seen:?}");
            assert!(
                seen[0].contains("\"a\"") && seen[1].contains("\"b\""),
                "{seen:?}"
            );
            if let Some(status) = status {
                assert_eq!(seen[2], status.message());
            }
        }
    }
}
