//! `reference-server`: the policy API over HTTPS with SSE broadcast, backed by SQLite.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use reference_server::{ServerConfig, TlsMode};
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
    /// Seconds an approval request waits for a decision (and the approved action for its
    /// execution) before it expires.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    approval_ttl_secs: u64,
    /// Serve Prometheus metrics at `http://ADDR/metrics` (plain HTTP, no token; bind it to
    /// loopback or a monitoring network). Off by default.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
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
        metrics_listen: args.metrics_listen,
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
