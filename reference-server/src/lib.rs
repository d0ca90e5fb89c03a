//! The reference policy server as a library: start it in-process, get its address and token,
//! shut it down.
//!
//! The binary (`src/main.rs`) is a thin clap wrapper around [`start`]; end-to-end tests of other
//! crates start a real server on `127.0.0.1:0` with a temporary data dir the same way:
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use reference_server::{ServerConfig, TlsMode};
//! let config = ServerConfig {
//!     listen: "127.0.0.1:0".parse()?,
//!     data_dir: "/tmp/policy-data".into(),
//!     tls: TlsMode::SelfSigned,
//!     admin_token: Some("a-long-admin-secret".to_owned()),
//!     ..ServerConfig::default()
//! };
//! let server = reference_server::start(config).await?;
//! println!("listening on {} with token {}", server.base_url(), server.admin_token().unwrap_or("?"));
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! The layers, each importing only those below it (`tests/layering.rs` checks it):
//!
//! ```text
//! lib (start, RunningServer) ─▶ http (routes, filters, handlers) ─▶ app (AppState)
//!        │                                                            │
//!        ▼                                                            ▼
//!   transport (listener, TLS, SSE hub) ◀── fleet (the domain) ──▶ store (trait + SQLite)
//!                                                │                    │
//!                                                ▼                    ▼
//!                                   auth, error, clock (and policy_engine::protocol)
//! ```
#![deny(missing_docs)]

pub mod app;
pub mod auth;
pub mod clock;
pub mod config;
pub mod error;
pub mod fleet;
pub mod http;
pub mod metrics;
pub mod ratelimit;
pub mod store;
pub mod transport;

use std::net::SocketAddr;
use std::sync::Arc;

pub use app::AppState;
pub use config::{Database, ServerConfig, TlsMode};
/// The notification config of [`ServerConfig::notify`] (`--notify-config`).
pub use fleet::notify;
pub use http::body::MAX_BODY_BYTES;

use crate::transport::limits::ConnectionLimits;
use crate::transport::{Listening, ServeOptions, Shutdown, tls};

/// Connections the metrics listener serves at once (scrapers are few).
const METRICS_CONNECTIONS: usize = 16;

/// A started server. Dropping it also stops the server (without waiting).
#[derive(Debug)]
pub struct RunningServer {
    listening: Listening,
    metrics: Option<Listening>,
    admin_token: Option<String>,
    generated_admin_token: Option<String>,
    state: Arc<AppState>,
}

impl RunningServer {
    /// The bound address (the real port when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listening.local_addr()
    }

    /// `https://127.0.0.1:PORT` or `http://...`.
    pub fn base_url(&self) -> String {
        let scheme = if self.listening.is_tls() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.listening.local_addr())
    }

    /// Whether the listener speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.listening.is_tls()
    }

    /// Client connections open now (what `--max-connections` caps).
    pub fn open_connections(&self) -> usize {
        self.listening.open_connections()
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

    /// The bound address of the metrics listener (`--metrics-listen`), if it has one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(Listening::local_addr)
    }

    /// The shared state (for tests and benchmarks: open streams, the store).
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Stops accepting, ends every event stream, waits for open requests (up to the grace
    /// period) and closes the database.
    pub async fn shutdown(self) {
        if let Some(metrics) = self.metrics {
            metrics.stop().await;
        }
        self.listening.stop().await;
    }
}

/// Opens the data dir and the database, sets up the admin token and TLS, binds the listener and
/// serves until [`RunningServer::shutdown`].
pub async fn start(config: ServerConfig) -> anyhow::Result<RunningServer> {
    let (state, generated_admin_token) = AppState::open(&config).await?;
    fleet::sweeper::spawn(Arc::downgrade(&state.store), config.approval_sweep);
    app::spawn_gate_timer(Arc::downgrade(&state), config.rollout_gate_interval);
    state.notifier.spawn_worker();
    let acceptor = match &config.tls {
        TlsMode::Plain => None,
        TlsMode::SelfSigned => Some(tls::acceptor(&tls::self_signed(&config.data_dir)?)?),
        TlsMode::Files { cert, key } => Some(tls::acceptor(&tls::CertFiles {
            cert: cert.clone(),
            key: key.clone(),
        })?),
    };
    let admin_token = config
        .admin_token
        .clone()
        .or_else(|| generated_admin_token.clone());
    let hub = state.hub.clone();
    let changes = state.publisher.changes().clone();
    let store = state.store.clone();
    let listening = transport::listener::spawn(ServeOptions {
        listen: config.listen,
        acceptor,
        routes: http::routes(state.clone()),
        shutdown_grace: config.shutdown_grace,
        limits: config.connections.clone(),
        shutdown: Shutdown {
            close_streams: Box::new(move || {
                hub.close();
                changes.close();
            }),
            finally: Box::pin(async move { store.close().await }),
        },
        metrics: Some(state.metrics.clone()),
    })
    .await?;
    let metrics = match config.metrics_listen {
        Some(listen) => Some(
            transport::listener::spawn(ServeOptions {
                listen,
                acceptor: None,
                routes: http::metrics::routes(state.clone()),
                shutdown_grace: config.shutdown_grace,
                // A few scrapers: the API's timeouts, and a small cap of its own so that the
                // metrics port cannot take the API's descriptors.
                limits: ConnectionLimits {
                    max_connections: METRICS_CONNECTIONS,
                    max_per_address: METRICS_CONNECTIONS,
                    operator_reserve: 0,
                    operator_networks: Vec::new(),
                    ..config.connections.clone()
                },
                shutdown: Shutdown {
                    close_streams: Box::new(|| {}),
                    finally: Box::pin(async {}),
                },
                metrics: None,
            })
            .await?,
        ),
        None => None,
    };
    Ok(RunningServer {
        listening,
        metrics,
        admin_token,
        generated_admin_token,
        state,
    })
}
