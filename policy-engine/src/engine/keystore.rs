//! Per-source-IP state of `block_ip` rules with a hard key cap per rule. The rules of one
//! trigger share a store: one hash lookup per event finds a record holding the address and,
//! side by side, each rule's state for it (its list links, its window or block expiry).
//!
//! Each rule ("member") keeps its own two intrusive lists (counting keys by last event, blocked
//! keys by block time), key count, cap and evictions, exactly as if it had a store of its own;
//! sharing only saves lookups and the repeated address. A record lives while any member tracks
//! its address.

use std::hash::BuildHasher;
use std::net::IpAddr;

use hashbrown::HashTable;

use super::window::Buckets;

mod counting;
mod record;
mod spill;

use record::{Ends, List, Sub};
use spill::Rings;

/// End of a list.
const NIL: u32 = u32::MAX;
/// `prev` of a member that does not track the record's address.
const ABSENT: u32 = u32::MAX - 1;
/// `base` of a blocked key (its expiry is in the two slot words).
const BLOCKED: u32 = u32::MAX;
/// `base` bit of a key whose window lives in a ring (`spill`): the rest of `base` is its
/// newest bucket, the first slot word its total and the second the ring's id. Relative buckets
/// stay below `REBASE_AFTER + 2 * MAX_SPAN`, far from this bit.
const SPILLED: u32 = 1 << 31;
/// Block expiry of a permanent block.
const NEVER: i64 = i64::MAX;
/// Words of the address at the start of a record.
const KEY_WORDS: usize = 4;
/// Words of one member's state: prev, next, base, two slots.
const SUB_WORDS: usize = 5;
/// Slots kept inside a record; a key with more distinct live buckets moves to a ring.
const INLINE_SLOTS: usize = 2;
/// Most members of one store: a record holds every member's state, so the memory a store may
/// need grows with the square of its members (each member can hold `cap` addresses the others
/// dropped).
pub(crate) const MAX_MEMBERS: usize = 8;
/// Largest cap of a member: every member of a full store at its cap still numbers its records
/// below [`ABSENT`].
const MAX_CAP: usize = (ABSENT - 1) as usize / MAX_MEMBERS;
/// Bucket distance from a member's epoch after which bases are rebased (they are 31 bits).
const REBASE_AFTER: i64 = 1 << 30;

/// A source address as a 128-bit number: IPv4 `a.b.c.d` is stored as `::ffff:a.b.c.d`, so both
/// notations land on the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct IpKey(u128);

impl From<IpAddr> for IpKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(u128::from(v4.to_ipv6_mapped())),
            IpAddr::V6(v6) => Self(u128::from(v6)),
        }
    }
}

impl IpKey {
    fn words(self) -> [u32; KEY_WORDS] {
        let v = self.0;
        [
            (v >> 96) as u32,
            (v >> 64) as u32,
            (v >> 32) as u32,
            v as u32,
        ]
    }
}

/// What happened to an event offered to [`KeyStore::hit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hit {
    /// Counted; the window now holds this many events.
    Counted(u64),
    /// The key is blocked; the event was ignored.
    Blocked,
}

/// One member's lists and totals.
#[derive(Debug, Clone)]
struct Member {
    geometry: Buckets,
    cap: usize,
    /// Bucket that relative bases count from; `None` until the first event.
    epoch: Option<i64>,
    len: usize,
    counting: Ends,
    blocked: Ends,
    evictions: u64,
}

impl Member {
    /// A member with nothing tracked yet, its cap clamped to [`MAX_CAP`] (record numbers stay
    /// clear of the list markers).
    fn new(geometry: Buckets, cap: usize) -> Self {
        Self {
            geometry,
            cap: cap.clamp(1, MAX_CAP),
            epoch: None,
            len: 0,
            counting: Ends::default(),
            blocked: Ends::default(),
            evictions: 0,
        }
    }
}

/// Counts events per address over each member's sliding window, remembers each member's
/// blocks, and holds at most `cap` addresses per member.
///
/// Invariants: every address a member tracks is in exactly one of its lists; `counting` is
/// ordered by last counted event (head = most recent), `blocked` by block time, which for a
/// rule's single duration is also expiry order (head = oldest); a record is in the index and
/// off the free list exactly while some member tracks it. Times passed in never decrease.
#[derive(Debug, Clone)]
pub(crate) struct KeyStore {
    members: Vec<Member>,
    /// Records of `stride` words: the address, then each member's [`Sub`].
    words: Vec<u32>,
    stride: usize,
    rings: Rings,
    index: HashTable<u32>,
    hasher: foldhash::fast::RandomState,
    /// Free records, linked through their first word.
    free: u32,
    records: usize,
}

