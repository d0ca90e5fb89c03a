//! Address ranges (`10.0.0.0/8`, `2001:db8::/32`) and the allowlist of what is never blocked.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use crate::event::canonical_ip;

/// An address range: an address and a prefix length.
///
/// ```
/// use policy_engine::executor::Cidr;
/// let net: Cidr = "10.1.0.0/16".parse().unwrap();
/// assert!(net.contains("10.1.2.3".parse().unwrap()));
/// assert!(!net.contains("10.2.0.1".parse().unwrap()));
/// assert_eq!("192.0.2.7".parse::<Cidr>().unwrap().to_string(), "192.0.2.7/32");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a CIDR string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// Not `address` or `address/prefix`.
    #[error("expected an address or CIDR like `10.0.0.0/8`, found `{0}`")]
    Syntax(String),
    /// Prefix longer than the address.
    #[error("prefix of `{0}` is longer than the address (32 for IPv4, 128 for IPv6)")]
    Prefix(String),
}

impl Cidr {
    /// The range of `addr` with `prefix` bits; `None` if the prefix is too long.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let addr = canonical_ip(addr);
        let max = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        (prefix <= max).then_some(Self { addr, prefix })
    }

    /// The range holding only `addr`.
    pub fn host(addr: IpAddr) -> Self {
        let addr = canonical_ip(addr);
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        Self { addr, prefix }
    }

    /// Whether `ip` lies in this range (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical_ip(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || CidrError::Syntax(s.to_owned());
        match s.split_once('/') {
            None => s.parse().map(Self::host).map_err(|_| syntax()),
            Some((addr, prefix)) => {
                let addr: IpAddr = addr.parse().map_err(|_| syntax())?;
                if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(syntax());
                }
                let prefix: u8 = prefix
                    .parse()
                    .map_err(|_| CidrError::Prefix(s.to_owned()))?;
                // A mapped IPv4 range is written with an IPv6 prefix: convert it.
                let prefix = match addr {
                    IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => prefix.saturating_sub(96),
                    _ => prefix,
                };
                Self::new(addr, prefix).ok_or_else(|| CidrError::Prefix(s.to_owned()))
            }
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Addresses that must stay reachable whatever a policy says: loopback, unspecified and
/// multicast addresses always, plus the management servers and the configured ranges.
///
/// ```
/// use policy_engine::executor::Allowlist;
/// let allow = Allowlist::new(vec!["192.0.2.10".parse().unwrap()], vec!["10.0.0.0/8".parse().unwrap()]);
/// assert_eq!(
///     allow.refusal("127.0.0.1".parse().unwrap()).unwrap(),
///     "`127.0.0.1` is a loopback address and is never blocked"
/// );
/// assert!(allow.refusal("192.0.2.10".parse().unwrap()).unwrap().contains("management server"));
/// assert!(allow.refusal("10.9.9.9".parse().unwrap()).unwrap().contains("`10.0.0.0/8`"));
/// assert_eq!(allow.refusal("203.0.113.7".parse().unwrap()), None);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    /// Addresses of the management servers.
    pub management: Vec<IpAddr>,
    /// Configured ranges.
    pub ranges: Vec<Cidr>,
}

impl Allowlist {
    /// An allowlist of these management addresses and ranges.
    pub fn new(management: Vec<IpAddr>, ranges: Vec<Cidr>) -> Self {
        Self { management, ranges }
    }

    /// Why `ip` must not be blocked, or `None` if it may be.
    pub fn refusal(&self, ip: IpAddr) -> Option<String> {
        let ip = canonical_ip(ip);
        if ip.is_loopback() {
            return Some(format!("`{ip}` is a loopback address and is never blocked"));
        }
        if ip.is_unspecified() || ip.is_multicast() || ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
            return Some(format!("`{ip}` is not a host address and is never blocked"));
        }
        if self.management.iter().any(|m| canonical_ip(*m) == ip) {
            return Some(format!(
                "`{ip}` is a management server address and is never blocked"
            ));
        }
        self.ranges
            .iter()
            .find(|range| range.contains(ip))
            .map(|range| {
                format!("`{ip}` is in the allowlisted range `{range}` and is never blocked")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_matches_ranges() {
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.1".parse().unwrap()));
        assert!(!all.contains("::2".parse().unwrap()));
        let mapped: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(mapped.to_string(), "10.0.0.0/8");
        assert!(mapped.contains("::ffff:10.3.4.5".parse().unwrap()));
    }

    #[test]
    fn rejects_bad_ranges_with_the_input() {
        assert_eq!(
            "10.0.0.0/33".parse::<Cidr>().unwrap_err().to_string(),
            "prefix of `10.0.0.0/33` is longer than the address (32 for IPv4, 128 for IPv6)"
        );
        assert_eq!(
            "10.0.0/8".parse::<Cidr>().unwrap_err().to_string(),
            "expected an address or CIDR like `10.0.0.0/8`, found `10.0.0/8`"
        );
        assert_eq!(
            "10.0.0.0/".parse::<Cidr>().unwrap_err().to_string(),
            "expected an address or CIDR like `10.0.0.0/8`, found `10.0.0.0/`"
        );
    }

    #[test]
    fn mapped_loopback_is_refused_as_loopback() {
        let allow = Allowlist::default();
        assert_eq!(
            allow.refusal("::ffff:127.0.0.1".parse().unwrap()).unwrap(),
            "`127.0.0.1` is a loopback address and is never blocked"
        );
        assert_eq!(
            allow.refusal("::1".parse().unwrap()).unwrap(),
            "`::1` is a loopback address and is never blocked"
        );
        assert_eq!(
            allow.refusal("0.0.0.0".parse().unwrap()).unwrap(),
            "`0.0.0.0` is not a host address and is never blocked"
        );
    }
}
