//! Per-connection state with a hard cap: two generations of hash maps, the older one dropped
//! whole when the younger fills up, so memory never grows past the cap and eviction is O(1)
//! amortized (an approximation of least-recently-used that needs no linked list).

use foldhash::HashMap;
use std::mem;
use std::net::IpAddr;

/// How a line is tied to its connection: by the sshd process that logged it when the log
/// names one, else by the client's address and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ConnKey {
    Pid(u32),
    Peer(IpAddr, u16),
}

/// What is known about one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Conn {
    /// The client address; a line with another address under the same key starts a new
    /// connection (the PID was reused).
    pub ip: IpAddr,
    /// The user named by `Invalid user` or `not allowed`, for the attempt emitted on close.
    pub user: Option<Box<str>>,
    /// Attempts already emitted for this connection.
    pub counted: u32,
    /// `Failed publickey` for an existing user: a client trying its keys in turn. Held until
    /// the connection ends; forgotten if a key is accepted.
    pub pending_keys: u32,
    /// The user was refused (`Invalid user`, `not allowed`) and no password was checked yet.
    pub refused: bool,
    /// A login succeeded.
    pub accepted: bool,
    /// The connection was seen ending; later close lines for it are repeats.
    pub closed: bool,
}

impl Conn {
    fn new(ip: IpAddr) -> Self {
        Self {
            ip,
            user: None,
            counted: 0,
            pending_keys: 0,
            refused: false,
            accepted: false,
            closed: false,
        }
    }
}

/// The bounded table.
#[derive(Debug)]
pub(crate) struct ConnTable {
    half: usize,
    young: HashMap<ConnKey, Conn>,
    old: HashMap<ConnKey, Conn>,
    evicted: u64,
}

impl ConnTable {
    /// A table that holds at most `cap` connections (at least 2).
    pub fn new(cap: usize) -> Self {
        let half = (cap / 2).max(1);
        Self {
            half,
            young: HashMap::default(),
            old: HashMap::default(),
            evicted: 0,
        }
    }

    /// The connection under `key`, created (or restarted, when `ip` differs) as needed.
    pub fn get(&mut self, key: ConnKey, ip: IpAddr) -> &mut Conn {
        if !self.young.contains_key(&key) {
            let conn = self
                .old
                .remove(&key)
                .filter(|c| c.ip == ip)
                .unwrap_or_else(|| Conn::new(ip));
            if self.young.len() >= self.half {
                self.evicted += self.old.len() as u64;
                mem::swap(&mut self.young, &mut self.old);
                self.young.clear();
            }
            self.young.insert(key, conn);
        }
        let conn = self.young.entry(key).or_insert_with(|| Conn::new(ip));
        if conn.ip != ip {
            *conn = Conn::new(ip);
        }
        conn
    }

    /// Connections held now.
    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    /// Connections dropped to stay under the cap.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_holds_more_than_the_cap() {
        let mut table = ConnTable::new(100);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for pid in 0..10_000 {
            table.get(ConnKey::Pid(pid), ip).counted += 1;
            assert!(table.len() <= 100);
        }
        assert_eq!(table.evicted(), 10_000 - table.len() as u64);
    }

    #[test]
    fn recent_connections_survive_a_generation_change() {
        let mut table = ConnTable::new(4);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        table.get(ConnKey::Pid(1), ip).counted = 7;
        table.get(ConnKey::Pid(2), ip);
        table.get(ConnKey::Pid(3), ip);
        assert_eq!(table.get(ConnKey::Pid(1), ip).counted, 7);
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(
            table.get(ConnKey::Pid(1), other).counted,
            0,
            "a reused PID starts afresh"
        );
    }
}
