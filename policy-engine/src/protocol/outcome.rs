//! What came of executing an action: done, skipped with a reason, or failed with an error
//! (`{"outcome":"done","detail":...}`), and the outcome names a report carries.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The result of executing an action (`executor::Executor::execute`, feature `executor`).
///
/// Refusals (an allowlisted address, PID 1, a path under `/proc`) are `Skipped` with the reason,
/// never silently dropped; `Failed` means the host could not do what was asked.
///
/// ```
/// use policy_engine::protocol::Outcome;
/// let outcome = Outcome::Done { detail: "blocked `203.0.113.7` for 24h".into() };
/// assert_eq!(outcome.to_string(), "done: blocked `203.0.113.7` for 24h");
/// assert_eq!(
///     serde_json::to_string(&outcome).unwrap(),
///     r#"{"outcome":"done","detail":"blocked `203.0.113.7` for 24h"}"#
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The action took effect (or its effect already held).
    Done {
        /// What was done.
        detail: String,
    },
    /// The action was deliberately not carried out.
    Skipped {
        /// Why not.
        reason: String,
    },
    /// The action was attempted and failed.
    Failed {
        /// What went wrong.
        error: String,
    },
}

impl Outcome {
    /// A `Done` outcome.
    pub fn done(detail: impl Into<String>) -> Self {
        Self::Done {
            detail: detail.into(),
        }
    }

    /// A `Skipped` outcome.
    pub fn skipped(reason: impl Into<String>) -> Self {
        Self::Skipped {
            reason: reason.into(),
        }
    }

    /// A `Failed` outcome.
    pub fn failed(error: impl Into<String>) -> Self {
        Self::Failed {
            error: error.into(),
        }
    }

    /// Whether the action took effect.
    pub fn is_done(&self) -> bool {
        matches!(self, Self::Done { .. })
    }

    /// Whether the action was skipped.
    pub fn is_skipped(&self) -> bool {
        matches!(self, Self::Skipped { .. })
    }

    /// Whether the action failed.
    pub fn is_failed(&self) -> bool {
        matches!(self, Self::Failed { .. })
    }

    /// The detail, reason or error text.
    pub fn message(&self) -> &str {
        match self {
            Self::Done { detail } => detail,
            Self::Skipped { reason } => reason,
            Self::Failed { error } => error,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            Self::Done { .. } => "done",
            Self::Skipped { .. } => "skipped",
            Self::Failed { .. } => "failed",
        };
        write!(f, "{kind}: {}", self.message())
    }
}
