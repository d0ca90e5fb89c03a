//! The stream side of the fleet loop: the `block`, `unblock` and `approval` events of the
//! server's stream, parsed and queued for whoever executes them (the agent runtime,
//! `policy_engine::agent`), and the report of an action the agent handled itself.
//!
//! The stream task only parses and queues fleet events ([`FleetEvents`], set in
//! [`SyncConfig::fleet`](super::SyncConfig::fleet)), so a slow firewall never stalls policy
//! updates.

use tokio::sync::mpsc;

use crate::action::{Action, ActionRecord};
use crate::protocol::{Outcome, ReportOutcome};

pub use crate::protocol::{
    ApprovalEvent, BlockEvent, FleetEvent, FleetEventError, Report, UnblockEvent,
};

/// Where the stream task queues fleet events (bounded: when the handler falls behind, events
/// are dropped with a warning; the server re-sends blocks in force and pending approvals on the
/// next connection).
#[derive(Debug, Clone)]
pub struct FleetEvents(mpsc::Sender<FleetEvent>);

impl FleetEvents {
    /// A queue of `capacity` events and its receiving end.
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<FleetEvent>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Self(tx), rx)
    }

    /// A handle that queues events while the stream task runs, without keeping the queue open
    /// after it ended.
    pub fn downgrade(&self) -> mpsc::WeakSender<FleetEvent> {
        self.0.downgrade()
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

/// The report of an action this agent handled itself.
impl Report {
    /// The report of an engine action this agent handled locally: an `approval_request` is
    /// `requested` (never executed before approval); others carry the executor's outcome and
    /// its message.
    ///
    /// ```
    /// use policy_engine::protocol::{Outcome, Report, ReportOutcome};
    /// use policy_engine::{Action, ActionRecord, PolicyVersion};
    /// let record = ActionRecord {
    ///     action: Action::KillProcess { pid: 42, process: None },
    ///     rule: 0,
    ///     policy_version: PolicyVersion::new(1),
    ///     event_id: None,
    /// };
    /// let report = Report::local(record, &Outcome::failed("no such process"));
    /// assert_eq!(report.outcome(), ReportOutcome::Failed);
    /// assert_eq!(report.detail.as_deref(), Some("no such process"));
    /// ```
    pub fn local(record: ActionRecord, outcome: &Outcome) -> Self {
        if matches!(record.action, Action::ApprovalRequest { .. }) {
            Self {
                outcome: Some(ReportOutcome::Requested),
                detail: None,
                ..Self::of(record, outcome)
            }
        } else {
            Self::of(record, outcome)
        }
    }
}
