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
//! `execute` is synchronous and may block (it runs `nft`, waits for a process to die, copies a
//! file): call it from `tokio::task::spawn_blocking`, keeping the executor behind an
//! `Arc<std::sync::Mutex<_>>` or moving it into a dedicated thread fed by a channel. Besides
//! `execute`, an agent should, every few seconds, call `HostExecutor::maintain` with the time
//! since the management server was last reachable: it recreates flushed nftables tables and
//! releases an isolation after the configured time without the server.
//!
//! ```no_run
//! # #[cfg(target_os = "linux")] {
//! use policy_engine::executor::{Executor, HostConfig, HostExecutor, RecordingExecutor};
//! let dry_run = false;
//! let mut executor: Box<dyn Executor + Send> = if dry_run {
//!     Box::new(RecordingExecutor::new())
//! } else {
//!     let config = HostConfig::new("/var/lib/policy-agent", vec!["192.0.2.10:8443".parse().unwrap()]);
//!     Box::new(HostExecutor::open(config).unwrap())
//! };
//! # }
//! ```

mod cidr;
mod outcome;
mod recording;

#[cfg(target_os = "linux")]
mod durable;
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
pub use nft::{Nft, NftError};
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

use crate::action::{Action, ActionRecord};

/// Carries out actions on a host.
///
/// Implementations never panic and never return early with an error: every action gets an
/// [`Outcome`].
pub trait Executor {
    /// Carries out `record.action` and says what came of it.
    fn execute(&mut self, record: &ActionRecord) -> Outcome;
}

impl<E: Executor + ?Sized> Executor for Box<E> {
    fn execute(&mut self, record: &ActionRecord) -> Outcome {
        (**self).execute(record)
    }
}

impl<E: Executor + ?Sized> Executor for &mut E {
    fn execute(&mut self, record: &ActionRecord) -> Outcome {
        (**self).execute(record)
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
