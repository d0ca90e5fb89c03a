//! The agent's half of the fleet loop: the `block`, `unblock` and `approval` events of the
//! server's stream, handed to the host's executor; approvals executed at most once (a ledger of
//! executed ids on disk); and reports of what the agent did or requests
//! (`POST /api/agents/:id/reports`).
//!
//! The stream task only parses and queues fleet events ([`FleetEvents`], set in
//! [`SyncConfig::fleet`](super::SyncConfig::fleet)); a [`FleetHandler`] task executes them, so a
//! slow firewall never stalls policy updates.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{ApiClient, SyncError};
use crate::action::{Action, ActionRecord};
use crate::policy::Scope;
use crate::protocol::ReportOutcome;

/// File of executed approval ids in the state dir.
pub const APPROVALS_FILE: &str = "approvals.json";

pub use crate::protocol::{
    ApprovalEvent, BlockEvent, FleetEvent, FleetEventError, Report, UnblockEvent,
};

/// Where the stream task queues fleet events (bounded: when the handler falls behind, events
/// are dropped with a warning; the server re-sends blocks in force and pending approvals on the
/// next connection).
#[derive(Debug, Clone)]
pub struct FleetEvents(mpsc::Sender<FleetEvent>);

impl FleetEvents {
    /// A queue of `capacity` events and its receiving end, for [`FleetHandler::spawn`].
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<FleetEvent>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Self(tx), rx)
    }

    /// Parses and queues one stream event; returns whether it was a fleet event.
    pub fn dispatch(&self, event: &str, data: &str) -> bool {
        match FleetEvent::parse(event, data) {
            Ok(Some(parsed)) => {
                if self.0.try_send(parsed).is_err() {
                    tracing::warn!(event, "fleet event queue full or closed; event dropped");
                }
                true
            }
            Ok(None) => false,
            Err(err) => {
                tracing::warn!(%err, "ignoring a fleet event");
                true
            }
        }
    }
}

/// What came of a fleet action on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetOutcome {
    /// Done.
    Executed(String),
    /// Deliberately not done (allowlisted, not supported here).
    Skipped(String),
    /// Tried and failed.
    Failed(String),
}

impl FleetOutcome {
    /// The report's `outcome` name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Executed(_) => "executed",
            Self::Skipped(_) => "skipped",
            Self::Failed(_) => "failed",
        }
    }

    /// The report's `outcome`.
    pub fn report_outcome(&self) -> ReportOutcome {
        match self {
            Self::Executed(_) => ReportOutcome::Executed,
            Self::Skipped(_) => ReportOutcome::Skipped,
            Self::Failed(_) => ReportOutcome::Failed,
        }
    }

    /// The detail text.
    pub fn detail(&self) -> &str {
        match self {
            Self::Executed(d) | Self::Skipped(d) | Self::Failed(d) => d,
        }
    }
}

/// What the fleet handler needs from the host: execute an action, lift a block.
pub trait FleetExecutor: Send {
    /// Carries out `record` (a host-scope `block_ip`, or an approved action).
    fn execute(&mut self, record: &ActionRecord) -> FleetOutcome;
    /// Removes the block on `ip`.
    fn unblock(&mut self, ip: IpAddr) -> FleetOutcome;
}

/// Executed approval ids, on disk so a restart does not execute a replayed approval again.
/// Entries are kept until their approval's expiry (after that the approval does nothing
/// anyway).
#[derive(Debug)]
pub struct ApprovalLedger {
    path: PathBuf,
    executed: HashMap<String, DateTime<Utc>>,
}

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

impl ApprovalLedger {
    /// Opens the ledger in `state_dir` (a missing or unreadable file starts empty, logged).
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

    /// Whether to execute `event` at `now`.
    pub fn decide(&self, event: &ApprovalEvent, now: DateTime<Utc>) -> ApprovalDecision {
        if self.executed.contains_key(&event.approval_id) {
            ApprovalDecision::Replayed
        } else if event.expires_at <= now {
            ApprovalDecision::Expired
        } else {
            ApprovalDecision::Execute
        }
    }

