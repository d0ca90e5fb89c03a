//! Threat events: the engine's input, parsed from JSON objects and JSON Lines.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::severity::Severity;

/// A threat reported by a detector (CONTRACT section 2).
///
/// Known fields are typed; every other field is kept in `extra`, where custom conditions can
/// read it. `srcIp` given as `::ffff:a.b.c.d` is stored as the IPv4 address `a.b.c.d`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ThreatEvent {
    /// `id`
    pub id: Option<String>,
    /// `timestamp` (RFC 3339)
    pub timestamp: Option<DateTime<Utc>>,
    /// `type`: the threat type, e.g. `brute_force`
    pub threat_type: Option<String>,
    /// `severity`
    pub severity: Option<Severity>,
    /// `confidence`, 0.0 to 1.0; absent means 0.0
    pub confidence: f64,
    /// `srcIp`, IPv4-mapped IPv6 addresses canonicalized to IPv4
    pub src_ip: Option<IpAddr>,
    /// `dstPort`
    pub dst_port: Option<u16>,
    /// `pid`
    pub pid: Option<u32>,
    /// `process`
    pub process: Option<String>,
    /// `filePath`
    pub file_path: Option<String>,
    /// `user`
    pub user: Option<String>,
    /// `host`
    pub host: Option<String>,
    /// Every other field, by name.
    pub extra: Map<String, Value>,
}

/// Canonical form of an address: `::ffff:a.b.c.d` becomes `a.b.c.d`, so an attacker cannot
/// dodge a block by switching notation.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}
