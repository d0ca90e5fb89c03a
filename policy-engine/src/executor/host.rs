//! `HostExecutor`: dispatches each action to the component that carries it out on this host.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Map, Value};

use super::Executor;
use super::cidr::{Allowlist, Cidr};
use super::firewall::{Firewall, FirewallConfig, FirewallError};
use super::isolation::{Isolation, IsolationConfig, IsolationError};
use super::outcome::Outcome;
use super::process::{KillConfig, ProcessKiller};
use super::protect::Protection;
use super::quarantine::{Quarantine, QuarantineConfig, QuarantineError};
use super::safety::{SafetyConfig, SafetyError};
use crate::action::{Action, ActionRecord};

/// Everything the host executor needs; [`HostConfig::new`] fills in consistent defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostConfig {
    /// `block_ip`.
    pub firewall: FirewallConfig,
    /// `isolate_host`.
    pub isolation: IsolationConfig,
    /// `kill_process`.
    pub kill: KillConfig,
    /// `quarantine_file`.
    pub quarantine: QuarantineConfig,
    /// What `kill_process` and `quarantine_file` never touch.
    pub safety: SafetyConfig,
}

impl HostConfig {
    /// Defaults for an agent whose state lives in `state_dir` and whose management servers are
    /// `management`: those addresses are never blocked and stay reachable while isolated; the
    /// quarantine is `state_dir/quarantine`; the safety defaults protect `state_dir` too.
    pub fn new(state_dir: impl Into<PathBuf>, management: Vec<SocketAddr>) -> Self {
        let state_dir: PathBuf = state_dir.into();
        let mut firewall = FirewallConfig::new(state_dir.join("firewall"));
        firewall.allowlist =
            Allowlist::new(management.iter().map(SocketAddr::ip).collect(), vec![]);
        Self {
            firewall,
            isolation: IsolationConfig::new(state_dir.join("isolation"), management),
            kill: KillConfig::default(),
            quarantine: QuarantineConfig {
                dir: state_dir.join("quarantine"),
            },
            safety: SafetyConfig::default().with_agent_path(state_dir),
        }
    }

    /// Protects what `safety` lists (e.g. from [`SafetyConfig::from_file`]), keeping the agent
    /// paths already known (the state dir).
    pub fn with_safety(mut self, mut safety: SafetyConfig) -> Self {
        for path in std::mem::take(&mut self.safety.agent_paths) {
            if !safety.agent_paths.contains(&path) {
                safety.agent_paths.push(path);
            }
        }
        self.safety = safety;
        self
    }

    /// Never blocks addresses in `ranges` (besides loopback and the management servers).
    pub fn with_allowlist(mut self, ranges: Vec<Cidr>) -> Self {
        self.firewall.allowlist.ranges = ranges;
        self
    }

    /// Runs `nft` as `command` (e.g. `["ip", "netns", "exec", "ns1", "nft"]`) for the
    /// firewall and isolation alike.
    pub fn with_nft_command(mut self, command: Vec<String>) -> Self {
        self.firewall.command = command.clone();
        self.isolation.command = command;
        self
    }

    /// Kills an `nft` run that takes longer than `timeout` (firewall and isolation alike); the
    /// change it carried fails.
    pub fn with_command_timeout(mut self, timeout: Duration) -> Self {
        self.firewall.command_timeout = timeout;
        self.isolation.command_timeout = timeout;
        self
    }
}

