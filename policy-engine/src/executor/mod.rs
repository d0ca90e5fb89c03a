//! Executors: the edge where actions meet the host (nftables blocks, kill, quarantine, isolation).
//!
//! The engine decides; an [`Executor`] acts. [`RecordingExecutor`] records actions for tests and
//! dry runs; on Linux, `HostExecutor` dispatches each action to a component that owns one kind
//! of side effect:
//!
//! - `Firewall`: `block_ip` through an nftables table with IPv4 and IPv6 sets whose elements
//!   carry their own timeouts, so expiry happens in the kernel even if the agent dies;
//! - `ProcessKiller`: `kill_process` with SIGTERM, then SIGKILL after a grace period;
//! - `Quarantine`: `quarantine_file` into a 0700 directory with a manifest, and `restore`;
//! - `Isolation`: `isolate_host` through a second table that drops everything but loopback and
//!   the management server, and `release`.
//!
//! Refusals (an allowlisted address, PID 1, a path under `/proc`) come back as
//! [`Outcome::Skipped`] with the reason; nothing is silently dropped.
//!
//! # What the host protects
//!
//! `kill_process` and `quarantine_file` act on whatever an event names, and a detector or a
//! policy can be wrong. `SafetyConfig` is the host's own list of what no action may touch
//! (system paths, the agent's files, `sshd`'s listener, systemd, container runtimes...), with
//! safe defaults and a file only the host reads; `Protection` is its compiled form, which the
//! killer and the quarantine consult at the moment they act. Nothing from the server reaches
//! it: an approved action for a protected target is refused on the host like any other.
//!
//! # Plugging it into an agent
//!
//! One [`Executor`] trait serves every action an agent carries out: the engine's own, fleet
//! blocks pushed by the server, approved actions, and lifting a fleet block
//! ([`Executor::unblock`]). Its methods take `&self` and may block (they run `nft`, wait for a
//! process to die, copy a file), so an agent calls them off its async workers and may call them
//! from several threads at once; `HostExecutor` keeps one lock per component, so a kill waiting
//! out its grace period never holds up a block. The agent runtime (`policy_engine::agent`,
//! feature `agent`) does all of that, with a deadline per action, and calls
//! [`Executor::maintain`] every few seconds with the time since the management server was
//! last reachable: the host executor recreates flushed nftables tables and releases an
//! isolation after the configured time without the server. Every `nft` run has a timeout
//! ([`Nft`]): a hung `nft` is killed and its action fails.
//!
//! ```no_run
//! # #[cfg(target_os = "linux")] {
//! use std::sync::Arc;
//! use policy_engine::executor::{Executor, HostConfig, HostExecutor, RecordingExecutor};
//! let dry_run = false;
//! let executor: Arc<dyn Executor> = if dry_run {
//!     Arc::new(RecordingExecutor::new())
//! } else {
//!     let config = HostConfig::new("/var/lib/policy-agent", vec!["192.0.2.10:8443".parse().unwrap()]);
//!     Arc::new(HostExecutor::open(config).unwrap())
//! };
//! # }
//! ```

mod cidr;
mod outcome;
mod recording;

#[cfg(target_os = "linux")]
pub(crate) mod durable;
#[cfg(target_os = "linux")]
mod firewall;
#[cfg(target_os = "linux")]
mod host;
#[cfg(target_os = "linux")]
mod isolation;
#[cfg(target_os = "linux")]
mod journal;
#[cfg(target_os = "linux")]
mod nft;
#[cfg(target_os = "linux")]
mod process;
#[cfg(target_os = "linux")]
mod procfs;
#[cfg(target_os = "linux")]
mod protect;
#[cfg(target_os = "linux")]
mod quarantine;
#[cfg(target_os = "linux")]
mod relocate;
#[cfg(target_os = "linux")]
mod safety;

pub use cidr::{Allowlist, Cidr, CidrError};
pub use outcome::Outcome;
pub use recording::RecordingExecutor;

#[cfg(target_os = "linux")]
pub use firewall::{ActiveBlock, Firewall, FirewallConfig, FirewallError};
#[cfg(target_os = "linux")]
pub use host::{CustomHandler, HostConfig, HostError, HostExecutor};
#[cfg(target_os = "linux")]
pub use isolation::{Isolation, IsolationConfig, IsolationError};
#[cfg(target_os = "linux")]
pub use nft::{DEFAULT_COMMAND_TIMEOUT, Nft, NftError};
#[cfg(target_os = "linux")]
pub use process::{KillConfig, ProcessKiller};
#[cfg(target_os = "linux")]
pub use protect::Protection;
#[cfg(target_os = "linux")]
pub use quarantine::{ManifestEntry, Quarantine, QuarantineConfig, QuarantineError};
#[cfg(target_os = "linux")]
pub use safety::{
    DEFAULT_PROTECTED_MASTERS, DEFAULT_PROTECTED_NAMES, DEFAULT_PROTECTED_PATHS, SafetyConfig,
    SafetyError,
};

use std::net::IpAddr;
use std::time::Duration;

use crate::action::{Action, ActionRecord};

