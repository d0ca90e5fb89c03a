//! The reference agent's part of the fleet loop: every engine action it handles is reported to
//! the server (in the background, never blocking the event path), and the server's `block`,
//! `unblock` and `approval` events run on the same executor as the agent's own actions.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use policy_engine::ActionRecord;
use policy_engine::executor::{Executor, Outcome};
use policy_engine::sync::fleet::{FleetEvent, Report};
use policy_engine::sync::{FleetExecutor, FleetHandler, FleetOutcome, Reporter};
use tokio::sync::mpsc;

use crate::pipeline::{AgentExecutor, Shared};

/// Reports queued before new ones are dropped (with a warning) while the server is away.
const REPORT_QUEUE: usize = 1024;

/// The agent's executor as the fleet handler sees it.
pub struct FleetBridge<E>(pub Shared<E>);

impl<E: AgentExecutor> FleetExecutor for FleetBridge<E> {
    fn execute(&mut self, record: &ActionRecord) -> FleetOutcome {
        let outcome = self.0.execute(record);
        if self.0.acts() {
            tracing::info!(%outcome, "fleet action");
        }
        to_fleet(outcome, self.0.acts())
    }

    fn unblock(&mut self, ip: IpAddr) -> FleetOutcome {
        to_fleet(self.0.unblock(ip), self.0.acts())
    }
}

/// A dry run only says what it would do: `skipped`, so the server never takes it for a block.
fn to_fleet(outcome: Outcome, acts: bool) -> FleetOutcome {
    match outcome {
        Outcome::Done { detail } if acts => FleetOutcome::Executed(detail),
        Outcome::Done { detail } => FleetOutcome::Skipped(format!("dry run: {detail}")),
        Outcome::Skipped { reason } => FleetOutcome::Skipped(reason),
        Outcome::Failed { error } => FleetOutcome::Failed(error),
    }
}

/// The pipeline's executor: executes, then queues a report of the action and its outcome.
pub struct Reporting<E> {
    inner: Shared<E>,
    reports: mpsc::Sender<Report>,
}

impl<E: AgentExecutor> Executor for Reporting<E> {
    fn execute(&self, record: &ActionRecord) -> Outcome {
        let outcome = self.inner.execute(record);
        let report = Report::local(
            record.clone(),
            &to_fleet(outcome.clone(), self.inner.acts()),
        );
        if self.reports.try_send(report).is_err() {
            tracing::warn!("report queue full; an action report is dropped");
        }
        outcome
    }
}

impl<E: AgentExecutor> AgentExecutor for Reporting<E> {
    fn maintain(&mut self, unreachable_for: Duration) -> Vec<Outcome> {
        self.inner.maintain(unreachable_for)
    }

    fn acts(&self) -> bool {
        self.inner.acts()
    }
}

/// The background task that sends action reports.
pub struct ReportSender(tokio::task::JoinHandle<()>);

impl ReportSender {
    /// Waits, at most `deadline`, for the queued reports to be sent. Call it after the
    /// pipeline (and with it the queue's sender) is dropped, before the process exits:
    /// otherwise the reports of the last actions, an alert among them, would be lost.
    pub async fn finish(self, deadline: Duration) {
        if tokio::time::timeout(deadline, self.0).await.is_err() {
            tracing::warn!(
                "action reports still queued after {deadline:?}; they are dropped (server unreachable?)"
            );
        }
    }
}

/// Starts the fleet handler (events from `queue`) and the report sender on the current
/// runtime; returns the executor for the pipeline and the sender to finish at exit.
pub fn start<E: AgentExecutor + 'static>(
    executor: Shared<E>,
    state_dir: &Path,
    reporter: Reporter,
    queue: mpsc::Receiver<FleetEvent>,
) -> (Reporting<E>, ReportSender) {
    let shared: std::sync::Arc<std::sync::Mutex<dyn FleetExecutor>> =
        std::sync::Arc::new(std::sync::Mutex::new(FleetBridge(executor.clone())));
    FleetHandler::new(shared, state_dir, reporter.clone()).spawn(queue);
    let (reports, mut pending) = mpsc::channel::<Report>(REPORT_QUEUE);
    let sender = tokio::spawn(async move {
        while let Some(report) = pending.recv().await {
            // A few tries with a short backoff; the audit is best effort, enforcement is not
            // waiting for it.
            for attempt in 0..3u32 {
                match reporter.send(&report).await {
                    Ok(_) => break,
                    Err(err) => {
                        tracing::warn!(%err, attempt, "cannot report an action");
                        tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                    }
                }
            }
        }
    });
    (
        Reporting {
            inner: executor,
            reports,
        },
        ReportSender(sender),
    )
}
