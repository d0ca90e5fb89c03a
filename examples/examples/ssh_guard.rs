//! `ssh-guard`: sshd's log in, SSH brute-force sources blocked by a policy (a fail2ban for SSH).
//!
//! Replay a log (its own timestamps drive the windows), printing one action JSON per line:
//!
//! ```text
//! cargo run --release --example ssh-guard -- --log /var/log/auth.log
//! ```
//!
//! Guard a host: follow the log like `tail -F` (rotation, truncation), use the clock, and block
//! with nftables (or only print with `--dry-run`):
//!
//! ```text
//! cargo run --release --example ssh-guard -- --follow --log /var/log/auth.log --policy ssh.json
//! journalctl -f -o short-iso -u ssh | ssh-guard --follow --log -
//! ```

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::{DateTime, Datelike, Utc};
use clap::{Parser, ValueEnum};
use examples::SafetyArgs;
use policy_engine::executor::{Cidr, Executor, HostConfig, HostExecutor, describe};
use policy_engine::sshd::{
    DEFAULT_MAX_CONNECTIONS, LineFormat, LogFollower, SshdConfig, SshdTracker,
};
use policy_engine::{Engine, EngineConfig, Policy, PolicyVersion};

/// The API page's example policy: block a source after 50 SSH failures in an hour for 24h, and
/// alert when more than 5 critical threats arrive in an hour.
const DEFAULT_POLICY: &str = r#"{
  "name": "Block Brute Force Sources",
  "description": "Automatically block IPs after repeated SSH failures",
  "rules": [
    {
      "type": "block_ip",
      "config": { "trigger": "brute_force", "threshold": 50, "duration": "24h", "scope": "host" },
      "enabled": true
    },
    {
      "type": "alert_threshold",
      "config": { "severity": "critical", "countPerHour": 5, "notifyChannels": ["telegram", "email"] },
      "enabled": true
    }
  ]
}"#;

/// Blocks sources of SSH brute force found in sshd's log, as a policy says.
#[derive(Debug, Parser)]
#[command(name = "ssh-guard", version)]
struct Args {
    /// Policy JSON file (default: the API page's example policy, threshold 50 in 1h, 24h block).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Version the policy's actions are tagged with.
    #[arg(long, default_value = "v1")]
    policy_version: PolicyVersion,
    /// sshd's log: a file, or `-` for standard input.
    #[arg(long, default_value = "-")]
    log: String,
    /// Keep reading as the log grows (like `tail -F`), use the clock, and execute the actions.
    #[arg(long)]
    follow: bool,
    /// With --follow: print the actions instead of executing them.
    #[arg(long)]
    dry_run: bool,
    /// With --follow on a file: read the lines already in it first (default: only new lines).
    #[arg(long)]
    from_start: bool,
    /// Year of classic syslog timestamps, which carry none (default: the current year).
    #[arg(long)]
    year: Option<i32>,
    /// Envelope of the log lines: `syslog` (classic, RFC 3339, RFC 5424), `bare` (what
    /// `sshd -E FILE` writes), or `auto` (guessed from the first line).
    #[arg(long, value_enum, default_value_t = FormatArg::Auto)]
    format: FormatArg,
    /// Most sshd connections tracked at once.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Most source addresses each rule tracks at once.
    #[arg(long, default_value_t = EngineConfig::default().max_keys_per_rule)]
    max_keys: usize,
    /// Addresses or ranges never blocked (repeatable), e.g. your monitoring host.
    #[arg(long = "allow")]
    allow: Vec<Cidr>,
    /// Where the firewall keeps its journal of active blocks.
    #[arg(long, default_value = "/var/lib/ssh-guard")]
    state_dir: PathBuf,
    /// nftables table the blocks go into.
    #[arg(long, default_value = "ssh_guard")]
    nft_table: String,
    /// How to run `nft`, e.g. `--nft-command "ip netns exec ns1 nft"`.
    #[arg(long)]
    nft_command: Option<String>,
    /// With --follow on a file: how often to look for new lines, in milliseconds.
    #[arg(long, default_value_t = 200)]
    poll_ms: u64,
    #[command(flatten)]
    safety: SafetyArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FormatArg {
    Auto,
    Syslog,
    Bare,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let policy = match &args.policy {
        Some(path) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read `{}`", path.display()))?;
            Policy::from_json(&bytes)
                .with_context(|| format!("invalid policy `{}`", path.display()))?
        }
        None => Policy::from_json(DEFAULT_POLICY.as_bytes()).context("the built-in policy")?,
    };
    let engine_config = EngineConfig {
        max_keys_per_rule: args.max_keys,
        ..EngineConfig::default()
    };
    let sshd_config = SshdConfig {
        format: match args.format {
            FormatArg::Auto => None,
            FormatArg::Syslog => Some(LineFormat::Syslog),
            FormatArg::Bare => Some(LineFormat::Bare),
        },
        max_connections: args.max_connections,
        ..SshdConfig::for_year(args.year.unwrap_or_else(|| Utc::now().year()))
    };
    let executor = if args.follow && !args.dry_run {
        Some(open_executor(&args)?)
    } else {
        None
    };
    let mut guard = Guard {
        tracker: SshdTracker::new(sshd_config),
        engine: Engine::new(policy, args.policy_version, engine_config),
        out: BufWriter::new(io::stdout().lock()),
        executor,
        wall_clock: args.follow,
        last_time: None,
        actions: 0,
    };
    let started = Instant::now();
    let result = if args.follow && args.log != "-" {
        guard.follow_file(&args)
    } else {
        let input: Box<dyn Read> = if args.log == "-" {
            Box::new(io::stdin().lock())
        } else {
            Box::new(File::open(&args.log).with_context(|| format!("cannot open `{}`", args.log))?)
        };
        guard.read_all(BufReader::with_capacity(256 * 1024, input))
    };
    guard
        .out
        .flush()
        .context("cannot write to standard output")?;
    guard.summary(started.elapsed());
    result
}

