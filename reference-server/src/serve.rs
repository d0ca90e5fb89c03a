//! The listener: TCP accept, optional TLS handshake, HTTP/1.1 and HTTP/2 through hyper-util's
//! connection builder serving `warp::service(routes)`, one log line per request, and graceful
//! shutdown.

use std::net::SocketAddr;
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

use crate::AppState;

/// The peer address of a request, put into its extensions by the listener (warp's own
/// `warp::addr::remote()` is empty behind `warp::service`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// What [`spawn`] needs.
pub struct ServeOptions {
    /// Address to bind.
    pub listen: SocketAddr,
    /// TLS, or `None` for plain HTTP.
    pub acceptor: Option<TlsAcceptor>,
    /// Shared state.
    pub state: Arc<AppState>,
    /// The admin token in effect, when known.
    pub admin_token: Option<String>,
    /// The admin token generated on this start, if any.
    pub generated_admin_token: Option<String>,
    /// Longest wait for open connections at shutdown.
    pub shutdown_grace: Duration,
}

/// A started server. Dropping it also stops the server (without waiting).
#[derive(Debug)]
pub struct RunningServer {
    local_addr: SocketAddr,
    tls: bool,
    admin_token: Option<String>,
    generated_admin_token: Option<String>,
    state: Arc<AppState>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl RunningServer {
    /// The bound address (the real port when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `https://127.0.0.1:PORT` or `http://...`.
    pub fn base_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.local_addr)
    }

    /// Whether the listener speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The global admin token: the configured one, or the one generated on this start. `None`
    /// when the data dir already had a generated token (it was printed on its first start).
    pub fn admin_token(&self) -> Option<&str> {
        self.admin_token.as_deref()
    }

    /// The admin token generated on this start (fresh data dir, no configured token): print it.
    pub fn generated_admin_token(&self) -> Option<&str> {
        self.generated_admin_token.as_deref()
    }

    /// The shared state (for tests and benchmarks: open streams, the store).
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Stops accepting, ends every event stream, waits for open requests (up to the grace
    /// period) and closes the database.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// Binds the listener and serves on a new task.
pub async fn spawn(options: ServeOptions) -> anyhow::Result<RunningServer> {
    let listener = TcpListener::bind(options.listen).await?;
    let local_addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel();
    let tls = options.acceptor.is_some();
    let state = options.state.clone();
    let task = tokio::spawn(run(
        listener,
        options.acceptor,
        options.state,
        stopped,
        options.shutdown_grace,
    ));
    tracing::info!(%local_addr, tls, "policy server listening");
    Ok(RunningServer {
        local_addr,
        tls,
        admin_token: options.admin_token,
        generated_admin_token: options.generated_admin_token,
        state,
        stop: Some(stop),
        task: Some(task),
    })
}

async fn run(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    state: Arc<AppState>,
    mut stopped: oneshot::Receiver<()>,
    grace: Duration,
) {
    let routes = warp::service(crate::filters::routes(state.clone()));
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
        });
    }
    drop(listener);
    state.hub.close();
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!("connections still open after the grace period; dropping them");
        }
    }
    state.store.close().await;
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
