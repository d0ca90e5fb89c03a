//! `block_ip` with nftables: one table with IPv4 and IPv6 sets whose elements carry timeouts.
//!
//! The kernel expires blocks on its own, even if the agent dies. The agent keeps its own list of
//! active blocks in a journal in the state dir: a new [`Firewall`] over the same state dir
//! re-installs them with their remaining time in one transaction (add, delete, add: an element
//! that is still in the kernel never disappears, so there is no gap and no unban/reban storm).
//! Every change is one `nft -f -` batch, whatever the number of addresses.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};

use super::cidr::Allowlist;
use super::journal::{Blocks, Entry, Journal};
use super::nft::{DEFAULT_COMMAND_TIMEOUT, Nft, NftError, valid_name};
use super::outcome::Outcome;
use crate::event::canonical_ip;
use crate::policy::PolicyDuration;

/// Name of the IPv4 set in the firewall table.
const SET_V4: &str = "blocked_v4";
/// Name of the IPv6 set in the firewall table.
const SET_V6: &str = "blocked_v6";
/// Elements per `add element` statement; a batch holds as many statements as it needs.
const CHUNK: usize = 4096;

/// Where and how the firewall works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallConfig {
    /// The `inet` table the agent owns (default `policy_engine`).
    pub table: String,
    /// How to run `nft`, program first (default `["nft"]`).
    pub command: Vec<String>,
    /// How long one `nft` run may take before it is killed and the change fails (default
    /// [`DEFAULT_COMMAND_TIMEOUT`], 30 s).
    pub command_timeout: Duration,
    /// Directory for the journal of active blocks (`blocks.jsonl`).
    pub state_dir: PathBuf,
    /// Addresses never blocked, besides loopback.
    pub allowlist: Allowlist,
    /// Hook priority of the table's chains (default -10: before the usual `filter` tables).
    pub priority: i32,
    /// At most this many addresses blocked at once (default 1,000,000); more are refused.
    pub max_blocks: usize,
}

impl FirewallConfig {
    /// Defaults, with the journal in `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            table: "policy_engine".to_owned(),
            command: vec!["nft".to_owned()],
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            state_dir: state_dir.into(),
            allowlist: Allowlist::default(),
            priority: -10,
            max_blocks: 1_000_000,
        }
    }
}

