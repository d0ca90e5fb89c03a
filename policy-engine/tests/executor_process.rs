//! `kill_process` on real processes: SIGTERM, SIGKILL after the grace period, and the guards.
#![cfg(all(feature = "executor", target_os = "linux"))]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod executor_common;

use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command};
use std::time::Duration;

use executor_common::record;
use policy_engine::Action;
use policy_engine::executor::{
    Executor, HostConfig, HostExecutor, KillConfig, Outcome, ProcessKiller,
};

/// A child process killed and reaped on drop, whatever the test did.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(script: &str) -> Guard {
    Guard(Command::new("sh").args(["-c", script]).spawn().unwrap())
}

fn killer(grace_ms: u64) -> ProcessKiller {
    ProcessKiller::new(KillConfig {
        grace: Duration::from_millis(grace_ms),
        kill_wait: Duration::from_secs(2),
        poll: Duration::from_millis(10),
    })
}

#[test]
fn sigterm_ends_a_cooperative_process() {
    let mut child = spawn("exec sleep 30");
    let pid = child.0.id();
    // `exec` replaces the shell: wait until the kernel calls it `sleep`.
    assert!(executor_common::wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
    }));
    assert_eq!(
        killer(2000).kill(pid, Some("sleep")),
        Outcome::done(format!("pid {pid} (`sleep`) exited after SIGTERM"))
    );
    assert_eq!(child.0.wait().unwrap().signal(), Some(libc_sigterm()));
}

#[test]
fn sigkill_follows_when_sigterm_is_ignored() {
    // An ignored signal stays ignored across exec.
    let mut child = spawn("trap '' TERM; exec sleep 30");
    let pid = child.0.id();
    assert!(executor_common::wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
    }));
    assert_eq!(
        killer(300).kill(pid, Some("/usr/bin/sleep")),
        Outcome::done(format!(
            "pid {pid} (`sleep`) killed with SIGKILL after a 300ms grace period"
        ))
    );
    assert_eq!(child.0.wait().unwrap().signal(), Some(9));
}

#[test]
fn a_different_name_means_the_pid_was_reused_and_nothing_is_killed() {
    let mut child = spawn("exec sleep 30");
    let pid = child.0.id();
    assert!(executor_common::wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
    }));
    assert_eq!(
        killer(300).kill(pid, Some("xmrig")),
        Outcome::skipped(format!(
            "pid {pid} is now `sleep`, not `xmrig`: not killed (the pid may have been reused)"
        ))
    );
    assert_eq!(child.0.try_wait().unwrap(), None, "still running");
}

#[test]
fn init_the_agent_and_its_parent_are_refused() {
    let k = killer(300);
    assert_eq!(
        k.kill(1, None),
        Outcome::skipped("refusing to kill pid 1 (init)")
    );
    let me = std::process::id();
    assert_eq!(
        k.kill(me, None),
        Outcome::skipped(format!("refusing to kill the agent itself (pid {me})"))
    );
    let parent = std::os::unix::process::parent_id();
    assert_eq!(
        k.kill(parent, None),
        Outcome::skipped(format!(
            "refusing to kill the agent's parent (pid {parent})"
        ))
    );
    assert_eq!(k.kill(0, None), Outcome::skipped("`0` is not a valid pid"));
    assert_eq!(
        k.kill(u32::MAX, None),
        Outcome::skipped("`4294967295` is not a valid pid")
    );
}

#[test]
fn a_process_that_is_already_gone_is_an_outcome() {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    assert_eq!(
        killer(300).kill(pid, None),
        Outcome::skipped(format!("process {pid} is already gone"))
    );
}

#[test]
fn the_host_executor_dispatches_kill_and_skips_server_side_actions() {
    let state = tempfile::tempdir().unwrap();
    let mut config =
        HostConfig::new(state.path(), vec![]).with_nft_command(executor_common::fake_nft());
    config.kill.grace = Duration::from_secs(2);
    let mut executor = HostExecutor::open(config).unwrap();
    let mut child = spawn("exec sleep 30");
    let pid = child.0.id();
    assert!(executor_common::wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
    }));
    let outcome = executor.execute(&record(Action::KillProcess {
        pid,
        process: Some("sleep".into()),
    }));
    assert_eq!(
        outcome,
        Outcome::done(format!("pid {pid} (`sleep`) exited after SIGTERM"))
    );
    child.0.wait().unwrap();

    let alert = record(Action::Alert {
        severity: policy_engine::Severity::High,
        count: 3,
        channels: vec!["email".into()],
    });
    assert_eq!(
        executor.execute(&alert),
        Outcome::skipped("sent to the server")
    );
    let approval = record(Action::ApprovalRequest {
        request: Box::new(Action::KillProcess { pid, process: None }),
    });
    assert_eq!(
        executor.execute(&approval),
        Outcome::skipped("sent to the server")
    );
    let custom = record(Action::Custom {
        name: "page_oncall".into(),
        params: serde_json::Map::new(),
    });
    assert_eq!(
        executor.execute(&custom),
        Outcome::skipped("no handler for the custom action `page_oncall`")
    );
    executor.register_custom(
        "page_oncall",
        |name: &str,
         params: &serde_json::Map<String, serde_json::Value>,
         _: &policy_engine::ActionRecord| {
            Outcome::done(format!("handled `{name}` with {} params", params.len()))
        },
    );
    assert_eq!(
        executor.execute(&custom),
        Outcome::done("handled `page_oncall` with 0 params")
    );
}

fn libc_sigterm() -> i32 {
    15
}
