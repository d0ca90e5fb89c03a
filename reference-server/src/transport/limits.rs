//! Connection limits: the timeouts of a connection's phases, the caps on open connections (in
//! total and per source address, with a slice kept for operators), and the file-descriptor
//! limit they are sized from.
//!
//! A connection is admitted by the [`Gate`] right after `accept`; over a cap it is closed at
//! once (before TLS), so held-open sockets cost the attacker a file descriptor each and the
//! server one only for a moment. IPv6 peers count per /64, the block one host usually owns.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ipnet::IpNet;

use crate::ratelimit::address_key;

/// File descriptors kept for everything but client connections (the database, TLS files,
/// outgoing notification connections, logs).
pub const RESERVED_FDS: u64 = 256;

/// Most client connections the default sizing allows, whatever the file limit (memory: an idle
/// TLS connection costs some tens of KiB).
pub const MAX_DEFAULT_CONNECTIONS: usize = 16_384;

/// Default cap per source address (per /64 for IPv6).
pub const DEFAULT_PER_ADDRESS: usize = 256;

/// Default connections kept for operator networks beyond the total cap.
pub const DEFAULT_OPERATOR_RESERVE: usize = 32;

/// The timeouts and caps of the listener.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionLimits {
    /// Connections open at once from everyone (operator connections beyond it use the reserve).
    pub max_connections: usize,
    /// Connections open at once from one address (one /64 for IPv6).
    pub max_per_address: usize,
    /// Extra connections only peers in `operator_networks` may use once `max_connections` is
    /// reached: an operator can always get in.
    pub operator_reserve: usize,
    /// Peers that may use the reserve (default: loopback, `127.0.0.1/32` and `::1/128`).
    pub operator_networks: Vec<IpNet>,
    /// Longest TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Longest wait for a whole HTTP/1 request head.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and no open stream is closed after this long.
    pub idle_timeout: Duration,
    /// HTTP/2 keep-alive ping interval (a dead peer's connection is closed when a ping goes
    /// unanswered for `keep_alive_timeout`).
    pub keep_alive_interval: Duration,
    /// How long a keep-alive ping may go unanswered.
    pub keep_alive_timeout: Duration,
}

impl Default for ConnectionLimits {
    /// The limits for a soft file limit of 1,024 (the common default, before
    /// [`raise_nofile_limit`]).
    fn default() -> Self {
        Self::sized_for(1024)
    }
}

impl ConnectionLimits {
    /// The default limits for `nofile` file descriptors: everything but [`RESERVED_FDS`] and
    /// the operator reserve goes to client connections, at most [`MAX_DEFAULT_CONNECTIONS`].
    pub fn sized_for(nofile: u64) -> Self {
        let usable = nofile
            .saturating_sub(RESERVED_FDS)
            .saturating_sub(DEFAULT_OPERATOR_RESERVE as u64);
        let max_connections = usize::try_from(usable)
            .unwrap_or(usize::MAX)
            .clamp(1, MAX_DEFAULT_CONNECTIONS);
        Self {
            max_connections,
            max_per_address: DEFAULT_PER_ADDRESS.min(max_connections),
            operator_reserve: DEFAULT_OPERATOR_RESERVE,
            operator_networks: vec![
                IpNet::from(IpAddr::from([127, 0, 0, 1])),
                IpNet::from(IpAddr::from(Ipv6Addr::LOCALHOST)),
            ],
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            keep_alive_interval: Duration::from_secs(30),
            keep_alive_timeout: Duration::from_secs(10),
        }
    }

    /// Whether `peer` may use the operator reserve.
    pub fn is_operator(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.operator_networks.iter().any(|net| net.contains(&peer))
    }
}

