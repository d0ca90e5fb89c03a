//! The listener: TCP accept within the connection caps (backing off when out of file
//! descriptors), the TLS handshake with a deadline, HTTP/1.1 and HTTP/2 through hyper-util's
//! connection builder (header-read timeout, keep-alive pings) serving `warp::service(routes)`,
//! HTTP/1.1 event streams on the lean path (`lean.rs`: the same service, without hyper's
//! per-connection buffers), idle connections closed, one log line per request, and graceful
//! shutdown. It serves whatever routes it is given.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::Either;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use policy_engine::protocol::{ErrorBody, ErrorEnvelope};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tower_service::Service;
use warp::Reply as _;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

use super::events::EventReply;
use super::lean::{self, Ended, First, Rewind};
use super::limits::{ConnectionLimits, Gate, Permit, Refused};
use super::unread::DrainUnread;
use crate::metrics::{OpenConnection, ServerMetrics};

/// The peer address of a request, put into its extensions by the listener (warp's own
/// `warp::addr::remote()` is empty behind `warp::service`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// Work done when the server stops.
pub struct Shutdown {
    /// Run once the listener stopped accepting, before waiting for open connections: ends the
    /// long-lived ones (event streams), which would otherwise hold the wait to its limit.
    pub close_streams: Box<dyn FnOnce() + Send>,
    /// Run last, after connections ended (or the grace period passed): closes the store.
    pub finally: Pin<Box<dyn Future<Output = ()> + Send>>,
}

/// What [`spawn`] needs.
pub struct ServeOptions {
    /// Address to bind.
    pub listen: SocketAddr,
    /// TLS, or `None` for plain HTTP.
    pub acceptor: Option<TlsAcceptor>,
    /// The routes to serve.
    pub routes: BoxedFilter<(Response,)>,
    /// Longest wait for open connections at shutdown.
    pub shutdown_grace: Duration,
    /// Timeouts and connection caps.
    pub limits: ConnectionLimits,
    /// What to do when stopping.
    pub shutdown: Shutdown,
    /// Where to count connections (`None`: not counted, e.g. the metrics listener's own).
    pub metrics: Option<Arc<ServerMetrics>>,
}

/// A bound listener serving on its own task. Dropping it also stops it (without waiting).
#[derive(Debug)]
pub struct Listening {
    local_addr: SocketAddr,
    tls: bool,
    gate: Gate,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Listening {
    /// The bound address (the real port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Whether the listener speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Client connections open now.
    pub fn open_connections(&self) -> usize {
        self.gate.open()
    }

    /// Stops accepting, runs the shutdown work, waits for open requests (up to the grace
    /// period).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// Binds the listener and serves on a new task.
pub async fn spawn(options: ServeOptions) -> anyhow::Result<Listening> {
    let listener = TcpListener::bind(options.listen).await?;
    let local_addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel();
    let tls = options.acceptor.is_some();
    let gate = Gate::new(options.limits);
    let limits = gate.limits();
    tracing::info!(
        %local_addr,
        tls,
        max_connections = limits.max_connections,
        max_per_address = limits.max_per_address,
        operator_reserve = limits.operator_reserve,
        "policy server listening"
    );
    let task = tokio::spawn(run(
        listener,
        Serving {
            acceptor: options.acceptor,
            routes: options.routes,
            gate: gate.clone(),
        },
        stopped,
        options.shutdown_grace,
        options.shutdown,
        options.metrics,
    ));
    Ok(Listening {
        local_addr,
        tls,
        gate,
        stop: Some(stop),
        task: Some(task),
    })
}

/// What every connection is served with.
struct Serving {
    acceptor: Option<TlsAcceptor>,
    routes: BoxedFilter<(Response,)>,
    gate: Gate,
}

async fn run(
    listener: TcpListener,
    serving: Serving,
    mut stopped: oneshot::Receiver<()>,
    grace: Duration,
    shutdown: Shutdown,
    metrics: Option<Arc<ServerMetrics>>,
) {
    let routes = serving.routes;
    let limits = Arc::new(serving.gate.limits().clone());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HTTP1_HEAD);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.keep_alive_interval)
        .keep_alive_timeout(limits.keep_alive_timeout);
    let builder = Arc::new(builder);
    // Every connection task holds a receiver: the signal starts their graceful end, and the
    // last one dropped ends the wait (hyper's connections and lean streams alike).
    let (stopping, _) = watch::channel(());
    let mut backoff = AcceptBackoff::default();
    let mut refusals = RateLimitedLog::new(Duration::from_secs(10));
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    if let Some(wait) = backoff.failed(&error) {
                        tokio::time::sleep(wait).await;
                    }
                    continue;
                }
            },
        };
        backoff.succeeded();
        let permit = match serving.gate.admit(peer.ip()) {
            Ok(permit) => permit,
            Err(refused) => {
                // Closed before TLS: the cheapest answer, and the one that frees the descriptor.
                drop(stream);
                if let Some(suppressed) = refusals.tick() {
                    let cap = match refused {
                        Refused::Total => "max-connections",
                        Refused::PerAddress => "max-connections-per-ip",
                    };
                    tracing::warn!(%peer, cap, suppressed, "connection refused: at the cap");
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let open = metrics.as_ref().map(|m| m.connection());
        let acceptor = serving.acceptor.clone();
        let connection = Connection {
            peer,
            limits: limits.clone(),
            routes: routes.clone(),
            builder: builder.clone(),
            stopping: stopping.subscribe(),
            _permit: permit,
            _open: open,
        };
        tokio::spawn(connection.serve(stream, acceptor));
    }
    drop(listener);
    (shutdown.close_streams)();
    stopping.send_replace(());
    tokio::select! {
        () = stopping.closed() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!("connections still open after the grace period; dropping them");
        }
    }
    shutdown.finally.await;
    tracing::info!("policy server stopped");
}