fn open_executor(args: &Args) -> Result<HostExecutor> {
    let safety = args.safety.load()?;
    let mut config = HostConfig::new(&args.state_dir, Vec::new())
        .with_allowlist(args.allow.clone())
        .with_safety(safety);
    if let Some(command) = &args.nft_command {
        config = config.with_nft_command(command.split_whitespace().map(str::to_owned).collect());
    }
    config.firewall.table = args.nft_table.clone();
    config.isolation.table = format!("{}_isolation", args.nft_table);
    HostExecutor::open(config).context("cannot set up the firewall")
}

/// The whole path: line -> attempt -> event -> engine -> actions -> stdout (and the host).
struct Guard<W: Write> {
    tracker: SshdTracker,
    engine: Engine,
    out: W,
    executor: Option<HostExecutor>,
    /// Follow mode: the clock, not the log, says what time it is.
    wall_clock: bool,
    last_time: Option<DateTime<Utc>>,
    actions: u64,
}

impl<W: Write> Guard<W> {
    fn read_all(&mut self, mut input: impl BufRead) -> Result<()> {
        let mut line = Vec::with_capacity(1024);
        loop {
            line.clear();
            if input
                .read_until(b'\n', &mut line)
                .context("cannot read the log")?
                == 0
            {
                return Ok(());
            }
            self.line(&line)?;
        }
    }

    fn follow_file(&mut self, args: &Args) -> Result<()> {
        let mut follower = LogFollower::open(&args.log, args.from_start)?;
        eprintln!("ssh-guard: following `{}`", follower.path().display());
        let mut last_upkeep = Instant::now();
        loop {
            let mut failure = None;
            let read = follower.poll(|line| {
                if failure.is_none() {
                    failure = self.line(line).err();
                }
            })?;
            if let Some(e) = failure {
                return Err(e);
            }
            if last_upkeep.elapsed() >= Duration::from_secs(10) {
                last_upkeep = Instant::now();
                if let Some(executor) = self.executor.as_mut() {
                    for outcome in executor.maintain(Duration::ZERO) {
                        eprintln!("ssh-guard: upkeep: {outcome}");
                    }
                }
            }
            if read == 0 {
                std::thread::sleep(Duration::from_millis(args.poll_ms));
            }
        }
    }

    fn line(&mut self, line: &[u8]) -> Result<()> {
        let Some(attempt) = self.tracker.feed_bytes(line) else {
            return Ok(());
        };
        let event = attempt.into_event();
        let now = if self.wall_clock {
            Utc::now()
        } else {
            // Replay: the log's time; lines without one (bare `sshd -E` logs) take the last
            // time seen, or the clock when none was.
            event.timestamp.or(self.last_time).unwrap_or_else(Utc::now)
        };
        self.last_time = Some(now);
        let evaluation = self.engine.process(&event, now);
        for record in &evaluation.actions {
            self.actions += 1;
            serde_json::to_writer(&mut self.out, record)
                .context("cannot write to standard output")?;
            self.out
                .write_all(b"\n")
                .context("cannot write to standard output")?;
            if self.wall_clock {
                self.out
                    .flush()
                    .context("cannot write to standard output")?;
            }
            if let Some(executor) = self.executor.as_mut() {
                let outcome = executor.execute(record);
                eprintln!("ssh-guard: {}: {outcome}", describe(&record.action));
            }
        }
        Ok(())
    }

    fn summary(&self, elapsed: Duration) {
        let sshd = self.tracker.stats();
        let engine = self.engine.stats();
        let secs = elapsed.as_secs_f64().max(1e-9);
        eprintln!(
            "ssh-guard: {} lines read ({} from sshd), {} attempts found, {} IPs tracked, {} actions \
             ({} block_ip, {} alert), {} connections dropped at the cap, {} keys evicted, \
             {:.3}s ({:.0} lines/s)",
            sshd.lines,
            sshd.sshd_lines,
            sshd.attempts,
            engine.tracked_keys,
            self.actions,
            engine.actions.block_ip,
            engine.actions.alert,
            sshd.evicted,
            engine.evictions,
            elapsed.as_secs_f64(),
            sshd.lines as f64 / secs,
        );
    }
}
