//! `block_ip` rules at scale: the key stores they share. Rules of one trigger see the same
//! events, so they are members of one store (up to `keystore::MAX_MEMBERS` each): one lookup
//! per event finds every member's state for the address.
//!
//! Policy updates keep each carried rule's member (its state never moves); a dropped rule's
//! member is cleared and its slot reused by the next new rule of the same trigger; new rules
//! without a free slot start new stores.

use std::collections::HashMap;

use super::keystore::{KeyStore, MAX_MEMBERS};
use super::rules::{CompiledRule, RuleState};
use super::window::Buckets;

/// Where a `block_ip` rule's state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Place {
    pub(crate) store: usize,
    pub(crate) member: usize,
}

/// The key stores of a policy's `block_ip` rules.
#[derive(Debug, Default)]
pub(crate) struct BlockStores {
    stores: Vec<Shared>,
}

#[derive(Debug)]
struct Shared {
    trigger: Box<str>,
    store: KeyStore,
    /// Members whose rule left the policy: cleared, free for a new rule of the trigger.
    free: Vec<usize>,
}

impl BlockStores {
    /// Stores for `rules`: carried rules keep their place in `old` (given back), the members of
    /// `retired` places (rules that left the policy) are cleared, and rules without a place get
    /// one. Returns the evictions of the retired members.
    pub(crate) fn rebuild(
        mut old: BlockStores,
        retired: &[Place],
        rules: &mut [CompiledRule],
        cap: usize,
    ) -> (BlockStores, u64) {
        let mut evictions = 0;
        for place in retired {
            if let Some(shared) = old.stores.get_mut(place.store) {
                evictions += shared.store.retire_member(place.member);
                shared.free.push(place.member);
            }
        }
        // Keep the stores some rule still uses, renumbered.
        let mut used = vec![false; old.stores.len()];
        for place in rules.iter().filter_map(place_of) {
            if let Some(used) = used.get_mut(place.store) {
                *used = true;
            }
        }
        let mut renumber = HashMap::new();
        let mut stores = Vec::new();
        for (id, shared) in old.stores.into_iter().enumerate() {
            if used.get(id).copied().unwrap_or(false) {
                renumber.insert(id, stores.len());
                stores.push(shared);
            }
        }
        let mut fresh: Vec<usize> = Vec::new();
        for (index, rule) in rules.iter_mut().enumerate() {
            let RuleState::BlockIp(state) = &mut rule.state else {
                continue;
            };
            match state.place {
                Some(place) => {
                    state.place = renumber.get(&place.store).map(|&store| Place {
                        store,
                        member: place.member,
                    });
                }
                None => fresh.push(index),
            }
        }
        let mut blocks = BlockStores { stores };
        blocks.place_fresh(&fresh, rules, cap);
        (blocks, evictions)
    }

    /// The store at `id`.
    pub(crate) fn get(&self, id: usize) -> Option<&KeyStore> {
        self.stores.get(id).map(|s| &s.store)
    }

    /// The store at `id`, to change.
    pub(crate) fn get_mut(&mut self, id: usize) -> Option<&mut KeyStore> {
        self.stores.get_mut(id).map(|s| &mut s.store)
    }

    /// Keys tracked and evictions, over every member.
    pub(crate) fn totals(&self) -> (u64, u64) {
        let mut totals = (0u64, 0u64);
        for shared in &self.stores {
            for member in 0..shared.store.members() {
                totals.0 += shared.store.len(member) as u64;
                totals.1 += shared.store.evictions(member);
            }
        }
        totals
    }

    /// Gives `fresh` rules (all `block_ip`) places: free members of stores of their trigger
    /// first, then new stores of up to `MAX_MEMBERS` rules of one trigger.
    fn place_fresh(&mut self, fresh: &[usize], rules: &mut [CompiledRule], cap: usize) {
        let mut waiting: Vec<(Box<str>, Vec<usize>)> = Vec::new();
        for &index in fresh {
            let Some(RuleState::BlockIp(state)) = rules.get_mut(index).map(|r| &mut r.state) else {
                continue;
            };
            let geometry = Buckets::new(state.config.window());
            let reuse = self.stores.iter_mut().enumerate().find_map(|(id, shared)| {
                if *shared.trigger != *state.config.trigger {
                    return None;
                }
                let member = shared.free.pop()?;
                shared.store.reset_member(member, geometry, cap);
                Some(Place { store: id, member })
            });
            match reuse {
                Some(place) => state.place = Some(place),
                None => match waiting.iter_mut().find(|(trigger, rules)| {
                    **trigger == *state.config.trigger && rules.len() < MAX_MEMBERS
                }) {
                    Some((_, rules)) => rules.push(index),
                    None => waiting.push((state.config.trigger.as_str().into(), vec![index])),
                },
            }
        }
        for (trigger, members) in waiting {
            let id = self.stores.len();
            let mut layout = Vec::with_capacity(members.len());
            for (member, &index) in members.iter().enumerate() {
                if let Some(RuleState::BlockIp(state)) = rules.get_mut(index).map(|r| &mut r.state)
                {
                    layout.push((Buckets::new(state.config.window()), cap));
                    state.place = Some(Place { store: id, member });
                }
            }
            self.stores.push(Shared {
                trigger,
                store: KeyStore::new(&layout),
                free: Vec::new(),
            });
        }
    }
}

fn place_of(rule: &CompiledRule) -> Option<Place> {
    match &rule.state {
        RuleState::BlockIp(state) => state.place,
        _ => None,
    }
}