/// Why the firewall could not act.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// The table name would need quoting.
    #[error(
        "invalid nftables table name `{0}`: use up to 64 letters, digits and `_`, starting with a letter"
    )]
    TableName(String),
    /// `nft` failed.
    #[error(transparent)]
    Nft(#[from] NftError),
    /// The journal could not be read or written.
    #[error("block list `{path}`: {source}")]
    State {
        /// The journal's path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A block in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveBlock {
    /// The blocked address.
    pub ip: IpAddr,
    /// When it is released; `None` is permanent.
    pub until: Option<DateTime<Utc>>,
}

/// The nftables block list.
#[derive(Debug)]
pub struct Firewall {
    config: FirewallConfig,
    nft: Nft,
    journal: Journal,
    blocks: Blocks,
}

impl Firewall {
    /// Opens the firewall: reads the journal and installs the table with every active block.
    pub fn open(config: FirewallConfig) -> Result<Self, FirewallError> {
        if !valid_name(&config.table) {
            return Err(FirewallError::TableName(config.table));
        }
        let path = config.state_dir.join("blocks.jsonl");
        let state_error = |source| FirewallError::State {
            path: path.clone(),
            source,
        };
        create_private_dir(&config.state_dir).map_err(state_error)?;
        let (journal, blocks) = Journal::open(&path, Utc::now()).map_err(state_error)?;
        let firewall = Self {
            nft: Nft::new(config.command.clone()).with_timeout(config.command_timeout),
            config,
            journal,
            blocks,
        };
        firewall.install_all(Utc::now())?;
        Ok(firewall)
    }

    /// Blocks `ip` for `duration`; re-blocking extends (never shortens) a block.
    ///
    /// Allowlisted addresses are refused as [`Outcome::Skipped`].
    pub fn block(&mut self, ip: IpAddr, duration: PolicyDuration) -> Outcome {
        match self.block_many(&[(ip, duration)]) {
            Ok(mut outcomes) => outcomes
                .pop()
                .unwrap_or_else(|| Outcome::failed("no outcome for the block")),
            Err(e) => Outcome::failed(e.to_string()),
        }
    }

    /// Blocks many addresses in one `nft` transaction; one outcome per request, in order.
    ///
    /// On an `nft` error nothing changes and the error is returned.
    pub fn block_many(
        &mut self,
        requests: &[(IpAddr, PolicyDuration)],
    ) -> Result<Vec<Outcome>, FirewallError> {
        let now = Utc::now();
        self.blocks.retain(|_, until| until.is_none_or(|t| t > now));
        let mut outcomes = Vec::with_capacity(requests.len());
        let mut previous: Vec<(IpAddr, Option<Option<DateTime<Utc>>>)> = Vec::new();
        let mut changes: Vec<(IpAddr, Option<DateTime<Utc>>)> = Vec::new();
        for &(ip, duration) in requests {
            let ip = canonical_ip(ip);
            if let Some(reason) = self.config.allowlist.refusal(ip) {
                outcomes.push(Outcome::skipped(reason));
                continue;
            }
            let until = duration
                .as_duration()
                .and_then(|d| chrono::Duration::from_std(d).ok())
                .map(|d| now + d);
            let existing = self.blocks.get(&ip).copied();
            let outcome = match (existing, until) {
                (Some(None), _) => {
                    outcomes.push(Outcome::done(format!(
                        "`{ip}` is already blocked permanently"
                    )));
                    continue;
                }
                (Some(Some(old)), Some(new)) if new <= old => {
                    outcomes.push(Outcome::done(format!(
                        "`{ip}` is already blocked until {}, longer than {duration}",
                        stamp(old)
                    )));
                    continue;
                }
                (None, _) if self.blocks.len() >= self.config.max_blocks => {
                    outcomes.push(Outcome::failed(format!(
                        "not blocking `{ip}`: the block list is full ({} addresses)",
                        self.config.max_blocks
                    )));
                    continue;
                }
                (None, None) => format!("blocked `{ip}` permanently"),
                (None, Some(new)) => {
                    format!("blocked `{ip}` for {duration} (until {})", stamp(new))
                }
                (Some(_), None) => format!("made the block of `{ip}` permanent"),
                (Some(_), Some(new)) => format!(
                    "extended the block of `{ip}` by {duration} (until {})",
                    stamp(new)
                ),
            };
            outcomes.push(Outcome::done(outcome));
            previous.push((ip, existing));
            self.blocks.insert(ip, until);
            changes.push((ip, until));
        }
        if changes.is_empty() {
            return Ok(outcomes);
        }
        let applied = if self.table_present() {
            self.apply(&changes, now)
        } else {
            // Someone removed the table: put back everything, these changes included.
            self.install_all(now)
        };
        if let Err(e) = applied {
            for (ip, old) in previous.into_iter().rev() {
                match old {
                    Some(until) => self.blocks.insert(ip, until),
                    None => self.blocks.remove(&ip),
                };
            }
            return Err(e);
        }
        let entries: Vec<Entry> = changes
            .iter()
            .map(|&(ip, until)| Entry::Block { ip, until })
            .collect();
        self.journal
            .append(&entries)
            .and_then(|()| self.journal.compact_if_large(&self.blocks))
            .map_err(|source| FirewallError::State {
                path: self.journal.path().to_owned(),
                source,
            })?;
        Ok(outcomes)
    }

    /// Lifts the block of `ip`; `false` if it was not blocked.
    pub fn unblock(&mut self, ip: IpAddr) -> Result<bool, FirewallError> {
        let ip = canonical_ip(ip);
        if self.blocks.remove(&ip).is_none() {
            return Ok(false);
        }
        let mut script = self.structure();
        // Adding first makes the delete succeed even if the kernel already expired it.
        let set = set_of(ip);
        let table = &self.config.table;
        let _ = writeln!(script, "add element inet {table} {set} {{ {ip} }}");
        let _ = writeln!(script, "delete element inet {table} {set} {{ {ip} }}");
        self.nft.apply(&script)?;
        self.journal
            .append(&[Entry::Unblock { ip }])
            .map_err(|source| FirewallError::State {
                path: self.journal.path().to_owned(),
                source,
            })?;
        Ok(true)
    }

    /// The blocks in force now, in address order.
    pub fn active(&self) -> Vec<ActiveBlock> {
        let now = Utc::now();
        let mut list: Vec<ActiveBlock> = self
            .blocks
            .iter()
            .filter(|(_, until)| until.is_none_or(|t| t > now))
            .map(|(&ip, &until)| ActiveBlock { ip, until })
            .collect();
        list.sort_by_key(|b| b.ip);
        list
    }

    /// Recreates the table with every active block if someone removed it (e.g. `nft flush
    /// ruleset`); `true` if it had to. The agent calls this every few seconds.
    pub fn reconcile(&mut self) -> Result<bool, FirewallError> {
        if self.table_present() {
            return Ok(false);
        }
        self.install_all(Utc::now())?;
        Ok(true)
    }

    /// Deletes the table (the blocks stay in the journal and come back on the next `open`).
    pub fn remove_table(&self) -> Result<(), FirewallError> {
        let table = &self.config.table;
        self.nft.apply(&format!(
            "add table inet {table}\ndelete table inet {table}\n"
        ))?;
        Ok(())
    }

    /// The configuration.
    pub fn config(&self) -> &FirewallConfig {
        &self.config
    }

    fn table_present(&self) -> bool {
        self.nft
            .query(&["list", "chain", "inet", &self.config.table, "input"])
            .is_ok()
    }

    fn install_all(&self, now: DateTime<Utc>) -> Result<(), FirewallError> {
        let all: Vec<(IpAddr, Option<DateTime<Utc>>)> = self
            .blocks
            .iter()
            .filter(|(_, until)| until.is_none_or(|t| t > now))
            .map(|(&ip, &until)| (ip, until))
            .collect();
        self.apply(&all, now)
    }

    /// One transaction: the table's structure, then for each change add (so the element
    /// exists), delete, and add with the new timeout.
    fn apply(
        &self,
        changes: &[(IpAddr, Option<DateTime<Utc>>)],
        now: DateTime<Utc>,
    ) -> Result<(), FirewallError> {
        let mut script = self.structure();
        let table = &self.config.table;
        for (set, v4) in [(SET_V4, true), (SET_V6, false)] {
            let family: Vec<&(IpAddr, Option<DateTime<Utc>>)> = changes
                .iter()
                .filter(|(ip, _)| ip.is_ipv4() == v4)
                .collect();
            for chunk in family.chunks(CHUNK) {
                let bare = join(chunk.iter().map(|(ip, _)| ip.to_string()));
                let timed = join(chunk.iter().map(|(ip, until)| match until {
                    Some(t) => {
                        let ms = (*t - now).num_milliseconds().max(1);
                        format!("{ip} timeout {ms}ms")
                    }
                    None => ip.to_string(),
                }));
                let _ = writeln!(script, "add element inet {table} {set} {{ {bare} }}");
                let _ = writeln!(script, "delete element inet {table} {set} {{ {bare} }}");
                let _ = writeln!(script, "add element inet {table} {set} {{ {timed} }}");
            }
        }
        self.nft.apply(&script)?;
        Ok(())
    }

    /// Statements that create the table, sets and chains if missing and reset the rules.
    fn structure(&self) -> String {
        let t = &self.config.table;
        let p = self.config.priority;
        let mut s = format!("add table inet {t}\n");
        let _ = writeln!(
            s,
            "add set inet {t} {SET_V4} {{ type ipv4_addr; flags timeout; }}"
        );
        let _ = writeln!(
            s,
            "add set inet {t} {SET_V6} {{ type ipv6_addr; flags timeout; }}"
        );
        for (chain, hook) in [("input", "input"), ("forward", "forward")] {
            let _ = writeln!(
                s,
                "add chain inet {t} {chain} {{ type filter hook {hook} priority {p}; policy accept; }}"
            );
            let _ = writeln!(s, "flush chain inet {t} {chain}");
            // Neighbour discovery may carry a blocked source address for another address's
            // traffic (Linux picks the source of the queued packet); dropping it would cut
            // the attacker's neighbours off too. ARP is not filtered by `inet` tables either.
            let _ = writeln!(
                s,
                "add rule inet {t} {chain} icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} accept"
            );
            let _ = writeln!(s, "add rule inet {t} {chain} ip saddr @{SET_V4} drop");
            let _ = writeln!(s, "add rule inet {t} {chain} ip6 saddr @{SET_V6} drop");
        }
        s
    }
}

fn set_of(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { SET_V4 } else { SET_V6 }
}

fn join(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Creates `dir` (and parents) and makes it 0700.
pub(crate) fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}