    /// Records an executed approval (and forgets expired ones), written before the action runs
    /// so that a crash in between errs on the side of not executing twice.
    pub fn remember(&mut self, event: &ApprovalEvent, now: DateTime<Utc>) -> std::io::Result<()> {
        self.executed.retain(|_, expiry| *expiry > now);
        self.executed
            .insert(event.approval_id.clone(), event.expires_at);
        let text = serde_json::to_vec(&self.executed).unwrap_or_default();
        let temp = self.path.with_extension("json.tmp");
        std::fs::write(&temp, text)?;
        std::fs::rename(&temp, &self.path)
    }
}

/// Sends reports to the server.
#[derive(Debug, Clone)]
pub struct Reporter {
    client: ApiClient,
    agent_id: String,
    token: String,
}

/// A report of an engine action this agent handled itself.
impl Report {
    /// The report of an engine action this agent handled locally: an `approval_request` is
    /// `requested` (never executed before approval); others carry the executor's outcome.
    pub fn local(record: ActionRecord, outcome: &FleetOutcome) -> Self {
        let requested = matches!(record.action, Action::ApprovalRequest { .. });
        Self {
            record,
            outcome: Some(if requested {
                ReportOutcome::Requested
            } else {
                outcome.report_outcome()
            }),
            detail: (!requested).then(|| outcome.detail().to_owned()),
            approval_id: None,
            report_id: None,
        }
    }
}

impl Reporter {
    /// A reporter for one agent.
    pub fn new(client: ApiClient, agent_id: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            client,
            agent_id: agent_id.into(),
            token: token.into(),
        }
    }

    /// Sends one report; returns the server's `data`.
    pub async fn send(&self, report: &Report) -> Result<Value, SyncError> {
        let body = serde_json::to_value(report).unwrap_or(Value::Null);
        self.client.report(&self.agent_id, &self.token, &body).await
    }
}

/// Whether an engine action concerns the server: fleet blocks, approval requests and alerts
/// (the server acts on them); everything else is reported for the audit only.
pub fn is_fleet_action(record: &ActionRecord) -> bool {
    matches!(
        record.action,
        Action::BlockIp {
            scope: Scope::Fleet,
            ..
        } | Action::ApprovalRequest { .. }
            | Action::Alert { .. }
    )
}

/// Executes fleet events on this host and reports the outcomes.
pub struct FleetHandler {
    executor: Arc<Mutex<dyn FleetExecutor>>,
    ledger: ApprovalLedger,
    reporter: Reporter,
}

impl std::fmt::Debug for FleetHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetHandler")
            .field("ledger", &self.ledger)
            .finish_non_exhaustive()
    }
}

impl FleetHandler {
    /// A handler running actions on `executor` (shared with the agent's own pipeline), with
    /// the approval ledger in `state_dir`.
    pub fn new(
        executor: Arc<Mutex<dyn FleetExecutor>>,
        state_dir: &Path,
        reporter: Reporter,
    ) -> Self {
        Self {
            executor,
            ledger: ApprovalLedger::open(state_dir),
            reporter,
        }
    }

