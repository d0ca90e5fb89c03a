//! The README's quick start as a newcomer runs it: start the binary on a fresh data dir, read
//! the printed admin token, run the API page's `curl` examples with `-k`, stop with SIGTERM, then
//! restart and stop with SIGINT.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_reference-server");

/// Kills the server if the test fails half-way.
struct Server {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Server {
    fn start(data_dir: &Path) -> Self {
        let mut child = Command::new(BIN)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env_remove("POLICY_ADMIN_TOKEN")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    fn line(&self) -> String {
        self.lines.recv_timeout(Duration::from_secs(20)).unwrap()
    }

    /// Sends `signal` (`TERM` or `INT`, as a service manager or Ctrl-C would) and waits.
    fn stop(mut self, signal: &str) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args([&format!("-{signal}"), &pid])
                .status()
                .unwrap()
                .success()
        );
        let status = self.child.wait().unwrap();
        std::mem::forget(self);
        status
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn curl(args: &[&str]) -> (u16, Value) {
    let output = Command::new("curl")
        .args(["-sS", "-k", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), serde_json::from_str(body).unwrap())
}

#[test]
fn quick_start_runs_the_api_page_examples() {
    let dir = tempfile::Builder::new()
        .prefix(&format!("policy-quick-start-{}-", std::process::id()))
        .tempdir()
        .unwrap();
    let server = Server::start(dir.path());
    let token_line = server.line();
    let token = token_line
        .strip_prefix("admin token (shown once, keep it): ")
        .unwrap_or_else(|| panic!("unexpected first line: {token_line}"))
        .to_owned();
    let listen_line = server.line();
    let base = listen_line
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    assert!(base.starts_with("https://127.0.0.1:"), "{base}");
    let base = base.replace("127.0.0.1", "localhost");

    // The API page's POST example, verbatim but for the host, -k and the token.
    let auth = format!("Authorization: Bearer {token}");
    let (status, body) = curl(&[
        "-X",
        "POST",
        &format!("{base}/api/policy"),
        "-H",
        &auth,
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{
    "name": "Block Brute Force Sources",
    "description": "Automatically block IPs after repeated SSH failures",
    "rules": [
      {
        "type": "block_ip",
        "config": {
          "trigger": "brute_force",
          "threshold": 50,
          "duration": "24h",
          "scope": "host"
        },
        "enabled": true
      },
      {
        "type": "alert_threshold",
        "config": {
          "severity": "critical",
          "countPerHour": 5,
          "notifyChannels": ["telegram", "email"]
        },
        "enabled": true
      }
    ]
  }"#,
    ]);
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["data"]["version"], "v1");
    assert_eq!(body["data"]["name"], "Block Brute Force Sources");
    assert_eq!(body["data"]["broadcastedTo"], 0);

    let (status, active) = curl(&[
        "-X",
        "GET",
        &format!("{base}/api/policy/active"),
        "-H",
        &auth,
    ]);
    assert_eq!(status, 200, "{active}");
    assert_eq!(active["data"]["id"], body["data"]["id"]);
    assert_eq!(active["data"]["rules"], body["data"]["rules"]);

    let (status, enrolled) = curl(&[
        "-X",
        "POST",
        &format!("{base}/api/agents/enroll"),
        "-H",
        &auth,
        "-d",
        r#"{"hostname": "web-1"}"#,
    ]);
    assert_eq!(status, 201, "{enrolled}");
    let agent = enrolled["data"]["agentId"].as_str().unwrap();
    let (status, assigned) = curl(&[
        "-X",
        "GET",
        &format!("{base}/api/policy/agent/{agent}"),
        "-H",
        &auth,
    ]);
    assert_eq!(status, 200, "{assigned}");
    assert_eq!(assigned["data"]["policyVersion"], "v1");
    assert_eq!(assigned["data"]["rules"], body["data"]["rules"]);

    assert!(server.stop("TERM").success());

    // Second start on the same data dir: no new token, the old one still works.
    let server = Server::start(dir.path());
    let listen_line = server.line();
    let base = listen_line
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    let (status, active) = curl(&[&format!("{base}/api/policy/active"), "-H", &auth]);
    assert_eq!(status, 200, "{active}");
    assert_eq!(active["data"]["version"], "v1");
    // Ctrl-C stops it as cleanly.
    assert!(server.stop("INT").success());
}

#[test]
fn help_documents_every_flag() {
    let output = Command::new(BIN).arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for flag in [
        "--listen",
        "--data-dir",
        "--tls-cert",
        "--tls-key",
        "--plain-http",
        "--admin-token",
        "POLICY_ADMIN_TOKEN",
        "--keep-alive-secs",
        "--stream-queue",
        "--max-connections",
        "--max-connections-per-ip",
        "--operator-connections",
        "--operator-network",
        "--tls-handshake-timeout-secs",
        "--header-read-timeout-secs",
        "--idle-timeout-secs",
        "--h2-keep-alive-secs",
        "--auth-failures-per-minute",
        "--reports-per-minute",
        "--report-kib-per-hour",
        "--max-pending-approvals",
        "--never-block",
        "--log-format",
        "[default: 127.0.0.1:8443]",
        "[default: ./data]",
    ] {
        assert!(help.contains(flag), "`{flag}` missing from --help:\n{help}");
    }
}

/// Regression: over HTTP/2 (what curl negotiates over TLS) a 413 sent before the client had
/// finished sending made hyper reset the stream, and curl reported a framing error instead of
/// the 413.
#[test]
fn an_oversized_body_gets_413_over_http2_and_http1() {
    let dir = tempfile::Builder::new()
        .prefix(&format!("policy-oversized-{}-", std::process::id()))
        .tempdir()
        .unwrap();
    let server = Server::start(dir.path());
    let token = server
        .line()
        .strip_prefix("admin token (shown once, keep it): ")
        .unwrap()
        .to_owned();
    let base = server
        .line()
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    let body = dir.path().join("big.json");
    std::fs::write(
        &body,
        format!(
            r#"{{"name":"{}","rules":[]}}"#,
            "x".repeat(1024 * 1024 + 10)
        ),
    )
    .unwrap();
    let auth = format!("Authorization: Bearer {token}");
    let data = format!("@{}", body.display());
    for version in ["--http2", "--http1.1"] {
        let (status, answer) = curl(&[
            version,
            "-X",
            "POST",
            &format!("{base}/api/policy"),
            "-H",
            &auth,
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &data,
        ]);
        assert_eq!(status, 413, "{version}: {answer}");
        assert_eq!(answer["error"]["code"], "payload_too_large", "{version}");
        assert_eq!(
            answer["error"]["message"], "request body is larger than the limit of 1048576 bytes",
            "{version}"
        );
    }
    // Nothing was stored.
    let (status, active) = curl(&[&format!("{base}/api/policy/active"), "-H", &auth]);
    assert_eq!(status, 404, "{active}");
    assert!(server.stop("TERM").success());
}
