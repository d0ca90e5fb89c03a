//! The listener: TCP accept, optional TLS handshake, HTTP/1.1 and HTTP/2 through hyper-util's
//! connection builder serving `warp::service(routes)`, one log line per request, and graceful
//! shutdown. It serves whatever routes it is given.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tower_service::Service;
use warp::filters::BoxedFilter;
use warp::reply::Response;

use crate::metrics::ServerMetrics;

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
    let task = tokio::spawn(run(
        listener,
        options.acceptor,
        options.routes,
        stopped,
        options.shutdown_grace,
        options.shutdown,
        options.metrics,
    ));
    tracing::info!(%local_addr, tls, "policy server listening");
    Ok(Listening {
        local_addr,
        tls,
        stop: Some(stop),
        task: Some(task),
    })
}

async fn run(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    routes: BoxedFilter<(Response,)>,
    mut stopped: oneshot::Receiver<()>,
    grace: Duration,
    shutdown: Shutdown,
    metrics: Option<Arc<ServerMetrics>>,
) {
    let routes = warp::service(routes);
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let open = metrics.as_ref().map(|m| m.connection());
        let acceptor = acceptor.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let routes = routes.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |mut request: warp::http::Request<Incoming>| {
                    request.extensions_mut().insert(PeerAddr(peer));
                    let method = request.method().clone();
                    let path = request.uri().path().to_owned();
                    let started = Instant::now();
                    let mut routes = routes.clone();
                    let response = routes.call(request);
                    async move {
                        let response = response.await;
                        if let Ok(response) = &response {
                            tracing::info!(
                                %peer,
                                %method,
                                path,
                                status = response.status().as_u16(),
                                elapsed_us = started.elapsed().as_micros() as u64,
                                "request"
                            );
                        }
                        response
                    }
                });
            serve_connection(stream, acceptor, &builder, watcher, service, peer).await;
            drop(open);
        });
    }
    drop(listener);
    (shutdown.close_streams)();
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!("connections still open after the grace period; dropping them");
        }
    }
    shutdown.finally.await;
    tracing::info!("policy server stopped");
}

async fn serve_connection<S>(
    stream: TcpStream,
    acceptor: Option<TlsAcceptor>,
    builder: &auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    service: S,
    peer: SocketAddr,
) where
    S: hyper::service::Service<
            warp::http::Request<Incoming>,
            Response = warp::reply::Response,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let result = match acceptor {
        Some(acceptor) => match acceptor.accept(stream).await {
            Ok(tls) => {
                watcher
                    .watch(builder.serve_connection(TokioIo::new(tls), service))
                    .await
            }
            Err(error) => {
                tracing::debug!(%peer, %error, "TLS handshake failed");
                return;
            }
        },
        None => {
            watcher
                .watch(builder.serve_connection(TokioIo::new(stream), service))
                .await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "connection ended with an error");
    }
}
