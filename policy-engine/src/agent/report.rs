//! Reports: what the agent did, filed in the outbox and sent to the server in order, retried
//! with backoff until the server answers.
//!
//! [`ReportQueue::file`] writes a report to disk (on the blocking pool) and wakes the sender;
//! the sender task takes the oldest report, POSTs it and removes it once the server answered
//! 2xx. A transport error or a 5xx waits (exponential backoff, at once when the event stream
//! reconnects) and tries the same report again; a 4xx other than 401/403 means the server will
//! never take that body, so it is dropped (counted like an overflow) rather than blocking every
//! report behind it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::outbox::{DropCause, Outbox, Pending};
use crate::action::ActionRecord;
use crate::protocol::{Outcome, Report, ReportId, ReportOutcome};
use crate::sync::{ApiClient, Backoff, BackoffConfig, LiveEngine, SyncError};

/// Answers that say the body itself is wrong (400 malformed, 413 too large, 422 invalid):
/// sending it again cannot help. Everything else (404, 429, 5xx, no answer) is retried.
const REFUSED_FOR_GOOD: [u16; 3] = [400, 413, 422];

/// Why an action is reported, which decides the report's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    /// The agent's own engine decided it.
    Local,
    /// A fleet block the server pushed (`event: block`).
    Fleet,
    /// An action executed under the approval with this id.
    Approval(String),
    /// An engine action beyond its budget, with why: an `approval_request` sent instead
    /// (`requested`), or the action dropped (`refused`).
    OverBudget(String),
}

/// The JSON body of the report of `record`, with a new report id: `approval_request`s are
/// `requested` (the server stores them for approval), everything else carries the executor's
/// outcome; an approved action names its approval; an action beyond its budget says so in
/// `detail`, and is `refused` when it was dropped.
fn report_body(record: ActionRecord, outcome: &Outcome, origin: Origin) -> Vec<u8> {
    let mut report = Report::local(record, outcome);
    match origin {
        Origin::Approval(id) => report.approval_id = Some(id),
        Origin::OverBudget(reason) => {
            if report.outcome() != ReportOutcome::Requested {
                report.outcome = Some(ReportOutcome::Refused);
            }
            report.detail = Some(reason);
        }
        Origin::Local | Origin::Fleet => {}
    }
    report.report_id = new_report_id();
    serde_json::to_vec(&report).unwrap_or_default()
}

/// `rpt_` and 128 random bits: unique per agent without coordination, so that the server can
/// tell a resent report from a new one.
fn new_report_id() -> Option<ReportId> {
    format!("rpt_{:032x}", rand::random::<u128>()).parse().ok()
}

/// Where reports go: the outbox, and a wake-up for the sender.
#[derive(Debug, Clone)]
pub(crate) struct ReportQueue {
    outbox: Arc<Outbox>,
    wake: Arc<Notify>,
}

