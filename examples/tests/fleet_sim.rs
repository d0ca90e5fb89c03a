//! The `fleet_sim` example run as an operator runs it, with a handful of agents: against one
//! SQLite server it spawns, and against two replicas on PostgreSQL (through
//! `.ci/with-postgres`); each run kills and restarts a replica, and the figures it prints are
//! read back and checked.
#![allow(clippy::unwrap_used, clippy::panic)]

#[path = "../../reference-server/tests/common/postgres.rs"]
mod postgres;

// The simulator's frame parsing, with its unit test.
#[path = "../examples/fleet_sim/frame.rs"]
mod frame;

use std::process::Command;

use examples::example_bin;

/// Runs the simulator with `extra` arguments; returns its stdout after checking it succeeded.
fn run(extra: &[&str]) -> String {
    let output = Command::new(example_bin("fleet_sim"))
        .args([
            "--agents",
            "8",
            "--posts",
            "3",
            "--load-secs",
            "1",
            "--heartbeat-secs",
            "0.1",
            "--report-secs",
            "0.2",
            "--spread-secs",
            "0.5",
            "--restart",
            "--settle-secs",
            "0.3",
            "--warmup-posts",
            "2",
        ])
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    stdout
}

/// The result of the `figure` line whose description is `what`.
fn figure<'a>(stdout: &'a str, what: &str) -> &'a str {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("figure\t"))
        .find_map(|l| l.strip_prefix(what).and_then(|r| r.strip_prefix('\t')))
        .unwrap_or_else(|| panic!("no figure {what:?} in\n{stdout}"))
}

/// The rest of the line that starts with `prefix`.
fn line<'a>(stdout: &'a str, prefix: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line {prefix:?} in\n{stdout}"))
}

/// `p50 X ms, p99 Y ms` as (X, Y), checked to be positive and ordered.
fn percentiles(summary: &str) -> (f64, f64) {
    let numbers: Vec<f64> = summary
        .split([' ', ','])
        .filter_map(|w| w.parse().ok())
        .collect();
    let [p50, p99] = numbers[..] else {
        panic!("not `p50 X ms, p99 Y ms`: {summary:?}");
    };
    assert!(p50 > 0.0 && p50 <= p99 && p99 < 10_000.0, "{summary:?}");
    (p50, p99)
}

/// `... over N` of a detail line: the sample count.
fn samples(detail: &str) -> usize {
    detail.rsplit(" over ").next().unwrap().parse().unwrap()
}

/// What every run prints, whatever its servers.
fn check_common(stdout: &str, replicas: &str) {
    percentiles(figure(
        stdout,
        &format!("policy broadcast to 8 TLS SSE agents, {replicas} (POST -> last agent)"),
    ));
    assert_eq!(samples(line(stdout, "POST -> last of 8 agents: ")), 3);
    // The warm-up broadcasts are printed apart, each timed, and not counted above.
    let warmups: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("warm-up broadcast "))
        .collect();
    let [_, second] = warmups[..] else {
        panic!("not two warm-up broadcasts:\n{stdout}");
    };
    assert!(
        second.starts_with(
            "warm-up broadcast 2 of 2 (not in the figures): POST -> last of 8 agents "
        ) && second.ends_with(" ms"),
        "{stdout}"
    );
    // The CPU each side spent per broadcast, and the wall time it needs at least on these cores.
    let cpu = line(
        stdout,
        "CPU from POST to last agent, p50 per broadcast: server",
    );
    let numbers: Vec<f64> = cpu
        .split([' ', ',', ';'])
        .filter_map(|w| w.parse().ok())
        .collect();
    let [server, simulator, cores, floor] = numbers[..] else {
        panic!("not `server X ms, simulator Y ms; on C cores ... Z ms`: {cpu:?}");
    };
    assert!(server > 0.0 && simulator > 0.0 && cores >= 1.0, "{cpu:?}");
    assert!(
        ((server + simulator) / cores - floor).abs() < 0.1,
        "{cpu:?}"
    );
    percentiles(figure(
        stdout,
        "heartbeat round trip with 8 agents streaming",
    ));
    // 8 agents with a heartbeat every 0.1 s and a report every 0.2 s for at least a second:
    // at least as many of each as agents (how many more depends on the machine's load: an
    // agent waits for each answer before its next request, so the counts are not a rate).
    assert!(samples(line(stdout, "heartbeats: ")) >= 8, "{stdout}");
    assert!(samples(line(stdout, "reports: ")) >= 8, "{stdout}");
    assert_eq!(
        figure(
            stdout,
            "errors with 8 agents streaming (connect, broadcasts, heartbeats, reports)"
        ),
        "0"
    );
    let memory = figure(
        stdout,
        "server memory per idle TLS SSE connection (8 agents)",
    );
    let kib: f64 = memory.strip_suffix(" KiB").unwrap().parse().unwrap();
    assert!(kib >= 0.0, "{memory}");
    // The storm: every agent of the killed replica back, then a new version reaches all.
    let storm = line(stdout, "restart: replica up again after ");
    let back = if replicas == "1 replica" { 8 } else { 4 };
    assert!(
        storm.contains(&format!("its {back} agents all back after")),
        "{storm}"
    );
    line(stdout, "after the storm, v");
    assert!(stdout.contains("reached all 8 agents in"), "{stdout}");
}