/// One accepted connection: what serving it needs, and its place in the caps and the
/// metrics, held until it is dropped with the connection's last task.
struct Connection {
    peer: SocketAddr,
    limits: Arc<ConnectionLimits>,
    routes: BoxedFilter<(Response,)>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    /// Changes when the server stops; the server waits for every receiver to be dropped.
    stopping: watch::Receiver<()>,
    _permit: Permit,
    _open: Option<OpenConnection>,
}

impl Connection {
    /// TLS (within the handshake timeout), then HTTP until the peer leaves, the server stops,
    /// or the connection stays idle past the idle timeout. HTTP/2 (ALPN `h2`) goes to hyper;
    /// HTTP/1 connections have their first request head looked at first.
    async fn serve(self, stream: TcpStream, acceptor: Option<TlsAcceptor>) {
        let peer = self.peer;
        let Some(acceptor) = acceptor else {
            return self.http1(stream).await;
        };
        // Boxed: the handshake's state (a session being built) is freed with it instead of
        // sizing the connection's task for its whole life.
        let handshake = Box::pin(tokio::time::timeout(
            self.limits.tls_handshake_timeout,
            acceptor.accept(stream),
        ));
        match handshake.await {
            // Boxed: hyper's connection state would otherwise size every connection's task,
            // lean streams included.
            Ok(Ok(tls)) if tls.get_ref().1.alpn_protocol() == Some(b"h2") => {
                Box::pin(self.hyper(tls)).await
            }
            // Boxed: the session (1.2 KiB) moves down the calls as a pointer instead of being
            // copied into each one's state.
            Ok(Ok(tls)) => self.http1(Box::new(tls)).await,
            Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        }
    }

