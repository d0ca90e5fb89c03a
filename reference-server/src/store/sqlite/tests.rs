//! The read-only connection: what the broadcast and a stream's connect read does not wait for
//! a commit in progress, and sees every write whose call returned.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use policy_engine::{Policy, PolicyVersion};
use rusqlite::TransactionBehavior;

use super::*;
use crate::store::ChangeKind;

/// Longer than any read takes here, far shorter than the hold.
const READ_BOUND: Duration = Duration::from_secs(5);

fn new_policy(name: &str) -> NewPolicy {
    let policy = Policy::from_json(
        serde_json::json!({"name": name, "rules": [{"type": "custom",
            "config": {"condition": "severityLevel >= 3", "action": "alert"}}]})
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    NewPolicy {
        org_id: "acme".to_owned(),
        policy: Arc::new(policy),
        id: format!("pol_{name}"),
        created_at: Utc::now(),
        signed: None,
    }
}

/// Holds the writer inside an open write transaction that recorded change `seq` of `acme`,
/// as a commit waiting for its fsync holds it, until `release` is sent to (or dropped).
fn hold_writer(
    store: &SqliteStore,
) -> (
    std_mpsc::Sender<()>,
    tokio::sync::oneshot::Receiver<Result<u64>>,
) {
    let (release, released) = std_mpsc::channel::<()>();
    let (held, holding) = std_mpsc::channel::<()>();
    let committed = store
        .writer
        .enqueue(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let kind = ChangeKind::Unblock {
                ip: "198.51.100.7".parse().unwrap(),
                by: "admin".to_owned(),
            };
            let seq = changes::record(&tx, "acme", &kind, 0)?;
            let _ = held.send(());
            let _ = released.recv();
            tx.commit()?;
            Ok(seq)
        })
        .unwrap();
    holding
        .recv_timeout(READ_BOUND)
        .expect("the writer thread never started the held transaction");
    (release, committed)
}

async fn bounded<T>(what: &str, read: impl std::future::Future<Output = Result<T>>) -> T {
    match tokio::time::timeout(READ_BOUND, read).await {
        Ok(result) => result.unwrap_or_else(|e| panic!("{what}: {e}")),
        Err(_) => panic!("{what} waited for the writer, held mid-transaction"),
    }
}

#[tokio::test]
async fn the_broadcast_reads_go_on_while_a_commit_holds_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("policy.db"))
            .await
            .unwrap(),
    );
    let first = store.insert_policy(new_policy("one")).await.unwrap();
    assert_eq!(first.seq, Some(1));

    let (release, held) = hold_writer(&store);
    // A write queued behind the held one waits, as writes must.
    let queued = tokio::spawn({
        let store = store.clone();
        async move { store.insert_policy(new_policy("two")).await }
    });

    // What a broadcast and a stream's connect read, from the last committed state: the
    // held transaction's change 2 is not seen.
    assert_eq!(
        bounded("latest_rollout", store.latest_rollout("acme".into())).await,
        None
    );
    store.latest.lock().unwrap().clear();
    let stored = bounded("policy", store.policy("acme".into(), PolicyVersion::new(1))).await;
    assert_eq!(stored.map(|p| p.id), Some("pol_one".to_owned()));
    store.latest.lock().unwrap().clear();
    let latest = bounded("latest_policy", store.latest_policy("acme".into())).await;
    assert_eq!(latest.map(|p| p.version), Some(PolicyVersion::new(1)));
    let snapshot = bounded(
        "stream_snapshot",
        store.stream_snapshot("acme".into(), "agent-1".into(), 0),
    )
    .await;
    assert_eq!(snapshot.seq, 1);
    assert_eq!(
        snapshot.policy.map(|p| p.version),
        Some(PolicyVersion::new(1))
    );
    assert_eq!(
        bounded("change_seq", store.change_seq("acme".into())).await,
        1
    );
    let changes = bounded("changes", store.changes("acme".into(), 0, 10)).await;
    assert_eq!(changes.iter().map(|c| c.seq).collect::<Vec<_>>(), [1]);
    assert_eq!(
        bounded("overrides", store.overrides("agent-1".into())).await,
        None
    );
    assert_eq!(
        bounded("shadow_run", store.shadow_run("acme".into())).await,
        None
    );
    assert_eq!(
        bounded("approval", store.approval("apr_1".into())).await,
        None
    );
    assert!(!queued.is_finished(), "a write went past the held one");

    release.send(()).unwrap();
    assert_eq!(held.await.unwrap().unwrap(), 2);
    let second = queued.await.unwrap().unwrap();
    assert_eq!(
        (second.value.version, second.seq),
        (PolicyVersion::new(2), Some(3))
    );
    // A read after a write returned sees it.
    assert_eq!(
        bounded("change_seq", store.change_seq("acme".into())).await,
        3
    );
    store.latest.lock().unwrap().clear();
    let latest = bounded("latest_policy", store.latest_policy("acme".into())).await;
    assert_eq!(latest.map(|p| p.id), Some("pol_two".to_owned()));
    store.close().await;
}

#[tokio::test]
async fn the_reader_connection_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("policy.db"))
        .await
        .unwrap();
    let error = store
        .read(|conn| Ok(conn.execute("DELETE FROM changes", [])?))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("readonly"),
        "unexpected error: {error}"
    );
    store.close().await;
}
