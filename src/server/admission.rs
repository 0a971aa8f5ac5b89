//! Admission on the transport, before a request's body is read: a tower service in front of
//! the gRPC routes that bounds what requests can make the router hold.
//!
//! - **Slots**: `Converse` and `ConverseStream` take one of `server.max_concurrency` slots,
//!   `Route` and `Feedback` (cheap calls that reach no model) one of
//!   `server.max_route_concurrency`, the moment their headers arrive; with none free the call
//!   is refused at once with RESOURCE_EXHAUSTED, its body never read.
//! - **Memory**: a gRPC message announces its length in its first five bytes. A length above
//!   `server.max_request_bytes` is refused there (RESOURCE_EXHAUSTED). Otherwise the request
//!   is charged twice its length (the bytes are held twice: here and in tonic's decoder) from
//!   `server.max_inflight_request_bytes`, before any more of it is read; once it is in, it is
//!   [weighed](super::weigh) and charged up to what handling it will take at its peak (while
//!   its JSON for Bedrock is built). A charge that does not fit is refused with
//!   RESOURCE_EXHAUSTED.
//! - **Time**: the request must arrive in full within `server.request_read_timeout_ms`
//!   (DEADLINE_EXCEEDED), so a slow sender cannot hold a slot and its charge for ever.
//! - **Everything else** (health, reflection) takes one of [`OTHER_CONCURRENCY`] slots for as
//!   long as its response lasts.
//!
//! The handler takes the slot and the charge over with [`claim`] and holds them until its
//! work ends (for a stream, when the relay ends, even if the caller has not read it all). A
//! request that never reaches the handler — refused here, or not decodable — is counted in the
//! request metrics and logged with its request id here, since the handler never sees it.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use http::{HeaderValue, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Sleep,
};
use tonic::{Status, body::Body, server::NamedService as _};
use tower_service::Service;

use super::{
    RouterService,
    context::request_id,
    error::{Deadline, Error, Framing, Overload},
    record::{self, Record},
    weigh::{Schema, Weight},
};
use crate::{
    pb::{self, prompt_router_server::PromptRouterServer},
    protocol::{REQUEST_ID, code_label},
    telemetry::Telemetry,
};
use prompt_router_core::config::ServerConfig;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The gRPC message prefix: a compression flag and a 4-byte big-endian length.
const PREFIX: usize = 5;
/// Copies of the message the transport holds while it is decoded: this layer's and tonic's.
const WIRE_COPIES: u64 = 2;
// What a weighed request costs at its peak, while an attempt's JSON is built: the request's
// parts, the attempt's copy of them and the JSON. Measured per request (one at a time, the
// `hostile` bench with `CLIENTS=1`, malloc set as in the image) and rounded up by a quarter
// or more: plain text peaks at
// 3.0× its size, control characters at 13.4× (`\u00XX` in the JSON and in the escaped
// temporary), images at 2.6× (base64), one-letter text blocks at 197 bytes per element.
/// Per byte of text.
const TEXT_COST: u64 = 4;
/// Per byte JSON escaping adds.
const ESCAPE_COST: u64 = 3;
/// Per byte of images.
const BYTES_COST: u64 = 4;
/// Per element (message, string or byte field): its struct in each form of the request.
const ELEMENT_COST: u64 = 256;

/// Health and reflection calls handled at once (their messages are kept small where the
/// services are built); beyond it they are refused with RESOURCE_EXHAUSTED.
pub const OTHER_CONCURRENCY: usize = 64;

/// The RPCs admission meters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rpc {
    Converse,
    ConverseStream,
    Route,
    Feedback,
}

impl Rpc {
    fn of(path: &str) -> Option<Self> {
        let method = path
            .strip_prefix('/')?
            .strip_prefix(PromptRouterServer::<RouterService>::NAME)?
            .strip_prefix('/')?;
        match method {
            "Converse" => Some(Self::Converse),
            "ConverseStream" => Some(Self::ConverseStream),
            "Route" => Some(Self::Route),
            "Feedback" => Some(Self::Feedback),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Converse => "Converse",
            Self::ConverseStream => "ConverseStream",
            Self::Route => "Route",
            Self::Feedback => "Feedback",
        }
    }
}

/// What an admitted request holds until its work ends: its slot and its memory charge.
#[derive(Debug)]
pub struct Ticket {
    _slot: OwnedSemaphorePermit,
    _charge: Arc<Charge>,
}

/// The memory charged to one request so far, in KiB permits.
#[derive(Debug, Default)]
struct Charge(Mutex<Option<OwnedSemaphorePermit>>);

impl Charge {
    fn add(&self, permit: OwnedSemaphorePermit) {
        let mut held = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match held.as_mut() {
            Some(held) => held.merge(permit),
            None => *held = Some(permit),
        }
    }
}