impl KeyStore {
    /// An empty store for members with these windows and caps, at most [`MAX_MEMBERS`] of
    /// them. Caps are clamped to [`MAX_CAP`] (record numbers stay clear of the list markers).
    pub(crate) fn new(members: &[(Buckets, usize)]) -> Self {
        let members: Vec<Member> = members
            .iter()
            .take(MAX_MEMBERS)
            .map(|&(geometry, cap)| Member::new(geometry, cap))
            .collect();
        Self {
            stride: KEY_WORDS + SUB_WORDS * members.len(),
            members,
            words: Vec::new(),
            rings: Rings::default(),
            index: HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
            free: NIL,
            records: 0,
        }
    }

    /// Members of the store.
    pub(crate) fn members(&self) -> usize {
        self.members.len()
    }

    /// Addresses `member` tracks now.
    pub(crate) fn len(&self, member: usize) -> usize {
        self.members.get(member).map_or(0, |m| m.len)
    }

    /// Addresses evicted at `member`'s cap so far.
    pub(crate) fn evictions(&self, member: usize) -> u64 {
        self.members.get(member).map_or(0, |m| m.evictions)
    }

    /// The record of `key`, if some member tracks it.
    pub(crate) fn find(&self, key: IpKey) -> Option<u32> {
        let words = key.words();
        self.index
            .find(self.hasher.hash_one(key.0), |&r| self.key_of(r) == words)
            .copied()
    }

    /// Loads the window rings of `members` for `record` ahead of their hits, so that their
    /// cache misses overlap instead of following one another.
    pub(crate) fn prefetch(&self, record: u32, members: impl Iterator<Item = usize>) {
        let mut sum = 0u32;
        for member in members {
            if let Some(ring) = self.sub(record, member).ring() {
                sum = sum.wrapping_add(self.rings.first(ring));
            }
        }
        std::hint::black_box(sum);
    }

    /// Drops up to `budget` of `member`'s addresses whose window is empty or whose block has
    /// expired at `now_ms`.
    pub(crate) fn sweep(&mut self, member: usize, now_ms: i64, budget: usize) {
        let Some(m) = self.members.get(member) else {
            return;
        };
        let (geometry, epoch) = (m.geometry, m.epoch.unwrap_or_default());
        let now_bucket = geometry.bucket(now_ms);
        for _ in 0..budget {
            let Some(m) = self.members.get(member) else {
                return;
            };
            let (tail, head) = (m.counting.tail, m.blocked.head);
            if tail != NIL && !self.has_live_events(tail, member, geometry, epoch, now_bucket) {
                self.remove(tail, member);
                continue;
            }
            if head != NIL && self.sub(head, member).expiry() <= now_ms {
                self.remove(head, member);
                continue;
            }
            break;
        }
    }

    /// The earliest time at which [`KeyStore::sweep`] can drop one of `member`'s addresses:
    /// when the last bucket of its least recently counted address leaves the window, or when
    /// its oldest block expires (`i64::MAX`: no address). Until then a sweep changes nothing.
    pub(crate) fn next_sweep_ms(&self, member: usize) -> i64 {
        let Some(m) = self.members.get(member) else {
            return i64::MAX;
        };
        let counting = if m.counting.tail == NIL {
            i64::MAX
        } else {
            let sub = self.sub(m.counting.tail, member);
            match self.newest_bucket(&sub, m.epoch.unwrap_or_default()) {
                Some(bucket) => m.geometry.end_ms(bucket),
                None => i64::MIN,
            }
        };
        let blocked = if m.blocked.head == NIL {
            i64::MAX
        } else {
            self.sub(m.blocked.head, member).expiry()
        };
        counting.min(blocked)
    }

    /// The addresses [`KeyStore::next_sweep_ms`] depends on: `member`'s least recently counted
    /// address and its oldest block. While neither changes nor is counted or blocked again, the
    /// time stays the same.
    pub(crate) fn sweep_ends(&self, member: usize) -> (u32, u32) {
        self.members
            .get(member)
            .map_or((NIL, NIL), |m| (m.counting.tail, m.blocked.head))
    }