    /// Reads the first request head (within the header-read timeout): an event stream request
    /// is served on the lean path, anything else by hyper with the bytes read replayed.
    async fn http1<IO>(mut self, mut io: IO)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let peer = self.peer;
        let within = self.limits.header_read_timeout;
        let first = tokio::select! {
            // Boxed: the head buffer's read is freed with it, not kept in the task's size.
            first = Box::pin(tokio::time::timeout(within, lean::read_first(&mut io))) => first,
            _ = self.stopping.changed() => {
                tracing::debug!(%peer, "connection closed at shutdown before its first request");
                return lean::close(&mut io, CLOSE_WITHIN).await;
            }
        };
        match first {
            // A task of its own, sized for the stream alone (this one, sized for every kind
            // of connection, ends here).
            Ok(Ok(First::Events(request))) => {
                tokio::spawn(self.lean(io, request));
            }
            // Boxed: hyper's connection state would otherwise size every connection's task,
            // lean streams included.
            Ok(Ok(First::Other(read))) => Box::pin(self.hyper(Rewind::new(read, io))).await,
            // hyper would answer a bare 400; the API answers in its envelope.
            Ok(Ok(First::Malformed(why))) => {
                tracing::debug!(%peer, why, "malformed request head");
                write_lean(peer, io, malformed(why), self.limits.idle_timeout).await;
            }
            Ok(Ok(First::Closed)) => {}
            Ok(Err(error)) => tracing::debug!(%peer, %error, "connection ended with an error"),
            Err(_) => {
                tracing::debug!(%peer, "no request head within the header-read timeout");
                lean::close(&mut io, CLOSE_WITHIN).await;
            }
        }
    }

    /// Serves an event stream request without hyper: the routes answer it, its answer is
    /// written here; the connection ends with it.
    async fn lean<IO>(self, io: IO, request: warp::http::Request<lean::NoBody>)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // Boxed: the routes' state is freed once they answered, the stream's task keeps only
        // the writing's.
        let response = Box::pin(self.answer(request)).await;
        write_lean(self.peer, io, response, self.limits.idle_timeout).await;
    }

    /// The routes' answer to a lean request, logged.
    async fn answer(&self, mut request: warp::http::Request<lean::NoBody>) -> Response {
        request.extensions_mut().insert(PeerAddr(self.peer));
        let logged = Logged::of(self.peer, &request);
        let response = match warp::service(self.routes.clone()).call(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        logged.answered(response.status());
        response
    }

    /// Serves the connection with hyper until it ends, the server stops (gracefully: requests
    /// in flight finish) or it stays idle past the idle timeout.
    async fn hyper<IO>(self, io: IO)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let peer = self.peer;
        let activity = Arc::new(Activity::new());
        let tracked = activity.clone();
        let routes = warp::service(self.routes.clone());
        let service =
            hyper::service::service_fn(move |mut request: warp::http::Request<Incoming>| {
                request.extensions_mut().insert(PeerAddr(peer));
                let logged = Logged::of(peer, &request);
                let busy = tracked.begin();
                let head = request.method() == warp::http::Method::HEAD;
                // HTTP/2: a body the routes answer without reading is read to its end after
                // the answer instead of resetting the stream (`unread.rs`).
                let request = if request.version() == warp::http::Version::HTTP_2 {
                    request.map(|body| Either::Right(DrainUnread::new(body)))
                } else {
                    request.map(Either::Left)
                };
                let response = routes.clone().call(request);
                async move {
                    let response = response.await;
                    if let Ok(response) = &response {
                        logged.answered(response.status());
                    }
                    // An event stream's body travels in the response's extensions.
                    response.map(|mut r| {
                        let events = EventReply::take(&mut r);
                        r.map(|body| Tracked {
                            body: match events {
                                // An answer to HEAD has the headers of the GET's and no body
                                // (hyper drops it on HTTP/1.1, but sends it on HTTP/2).
                                _ if head => Either::Left(Default::default()),
                                Some(events) => Either::Right(events),
                                None => Either::Left(body),
                            },
                            _busy: busy,
                        })
                    })
                }
            });
        let connection = self
            .builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned();
        let mut connection = std::pin::pin!(connection);
        let mut stopping = self.stopping;
        let idle = activity.idle_for(self.limits.idle_timeout);
        let mut idle = std::pin::pin!(idle);
        let served = tokio::select! {
            result = connection.as_mut() => Some(result),
            // Closed cleanly (HTTP/1: TLS close_notify, then FIN; HTTP/2: GOAWAY), not
            // dropped: a client's pool sees the connection end instead of sending its next
            // request into a dropped one. A peer that does not take part is dropped soon.
            () = idle.as_mut() => {
                connection.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(IDLE_CLOSE_WITHIN, connection.as_mut()).await;
                None
            }
            // Graceful: no new requests; the ones in flight (and the stream) finish.
            _ = stopping.changed() => {
                connection.as_mut().graceful_shutdown();
                tokio::select! {
                    result = connection.as_mut() => Some(result),
                    () = idle.as_mut() => None,
                }
            }
        };
        match served {
            Some(Err(error)) => {
                tracing::debug!(%peer, error = %error, "connection ended with an error")
            }
            Some(Ok(())) => {}
            None => tracing::debug!(%peer, "idle connection closed"),
        }
    }
}

/// The 400 of a request head that is not HTTP/1, in the API's error envelope (the one shape
/// of every error answer; written here, below the HTTP layer's `ApiError`).
fn malformed(why: &str) -> Response {
    let body = ErrorEnvelope::new(ErrorBody {
        code: "bad_request".to_owned(),
        message: format!("malformed HTTP request: {why}"),
        path: None,
        errors: Vec::new(),
    });
    warp::reply::with_status(warp::reply::json(&body), StatusCode::BAD_REQUEST).into_response()
}

