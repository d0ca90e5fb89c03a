//! Operator commands for what the executors left on a host: list and restore quarantined
//! files, list and lift firewall blocks, release an isolation; and `protected`, which says
//! what `kill_process` and `quarantine_file` would refuse on this host.
//!
//! `cargo run -p examples --example executor_ctl -- --help`. Point `--state-dir` at the agent's
//! state directory (the layout of `HostConfig::new`: `firewall/`, `isolation/`, `quarantine/`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Parser, Subcommand};
use policy_engine::PolicyDuration;
use policy_engine::executor::{
    Firewall, FirewallConfig, Isolation, IsolationConfig, Protection, Quarantine, QuarantineConfig,
    SafetyConfig,
};

#[derive(Parser)]
#[command(about = "Inspect and undo what the policy-engine executors did on this host")]
struct Args {
    /// The agent's state directory.
    #[arg(long, default_value = "/var/lib/policy-agent")]
    state_dir: PathBuf,
    /// How to run nft, e.g. `ip netns exec ns1 nft`.
    #[arg(long, default_value = "nft")]
    nft: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List quarantined files.
    Quarantined,
    /// Put a quarantined file back where it was.
    Restore {
        /// The entry's id, from `quarantined`.
        id: String,
    },
    /// List active firewall blocks.
    Blocks,
    /// Block an address by hand.
    Block {
        /// The address.
        ip: IpAddr,
        /// `30s`, `24h`, `permanent`...
        #[arg(long, default_value = "24h")]
        duration: PolicyDuration,
    },
    /// Lift a block.
    Unblock {
        /// The address.
        ip: IpAddr,
    },
    /// Say whether the host is isolated.
    Isolated,
    /// End an isolation.
    Release,
    /// Say whether the agent would refuse to kill each PID or quarantine each path given, and
    /// why; with none, list what is protected.
    Protected {
        /// The host's safety file, as given to the agent.
        #[arg(long, value_name = "FILE")]
        safety_config: Option<PathBuf>,
        /// A protected path prefix, as given to the agent (repeatable).
        #[arg(long, value_name = "PATH")]
        protect_path: Vec<PathBuf>,
        /// A protected process, as given to the agent (repeatable).
        #[arg(long, value_name = "EXE|NAME")]
        protect_process: Vec<String>,
        /// PIDs and absolute paths.
        targets: Vec<String>,
    },
}

fn main() -> Result<()> {
    let args = Args::parse();
    let nft: Vec<String> = args.nft.split_whitespace().map(str::to_owned).collect();
    let quarantine = || {
        Quarantine::new(QuarantineConfig {
            dir: args.state_dir.join("quarantine"),
        })
    };
    let firewall = || {
        let mut config = FirewallConfig::new(args.state_dir.join("firewall"));
        config.command = nft.clone();
        Firewall::open(config)
    };
    let isolation = || {
        let mut config = IsolationConfig::new(args.state_dir.join("isolation"), vec![]);
        config.command = nft.clone();
        Isolation::new(config)
    };
    match args.command {
        Cmd::Quarantined => {
            for e in quarantine().list()? {
                println!(
                    "{}  {}  {} bytes  mode {:o}  uid {}  sha256 {}  at {}",
                    e.id,
                    e.original_path.display(),
                    e.size,
                    e.mode,
                    e.uid,
                    e.sha256,
                    e.quarantined_at
                );
            }
        }
        Cmd::Restore { id } => {
            let entry = quarantine().restore(&id)?;
            println!("restored `{}`", entry.original_path.display());
        }
        Cmd::Blocks => {
            for block in firewall()?.active() {
                match block.until {
                    Some(until) => println!("{}  until {until}", block.ip),
                    None => println!("{}  permanent", block.ip),
                }
            }
        }
        Cmd::Block { ip, duration } => println!("{}", firewall()?.block(ip, duration)),
        Cmd::Unblock { ip } => {
            if firewall()?.unblock(ip)? {
                println!("unblocked `{ip}`");
            } else {
                println!("`{ip}` was not blocked");
            }
        }
        Cmd::Isolated => println!("{}", isolation()?.is_isolated()),
        Cmd::Release => {
            if isolation()?.release()? {
                println!("released the isolation");
            } else {
                println!("the host was not isolated");
            }
        }
        Cmd::Protected {
            safety_config,
            protect_path,
            protect_process,
            targets,
        } => {
            let config =
                SafetyConfig::load(safety_config.as_deref(), &protect_path, &protect_process)?
                    .with_agent_path(&args.state_dir);
            let protection = Protection::new(&config)?;
            if targets.is_empty() {
                print_protected(&config);
            }
            for target in targets {
                let refusal = match target.parse::<u32>() {
                    Ok(pid) => protection.process_refusal(pid),
                    Err(_) => protection.file_refusal(Path::new(&target)),
                };
                match refusal {
                    Some(why) => println!("{target}: refused: {why}"),
                    None => println!("{target}: not protected"),
                }
            }
        }
    }
    Ok(())
}

/// The protections in force besides the floor, one `kind value` per line.
fn print_protected(config: &SafetyConfig) {
    let lists: [(&str, Vec<String>); 6] = [
        ("path", shown(&config.protected_paths)),
        ("allowed-path", shown(&config.allowed_paths)),
        ("agent-path", shown(&config.agent_paths)),
        ("executable", shown(&config.protected_executables)),
        ("name", config.protected_names.clone()),
        ("master", config.protected_masters.clone()),
    ];
    for (kind, values) in lists {
        for value in values {
            println!("{kind} {value}");
        }
    }
}

fn shown(paths: &[PathBuf]) -> Vec<String> {
    paths.iter().map(|p| p.display().to_string()).collect()
}
