//! Exactness of `ssh-guard` on generated, labelled logs: a source is blocked exactly when the
//! policy says so (N attempts inside the window, counted one per failed authentication).
//!
//! The generator writes interleaved sshd connections of several profiles (attackers just above
//! and just below the threshold, slow and distributed attackers, users with typos, monitoring
//! hosts, key-trying clients, injected user names, spoofed program names) and knows which
//! addresses must end up blocked.

// Test helpers outside `#[test]` functions may unwrap and index too.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use examples::example_bin;

/// Threshold 5 in 10 minutes, 1h blocks.
const POLICY: &str = r#"{"name":"ssh","rules":[{"type":"block_ip","config":{"trigger":"brute_force","threshold":5,"window":"10m","duration":"1h","scope":"host"}}]}"#;

/// Small deterministic generator (xorshift64*), so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone, Copy)]
enum Stamps {
    Classic,
    Rfc3339,
}

/// A log under construction: lines with their time in seconds, sorted at the end.
struct Log {
    lines: Vec<(u64, usize, String)>,
    next_pid: u32,
    stamps: Stamps,
    rng: Rng,
    blocked: BTreeSet<String>,
}

impl Log {
    fn new(seed: u64, stamps: Stamps) -> Self {
        Self {
            lines: Vec::new(),
            next_pid: 1000,
            stamps,
            rng: Rng(seed | 1),
            blocked: BTreeSet::new(),
        }
    }

    /// One sshd line at `t` seconds after 2026-03-07 00:00:00 UTC.
    fn sshd(&mut self, t: u64, pid: u32, message: &str) {
        self.raw(t, &format!("sshd[{pid}]: {message}"));
    }

    fn raw(&mut self, t: u64, tagged: &str) {
        let (h, m, s) = (t / 3600, t / 60 % 60, t % 60);
        let line = match self.stamps {
            Stamps::Classic => format!("Mar  7 {h:02}:{m:02}:{s:02} web1 {tagged}"),
            Stamps::Rfc3339 => format!(
                "2026-03-07T{h:02}:{m:02}:{s:02}.{:06}+00:00 web1 {tagged}",
                t % 7
            ),
        };
        let order = self.lines.len();
        self.lines.push((t, order, line));
    }

    fn pid(&mut self) -> u32 {
        self.next_pid += 1;
        self.next_pid
    }

    fn port(&mut self) -> u64 {
        1024 + self.rng.below(60_000)
    }

    /// One failed attempt by `ip` at `t`, in one of the shapes sshd logs it.
    fn attempt(&mut self, t: u64, ip: &str) {
        let pid = self.pid();
        let port = self.port();
        match self.rng.below(5) {
            0 => {
                self.sshd(
                    t,
                    pid,
                    &format!("Failed password for root from {ip} port {port} ssh2"),
                );
                self.sshd(
                    t + 1,
                    pid,
                    &format!(
                        "Connection closed by authenticating user root {ip} port {port} [preauth]"
                    ),
                );
            }
            1 => {
                self.sshd(t, pid, &format!("Invalid user admin from {ip} port {port}"));
                self.sshd(
                    t + 1,
                    pid,
                    &format!("Failed password for invalid user admin from {ip} port {port} ssh2"),
                );
                self.sshd(
                    t + 2,
                    pid,
                    &format!("Connection closed by invalid user admin {ip} port {port} [preauth]"),
                );
            }
            2 => {
                self.sshd(
                    t,
                    pid,
                    &format!("Invalid user oracle from {ip} port {port}"),
                );
                self.sshd(
                    t + 1,
                    pid,
                    &format!("Connection closed by invalid user oracle {ip} port {port} [preauth]"),
                );
            }
            3 => {
                self.sshd(
                    t,
                    pid,
                    &format!("Received disconnect from {ip} port {port}:11: Bye Bye [preauth]"),
                );
                self.sshd(
                    t,
                    pid,
                    &format!("Disconnected from {ip} port {port} [preauth]"),
                );
            }
            _ => {
                self.sshd(t, pid, &format!("pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost={ip}  user=ubuntu"));
                self.sshd(
                    t + 1,
                    pid,
                    &format!(
                        "Failed keyboard-interactive/pam for ubuntu from {ip} port {port} ssh2"
                    ),
                );
                self.sshd(
                    t + 1,
                    pid,
                    &format!("error: PAM: Authentication failure for ubuntu from {ip}"),
                );
            }
        }
    }

