//! `isolate_host`: an nftables table that drops all traffic except loopback and the management
//! server, so the agent can still hear the release.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::durable::write_atomically;
use super::firewall::create_private_dir;
use super::nft::{DEFAULT_COMMAND_TIMEOUT, Nft, NftError, valid_name};
use super::outcome::Outcome;

/// Where and how isolation works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsolationConfig {
    /// The `inet` table used while isolated (default `policy_engine_isolate`).
    pub table: String,
    /// How to run `nft`, program first (default `["nft"]`).
    pub command: Vec<String>,
    /// How long one `nft` run may take before it is killed and the change fails (default
    /// [`DEFAULT_COMMAND_TIMEOUT`], 30 s).
    pub command_timeout: Duration,
    /// Management servers (address and TCP port) that stay reachable. Without one, isolation
    /// is refused: nothing could release it.
    pub management: Vec<SocketAddr>,
    /// Release by itself once the server has been unreachable this long (default: never).
    pub auto_release_after: Option<Duration>,
    /// Directory for the `isolated` marker, so a restarted agent or a flushed ruleset does not
    /// silently end an isolation.
    pub state_dir: PathBuf,
    /// Hook priority (default -300: before any other filtering table).
    pub priority: i32,
}

impl IsolationConfig {
    /// Defaults, keeping `management` reachable, with the marker in `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>, management: Vec<SocketAddr>) -> Self {
        Self {
            table: "policy_engine_isolate".to_owned(),
            command: vec!["nft".to_owned()],
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            management,
            auto_release_after: None,
            state_dir: state_dir.into(),
            priority: -300,
        }
    }
}

/// Why isolation could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    /// The table name would need quoting.
    #[error(
        "invalid nftables table name `{0}`: use up to 64 letters, digits and `_`, starting with a letter"
    )]
    TableName(String),
    /// `nft` failed.
    #[error(transparent)]
    Nft(#[from] NftError),
    /// The marker file could not be written or removed.
    #[error("isolation marker `{path}`: {source}")]
    State {
        /// The marker's path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Host isolation.
#[derive(Debug)]
pub struct Isolation {
    config: IsolationConfig,
    nft: Nft,
}

impl Isolation {
    /// Isolation with `config`; nothing changes on the host until [`Isolation::isolate`].
    pub fn new(config: IsolationConfig) -> Result<Self, IsolationError> {
        if !valid_name(&config.table) {
            return Err(IsolationError::TableName(config.table));
        }
        Ok(Self {
            nft: Nft::new(config.command.clone()).with_timeout(config.command_timeout),
            config,
        })
    }

    /// Cuts the host off, except loopback and the management servers.
    pub fn isolate(&mut self) -> Outcome {
        if self.config.management.is_empty() {
            return Outcome::skipped(
                "no management server is configured: isolating would cut the agent off for good",
            );
        }
        match self.write_marker(true).and_then(|()| self.install()) {
            Ok(()) => Outcome::done(format!(
                "isolated the host; only loopback and {} stay reachable",
                self.management_list()
            )),
            Err(e) => Outcome::failed(e.to_string()),
        }
    }

    /// Ends the isolation; `false` if the host was not isolated.
    pub fn release(&mut self) -> Result<bool, IsolationError> {
        let was = self.is_isolated();
        let table = &self.config.table;
        self.nft.apply(&format!(
            "add table inet {table}\ndelete table inet {table}\n"
        ))?;
        self.write_marker(false)?;
        Ok(was)
    }

    /// Whether the isolation table is in place.
    pub fn is_isolated(&self) -> bool {
        self.nft
            .query(&["list", "table", "inet", &self.config.table])
            .is_ok()
    }

    /// Releases the isolation if it is in place, auto-release is configured, and the server
    /// has been unreachable for at least that long. The agent calls this periodically with the
    /// time since it last reached the server.
    pub fn release_if_unreachable(
        &mut self,
        unreachable_for: Duration,
    ) -> Result<Option<Outcome>, IsolationError> {
        let Some(limit) = self.config.auto_release_after else {
            return Ok(None);
        };
        if unreachable_for < limit || !self.marker_path().exists() {
            return Ok(None);
        }
        self.release()?;
        Ok(Some(Outcome::done(format!(
            "released the isolation: the management server was unreachable for {}s (limit {}s)",
            unreachable_for.as_secs(),
            limit.as_secs()
        ))))
    }

    /// Puts the isolation table back if the marker says the host is isolated but the table is
    /// gone (a flushed ruleset); `true` if it had to.
    pub fn reconcile(&mut self) -> Result<bool, IsolationError> {
        if !self.marker_path().exists() || self.is_isolated() {
            return Ok(false);
        }
        self.install()?;
        Ok(true)
    }

    fn install(&self) -> Result<(), IsolationError> {
        let t = &self.config.table;
        let p = self.config.priority;
        // Recreate from scratch in one transaction: no moment without the drop policy.
        let mut s = format!("add table inet {t}\ndelete table inet {t}\nadd table inet {t}\n");
        for (chain, hook) in [
            ("input", "input"),
            ("output", "output"),
            ("forward", "forward"),
        ] {
            let _ = writeln!(
                s,
                "add chain inet {t} {chain} {{ type filter hook {hook} priority {p}; policy drop; }}"
            );
        }
        let _ = writeln!(s, "add rule inet {t} input iif lo accept");
        let _ = writeln!(s, "add rule inet {t} output oif lo accept");
        // IPv6 needs neighbour discovery to reach anything, the server included.
        let nd = "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert }";
        let _ = writeln!(s, "add rule inet {t} input {nd} accept");
        let _ = writeln!(s, "add rule inet {t} output {nd} accept");
        for server in &self.config.management {
            let family = match server.ip() {
                IpAddr::V4(_) => "ip",
                IpAddr::V6(_) => "ip6",
            };
            let (ip, port) = (server.ip(), server.port());
            let _ = writeln!(
                s,
                "add rule inet {t} output {family} daddr {ip} tcp dport {port} accept"
            );
            let _ = writeln!(
                s,
                "add rule inet {t} input {family} saddr {ip} tcp sport {port} accept"
            );
        }
        self.nft.apply(&s)?;
        Ok(())
    }

    fn management_list(&self) -> String {
        let names: Vec<String> = self
            .config
            .management
            .iter()
            .map(|m| format!("`{m}`"))
            .collect();
        names.join(", ")
    }

    fn marker_path(&self) -> PathBuf {
        self.config
            .state_dir
            .join(format!("{}.isolated", self.config.table))
    }

    fn write_marker(&self, isolated: bool) -> Result<(), IsolationError> {
        let path = self.marker_path();
        let result = if isolated {
            create_private_dir(&self.config.state_dir)
                .and_then(|()| write_atomically(&path, b"isolated\n", 0o600))
        } else {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            }
        };
        result.map_err(|source| IsolationError::State { path, source })
    }
}
