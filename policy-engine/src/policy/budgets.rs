//! Action budgets: how many `kill_process`, `quarantine_file`, `isolate_host` and `block_ip`
//! actions one host may carry out per window, what happens beyond (an approval request or a
//! drop), and how many new fleet blocks the server pushes per org and window; with the safe
//! defaults that apply to whatever a policy leaves out.
//!
//! ```json
//! "budgets": {
//!   "onExceed": "approval",
//!   "kill_process": {"max": 3, "window": "1m"},
//!   "block_ip": {"max": 500, "window": "1m", "onExceed": "drop"},
//!   "fleet_block": {"max": 50, "window": "1h"}
//! }
//! ```

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{PolicyDuration, ResponseAction};

/// Largest `max` of a budget (also the most timestamps a window keeps).
pub const MAX_BUDGET: u32 = 10_000;

/// What happens to an action beyond its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnExceed {
    /// It becomes an `approval_request`: executed only once an operator approves it.
    Approval,
    /// It is not executed; it is reported (outcome `refused`) and counted.
    Drop,
}

impl OnExceed {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approval => "approval",
            Self::Drop => "drop",
        }
    }
}

impl fmt::Display for OnExceed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The budget of one action on one host, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Most actions per window, 0 to [`MAX_BUDGET`] (0: every one goes past the budget).
    pub max: u32,
    /// The sliding window, finite.
    pub window: PolicyDuration,
    /// What happens beyond it; `None` takes the budgets' `onExceed`.
    pub on_exceed: Option<OnExceed>,
}

/// How many new fleet blocks the server pushes for one org per window, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetBudget {
    /// Most new fleet blocks per window, 0 to [`MAX_BUDGET`].
    pub max: u32,
    /// The sliding window, finite.
    pub window: PolicyDuration,
}

/// The `budgets` of a policy as written; every part left out takes its default
/// ([`Budgets::limit`], [`Budgets::fleet_limit`]).
///
/// ```
/// use std::time::Duration;
/// use policy_engine::policy::{OnExceed, ResponseAction};
/// use policy_engine::Policy;
/// let policy = Policy::from_json(br#"{"name": "p", "rules": [{"type": "custom",
///     "config": {"condition": "true", "action": "kill_process"}}],
///     "budgets": {"onExceed": "drop", "kill_process": {"max": 3, "window": "1m"}}}"#).unwrap();
/// let kill = policy.budgets.limit(ResponseAction::KillProcess);
/// assert_eq!((kill.max, kill.window, kill.on_exceed), (3, Duration::from_secs(60), OnExceed::Drop));
/// let isolate = policy.budgets.limit(ResponseAction::IsolateHost);
/// assert_eq!((isolate.max, isolate.on_exceed), (2, OnExceed::Drop));
/// assert_eq!(policy.budgets.fleet_limit().max, 100);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Budgets {
    /// What happens beyond a budget that names nothing (default `approval`).
    pub on_exceed: Option<OnExceed>,
    /// `kill_process`
    pub kill_process: Option<Budget>,
    /// `quarantine_file`
    pub quarantine_file: Option<Budget>,
    /// `isolate_host`
    pub isolate_host: Option<Budget>,
    /// `block_ip`, host and fleet scope alike (what this host executes).
    pub block_ip: Option<Budget>,
    /// New fleet blocks of the org, applied by the server.
    pub fleet_block: Option<FleetBudget>,
}

/// A budget in force: explicit or default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Most actions per window.
    pub max: u32,
    /// The sliding window.
    pub window: Duration,
    /// What happens beyond.
    pub on_exceed: OnExceed,
}

impl Limit {
    /// `3 per 1m`, for messages.
    pub fn describe(&self) -> String {
        format!("{} per {}", self.max, describe_window(self.window))
    }
}

/// The default budget of each action on one host: (max, window in seconds).
pub const DEFAULT_BUDGETS: [(ResponseAction, u32, u64); 4] = [
    (ResponseAction::KillProcess, 20, 60),
    (ResponseAction::QuarantineFile, 20, 60),
    (ResponseAction::IsolateHost, 2, 3600),
    (ResponseAction::BlockIp, 1000, 60),
];

/// The default fleet-block budget of an org: (max, window in seconds).
pub const DEFAULT_FLEET_BUDGET: (u32, u64) = (100, 3600);

/// The default of `onExceed`.
pub const DEFAULT_ON_EXCEED: OnExceed = OnExceed::Approval;

impl Budgets {
    /// The budget of `action` on one host: the policy's, else the default of
    /// [`DEFAULT_BUDGETS`]; `onExceed` from the budget, the budgets, or `approval`.
    pub fn limit(&self, action: ResponseAction) -> Limit {
        let written = match action {
            ResponseAction::KillProcess => self.kill_process,
            ResponseAction::QuarantineFile => self.quarantine_file,
            ResponseAction::IsolateHost => self.isolate_host,
            ResponseAction::BlockIp => self.block_ip,
        };
        let on_exceed = written
            .and_then(|b| b.on_exceed)
            .or(self.on_exceed)
            .unwrap_or(DEFAULT_ON_EXCEED);
        match written.and_then(|b| b.window.as_duration().map(|w| (b.max, w))) {
            Some((max, window)) => Limit {
                max,
                window,
                on_exceed,
            },
            None => {
                let (max, secs) = DEFAULT_BUDGETS
                    .iter()
                    .find(|(a, _, _)| *a == action)
                    .map_or((0, 60), |(_, max, secs)| (*max, *secs));
                Limit {
                    max,
                    window: Duration::from_secs(secs),
                    on_exceed,
                }
            }
        }
    }

    /// The org's fleet-block budget (the server refuses to push new fleet blocks beyond it).
    pub fn fleet_limit(&self) -> Limit {
        let (max, window) = self
            .fleet_block
            .and_then(|b| b.window.as_duration().map(|w| (b.max, w)))
            .unwrap_or((
                DEFAULT_FLEET_BUDGET.0,
                Duration::from_secs(DEFAULT_FLEET_BUDGET.1),
            ));
        Limit {
            max,
            window,
            on_exceed: OnExceed::Drop,
        }
    }

    /// Whether the policy wrote nothing (then `budgets` is left out of its document).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A window as a policy would write it: `90s`, `1m`, `2h`, `1d`.
fn describe_window(window: Duration) -> String {
    let secs = window.as_secs();
    match secs {
        s if s > 0 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s > 0 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s > 0 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}
