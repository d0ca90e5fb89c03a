//! The host decides what the agent may touch, not the server: the real `agent` binary (acting,
//! not a dry run) with `--protect-process` and `--protect-path`, the TLS reference server, and
//! approvals an admin grants for a protected process and a protected file named through a
//! symlink. The agent refuses both on the host and reports `skipped` with the reason, which the
//! audit shows and which turns the approvals `failed`; the ordinary process and file in the same
//! batch are killed and quarantined, and `executor_ctl` restores the file.
//!
//! The firewall plays no part here: a stand-in `nft` first on the agent's `PATH` keeps the
//! host's nftables untouched.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::agent_common::*;
use examples::example_bin;
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(10);

/// A directory under /tmp, removed on drop.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed and reaped on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `exe 60`, once the kernel shows it running `exe`.
fn sleeper(exe: &Path) -> Guard {
    let child = Command::new(exe).arg("60").spawn().unwrap();
    let pid = child.id();
    let started = Instant::now();
    while std::fs::read_link(format!("/proc/{pid}/exe")).map_or(true, |e| e != exe) {
        assert!(started.elapsed() < DEADLINE, "pid {pid} never ran {exe:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    Guard(child)
}

/// The admin API over TLS: `(status, body)`.
async fn api(base: &str, data_dir: &Path, method: reqwest::Method, path: &str) -> (u16, Value) {
    let pem = std::fs::read(ca_file(data_dir)).unwrap();
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let response = http
        .request(method, format!("{base}{path}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// Polls `GET path` until `check` holds for its `data`; returns that `data`.
async fn wait_data(
    base: &str,
    data_dir: &Path,
    path: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let (status, body) = api(base, data_dir, reqwest::Method::GET, path).await;
        assert_eq!(status, 200, "{body}");
        if check(&body["data"]) {
            return body["data"].clone();
        }
        assert!(started.elapsed() < DEADLINE, "GET {path}: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `executor_ctl ARGS`: its standard output; it must succeed.
fn executor_ctl(args: &[&str]) -> String {
    let out = Command::new(example_bin("executor_ctl"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "executor_ctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// An audit entry with the agent's outcome of an approved action (not the request, nor the
/// admin's decision).
fn is_approved_outcome(entry: &Value) -> bool {
    matches!(
        entry["action"].as_str(),
        Some("kill_process" | "quarantine_file")
    ) && !entry["detail"]["approvalId"].is_null()
}

fn text(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approved_actions_on_protected_targets_are_refused_on_the_host() {
    let dir = Dir(PathBuf::from(format!(
        "/tmp/pe-agent-safety-{}",
        std::process::id()
    )));
    let _ = std::fs::remove_dir_all(&dir.0);
    for sub in ["bin", "guarded", "protected", "free"] {
        std::fs::create_dir_all(dir.0.join(sub)).unwrap();
    }
    let fake_nft = dir.0.join("bin/nft");
    std::fs::write(&fake_nft, "#!/bin/sh\ncat > /dev/null\n").unwrap();
    std::fs::set_permissions(&fake_nft, std::fs::Permissions::from_mode(0o755)).unwrap();
    let guarded_exe = dir.0.join("guarded/pe-guarded");
    std::fs::copy("/usr/bin/sleep", &guarded_exe).unwrap();
    let protected = dir.0.join("protected");
    let tool = protected.join("tool");
    std::fs::write(&tool, b"#!/bin/sh\n").unwrap();
    let link = dir.0.join("free/link");
    std::os::unix::fs::symlink(&tool, &link).unwrap();
    let payload = dir.0.join("free/payload");
    std::fs::write(&payload, b"evil").unwrap();

    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let server = start_server(data.path(), SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let base = server.base_url();
    let admin = Admin::new(&base, data.path());
    let (agent_id, token) = admin.enroll("guarded-host").await;
    admin
        .post_policy(json!({
            "name": "respond with approval",
            "rules": [
                {"type": "auto_respond", "config": {"trigger": "malware", "action": "kill_process",
                 "minConfidence": 0.5, "requireApproval": true}},
                {"type": "auto_respond", "config": {"trigger": "dropper", "action": "quarantine_file",
                 "minConfidence": 0.5, "requireApproval": true}}
            ]
        }))
        .await;

    let mut guarded = sleeper(&guarded_exe);
    let mut ordinary = sleeper(Path::new("/usr/bin/sleep"));
    let (guarded_pid, ordinary_pid) = (guarded.0.id(), ordinary.0.id());

    let mut path = OsString::from(dir.0.join("bin"));
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    let ca = ca_file(data.path());
    let mut agent = AgentProcess::spawn_with(
        &[
            "--server",
            &base,
            "--ca-cert",
            text(&ca),
            "--state-dir",
            text(state.path()),
            "--agent-id",
            &agent_id,
            "--token",
            &token,
            "--heartbeat-secs",
            "0.2",
            "--protect-process",
            text(&guarded_exe),
            "--protect-path",
            text(&protected),
        ],
        &[("PATH", path.to_string_lossy().into_owned())],
    );
    admin
        .wait_agent(&agent_id, "v1 running", |a| a["policyVersion"] == "v1")
        .await;

    let events = [
        json!({"id": "evt-guarded", "type": "malware", "confidence": 0.9, "pid": guarded_pid}),
        json!({"id": "evt-ordinary", "type": "malware", "confidence": 0.9, "pid": ordinary_pid}),
        json!({"id": "evt-link", "type": "dropper", "confidence": 0.9, "filePath": text(&link)}),
        json!({"id": "evt-payload", "type": "dropper", "confidence": 0.9, "filePath": text(&payload)}),
    ];
    let lines: String = events.iter().map(|e| format!("{e}\n")).collect();
    agent.send(&lines);
    for event in &events {
        let printed: Value = serde_json::from_str(&agent.next_line().await).unwrap();
        assert_eq!(printed["action"], "approval_request", "{printed}");
        assert_eq!(printed["eventId"], event["id"], "{printed}");
    }

    // The admin approves all four; the server sends each to the agent.
    let pending = wait_data(&base, data.path(), "/api/approvals?status=pending", |d| {
        d.as_array().unwrap().len() == 4
    })
    .await;
    for approval in pending.as_array().unwrap() {
        let id = approval["id"].as_str().unwrap();
        let (status, body) = api(
            &base,
            data.path(),
            reqwest::Method::POST,
            &format!("/api/approvals/{id}/approve"),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let decided = wait_data(&base, data.path(), "/api/approvals?status=all", |d| {
        d.as_array()
            .unwrap()
            .iter()
            .all(|a| a["status"] == "executed" || a["status"] == "failed")
    })
    .await;
    let status_of = |event: &str| {
        decided
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["action"]["eventId"] == event)
            .map(|a| a["status"].as_str().unwrap().to_owned())
            .unwrap()
    };
    assert_eq!(status_of("evt-guarded"), "failed");
    assert_eq!(status_of("evt-ordinary"), "executed");
    assert_eq!(status_of("evt-link"), "failed");
    assert_eq!(status_of("evt-payload"), "executed");

    // The audit says what the host did with each approval, and why it refused.
    let audit = wait_data(
        &base,
        data.path(),
        &format!("/api/audit?agent={agent_id}"),
        |d| {
            d["entries"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| is_approved_outcome(e))
                .count()
                == 4
        },
    )
    .await;
    let outcome_of = |event: &str| {
        let entry = audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["detail"]["record"]["eventId"] == event && is_approved_outcome(e))
            .unwrap()
            .clone();
        (
            entry["outcome"].as_str().unwrap().to_owned(),
            entry["detail"]["detail"].as_str().unwrap().to_owned(),
        )
    };
    assert_eq!(
        outcome_of("evt-guarded"),
        (
            "skipped".to_owned(),
            format!(
                "refusing to kill pid {guarded_pid} (`pe-guarded`): it runs the protected executable `{}`",
                guarded_exe.display()
            )
        )
    );
    assert_eq!(
        outcome_of("evt-ordinary"),
        (
            "executed".to_owned(),
            format!("pid {ordinary_pid} (`sleep`) exited after SIGTERM")
        )
    );
    assert_eq!(
        outcome_of("evt-link"),
        (
            "skipped".to_owned(),
            format!(
                "protected path `{}` (resolved from `{}`) is under `{}`",
                tool.display(),
                link.display(),
                protected.display()
            )
        )
    );
    let (outcome, detail) = outcome_of("evt-payload");
    assert_eq!(outcome, "executed");
    assert!(
        detail.starts_with(&format!("quarantined `{}` as `", payload.display())),
        "{detail}"
    );

    // On the host: the protected process and file are untouched, the others are not.
    assert_eq!(guarded.0.try_wait().unwrap(), None, "still running");
    assert!(ordinary.0.try_wait().unwrap().is_some(), "killed");
    assert_eq!(std::fs::read(&tool).unwrap(), b"#!/bin/sh\n");
    assert!(!payload.exists());

    // The operator undoes the quarantine, and can ask what the agent would refuse.
    let host_state = state.path().join("host");
    let listed = executor_ctl(&["--state-dir", text(&host_state), "quarantined"]);
    let id = listed.split_whitespace().next().unwrap().to_owned();
    assert!(listed.contains(text(&payload)), "{listed}");
    assert_eq!(
        executor_ctl(&["--state-dir", text(&host_state), "restore", &id]),
        format!("restored `{}`\n", payload.display())
    );
    assert_eq!(std::fs::read(&payload).unwrap(), b"evil");
    let guarded_pid_text = guarded_pid.to_string();
    assert_eq!(
        executor_ctl(&[
            "--state-dir",
            text(&host_state),
            "protected",
            "--protect-process",
            text(&guarded_exe),
            "--protect-path",
            text(&protected),
            &guarded_pid_text,
            text(&link),
            text(&payload),
        ]),
        format!(
            "{guarded_pid}: refused: it runs the protected executable `{exe}`\n\
             {link}: refused: protected path `{tool}` (resolved from `{link}`) is under `{protected}`\n\
             {payload}: not protected\n",
            exe = guarded_exe.display(),
            link = link.display(),
            tool = tool.display(),
            protected = protected.display(),
            payload = payload.display(),
        )
    );

    let (code, stderr) = agent.finish().await;
    assert_eq!(code, Some(0), "{stderr}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_safety_file_stops_the_agent_before_it_connects() {
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("safety.toml");
    std::fs::write(
        &file,
        "[paths]\nallow = [\"/tmp\"]\n[processes]\nnames = [\"a/b\"]\n",
    )
    .unwrap();
    // Nothing listens on port 1: an agent that got past the file would keep retrying.
    let agent = AgentProcess::spawn(&[
        "--server",
        "https://127.0.0.1:1",
        "--insecure",
        "--state-dir",
        text(state.path()),
        "--agent-id",
        "agent-x",
        "--token",
        "t",
        "--safety-config",
        text(&file),
    ]);
    let (code, stderr) = agent.finish().await;
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        format!(
            "agent: error: invalid safety config `{}`: paths.allow[0]: `/tmp` is not under a protected path; nothing to allow; processes.names[0]: `a/b` contains `/` or a NUL byte",
            file.display()
        )
    );
}
