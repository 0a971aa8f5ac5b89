//! Accepting and keeping connections on the gRPC port, with bounds on what a client can hold.
//!
//! tonic's own accept loop retries a failed `accept` at once, so when the process runs out of
//! file descriptors it spins a core for as long as a connection waits in the backlog. Here the
//! loop is axum's [`Listener`], which sleeps a second after such an error (as hyper 0.14 did)
//! and so logs it at most once a second. Around it:
//!
//! - at most `server.max_connections` connections; beyond that new ones wait in the backlog;
//! - HTTP/2 receive windows of `server.http2_window_bytes`, which bound what a connection can
//!   have sent and the router not yet read (hyper's default is 1 MiB);
//! - with `server.tls`, a connection shakes hands with TLS (ALPN `h2`) first, and must have
//!   done so and sent the HTTP/2 preface within `server.header_read_timeout_ms`; a verified
//!   client certificate's names ride on each of its requests as a [`Peer`] extension;
//! - without, a connection must send the HTTP/2 preface within `server.header_read_timeout_ms`;
//! - a connection with no call open for `server.idle_timeout_ms` is closed with GOAWAY;
//! - HTTP/2 PINGs every `server.keepalive_interval_ms` of silence find peers that are gone;
//! - on shutdown every connection gets GOAWAY and the server waits for their calls to end.

use std::{
    convert::Infallible,
    future::Future,
    pin::{Pin, pin},
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::serve::{Listener, ListenerExt as _};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, watch},
    time::Instant,
};
use tonic::body::Body;
use tower_service::Service;

use super::{
    admission::Guarded,
    tls::{Peer, Tls},
};
use prompt_router_core::config::ServerConfig;

/// The client connection preface of HTTP/2 (RFC 9113, 3.4).
const PREFACE_LEN: usize = 24;
/// How long a PING may go unanswered, and how long a connection closed for idleness gets to
/// acknowledge its GOAWAY before it is dropped.
const PING_TIMEOUT: Duration = Duration::from_secs(20);

/// How long connections may take and keep.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    max_connections: usize,
    header_read: Duration,
    idle: Duration,
    keepalive: Option<Duration>,
    window: u32,
}

impl Bounds {
    /// The bounds `config` sets.
    pub fn new(config: &ServerConfig) -> Self {
        Self {
            max_connections: config.max_connections,
            header_read: config.header_read_timeout,
            idle: config.idle_timeout,
            keepalive: config.keepalive_interval,
            window: config.http2_window_bytes,
        }
    }
}

/// Serves HTTP/2 connections from `listener` with `service`, over TLS with `tls`, until
/// `shutdown` turns true, then stops accepting, sends every connection GOAWAY and returns once
/// they have all closed.
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    bounds: Bounds,
    tls: Option<Arc<Tls>>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let connections = Arc::new(Semaphore::new(bounds.max_connections));
    let (drain, draining) = watch::channel(false);
    // Without TCP_NODELAY, small gRPC frames wait on Nagle's algorithm and the peer's delayed
    // ACK: about 40 ms added to every unary call.
    let mut listener = listener.tap_io(|stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
    });
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&connections).acquire_owned() => permit,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let Ok(permit) = permit else { break };
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        tokio::spawn(connection(
            stream,
            service.clone(),
            bounds,
            tls.clone(),
            draining.clone(),
            permit,
        ));
    }
    // Closing the listening socket first: new clients are refused rather than left waiting.
    drop(listener);
    let _ = drain.send(true);
    drop(draining);
    drain.closed().await;
}

/// Calls open on a connection, and how many have started (so a call that came and went
/// between two looks still counts as activity).
#[derive(Debug, Default, Clone, Copy)]
struct Activity {
    open: usize,
    started: u64,
}

