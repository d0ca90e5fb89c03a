//! A key store's records: the address and, side by side, each member's [`Sub`] state, and
//! the member lists (counting keys, blocked keys) threaded through them.

use super::{ABSENT, BLOCKED, INLINE_SLOTS, KEY_WORDS, KeyStore, NIL, SPILLED, SUB_WORDS};

/// A member's two lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum List {
    Counting,
    Blocked,
}

/// Both ends of a list, as record numbers ([`NIL`] when empty).
#[derive(Debug, Clone, Copy)]
pub(super) struct Ends {
    pub(super) head: u32,
    pub(super) tail: u32,
}

impl Default for Ends {
    fn default() -> Self {
        Self {
            head: NIL,
            tail: NIL,
        }
    }
}

/// One member's state for one address.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sub {
    pub(super) prev: u32,
    pub(super) next: u32,
    /// Window base bucket, relative to the member's epoch; [`BLOCKED`] while blocked;
    /// [`SPILLED`] and the newest bucket while the window is in a ring.
    pub(super) base: u32,
    pub(super) slots: [u32; INLINE_SLOTS],
}

impl Sub {
    pub(super) fn absent() -> Self {
        Self {
            prev: ABSENT,
            next: NIL,
            base: 0,
            slots: [0; INLINE_SLOTS],
        }
    }

    pub(super) fn is_absent(&self) -> bool {
        self.prev == ABSENT
    }

    pub(super) fn list(&self) -> List {
        if self.base == BLOCKED {
            List::Blocked
        } else {
            List::Counting
        }
    }

    /// The ring of a spilled key.
    pub(super) fn ring(&self) -> Option<u32> {
        (self.base != BLOCKED && self.base & SPILLED != 0).then_some(self.slots[1])
    }

    pub(super) fn expiry(&self) -> i64 {
        (i64::from(self.slots[1]) << 32) | i64::from(self.slots[0])
    }

    pub(super) fn block_until(&mut self, expiry: i64) {
        self.base = BLOCKED;
        self.slots = [expiry as u32, (expiry >> 32) as u32];
    }

    /// Inline slots in use (unused ones are zero).
    pub(super) fn inline_len(&self) -> usize {
        self.slots.iter().take_while(|&&s| s != 0).count()
    }
}

impl KeyStore {
    pub(super) fn sub_start(&self, record: u32, member: usize) -> usize {
        record as usize * self.stride + KEY_WORDS + member * SUB_WORDS
    }

    pub(super) fn sub(&self, record: u32, member: usize) -> Sub {
        let start = self.sub_start(record, member);
        match self.words.get(start..start + SUB_WORDS) {
            Some(&[prev, next, base, s0, s1]) => Sub {
                prev,
                next,
                base,
                slots: [s0, s1],
            },
            _ => Sub::absent(),
        }
    }

    pub(super) fn set_sub(&mut self, record: u32, member: usize, sub: Sub) {
        let start = self.sub_start(record, member);
        if let Some(words) = self.words.get_mut(start..start + SUB_WORDS) {
            words.copy_from_slice(&[sub.prev, sub.next, sub.base, sub.slots[0], sub.slots[1]]);
        }
    }

    pub(super) fn set_links(
        &mut self,
        record: u32,
        member: usize,
        prev: Option<u32>,
        next: Option<u32>,
    ) {
        let start = self.sub_start(record, member);
        if let Some(p) = prev
            && let Some(word) = self.words.get_mut(start)
        {
            *word = p;
        }
        if let Some(n) = next
            && let Some(word) = self.words.get_mut(start + 1)
        {
            *word = n;
        }
    }

    pub(super) fn ends(&mut self, member: usize, list: List) -> Option<&mut Ends> {
        let m = self.members.get_mut(member)?;
        Some(match list {
            List::Counting => &mut m.counting,
            List::Blocked => &mut m.blocked,
        })
    }

    pub(super) fn unlink(&mut self, record: u32, member: usize) {
        let sub = self.sub(record, member);
        let list = sub.list();
        if sub.prev == NIL {
            if let Some(ends) = self.ends(member, list) {
                ends.head = sub.next;
            }
        } else {
            self.set_links(sub.prev, member, None, Some(sub.next));
        }
        if sub.next == NIL {
            if let Some(ends) = self.ends(member, list) {
                ends.tail = sub.prev;
            }
        } else {
            self.set_links(sub.next, member, Some(sub.prev), None);
        }
        self.set_links(record, member, Some(NIL), Some(NIL));
    }

    pub(super) fn push_front(&mut self, record: u32, member: usize, list: List) {
        let Some(head) = self.ends(member, list).map(|e| e.head) else {
            return;
        };
        self.set_links(record, member, Some(NIL), Some(head));
        if head == NIL {
            if let Some(ends) = self.ends(member, list) {
                ends.tail = record;
            }
        } else {
            self.set_links(head, member, Some(record), None);
        }
        if let Some(ends) = self.ends(member, list) {
            ends.head = record;
        }
    }

    pub(super) fn push_back(&mut self, record: u32, member: usize, list: List) {
        let Some(tail) = self.ends(member, list).map(|e| e.tail) else {
            return;
        };
        self.set_links(record, member, Some(tail), Some(NIL));
        if tail == NIL {
            if let Some(ends) = self.ends(member, list) {
                ends.head = record;
            }
        } else {
            self.set_links(tail, member, None, Some(record));
        }
        if let Some(ends) = self.ends(member, list) {
            ends.tail = record;
        }
    }
}
