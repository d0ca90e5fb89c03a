//! Budget windows: how many actions of a kind went through in the last `window`, as a sliding
//! log of their times, used by the agent (per host and action) and the server (fleet blocks
//! per org). Pure: the time is an argument, so tests run it on a fake clock.
//!
//! A window admits an action when fewer than `max` admitted actions lie within the `window`
//! before `now`; the log never holds more than `max` times (at most
//! [`MAX_BUDGET`](crate::policy::MAX_BUDGET)), so its memory is capped by the policy.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::action::Action;
use crate::policy::{Budgets, Limit, ResponseAction};

/// The budget `action` counts against on a host, if any: `kill_process`, `quarantine_file`,
/// `isolate_host` and `block_ip` (either scope).
///
/// ```
/// use policy_engine::budget::budgeted;
/// use policy_engine::policy::ResponseAction;
/// use policy_engine::Action;
/// let kill = Action::KillProcess { pid: 42, process: None };
/// assert_eq!(budgeted(&kill), Some(ResponseAction::KillProcess));
/// assert_eq!(budgeted(&Action::IsolateHost { host: None }), Some(ResponseAction::IsolateHost));
/// assert_eq!(budgeted(&Action::ApprovalRequest { request: Box::new(kill) }), None);
/// ```
pub fn budgeted(action: &Action) -> Option<ResponseAction> {
    match action {
        Action::KillProcess { .. } => Some(ResponseAction::KillProcess),
        Action::QuarantineFile { .. } => Some(ResponseAction::QuarantineFile),
        Action::IsolateHost { .. } => Some(ResponseAction::IsolateHost),
        Action::BlockIp { .. } => Some(ResponseAction::BlockIp),
        Action::Alert { .. } | Action::ApprovalRequest { .. } | Action::Custom { .. } => None,
    }
}

/// The times of the actions admitted within the window, oldest first.
///
/// ```
/// use std::time::{Duration, Instant};
/// use policy_engine::budget::SlidingCount;
/// let start = Instant::now();
/// let minute = Duration::from_secs(60);
/// let mut window = SlidingCount::default();
/// assert!(window.admit(2, minute, start));
/// assert!(window.admit(2, minute, start + Duration::from_secs(10)));
/// assert!(!window.admit(2, minute, start + Duration::from_secs(59)));
/// // The first one leaves the window after a minute.
/// assert!(window.admit(2, minute, start + Duration::from_secs(60)));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlidingCount {
    admitted: VecDeque<Instant>,
}

impl SlidingCount {
    /// Admits one action at `now` if fewer than `max` were admitted within `window` before;
    /// records it when admitted. A `now` earlier than one already seen counts as the latest
    /// seen (the window never runs backwards).
    pub fn admit(&mut self, max: u32, window: Duration, now: Instant) -> bool {
        let now = self.admitted.back().map_or(now, |last| now.max(*last));
        self.expire(window, now);
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        if self.admitted.len() >= max {
            // A lowered `max` (a new policy) leaves more than `max` in the log: trim the oldest.
            while self.admitted.len() > max {
                self.admitted.pop_front();
            }
            return false;
        }
        self.admitted.push_back(now);
        true
    }

    /// Actions admitted within `window` before `now`.
    pub fn count(&mut self, window: Duration, now: Instant) -> usize {
        self.expire(window, now);
        self.admitted.len()
    }

    fn expire(&mut self, window: Duration, now: Instant) {
        while let Some(oldest) = self.admitted.front() {
            if now.saturating_duration_since(*oldest) >= window {
                self.admitted.pop_front();
            } else {
                break;
            }
        }
    }
}

/// What becomes of one action under its budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Within the budget (or not a budgeted action): carry it out.
    Within,
    /// Beyond the budget: the budget it went past (its `on_exceed` says what to do instead).
    Exceeded {
        /// The budget in force.
        limit: Limit,
        /// The action's name.
        action: ResponseAction,
    },
}

impl Verdict {
    /// Why the action went past its budget, for reports and logs:
    /// ``budget of `kill_process` exceeded (3 per 1m)``.
    pub fn reason(&self) -> Option<String> {
        match self {
            Self::Within => None,
            Self::Exceeded { limit, action, .. } => Some(format!(
                "budget of `{action}` exceeded ({})",
                limit.describe()
            )),
        }
    }
}

/// One host's budget windows, one per budgeted action.
///
/// ```
/// use std::time::{Duration, Instant};
/// use policy_engine::budget::{BudgetLedger, Verdict};
/// use policy_engine::policy::{Budget, Budgets, OnExceed, ResponseAction};
/// let budgets = Budgets {
///     kill_process: Some(Budget { max: 1, window: "1m".parse().unwrap(), on_exceed: None }),
///     ..Budgets::default()
/// };
/// let mut ledger = BudgetLedger::default();
/// let now = Instant::now();
/// assert_eq!(ledger.admit(ResponseAction::KillProcess, &budgets, now), Verdict::Within);
/// let second = ledger.admit(ResponseAction::KillProcess, &budgets, now);
/// assert_eq!(second.reason().unwrap(), "budget of `kill_process` exceeded (1 per 1m)");
/// assert!(matches!(second, Verdict::Exceeded { limit, .. } if limit.on_exceed == OnExceed::Approval));
/// ```
#[derive(Debug, Clone, Default)]
pub struct BudgetLedger {
    windows: [SlidingCount; 4],
}

