//! The agent's half of the fleet loop: `block`, `unblock` and `approval` events from the
//! server's stream go to the same dispatcher as the agent's own actions; an approval runs at
//! most once (a ledger of executed ids on disk, written before the action runs).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::dispatch::Dispatcher;
use super::report::Origin;
use crate::executor::durable::write_atomically;
use crate::protocol::{ApprovalEvent, FleetEvent};

/// File of executed approval ids in the state dir.
pub const APPROVALS_FILE: &str = "approvals.json";

/// What to do with an approval event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApprovalDecision {
    /// First time, in time: execute.
    Execute,
    /// Already executed: do nothing.
    Replayed,
    /// Past its expiry: do nothing.
    Expired,
}

/// Executed approval ids, on disk so that a restart does not execute a replayed approval
/// again. Entries are kept until their approval's expiry (after that the approval does nothing
/// anyway).
///
/// ```
/// use chrono::{TimeZone, Utc};
/// use policy_engine::agent::{ApprovalDecision, ApprovalLedger};
/// let dir = tempfile::tempdir().unwrap();
/// let now = Utc.with_ymd_and_hms(2026, 3, 7, 12, 0, 0).unwrap();
/// let expiry = Utc.with_ymd_and_hms(2026, 3, 7, 13, 0, 0).unwrap();
/// let mut ledger = ApprovalLedger::open(dir.path());
/// assert_eq!(ledger.decide("apr_1", expiry, now), ApprovalDecision::Execute);
/// ledger.remember("apr_1", expiry, now).unwrap();
/// assert_eq!(ApprovalLedger::open(dir.path()).decide("apr_1", expiry, now), ApprovalDecision::Replayed);
/// assert_eq!(ledger.decide("apr_2", now, now), ApprovalDecision::Expired);
/// ```
#[derive(Debug)]
pub struct ApprovalLedger {
    path: PathBuf,
    executed: HashMap<String, DateTime<Utc>>,
}

impl ApprovalLedger {
    /// Opens the ledger in `state_dir` (a missing file starts empty; an unreadable one too,
    /// with a warning).
    pub fn open(state_dir: &Path) -> Self {
        let path = state_dir.join(APPROVALS_FILE);
        let executed = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|err| {
                tracing::warn!(path = %path.display(), %err, "ignoring the approvals ledger");
                HashMap::new()
            }),
            Err(_) => HashMap::new(),
        };
        Self { path, executed }
    }

    /// Whether to execute the approval `id`, which expires at `expires_at`, at `now`.
    pub fn decide(
        &self,
        id: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> ApprovalDecision {
        if self.executed.contains_key(id) {
            ApprovalDecision::Replayed
        } else if expires_at <= now {
            ApprovalDecision::Expired
        } else {
            ApprovalDecision::Execute
        }
    }

    /// Records an executed approval (and forgets expired ones) durably, before the action
    /// runs: a crash in between errs on the side of not executing twice.
    pub fn remember(
        &mut self,
        id: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> std::io::Result<()> {
        self.executed.retain(|_, expiry| *expiry > now);
        self.executed.insert(id.to_owned(), expires_at);
        let text = serde_json::to_vec(&self.executed).unwrap_or_default();
        write_atomically(&self.path, &text, 0o600)
    }
}

/// Handles every fleet event of `events` until the queue closes (the sync stopped): decisions
/// here, in order; execution on the dispatcher.
pub(crate) fn spawn(
    mut events: mpsc::Receiver<FleetEvent>,
    dispatcher: Dispatcher,
    state_dir: &Path,
) -> JoinHandle<()> {
    let ledger = Arc::new(Mutex::new(ApprovalLedger::open(state_dir)));
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                FleetEvent::Block(block) => {
                    tracing::info!(ip = %block.ip, from = %block.source_agent, "fleet block");
                    dispatcher.execute(block.action, Origin::Fleet);
                }
                FleetEvent::Unblock(unblock) => dispatcher.unblock(unblock.ip, unblock.by),
                FleetEvent::Approval(approval) => {
                    approve(&ledger, approval, &dispatcher).await;
                }
            }
        }
    })
}

async fn approve(
    ledger: &Arc<Mutex<ApprovalLedger>>,
    approval: ApprovalEvent,
    dispatcher: &Dispatcher,
) {
    let id = approval.approval_id.clone();
    let expires_at = approval.expires_at;
    let ledger = ledger.clone();
    // The ledger writes with fsync: on the blocking pool, one approval at a time, in order.
    let decided = tokio::task::spawn_blocking(move || {
        let mut ledger = ledger.lock().unwrap_or_else(|p| p.into_inner());
        let now = Utc::now();
        let decision = ledger.decide(&id, expires_at, now);
        if decision == ApprovalDecision::Execute {
            ledger.remember(&id, expires_at, now).map(|()| decision)
        } else {
            Ok(decision)
        }
    })
    .await;
    match decided {
        Ok(Ok(ApprovalDecision::Execute)) => {
            tracing::info!(approval = %approval.approval_id, "executing an approved action");
            dispatcher.execute(approval.action, Origin::Approval(approval.approval_id));
        }
        Ok(Ok(decision)) => {
            tracing::info!(approval = %approval.approval_id, ?decision, "approval ignored");
        }
        Ok(Err(err)) => {
            tracing::error!(%err, approval = %approval.approval_id, "cannot record the approval; not executing it");
        }
        Err(join) => tracing::error!(%join, "deciding on an approval failed"),
    }
}