async fn connection<S>(
    stream: TcpStream,
    service: S,
    bounds: Bounds,
    tls: Option<Arc<Tls>>,
    mut draining: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) where
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    // The handshake and the preface share the one deadline: a peer that connects and never
    // gets as far as HTTP/2 holds a descriptor for nothing.
    let deadline = Instant::now() + bounds.header_read;
    let Some(tls) = tls else {
        let (read, write) = stream.into_split();
        return http2(read, write, None, service, bounds, deadline, draining).await;
    };
    let handshake = tokio::select! {
        done = tokio::time::timeout_at(deadline, tls.acceptor().accept(stream)) => done,
        _ = draining.wait_for(|stop| *stop) => return,
    };
    let mut stream = match handshake {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            Tls::refused(&error);
            tracing::debug!(%error, "TLS handshake on a gRPC connection failed");
            return;
        }
        Err(_) => {
            tracing::debug!(
                "closing a gRPC connection that did not finish its TLS handshake in time"
            );
            return;
        }
    };
    let peer = Peer::of(stream.get_ref().1);
    stream
        .get_mut()
        .1
        .set_buffer_limit(Some(super::tls::SEND_BUFFER));
    let (read, write) = tokio::io::split(stream);
    http2(read, write, peer, service, bounds, deadline, draining).await;
}

/// Serves HTTP/2 on a connection's two halves, once the preface has come by `deadline`.
async fn http2<S, R, W>(
    mut read: R,
    write: W,
    peer: Option<Peer>,
    service: S,
    bounds: Bounds,
    deadline: Instant,
    mut draining: watch::Receiver<bool>,
) where
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    // The preface is read here under the deadline, then replayed to hyper in front of the rest.
    let mut preface = [0; PREFACE_LEN];
    tokio::select! {
        read = tokio::time::timeout_at(deadline, read.read_exact(&mut preface)) => {
            if read.is_err() {
                tracing::debug!("closing a gRPC connection that sent no HTTP/2 preface in time");
            }
            if !matches!(read, Ok(Ok(_))) {
                return;
            }
        }
        _ = draining.wait_for(|stop| *stop) => return,
    }
    let io = tokio::io::join(std::io::Cursor::new(preface).chain(read), write);
    let (activity, mut watched) = watch::channel(Activity::default());
    let service = TowerToHyperService::new(Tracked {
        inner: service,
        activity: Arc::new(activity),
        peer,
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(bounds.keepalive)
        .keep_alive_timeout(PING_TIMEOUT)
        .initial_connection_window_size(bounds.window)
        .initial_stream_window_size(bounds.window);

    let mut conn = pin!(builder.serve_connection(TokioIo::new(io), service));
    let mut closing = false;
    // After GOAWAY for idleness, when to drop a peer that does not finish the close.
    let mut drop_at = None;
    loop {
        let give_up = async {
            match drop_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(error) = served {
                    tracing::debug!(%error, "gRPC connection ended with an error");
                }
                return;
            }
            () = idle(&mut watched, bounds.idle), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
                drop_at = Some(Instant::now() + PING_TIMEOUT);
            }
            _ = draining.wait_for(|stop| *stop), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            () = give_up => {
                if watched.borrow().open == 0 {
                    return;
                }
                drop_at = None;
            }
        }
    }
}

/// Resolves once no call has been open, and none has started, for `after`.
async fn idle(watched: &mut watch::Receiver<Activity>, after: Duration) {
    loop {
        let Ok(seen) = watched.wait_for(|a| a.open == 0).await.map(|a| a.started) else {
            return;
        };
        let started = watched.wait_for(|a| a.started != seen);
        if tokio::time::timeout(after, started).await.is_err() {
            return;
        }
    }
}

/// Counts a connection's open calls: from the request until its response body is done; hands
/// each request the connection's verified client, if any.
#[derive(Debug, Clone)]
struct Tracked<S> {
    inner: S,
    activity: Arc<watch::Sender<Activity>>,
    peer: Option<Peer>,
}

/// One open call; closing it on drop covers a call the peer reset as well as one that ended.
#[derive(Debug)]
struct Open(Arc<watch::Sender<Activity>>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.send_modify(|a| a.open -= 1);
    }
}

type TrackedFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl<S> Service<Request<Incoming>> for Tracked<S>
where
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = TrackedFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        if let Some(peer) = &self.peer {
            req.extensions_mut().insert(peer.clone());
        }
        self.activity.send_modify(|a| {
            a.open += 1;
            a.started += 1;
        });
        let open = Open(Arc::clone(&self.activity));
        let response = self.inner.call(req);
        Box::pin(async move {
            let Ok(response) = response.await;
            Ok(response.map(|body| Body::new(Guarded::new(body, open))))
        })
    }
}
