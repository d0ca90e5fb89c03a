//! Counting a key's events over a member's sliding window: two buckets inline in the record,
//! more in a ring (`spill`), bases relative to the member's epoch.

use super::record::Sub;
use super::{INLINE_SLOTS, KeyStore, NIL, REBASE_AFTER, SPILLED};
use crate::engine::window::{self, Buckets, MAX_SPAN, slot};

impl KeyStore {
    /// The newest bucket with events of a counting key (`epoch`: its member's).
    pub(super) fn newest_bucket(&self, sub: &Sub, epoch: i64) -> Option<i64> {
        match sub.ring() {
            Some(_) => Some(epoch + i64::from(sub.base & !SPILLED)),
            None => {
                let last = sub.slots.get(..sub.inline_len())?.last()?;
                Some(epoch + i64::from(sub.base) + slot::offset(*last))
            }
        }
    }

    pub(super) fn has_live_events(
        &self,
        record: u32,
        member: usize,
        geometry: Buckets,
        epoch: i64,
        now_bucket: i64,
    ) -> bool {
        let sub = self.sub(record, member);
        self.newest_bucket(&sub, epoch)
            .is_some_and(|bucket| geometry.live(bucket, now_bucket))
    }

    pub(super) fn release_ring(&mut self, sub: &Sub) {
        if let Some(ring) = sub.ring() {
            self.rings.release(ring);
        }
    }

    /// `bucket` relative to the member's epoch.
    pub(super) fn relative(&self, member: usize, bucket: i64) -> u32 {
        let epoch = self
            .members
            .get(member)
            .and_then(|m| m.epoch)
            .unwrap_or(bucket);
        u32::try_from(bucket - epoch).unwrap_or(0).min(SPILLED - 1)
    }

    /// Sets the member's epoch on its first event, and moves it forward (rebasing every
    /// counting key) long before relative bases could overflow.
    pub(super) fn set_epoch(&mut self, member: usize, now_bucket: i64) {
        let Some(m) = self.members.get_mut(member) else {
            return;
        };
        // Keys are never based more than MAX_SPAN buckets before the current one.
        let fresh = now_bucket - 2 * MAX_SPAN;
        let old = match m.epoch {
            None => {
                m.epoch = Some(fresh);
                return;
            }
            Some(old) if now_bucket - old >= REBASE_AFTER => old,
            Some(_) => return,
        };
        m.epoch = Some(fresh);
        let mut record = m.counting.head;
        while record != NIL {
            let mut sub = self.sub(record, member);
            let base = old + i64::from(sub.base);
            if sub.ring().is_some() {
                let last = old + i64::from(sub.base & !SPILLED);
                if last < fresh {
                    // All buckets are dead (see below).
                    self.release_ring(&sub);
                    sub.slots = [0; INLINE_SLOTS];
                    sub.base = 0;
                } else {
                    sub.base = SPILLED | u32::try_from(last - fresh).unwrap_or(0);
                }
            } else if base < fresh {
                // Every slot is older than 2 * MAX_SPAN buckets, so none is live: an empty
                // window counts the same.
                sub.slots = [0; INLINE_SLOTS];
                sub.base = 0;
            } else {
                sub.base = u32::try_from(base - fresh).unwrap_or(0);
            }
            self.set_sub(record, member, sub);
            record = sub.next;
        }
    }

    /// Counts one event of `record` for `member` in `now_bucket`; returns the window's count,
    /// this event included.
    pub(super) fn count_event(&mut self, record: u32, member: usize, now_bucket: i64) -> u64 {
        let Some(m) = self.members.get(member) else {
            return 0;
        };
        let (geometry, epoch) = (m.geometry, m.epoch.unwrap_or_default());
        let sub = self.sub(record, member);
        let sub = match sub.ring() {
            Some(ring) => self.count_in_ring(member, sub, ring, geometry, epoch, now_bucket),
            None => self.count_inline(member, sub, geometry, epoch, now_bucket),
        };
        self.set_sub(record, member, sub.0);
        sub.1
    }

    pub(super) fn count_in_ring(
        &mut self,
        member: usize,
        mut sub: Sub,
        ring: u32,
        geometry: Buckets,
        epoch: i64,
        now_bucket: i64,
    ) -> (Sub, u64) {
        let last = epoch + i64::from(sub.base & !SPILLED);
        let span = geometry.span();
        let counted = self.rings.count(ring, span, last, sub.slots[0], now_bucket);
        if counted.used <= INLINE_SLOTS {
            // Back inline, based at the oldest live bucket.
            let live = self.rings.live(counted.id, span, now_bucket);
            self.rings.release(counted.id);
            let base = live.first().map_or(now_bucket, |&(bucket, _)| bucket);
            let mut inline = [0; INLINE_SLOTS];
            for (to, &(bucket, count)) in inline.iter_mut().zip(live.iter()) {
                *to = slot::pack(bucket - base, count);
            }
            sub.base = self.relative(member, base);
            sub.slots = inline;
        } else {
            sub.base = SPILLED | self.relative(member, now_bucket);
            sub.slots = [counted.before + 1, counted.id];
        }
        (sub, u64::from(counted.before) + 1)
    }

    pub(super) fn count_inline(
        &mut self,
        member: usize,
        mut sub: Sub,
        geometry: Buckets,
        epoch: i64,
        now_bucket: i64,
    ) -> (Sub, u64) {
        let mut base = epoch + i64::from(sub.base);
        let mut inline = sub.slots;
        let (len, total) = window::expire_slots(
            geometry,
            &mut base,
            inline.get_mut(..sub.inline_len()).unwrap_or_default(),
            now_bucket,
        );
        let offset = now_bucket - base;
        let last = len.checked_sub(1).and_then(|i| inline.get_mut(i));
        let len = match last {
            Some(last) if slot::offset(*last) == offset => {
                *last = slot::increment(*last);
                len
            }
            _ => match inline.get_mut(len) {
                Some(free) => {
                    *free = slot::pack(offset, 1);
                    len + 1
                }
                None => {
                    // A third live bucket: the window moves to a ring.
                    let [a, b] = inline.map(|s| (base + slot::offset(s), slot::count(s)));
                    let ring = self.rings.create(&[a, b, (now_bucket, 1)]);
                    let total = u32::try_from(total + 1).unwrap_or(u32::MAX);
                    sub.base = SPILLED | self.relative(member, now_bucket);
                    sub.slots = [total, ring];
                    return (sub, total.into());
                }
            },
        };
        for unused in inline.iter_mut().skip(len) {
            *unused = 0;
        }
        sub.slots = inline;
        sub.base = self.relative(member, base);
        (sub, total + 1)
    }
}