/// Writes a lean answer, then closes the connection (unless the client did).
async fn write_lean<IO>(peer: SocketAddr, io: IO, response: Response, write_within: Duration)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match Box::pin(lean::respond(io, response, write_within)).await {
        (Ok(Ended::Done), Some(mut io)) => lean::close(&mut io, CLOSE_WITHIN).await,
        (Ok(Ended::Done), None) => {}
        (Ok(Ended::PeerClosed), _) => tracing::debug!(%peer, "event stream closed by the client"),
        (Err(error), _) => tracing::debug!(%peer, %error, "event stream ended with an error"),
    }
}

/// Longest HTTP/1.1 request head (request line and headers) read, in bytes: past it hyper
/// answers `431` and closes the connection. (HTTP/2's limit on a header list is hyper's 16 KiB.)
/// Without it hyper buffered up to about 400 KiB, and over TLS a head of 128 KiB or more got no
/// answer at all: the connection was closed by the header-read timeout.
pub const MAX_HTTP1_HEAD: usize = 64 * 1024;

/// Longest wait for a closing write (TLS close_notify) before the connection is dropped.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// Longest wait for an idle connection's clean close (an HTTP/2 peer answering the GOAWAY's
/// ping) before it is dropped.
const IDLE_CLOSE_WITHIN: Duration = Duration::from_secs(1);

/// The request log line, written once the answer's status is known (before its body).
struct Logged {
    peer: SocketAddr,
    method: warp::http::Method,
    path: String,
    started: Instant,
}

impl Logged {
    fn of<B>(peer: SocketAddr, request: &warp::http::Request<B>) -> Self {
        Self {
            peer,
            method: request.method().clone(),
            path: request.uri().path().to_owned(),
            started: Instant::now(),
        }
    }

    fn answered(self, status: warp::http::StatusCode) {
        tracing::info!(
            peer = %self.peer,
            method = %self.method,
            path = self.path.as_str(),
            status = status.as_u16(),
            elapsed_us = self.started.elapsed().as_micros() as u64,
            "request"
        );
    }
}

/// Requests in flight on one connection (a response counts until its body ended, so an open
/// event stream keeps its connection busy) and when the last one ended.
struct Activity {
    origin: Instant,
    in_flight: AtomicUsize,
    last_ms: AtomicU64,
}

/// One request in flight; dropping it (with the response body) marks the end.
struct Busy(Arc<Activity>);

impl Activity {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
        }
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.touch();
        Busy(self.clone())
    }

    fn touch(&self) {
        let now = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::SeqCst);
    }

    /// Resolves once nothing has been in flight for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.origin + Duration::from_millis(self.last_ms.load(Ordering::SeqCst));
            let deadline = last + idle;
            if Instant::now() >= deadline && self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            let wake = if Instant::now() >= deadline {
                Instant::now() + idle
            } else {
                deadline
            };
            tokio::time::sleep_until(wake.into()).await;
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request counted as in flight until it is done.
struct Tracked<B> {
    body: B,
    _busy: Busy,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The wait after a failed `accept`: out of descriptors or memory, wait (10 ms doubling to 1 s)
/// instead of spinning, with one log line per 10 s; other errors (a peer that reset before
/// being accepted) are retried at once.
#[derive(Debug)]
struct AcceptBackoff {
    wait: Duration,
    log: RateLimitedLog,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        Self {
            wait: Duration::ZERO,
            log: RateLimitedLog::new(Duration::from_secs(10)),
        }
    }
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    fn failed(&mut self, error: &std::io::Error) -> Option<Duration> {
        let exhausted = matches!(
            error.raw_os_error(),
            Some(code) if code == nix::libc::EMFILE
                || code == nix::libc::ENFILE
                || code == nix::libc::ENOBUFS
                || code == nix::libc::ENOMEM
        );
        if !exhausted {
            tracing::debug!(%error, "accept failed");
            return None;
        }
        self.wait = (self.wait * 2).clamp(Self::FIRST, Self::MAX);
        if let Some(suppressed) = self.log.tick() {
            tracing::warn!(%error, backoff_ms = self.wait.as_millis() as u64, suppressed, "accept failed; backing off");
        }
        Some(self.wait)
    }

    fn succeeded(&mut self) {
        self.wait = Duration::ZERO;
    }
}

/// At most one log line per `every`; says how many were suppressed since the last one.
#[derive(Debug)]
struct RateLimitedLog {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(suppressed)` when a line may be written now.
    fn tick(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.every)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}