    /// Several failed passwords on one connection: each is an attempt.
    fn attempts_on_one_connection(&mut self, t: u64, ip: &str, n: u64) {
        let pid = self.pid();
        let port = self.port();
        for i in 0..n {
            self.sshd(
                t + i * 2,
                pid,
                &format!("Failed password for root from {ip} port {port} ssh2"),
            );
        }
        self.sshd(
            t + n * 2,
            pid,
            &format!("Connection closed by authenticating user root {ip} port {port} [preauth]"),
        );
    }

    fn text(mut self) -> (String, BTreeSet<String>) {
        self.lines.sort();
        let mut text = String::new();
        for (_, _, line) in &self.lines {
            let _ = writeln!(text, "{line}");
        }
        (text, self.blocked)
    }
}

/// Builds one labelled log.
fn generate(seed: u64, stamps: Stamps) -> (String, BTreeSet<String>) {
    let mut log = Log::new(seed, stamps);
    let start = 3600;

    // Just above the threshold: 5 attempts in under 10 minutes, in every shape.
    for k in 0..6 {
        let ip = format!("203.0.113.{}", 10 + k);
        let t0 = start + log.rng.below(7200);
        for i in 0..5 {
            let at = t0 + i * 100 + log.rng.below(20);
            log.attempt(at, &ip);
        }
        log.blocked.insert(ip);
    }
    // Just below: 4 attempts in 10 minutes, twice, hours apart.
    for k in 0..6 {
        let ip = format!("198.51.100.{}", 10 + k);
        for burst in 0..2 {
            let t0 = start + burst * 7200 + log.rng.below(1800);
            for i in 0..4 {
                log.attempt(t0 + i * 120, &ip);
            }
        }
    }
    // Several failures on one connection count one each: 3 + 2 = 5 -> blocked.
    log.attempts_on_one_connection(start + 100, "203.0.113.50", 3);
    log.attempts_on_one_connection(start + 200, "203.0.113.50", 2);
    log.blocked.insert("203.0.113.50".into());
    // A heavy attacker goes on while blocked: blocked once.
    for i in 0..200 {
        log.attempt(start + 300 + i * 5, "203.0.113.60");
    }
    log.blocked.insert("203.0.113.60".into());
    // Slow attacker: one attempt every 3 minutes for 5 hours (at most 4 per 10 minutes).
    for i in 0..100 {
        log.attempt(start + i * 180, "198.51.100.70");
    }
    // Distributed attack: 40 addresses, 3 attempts each.
    for k in 0..40 {
        let ip = format!("192.0.2.{}", 100 + k);
        for i in 0..3 {
            log.attempt(start + 600 + k * 7 + i * 60, &ip);
        }
    }
    // A user with typos: two wrong passwords, then in; five times a day.
    for day_part in 0..5 {
        let t0 = start + day_part * 3000;
        let pid = log.pid();
        let port = log.port();
        let ip = "198.51.100.80";
        log.sshd(
            t0,
            pid,
            &format!("Failed password for alice from {ip} port {port} ssh2"),
        );
        log.sshd(
            t0 + 3,
            pid,
            &format!("Failed password for alice from {ip} port {port} ssh2"),
        );
        log.sshd(
            t0 + 6,
            pid,
            &format!("Accepted password for alice from {ip} port {port} ssh2"),
        );
        log.sshd(
            t0 + 6,
            pid,
            "pam_unix(sshd:session): session opened for user alice(uid=1000) by (uid=0)",
        );
        log.sshd(
            t0 + 900,
            pid,
            &format!("Received disconnect from {ip} port {port}:11: disconnected by user"),
        );
        log.sshd(
            t0 + 900,
            pid,
            &format!("Disconnected from user alice {ip} port {port}"),
        );
    }
    // A client trying its keys in turn before the right one: not an attack.
    for i in 0..30 {
        let t0 = start + i * 60;
        let pid = log.pid();
        let port = log.port();
        let ip = "198.51.100.81";
        for key in ["ECDSA SHA256:aaa", "RSA SHA256:bbb", "ED25519 SHA256:ccc"] {
            log.sshd(
                t0,
                pid,
                &format!("Failed publickey for git from {ip} port {port} ssh2: {key}"),
            );
        }
        log.sshd(
            t0 + 1,
            pid,
            &format!("Accepted publickey for git from {ip} port {port} ssh2: ED25519 SHA256:ddd"),
        );
        log.sshd(
            t0 + 5,
            pid,
            &format!("Connection closed by {ip} port {port}"),
        );
    }
    // Monitoring hosts: TCP open and close every 30 s for hours.
    for i in 0..600 {
        let t0 = start + i * 30;
        let pid = log.pid();
        let port = log.port();
        log.sshd(
            t0,
            pid,
            "error: kex_exchange_identification: Connection closed by remote host",
        );
        log.sshd(
            t0,
            pid,
            &format!("Connection closed by 198.51.100.90 port {port}"),
        );
        let pid = log.pid();
        log.sshd(
            t0 + 1,
            pid,
            "Did not receive identification string from 198.51.100.91 port 4444",
        );
        let pid = log.pid();
        log.sshd(
            t0 + 2,
            pid,
            &format!("Connection reset by 198.51.100.92 port {port}"),
        );
    }
    // Injected user names: the attacker is blocked, the address in the name is not.
    for i in 0..5 {
        let t0 = start + 1000 + i * 30;
        let pid = log.pid();
        let port = log.port();
        let attacker = "203.0.113.70";
        let victim = "198.51.100.200";
        log.sshd(
            t0,
            pid,
            &format!("Invalid user x from {victim} port 22 from {attacker} port {port}"),
        );
        log.sshd(
            t0 + 1,
            pid,
            &format!("Failed password for invalid user x from {victim} port 22 ssh2 from {attacker} port {port} ssh2"),
        );
        log.sshd(
            t0 + 2,
            pid,
            &format!("Connection closed by invalid user x from {victim} port 22 {attacker} port {port} [preauth]"),
        );
    }
    log.blocked.insert("203.0.113.70".into());
    // Spoofed program names: sshd-looking lines from other programs about a victim.
    for i in 0..20 {
        let t0 = start + 2000 + i * 10;
        let msg = format!(
            "Failed password for root from 198.51.100.201 port {} ssh2",
            1000 + i
        );
        log.raw(t0, &format!("sshd2[{}]: {msg}", 50 + i));
        log.raw(t0, &format!("logger[{}]: sshd[1]: {msg}", 50 + i));
        log.raw(t0, &format!("sshd-sessions[{}]: {msg}", 50 + i));
    }
    // IPv4-mapped IPv6 and plain IPv4 are one source; IPv6 sources work too.
    for i in 0..5 {
        let ip = if i % 2 == 0 {
            "::ffff:203.0.113.80"
        } else {
            "203.0.113.80"
        };
        log.attempt(start + 4000 + i * 60, ip);
        log.attempt(start + 4000 + i * 60, "2001:db8::bad");
    }
    log.blocked.insert("203.0.113.80".into());
    log.blocked.insert("2001:db8::bad".into());
    // sshd-session (OpenSSH 9.8+) lines count like sshd's.
    for i in 0..5 {
        let t0 = start + 5000 + i * 10;
        log.raw(
            t0,
            &format!(
                "sshd-session[{}]: Failed password for root from 203.0.113.90 port {} ssh2",
                7000 + i,
                2000 + i
            ),
        );
    }
    log.blocked.insert("203.0.113.90".into());
    log.text()
}