/// The ticket of a request on its way to the handler, in the request's extensions.
#[derive(Debug, Clone)]
struct Pending(Arc<Mutex<Option<Ticket>>>);

/// Takes the request's slot and memory charge over; the caller holds the ticket until the
/// request's work is done. `None` for a request that did not come through admission.
pub fn claim(extensions: &http::Extensions) -> Option<Ticket> {
    extensions
        .get::<Pending>()?
        .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
}

/// The limits admission applies, shared by every connection.
#[derive(Debug)]
pub struct Admission {
    converse: Arc<Semaphore>,
    route: Arc<Semaphore>,
    other: Arc<Semaphore>,
    memory: Arc<Semaphore>,
    memory_kib: u64,
    max_request_bytes: usize,
    read_timeout: Duration,
    /// The shapes of `ConverseRequest`, which Converse, ConverseStream and Route take.
    schema: Schema,
    /// The shape of `FeedbackRequest`.
    feedback_schema: Schema,
    telemetry: &'static Telemetry,
}

impl Admission {
    /// Admission for `config`, with `converse` the router's slots for model calls.
    pub fn new(
        config: &ServerConfig,
        converse: Arc<Semaphore>,
        telemetry: &'static Telemetry,
    ) -> anyhow::Result<Self> {
        let memory_kib = config.max_inflight_request_bytes / 1024;
        Ok(Self {
            converse,
            route: Arc::new(Semaphore::new(config.max_route_concurrency)),
            other: Arc::new(Semaphore::new(OTHER_CONCURRENCY)),
            memory: Arc::new(Semaphore::new(
                usize::try_from(memory_kib)?.min(Semaphore::MAX_PERMITS),
            )),
            memory_kib,
            max_request_bytes: config.max_request_bytes,
            read_timeout: config.request_read_timeout,
            schema: Schema::new(pb::FILE_DESCRIPTOR_SET, "router.v1.ConverseRequest")?,
            feedback_schema: Schema::new(pb::FILE_DESCRIPTOR_SET, "router.v1.FeedbackRequest")?,
            telemetry,
        })
    }

    /// Wraps the gRPC routes.
    pub fn layer<S>(self: &Arc<Self>, inner: S) -> Admit<S> {
        Admit {
            inner,
            admission: Arc::clone(self),
        }
    }

    fn slots(&self, rpc: Rpc) -> (&Arc<Semaphore>, &'static str) {
        match rpc {
            Rpc::Converse | Rpc::ConverseStream => (&self.converse, "server.max_concurrency"),
            Rpc::Route | Rpc::Feedback => (&self.route, "server.max_route_concurrency"),
        }
    }

    /// Charges `bytes` more to a request, or says why not.
    fn charge(&self, charge: &Charge, bytes: u64) -> Result<(), Status> {
        let kib = bytes.div_ceil(1024);
        if kib > self.memory_kib {
            return Err(Error::Overloaded(Overload::RequestMemory {
                bytes,
                max: self.memory_kib << 10,
            })
            .into());
        }
        let permit = u32::try_from(kib)
            .ok()
            .and_then(|kib| Arc::clone(&self.memory).try_acquire_many_owned(kib).ok())
            .ok_or(Error::Overloaded(Overload::MemoryInFlight))?;
        charge.add(permit);
        Ok(())
    }

    /// The schema `rpc`'s request message is weighed with.
    fn schema(&self, rpc: Rpc) -> &Schema {
        match rpc {
            Rpc::Converse | Rpc::ConverseStream | Rpc::Route => &self.schema,
            Rpc::Feedback => &self.feedback_schema,
        }
    }

    /// Counts and logs a request that ended before reaching the handler. `Route` and
    /// `Feedback` calls are not in the request metrics (README), so they are only logged.
    fn unhandled(&self, rpc: Rpc, request_id: &str, started: Instant, status: &Status) {
        let span = tracing::info_span!(
            "request",
            rpc = rpc.name(),
            request_id,
            error = status.message(),
            outcome = tracing::field::Empty,
        );
        if matches!(rpc, Rpc::Route | Rpc::Feedback) {
            span.record("outcome", code_label(status.code()));
            let _entered = span.enter();
            if record::is_routine(status.code()) {
                tracing::info!("request finished");
            } else {
                tracing::warn!("request failed");
            }
        } else {
            Record::start_at(self.telemetry, span, started).finish(status.code());
        }
    }
}

/// The admission service in front of `S`, the gRPC routes.
#[derive(Debug, Clone)]
pub struct Admit<S> {
    inner: S,
    admission: Arc<Admission>,
}

