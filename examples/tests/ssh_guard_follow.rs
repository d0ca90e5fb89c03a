//! `ssh-guard --follow --dry-run` on a log that grows, is rotated and is truncated, as
//! logrotate does it (`create` and `copytruncate`).

// Test helpers outside `#[test]` functions may unwrap and index too.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use examples::example_bin;

const POLICY: &str = r#"{"name":"ssh","rules":[{"type":"block_ip","config":{"trigger":"brute_force","threshold":2,"duration":"1h","scope":"host"}}]}"#;

/// Kills the guard even when an assertion fails.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn append(path: &Path, lines: &[String]) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for line in lines {
        writeln!(file, "{line}").unwrap();
    }
}

fn failures(ip: &str) -> Vec<String> {
    (1..=2)
        .map(|port| format!("Mar  7 12:00:0{port} web1 sshd[{port}]: Failed password for root from {ip} port {port} ssh2"))
        .collect()
}

fn wait_for_ips(actions: &Mutex<Vec<String>>, expected: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ips: Vec<String> = actions
            .lock()
            .unwrap()
            .iter()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["ip"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        if ips == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "expected blocks of {expected:?}, got {ips:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn follows_growth_rotation_and_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("auth.log");
    let policy = dir.path().join("policy.json");
    std::fs::write(&policy, POLICY).unwrap();
    // Lines already there are history: not read without --from-start.
    append(&log, &failures("192.0.2.1"));
    let mut child = Command::new(example_bin("ssh-guard"))
        .args([
            "--follow",
            "--dry-run",
            "--poll-ms",
            "20",
            "--log",
            log.to_str().unwrap(),
        ])
        .args(["--policy", policy.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let _running = Running(child);
    let mut banner = String::new();
    stderr.read_line(&mut banner).unwrap();
    assert_eq!(
        banner,
        format!("ssh-guard: following `{}`\n", log.display())
    );
    let actions = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&actions);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });

    append(&log, &failures("192.0.2.2"));
    wait_for_ips(&actions, &["192.0.2.2"]);

    // logrotate `create`: renamed away, a new file in its place.
    // Other programs' lines first, so that the file is longer than what replaces it after the
    // truncation below (a truncation is seen as the file getting shorter, as with `tail -F`).
    std::fs::rename(&log, dir.path().join("auth.log.1")).unwrap();
    let noise: Vec<String> = (0..20)
        .map(|i| format!("Mar  7 12:00:00 web1 CRON[{i}]: session opened"))
        .collect();
    append(&log, &noise);
    append(&log, &failures("192.0.2.3"));
    wait_for_ips(&actions, &["192.0.2.2", "192.0.2.3"]);

    // logrotate `copytruncate`: the same file emptied in place.
    std::fs::write(&log, "").unwrap();
    append(&log, &failures("192.0.2.4"));
    wait_for_ips(&actions, &["192.0.2.2", "192.0.2.3", "192.0.2.4"]);
}