    /// Offers one event of `key` at `now_ms` to `member`; `record` is the key's record if the
    /// caller already looked it up (`None`: look it up). Returns what happened and the record,
    /// for the next member.
    pub(crate) fn hit(
        &mut self,
        member: usize,
        key: IpKey,
        record: Option<u32>,
        now_ms: i64,
    ) -> (Hit, u32) {
        let Some(m) = self.members.get(member) else {
            return (Hit::Counted(0), NIL);
        };
        let now_bucket = m.geometry.bucket(now_ms);
        self.set_epoch(member, now_bucket);
        let record = record.or_else(|| self.find(key));
        let tracked = record.filter(|&r| !self.sub(r, member).is_absent());
        let record = match tracked {
            Some(r) => {
                let mut sub = self.sub(r, member);
                if sub.list() == List::Blocked {
                    if sub.expiry() > now_ms {
                        return (Hit::Blocked, r);
                    }
                    // The block expired: start counting afresh.
                    self.unlink(r, member);
                    sub = self.sub(r, member);
                    sub.base = self.relative(member, now_bucket);
                    sub.slots = [0; INLINE_SLOTS];
                    self.set_sub(r, member, sub);
                } else {
                    self.unlink(r, member);
                }
                self.push_front(r, member, List::Counting);
                r
            }
            None => self.insert(member, key, record, now_bucket),
        };
        (
            Hit::Counted(self.count_event(record, member, now_bucket)),
            record,
        )
    }

    /// Marks `member`'s state of `record` (just counted) as blocked until `until_ms` (`None`:
    /// forever) and clears its count.
    pub(crate) fn block(&mut self, member: usize, record: u32, until_ms: Option<i64>) {
        if self.sub(record, member).is_absent() {
            return;
        }
        self.unlink(record, member);
        let mut sub = self.sub(record, member);
        self.release_ring(&sub);
        sub.block_until(until_ms.unwrap_or(NEVER));
        self.set_sub(record, member, sub);
        self.push_back(record, member, List::Blocked);
    }

    /// Drops every address of `member` (a rule that left the policy) and returns its
    /// evictions, which it forgets.
    pub(crate) fn retire_member(&mut self, member: usize) -> u64 {
        while let Some(m) = self.members.get(member) {
            let victim = if m.counting.head != NIL {
                m.counting.head
            } else {
                m.blocked.head
            };
            if victim == NIL {
                break;
            }
            self.remove(victim, member);
        }
        self.members
            .get_mut(member)
            .map_or(0, |m| std::mem::take(&mut m.evictions))
    }

    /// Gives a retired member (see [`KeyStore::retire_member`]) to a new rule.
    pub(crate) fn reset_member(&mut self, member: usize, geometry: Buckets, cap: usize) {
        if let Some(m) = self.members.get_mut(member) {
            *m = Member::new(geometry, cap);
        }
    }

    /// Events counted for `key` by `member` in the window at `now_ms` (0 for unknown or
    /// blocked keys).
    #[cfg(test)]
    pub(crate) fn count(&self, member: usize, key: IpKey, now_ms: i64) -> u64 {
        use super::window::slot;
        let (Some(m), Some(record)) = (self.members.get(member), self.find(key)) else {
            return 0;
        };
        let sub = self.sub(record, member);
        if sub.is_absent() || sub.list() == List::Blocked {
            return 0;
        }
        let base = m.epoch.unwrap_or_default() + i64::from(sub.base);
        let now_bucket = m.geometry.bucket(now_ms);
        let counts: Vec<(i64, u32)> = match sub.ring() {
            Some(ring) => {
                let last = m.epoch.unwrap_or_default() + i64::from(sub.base & !SPILLED);
                self.rings.live(ring, m.geometry.span(), last)
            }
            None => sub
                .slots
                .iter()
                .take(sub.inline_len())
                .map(|&s| (base + slot::offset(s), slot::count(s)))
                .collect(),
        };
        counts
            .iter()
            .filter(|&&(bucket, _)| m.geometry.live(bucket, now_bucket))
            .map(|&(_, count)| u64::from(count))
            .sum()
    }

    /// Records held now (addresses tracked by at least one member).
    #[cfg(test)]
    pub(crate) fn records(&self) -> usize {
        self.records
    }