impl ReportQueue {
    pub fn new(outbox: Arc<Outbox>) -> Self {
        Self {
            outbox,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Files the report of `record` durably, then wakes the sender. A report that cannot be
    /// written (a full disk) is logged and counted as dropped.
    pub async fn file(&self, record: ActionRecord, outcome: Outcome, origin: Origin) {
        let body = report_body(record, &outcome, origin);
        let outbox = self.outbox.clone();
        let written = tokio::task::spawn_blocking(move || {
            outbox.push(&body).inspect_err(|_| {
                let _ = outbox.count_drops(1, DropCause::Unwritable);
            })
        })
        .await;
        match written {
            Ok(Ok(_)) => self.wake.notify_one(),
            Ok(Err(err)) => tracing::error!(%err, "cannot file an action report; it is lost"),
            Err(join) => tracing::error!(%join, "filing an action report failed"),
        }
    }
}

/// What the sender needs.
#[derive(Debug, Clone)]
pub(crate) struct SenderConfig {
    /// Delays between attempts while the server is unreachable.
    pub backoff: BackoffConfig,
    /// Delay after the server refused the token.
    pub unauthorized_retry: Duration,
}

/// Sends the outbox to the server, oldest first.
#[derive(Debug)]
pub(crate) struct ReportSender {
    queue: ReportQueue,
    client: ApiClient,
    token: String,
    live: LiveEngine,
    config: SenderConfig,
}

/// What became of one attempt.
enum Attempt {
    /// Nothing to send.
    Empty,
    /// Sent (or dropped for good): go on with the next.
    Done,
    /// Not sent: wait that long (or until the stream reconnects) and try again.
    Retry(Duration),
}

impl ReportSender {
    pub fn new(
        queue: ReportQueue,
        client: ApiClient,
        token: String,
        live: LiveEngine,
        config: SenderConfig,
    ) -> Self {
        Self {
            queue,
            client,
            token,
            live,
            config,
        }
    }

    /// Sends until `shutdown` turns true.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(self.config.backoff);
        let mut status = self.live.subscribe();
        loop {
            let wake = self.queue.wake.notified();
            // A request in flight is finished, not dropped, at shutdown (it takes at most the
            // request timeout): a server may act on a report it is still answering.
            let wait = match self.attempt(&mut backoff).await {
                Attempt::Done => continue,
                Attempt::Empty => None,
                Attempt::Retry(wait) => Some(wait),
            };
            let (was_connected, had_id) = {
                let now = status.borrow_and_update();
                (now.connected, now.agent_id.is_some())
            };
            let sleep = async {
                match wait {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = sleep => {}
                () = wake, if wait.is_none() => {}
                // The stream came back, or the server said who we are: try now.
                _ = status.wait_for(|s| {
                    (s.connected && !was_connected) || (s.agent_id.is_some() && !had_id)
                }) => backoff.reset(),
                _ = shutdown.changed() => return,
            }
        }
    }

    /// At shutdown: sends what is waiting until the outbox is empty, an attempt fails (the
    /// rest stays on disk for the next start) or `limit` passes. Returns the reports left.
    pub async fn drain(&self, limit: Duration) -> usize {
        let mut backoff = Backoff::new(self.config.backoff);
        let drained = tokio::time::timeout(limit, async {
            loop {
                match self.attempt(&mut backoff).await {
                    Attempt::Done => {}
                    Attempt::Empty | Attempt::Retry(_) => return,
                }
            }
        })
        .await;
        let left = self.queue.outbox.len();
        if drained.is_err() || left > 0 {
            tracing::warn!(
                left,
                "action reports not sent yet; they stay in the outbox for the next start"
            );
        }
        left
    }

    async fn attempt(&self, backoff: &mut Backoff) -> Attempt {
        let outbox = self.queue.outbox.clone();
        let Some(pending) = outbox.front() else {
            return Attempt::Empty;
        };
        let Some(agent_id) = self.live.status().agent_id else {
            // Who we are is not known yet (the server has not answered `/api/agents/me`).
            return Attempt::Retry(backoff.next_delay());
        };
        let read = {
            let outbox = outbox.clone();
            tokio::task::spawn_blocking(move || outbox.read(pending)).await
        };
        let body = match read {
            Ok(Ok(Some(body))) => body,
            // Dropped meanwhile to make room: the next one.
            Ok(Ok(None)) => {
                self.forget(pending).await;
                return Attempt::Done;
            }
            Ok(Err(err)) => {
                tracing::error!(%err, "unreadable action report; dropped");
                self.drop_for_good(pending).await;
                return Attempt::Done;
            }
            Err(_) => return Attempt::Retry(backoff.next_delay()),
        };
        match self.client.report(&agent_id, &self.token, body).await {
            Ok(answer) => {
                tracing::debug!(kind = ?answer.kind, report = ?answer.report_id, "action report sent");
                backoff.reset();
                self.forget(pending).await;
                Attempt::Done
            }
            Err(err @ SyncError::Unauthorized { .. }) => {
                tracing::warn!(%err, "the server refused the token for an action report");
                Attempt::Retry(self.config.unauthorized_retry)
            }
            Err(SyncError::Status {
                status, message, ..
            }) if REFUSED_FOR_GOOD.contains(&status) => {
                tracing::error!(
                    status,
                    %message,
                    "the server refused an action report for good; dropped"
                );
                self.drop_for_good(pending).await;
                Attempt::Done
            }
            Err(err) => {
                let wait = backoff.next_delay();
                tracing::debug!(%err, retry_in = ?wait, "action report not sent yet");
                Attempt::Retry(wait)
            }
        }
    }

    /// Removes a report the server will never take and counts it as dropped.
    async fn drop_for_good(&self, pending: Pending) {
        let outbox = self.queue.outbox.clone();
        let done = tokio::task::spawn_blocking(move || {
            outbox
                .remove(pending)
                .and(outbox.count_drops(1, DropCause::Refused))
        })
        .await;
        if !matches!(done, Ok(Ok(()))) {
            tracing::warn!("cannot delete or count a dropped action report");
        }
    }

    async fn forget(&self, pending: Pending) {
        let outbox = self.queue.outbox.clone();
        match tokio::task::spawn_blocking(move || outbox.remove(pending)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(%err, "cannot delete a sent action report"),
            Err(join) => tracing::warn!(%join, "deleting a sent action report failed"),
        }
    }
}
