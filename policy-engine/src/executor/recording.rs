//! The recording executor: remembers every action instead of acting (tests and dry runs).

use std::sync::{Mutex, MutexGuard};

use super::{Executor, Outcome, describe};
use crate::action::ActionRecord;

/// An executor that acts on nothing: it records each action and answers
/// `skipped: dry run: would ...`.
///
/// Operators run the agent with it (`--dry-run`) to watch what a policy would do before
/// enforcing it; tests use it to see which actions reached the executor. A long dry run uses
/// [`RecordingExecutor::discarding`], which answers the same and keeps nothing.
///
/// ```
/// use policy_engine::executor::{Executor, Outcome, RecordingExecutor};
/// use policy_engine::{Action, ActionRecord, PolicyVersion};
/// let executor = RecordingExecutor::new();
/// let record = ActionRecord {
///     action: Action::KillProcess { pid: 4242, process: Some("xmrig".into()) },
///     rule: 0,
///     policy_version: PolicyVersion::new(1),
///     event_id: None,
/// };
/// assert_eq!(
///     executor.execute(&record),
///     Outcome::skipped("dry run: would kill_process 4242 (`xmrig`)")
/// );
/// assert_eq!(executor.records(), vec![record]);
/// ```
#[derive(Debug, Default)]
pub struct RecordingExecutor {
    records: Mutex<Vec<ActionRecord>>,
    discard: bool,
}

impl RecordingExecutor {
    /// An executor with nothing recorded.
    pub fn new() -> Self {
        Self::default()
    }

    /// An executor that answers like a recording one but keeps no record, so that memory stays
    /// flat however long it runs.
    pub fn discarding() -> Self {
        Self {
            records: Mutex::default(),
            discard: true,
        }
    }

    /// Every action received, oldest first.
    pub fn records(&self) -> Vec<ActionRecord> {
        self.lock().clone()
    }

    /// Takes the recorded actions out, leaving none.
    pub fn take(&self) -> Vec<ActionRecord> {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> MutexGuard<'_, Vec<ActionRecord>> {
        // A panic while pushing leaves a valid vector.
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Executor for RecordingExecutor {
    fn execute(&self, record: &ActionRecord) -> Outcome {
        if !self.discard {
            self.lock().push(record.clone());
        }
        Outcome::skipped(format!("dry run: would {}", describe(&record.action)))
    }

    fn unblock(&self, ip: std::net::IpAddr) -> Outcome {
        Outcome::skipped(format!("dry run: would unblock `{ip}`"))
    }
}
