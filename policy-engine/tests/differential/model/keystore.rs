//! Per-source-IP state of a `block_ip` rule with a hard key cap: a slab of 64-byte entries, an
//! index of slab positions, and two intrusive lists (counting keys by last event, blocked keys
//! by block time) for eviction and stale-key sweeping.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;

use hashbrown::HashTable;

use super::window::{self, Buckets, slot};

const NIL: u32 = u32::MAX;
/// Slots kept inside an entry; a key needing more distinct live buckets spills to the heap.
const INLINE_SLOTS: usize = 7;
/// Block expiry of a permanent block.
const NEVER: i64 = i64::MAX;

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

/// What happened to an event offered to [`KeyStore::hit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hit {
    /// Counted; the window now holds this many events.
    Counted(u64),
    /// The key is blocked; the event was ignored.
    Blocked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum List {
    Counting,
    Blocked,
}

/// One tracked key. 64 bytes: the key, list links, the window base bucket (or, while blocked,
/// the block expiry in milliseconds), seven packed slots and their length.
#[derive(Debug, Clone)]
struct Entry {
    key: u128,
    base: i64,
    prev: u32,
    next: u32,
    slots: [u32; INLINE_SLOTS],
    len: u8,
    flags: u8,
}

const FLAG_BLOCKED: u8 = 1;
const FLAG_SPILLED: u8 = 2;
const FLAG_FREE: u8 = 4;

