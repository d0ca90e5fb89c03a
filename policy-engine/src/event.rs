//! Threat events: the engine's input, parsed from JSON objects and JSON Lines.

mod fast;
mod json;
mod lines;

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::severity::Severity;

pub use lines::{EventLines, LineError, SliceLines, parse_lines};

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

impl ThreatEvent {
    /// Parses one event object (CONTRACT section 2).
    ///
    /// Known fields must have their documented types (`null` counts as absent); `srcIp` is
    /// canonicalized; any other field is kept in `extra`. Duplicate fields are rejected.
    ///
    /// ```
    /// use policy_engine::ThreatEvent;
    /// let event = ThreatEvent::from_json(br#"{"type":"brute_force","srcIp":"::ffff:203.0.113.7","attempts":3}"#).unwrap();
    /// assert_eq!(event.src_ip, Some("203.0.113.7".parse().unwrap()));
    /// assert_eq!(event.extra["attempts"], 3);
    /// let err = ThreatEvent::from_json(br#"{"severity":"urgent"}"#).unwrap_err();
    /// assert_eq!(err.to_string(), "field `severity`: expected one of `info`, `low`, `medium`, `high`, `critical`, found `urgent` at line 1 column 20");
    /// ```
    pub fn from_json(bytes: &[u8]) -> Result<ThreatEvent, EventError> {
        if let Some(event) = fast::parse(bytes) {
            return Ok(event);
        }
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let event = serde::Deserialize::deserialize(&mut de).map_err(EventError::from_json)?;
        de.end().map_err(EventError::from_json)?;
        Ok(event)
    }
}

/// Why a JSON text is not a valid threat event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct EventError {
    /// What is wrong, with the position in the text where known.
    pub message: String,
}

impl EventError {
    fn from_json(err: serde_json::Error) -> Self {
        Self {
            message: err.to_string(),
        }
    }
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

#[cfg(test)]
mod tests;