impl BudgetLedger {
    /// Admits one `action` at `now` under `budgets` (an admitted action counts; one beyond
    /// the budget does not).
    pub fn admit(&mut self, action: ResponseAction, budgets: &Budgets, now: Instant) -> Verdict {
        let limit = budgets.limit(action);
        let index = ResponseAction::ALL
            .iter()
            .position(|a| *a == action)
            .unwrap_or_default();
        let Some(window) = self.windows.get_mut(index) else {
            return Verdict::Within;
        };
        if window.admit(limit.max, limit.window, now) {
            Verdict::Within
        } else {
            Verdict::Exceeded { limit, action }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Budget, OnExceed};

    /// A fake clock: a fixed start and an offset the test advances.
    struct FakeClock {
        start: Instant,
        offset: Duration,
    }

    impl FakeClock {
        fn new() -> Self {
            Self {
                start: Instant::now(),
                offset: Duration::ZERO,
            }
        }

        fn now(&self) -> Instant {
            self.start + self.offset
        }

        fn advance(&mut self, by: Duration) {
            self.offset += by;
        }
    }

    fn budgets(max: u32, window: &str, on_exceed: Option<OnExceed>) -> Budgets {
        Budgets {
            kill_process: Some(Budget {
                max,
                window: window.parse().unwrap(),
                on_exceed,
            }),
            ..Budgets::default()
        }
    }

    #[test]
    fn the_fourth_kill_in_a_window_of_three_is_exceeded_and_the_window_slides() {
        let mut clock = FakeClock::new();
        let budgets = budgets(3, "1m", None);
        let mut ledger = BudgetLedger::default();
        let kill = ResponseAction::KillProcess;
        for _ in 0..3 {
            assert_eq!(ledger.admit(kill, &budgets, clock.now()), Verdict::Within);
            clock.advance(Duration::from_secs(10));
        }
        // t = 30 s: three kills at 0, 10, 20 s.
        let fourth = ledger.admit(kill, &budgets, clock.now());
        assert_eq!(
            fourth,
            Verdict::Exceeded {
                limit: Limit {
                    max: 3,
                    window: Duration::from_secs(60),
                    on_exceed: OnExceed::Approval
                },
                action: kill
            }
        );
        assert_eq!(
            fourth.reason().unwrap(),
            "budget of `kill_process` exceeded (3 per 1m)"
        );
        // A refused action does not count: at 60 s the first kill (0 s) has left the window.
        clock.advance(Duration::from_secs(29));
        assert_ne!(ledger.admit(kill, &budgets, clock.now()), Verdict::Within);
        clock.advance(Duration::from_secs(1));
        assert_eq!(ledger.admit(kill, &budgets, clock.now()), Verdict::Within);
        assert_ne!(ledger.admit(kill, &budgets, clock.now()), Verdict::Within);
        // Other actions have their own windows.
        assert_eq!(
            ledger.admit(ResponseAction::QuarantineFile, &budgets, clock.now()),
            Verdict::Within
        );
    }

    #[test]
    fn drop_mode_and_a_zero_budget() {
        let clock = FakeClock::new();
        let mut ledger = BudgetLedger::default();
        let zero = budgets(0, "1h", Some(OnExceed::Drop));
        let verdict = ledger.admit(ResponseAction::KillProcess, &zero, clock.now());
        assert!(
            matches!(verdict, Verdict::Exceeded { limit, .. } if limit.on_exceed == OnExceed::Drop)
        );
        assert_eq!(
            verdict.reason().unwrap(),
            "budget of `kill_process` exceeded (0 per 1h)"
        );
    }

    #[test]
    fn defaults_apply_to_what_the_policy_leaves_out() {
        let mut clock = FakeClock::new();
        let mut ledger = BudgetLedger::default();
        let none = Budgets::default();
        for _ in 0..2 {
            assert_eq!(
                ledger.admit(ResponseAction::IsolateHost, &none, clock.now()),
                Verdict::Within
            );
        }
        let third = ledger.admit(ResponseAction::IsolateHost, &none, clock.now());
        assert_eq!(
            third.reason().unwrap(),
            "budget of `isolate_host` exceeded (2 per 1h)"
        );
        clock.advance(Duration::from_secs(3600));
        assert_eq!(
            ledger.admit(ResponseAction::IsolateHost, &none, clock.now()),
            Verdict::Within
        );
    }

    #[test]
    fn a_lowered_max_trims_the_log_and_time_never_runs_backwards() {
        let mut clock = FakeClock::new();
        let mut window = SlidingCount::default();
        let minute = Duration::from_secs(60);
        clock.advance(Duration::from_secs(100));
        for _ in 0..5 {
            assert!(window.admit(5, minute, clock.now()));
        }
        assert!(!window.admit(2, minute, clock.now()));
        assert_eq!(window.count(minute, clock.now()), 2);
        // An earlier `now` counts as the latest seen: nothing expires, nothing is admitted.
        assert!(!window.admit(2, minute, clock.start));
        assert_eq!(window.count(minute, clock.now()), 2);
    }

    /// The sliding log against a naive model: admitted times kept forever, counted by scan.
    #[test]
    fn the_sliding_count_agrees_with_a_naive_model() {
        let mut clock = FakeClock::new();
        let mut window = SlidingCount::default();
        let mut model: Vec<Instant> = Vec::new();
        let length = Duration::from_secs(7);
        let max = 4;
        // A fixed pseudo-random walk of steps from 0 to 4 s.
        let mut seed: u32 = 12345;
        for _ in 0..2000 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            clock.advance(Duration::from_millis(u64::from(seed >> 16) % 4000));
            let now = clock.now();
            let live = model
                .iter()
                .filter(|t| now.saturating_duration_since(**t) < length)
                .count();
            let expected = live < max as usize;
            assert_eq!(window.admit(max, length, now), expected);
            if expected {
                model.push(now);
            }
        }
    }
}
