//! `agent`: the reference agent, a command line over `policy_engine::agent::Agent`. It follows
//! the policy server, reads threat events (JSON Lines from stdin or a followed file, or an
//! OpenSSH log), prints each action as JSON on stdout, carries it out (unless `--dry-run`) and
//! reports it through a durable outbox. Logs go to stderr (`RUST_LOG=debug` for more).
//! See the README's "The reference agent" for how to run it.

use std::io::{self, IsTerminal};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use examples::{SafetyArgs, secs};
use policy_engine::EngineConfig;
use policy_engine::agent::{self, Agent, Enrollment, Source};
use policy_engine::signing::PublicKey;
use policy_engine::sync::TlsTrust;
use tracing_subscriber::EnvFilter;

/// The reference agent: policies from the server, events from a file or stdin, actions out.
#[derive(Debug, Parser)]
#[command(name = "agent", version)]
struct Args {
    /// Policy server, `https://host:port`.
    #[arg(long, env = "POLICY_SERVER")]
    server: String,
    /// This agent's token (default: the one `--enroll` stored in the state dir).
    #[arg(long, env = "POLICY_AGENT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// This agent's id (default: the stored one, else the server tells it from the token).
    #[arg(long)]
    agent_id: Option<String>,
    /// Directory for the last good policy, credentials, outbox and executor state.
    #[arg(long)]
    state_dir: PathBuf,
    /// PEM file of the CA (or self-signed certificate) the server's certificate chains to.
    #[arg(long, conflicts_with = "insecure")]
    ca_cert: Option<PathBuf>,
    /// Accept any server certificate (lab setups only).
    #[arg(long)]
    insecure: bool,
    /// JSON Lines events: a file to follow, or `-` for stdin (the agent stops at its end).
    #[arg(long, default_value = "-")]
    events: PathBuf,
    /// Follow an OpenSSH log instead: each failed authentication is a `brute_force` event.
    #[arg(long, value_name = "FILE")]
    sshd_log: Option<PathBuf>,
    /// When following a file, read the lines already in it too.
    #[arg(long)]
    from_start: bool,
    /// Print and report actions without carrying them out.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    safety: SafetyArgs,
    /// Run only policies signed by this operator key (PEM; repeat during a key rotation).
    #[arg(long, value_name = "FILE")]
    policy_key: Vec<PathBuf>,
    /// The org signatures must be for (default: the org stored at enrollment).
    #[arg(long, value_name = "ORG")]
    policy_org: Option<String>,
    /// Seconds between heartbeats.
    #[arg(long, default_value = "30", value_parser = secs)]
    heartbeat_secs: Duration,
    /// Longest reconnect (and report resend) delay, in seconds.
    #[arg(long, default_value = "30", value_parser = secs)]
    max_backoff_secs: Duration,
    /// With no policy on disk, seconds to wait for the server's before reading events.
    #[arg(long, default_value = "10", value_parser = secs)]
    first_policy_wait_secs: Duration,
    /// Seconds one `nft` run may take before it is killed and its action fails.
    #[arg(long, default_value = "30", value_parser = secs)]
    command_timeout_secs: Duration,
    /// Per-rule cap on tracked keys (source IPs).
    #[arg(long, default_value_t = EngineConfig::default().max_keys_per_rule)]
    max_keys_per_rule: usize,
    /// Enroll first with an admin token, store the new id and token in the state dir.
    #[arg(long, requires = "admin_token")]
    enroll: bool,
    /// Admin token for `--enroll`.
    #[arg(long, env = "POLICY_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Hostname to enroll under (default: this host's name).
    #[arg(long)]
    hostname: Option<String>,
    /// Org to enroll into (default: the admin token's).
    #[arg(long)]
    org_id: Option<String>,
    /// Serve Prometheus metrics at `http://ADDR/metrics` (plain HTTP, no token; bind it to
    /// loopback or the monitoring network). Off by default.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let result = run(Args::parse()).await;
    if let Err(err) = &result {
        eprintln!("agent: error: {err:#}");
    }
    // Exit at once: neither a source blocked on stdin nor an action past its deadline holds it.
    std::process::exit(i32::from(result.is_err()));
}

async fn run(args: Args) -> Result<()> {
    // The host's own safety settings, checked before anything else (dry runs too).
    let safety = args.safety.load()?.with_agent_path(&args.state_dir);
    let keys: Vec<PublicKey> = args
        .policy_key
        .iter()
        .map(|p| PublicKey::from_file(p))
        .collect::<Result<_, _>>()?;
    let source = match args.sshd_log {
        Some(path) => Source::SshdLog {
            path,
            from_start: args.from_start,
        },
        None => Source::json_lines(args.events, args.from_start),
    };
    let host = agent::host_config(&args.server, &args.state_dir).with_safety(safety);
    let mut builder = Agent::builder(&args.server, &args.state_dir)
        .credentials(args.token, args.agent_id)
        .trust(TlsTrust::choose(args.ca_cert, args.insecure))
        .heartbeat_interval(args.heartbeat_secs)
        .max_backoff(args.max_backoff_secs)
        .first_policy_wait(args.first_policy_wait_secs)
        .max_keys_per_rule(args.max_keys_per_rule)
        .source(source)
        .host_executor(host.with_command_timeout(args.command_timeout_secs))
        .dry_run(args.dry_run)
        .policy_keys(keys)
        .policy_org(args.policy_org)
        .print_actions(io::BufWriter::with_capacity(64 * 1024, io::stdout()));
    if let Some(addr) = args.metrics_listen {
        builder = builder.metrics_listen(addr);
    }
    if let (true, Some(admin)) = (args.enroll, args.admin_token) {
        builder = builder.enroll_first(Enrollment::new(admin, args.hostname, args.org_id));
    }
    let started = builder.start().await?;
    started.run_until(agent::terminated()).await?;
    Ok(())
}
