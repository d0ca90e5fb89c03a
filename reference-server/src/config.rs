//! The server's configuration: where it listens, where it keeps its data (SQLite or a
//! PostgreSQL shared by replicas), TLS, and the limits and timings of streams, approvals and
//! shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use crate::fleet::notify::NotifyConfig;
use crate::fleet::policies::SignedOrgs;
use crate::fleet::quotas::QuotaConfig;
use crate::transport::{AdmissionConfig, ConnectionLimits};

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

/// Where the server keeps its state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Database {
    /// SQLite in the data dir (`policy.db`): one server.
    #[default]
    Sqlite,
    /// PostgreSQL at this URL (`postgres://user:password@host:port/db`): several server
    /// replicas may share it.
    Postgres(String),
}

/// Everything [`start`](crate::start) needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on; port 0 picks a free one (see
    /// [`RunningServer::local_addr`](crate::RunningServer::local_addr)).
    pub listen: SocketAddr,
    /// Directory for the SQLite database and the generated TLS material; created if missing.
    pub data_dir: PathBuf,
    /// TLS or plain HTTP.
    pub tls: TlsMode,
    /// Global admin token to accept (the `POLICY_ADMIN_TOKEN` variable). `None` on a fresh data
    /// dir generates one, reported by
    /// [`RunningServer::generated_admin_token`](crate::RunningServer::generated_admin_token).
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
    pub notify: Option<NotifyConfig>,
    /// How long an approval request waits for a decision and the approved action for its
    /// execution.
    pub approval_ttl: Duration,
    /// How often expired approval requests are marked expired (with their audit entry).
    pub approval_sweep: Duration,
    /// The database: SQLite in the data dir, or PostgreSQL shared by replicas.
    pub database: Database,
    /// With a shared database, how often a replica checks for changes of other replicas it has
    /// no notice of (a notice lost with its connection is otherwise caught up on reconnect).
    pub resync: Duration,
    /// How many new event streams may open at once and per second (beyond: 503 with
    /// `Retry-After`).
    pub admission: AdmissionConfig,
    /// How often the gates of running rollouts are evaluated on a timer (besides every
    /// heartbeat, read and operation), so that silent agents fail a gate with nobody looking.
    pub rollout_gate_interval: Duration,
    /// Where to serve the Prometheus metrics (`GET /metrics`, plain HTTP, no token); `None`
    /// serves none. Bind it to loopback or a monitoring network: the figures name orgs.
    pub metrics_listen: Option<SocketAddr>,
    /// Connection timeouts and caps.
    pub connections: ConnectionLimits,
    /// Failed authentications per source address and minute before 429 (0: no limit).
    pub auth_failures_per_minute: u32,
    /// The agents' report quotas.
    pub quotas: QuotaConfig,
    /// Ranges no fleet block may target, besides the built-in ones and the server's own
    /// addresses (`--never-block`).
    pub never_block: Vec<IpNet>,
    /// Orgs that accept only policies signed by an operator key (`--require-signatures`).
    pub signed_orgs: SignedOrgs,
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
            database: Database::Sqlite,
            resync: Duration::from_secs(5),
            admission: AdmissionConfig::default(),
            rollout_gate_interval: Duration::from_secs(5),
            metrics_listen: None,
            connections: ConnectionLimits::default(),
            auth_failures_per_minute: 600,
            quotas: QuotaConfig::default(),
            never_block: Vec::new(),
            signed_orgs: SignedOrgs::default(),
        }
    }
}