/// The response future of [`Admit`].
pub type AdmitFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl<S> Service<Request<Incoming>> for Admit<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = AdmitFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        let Some(rpc) = Rpc::of(req.uri().path()) else {
            let Ok(slot) = Arc::clone(&self.admission.other).try_acquire_owned() else {
                return Box::pin(std::future::ready(Ok(refusal(
                    Error::Overloaded(Overload::OtherCalls).into(),
                    None,
                ))));
            };
            let response = self.inner.call(req.map(Body::new));
            return Box::pin(async move {
                let Ok(response) = response.await;
                Ok(response.map(|body| Body::new(Guarded::new(body, slot))))
            });
        };
        let started = Instant::now();
        let admission = Arc::clone(&self.admission);
        // The id goes into the request so the handler logs under the same one.
        let id = request_id(req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()));
        let id_header = HeaderValue::from_str(&id).ok();
        if let Some(value) = &id_header {
            req.headers_mut().insert(REQUEST_ID, value.clone());
        }
        let (slots, key) = admission.slots(rpc);
        let Ok(slot) = Arc::clone(slots).try_acquire_owned() else {
            // Queueing would only turn overload into timeouts for everyone.
            let status: Status = Error::Overloaded(Overload::Concurrency { key }).into();
            admission.unhandled(rpc, &id, started, &status);
            return Box::pin(std::future::ready(Ok(refusal(status, id_header))));
        };
        let charge = Arc::new(Charge::default());
        let pending = Pending(Arc::new(Mutex::new(Some(Ticket {
            _slot: slot,
            _charge: Arc::clone(&charge),
        }))));
        req.extensions_mut().insert(pending.clone());
        let req =
            req.map(|body| Body::new(Metered::new(body, Arc::clone(&admission), charge, rpc)));
        // The clone that was readied is the one called (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let response = inner.call(req);
        Box::pin(async move {
            let Ok(mut response) = response.await;
            let unclaimed = pending
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if unclaimed.is_some() {
                if let Some(status) = response.extensions().get::<Status>() {
                    admission.unhandled(rpc, &id, started, status);
                }
                if let Some(value) = id_header {
                    response.headers_mut().insert(REQUEST_ID, value);
                }
            }
            Ok(response)
        })
    }
}

