//! `agent`: the reference agent. It stays in sync with the policy server, reads threat events
//! as JSON Lines, runs them through the engine and hands the actions to an executor.
//!
//! ```text
//! # enroll once (stores the agent id and token in the state dir), then run:
//! cargo run --release --example agent -- --server https://127.0.0.1:8443 \
//!     --ca-cert data/tls/cert.pem --state-dir /var/lib/policy-agent \
//!     --enroll --admin-token "$POLICY_ADMIN_TOKEN" --hostname web-1 --dry-run < events.jsonl
//! # later runs reuse the stored credentials; follow a file as it grows:
//! cargo run --release --example agent -- --server https://127.0.0.1:8443 \
//!     --ca-cert data/tls/cert.pem --state-dir /var/lib/policy-agent --events /var/log/threats.jsonl
//! ```
//!
//! Each action is printed to stdout as the contract's action JSON, one per line; logs go to
//! stderr (`RUST_LOG=debug` for more). Without `--dry-run` actions are carried out on the host
//! by `HostExecutor` (nftables, signals, quarantine, isolation; needs root).

#[path = "agent_support/fleet.rs"]
mod fleet;
#[path = "agent_support/pipeline.rs"]
mod pipeline;

use std::fs;
use std::io::{self, BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use policy_engine::EngineConfig;
use policy_engine::executor::{HostConfig, HostExecutor, Outcome, RecordingExecutor, SafetyConfig};
use policy_engine::sshd::{LogFollower, SshdConfig, SshdTracker};
use policy_engine::sync::{
    ApiClient, FleetEvents, LiveEngine, PolicySync, Reporter, SyncConfig, TlsTrust,
};
use serde_json::json;

use pipeline::{AgentExecutor, Pipeline, Shared};

/// The reference agent: policies from the server, events from a file or stdin, actions out.
#[derive(Debug, Parser)]
#[command(name = "agent", version)]
struct Args {
    /// Policy server, `https://host:port`.
    #[arg(long, env = "POLICY_SERVER")]
    server: String,
    /// This agent's token (default: the one stored by `--enroll` in the state dir).
    #[arg(long, env = "POLICY_AGENT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// This agent's id (default: the one stored by `--enroll` in the state dir).
    #[arg(long)]
    agent_id: Option<String>,
    /// Directory for the last known good policy, credentials and executor state.
    #[arg(long)]
    state_dir: PathBuf,
    /// PEM file with the CA (or the self-signed certificate) the server's certificate must
    /// chain to.
    #[arg(long, conflicts_with = "insecure")]
    ca_cert: Option<PathBuf>,
    /// Accept any server certificate (lab setups only).
    #[arg(long)]
    insecure: bool,
    /// Threat events as JSON Lines: a file to follow as it grows, or `-` for stdin (the agent
    /// stops at the end of stdin).
    #[arg(long, default_value = "-")]
    events: PathBuf,
    /// Follow an OpenSSH log (syslog, RFC 3339 or `sshd -E` lines) as the event source instead
    /// of JSON Lines: every failed SSH authentication attempt becomes a `brute_force` event.
    #[arg(long, value_name = "FILE")]
    sshd_log: Option<PathBuf>,
    /// When following a file, read the lines already in it too.
    #[arg(long)]
    from_start: bool,
    /// Print actions without carrying them out.
    #[arg(long)]
    dry_run: bool,
    /// The host's safety file (TOML, or JSON): paths and processes no action may touch, added
    /// to the built-in defaults (README, "What actions never touch").
    #[arg(long, value_name = "FILE")]
    safety_config: Option<PathBuf>,
    /// A path prefix no file is quarantined under (repeatable).
    #[arg(long, value_name = "PATH")]
    protect_path: Vec<PathBuf>,
    /// A process never killed: its executable's path, or a name (repeatable).
    #[arg(long, value_name = "EXE|NAME")]
    protect_process: Vec<String>,
    /// Seconds between heartbeats.
    #[arg(long, default_value_t = 30.0)]
    heartbeat_secs: f64,
    /// Longest reconnect delay, in seconds.
    #[arg(long, default_value_t = 30.0)]
    max_backoff_secs: f64,
    /// With no policy on disk (a first start), how long to wait for the server's policy before
    /// reading events, in seconds; events that arrive meanwhile wait in their pipe or file.
    #[arg(long, default_value_t = 10.0)]
    first_policy_wait_secs: f64,
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
}

/// Credentials from enrollment, kept in the state dir (mode 0600).
const CREDENTIALS_FILE: &str = "agent.json";

/// Longest wait at exit for the last action reports to reach the server.
const REPORT_DRAIN: Duration = Duration::from_secs(5);

fn main() {
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    if let Err(err) = run(Args::parse()) {
        eprintln!("agent: error: {err:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    // The host's own safety settings, checked before anything else (dry runs too).
    let safety = SafetyConfig::load(
        args.safety_config.as_deref(),
        &args.protect_path,
        &args.protect_process,
    )?
    .with_agent_path(&args.state_dir);
    let trust = match (&args.ca_cert, args.insecure) {
        (Some(path), _) => TlsTrust::CaFile(path.clone()),
        (None, true) => TlsTrust::Insecure,
        (None, false) => TlsTrust::WebPki,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("cannot create state dir `{}`", args.state_dir.display()))?;

    if args.enroll {
        runtime.block_on(enroll(&args, &trust))?;
    }
    let (agent_id, token) = credentials(&args)?;

    let mut config = SyncConfig::new(&args.server, &agent_id, token, &args.state_dir);
    config.trust = trust;
    config.heartbeat_interval = seconds("--heartbeat-secs", args.heartbeat_secs)?;
    config.backoff.max = seconds("--max-backoff-secs", args.max_backoff_secs)?;
    // Fleet loop: server events to the executor, action reports to the server.
    let (fleet_events, fleet_queue) = FleetEvents::channel(256);
    config.fleet = Some(fleet_events);
    let reporter = Reporter::new(
        ApiClient::new(&args.server, &config.trust)?,
        &agent_id,
        &config.token,
    );
    let live = LiveEngine::new(EngineConfig {
        max_keys_per_rule: args.max_keys_per_rule,
        ..EngineConfig::default()
    });
    let first_policy_wait = seconds("--first-policy-wait-secs", args.first_policy_wait_secs)?;
    let sync = runtime.block_on(PolicySync::start(config, live.clone()))?;
    if live.version().is_none() {
        // A first start: events read now would meet no rules at all.
        tracing::info!(wait = ?first_policy_wait, "no policy yet; waiting for the server's");
        let mut status = live.subscribe();
        let arrived = runtime.block_on(async {
            tokio::time::timeout(first_policy_wait, status.wait_for(|s| s.applied.is_some())).await
        });
        if !matches!(arrived, Ok(Ok(_))) {
            tracing::warn!(
                "no policy after {first_policy_wait:?}; reading events anyway, nothing is enforced until one arrives"
            );
        }
    }
    tracing::info!(agent = %agent_id, server = %args.server, policy = ?live.version(), "agent started");

    let executor: Box<dyn AgentExecutor> = if args.dry_run {
        Box::new(RecordingExecutor::new())
    } else {
        Box::new(open_host_executor(&args, safety)?)
    };
    let executor = Shared::new(executor);
    spawn_upkeep(executor.clone(), live.clone());
    let (executor, reports) = {
        let _runtime = runtime.enter();
        fleet::start(executor, &args.state_dir, reporter, fleet_queue)
    };

    let out = BufWriter::with_capacity(64 * 1024, io::stdout().lock());
    let mut pipeline = Pipeline::new(live, executor, out);
    let result = if let Some(log) = &args.sshd_log {
        follow_sshd_log(&mut pipeline, log, args.from_start)
    } else if args.events == Path::new("-") {
        read_stdin(&mut pipeline)
    } else {
        follow_file(&mut pipeline, &args)
    };
    let flushed = pipeline.flush().context("cannot write to standard output");
    let stats = pipeline.stats;
    tracing::info!(
        lines = stats.lines,
        events = stats.events,
        bad_lines = stats.bad_lines,
        actions = stats.actions,
        "events done"
    );
    // Dropping the pipeline closes the report queue; send what is in it before exiting.
    drop(pipeline);
    runtime.block_on(reports.finish(REPORT_DRAIN));
    runtime.block_on(sync.shutdown());
    result.and(flushed)
}

impl AgentExecutor for Box<dyn AgentExecutor> {
    fn maintain(&mut self, unreachable_for: Duration) -> Vec<Outcome> {
        (**self).maintain(unreachable_for)
    }

    fn acts(&self) -> bool {
        (**self).acts()
    }

    fn unblock(&mut self, ip: std::net::IpAddr) -> Outcome {
        (**self).unblock(ip)
    }
}

impl AgentExecutor for HostExecutor {
    fn maintain(&mut self, unreachable_for: Duration) -> Vec<Outcome> {
        HostExecutor::maintain(self, unreachable_for)
    }

    fn unblock(&mut self, ip: std::net::IpAddr) -> Outcome {
        match self.firewall().unblock(ip) {
            Ok(true) => Outcome::done(format!("unblocked `{ip}`")),
            Ok(false) => Outcome::skipped(format!("`{ip}` was not blocked")),
            Err(err) => Outcome::failed(err.to_string()),
        }
    }

    fn acts(&self) -> bool {
        true
    }
}

fn open_host_executor(args: &Args, safety: SafetyConfig) -> Result<HostExecutor> {
    // Isolation keeps the management server reachable: resolve its addresses now.
    let management = server_addrs(&args.server);
    let config = HostConfig::new(args.state_dir.join("host"), management).with_safety(safety);
    HostExecutor::open(config).context(
        "cannot set up the host executor (it needs root and nftables); use --dry-run to only print actions",
    )
}

fn server_addrs(server: &str) -> Vec<SocketAddr> {
    let rest = server.split_once("://").map_or(server, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_owned()
    } else {
        format!("{authority}:443")
    };
    with_port
        .to_socket_addrs()
        .map(Iterator::collect)
        .unwrap_or_default()
}

/// Every few seconds: executor upkeep, with the time since the server last answered.
fn spawn_upkeep(mut executor: Shared<Box<dyn AgentExecutor>>, live: LiveEngine) {
    let started = Instant::now();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_secs(5));
            let status = live.status();
            let unreachable_for = if status.connected {
                Duration::ZERO
            } else {
                status
                    .last_contact
                    .map_or_else(|| started.elapsed(), |t| t.elapsed())
            };
            for outcome in executor.maintain(unreachable_for) {
                tracing::info!(%outcome, "executor upkeep");
            }
        }
    });
}