#[test]
fn one_sqlite_server_with_a_restart() {
    let work = tempfile::tempdir().unwrap();
    let work_dir = work.path().to_str().unwrap();
    let stdout = run(&["--nice", "19", "--work-dir", work_dir]);
    let header = stdout.lines().next().unwrap();
    assert!(
        header.starts_with("fleet_sim: 8 agents, 1 server(s), ")
            && header.ends_with(" cores, simulator worker threads at nice 19"),
        "{stdout}"
    );
    // The server's database where --work-dir said, removed after the run.
    let data_dir = line(&stdout, "SQLite; local data dir ");
    assert!(
        data_dir.starts_with(&format!("{work_dir}/fleet-sim-")),
        "{stdout}"
    );
    assert!(!std::path::Path::new(data_dir).exists(), "{data_dir}");
    check_common(&stdout, "1 replica");
    assert!(!stdout.contains("cross-replica"), "{stdout}");
    // Without --receive-timestamps the streams read plainly and print no socket times.
    assert!(!stdout.contains("agents' sockets"), "{stdout}");
}

/// `socket` (kernel receive times) is never after `read` (the simulator read the frames), with
/// 1 ms for the two clocks' start moments.
fn socket_not_after_read(stdout: &str, socket: &str, read: &str) {
    let (socket_p50, socket_p99) = percentiles(figure(stdout, socket));
    let (read_p50, read_p99) = percentiles(figure(stdout, read));
    assert!(
        socket_p50 <= read_p50 + 1.0 && socket_p99 <= read_p99 + 1.0,
        "{stdout}"
    );
}

#[tokio::test]
async fn two_replicas_on_postgresql_with_a_restart() {
    let database = postgres::TestDatabase::create().await;
    let url = database.url.clone();
    let stdout = tokio::task::spawn_blocking(move || {
        run(&[
            "--replicas",
            "2",
            "--database",
            &url,
            "--receive-timestamps",
        ])
    })
    .await
    .unwrap();
    assert!(
        stdout.starts_with("fleet_sim: 8 agents, 2 server(s), ")
            && stdout.lines().next().unwrap().ends_with(" at nice 0"),
        "{stdout}"
    );
    check_common(&stdout, "2 replicas");
    percentiles(figure(
        &stdout,
        "cross-replica push, 2 replicas on PostgreSQL (POST to A -> last of 4 agents on B)",
    ));
    assert_eq!(
        samples(line(
            &stdout,
            "POST to replica A -> last of 4 agents on the other replicas: "
        )),
        3
    );
    // The kernel's receive time of each broadcast on the last agent's socket, of all agents
    // and of those on B: one per post each.
    let socket =
        "POST -> last of 8 agents' sockets (kernel receive time, before the simulator decrypts): ";
    assert_eq!(samples(line(&stdout, socket)), 3);
    socket_not_after_read(
        &stdout,
        "policy broadcast to 8 TLS SSE agents, 2 replica(s) (POST -> the last agent's socket)",
        "policy broadcast to 8 TLS SSE agents, 2 replicas (POST -> last agent)",
    );
    let socket_b = "POST to replica A -> last of 4 agents' sockets on the other replicas (kernel receive time): ";
    assert_eq!(samples(line(&stdout, socket_b)), 3);
    socket_not_after_read(
        &stdout,
        "cross-replica push, 2 replicas on PostgreSQL (POST to A -> the last socket of 4 agents on B)",
        "cross-replica push, 2 replicas on PostgreSQL (POST to A -> last of 4 agents on B)",
    );
}
