//! The recording executor: remembers every action instead of acting (tests and dry runs).

use super::{Executor, Outcome, describe};
use crate::action::ActionRecord;

/// An executor that acts on nothing: it records each action and answers
/// `skipped: dry run: would ...`.
///
/// Operators run the agent with it (`--dry-run`) to watch what a policy would do before
/// enforcing it; tests use it to see which actions reached the executor.
///
/// ```
/// use policy_engine::executor::{Executor, Outcome, RecordingExecutor};
/// use policy_engine::{Action, ActionRecord, PolicyVersion};
/// let mut executor = RecordingExecutor::new();
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
/// assert_eq!(executor.records(), &[record]);
/// ```
#[derive(Debug, Clone, Default)]
pub struct RecordingExecutor {
    records: Vec<ActionRecord>,
}

impl RecordingExecutor {
    /// An executor with nothing recorded.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every action received, oldest first.
    pub fn records(&self) -> &[ActionRecord] {
        &self.records
    }

    /// Takes the recorded actions out, leaving none.
    pub fn take(&mut self) -> Vec<ActionRecord> {
        std::mem::take(&mut self.records)
    }
}

impl Executor for RecordingExecutor {
    fn execute(&mut self, record: &ActionRecord) -> Outcome {
        self.records.push(record.clone());
        Outcome::skipped(format!("dry run: would {}", describe(&record.action)))
    }
}
