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

#[test]
fn a_batch_of_blocks_is_one_nft_transaction_and_fails_together_behind_a_hung_nft() {
    let dir = tempfile::tempdir().unwrap();
    let (hang, pid) = (dir.path().join("hang"), dir.path().join("pid"));
    let runs = dir.path().join("runs");
    // Counts its runs, then behaves like `hanging_nft`.
    let mut command = hanging_nft(&hang, &pid);
    command[2] = format!("echo run >> '{}'; {}", runs.display(), command[2]);
    let config = HostConfig::new(dir.path(), vec![])
        .with_nft_command(command)
        .with_command_timeout(Duration::from_millis(300));
    let executor = HostExecutor::open(config).unwrap();
    let count = || {
        std::fs::read_to_string(&runs)
            .unwrap_or_default()
            .lines()
            .count()
    };
    let records: Vec<_> = ["198.51.100.1", "198.51.100.2", "198.51.100.3"]
        .iter()
        .map(|ip| {
            executor_common::record(Action::BlockIp {
                ip: ip.parse().unwrap(),
                duration: "1h".parse().unwrap(),
                scope: policy_engine::Scope::Host,
            })
        })
        .collect();
    let before = count();
    let outcomes = executor.execute_batch(&records);
    assert!(outcomes.iter().all(|o| o.is_done()), "{outcomes:?}");
    // One look at the table and one transaction, for three addresses.
    assert_eq!(count() - before, 2);
    std::fs::write(&hang, "").unwrap();
    let started = Instant::now();
    let more: Vec<_> = records
        .iter()
        .map(|r| {
            let mut r = r.clone();
            if let Action::BlockIp { duration, .. } = &mut r.action {
                *duration = PolicyDuration::Permanent;
            }
            r
        })
        .collect();
    let outcomes = executor.execute_batch(&more);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the timeouts of one batch, not of three blocks"
    );
    assert_eq!(outcomes.len(), 3);
    assert!(
        outcomes
            .iter()
            .all(|o| o.is_failed() && o.message().ends_with("did not finish within 300ms: killed")),
        "{outcomes:?}"
    );
}
