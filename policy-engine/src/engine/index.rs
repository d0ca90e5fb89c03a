//! How an event finds its rules: the enabled rules of a policy indexed by what can make them
//! act, built whenever the policy changes.
//!
//! - `block_ip` and `auto_respond` rules by `trigger`, in one map from threat type to rules;
//! - `custom` rules by a guard of their compiled condition (`type == "x"`,
//!   `(type == "a" || type == "b") && ...`, `process == "y"` ...): a rule is evaluated for an
//!   event whose field has one of the guard's values, or that lacks a field the condition reads
//!   (evalexpr then reports the error, as it always did); any other event would make the
//!   condition false without error. Rules without a guard, or whose condition evalexpr
//!   evaluates, are evaluated for every event;
//! - `alert_threshold` rules through their shared counters (`alerts`);
//! - `block_ip` stores by when their next stale key or expired block can be swept.

use super::blocks::{BlockStores, Place};
use super::rules::{CompiledRule, RuleState};
use crate::condition::{EventView, Field, FieldSet, Guard};

type Map<V> = hashbrown::HashMap<Box<str>, V, foldhash::fast::RandomState>;

/// Fields whose guards index `custom` rules, the most selective first.
const GUARD_FIELDS: [Field; 7] = [
    Field::Type,
    Field::Process,
    Field::User,
    Field::Host,
    Field::FilePath,
    Field::Id,
    Field::Severity,
];

/// The enabled rules reached by events of one threat type.
#[derive(Debug, Default)]
pub(crate) struct TypeRules {
    /// `block_ip` rules with this trigger, by key store.
    pub(crate) block_ip: Vec<StoreRules>,
    /// `auto_respond` rules with this trigger.
    pub(crate) auto_respond: Vec<usize>,
    /// `custom` rules guarded by `type` having this value.
    pub(crate) custom: Vec<usize>,
}

/// The enabled `block_ip` rules of one trigger in one key store.
#[derive(Debug)]
pub(crate) struct StoreRules {
    pub(crate) store: usize,
    /// `(member, rule index, position in the sweep schedule)`.
    pub(crate) members: Vec<(usize, usize, usize)>,
}

/// The index of a policy's enabled rules; see the module documentation.
#[derive(Debug, Default)]
pub(crate) struct RuleIndex {
    by_type: Map<TypeRules>,
    /// `custom` rules guarded by another field than `type`.
    custom_by_field: Vec<(Field, Map<Vec<usize>>)>,
    /// Guarded `custom` rules by the fields their condition reads: evaluated for events that
    /// lack one of them.
    custom_by_fields_read: Vec<(FieldSet, Vec<usize>)>,
    /// `custom` rules evaluated for every event.
    custom_always: Vec<usize>,
    has_custom: bool,
}

impl RuleIndex {
    /// The index of `rules`, and the sweep schedule of their `block_ip` stores.
    pub(crate) fn build(
        rules: &[CompiledRule],
        blocks: &BlockStores,
    ) -> (RuleIndex, SweepSchedule) {
        let mut index = RuleIndex::default();
        let mut schedule = SweepSchedule::default();
        for (i, rule) in rules.iter().enumerate() {
            if !rule.enabled {
                continue;
            }
            match &rule.state {
                RuleState::BlockIp(state) => {
                    let Some(place) = state.place else {
                        continue;
                    };
                    let due = blocks
                        .get(place.store)
                        .map_or(i64::MAX, |store| store.next_sweep_ms(place.member));
                    let slot = schedule.add(place, due);
                    let stores = &mut index.type_rules(&state.config.trigger).block_ip;
                    let member = (place.member, i, slot);
                    match stores.iter_mut().find(|s| s.store == place.store) {
                        Some(store) => store.members.push(member),
                        None => stores.push(StoreRules {
                            store: place.store,
                            members: vec![member],
                        }),
                    }
                }
                RuleState::AutoRespond(config) => {
                    index.type_rules(&config.trigger).auto_respond.push(i);
                }
                RuleState::Alert(_) => {}
                RuleState::Custom(state) => {
                    index.has_custom = true;
                    let placed = state.evaluator.program().and_then(|program| {
                        let guard = best_guard(program.guards())?;
                        Some((guard, program.required()))
                    });
                    match placed {
                        Some((guard, read)) => index.add_guarded(i, guard, read),
                        None => index.custom_always.push(i),
                    }
                }
            }
        }
        (index, schedule)
    }

