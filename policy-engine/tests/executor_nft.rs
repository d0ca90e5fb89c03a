//! Every `nft` run has a timeout: a hung `nft` (here a script that starts a grandchild holding
//! its pipes and waits for it) is killed with its whole process group at the deadline, and the
//! change fails with a message saying so. Regression test for the agent that stalled for good
//! behind one hung `nft` (issue 14).
#![cfg(all(feature = "executor", target_os = "linux"))]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod executor_common;

use std::path::Path;
use std::time::{Duration, Instant};

use policy_engine::executor::{Executor, Firewall, FirewallConfig, HostConfig, HostExecutor, Nft};
use policy_engine::{Action, PolicyDuration};

/// A `sh -c` nft that hangs while `hang` exists: it starts `sleep` in the background (the
/// grandchild inherits stdout and stderr), writes its pid to `pid` and waits for it.
fn hanging_nft(hang: &Path, pid: &Path) -> Vec<String> {
    let script = format!(
        "if [ -e '{}' ]; then sleep 600 & echo $! > '{}'; wait; fi; cat > /dev/null",
        hang.display(),
        pid.display()
    );
    ["sh", "-c", &script, "nft"].map(str::to_owned).to_vec()
}

/// Whether the process `pid` is gone (or a zombie nobody reaped yet).
fn gone(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

#[test]
fn a_hung_nft_is_killed_with_its_children_at_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (hang, pid) = (dir.path().join("hang"), dir.path().join("pid"));
    std::fs::write(&hang, "").unwrap();
    let nft = Nft::new(hanging_nft(&hang, &pid)).with_timeout(Duration::from_millis(500));
    let started = Instant::now();
    let err = nft.apply("add table inet t\n").unwrap_err();
    let took = started.elapsed();
    assert_eq!(
        err.to_string(),
        format!("`{nft} -f -` did not finish within 500ms: killed")
    );
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    let grandchild = std::fs::read_to_string(&pid).unwrap().trim().to_owned();
    assert!(
        executor_common::wait_until(Duration::from_secs(5), || gone(&grandchild)),
        "the background sleep {grandchild} survived its nft"
    );
    // Without the hang the same command answers at once.
    std::fs::remove_file(&hang).unwrap();
    assert_eq!(nft.query(&["list", "ruleset"]).unwrap(), "");
}

#[test]
fn a_block_behind_a_hung_nft_fails_and_the_next_one_works() {
    let dir = tempfile::tempdir().unwrap();
    let (hang, pid) = (dir.path().join("hang"), dir.path().join("pid"));
    let mut config = FirewallConfig::new(dir.path().join("firewall"));
    config.command = hanging_nft(&hang, &pid);
    config.command_timeout = Duration::from_secs(1);
    let mut firewall = Firewall::open(config).unwrap();
    std::fs::write(&hang, "").unwrap();
    let ip = "203.0.113.7".parse().unwrap();
    let outcome = firewall.block(ip, PolicyDuration::Permanent);
    assert!(outcome.is_failed(), "{outcome}");
    assert!(
        outcome
            .message()
            .ends_with("did not finish within 1s: killed"),
        "{outcome}"
    );
    assert!(firewall.active().is_empty(), "a failed block is not kept");
    std::fs::remove_file(&hang).unwrap();
    assert!(firewall.block(ip, PolicyDuration::Permanent).is_done());
    assert_eq!(firewall.active().len(), 1);
}

#[test]
fn the_host_executor_takes_the_timeout_from_its_config() {
    let dir = tempfile::tempdir().unwrap();
    let (hang, pid) = (dir.path().join("hang"), dir.path().join("pid"));
    let config = HostConfig::new(dir.path(), vec![])
        .with_nft_command(hanging_nft(&hang, &pid))
        .with_command_timeout(Duration::from_millis(300));
    assert_eq!(config.firewall.command_timeout, Duration::from_millis(300));
    assert_eq!(config.isolation.command_timeout, Duration::from_millis(300));
    let executor = HostExecutor::open(config).unwrap();
    std::fs::write(&hang, "").unwrap();
    let outcome = executor.execute(&executor_common::record(Action::BlockIp {
        ip: "198.51.100.4".parse().unwrap(),
        duration: "1h".parse().unwrap(),
        scope: policy_engine::Scope::Host,
    }));
    assert!(
        outcome
            .message()
            .ends_with("did not finish within 300ms: killed"),
        "{outcome}"
    );
    std::fs::remove_file(&hang).unwrap();
    assert!(
        executor
            .unblock("198.51.100.4".parse().unwrap())
            .is_skipped()
    );
}