fn read_stdin<E: AgentExecutor, W: Write>(pipeline: &mut Pipeline<E, W>) -> Result<()> {
    let mut input = BufReader::with_capacity(256 * 1024, io::stdin().lock());
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        let read = match input.read_until(b'\n', &mut line) {
            Ok(read) => read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err).context("cannot read events from stdin"),
        };
        if read == 0 {
            return Ok(());
        }
        pipeline
            .line(&line)
            .context("cannot write to standard output")?;
        // Print actions as soon as no more input is waiting: prompt when events trickle in,
        // batched when they stream.
        if input.buffer().is_empty() {
            pipeline
                .flush()
                .context("cannot write to standard output")?;
        }
    }
}

fn follow_file<E: AgentExecutor, W: Write>(
    pipeline: &mut Pipeline<E, W>,
    args: &Args,
) -> Result<()> {
    follow(pipeline, &args.events, args.from_start, |pipeline, line| {
        pipeline.line(line)
    })
}

/// The SSH guard as one more event source: sshd's log lines in, one `brute_force` event per
/// failed authentication attempt into the same engine and executor.
fn follow_sshd_log<E: AgentExecutor, W: Write>(
    pipeline: &mut Pipeline<E, W>,
    log: &Path,
    from_start: bool,
) -> Result<()> {
    let mut tracker = SshdTracker::new(SshdConfig::default());
    follow(pipeline, log, from_start, |pipeline, line| {
        match tracker.feed_bytes(line) {
            Some(attempt) => pipeline.event(&attempt.into_event()),
            None => Ok(()),
        }
    })
}

