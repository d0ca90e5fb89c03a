//! The action pipeline: every action the agent carries out (the engine's, a fleet block, an
//! approved action, a fleet unblock) runs on tokio's blocking pool with a deadline, never on an
//! async worker, and its outcome is filed as a report in the outbox.
//!
//! Actions go into lanes by the part of the host they touch. A lane runs its actions one at a
//! time in the order they came (a fleet `block` before the `unblock` that follows it), and lanes
//! run side by side, so a hung `nft` holds up only other firewall changes. Blocks queued back to
//! back go to the executor as one batch (one `nft` transaction), so a flood of sources costs a
//! few transactions, not one each. `kill_process` actions do not wait for each other: each waits
//! out its own grace period, up to [`MAX_PARALLEL_KILLS`] at once.
//!
//! The engine's own actions pass the host's action budgets first (the running policy's
//! `budgets`, [`crate::budget`]): a `kill_process`, `quarantine_file`, `isolate_host` or
//! `block_ip` beyond its budget becomes an `approval_request` (sent to the server like any
//! other) or is dropped (reported `refused`, not executed), as the budget says. Fleet blocks
//! and approved actions are not budgeted: the server's fleet-block budget and an operator
//! already decided on them.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinHandle;

use super::metrics::AgentMetrics;
use super::report::{Origin, ReportQueue};
use crate::action::{Action, ActionRecord};
use crate::budget::{BudgetLedger, Verdict, budgeted};
use crate::executor::{Executor, Outcome, describe};
use crate::policy::OnExceed;
use crate::sync::LiveEngine;

/// Actions waiting in one lane before new ones fail at once ("not executed: ... waiting").
pub const LANE_CAPACITY: usize = 1024;

/// Most `kill_process` actions running at once.
pub const MAX_PARALLEL_KILLS: usize = 64;

/// Most `block_ip` actions handed to the executor in one call
/// ([`Executor::execute_batch`], one `nft` transaction for the host executor).
pub const MAX_BATCH: usize = 1024;

/// The part of the host an action touches: one queue each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// `block_ip` and fleet unblocks: the nftables block list.
    Firewall,
    /// `kill_process`: independent of each other, run in parallel.
    Kill,
    /// `quarantine_file`.
    Quarantine,
    /// `isolate_host`.
    Isolation,
    /// `custom`.
    Custom,
    /// `alert` and `approval_request`: the server acts on them; the executor only looks.
    Server,
}

const LANES: [Lane; 6] = [
    Lane::Firewall,
    Lane::Kill,
    Lane::Quarantine,
    Lane::Isolation,
    Lane::Custom,
    Lane::Server,
];

