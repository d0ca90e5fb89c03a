//! `reference-server`: the policy API over HTTPS with SSE broadcast, backed by SQLite (one
//! server) or PostgreSQL (several replicas).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ipnet::IpNet;
use reference_server::fleet::quotas::QuotaConfig;
use reference_server::transport::AdmissionConfig;
use reference_server::transport::limits::{ConnectionLimits, raise_nofile_limit};
use reference_server::{Database, ServerConfig, TlsMode};
use tokio::signal::unix::{SignalKind, signal};

/// Reference policy server: stores versioned policies per org and pushes them to enrolled
/// agents over server-sent events.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address and port to listen on.
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// Directory for the SQLite database and the generated TLS certificate (created if missing).
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    /// PEM certificate chain for HTTPS (default: a self-signed certificate generated into the
    /// data dir on first start). Needs --tls-key.
    #[arg(long, requires = "tls_key", conflicts_with = "plain_http")]
    tls_cert: Option<PathBuf>,
    /// PEM private key matching --tls-cert.
    #[arg(long, requires = "tls_cert", conflicts_with = "plain_http")]
    tls_key: Option<PathBuf>,
    /// Serve plain HTTP instead of HTTPS (for loopback tests only).
    #[arg(long)]
    plain_http: bool,
    /// Global admin token. When unset on a fresh data dir, one is generated and printed once.
    #[arg(
        long = "admin-token",
        env = "POLICY_ADMIN_TOKEN",
        hide_env_values = true
    )]
    admin_token: Option<String>,
    /// Seconds of silence on an event stream before a keep-alive comment (at most 15).
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=15))]
    keep_alive_secs: u64,
    /// Events queued per event stream before a slow agent is disconnected.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    stream_queue: u64,
    /// Notification channels for alerts (`webhook`, `email`, `telegram`): a JSON file, or TOML
    /// when it ends in `.toml`. Without it, policies may name any channel and nothing is sent.
    #[arg(long)]
    notify_config: Option<PathBuf>,
    /// New event streams admitted per second (bursts up to as many); beyond, agents are
    /// answered 503 with `Retry-After` and come back spread out (a reconnect storm).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..))]
    stream_opens_per_sec: u32,
    /// Event streams reading their initial state at once; beyond, 503 with `Retry-After`.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    streams_opening: u64,
    /// PostgreSQL instead of SQLite in the data dir: `postgres://user:password@host:port/db`.
    /// Several servers (replicas) may share one database; each pushes every change to its own
    /// agents. The connection is not encrypted: keep the database on loopback, a unix socket
    /// (`postgres://user@%2Fvar%2Frun%2Fpostgresql/db`) or a private network.
    #[arg(long, env = "POLICY_DATABASE", hide_env_values = true, value_parser = database_url)]
    database: Option<String>,
    /// Seconds an approval request waits for a decision (and the approved action for its
    /// execution) before it expires.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    approval_ttl_secs: u64,
    /// Serve Prometheus metrics at `http://ADDR/metrics` (plain HTTP, no token; bind it to
    /// loopback or a monitoring network). Off by default.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Client connections open at once [default: the open-file limit (raised to its hard
    /// limit at start) less 288, at most 16384].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    max_connections: Option<u64>,
    /// Client connections open at once from one address (one /64 for IPv6).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    max_connections_per_ip: u64,
    /// Connections beyond --max-connections kept for --operator-network peers.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    operator_connections: u64,
    /// Networks whose peers may use the operator reserve and have no per-address cap
    /// (repeatable) [default: 127.0.0.1/32 and ::1/128].
    #[arg(long = "operator-network", value_name = "CIDR", value_parser = parse_cidr)]
    operator_networks: Vec<IpNet>,
    /// Seconds a client has to finish the TLS handshake.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    tls_handshake_timeout_secs: u64,
    /// Seconds a client has to send a whole HTTP/1 request head.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    header_read_timeout_secs: u64,
    /// Seconds a connection with no request in flight and no open stream stays open.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    idle_timeout_secs: u64,
    /// Seconds between HTTP/2 keep-alive pings (a peer that does not answer one within 10 s is
    /// disconnected).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    h2_keep_alive_secs: u64,
    /// Failed authentications per source address and minute before 429 (0: no limit).
    #[arg(long, default_value_t = 600)]
    auth_failures_per_minute: u32,
    /// Reports per agent and minute before 429 (0: no limit).
    #[arg(long, default_value_t = 600)]
    reports_per_minute: u32,
    /// KiB of reports per agent and hour before 429 (0: no limit).
    #[arg(long, default_value_t = 16_384)]
    report_kib_per_hour: u32,
    /// Pending approval requests per agent before 429 (0: no limit).
    #[arg(long, default_value_t = 100)]
    max_pending_approvals: usize,
    /// An address or range no fleet block may target (repeatable), besides loopback,
    /// unspecified, link-local, multicast, broadcast and the server's own addresses.
    #[arg(long = "never-block", value_name = "CIDR", value_parser = parse_cidr)]
    never_block: Vec<IpNet>,
    /// Log format on stderr: `text` (user-controlled values escaped) or `json` (one object
    /// per line, for log shippers).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// An org that accepts only policies signed offline with an operator key (`policy-sign`);
    /// repeat for several, `*` for every org. Overrides in such an org may only disable rules.
    #[arg(long = "require-signatures", value_name = "ORG", value_parser = org_or_star)]
    require_signatures: Vec<String>,
}