/// Follows `path` like `tail -F`, handing each line to `handle`; only a failure to write the
/// output ends it.
fn follow<E: AgentExecutor, W: Write>(
    pipeline: &mut Pipeline<E, W>,
    path: &Path,
    from_start: bool,
    mut handle: impl FnMut(&mut Pipeline<E, W>, &[u8]) -> io::Result<()>,
) -> Result<()> {
    let mut follower = LogFollower::open(path, from_start)?;
    tracing::info!(path = %follower.path().display(), "following events");
    loop {
        let mut failure = None;
        let read = follower.poll(|line| {
            if failure.is_none() {
                failure = handle(pipeline, line).err();
            }
        })?;
        if let Some(err) = failure {
            return Err(err).context("cannot write to standard output");
        }
        pipeline
            .flush()
            .context("cannot write to standard output")?;
        if read == 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

async fn enroll(args: &Args, trust: &TlsTrust) -> Result<()> {
    let Some(admin_token) = &args.admin_token else {
        bail!("--enroll needs --admin-token (or POLICY_ADMIN_TOKEN)");
    };
    let hostname = match &args.hostname {
        Some(name) => name.clone(),
        None => fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_owned())
            .context("cannot read this host's name; pass --hostname")?,
    };
    let client = ApiClient::new(&args.server, trust)?;
    let enrollment = client
        .enroll(admin_token, &hostname, args.org_id.as_deref())
        .await
        .context("enrollment failed")?;
    let path = args.state_dir.join(CREDENTIALS_FILE);
    let text = json!({"agentId": enrollment.agent_id, "token": enrollment.token}).to_string();
    write_private(&path, text.as_bytes())
        .with_context(|| format!("cannot store the credentials in `{}`", path.display()))?;
    tracing::info!(agent = %enrollment.agent_id, hostname, credentials = %path.display(), "enrolled");
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let temp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&temp, path)
}