    /// The rules reached by events of type `threat_type`.
    pub(crate) fn by_type(&self, threat_type: &str) -> Option<&TypeRules> {
        self.by_type.get(threat_type)
    }

    /// Whether the policy has enabled `custom` rules.
    pub(crate) fn has_custom(&self) -> bool {
        self.has_custom
    }

    /// Puts into `out` the `custom` rules to evaluate for `view` (beyond those found through
    /// its type), each once, in no particular order.
    pub(crate) fn custom_candidates(
        &self,
        view: &EventView<'_>,
        by_type: Option<&TypeRules>,
        out: &mut Vec<usize>,
    ) {
        out.clear();
        if let Some(rules) = by_type {
            out.extend_from_slice(&rules.custom);
        }
        let present = view.present();
        for (field, map) in &self.custom_by_field {
            if present.contains(*field)
                && let Some(rules) = map.get(view.text(*field))
            {
                out.extend_from_slice(rules);
            }
        }
        let missing = present.complement();
        let mut duplicates = false;
        for (read, rules) in &self.custom_by_fields_read {
            if read.intersects(missing) {
                out.extend_from_slice(rules);
                duplicates = true;
            }
        }
        if duplicates {
            out.sort_unstable();
            out.dedup();
        }
        out.extend_from_slice(&self.custom_always);
    }

    fn type_rules(&mut self, threat_type: &str) -> &mut TypeRules {
        self.by_type.entry(threat_type.into()).or_default()
    }

    fn add_guarded(&mut self, rule: usize, guard: Guard, read: FieldSet) {
        if guard.field == Field::Type {
            for value in &guard.values {
                self.type_rules(value).custom.push(rule);
            }
        } else {
            let position = match self
                .custom_by_field
                .iter()
                .position(|(field, _)| *field == guard.field)
            {
                Some(position) => position,
                None => {
                    self.custom_by_field.push((guard.field, Map::default()));
                    self.custom_by_field.len() - 1
                }
            };
            if let Some((_, map)) = self.custom_by_field.get_mut(position) {
                for value in guard.values {
                    map.entry(value).or_default().push(rule);
                }
            }
        }
        match self
            .custom_by_fields_read
            .iter_mut()
            .find(|(fields, _)| *fields == read)
        {
            Some((_, rules)) => rules.push(rule),
            None => self.custom_by_fields_read.push((read, vec![rule])),
        }
    }
}

/// The guard on the most selective field, fewest values first.
fn best_guard(guards: Vec<Guard>) -> Option<Guard> {
    guards
        .into_iter()
        .filter_map(|guard| {
            let rank = GUARD_FIELDS.iter().position(|f| *f == guard.field)?;
            Some((rank, guard.values.len(), guard))
        })
        .min_by_key(|(rank, values, _)| (*rank, *values))
        .map(|(_, _, guard)| guard)
}

/// When each enabled `block_ip` rule's store next has a key to sweep.
///
/// The linear engine swept every store on every event; a sweep before its due time changes
/// nothing, so only due stores are swept. `earliest` is at most the earliest due time (it may
/// lag behind when a store's due time moves later), so nothing due is ever skipped.
#[derive(Debug)]
pub(crate) struct SweepSchedule {
    /// `(where the rule's keys are, due time in ms)`.
    pub(crate) stores: Vec<(Place, i64)>,
    pub(crate) earliest: i64,
}

impl Default for SweepSchedule {
    fn default() -> Self {
        Self {
            stores: Vec::new(),
            earliest: i64::MAX,
        }
    }
}

impl SweepSchedule {
    fn add(&mut self, place: Place, due: i64) -> usize {
        self.stores.push((place, due));
        self.earliest = self.earliest.min(due);
        self.stores.len() - 1
    }

    /// Records the new due time of the store at `slot`.
    pub(crate) fn set(&mut self, slot: usize, due: i64) {
        if let Some((_, old)) = self.stores.get_mut(slot) {
            *old = due;
        }
        self.earliest = self.earliest.min(due);
    }
}
