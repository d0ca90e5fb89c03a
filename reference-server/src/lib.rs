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
//!     admin_token: Some("secret".to_owned()),
//!     ..ServerConfig::default()
//! };
//! let server = reference_server::start(config).await?;
//! println!("listening on {} with token {}", server.base_url(), server.admin_token().unwrap_or("?"));
//! server.shutdown().await;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod approvals;
pub mod audit;
pub mod auth;
pub mod blocks;
pub mod body;
pub mod error;
pub mod filters;
mod fleet;
mod handlers;
pub mod hub;
pub mod models;
pub mod notify;
pub mod overrides;
pub mod serve;
pub mod store;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

pub use serve::RunningServer;

/// Largest request body accepted, in bytes (1 MiB); larger bodies get 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// How the server secures its listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// HTTPS with a self-signed certificate kept in the data dir (`tls/cert.pem`,
    /// `tls/key.pem`), generated on first start and reused after.
    SelfSigned,
    /// HTTPS with the given PEM certificate chain and private key.
    Files {
        /// PEM certificate chain.
        cert: PathBuf,
        /// PEM private key (PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
    },
    /// Plain HTTP, for loopback tests.
    Plain,
}

/// Everything [`start`] needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on; port 0 picks a free one (see [`RunningServer::local_addr`]).
    pub listen: SocketAddr,
    /// Directory for the SQLite database and the generated TLS material; created if missing.
    pub data_dir: PathBuf,
    /// TLS or plain HTTP.
    pub tls: TlsMode,
    /// Global admin token to accept (the `POLICY_ADMIN_TOKEN` variable). `None` on a fresh data
    /// dir generates one, reported by [`RunningServer::generated_admin_token`].
    pub admin_token: Option<String>,
    /// Longest silence on an event stream before a keep-alive comment is sent.
    pub keep_alive: Duration,
    /// Events queued per event stream before a slow agent is disconnected.
    pub stream_queue: usize,
    /// How long an agent counts as online after its last heartbeat when it has no open stream.
    pub online_window: Duration,
    /// How long shutdown waits for open connections to finish before dropping them.
    pub shutdown_grace: Duration,
    /// Notification channels (`--notify-config`); `None` accepts any channel name in policies
    /// (with a warning) and delivers nothing.
    pub notify: Option<notify::NotifyConfig>,
    /// How long an approval request waits for a decision and the approved action for its
    /// execution.
    pub approval_ttl: Duration,
    /// How often expired approval requests are marked expired (with their audit entry).
    pub approval_sweep: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            data_dir: PathBuf::from("data"),
            tls: TlsMode::SelfSigned,
            admin_token: None,
            keep_alive: Duration::from_secs(15),
            stream_queue: 16,
            online_window: Duration::from_secs(90),
            shutdown_grace: Duration::from_secs(5),
            notify: None,
            approval_ttl: Duration::from_secs(3600),
            approval_sweep: Duration::from_secs(5),
        }
    }
}

/// The state shared by all handlers.
#[derive(Debug)]
pub struct AppState {
    /// The database.
    pub store: store::Store,
    /// Open event streams.
    pub hub: hub::Hub,
    /// Tokens in memory, keyed by hash.
    pub tokens: auth::TokenCache,
    /// Serializes policy and override writes with their broadcasts, so that every stream sees
    /// versions in order.
    pub publish: tokio::sync::Mutex<()>,
    /// See [`ServerConfig::online_window`].
    pub online_window: Duration,
    /// See [`ServerConfig::notify`].
    pub notify: Option<notify::NotifyConfig>,
    /// See [`ServerConfig::approval_ttl`].
    pub approval_ttl: Duration,
    /// HTTP client for webhook and Telegram deliveries.
    pub http: reqwest::Client,
}

impl AppState {
    /// Opens the data dir and the database and sets up the admin token. Returns the state and
    /// the admin token generated on this start, if any. [`start`] does this first; handler
    /// tests use it with `warp::test` and [`filters::routes`].
    pub async fn open(config: &ServerConfig) -> anyhow::Result<(Arc<Self>, Option<String>)> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data dir `{}`", config.data_dir.display()))?;
        let store = store::Store::open(&config.data_dir.join("policy.db"))
            .await
            .context("cannot open the database")?;
        let generated_admin_token = auth::bootstrap_admin(&store, config.admin_token.as_deref())
            .await
            .context("cannot set up the admin token")?;
        let tokens = auth::TokenCache::load(&store)
            .await
            .context("cannot load tokens")?;
        let state = Arc::new(AppState {
            store,
            hub: hub::Hub::new(config.stream_queue, config.keep_alive),
            tokens,
            publish: tokio::sync::Mutex::new(()),
            online_window: config.online_window,
            notify: config.notify.clone(),
            approval_ttl: config.approval_ttl,
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .build()
                .context("cannot build the notification HTTP client")?,
        });
        Ok((state, generated_admin_token))
    }
}

/// Opens the data dir and the database, sets up the admin token and TLS, binds the listener and
/// serves until [`RunningServer::shutdown`].
pub async fn start(config: ServerConfig) -> anyhow::Result<RunningServer> {
    let (state, generated_admin_token) = AppState::open(&config).await?;
    fleet::spawn_sweeper(Arc::downgrade(&state), config.approval_sweep);
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
    serve::spawn(serve::ServeOptions {
        listen: config.listen,
        acceptor,
        state,
        admin_token,
        generated_admin_token,
        shutdown_grace: config.shutdown_grace,
    })
    .await
}