/// An org id as the contract allows it, or `*`.
fn org_or_star(value: &str) -> Result<String, String> {
    let valid = value == "*"
        || (!value.is_empty()
            && value.chars().count() <= 64
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')));
    if valid {
        Ok(value.to_owned())
    } else {
        Err("expected an org id (1 to 64 letters, digits, `-`, `_` or `.`) or `*`".to_owned())
    }
}

/// A `--database` value: a `postgres://` or `postgresql://` URL.
fn database_url(value: &str) -> Result<String, String> {
    if value.starts_with("postgres://") || value.starts_with("postgresql://") {
        Ok(value.to_owned())
    } else {
        Err(
            "expected a PostgreSQL URL, `postgres://user:password@host:port/db` (without \
             --database the server keeps its data in SQLite in the data dir)"
                .to_owned(),
        )
    }
}

/// An address (`192.0.2.7`, a /32 or /128) or a range (`10.0.0.0/8`).
fn parse_cidr(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map(|net| net.trunc())
        .map_err(|_| format!("expected an address or CIDR like `10.0.0.0/8`, found `{text}`"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logs(&args.log_format);
    let nofile = raise_nofile_limit();
    let mut connections = ConnectionLimits::sized_for(nofile);
    if let Some(max) = args.max_connections {
        connections.max_connections = usize::try_from(max).unwrap_or(usize::MAX);
    }
    connections.max_per_address =
        usize::try_from(args.max_connections_per_ip).unwrap_or(usize::MAX);
    connections.operator_reserve = usize::try_from(args.operator_connections).unwrap_or(0);
    if !args.operator_networks.is_empty() {
        connections.operator_networks = args.operator_networks.clone();
    }
    connections.tls_handshake_timeout = Duration::from_secs(args.tls_handshake_timeout_secs);
    connections.header_read_timeout = Duration::from_secs(args.header_read_timeout_secs);
    connections.idle_timeout = Duration::from_secs(args.idle_timeout_secs);
    connections.keep_alive_interval = Duration::from_secs(args.h2_keep_alive_secs);
    let needed = connections.max_connections + connections.operator_reserve + 256;
    if u64::try_from(needed).unwrap_or(u64::MAX) > nofile {
        tracing::warn!(
            nofile,
            max_connections = connections.max_connections,
            "--max-connections and the operator reserve exceed the open-file limit; accept will \
             back off when descriptors run out"
        );
    }
    let tls = match (args.plain_http, args.tls_cert, args.tls_key) {
        (true, _, _) => TlsMode::Plain,
        (false, Some(cert), Some(key)) => TlsMode::Files { cert, key },
        _ => TlsMode::SelfSigned,
    };
    let notify = args
        .notify_config
        .as_deref()
        .map(reference_server::notify::NotifyConfig::load)
        .transpose()?;
    if let Some(notify) = &notify {
        let names: Vec<&str> = notify.channels.keys().map(String::as_str).collect();
        tracing::info!(channels = ?names, "notification channels configured");
    } else {
        tracing::warn!("no --notify-config: alerts are recorded but not delivered");
    }
    let config = ServerConfig {
        notify,
        signed_orgs: reference_server::fleet::policies::SignedOrgs::new(args.require_signatures),
        approval_ttl: std::time::Duration::from_secs(args.approval_ttl_secs),
        listen: args.listen,
        data_dir: args.data_dir,
        tls,
        admin_token: args.admin_token.filter(|t| !t.is_empty()),
        keep_alive: std::time::Duration::from_secs(args.keep_alive_secs),
        stream_queue: usize::try_from(args.stream_queue).unwrap_or(16),
        database: args.database.map_or(Database::Sqlite, Database::Postgres),
        admission: AdmissionConfig {
            opening: usize::try_from(args.streams_opening).unwrap_or(256),
            per_second: args.stream_opens_per_sec,
        },
        metrics_listen: args.metrics_listen,
        connections,
        auth_failures_per_minute: args.auth_failures_per_minute,
        quotas: QuotaConfig {
            reports_per_minute: args.reports_per_minute,
            kib_per_hour: args.report_kib_per_hour,
            max_pending_approvals: args.max_pending_approvals,
        },
        never_block: args.never_block,
        ..ServerConfig::default()
    };
    let server = reference_server::start(config)
        .await
        .context("cannot start the server")?;
    if let Some(token) = server.generated_admin_token() {
        println!("admin token (shown once, keep it): {token}");
    }
    println!("listening on {}", server.base_url());
    if let Some(addr) = server.metrics_addr() {
        println!("metrics on http://{addr}/metrics");
    }
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("cannot watch SIGINT")?,
        _ = terminate.recv() => {}
    }
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`): text (colors only on a terminal),
/// where string fields are written quoted and escaped, or JSON objects, one per line. Every
/// user-controlled value is logged as a string field, never inside the message.
fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if format == "json" {
        logs.json().flatten_event(true).init();
    } else {
        logs.init();
    }
}
