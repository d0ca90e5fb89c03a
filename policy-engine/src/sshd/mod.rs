//! OpenSSH log source: sshd's log lines in, one `brute_force` [`ThreatEvent`] per failed
//! authentication attempt out.
//!
//! `line -> envelope (timestamp, host, program, PID) -> message classification -> per-connection
//! attempt tracker -> Attempt -> ThreatEvent`. Nothing here allocates for a line that is not an
//! attempt, and per-connection state is capped ([`SshdConfig::max_connections`]).
//!
//! What counts as one attempt (see the crate's notes for why):
//! - every `Failed <method> for ...` line (password, keyboard-interactive/pam, none, publickey
//!   for an invalid user, ...); `Invalid user x` or `User x not allowed` followed by a `Failed`
//!   line on the same connection is that one attempt;
//! - `Failed publickey` for an existing user is a client trying its keys in turn: held, and
//!   dropped if a key is then accepted; a connection that ends with held key failures and no
//!   login is one attempt;
//! - a connection that spoke SSH (it closed in `[preauth]`, named an authenticating or invalid
//!   user, failed key exchange, sent a bad banner) and ended without any counted failure or
//!   login is one attempt: a probe;
//! - a bare TCP open and close (a health check: `Connection closed by IP port N` without
//!   `[preauth]`, `Did not receive identification string`) is not an attempt;
//! - PAM lines and `Disconnecting ...` lines are context and never counted (sshd writes its own
//!   `Failed` line for the same attempt).
//!
//! ```
//! use policy_engine::sshd::{SshdConfig, SshdTracker};
//! let mut tracker = SshdTracker::new(SshdConfig::for_year(2026));
//! let lines = [
//!     "Mar  7 12:00:01 web1 sshd[4242]: Invalid user admin from 203.0.113.7 port 50022",
//!     "Mar  7 12:00:03 web1 sshd[4242]: Failed password for invalid user admin from 203.0.113.7 port 50022 ssh2",
//!     "Mar  7 12:00:04 web1 sshd[4242]: Connection closed by invalid user admin 203.0.113.7 port 50022 [preauth]",
//! ];
//! let events: Vec<_> = lines.iter().filter_map(|l| tracker.feed(l)).map(|a| a.into_event()).collect();
//! assert_eq!(events.len(), 1);
//! assert_eq!(events[0].threat_type.as_deref(), Some("brute_force"));
//! assert_eq!(events[0].src_ip, Some("203.0.113.7".parse().unwrap()));
//! assert_eq!(events[0].user.as_deref(), Some("admin"));
//! ```

mod conns;
mod follow;
mod line;
mod message;
mod time;

use std::net::IpAddr;

use chrono::{DateTime, Datelike, Utc};

use crate::event::ThreatEvent;
use crate::severity::Severity;
use conns::{ConnKey, ConnTable};
pub use follow::{FollowError, LogFollower};
pub use line::{LineFormat, SSHD_PROGRAMS};
use line::{Stamp, envelope, looks_like_syslog};
use message::{Message, Peer, classify};

/// The threat type of the events this source emits.
pub const THREAT_TYPE: &str = "brute_force";

/// Default cap on tracked connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 65_536;

/// How to read a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshdConfig {
    /// Year for classic syslog timestamps, which carry none. A log that passes from December
    /// to January moves on to the next year.
    pub year: i32,
    /// The envelope of the lines; `None` guesses: lines are read as bare until the first line
    /// with a syslog envelope, and as syslog from then on.
    pub format: Option<LineFormat>,
    /// Most connections tracked at once; the oldest are dropped beyond it.
    pub max_connections: usize,
    /// Severity given to the events.
    pub severity: Severity,
}

impl SshdConfig {
    /// Defaults, with classic syslog timestamps read in `year`.
    pub fn for_year(year: i32) -> Self {
        Self {
            year,
            format: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            severity: Severity::Medium,
        }
    }
}

impl Default for SshdConfig {
    /// Defaults, with classic syslog timestamps read in the current year.
    fn default() -> Self {
        Self::for_year(Utc::now().year())
    }
}

/// One failed authentication attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The client address (IPv4-mapped IPv6 addresses as IPv4).
    pub ip: IpAddr,
    /// The client port, where the log gave it.
    pub port: Option<u16>,
    /// The user name the client tried, where the log gave it.
    pub user: Option<String>,
    /// When, from the log line (`None` for bare `sshd -E` lines).
    pub timestamp: Option<DateTime<Utc>>,
    /// The host that logged it, where the log gave it.
    pub host: Option<String>,
    /// The sshd process, where the log gave it.
    pub pid: Option<u32>,
    /// Line number in the input (1-based).
    pub line: u64,
    /// Severity from the configuration.
    pub severity: Severity,
}

impl Attempt {
    /// The threat event: `type` `brute_force`, `process` `sshd`, `id` `sshd:<line>`.
    pub fn into_event(self) -> ThreatEvent {
        ThreatEvent {
            id: Some(format!("sshd:{}", self.line)),
            timestamp: self.timestamp,
            threat_type: Some(THREAT_TYPE.to_owned()),
            severity: Some(self.severity),
            src_ip: Some(self.ip),
            process: Some("sshd".to_owned()),
            pid: self.pid,
            user: self.user,
            host: self.host,
            ..ThreatEvent::default()
        }
    }
}