    /// Handles every event of `events` until the queue closes (the sync stopped).
    pub fn spawn(mut self, mut events: mpsc::Receiver<FleetEvent>) -> JoinHandle<()> {
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                self.handle(event, Utc::now()).await;
            }
        })
    }

    /// Handles one event at `now`; returns the outcome, `None` when nothing was done (a
    /// replayed or expired approval).
    pub async fn handle(&mut self, event: FleetEvent, now: DateTime<Utc>) -> Option<FleetOutcome> {
        match event {
            FleetEvent::Block(block) => {
                let outcome = self.run(|e| e.execute(&block.action));
                tracing::info!(ip = %block.ip, from = %block.source_agent, outcome = %outcome.detail(), "fleet block");
                self.report(block.action, &outcome, None).await;
                Some(outcome)
            }
            FleetEvent::Unblock(unblock) => {
                let outcome = self.run(|e| e.unblock(unblock.ip));
                tracing::info!(ip = %unblock.ip, by = %unblock.by, outcome = %outcome.detail(), "fleet unblock");
                Some(outcome)
            }
            FleetEvent::Approval(approval) => match self.ledger.decide(&approval, now) {
                ApprovalDecision::Execute => {
                    if let Err(err) = self.ledger.remember(&approval, now) {
                        tracing::error!(%err, approval = %approval.approval_id, "cannot record the approval; not executing it");
                        return None;
                    }
                    let outcome = self.run(|e| e.execute(&approval.action));
                    tracing::info!(approval = %approval.approval_id, outcome = %outcome.detail(), "approved action");
                    self.report(approval.action, &outcome, Some(approval.approval_id))
                        .await;
                    Some(outcome)
                }
                decision => {
                    tracing::info!(approval = %approval.approval_id, ?decision, "approval ignored");
                    None
                }
            },
        }
    }

    fn run(&self, f: impl FnOnce(&mut dyn FleetExecutor) -> FleetOutcome) -> FleetOutcome {
        match self.executor.lock() {
            Ok(mut executor) => f(&mut *executor),
            Err(_) => FleetOutcome::Failed("the executor panicked earlier".to_owned()),
        }
    }

    async fn report(
        &self,
        record: ActionRecord,
        outcome: &FleetOutcome,
        approval_id: Option<String>,
    ) {
        let report = Report {
            record,
            outcome: Some(outcome.report_outcome()),
            detail: Some(outcome.detail().to_owned()),
            approval_id,
            report_id: None,
        };
        if let Err(err) = self.reporter.send(&report).await {
            tracing::warn!(%err, "cannot report a fleet action");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn approval(id: &str, expires_at: &str) -> ApprovalEvent {
        ApprovalEvent {
            approval_id: id.to_owned(),
            expires_at: expires_at.parse().unwrap_or_default(),
            action: ActionRecord {
                action: Action::KillProcess {
                    pid: 42,
                    process: None,
                },
                rule: 0,
                policy_version: crate::PolicyVersion::new(1),
                event_id: None,
            },
        }
    }

    #[test]
    fn an_approval_runs_once_and_never_after_its_expiry_even_after_a_restart() {
        let dir = std::env::temp_dir().join(format!("fleet-ledger-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let now: DateTime<Utc> = "2026-03-07T12:00:00Z".parse().unwrap_or_default();
        let first = approval("apr_1", "2026-03-07T13:00:00Z");
        let mut ledger = ApprovalLedger::open(&dir);
        assert_eq!(ledger.decide(&first, now), ApprovalDecision::Execute);
        assert!(ledger.remember(&first, now).is_ok());
        assert_eq!(ledger.decide(&first, now), ApprovalDecision::Replayed);
        let reopened = ApprovalLedger::open(&dir);
        assert_eq!(reopened.decide(&first, now), ApprovalDecision::Replayed);
        let late = approval("apr_2", "2026-03-07T11:59:59Z");
        assert_eq!(reopened.decide(&late, now), ApprovalDecision::Expired);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn fleet_events_parse_and_unknown_ones_are_left_alone() {
        let block = r#"{"ip":"203.0.113.7","expiresAt":null,"sourceAgent":"agent-a",
            "action":{"action":"block_ip","ip":"203.0.113.7","duration":"permanent","scope":"host","rule":0,"policyVersion":"v1"}}"#;
        assert!(matches!(
            FleetEvent::parse("block", block),
            Ok(Some(FleetEvent::Block(BlockEvent {
                expires_at: None,
                ..
            })))
        ));
        assert!(matches!(FleetEvent::parse("something", "{}"), Ok(None)));
        let err = FleetEvent::parse("unblock", "{}")
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("malformed `unblock` event: missing field `ip` at line 1 column 2")
        );
    }
}