impl Entry {
    fn list(&self) -> List {
        if self.flags & FLAG_BLOCKED != 0 {
            List::Blocked
        } else {
            List::Counting
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Ends {
    head: u32,
    tail: u32,
}

impl Default for Ends {
    fn default() -> Self {
        Self {
            head: NIL,
            tail: NIL,
        }
    }
}

/// Counts events per key over a sliding window, remembers blocks, and holds at most `cap` keys.
///
/// Invariants: every live entry is in exactly one list and in the index; `counting` is ordered
/// by last counted event (head = most recent); `blocked` by block time, which for a rule's single
/// duration is also expiry order (head = oldest).
#[derive(Debug, Clone)]
pub(crate) struct KeyStore {
    geometry: Buckets,
    cap: usize,
    entries: Vec<Entry>,
    spilled: HashMap<u32, Vec<u32>>,
    index: HashTable<u32>,
    hasher: foldhash::fast::RandomState,
    free: u32,
    len: usize,
    counting: Ends,
    blocked: Ends,
    evictions: u64,
}

impl KeyStore {
    /// An empty store for a window of `geometry`, holding at most `cap` keys (at least one).
    pub(crate) fn new(geometry: Buckets, cap: usize) -> Self {
        Self {
            geometry,
            cap: cap.clamp(1, NIL as usize - 1),
            entries: Vec::new(),
            spilled: HashMap::new(),
            index: HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
            free: NIL,
            len: 0,
            counting: Ends::default(),
            blocked: Ends::default(),
            evictions: 0,
        }
    }

    /// Keys tracked now.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Keys evicted at the cap so far.
    pub(crate) fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Drops up to `budget` keys whose window is empty or whose block has expired at `now_ms`.
    pub(crate) fn sweep(&mut self, now_ms: i64, budget: usize) {
        let now_bucket = self.geometry.bucket(now_ms);
        for _ in 0..budget {
            let tail = self.counting.tail;
            if let Some(entry) = self.entry(tail)
                && !self.has_live_events(tail, entry, now_bucket)
            {
                self.remove(tail);
                continue;
            }
            let head = self.blocked.head;
            if let Some(entry) = self.entry(head)
                && entry.base <= now_ms
            {
                self.remove(head);
                continue;
            }
            break;
        }
    }

    /// Offers one event of `key` at `now_ms`.
    pub(crate) fn hit(&mut self, key: IpKey, now_ms: i64) -> Hit {
        let now_bucket = self.geometry.bucket(now_ms);
        let hash = self.hasher.hash_one(key.0);
        let entries = &self.entries;
        let found = self
            .index
            .find(hash, |&i| {
                entries.get(i as usize).is_some_and(|e| e.key == key.0)
            })
            .copied();
        let idx = match found {
            Some(idx) => {
                let Some(entry) = self.entries.get(idx as usize) else {
                    return Hit::Counted(0);
                };
                if entry.list() == List::Blocked {
                    if entry.base > now_ms {
                        return Hit::Blocked;
                    }
                    // The block expired: start counting afresh.
                    self.unlink(idx);
                    if let Some(entry) = self.entries.get_mut(idx as usize) {
                        entry.flags &= !FLAG_BLOCKED;
                        entry.len = 0;
                        entry.base = now_bucket;
                    }
                    self.push_front(idx, List::Counting);
                } else {
                    self.unlink(idx);
                    self.push_front(idx, List::Counting);
                }
                idx
            }
            None => self.insert(key, hash, now_bucket),
        };
        Hit::Counted(self.count_event(idx, now_bucket))
    }

    /// Marks `key` (just counted) as blocked until `until_ms` (`None`: forever) and clears its
    /// count.
    pub(crate) fn block(&mut self, key: IpKey, until_ms: Option<i64>) {
        let hash = self.hasher.hash_one(key.0);
        let entries = &self.entries;
        let Some(idx) = self
            .index
            .find(hash, |&i| {
                entries.get(i as usize).is_some_and(|e| e.key == key.0)
            })
            .copied()
        else {
            return;
        };
        self.unlink(idx);
        self.spilled.remove(&idx);
        if let Some(entry) = self.entries.get_mut(idx as usize) {
            entry.flags = FLAG_BLOCKED;
            entry.len = 0;
            entry.base = until_ms.unwrap_or(NEVER);
        }
        self.push_back(idx, List::Blocked);
    }

    /// Events counted for `key` in the window at `now_ms` (0 for unknown or blocked keys).
    #[allow(dead_code)]
    pub(crate) fn count(&self, key: IpKey, now_ms: i64) -> u64 {
        let now_bucket = self.geometry.bucket(now_ms);
        let hash = self.hasher.hash_one(key.0);
        let entries = &self.entries;
        let Some(&idx) = self.index.find(hash, |&i| {
            entries.get(i as usize).is_some_and(|e| e.key == key.0)
        }) else {
            return 0;
        };
        let Some(entry) = self.entries.get(idx as usize) else {
            return 0;
        };
        if entry.list() == List::Blocked {
            return 0;
        }
        self.slots_of(idx, entry)
            .iter()
            .filter(|&&s| self.geometry.live(entry.base + slot::offset(s), now_bucket))
            .map(|&s| u64::from(slot::count(s)))
            .sum()
    }

    fn entry(&self, idx: u32) -> Option<&Entry> {
        self.entries.get(idx as usize)
    }

    fn slots_of<'a>(&'a self, idx: u32, entry: &'a Entry) -> &'a [u32] {
        if entry.flags & FLAG_SPILLED != 0 {
            self.spilled.get(&idx).map_or(&[], Vec::as_slice)
        } else {
            entry
                .slots
                .get(..usize::from(entry.len))
                .unwrap_or_default()
        }
    }

    fn has_live_events(&self, idx: u32, entry: &Entry, now_bucket: i64) -> bool {
        self.slots_of(idx, entry)
            .last()
            .is_some_and(|&s| self.geometry.live(entry.base + slot::offset(s), now_bucket))
    }

    fn count_event(&mut self, idx: u32, now_bucket: i64) -> u64 {
        let geometry = self.geometry;
        let Some(entry) = self.entries.get_mut(idx as usize) else {
            return 0;
        };
        if entry.flags & FLAG_SPILLED != 0 {
            let Some(slots) = self.spilled.get_mut(&idx) else {
                return 0;
            };
            let (len, total) = window::expire_slots(geometry, &mut entry.base, slots, now_bucket);
            slots.truncate(len);
            let offset = now_bucket - entry.base;
            match slots.last_mut() {
                Some(last) if slot::offset(*last) == offset => *last = slot::increment(*last),
                _ => slots.push(slot::pack(offset, 1)),
            }
            if let Some(inline) = entry.slots.get_mut(..slots.len()) {
                inline.copy_from_slice(slots);
                entry.len = slots.len() as u8;
                entry.flags &= !FLAG_SPILLED;
                self.spilled.remove(&idx);
            }
            return total + 1;
        }
        let len = usize::from(entry.len);
        let (len, total) = window::expire_slots(
            geometry,
            &mut entry.base,
            entry.slots.get_mut(..len).unwrap_or_default(),
            now_bucket,
        );
        let offset = now_bucket - entry.base;
        let last = len.checked_sub(1).and_then(|i| entry.slots.get_mut(i));
        match last {
            Some(last) if slot::offset(*last) == offset => {
                *last = slot::increment(*last);
                entry.len = len as u8;
            }
            _ => {
                if let Some(free) = entry.slots.get_mut(len) {
                    *free = slot::pack(offset, 1);
                    entry.len = (len + 1) as u8;
                } else {
                    let mut heap = Vec::with_capacity(INLINE_SLOTS * 2);
                    heap.extend_from_slice(&entry.slots);
                    heap.push(slot::pack(offset, 1));
                    entry.len = 0;
                    entry.flags |= FLAG_SPILLED;
                    self.spilled.insert(idx, heap);
                }
            }
        }
        total + 1
    }

    fn insert(&mut self, key: IpKey, hash: u64, now_bucket: i64) -> u32 {
        while self.len >= self.cap {
            self.evict_one();
        }
        let entry = Entry {
            key: key.0,
            base: now_bucket,
            prev: NIL,
            next: NIL,
            slots: [0; INLINE_SLOTS],
            len: 0,
            flags: 0,
        };
        let idx = if self.free != NIL {
            let idx = self.free;
            let next_free = self.entry(idx).map_or(NIL, |e| e.next);
            self.free = next_free;
            if let Some(slot) = self.entries.get_mut(idx as usize) {
                *slot = entry;
            }
            idx
        } else {
            if self.entries.len() == self.entries.capacity() {
                // Grow towards the cap, never past it, so memory at the cap is exact.
                let room = self.cap.saturating_sub(self.entries.len()).max(1);
                self.entries
                    .reserve_exact(self.entries.len().max(16).min(room));
            }
            self.entries.push(entry);
            (self.entries.len() - 1) as u32
        };
        let entries = &self.entries;
        let hasher = &self.hasher;
        self.index.insert_unique(hash, idx, |&i| {
            entries
                .get(i as usize)
                .map_or(0, |e| hasher.hash_one(e.key))
        });
        self.len += 1;
        self.push_front(idx, List::Counting);
        idx
    }

    fn evict_one(&mut self) {
        let victim = if self.counting.tail != NIL {
            self.counting.tail
        } else {
            self.blocked.head
        };
        if victim == NIL {
            return;
        }
        self.remove(victim);
        self.evictions += 1;
    }

    fn remove(&mut self, idx: u32) {
        let Some(key) = self.entry(idx).map(|e| e.key) else {
            return;
        };
        self.unlink(idx);
        let hash = self.hasher.hash_one(key);
        if let Ok(found) = self.index.find_entry(hash, |&i| i == idx) {
            found.remove();
        }
        self.spilled.remove(&idx);
        let free = self.free;
        if let Some(entry) = self.entries.get_mut(idx as usize) {
            entry.flags = FLAG_FREE;
            entry.len = 0;
            entry.prev = NIL;
            entry.next = free;
        }
        self.free = idx;
        self.len -= 1;
    }

    fn ends(&mut self, list: List) -> &mut Ends {
        match list {
            List::Counting => &mut self.counting,
            List::Blocked => &mut self.blocked,
        }
    }

    fn unlink(&mut self, idx: u32) {
        let Some((prev, next, list)) = self.entry(idx).map(|e| (e.prev, e.next, e.list())) else {
            return;
        };
        match self.entries.get_mut(prev as usize) {
            Some(p) => p.next = next,
            None => self.ends(list).head = next,
        }
        match self.entries.get_mut(next as usize) {
            Some(n) => n.prev = prev,
            None => self.ends(list).tail = prev,
        }
        if let Some(entry) = self.entries.get_mut(idx as usize) {
            entry.prev = NIL;
            entry.next = NIL;
        }
    }

    fn push_front(&mut self, idx: u32, list: List) {
        let head = self.ends(list).head;
        if let Some(entry) = self.entries.get_mut(idx as usize) {
            entry.prev = NIL;
            entry.next = head;
        }
        match self.entries.get_mut(head as usize) {
            Some(h) => h.prev = idx,
            None => self.ends(list).tail = idx,
        }
        self.ends(list).head = idx;
    }

    fn push_back(&mut self, idx: u32, list: List) {
        let tail = self.ends(list).tail;
        if let Some(entry) = self.entries.get_mut(idx as usize) {
            entry.prev = tail;
            entry.next = NIL;
        }
        match self.entries.get_mut(tail as usize) {
            Some(t) => t.next = idx,
            None => self.ends(list).head = idx,
        }
        self.ends(list).tail = idx;
    }
}
