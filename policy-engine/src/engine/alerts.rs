//! `alert_threshold` rules at scale: rules of one severity that have counted the same events
//! share one hourly counter, updated once per event, and a rule is only looked at when the
//! count is over its limit and its quiet hour may be over.

use std::collections::HashMap;
use std::time::Duration;

use super::rules::{CompiledRule, RuleState, Sink};
use super::window::{Buckets, SlidingCounter};
use crate::severity::Severity;

/// The `alert_threshold` window.
const HOUR: Duration = Duration::from_secs(3600);

/// The hourly counters of a policy's `alert_threshold` rules.
///
/// Invariant: the rules reading one counter (`AlertState::counter`) would each have counted
/// exactly the events it counted, so one counter stands for all of them: they have the same
/// severity and have been enabled, and so counted, since the same moment.
#[derive(Debug)]
pub(crate) struct AlertCounters {
    /// Buckets of the hour.
    geometry: Buckets,
    counters: Vec<Counter>,
    /// Counters with enabled rules, lowest severity first.
    active: Vec<usize>,
}

#[derive(Debug)]
struct Counter {
    severity: Severity,
    counter: SlidingCounter,
    /// The enabled rules reading it: `(countPerHour, rule index)`, ascending.
    rules: Vec<(u64, usize)>,
    /// Every rule of `rules[..scanned]` is quiet until at least `quiet_until`: nothing to do
    /// while the count reaches no further rule and the time is earlier.
    scanned: usize,
    quiet_until: i64,
}

impl Default for AlertCounters {
    fn default() -> Self {
        Self {
            geometry: Buckets::new(HOUR),
            counters: Vec::new(),
            active: Vec::new(),
        }
    }
}

/// Where a rule's counter comes from when counters are rebuilt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Origin {
    /// The old counter of an enabled rule carried over.
    Carried(usize),
    /// A fresh counter for new enabled rules of a severity.
    Fresh(Severity),
}

impl AlertCounters {
    /// Counters for `rules`: the carried rules' counters are taken from `old` (shared again by
    /// the rules that still count together), new enabled rules of a severity share a fresh
    /// one, and each disabled rule keeps a copy of its own, counting nothing.
    pub(crate) fn rebuild(old: &AlertCounters, rules: &mut [CompiledRule]) -> AlertCounters {
        let mut counters: Vec<Counter> = Vec::new();
        let mut by_origin: HashMap<Origin, usize> = HashMap::new();
        for (index, rule) in rules.iter_mut().enumerate() {
            let RuleState::Alert(state) = &mut rule.state else {
                continue;
            };
            let origin = match (rule.enabled, state.counter) {
                (false, _) => None,
                (true, Some(old)) => Some(Origin::Carried(old)),
                (true, None) => Some(Origin::Fresh(state.config.severity)),
            };
            let shared = origin.and_then(|origin| by_origin.get(&origin).copied());
            let id = shared.unwrap_or_else(|| {
                let counter = state
                    .counter
                    .and_then(|id| old.counters.get(id))
                    .map(|c| c.counter.clone())
                    .unwrap_or_default();
                counters.push(Counter {
                    severity: state.config.severity,
                    counter,
                    rules: Vec::new(),
                    scanned: 0,
                    quiet_until: i64::MIN,
                });
                let id = counters.len() - 1;
                if let Some(origin) = origin {
                    by_origin.insert(origin, id);
                }
                id
            });
            state.counter = Some(id);
            if rule.enabled
                && let Some(counter) = counters.get_mut(id)
            {
                counter.rules.push((state.config.count_per_hour, index));
            }
        }
        for counter in &mut counters {
            counter.rules.sort_unstable();
        }
        let mut active: Vec<usize> = (0..counters.len())
            .filter(|&id| counters.get(id).is_some_and(|c| !c.rules.is_empty()))
            .collect();
        active.sort_by_key(|&id| counters.get(id).map(|c| c.severity));
        AlertCounters {
            geometry: old.geometry,
            counters,
            active,
        }
    }

    /// Counts an event of `severity` at `now_ms` in every counter of that severity or lower and
    /// offers the count to the rules it may concern.
    pub(crate) fn process(
        &mut self,
        severity: Severity,
        now_ms: i64,
        rules: &mut [CompiledRule],
        sink: &mut Sink<'_>,
    ) {
        let geometry = self.geometry;
        let bucket = geometry.bucket(now_ms);
        for &id in &self.active {
            let Some(counter) = self.counters.get_mut(id) else {
                continue;
            };
            if counter.severity > severity {
                break;
            }
            let count = counter.counter.add(geometry, bucket);
            // The rules whose limit the count exceeds.
            let over = counter.rules.partition_point(|&(limit, _)| limit < count);
            if over == 0 || (over <= counter.scanned && now_ms < counter.quiet_until) {
                continue;
            }
            let mut quiet_until = i64::MAX;
            for &(_, index) in counter.rules.get(..over).unwrap_or_default() {
                let Some(RuleState::Alert(state)) = rules.get_mut(index).map(|r| &mut r.state)
                else {
                    continue;
                };
                sink.rule = index;
                state.offer(count, now_ms, sink);
                quiet_until = quiet_until.min(state.quiet_until);
            }
            counter.scanned = over;
            counter.quiet_until = quiet_until;
        }
    }
}