fn ssh_guard(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(example_bin("ssh-guard"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn blocked_ips(output: &Output) -> Vec<String> {
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    stdout
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|action| action["action"] == "block_ip")
        .map(|action| action["ip"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn exactly_the_labelled_sources_are_blocked_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    std::fs::write(&policy, POLICY).unwrap();
    for seed in [1, 2, 3] {
        for stamps in [Stamps::Classic, Stamps::Rfc3339] {
            let (log, expected) = generate(seed, stamps);
            let output = ssh_guard(
                &["--policy", policy.to_str().unwrap(), "--year", "2026"],
                log.as_bytes(),
            );
            assert_eq!(
                output.status.code(),
                Some(0),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
            let mut blocked = blocked_ips(&output);
            blocked.sort();
            let expected: Vec<String> = expected.into_iter().collect();
            assert_eq!(blocked, expected, "seed {seed}");
        }
    }
}

#[test]
fn actions_are_contract_json_and_the_summary_counts() {
    let log = "\
Mar  7 12:00:01 web1 sshd[1]: Failed password for root from 203.0.113.7 port 1 ssh2
Mar  7 12:00:02 web1 sshd[2]: Failed password for root from 203.0.113.7 port 2 ssh2
Mar  7 12:00:03 web1 cron[3]: something else
";
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"name":"ssh","rules":[{"type":"block_ip","config":{"trigger":"brute_force","threshold":2,"duration":"24h","scope":"host"}}]}"#,
    )
    .unwrap();
    let output = ssh_guard(
        &[
            "--policy",
            policy.to_str().unwrap(),
            "--year",
            "2026",
            "--policy-version",
            "v3",
        ],
        log.as_bytes(),
    );
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        String::from_utf8(output.stdout.clone()).unwrap(),
        "{\"action\":\"block_ip\",\"ip\":\"203.0.113.7\",\"duration\":\"24h\",\"scope\":\"host\",\"rule\":0,\"policyVersion\":\"v3\",\"eventId\":\"sshd:2\"}\n"
    );
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.starts_with(
            "ssh-guard: 3 lines read (2 from sshd), 2 attempts found, 1 IPs tracked, 1 actions (1 block_ip, 0 alert), 0 connections dropped at the cap, 0 keys evicted, "
        ),
        "{stderr}"
    );
}

#[test]
fn the_default_policy_is_the_api_page_example() {
    // 50 attempts block (threshold 50); the alert rule counts critical events only.
    let mut log = String::new();
    for i in 0..60 {
        let _ = writeln!(
            log,
            "Mar  7 12:{:02}:00 web1 sshd[{i}]: Failed password for root from 203.0.113.9 port {i} ssh2",
            i % 60
        );
    }
    let output = ssh_guard(&["--year", "2026"], log.as_bytes());
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        stdout,
        "{\"action\":\"block_ip\",\"ip\":\"203.0.113.9\",\"duration\":\"24h\",\"scope\":\"host\",\"rule\":0,\"policyVersion\":\"v1\",\"eventId\":\"sshd:50\"}\n"
    );
}

#[test]
fn a_bad_policy_file_is_reported_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("bad.json");
    std::fs::write(&policy, r#"{"name":"x","rules":[{"type":"block_ip","config":{"trigger":"brute_force","treshold":5,"duration":"1h","scope":"host"}}]}"#).unwrap();
    let output = ssh_guard(&["--policy", policy.to_str().unwrap()], b"");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.starts_with(&format!("Error: invalid policy `{}`", policy.display())),
        "{stderr}"
    );
}
