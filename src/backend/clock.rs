//! Where an upstream call's time goes, told by the SDK's own hooks: the SDK client's work before
//! the request is handed to the transport (building the request, resolving the endpoint,
//! SigV4 signing) and after the response arrives (reading and deserialising it), and the time
//! in between, which belongs to the connection, the network and Bedrock.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use aws_sdk_bedrockruntime::config::{
    ConfigBag, Intercept, RuntimeComponents,
    interceptors::{
        BeforeDeserializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
    },
};

/// One upstream call's clock, shared between the router and the SDK interceptor that moves it.
/// Cloning shares the clock.
#[derive(Debug, Clone, Default)]
pub struct CallClock(Arc<Mutex<Marks>>);

/// An upstream call's time, split.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallTime {
    /// Inside the SDK client, outside the transport.
    pub sdk: Duration,
    /// From handing the request to the transport to the response's arrival; for a stream, on
    /// to the call's end.
    pub upstream: Duration,
}

#[derive(Debug, Default)]
struct Marks {
    /// What the time since `since` is counted as.
    phase: Phase,
    since: Option<Instant>,
    spent: CallTime,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not in the SDK's hands: before the call or after it returned a whole answer.
    #[default]
    Router,
    Sdk,
    Upstream,
}

impl Marks {
    fn enter(&mut self, phase: Phase, now: Instant) {
        self.spent = self.at(now);
        self.phase = phase;
        self.since = Some(now);
    }

    /// The time spent, the open phase counted up to `now`.
    fn at(&self, now: Instant) -> CallTime {
        let open = self
            .since
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since));
        let mut spent = self.spent;
        match self.phase {
            Phase::Router => {}
            Phase::Sdk => spent.sdk += open,
            Phase::Upstream => spent.upstream += open,
        }
        spent
    }
}

impl CallClock {
    fn enter(&self, phase: Phase) {
        // Every update is one assignment, so a holder's panic leaves the marks consistent.
        let mut marks = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        marks.enter(phase, Instant::now());
    }

    /// The SDK starts on the call.
    pub(super) fn sdk_starts(&self) {
        self.enter(Phase::Sdk);
    }

    /// The SDK returned: with a whole answer or an error (what follows is the router's), or
    /// with an open stream, whose events are Bedrock's time until the call ends.
    pub(super) fn sdk_returned(&self, streaming: bool) {
        self.enter(if streaming {
            Phase::Upstream
        } else {
            Phase::Router
        });
    }

    /// The split so far; a call still under way is counted up to now.
    pub fn split(&self) -> CallTime {
        let marks = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        marks.at(Instant::now())
    }

    /// The interceptor that marks the hand-over to the transport and the response's arrival,
    /// once per SDK attempt.
    pub(super) fn interceptor(&self) -> Transmit {
        Transmit(self.clone())
    }
}

/// Moves a [`CallClock`] from the SDK's hooks around the transport.
#[derive(Debug)]
pub(super) struct Transmit(CallClock);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Intercept for Transmit {
    fn name(&self) -> &'static str {
        "prompt_router::backend::Transmit"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.0.enter(Phase::Upstream);
        Ok(())
    }

    fn read_after_transmit(
        &self,
        _context: &BeforeDeserializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.0.enter(Phase::Sdk);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_add_up_to_the_time_marked() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut marks = Marks::default();
        marks.enter(Phase::Sdk, t0);
        marks.enter(Phase::Upstream, t0 + ms(3));
        marks.enter(Phase::Sdk, t0 + ms(10));
        // An SDK retry: a second hand-over and response.
        marks.enter(Phase::Upstream, t0 + ms(11));
        marks.enter(Phase::Sdk, t0 + ms(15));
        marks.enter(Phase::Router, t0 + ms(17));
        let whole = CallTime {
            sdk: ms(3 + 1 + 2),
            upstream: ms(7 + 4),
        };
        assert_eq!(
            marks.at(t0 + ms(50)),
            whole,
            "router time counts in neither"
        );
        // A stream: after the SDK returns, the open phase runs to the call's end.
        marks.enter(Phase::Upstream, t0 + ms(20));
        assert_eq!(
            marks.at(t0 + ms(26)),
            CallTime {
                upstream: whole.upstream + ms(6),
                ..whole
            }
        );
    }

    #[test]
    fn an_unstarted_clock_reads_zero() {
        assert_eq!(CallClock::default().split(), CallTime::default());
    }
}
