//! Operator commands for what the executors left on a host: list and restore quarantined
//! files, list and lift firewall blocks, release an isolation.
//!
//! `cargo run -p examples --example executor_ctl -- --help`. Point `--state-dir` at the agent's
//! state directory (the layout of `HostConfig::new`: `firewall/`, `isolation/`, `quarantine/`).

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use policy_engine::PolicyDuration;
use policy_engine::executor::{
    Firewall, FirewallConfig, Isolation, IsolationConfig, Quarantine, QuarantineConfig,
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
    }
    Ok(())
}
