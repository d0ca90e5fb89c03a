//! Test support for the executor tests: network namespaces joined by a veth pair, listeners
//! and clients inside them, and a poll-with-deadline helper.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use policy_engine::{Action, ActionRecord, PolicyVersion};
use socket2::{Domain, Socket, Type};

/// The agent's address on the veth link.
pub const AGENT: &str = "192.0.2.1";
pub const AGENT6: &str = "2001:db8::1";
/// The attacker's address.
pub const ATTACKER: &str = "192.0.2.2";
pub const ATTACKER6: &str = "2001:db8::2";
/// Another address on the attacker's side that must keep working.
pub const OTHER: &str = "192.0.2.3";
pub const OTHER6: &str = "2001:db8::3";
/// The management server, also on the attacker's side.
pub const MANAGEMENT: &str = "192.0.2.10";
/// Port of the agent's listener and of the management server.
pub const PORT: u16 = 7000;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs a command, panicking with its output if it fails.
pub fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two network namespaces, "agent" and "attacker", joined by a veth pair; deleted on drop.
pub struct NetPair {
    pub agent: String,
    pub attacker: String,
}

impl NetPair {
    pub fn new() -> Self {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}-{n}", std::process::id());
        let pair = Self {
            agent: format!("pe-exec-agent-{id}"),
            attacker: format!("pe-exec-attacker-{id}"),
        };
        run(&["ip", "netns", "add", &pair.agent]);
        run(&["ip", "netns", "add", &pair.attacker]);
        run(&[
            "ip",
            "-n",
            &pair.agent,
            "link",
            "add",
            "veth0",
            "type",
            "veth",
            "peer",
            "name",
            "veth0",
            "netns",
            &pair.attacker,
        ]);
        for (ns, v4s, v6s) in [
            (&pair.agent, vec![AGENT], vec![AGENT6]),
            (
                &pair.attacker,
                vec![ATTACKER, OTHER, MANAGEMENT],
                vec![ATTACKER6, OTHER6],
            ),
        ] {
            for v4 in v4s {
                run(&[
                    "ip",
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{v4}/24"),
                    "dev",
                    "veth0",
                ]);
            }
            for v6 in v6s {
                run(&[
                    "ip",
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{v6}/64"),
                    "dev",
                    "veth0",
                    "nodad",
                ]);
            }
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            run(&["ip", "-n", ns, "link", "set", "veth0", "up"]);
        }
        // Static neighbours: a freshly raised link loses the first neighbour solicitations
        // for a second, which would make the first connections flaky.
        let agent_mac = mac(&pair.agent);
        let attacker_mac = mac(&pair.attacker);
        for ip in [AGENT, AGENT6] {
            run(&[
                "ip",
                "-n",
                &pair.attacker,
                "neigh",
                "replace",
                ip,
                "lladdr",
                &agent_mac,
                "dev",
                "veth0",
                "nud",
                "permanent",
            ]);
        }
        for ip in [ATTACKER, OTHER, MANAGEMENT, ATTACKER6, OTHER6] {
            run(&[
                "ip",
                "-n",
                &pair.agent,
                "neigh",
                "replace",
                ip,
                "lladdr",
                &attacker_mac,
                "dev",
                "veth0",
                "nud",
                "permanent",
            ]);
        }
        pair
    }

    /// `ip netns exec AGENT nft`, the firewall's command prefix.
    pub fn nft_command(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.agent, "nft"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// Runs `nft ARGS` in the agent namespace.
    pub fn nft(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.agent, "nft"];
        full.extend_from_slice(args);
        run(&full)
    }

    /// The elements of a set with their timeouts in seconds (`None`: no timeout).
    pub fn set_elements(&self, table: &str, set: &str) -> HashMap<String, Option<u64>> {
        let json: serde_json::Value =
            serde_json::from_str(&self.nft(&["-j", "list", "set", "inet", table, set])).unwrap();
        let mut out = HashMap::new();
        for item in json["nftables"].as_array().unwrap() {
            if let Some(elems) = item["set"]["elem"].as_array() {
                for e in elems {
                    match e {
                        serde_json::Value::String(ip) => {
                            out.insert(ip.clone(), None);
                        }
                        _ => {
                            out.insert(
                                e["elem"]["val"].as_str().unwrap().to_owned(),
                                e["elem"]["timeout"].as_u64(),
                            );
                        }
                    }
                }
            }
        }
        out
    }
}

/// The MAC address of `veth0` in `ns`.
fn mac(ns: &str) -> String {
    let json: serde_json::Value =
        serde_json::from_str(&run(&["ip", "-n", ns, "-j", "link", "show", "veth0"])).unwrap();
    json[0]["address"].as_str().unwrap().to_owned()
}

impl Drop for NetPair {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.agent])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.attacker])
            .status();
    }
}

/// Runs `f` on a thread that has entered the network namespace `ns`.
pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let handle = File::open(format!("/var/run/netns/{ns}")).unwrap();
                setns(handle, CloneFlags::CLONE_NEWNET).unwrap();
                f()
            })
            .join()
            .unwrap()
    })
}

/// A TCP listener on `[::]:port` (IPv4 too) inside `ns`. The kernel completes handshakes
/// without `accept`, so nothing needs to serve it.
pub fn listen(ns: &str, port: u16) -> TcpListener {
    in_ns(ns, || TcpListener::bind(("::", port)).unwrap())
}

/// Tries a TCP connection from `from` (an address in `ns`) to `to`, giving up after 300 ms.
pub fn connect(ns: &str, from: &str, to: SocketAddr) -> io::Result<()> {
    let from: IpAddr = from.parse().unwrap();
    in_ns(ns, || {
        let domain = if from.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let socket = Socket::new(domain, Type::STREAM, None)?;
        socket.bind(&SocketAddr::new(from, 0).into())?;
        socket.connect_timeout(&to.into(), Duration::from_millis(300))
    })
}

/// `ip:port`.
pub fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// Polls `condition` until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An action record for `action` from rule 0 of policy v1.
pub fn record(action: Action) -> ActionRecord {
    ActionRecord {
        action,
        rule: 0,
        policy_version: PolicyVersion::new(1),
        event_id: Some("evt-test".into()),
    }
}

/// A stand-in for `nft` that accepts every script, for tests that do no firewall work.
pub fn fake_nft() -> Vec<String> {
    ["sh", "-c", "cat > /dev/null", "nft"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}