/// Raises the soft limit of open files to the hard limit; returns the soft limit in force
/// afterwards (the old one when it cannot be raised).
pub fn raise_nofile_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft >= hard {
        return soft;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => {
            tracing::info!(from = soft, to = hard, "raised the open-file limit");
            hard
        }
        Err(error) => {
            tracing::warn!(%error, soft, hard, "cannot raise the open-file limit");
            soft
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `max_connections` (and, for an operator, the reserve) are all in use.
    Total,
    /// The peer's address has `max_per_address` open.
    PerAddress,
}

/// Counts open connections and admits new ones within the caps.
#[derive(Debug, Clone)]
pub struct Gate {
    inner: Arc<Mutex<Counts>>,
    limits: Arc<ConnectionLimits>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// An admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Permit {
    inner: Arc<Mutex<Counts>>,
    key: IpAddr,
}

impl Gate {
    /// A gate for `limits`.
    pub fn new(limits: ConnectionLimits) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Counts::default())),
            limits: Arc::new(limits),
        }
    }

    /// The limits.
    pub fn limits(&self) -> &ConnectionLimits {
        &self.limits
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        lock(&self.inner).total
    }

    /// Admits a connection from `peer`, or says which cap it hit. The per-address map holds
    /// only addresses with open connections, so it never outgrows the total cap.
    pub fn admit(&self, peer: IpAddr) -> Result<Permit, Refused> {
        let key = address_key(peer);
        let operator = self.limits.is_operator(peer);
        let mut counts = lock(&self.inner);
        let cap = if operator {
            self.limits
                .max_connections
                .saturating_add(self.limits.operator_reserve)
        } else {
            self.limits.max_connections
        };
        if counts.total >= cap {
            return Err(Refused::Total);
        }
        let mine = counts.per_address.get(&key).copied().unwrap_or(0);
        if !operator && mine >= self.limits.max_per_address {
            return Err(Refused::PerAddress);
        }
        counts.total += 1;
        counts.per_address.insert(key, mine + 1);
        drop(counts);
        Ok(Permit {
            inner: self.inner.clone(),
            key,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = lock(&self.inner);
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_address.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.per_address.remove(&self.key);
            }
        }
    }
}

fn lock(inner: &Mutex<Counts>) -> MutexGuard<'_, Counts> {
    inner
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(total: usize, per_address: usize, reserve: usize) -> Gate {
        Gate::new(ConnectionLimits {
            max_connections: total,
            max_per_address: per_address,
            operator_reserve: reserve,
            ..ConnectionLimits::default()
        })
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn caps_hold_per_address_and_in_total_and_free_on_drop() {
        let gate = gate(4, 2, 1);
        let a1 = gate.admit(ip("10.0.0.1")).unwrap();
        let _a2 = gate.admit(ip("::ffff:10.0.0.1")).unwrap();
        assert_eq!(gate.admit(ip("10.0.0.1")).unwrap_err(), Refused::PerAddress);
        let _b1 = gate.admit(ip("2001:db8::1")).unwrap();
        // Same /64: the same address for the cap.
        let _b2 = gate.admit(ip("2001:db8::ffff:2")).unwrap();
        assert_eq!(gate.admit(ip("2001:db8::3")).unwrap_err(), Refused::Total);
        assert_eq!(gate.admit(ip("10.0.0.9")).unwrap_err(), Refused::Total);
        // Loopback gets the reserve, once.
        let op = gate.admit(ip("127.0.0.1")).unwrap();
        assert_eq!(gate.admit(ip("::1")).unwrap_err(), Refused::Total);
        assert_eq!(gate.open(), 5);
        drop(op);
        drop(a1);
        assert_eq!(gate.open(), 3);
        assert!(gate.admit(ip("10.0.0.1")).is_ok());
        assert_eq!(lock(&gate.inner).per_address.len(), 2);
    }

    #[test]
    fn defaults_are_sized_from_the_file_limit() {
        let small = ConnectionLimits::sized_for(1024);
        assert_eq!(
            (small.max_connections, small.max_per_address),
            (736, DEFAULT_PER_ADDRESS)
        );
        let large = ConnectionLimits::sized_for(1 << 20);
        assert_eq!(large.max_connections, MAX_DEFAULT_CONNECTIONS);
        let tiny = ConnectionLimits::sized_for(64);
        assert_eq!((tiny.max_connections, tiny.max_per_address), (1, 1));
    }
}