    fn key_of(&self, record: u32) -> [u32; KEY_WORDS] {
        let start = record as usize * self.stride;
        let mut key = [0; KEY_WORDS];
        if let Some(words) = self.words.get(start..start + KEY_WORDS) {
            key.copy_from_slice(words);
        }
        key
    }

    fn hash_of(&self, record: u32) -> u64 {
        let [a, b, c, d] = self.key_of(record);
        let key = (u128::from(a) << 96) | (u128::from(b) << 64) | (u128::from(c) << 32);
        self.hasher.hash_one(key | u128::from(d))
    }

    /// Starts tracking `key` for `member`, in `record` if some other member tracks it.
    fn insert(&mut self, member: usize, key: IpKey, record: Option<u32>, now_bucket: i64) -> u32 {
        while let Some(m) = self.members.get(member)
            && m.len >= m.cap
        {
            if !self.evict_one(member) {
                break;
            }
        }
        // Evictions only free records that `member` tracks, so `record` (which it does not
        // track, and another member does) is still live.
        let record = match record {
            Some(r) => r,
            None => self.new_record(key),
        };
        let sub = Sub {
            prev: NIL,
            next: NIL,
            base: self.relative(member, now_bucket),
            slots: [0; INLINE_SLOTS],
        };
        self.set_sub(record, member, sub);
        if let Some(m) = self.members.get_mut(member) {
            m.len += 1;
        }
        self.push_front(record, member, List::Counting);
        record
    }

    fn new_record(&mut self, key: IpKey) -> u32 {
        let record = if self.free != NIL {
            let record = self.free;
            self.free = self.key_of(record)[0];
            record
        } else {
            if self.words.len() == self.words.capacity() {
                // Grow towards the most records the caps allow, never past it, so memory at
                // the cap is exact.
                let most: usize = self.members.iter().map(|m| m.cap).sum();
                let records = self.words.len() / self.stride.max(1);
                let room = most.saturating_sub(records).max(1);
                self.words
                    .reserve_exact(records.max(16).min(room) * self.stride);
            }
            let record = (self.words.len() / self.stride.max(1)) as u32;
            self.words.resize(self.words.len() + self.stride, 0);
            record
        };
        let start = record as usize * self.stride;
        if let Some(words) = self.words.get_mut(start..start + KEY_WORDS) {
            words.copy_from_slice(&key.words());
        }
        for member in 0..self.members.len() {
            self.set_sub(record, member, Sub::absent());
        }
        let hash = self.hasher.hash_one(key.0);
        let (words, stride, hasher) = (&self.words, self.stride, &self.hasher);
        self.index.insert_unique(hash, record, |&r| {
            let start = r as usize * stride;
            let mut k = [0u32; KEY_WORDS];
            if let Some(w) = words.get(start..start + KEY_WORDS) {
                k.copy_from_slice(w);
            }
            let [a, b, c, d] = k;
            let key = (u128::from(a) << 96) | (u128::from(b) << 64) | (u128::from(c) << 32);
            hasher.hash_one(key | u128::from(d))
        });
        self.records += 1;
        record
    }

    /// Evicts `member`'s least recently counted address, or its oldest block when none is
    /// counting. Returns whether it evicted one.
    fn evict_one(&mut self, member: usize) -> bool {
        let Some(m) = self.members.get(member) else {
            return false;
        };
        let victim = if m.counting.tail != NIL {
            m.counting.tail
        } else {
            m.blocked.head
        };
        if victim == NIL {
            return false;
        }
        self.remove(victim, member);
        if let Some(m) = self.members.get_mut(member) {
            m.evictions += 1;
        }
        true
    }

    /// Stops tracking `record` for `member`; frees the record when no member tracks it.
    fn remove(&mut self, record: u32, member: usize) {
        if self.sub(record, member).is_absent() {
            return;
        }
        self.unlink(record, member);
        self.release_ring(&self.sub(record, member));
        self.set_sub(record, member, Sub::absent());
        if let Some(m) = self.members.get_mut(member) {
            m.len -= 1;
        }
        if (0..self.members.len()).all(|other| self.sub(record, other).is_absent()) {
            let hash = self.hash_of(record);
            if let Ok(found) = self.index.find_entry(hash, |&r| r == record) {
                found.remove();
            }
            let start = record as usize * self.stride;
            if let Some(word) = self.words.get_mut(start) {
                *word = self.free;
            }
            self.free = record;
            self.records -= 1;
        }
    }
}

#[cfg(test)]
mod tests;