fn refusal(status: Status, id: Option<HeaderValue>) -> Response<Body> {
    let mut response = status.into_http::<Body>();
    if let Some(value) = id {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// Where a request body is in its one message.
#[derive(Debug)]
enum State {
    /// Reading the 5-byte prefix.
    Prefix { head: [u8; PREFIX], have: usize },
    /// Reading the message of `len` bytes into `buf` (prefix included).
    Message { buf: BytesMut, len: usize },
    /// The message went on to the decoder; only trailers or the end may follow.
    Sent,
    /// The body failed; the decoder has its status.
    Failed,
}

/// A request body read through admission: the prefix, the charge, the message whole, in time.
struct Metered {
    inner: Incoming,
    state: State,
    deadline: Pin<Box<Sleep>>,
    admission: Arc<Admission>,
    charge: Arc<Charge>,
    rpc: Rpc,
}

impl Metered {
    fn new(inner: Incoming, admission: Arc<Admission>, charge: Arc<Charge>, rpc: Rpc) -> Self {
        Self {
            rpc,
            inner,
            state: State::Prefix {
                head: [0; PREFIX],
                have: 0,
            },
            deadline: Box::pin(tokio::time::sleep(admission.read_timeout)),
            admission,
            charge,
        }
    }

    fn fail(&mut self, status: Status) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.state = State::Failed;
        Poll::Ready(Some(Err(Box::new(status))))
    }

    /// Takes in a chunk of the body; returns the whole message once it is in.
    fn take(&mut self, mut data: Bytes) -> Result<Option<Bytes>, Status> {
        while data.has_remaining() {
            let mut prefix = None;
            match &mut self.state {
                State::Prefix { head, have } => {
                    let n = (PREFIX - *have).min(data.len());
                    head[*have..*have + n].copy_from_slice(&data[..n]);
                    data.advance(n);
                    *have += n;
                    if *have == PREFIX {
                        prefix = Some(*head);
                    }
                }
                State::Message { buf, len } => {
                    let n = (PREFIX + *len - buf.len()).min(data.len());
                    buf.put_slice(&data[..n]);
                    data.advance(n);
                }
                State::Sent | State::Failed => return Err(second_message()),
            }
            if let Some(head) = prefix {
                self.begin(head)?;
            }
            if let Some(message) = self.complete()? {
                if data.has_remaining() {
                    return Err(second_message());
                }
                return Ok(Some(message));
            }
        }
        Ok(None)
    }

    /// The prefix is in: check the length and charge for holding the message.
    fn begin(&mut self, head: [u8; PREFIX]) -> Result<(), Status> {
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > self.admission.max_request_bytes {
            return Err(Error::Overloaded(Overload::RequestBytes {
                len,
                max: self.admission.max_request_bytes,
            })
            .into());
        }
        self.admission
            .charge(&self.charge, WIRE_COPIES * len as u64)?;
        let mut buf = BytesMut::with_capacity(PREFIX + len);
        buf.put_slice(&head);
        self.state = State::Message { buf, len };
        Ok(())
    }

    /// Once the whole message is in, charges what is left of its cost and hands it on.
    fn complete(&mut self) -> Result<Option<Bytes>, Status> {
        let State::Message { buf, len } = &mut self.state else {
            return Ok(None);
        };
        let len = *len;
        if buf.len() < PREFIX + len {
            return Ok(None);
        }
        let message = std::mem::take(buf).freeze();
        self.state = State::Sent;
        let held = WIRE_COPIES * len as u64;
        let cost = cost(self.admission.schema(self.rpc).weigh(&message[PREFIX..]));
        if cost > held {
            self.admission.charge(&self.charge, cost - held)?;
        }
        Ok(Some(message))
    }

    fn ended_early(&self) -> Status {
        let framing = match &self.state {
            State::Prefix { have: 0, .. } => Framing::NoMessage,
            State::Prefix { have, .. } => Framing::PrefixCutShort { have: *have },
            State::Message { buf, len } => Framing::MessageCutShort {
                have: buf.len() - PREFIX,
                len: *len,
            },
            State::Sent | State::Failed => Framing::EndedEarly,
        };
        Error::Framing(framing).into()
    }
}

/// A response body that holds `G` (a slot, a count of open calls) until it is done.
pub struct Guarded<G> {
    body: Body,
    _guard: G,
}

impl<G> Guarded<G> {
    /// `body`, holding `guard`.
    pub fn new(body: Body, guard: G) -> Self {
        Self {
            body,
            _guard: guard,
        }
    }
}

impl<G: Unpin> HttpBody for Guarded<G> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

fn second_message() -> Status {
    Error::Framing(Framing::SecondMessage).into()
}

/// What handling a weighed message costs at its peak.
fn cost(weight: Weight) -> u64 {
    weight.text * TEXT_COST
        + weight.escapes * ESCAPE_COST
        + weight.bytes * BYTES_COST
        + weight.elements * ELEMENT_COST
}

impl HttpBody for Metered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if matches!(this.state, State::Failed) {
                return Poll::Ready(None);
            }
            let polled = Pin::new(&mut this.inner).poll_frame(cx);
            let frame = match polled {
                // The call waits on the end of the body too (tonic reads to it before the
                // handler runs), so the deadline holds until then.
                Poll::Pending => {
                    if this.deadline.as_mut().poll(cx).is_ready() {
                        let timeout = this.admission.read_timeout;
                        return this.fail(Error::Deadline(Deadline::RequestRead(timeout)).into());
                    }
                    return Poll::Pending;
                }
                Poll::Ready(None) => {
                    if matches!(this.state, State::Sent) {
                        return Poll::Ready(None);
                    }
                    let status = this.ended_early();
                    return this.fail(status);
                }
                Poll::Ready(Some(Err(error))) => {
                    this.state = State::Failed;
                    return Poll::Ready(Some(Err(Box::new(error))));
                }
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                Err(frame) if matches!(this.state, State::Sent) => {
                    return Poll::Ready(Some(Ok(frame)));
                }
                // Trailers before the message is complete: the message was cut short.
                Err(_) => {
                    let status = this.ended_early();
                    return this.fail(status);
                }
            };
            match this.take(data) {
                Ok(Some(message)) => return Poll::Ready(Some(Ok(Frame::data(message)))),
                Ok(None) => {}
                Err(status) => return this.fail(status),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // Never "empty" up front: a call with no message must reach `ended_early`.
        matches!(self.state, State::Failed)
            || (matches!(self.state, State::Sent) && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_router_rpcs_are_admitted() {
        assert_eq!(
            Rpc::of("/router.v1.PromptRouter/Converse"),
            Some(Rpc::Converse)
        );
        assert_eq!(
            Rpc::of("/router.v1.PromptRouter/ConverseStream"),
            Some(Rpc::ConverseStream)
        );
        assert_eq!(Rpc::of("/router.v1.PromptRouter/Route"), Some(Rpc::Route));
        assert_eq!(
            Rpc::of("/router.v1.PromptRouter/Feedback"),
            Some(Rpc::Feedback)
        );
        for other in [
            "/router.v1.PromptRouter/Nope",
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/router.v1.PromptRouterX/Converse",
        ] {
            assert_eq!(Rpc::of(other), None, "{other}");
        }
    }
}