/// Why the host executor could not start.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The firewall could not be set up.
    #[error("firewall: {0}")]
    Firewall(#[from] FirewallError),
    /// Isolation could not be set up.
    #[error("isolation: {0}")]
    Isolation(#[from] IsolationError),
    /// The safety configuration is invalid.
    #[error("{0}")]
    Safety(#[from] SafetyError),
}

/// Carries out a host-defined (`custom`) action.
pub trait CustomHandler: Send {
    /// Handles the custom action `name` with `params`.
    fn handle(&mut self, name: &str, params: &Map<String, Value>, record: &ActionRecord)
    -> Outcome;
}

impl<F> CustomHandler for F
where
    F: FnMut(&str, &Map<String, Value>, &ActionRecord) -> Outcome + Send,
{
    fn handle(
        &mut self,
        name: &str,
        params: &Map<String, Value>,
        record: &ActionRecord,
    ) -> Outcome {
        self(name, params, record)
    }
}

/// The executor that acts on this host.
///
/// `block_ip` (both scopes: a fleet block also applies here; spreading it is the fleet loop's
/// job) goes to the [`Firewall`], `kill_process` to the [`ProcessKiller`], `quarantine_file`
/// to the [`Quarantine`], `isolate_host` to the [`Isolation`]. `alert` and `approval_request`
/// are skipped with "sent to the server": the fleet loop delivers them. `custom` actions go to
/// the handler registered under their name, or are skipped.
///
/// Each component has its own lock and the killer needs none: actions on different components
/// run side by side (a kill waiting out its grace period never holds up a block, nor another
/// kill), actions on one component one at a time.
pub struct HostExecutor {
    firewall: Mutex<Firewall>,
    killer: ProcessKiller,
    quarantine: Mutex<Quarantine>,
    isolation: Mutex<Isolation>,
    protection: Protection,
    custom: HashMap<String, Mutex<Box<dyn CustomHandler>>>,
}

impl HostExecutor {
    /// Checks the safety configuration, sets up the firewall (re-installing persisted blocks)
    /// and the other components.
    pub fn open(config: HostConfig) -> Result<Self, HostError> {
        config.safety.validate()?;
        let firewall = Firewall::open(config.firewall)?;
        let mut isolation = Isolation::new(config.isolation)?;
        isolation.reconcile()?;
        // Compiled once the state dir exists, so its symlinks are resolved too.
        let protection = Protection::new(&config.safety)?;
        Ok(Self {
            firewall: Mutex::new(firewall),
            killer: ProcessKiller::new(config.kill).with_protection(protection.clone()),
            quarantine: Mutex::new(
                Quarantine::new(config.quarantine).with_protection(protection.clone()),
            ),
            isolation: Mutex::new(isolation),
            protection,
            custom: HashMap::new(),
        })
    }

    /// What `kill_process` and `quarantine_file` refuse to touch.
    pub fn protection(&self) -> &Protection {
        &self.protection
    }

    /// Routes `custom` actions named `name` to `handler`.
    pub fn register_custom(
        &mut self,
        name: impl Into<String>,
        handler: impl CustomHandler + 'static,
    ) {
        self.custom
            .insert(name.into(), Mutex::new(Box::new(handler)));
    }

    /// Periodic upkeep, every few seconds: recreates nftables tables someone removed and
    /// releases an isolation once the management server has been unreachable for the
    /// configured time. `unreachable_for` is the time since the agent last reached the server
    /// (zero while connected). Returns what it did.
    pub fn maintain(&self, unreachable_for: Duration) -> Vec<Outcome> {
        let mut done = Vec::new();
        {
            let mut firewall = lock(&self.firewall);
            match firewall.reconcile() {
                Ok(true) => done.push(Outcome::done(format!(
                    "recreated the firewall table with {} blocks",
                    firewall.active().len()
                ))),
                Ok(false) => {}
                Err(e) => done.push(Outcome::failed(e.to_string())),
            }
        }
        let mut isolation = lock(&self.isolation);
        match isolation.reconcile() {
            Ok(true) => done.push(Outcome::done("recreated the isolation table")),
            Ok(false) => {}
            Err(e) => done.push(Outcome::failed(e.to_string())),
        }
        match isolation.release_if_unreachable(unreachable_for) {
            Ok(Some(outcome)) => done.push(outcome),
            Ok(None) => {}
            Err(e) => done.push(Outcome::failed(e.to_string())),
        }
        done
    }

    /// The firewall, for listing and lifting blocks.
    pub fn firewall(&mut self) -> &mut Firewall {
        self.firewall.get_mut().unwrap_or_else(|p| p.into_inner())
    }

    /// The isolation, for `release`.
    pub fn isolation(&mut self) -> &mut Isolation {
        self.isolation.get_mut().unwrap_or_else(|p| p.into_inner())
    }

    /// The quarantine, for `list` and `restore`.
    pub fn quarantine(&mut self) -> &mut Quarantine {
        self.quarantine.get_mut().unwrap_or_else(|p| p.into_inner())
    }
}

impl Executor for HostExecutor {
    fn execute(&self, record: &ActionRecord) -> Outcome {
        match &record.action {
            Action::BlockIp { ip, duration, .. } => lock(&self.firewall).block(*ip, *duration),
            Action::KillProcess { pid, process } => self.killer.kill(*pid, process.as_deref()),
            Action::QuarantineFile { path } => {
                match lock(&self.quarantine).quarantine(Path::new(path), Some(record)) {
                    Ok(entry) => Outcome::done(format!(
                        "quarantined `{}` as `{}` (sha256 {})",
                        entry.original_path.display(),
                        entry.id,
                        entry.sha256
                    )),
                    Err(QuarantineError::Refused(reason)) => Outcome::skipped(reason),
                    Err(e) => Outcome::failed(e.to_string()),
                }
            }
            Action::IsolateHost { .. } => lock(&self.isolation).isolate(),
            Action::Alert { .. } | Action::ApprovalRequest { .. } => {
                Outcome::skipped("sent to the server")
            }
            Action::Custom { name, params } => match self.custom.get(name) {
                Some(handler) => lock(handler).handle(name, params, record),
                None => Outcome::skipped(format!("no handler for the custom action `{name}`")),
            },
        }
    }

    /// Blocks in one `nft` transaction when every record is a `block_ip`; anything else one
    /// by one.
    fn execute_batch(&self, records: &[ActionRecord]) -> Vec<Outcome> {
        let blocks: Option<Vec<_>> = records
            .iter()
            .map(|record| match &record.action {
                Action::BlockIp { ip, duration, .. } => Some((*ip, *duration)),
                _ => None,
            })
            .collect();
        match blocks {
            Some(blocks) if blocks.len() > 1 => match lock(&self.firewall).block_many(&blocks) {
                Ok(outcomes) => outcomes,
                Err(err) => vec![Outcome::failed(err.to_string()); blocks.len()],
            },
            _ => records.iter().map(|record| self.execute(record)).collect(),
        }
    }

    fn unblock(&self, ip: IpAddr) -> Outcome {
        match lock(&self.firewall).unblock(ip) {
            Ok(true) => Outcome::done(format!("unblocked `{ip}`")),
            Ok(false) => Outcome::skipped(format!("`{ip}` was not blocked")),
            Err(err) => Outcome::failed(err.to_string()),
        }
    }

    fn maintain(&self, unreachable_for: Duration) -> Vec<Outcome> {
        HostExecutor::maintain(self, unreachable_for)
    }
}

/// Locks one component. A panic inside a component (there should be none: library code does
/// not panic) leaves its state as the last completed change wrote it, so the lock is taken over.
fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl std::fmt::Debug for HostExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostExecutor")
            // try_lock: printing must not wait for an `nft` run in progress.
            .field("firewall", &self.firewall.try_lock().ok())
            .field("isolation", &self.isolation.try_lock().ok())
            .field("custom", &self.custom.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}