/// The agent id and token: from the flags, else from the credentials file of `--enroll`.
fn credentials(args: &Args) -> Result<(String, String)> {
    let path = args.state_dir.join(CREDENTIALS_FILE);
    let stored = match fs::read(&path) {
        Ok(bytes) => {
            let value: serde_json::Value = serde_json::from_slice(&bytes)
                .with_context(|| format!("`{}` is not JSON", path.display()))?;
            let field = |name: &str| value.get(name).and_then(|v| v.as_str()).map(str::to_owned);
            Some((field("agentId"), field("token")))
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => None,
        Err(err) => return Err(err).with_context(|| format!("cannot read `{}`", path.display())),
    };
    let (stored_id, stored_token) = stored.unwrap_or((None, None));
    let from_enroll = args.enroll.then_some(());
    let agent_id = from_enroll
        .and(stored_id.clone())
        .or_else(|| args.agent_id.clone())
        .or(stored_id);
    let token = from_enroll
        .and(stored_token.clone())
        .or_else(|| args.token.clone())
        .or(stored_token);
    match (agent_id, token) {
        (Some(id), Some(token)) => Ok((id, token)),
        _ => bail!(
            "no agent credentials: pass --agent-id and --token, or enroll with --enroll --admin-token"
        ),
    }
}

fn seconds(flag: &str, value: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("{flag}: expected a positive number of seconds, found `{value}`"))
}
