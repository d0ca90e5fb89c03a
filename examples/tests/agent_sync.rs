//! End to end: agents built on `policy_engine::sync` against the real reference server over
//! TLS: live updates, outages (server and agent restarts), catching up, outdated/current in
//! `GET /api/agents`, refusals, a corrupted state file and a wrong token.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::agent_common::*;
use policy_engine::PolicyVersion;
use policy_engine::sync::{StateStore, StoredPolicy, SyncConfig};
use reference_server::RunningServer;

fn v(n: u64) -> PolicyVersion {
    PolicyVersion::new(n)
}

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A server on `data`, an agent enrolled on it as `hostname`, and that agent's sync config with
/// its state in `state`.
async fn enrolled(
    data: &Path,
    state: &Path,
    hostname: &str,
) -> (RunningServer, Admin, String, SyncConfig) {
    let server = start_server(data, any_port()).await;
    let base = server.base_url();
    let admin = Admin::new(&base, data);
    let (agent_id, token) = admin.enroll(hostname).await;
    let config = sync_config(&base, &agent_id, &token, state, &ca_file(data));
    (server, admin, agent_id, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_follows_the_server_through_outages() {
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let (server, admin, agent_id, config) = enrolled(data.path(), state.path(), "web-1").await;
    let addr = server.local_addr();

    // A connected agent gets a new policy within a second of the POST.
    let agent = start_agent(config.clone()).await;
    wait_status(agent.live(), "the stream to open", |s| s.connected).await;
    assert_eq!(enforcing_version(agent.live()), None);
    assert_eq!(admin.post_policy(policy(1)).await, v(1));
    let took = wait_version(agent.live(), v(1)).await;
    assert!(took < Duration::from_secs(1), "v1 took {took:?}");
    assert_eq!(enforcing_version(agent.live()), Some(v(1)));
    admin
        .wait_agent(&agent_id, "v1 reported", |a| {
            a["policyVersion"] == "v1" && a["outdated"] == false
        })
        .await;
    // Applied policies are on disk.
    assert_eq!(
        StateStore::new(state.path())
            .load()
            .unwrap()
            .map(|p| p.version),
        Some(v(1))
    );

    // Server down: the agent notices and keeps enforcing v1.
    server.shutdown().await;
    wait_status(agent.live(), "the stream to drop", |s| !s.connected).await;
    assert_eq!(enforcing_version(agent.live()), Some(v(1)));

    // Agent restarted while the server is down: it enforces v1 from disk before connecting.
    agent.shutdown().await;
    let agent = start_agent(config.clone()).await;
    assert_eq!(agent.live().version(), Some(v(1)));
    assert_eq!(enforcing_version(agent.live()), Some(v(1)));

    // The server comes back with two newer versions: the agent catches up to the newest.
    let server = start_server(data.path(), addr).await;
    assert_eq!(admin.post_policy(policy(2)).await, v(2));
    assert_eq!(admin.post_policy(policy(3)).await, v(3));
    wait_version(agent.live(), v(3)).await;
    assert_eq!(enforcing_version(agent.live()), Some(v(3)));
    admin
        .wait_agent(&agent_id, "v3 reported", |a| {
            a["policyVersion"] == "v3" && a["outdated"] == false && a["online"] == true
        })
        .await;

    // While the agent is away a v4 appears: outdated; once it is back: current.
    agent.shutdown().await;
    assert_eq!(admin.post_policy(policy(4)).await, v(4));
    let listed = admin.agent(&agent_id).await;
    assert_eq!(listed["policyVersion"], "v3", "{listed}");
    assert_eq!(listed["outdated"], true, "{listed}");
    let agent = start_agent(config).await;
    wait_version(agent.live(), v(4)).await;
    admin
        .wait_agent(&agent_id, "v4 reported", |a| {
            a["policyVersion"] == "v4" && a["outdated"] == false
        })
        .await;
    assert_eq!(
        StateStore::new(state.path())
            .load()
            .unwrap()
            .map(|p| p.version),
        Some(v(4))
    );

    agent.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_policy_is_refused_and_reported() {
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let server = start_server(data.path(), any_port()).await;
    let base = server.base_url();
    let admin = Admin::new(&base, data.path());
    let (agent_id, token) = admin.enroll("web-2").await;
    assert_eq!(admin.post_policy(policy(1)).await, v(1));
    assert_eq!(admin.post_policy(policy(2)).await, v(2));
    // The agent ran v5 before (a server restored from an old backup only knows v2).
    let stored = policy_engine::Policy::from_value(&policy(5)).unwrap();
    StateStore::new(state.path())
        .save(&StoredPolicy {
            version: v(5),
            policy: stored.clone(),
            signature: None,
        })
        .unwrap();

    let agent = start_agent(sync_config(
        &base,
        &agent_id,
        &token,
        state.path(),
        &ca_file(data.path()),
    ))
    .await;
    let expected = "policy v2 refused: older than the applied v5";
    wait_status(agent.live(), "the refusal", |s| {
        s.last_error.as_deref() == Some(expected)
    })
    .await;
    assert_eq!(agent.live().version(), Some(v(5)));
    assert_eq!(enforcing_version(agent.live()), Some(v(5)));
    let listed = admin
        .wait_agent(&agent_id, "the refusal reported", |a| {
            a["lastError"] == expected
        })
        .await;
    assert_eq!(listed["policyVersion"], "v5", "{listed}");
    assert_eq!(listed["outdated"], true, "{listed}");
    assert_eq!(
        StateStore::new(state.path()).load().unwrap(),
        Some(StoredPolicy {
            version: v(5),
            policy: stored,
            signature: None,
        })
    );

    // A newer version is accepted again and clears the error.
    for n in 3..=6 {
        admin.post_policy(policy(n)).await;
    }
    wait_version(agent.live(), v(6)).await;
    admin
        .wait_agent(&agent_id, "v6 without error", |a| {
            a["policyVersion"] == "v6" && a["lastError"].is_null() && a["outdated"] == false
        })
        .await;
    agent.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_state_file_is_ignored_and_replaced() {
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let store = StateStore::new(state.path());
    std::fs::write(
        store.policy_path(),
        b"{\"format\":1,\"version\":\"v9\",\"sha",
    )
    .unwrap();
    let (server, admin, _, config) = enrolled(data.path(), state.path(), "web-3").await;
    let agent = start_agent(config).await;
    assert_eq!(agent.live().version(), None);
    assert_eq!(
        agent.live().status().last_error,
        Some(format!(
            "`{}` is corrupted: EOF while parsing a string at line 1 column 31",
            store.policy_path().display()
        ))
    );
    admin.post_policy(policy(1)).await;
    wait_version(agent.live(), v(1)).await;
    wait_stored(state.path(), v(1)).await;
    agent.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_is_a_clear_error_without_a_tight_loop() {
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let server = start_server(data.path(), any_port()).await;
    let base = server.base_url();
    let admin = Admin::new(&base, data.path());
    let (agent_id, _token) = admin.enroll("web-4").await;
    admin.post_policy(policy(1)).await;

    let mut config = sync_config(
        &base,
        &agent_id,
        "agt_not-the-token",
        state.path(),
        &ca_file(data.path()),
    );
    // Reconnect delays would allow hundreds of attempts; a rejected token must wait this long.
    config.backoff.initial = Duration::from_millis(1);
    config.backoff.max = Duration::from_millis(1);
    config.unauthorized_retry = Duration::from_secs(600);
    let agent = start_agent(config).await;
    wait_status(agent.live(), "the rejection", |s| {
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("refused the token (401)"))
    })
    .await;
    let error = agent.live().status().last_error.unwrap();
    assert!(
        error.starts_with(&format!("`{base}/api/events` refused the token (401): ")),
        "{error}"
    );
    assert_eq!(agent.live().version(), None);
    assert!(!agent.live().status().connected);
    // The server saw no heartbeat from a valid token either.
    assert!(admin.agent(&agent_id).await["lastSeen"].is_null());
    agent.shutdown().await;
    server.shutdown().await;
}

/// Write-ahead: the moment the engine runs a version (and may act on it or report it), that
/// version is already in the state dir, so a `kill -9` right after restarts on it. (It was
/// saved after the swap: a pinned agent killed at that moment came back on the version before,
/// which CI caught once.) A thread polls the running version without pause and reads the
/// state dir the moment it changes: with the old order it finds the previous version there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_is_on_disk_before_it_runs() {
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let (_server, admin, _, config) = enrolled(data.path(), state.path(), "web-1").await;
    let agent = start_agent(config).await;
    wait_status(agent.live(), "the stream to open", |s| s.connected).await;
    assert_eq!(agent.live().version(), None);

    let live = agent.live().clone();
    let store = StateStore::new(state.path());
    let watcher = std::thread::spawn(move || {
        // (running, on disk at that moment) for each version seen; bounded by the deadline.
        let mut seen: Vec<(PolicyVersion, Option<PolicyVersion>)> = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while seen.len() < 2 && std::time::Instant::now() < deadline {
            let Some(running) = live.version() else {
                std::hint::spin_loop();
                continue;
            };
            if seen.last().map(|(v, _)| *v) != Some(running) {
                let stored = store.load().ok().flatten().map(|s| s.version);
                seen.push((running, stored));
            }
        }
        seen
    });
    let first = admin.post_policy(policy(5)).await;
    wait_version(agent.live(), first).await;
    let second = admin.post_policy(policy(6)).await;
    wait_version(agent.live(), second).await;
    let seen = tokio::task::spawn_blocking(move || watcher.join().unwrap())
        .await
        .unwrap();
    assert_eq!(
        seen,
        [(v(1), Some(v(1))), (v(2), Some(v(2)))],
        "(running, on disk) when each version started to run"
    );
    agent.shutdown().await;
}