/// Counters for a summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SshdStats {
    /// Lines fed.
    pub lines: u64,
    /// Lines logged by sshd.
    pub sshd_lines: u64,
    /// Attempts found.
    pub attempts: u64,
    /// Connections tracked now.
    pub connections: usize,
    /// Connections dropped to stay under the cap.
    pub evicted: u64,
}

/// Turns sshd log lines into [`Attempt`]s, one line at a time.
#[derive(Debug)]
pub struct SshdTracker {
    config: SshdConfig,
    format: Option<LineFormat>,
    year: i32,
    last_month: u32,
    conns: ConnTable,
    lines: u64,
    sshd_lines: u64,
    attempts: u64,
}

impl SshdTracker {
    /// A tracker with no history.
    pub fn new(config: SshdConfig) -> Self {
        Self {
            format: config.format,
            year: config.year,
            last_month: 0,
            conns: ConnTable::new(config.max_connections),
            config,
            lines: 0,
            sshd_lines: 0,
            attempts: 0,
        }
    }

    /// Reads one line (without its newline); returns the attempt it completes, if any.
    pub fn feed(&mut self, line: &str) -> Option<Attempt> {
        self.lines += 1;
        let format = match self.format {
            Some(format) => format,
            // Guessing: bare until the first line with a syslog envelope, syslog from then on
            // (so a stray first line cannot turn a syslog file into a bare one).
            None if looks_like_syslog(line) => {
                self.format = Some(LineFormat::Syslog);
                LineFormat::Syslog
            }
            None => LineFormat::Bare,
        };
        let env = envelope(line, format)?;
        self.sshd_lines += 1;
        if let Stamp::Syslog(stamp) = env.stamp {
            if self.last_month == 12 && stamp.month == 1 {
                self.year += 1;
            }
            self.last_month = stamp.month;
        }
        let message = classify(env.message);
        let (peer, user) = self.track(env.pid, message)?;
        self.attempts += 1;
        Some(Attempt {
            ip: peer.ip,
            port: peer.port,
            user,
            timestamp: self.timestamp(env.stamp),
            host: env.host.map(str::to_owned),
            pid: env.pid,
            line: self.lines,
            severity: self.config.severity,
        })
    }

    /// Reads one line given as bytes; invalid UTF-8 is replaced, not rejected.
    pub fn feed_bytes(&mut self, line: &[u8]) -> Option<Attempt> {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        match std::str::from_utf8(line) {
            Ok(text) => self.feed(text),
            Err(_) => self.feed(&String::from_utf8_lossy(line)),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> SshdStats {
        SshdStats {
            lines: self.lines,
            sshd_lines: self.sshd_lines,
            attempts: self.attempts,
            connections: self.conns.len(),
            evicted: self.conns.evicted(),
        }
    }

    /// The connection state machine: decides whether `message` completes an attempt.
    fn track(&mut self, pid: Option<u32>, message: Message<'_>) -> Option<(Peer, Option<String>)> {
        let key = |peer: Peer| match (pid, peer.port) {
            (Some(pid), _) => Some(ConnKey::Pid(pid)),
            (None, Some(port)) => Some(ConnKey::Peer(peer.ip, port)),
            (None, None) => None,
        };
        match message {
            Message::Other => None,
            Message::Failed {
                method,
                invalid_user,
                user,
                peer,
            } => {
                if let Some(key) = key(peer) {
                    let conn = self.conns.get(key, peer.ip);
                    if method == "publickey" && !invalid_user {
                        conn.pending_keys += 1;
                        return None;
                    }
                    conn.counted += 1;
                    conn.refused = false;
                }
                Some((peer, Some(user.to_owned())))
            }
            Message::Refused { user, peer } => {
                if let Some(key) = key(peer) {
                    let conn = self.conns.get(key, peer.ip);
                    conn.refused = true;
                    conn.user = user.map(Box::from);
                }
                None
            }
            Message::Accepted { peer } => {
                if let Some(key) = key(peer) {
                    let conn = self.conns.get(key, peer.ip);
                    conn.accepted = true;
                    conn.pending_keys = 0;
                    conn.refused = false;
                }
                None
            }
            Message::Closed { user, peer, probe } => {
                let Some(key) = key(peer) else {
                    return probe.then(|| (peer, user.map(str::to_owned)));
                };
                let conn = self.conns.get(key, peer.ip);
                if conn.closed {
                    return None;
                }
                conn.closed = true;
                if conn.accepted || conn.counted > 0 {
                    return None;
                }
                if probe || conn.refused || conn.pending_keys > 0 {
                    conn.counted += 1;
                    let user = user
                        .map(str::to_owned)
                        .or_else(|| conn.user.as_deref().map(str::to_owned));
                    return Some((peer, user));
                }
                None
            }
        }
    }

    fn timestamp(&self, stamp: Stamp) -> Option<DateTime<Utc>> {
        match stamp {
            Stamp::Absolute(at) => Some(at),
            Stamp::None => None,
            Stamp::Syslog(stamp) => stamp.in_year(self.year),
        }
    }
}