impl Lane {
    fn of(action: &Action) -> Self {
        match action {
            Action::BlockIp { .. } => Self::Firewall,
            Action::KillProcess { .. } => Self::Kill,
            Action::QuarantineFile { .. } => Self::Quarantine,
            Action::IsolateHost { .. } => Self::Isolation,
            Action::Custom { .. } => Self::Custom,
            Action::Alert { .. } | Action::ApprovalRequest { .. } => Self::Server,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One piece of work for the executor.
#[derive(Debug)]
enum Job {
    /// Carry out an action and report it.
    Execute {
        record: ActionRecord,
        origin: Origin,
    },
    /// Lift a fleet block (logged, not reported: the server lifted it).
    Unblock { ip: IpAddr, by: String },
}

impl Job {
    fn lane(&self) -> Lane {
        match self {
            Self::Execute { record, .. } => Lane::of(&record.action),
            Self::Unblock { .. } => Lane::Firewall,
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Execute { record, .. } => describe(&record.action),
            Self::Unblock { ip, .. } => format!("unblock `{ip}`"),
        }
    }
}

/// How the dispatcher runs actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DispatchConfig {
    /// The longest one action may run before it is reported as failed.
    pub deadline: Duration,
    /// Outcomes of a dry run are "would do" texts: logged at debug level only.
    pub dry_run: bool,
}

/// Hands actions to the executor off the async runtime. Cheap to clone; usable from any
/// thread (event sources run on their own threads).
#[derive(Clone)]
pub(crate) struct Dispatcher {
    inner: Arc<Inner>,
}

struct Inner {
    lanes: Vec<mpsc::Sender<Job>>,
    executor: Arc<dyn Executor>,
    reports: ReportQueue,
    metrics: AgentMetrics,
    runtime: Handle,
    config: DispatchConfig,
    kill_slots: Arc<Semaphore>,
    /// Where the running policy's budgets are read.
    live: LiveEngine,
    /// This host's budget windows.
    ledger: Mutex<BudgetLedger>,
    /// Jobs accepted and not yet finished (executed and reported).
    busy: AtomicUsize,
    idle: Notify,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("busy", &self.inner.busy.load(Ordering::Relaxed))
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// Starts one task per lane on the current runtime; outcomes are counted into `metrics`;
    /// the engine's actions are held to the budgets of `live`'s running policy.
    pub fn start(
        executor: Arc<dyn Executor>,
        reports: ReportQueue,
        config: DispatchConfig,
        metrics: AgentMetrics,
        live: LiveEngine,
    ) -> Self {
        let mut senders = Vec::with_capacity(LANES.len());
        let mut receivers = Vec::with_capacity(LANES.len());
        for _ in LANES {
            let (tx, rx) = mpsc::channel(LANE_CAPACITY);
            senders.push(tx);
            receivers.push(rx);
        }
        let inner = Arc::new(Inner {
            lanes: senders,
            executor,
            reports,
            metrics,
            runtime: Handle::current(),
            config,
            kill_slots: Arc::new(Semaphore::new(MAX_PARALLEL_KILLS)),
            live,
            ledger: Mutex::new(BudgetLedger::default()),
            busy: AtomicUsize::new(0),
            idle: Notify::new(),
        });
        for (lane, receiver) in LANES.into_iter().zip(receivers) {
            // The lane tasks hold a weak reference: when the last dispatcher handle goes, the
            // queues close and the tasks end after the jobs already queued.
            tokio::spawn(lane_loop(Arc::downgrade(&inner), lane, receiver));
        }
        Self { inner }
    }

    /// Queues `record` for execution; `origin` says how to report it. An action of the
    /// engine ([`Origin::Local`]) passes the host's budgets first.
    pub fn execute(&self, record: ActionRecord, origin: Origin) {
        match origin {
            Origin::Local => self.budgeted(record),
            origin => self.submit(Job::Execute { record, origin }),
        }
    }

    /// An engine action under the budgets: queued as it is within them; beyond them queued as
    /// an `approval_request`, or dropped and reported.
    fn budgeted(&self, record: ActionRecord) {
        let Some(kind) = budgeted(&record.action) else {
            return self.submit(Job::Execute {
                record,
                origin: Origin::Local,
            });
        };
        let budgets = self.inner.live.budgets();
        let verdict = self
            .inner
            .ledger
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(kind, &budgets, Instant::now());
        let Verdict::Exceeded { limit, .. } = &verdict else {
            return self.submit(Job::Execute {
                record,
                origin: Origin::Local,
            });
        };
        let reason = verdict.reason().unwrap_or_default();
        self.inner.metrics.over_budget(kind, limit.on_exceed);
        match limit.on_exceed {
            OnExceed::Approval => {
                tracing::warn!(action = %describe(&record.action), %reason, "asking for approval");
                let record = ActionRecord {
                    action: Action::ApprovalRequest {
                        request: Box::new(record.action),
                    },
                    ..record
                };
                self.submit(Job::Execute {
                    record,
                    origin: Origin::OverBudget(reason),
                });
            }
            OnExceed::Drop => {
                tracing::warn!(action = %describe(&record.action), %reason, "action dropped");
                let outcome = Outcome::skipped(format!("not executed: {reason}"));
                self.inner.busy.fetch_add(1, Ordering::AcqRel);
                self.settle_later(
                    Job::Execute {
                        record,
                        origin: Origin::OverBudget(reason),
                    },
                    outcome,
                );
            }
        }
    }

    /// Queues lifting the fleet block on `ip`.
    pub fn unblock(&self, ip: IpAddr, by: String) {
        self.submit(Job::Unblock { ip, by });
    }

    /// Waits until every action queued so far has run and been reported, at most `limit`;
    /// true if they all did.
    pub async fn idle(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.inner.idle.notified();
            if self.inner.busy.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    fn submit(&self, job: Job) {
        let inner = &self.inner;
        inner.busy.fetch_add(1, Ordering::AcqRel);
        let lane = job.lane();
        let Some(queue) = inner.lanes.get(lane.index()) else {
            finish(inner);
            return;
        };
        match queue.try_send(job) {
            Ok(()) => {}
            Err(refused) => {
                let job = match refused {
                    mpsc::error::TrySendError::Full(job)
                    | mpsc::error::TrySendError::Closed(job) => job,
                };
                let outcome = Outcome::failed(format!(
                    "not executed: {LANE_CAPACITY} actions of this kind are already waiting \
                     (the executor is stuck or overwhelmed)"
                ));
                self.settle_later(job, outcome);
            }
        }
    }

    /// Reports an accepted `job` with `outcome` without executing it, off the caller's thread.
    fn settle_later(&self, job: Job, outcome: Outcome) {
        let inner = self.inner.clone();
        self.inner.runtime.spawn(async move {
            settle(&inner, job, outcome).await;
            finish(&inner);
        });
    }
}

/// Marks one job finished.
fn finish(inner: &Inner) {
    if inner.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
        inner.idle.notify_waiters();
    }
}

async fn lane_loop(inner: std::sync::Weak<Inner>, lane: Lane, mut jobs: mpsc::Receiver<Job>) {
    // A call that overran its deadline and still runs: the next one waits for it (the executor
    // would make it wait anyway) instead of piling up blocked threads.
    let mut overrun: Option<JoinHandle<Vec<Outcome>>> = None;
    // A job taken off the queue that ends a batch, first in line for the next one.
    let mut held: Option<Job> = None;
    loop {
        let job = match held.take() {
            Some(job) => job,
            None => match jobs.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if lane == Lane::Kill {
            let Ok(slot) = inner.kill_slots.clone().acquire_owned().await else {
                return;
            };
            let inner = inner.clone();
            tokio::spawn(async move {
                let batch = vec![job];
                let outcomes = match call(&inner, &batch, slot).await {
                    Ok(outcomes) | Err((outcomes, _)) => outcomes,
                };
                settle_all(&inner, batch, outcomes).await;
            });
            continue;
        }
        // Blocks queued back to back go to the executor together (one `nft` transaction for
        // the host executor); an unblock ends the batch, so the order holds.
        let mut batch = vec![job];
        if lane == Lane::Firewall && matches!(batch.first(), Some(Job::Execute { .. })) {
            while batch.len() < MAX_BATCH {
                match jobs.try_recv() {
                    Ok(next @ Job::Execute { .. }) => batch.push(next),
                    Ok(other) => {
                        held = Some(other);
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        if let Some(previous) = overrun.as_mut() {
            if tokio::time::timeout(inner.config.deadline, previous)
                .await
                .is_err()
            {
                let outcome = Outcome::failed(format!(
                    "not executed: the previous action of this kind has been running for more \
                     than {:?}",
                    inner.config.deadline * 2
                ));
                let outcomes = vec![outcome; batch.len()];
                settle_all(&inner, batch, outcomes).await;
                continue;
            }
            overrun = None;
        }
        let slot = None::<tokio::sync::OwnedSemaphorePermit>;
        let outcomes = match call(&inner, &batch, slot).await {
            Ok(outcomes) => outcomes,
            Err((outcomes, running)) => {
                overrun = running;
                outcomes
            }
        };
        settle_all(&inner, batch, outcomes).await;
    }
}

/// Runs `batch` (one unblock, or actions) on the blocking pool with the deadline: one outcome
/// per job. On overrun, the outcomes say so and the still running call is handed back.
async fn call(
    inner: &Inner,
    batch: &[Job],
    slot: impl Send + 'static,
) -> Result<Vec<Outcome>, (Vec<Outcome>, Option<JoinHandle<Vec<Outcome>>>)> {
    let executor = inner.executor.clone();
    let work: Box<dyn FnOnce() -> Vec<Outcome> + Send> = match batch {
        [Job::Unblock { ip, .. }] => {
            let ip = *ip;
            Box::new(move || vec![executor.unblock(ip)])
        }
        _ => {
            let records: Vec<ActionRecord> = batch
                .iter()
                .filter_map(|job| match job {
                    Job::Execute { record, .. } => Some(record.clone()),
                    Job::Unblock { .. } => None,
                })
                .collect();
            Box::new(move || executor.execute_batch(&records))
        }
    };
    let mut running = tokio::task::spawn_blocking(move || {
        let outcomes = work();
        drop(slot);
        outcomes
    });
    let fail = |message: String| vec![Outcome::failed(message); batch.len()];
    match tokio::time::timeout(inner.config.deadline, &mut running).await {
        Ok(Ok(mut outcomes)) => {
            // An executor that answers fewer outcomes than actions: the rest failed.
            outcomes.resize_with(batch.len(), || {
                Outcome::failed("the executor gave no outcome for this action")
            });
            Ok(outcomes)
        }
        Ok(Err(join)) => Err((fail(format!("the executor failed: {join}")), None)),
        Err(_) => Err((
            fail(format!(
                "no outcome within {:?}; the action may still complete",
                inner.config.deadline
            )),
            Some(running),
        )),
    }
}

/// Settles each job of a batch with its outcome and marks it finished.
async fn settle_all(inner: &Inner, batch: Vec<Job>, outcomes: Vec<Outcome>) {
    for (job, outcome) in batch.into_iter().zip(outcomes) {
        settle(inner, job, outcome).await;
        finish(inner);
    }
}

/// Logs the outcome of `job` and files its report.
async fn settle(inner: &Inner, job: Job, outcome: Outcome) {
    let what = job.describe();
    match (&outcome, inner.config.dry_run) {
        (Outcome::Failed { .. }, _) => tracing::warn!(action = %what, %outcome, "action failed"),
        (_, true) => tracing::debug!(action = %what, %outcome, "action"),
        (_, false) => tracing::info!(action = %what, %outcome, "action"),
    }
    match job {
        Job::Execute { record, origin } => {
            // Counted once its report is in the outbox, so that a scrape showing the action
            // and an empty outbox means the server has its report.
            let labels = AgentMetrics::action_labels(&record, &outcome, &origin);
            inner.reports.file(record, outcome, origin).await;
            inner.metrics.action(&labels);
        }
        Job::Unblock { ip, by } => {
            tracing::info!(%ip, %by, "fleet unblock");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Condvar, Mutex};

    use super::*;
    use crate::agent::outbox::{Outbox, OutboxLimits};
    use crate::engine::EngineConfig;
    use crate::policy::{Policy, PolicyVersion};
    use crate::protocol::{Report, ReportOutcome};

    /// A gate the test opens; executor calls wait at it.
    #[derive(Default)]
    struct Gate {
        open: Mutex<bool>,
        changed: Condvar,
    }

    impl Gate {
        fn wait(&self) {
            let mut open = self.open.lock().unwrap();
            while !*open {
                open = self.changed.wait(open).unwrap();
            }
        }

        fn open(&self) {
            *self.open.lock().unwrap() = true;
            self.changed.notify_all();
        }
    }

    /// Blocks wait at the gate; kills meet: each waits (at most 5 s) until `kills` of them run
    /// at once. Every call is logged when it starts and ends.
    #[derive(Default)]
    struct Scripted {
        gate: Gate,
        kills: usize,
        running_kills: Mutex<usize>,
        met: Condvar,
        log: Mutex<Vec<String>>,
    }

    impl Scripted {
        fn note(&self, entry: String) {
            self.log.lock().unwrap().push(entry);
        }
    }

    impl Executor for Scripted {
        fn execute(&self, record: &ActionRecord) -> Outcome {
            let what = describe(&record.action);
            self.note(format!("start {what}"));
            let outcome = match &record.action {
                Action::BlockIp { .. } => {
                    self.gate.wait();
                    Outcome::done("blocked")
                }
                Action::KillProcess { .. } => {
                    let mut running = self.running_kills.lock().unwrap();
                    *running += 1;
                    self.met.notify_all();
                    let (running, timeout) = self
                        .met
                        .wait_timeout_while(running, Duration::from_secs(5), |n| *n < self.kills)
                        .unwrap();
                    drop(running);
                    if timeout.timed_out() {
                        Outcome::failed("alone")
                    } else {
                        Outcome::done("together")
                    }
                }
                _ => Outcome::done("done"),
            };
            self.note(format!("end {what}"));
            outcome
        }

        fn execute_batch(&self, records: &[ActionRecord]) -> Vec<Outcome> {
            self.note(format!("batch of {}", records.len()));
            records.iter().map(|r| self.execute(r)).collect()
        }

        fn unblock(&self, ip: IpAddr) -> Outcome {
            self.note(format!("unblock {ip}"));
            Outcome::done("unblocked")
        }
    }

    fn record(action: Action) -> ActionRecord {
        ActionRecord {
            action,
            rule: 0,
            policy_version: PolicyVersion::new(1),
            event_id: None,
        }
    }

    fn block(ip: &str) -> ActionRecord {
        record(Action::BlockIp {
            ip: ip.parse().unwrap(),
            duration: "1h".parse().unwrap(),
            scope: crate::policy::Scope::Host,
        })
    }

    fn kill(pid: u32) -> ActionRecord {
        record(Action::KillProcess { pid, process: None })
    }

    struct Harness {
        executor: Arc<Scripted>,
        metrics: AgentMetrics,
        outbox: Arc<Outbox>,
        dispatcher: Dispatcher,
        _dir: tempfile::TempDir,
    }

    fn harness(executor: Scripted, deadline: Duration) -> Harness {
        harness_with(executor, deadline, LiveEngine::new(EngineConfig::default()))
    }

    fn harness_with(executor: Scripted, deadline: Duration, live: LiveEngine) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Arc::new(Outbox::open(dir.path(), OutboxLimits::default()).unwrap());
        let executor = Arc::new(executor);
        let metrics = AgentMetrics::new();
        let dispatcher = Dispatcher::start(
            executor.clone(),
            ReportQueue::new(outbox.clone()),
            DispatchConfig {
                deadline,
                dry_run: false,
            },
            metrics.clone(),
            live,
        );
        Harness {
            executor,
            metrics,
            outbox,
            dispatcher,
            _dir: dir,
        }
    }

    impl Harness {
        /// Waits (at most 10 s) until `n` reports are filed; returns them in order.
        async fn reports(&self, n: usize) -> Vec<Report> {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while self.outbox.len() < n {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{n} reports never came"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let mut reports = Vec::new();
            while let Some(next) = self.outbox.front() {
                let body = self.outbox.read(next).unwrap().unwrap();
                let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
                reports.push(Report::from_value(&value).unwrap());
                self.outbox.remove(next).unwrap();
            }
            reports
        }

        /// Waits (at most 10 s) until `n` reports are in the outbox, leaving them there.
        async fn reports_so_far(&self, n: usize) {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while self.outbox.len() < n {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{n} reports never came"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }

        fn log(&self) -> Vec<String> {
            self.executor.log.lock().unwrap().clone()
        }

        /// Waits (at most 10 s) until the executor logged `n` lines.
        async fn wait_log(&self, n: usize) {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while self.log().len() < n {
                assert!(tokio::time::Instant::now() < deadline, "{:?}", self.log());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    fn details(reports: &[Report]) -> Vec<(String, String)> {
        reports
            .iter()
            .map(|r| {
                (
                    describe(&r.record.action),
                    r.detail.clone().unwrap_or_default(),
                )
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stuck_firewall_holds_up_no_kill() {
        let h = harness(
            Scripted {
                kills: 1,
                ..Scripted::default()
            },
            Duration::from_secs(30),
        );
        h.dispatcher.execute(block("203.0.113.7"), Origin::Local);
        h.dispatcher.execute(kill(42), Origin::Local);
        // The kill is done and reported while the block still waits at the gate.
        let first = h.reports(1).await;
        assert_eq!(
            details(&first),
            [("kill_process 42".into(), "together".into())]
        );
        assert!(
            !h.log()
                .contains(&"end block_ip 203.0.113.7 for 1h (host)".to_owned())
        );
        h.executor.gate.open();
        let second = h.reports(1).await;
        assert_eq!(
            details(&second),
            [(
                "block_ip 203.0.113.7 for 1h (host)".into(),
                "blocked".into()
            )]
        );
        assert!(h.dispatcher.idle(Duration::from_secs(5)).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kills_run_side_by_side() {
        let h = harness(
            Scripted {
                kills: 4,
                ..Scripted::default()
            },
            Duration::from_secs(30),
        );
        for pid in 1..=4 {
            h.dispatcher.execute(kill(100 + pid), Origin::Local);
        }
        let reports = h.reports(4).await;
        assert!(
            reports
                .iter()
                .all(|r| r.detail.as_deref() == Some("together")),
            "{:?}",
            details(&reports)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_lane_keeps_its_order_and_a_fleet_block_is_reported_as_such() {
        let h = harness(Scripted::default(), Duration::from_secs(30));
        h.dispatcher.execute(block("198.51.100.4"), Origin::Fleet);
        h.dispatcher
            .unblock("198.51.100.4".parse().unwrap(), "admin".into());
        h.dispatcher
            .execute(block("198.51.100.5"), Origin::Approval("apr_1".into()));
        h.executor.gate.open();
        let reports = h.reports(2).await;
        assert!(h.dispatcher.idle(Duration::from_secs(5)).await);
        assert_eq!(
            h.log(),
            [
                "batch of 1",
                "start block_ip 198.51.100.4 for 1h (host)",
                "end block_ip 198.51.100.4 for 1h (host)",
                "unblock 198.51.100.4",
                "batch of 1",
                "start block_ip 198.51.100.5 for 1h (host)",
                "end block_ip 198.51.100.5 for 1h (host)",
            ]
        );
        assert_eq!(reports[0].approval_id, None);
        assert_eq!(reports[1].approval_id.as_deref(), Some("apr_1"));
        assert!(reports[0].report_id.is_some());
        assert_ne!(reports[0].report_id, reports[1].report_id);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blocks_queued_behind_a_busy_firewall_go_in_one_batch() {
        let h = harness(Scripted::default(), Duration::from_secs(30));
        h.dispatcher.execute(block("192.0.2.1"), Origin::Local);
        h.wait_log(2).await;
        for last in 2..=4 {
            h.dispatcher
                .execute(block(&format!("192.0.2.{last}")), Origin::Local);
        }
        h.executor.gate.open();
        let reports = h.reports(4).await;
        assert_eq!(reports.len(), 4);
        let batches: Vec<String> = h
            .log()
            .into_iter()
            .filter(|line| line.starts_with("batch"))
            .collect();
        assert_eq!(batches, ["batch of 1", "batch of 3"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_action_past_its_deadline_fails_and_the_next_waits_for_it() {
        let h = harness(Scripted::default(), Duration::from_millis(50));
        h.dispatcher.execute(block("192.0.2.1"), Origin::Local);
        h.wait_log(1).await;
        h.dispatcher.execute(block("192.0.2.2"), Origin::Local);
        let reports = h.reports(2).await;
        assert_eq!(
            details(&reports),
            [
                (
                    "block_ip 192.0.2.1 for 1h (host)".into(),
                    "no outcome within 50ms; the action may still complete".into()
                ),
                (
                    "block_ip 192.0.2.2 for 1h (host)".into(),
                    "not executed: the previous action of this kind has been running for more \
                     than 100ms"
                        .into()
                ),
            ]
        );
        // Only the first call ever reached the executor: no pile of blocked threads.
        assert_eq!(
            h.log(),
            ["batch of 1", "start block_ip 192.0.2.1 for 1h (host)"]
        );
        h.executor.gate.open();
        h.dispatcher.execute(block("192.0.2.3"), Origin::Local);
        let after = h.reports(1).await;
        assert_eq!(after[0].detail.as_deref(), Some("blocked"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn engine_actions_beyond_their_budget_become_approval_requests_or_are_dropped() {
        let live = LiveEngine::new(EngineConfig::default());
        let policy = Policy::from_json(
            br#"{"name": "b", "rules": [{"type": "custom", "config": {"condition": "true",
                "action": "kill_process"}}],
                "budgets": {"kill_process": {"max": 2, "window": "1h"},
                            "quarantine_file": {"max": 0, "window": "1h", "onExceed": "drop"}}}"#,
        )
        .unwrap();
        live.apply(PolicyVersion::new(1), policy).unwrap();
        let executor = Scripted {
            kills: 1,
            ..Scripted::default()
        };
        let h = harness_with(executor, Duration::from_secs(10), live);
        for pid in 1..=3 {
            h.dispatcher.execute(kill(pid), Origin::Local);
            h.reports_so_far(pid as usize).await;
        }
        let quarantine = record(Action::QuarantineFile {
            path: "/tmp/x".into(),
        });
        h.dispatcher.execute(quarantine, Origin::Local);
        h.reports_so_far(4).await;
        // Approved actions and fleet blocks are not budgeted.
        h.dispatcher
            .execute(kill(9), Origin::Approval("apr_1".into()));
        let reports = h.reports(5).await;
        let summary: Vec<(String, ReportOutcome, Option<String>)> = reports
            .iter()
            .map(|r| {
                (
                    serde_json::to_string(&r.record.action).unwrap(),
                    r.outcome(),
                    r.detail.clone(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    r#"{"action":"kill_process","pid":1}"#.to_owned(),
                    ReportOutcome::Executed,
                    Some("together".to_owned())
                ),
                (
                    r#"{"action":"kill_process","pid":2}"#.to_owned(),
                    ReportOutcome::Executed,
                    Some("together".to_owned())
                ),
                (
                    r#"{"action":"approval_request","request":{"action":"kill_process","pid":3}}"#
                        .to_owned(),
                    ReportOutcome::Requested,
                    Some("budget of `kill_process` exceeded (2 per 1h)".to_owned())
                ),
                (
                    r#"{"action":"quarantine_file","path":"/tmp/x"}"#.to_owned(),
                    ReportOutcome::Refused,
                    Some("budget of `quarantine_file` exceeded (0 per 1h)".to_owned())
                ),
                (
                    r#"{"action":"kill_process","pid":9}"#.to_owned(),
                    ReportOutcome::Executed,
                    Some("together".to_owned())
                ),
            ]
        );
        // The dropped quarantine never reached the executor.
        assert!(
            !h.log().iter().any(|l| l.contains("quarantine")),
            "{:?}",
            h.log()
        );
        let text = h.metrics.encode();
        for line in [
            r#"policy_agent_budget_exceeded_total{action="kill_process",on_exceed="approval"} 1"#,
            r#"policy_agent_budget_exceeded_total{action="quarantine_file",on_exceed="drop"} 1"#,
        ] {
            assert!(text.contains(line), "{line} not in {text}");
        }
    }
}
