//! The windows of keys with more live buckets than a record holds: counts per bucket in a ring
//! indexed by bucket number. A ring is one cache line of `u8` counts, and becomes 64 `u32`
//! counts once a bucket passes 255 events.
//!
//! The ring keeps no header: the newest bucket and the total stay in the key's record, so an
//! event touches the record and one line of counts.

/// Buckets a ring holds: at least `window::MAX_SPAN`.
pub(super) const RING: usize = 64;
/// Id bit of a ring of `u32` counts.
const LARGE: u32 = 1 << 31;

#[derive(Debug, Clone)]
#[repr(align(64))]
struct Small([u8; RING]);

#[derive(Debug, Clone)]
struct Large([u32; RING]);

/// The outcome of [`Rings::count`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Counted {
    /// The ring's id (it changes when the ring grows to `u32` counts).
    pub(super) id: u32,
    /// Events in the window before this one.
    pub(super) before: u32,
    /// Buckets with events now.
    pub(super) used: usize,
}

/// Slabs of rings, reused through free lists.
#[derive(Debug, Clone, Default)]
pub(super) struct Rings {
    small: Vec<Small>,
    large: Vec<Large>,
    free_small: Vec<u32>,
    free_large: Vec<u32>,
}

impl Rings {
    /// A ring holding `live` `(bucket, count)` pairs (buckets within one window); its id.
    pub(super) fn create(&mut self, live: &[(i64, u32)]) -> u32 {
        let small = live.iter().all(|&(_, count)| count <= u32::from(u8::MAX));
        let id = if small {
            self.take_small()
        } else {
            self.take_large()
        };
        for &(bucket, count) in live {
            self.set(id, bucket, count);
        }
        id
    }

    /// Counts one event in `now_bucket` in ring `id`, whose newest bucket is `last` (at most
    /// `now_bucket`) and whose buckets total `total`, after dropping the buckets that leave a
    /// window of `span` buckets.
    pub(super) fn count(
        &mut self,
        id: u32,
        span: i64,
        last: i64,
        total: u32,
        now_bucket: i64,
    ) -> Counted {
        let mut id = id;
        let mut total = total;
        // Buckets up to `now_bucket - span` leave the window.
        let oldest = last - span + 1;
        let dead = last.min(now_bucket - span);
        if dead - oldest >= RING as i64 {
            self.clear(id);
            total = 0;
        } else {
            for bucket in oldest..=dead {
                total = total.saturating_sub(self.get(id, bucket));
                self.set(id, bucket, 0);
            }
        }
        let count = self.get(id, now_bucket);
        if id & LARGE == 0 && count == u32::from(u8::MAX) {
            id = self.grow(id);
        }
        self.set(id, now_bucket, count + 1);
        Counted {
            id,
            before: total,
            used: self.used(id),
        }
    }

    /// `(bucket, count)` of the buckets with events in the window of `span` buckets ending at
    /// `last`, oldest first.
    pub(super) fn live(&self, id: u32, span: i64, last: i64) -> Vec<(i64, u32)> {
        (last - span + 1..=last)
            .filter_map(|bucket| {
                let count = self.get(id, bucket);
                (count > 0).then_some((bucket, count))
            })
            .collect()
    }

    /// The first count of ring `id` (reading it loads the ring's first cache line).
    pub(super) fn first(&self, id: u32) -> u32 {
        self.get(id, 0)
    }

    /// Frees ring `id`.
    pub(super) fn release(&mut self, id: u32) {
        if id & LARGE == 0 {
            self.free_small.push(id);
        } else {
            self.free_large.push(id & !LARGE);
        }
    }

    /// Rings in use.
    #[cfg(test)]
    pub(super) fn in_use(&self) -> usize {
        self.small.len() + self.large.len() - self.free_small.len() - self.free_large.len()
    }

    fn take_small(&mut self) -> u32 {
        let id = self.free_small.pop().unwrap_or_else(|| {
            self.small.push(Small([0; RING]));
            (self.small.len() - 1) as u32
        });
        self.clear(id);
        id
    }

    fn take_large(&mut self) -> u32 {
        let id = self.free_large.pop().unwrap_or_else(|| {
            self.large.push(Large([0; RING]));
            (self.large.len() - 1) as u32
        }) | LARGE;
        self.clear(id);
        id
    }

    /// Moves small ring `id` to a large one; the large ring's id.
    fn grow(&mut self, id: u32) -> u32 {
        let large = self.take_large();
        for position in 0..RING {
            let count = self
                .small
                .get(id as usize)
                .and_then(|s| s.0.get(position))
                .copied()
                .unwrap_or(0);
            if let Some(to) = self
                .large
                .get_mut((large & !LARGE) as usize)
                .and_then(|l| l.0.get_mut(position))
            {
                *to = u32::from(count);
            }
        }
        self.release(id);
        large
    }

    fn clear(&mut self, id: u32) {
        if id & LARGE == 0 {
            if let Some(ring) = self.small.get_mut(id as usize) {
                ring.0 = [0; RING];
            }
        } else if let Some(ring) = self.large.get_mut((id & !LARGE) as usize) {
            ring.0 = [0; RING];
        }
    }

    fn get(&self, id: u32, bucket: i64) -> u32 {
        let position = bucket.rem_euclid(RING as i64) as usize;
        if id & LARGE == 0 {
            self.small
                .get(id as usize)
                .and_then(|ring| ring.0.get(position))
                .map_or(0, |&c| u32::from(c))
        } else {
            self.large
                .get((id & !LARGE) as usize)
                .and_then(|ring| ring.0.get(position))
                .copied()
                .unwrap_or(0)
        }
    }

    /// Sets a count; a small ring's counts are at most 255 (callers grow it first).
    fn set(&mut self, id: u32, bucket: i64, count: u32) {
        let position = bucket.rem_euclid(RING as i64) as usize;
        if id & LARGE == 0 {
            if let Some(c) = self
                .small
                .get_mut(id as usize)
                .and_then(|ring| ring.0.get_mut(position))
            {
                *c = u8::try_from(count).unwrap_or(u8::MAX);
            }
        } else if let Some(c) = self
            .large
            .get_mut((id & !LARGE) as usize)
            .and_then(|ring| ring.0.get_mut(position))
        {
            *c = count;
        }
    }

    fn used(&self, id: u32) -> usize {
        if id & LARGE == 0 {
            self.small
                .get(id as usize)
                .map_or(0, |ring| ring.0.iter().filter(|&&c| c != 0).count())
        } else {
            self.large
                .get((id & !LARGE) as usize)
                .map_or(0, |ring| ring.0.iter().filter(|&&c| c != 0).count())
        }
    }
}