/// Carries out actions on a host: the one trait for the engine's actions, fleet blocks and
/// approved actions alike.
///
/// Implementations never panic and never return early with an error: every action gets an
/// [`Outcome`]. Calls may block and may come from several threads at once (hence `&self` and
/// `Send + Sync`); an implementation serializes what has to be serialized itself, as narrowly
/// as it can.
///
/// ```
/// use std::net::IpAddr;
/// use policy_engine::executor::{Executor, Outcome};
/// use policy_engine::{Action, ActionRecord};
/// /// Blocks through a cloud provider's API instead of nftables.
/// struct CloudFirewall;
/// impl Executor for CloudFirewall {
///     fn execute(&self, record: &ActionRecord) -> Outcome {
///         match &record.action {
///             Action::BlockIp { ip, .. } => Outcome::done(format!("asked the cloud to block `{ip}`")),
///             other => Outcome::skipped(format!("`{}` is not supported here", other.name())),
///         }
///     }
///     fn unblock(&self, ip: IpAddr) -> Outcome {
///         Outcome::done(format!("asked the cloud to unblock `{ip}`"))
///     }
/// }
/// assert_eq!(
///     CloudFirewall.unblock("203.0.113.7".parse().unwrap()),
///     Outcome::done("asked the cloud to unblock `203.0.113.7`")
/// );
/// ```
pub trait Executor: Send + Sync {
    /// Carries out `record.action` and says what came of it.
    fn execute(&self, record: &ActionRecord) -> Outcome;

    /// Carries out several actions; one outcome per record, in order. Callers batch actions of
    /// one kind queued back to back (blocks during a flood); the default runs them one by one,
    /// `HostExecutor` blocks them in one `nft` transaction.
    fn execute_batch(&self, records: &[ActionRecord]) -> Vec<Outcome> {
        records.iter().map(|record| self.execute(record)).collect()
    }

    /// Lifts the block on `ip` (a fleet `unblock`). Executors without a block list skip it.
    fn unblock(&self, ip: IpAddr) -> Outcome {
        Outcome::skipped(format!("no block list here to lift `{ip}` from"))
    }

    /// Periodic upkeep, every few seconds; `unreachable_for` is the time since the management
    /// server last answered (zero while connected). Returns what it did; nothing by default.
    fn maintain(&self, unreachable_for: Duration) -> Vec<Outcome> {
        let _ = unreachable_for;
        Vec::new()
    }
}

impl<E: Executor + ?Sized> Executor for Box<E> {
    fn execute(&self, record: &ActionRecord) -> Outcome {
        (**self).execute(record)
    }
    fn execute_batch(&self, records: &[ActionRecord]) -> Vec<Outcome> {
        (**self).execute_batch(records)
    }
    fn unblock(&self, ip: IpAddr) -> Outcome {
        (**self).unblock(ip)
    }
    fn maintain(&self, unreachable_for: Duration) -> Vec<Outcome> {
        (**self).maintain(unreachable_for)
    }
}

impl<E: Executor + ?Sized> Executor for std::sync::Arc<E> {
    fn execute(&self, record: &ActionRecord) -> Outcome {
        (**self).execute(record)
    }
    fn execute_batch(&self, records: &[ActionRecord]) -> Vec<Outcome> {
        (**self).execute_batch(records)
    }
    fn unblock(&self, ip: IpAddr) -> Outcome {
        (**self).unblock(ip)
    }
    fn maintain(&self, unreachable_for: Duration) -> Vec<Outcome> {
        (**self).maintain(unreachable_for)
    }
}

impl<E: Executor + ?Sized> Executor for &E {
    fn execute(&self, record: &ActionRecord) -> Outcome {
        (**self).execute(record)
    }
    fn execute_batch(&self, records: &[ActionRecord]) -> Vec<Outcome> {
        (**self).execute_batch(records)
    }
    fn unblock(&self, ip: IpAddr) -> Outcome {
        (**self).unblock(ip)
    }
    fn maintain(&self, unreachable_for: Duration) -> Vec<Outcome> {
        (**self).maintain(unreachable_for)
    }
}

/// A short human description of an action: `block_ip 203.0.113.7 for 24h (host)`.
///
/// ```
/// use policy_engine::Action;
/// use policy_engine::executor::describe;
/// let action = Action::QuarantineFile { path: "/tmp/x".into() };
/// assert_eq!(describe(&action), "quarantine_file `/tmp/x`");
/// ```
pub fn describe(action: &Action) -> String {
    match action {
        Action::BlockIp {
            ip,
            duration,
            scope,
        } => format!("block_ip {ip} for {duration} ({scope})"),
        Action::Alert {
            severity,
            count,
            channels,
        } => format!("alert {severity} x{count} to {}", channels.join(", ")),
        Action::KillProcess { pid, process } => match process {
            Some(name) => format!("kill_process {pid} (`{name}`)"),
            None => format!("kill_process {pid}"),
        },
        Action::QuarantineFile { path } => format!("quarantine_file `{path}`"),
        Action::IsolateHost { host } => match host {
            Some(host) => format!("isolate_host `{host}`"),
            None => "isolate_host".to_owned(),
        },
        Action::ApprovalRequest { request } => {
            format!("approval_request for {}", describe(request))
        }
        Action::Custom { name, .. } => format!("custom `{name}`"),
    }
}
