//! Bucketed sliding windows: time cut into buckets of at most 1/60 of the window.
//!
//! An event at time `t` falls into bucket `b = floor(t / width)` and is counted while the current
//! bucket `B` satisfies `B - b < span`, where `span = ceil(window / width)`. It is therefore
//! counted for a duration within `(window - width, window + width)`: the error stays below one
//! bucket, at most 1/60 of the window (CONTRACT section 4).

use std::collections::VecDeque;
use std::time::Duration;

/// Most buckets a window spans; offsets inside a key's window fit in 6 bits.
pub(crate) const MAX_SPAN: i64 = 64;

/// Bucket geometry of one window length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Buckets {
    width_ms: i64,
    span: i64,
}

impl Buckets {
    /// Buckets for `window` (at least one millisecond).
    pub(crate) fn new(window: Duration) -> Self {
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX).max(1);
        let mut width_ms = (window_ms / 60).max(1);
        // Windows under 64 ms would need more than MAX_SPAN buckets of 1 ms: coarsen them.
        // Policy windows are whole seconds, so this never applies to them.
        if ceil_div(window_ms, width_ms) > MAX_SPAN {
            width_ms = ceil_div(window_ms, MAX_SPAN);
        }
        Self {
            width_ms,
            span: ceil_div(window_ms, width_ms),
        }
    }

    /// The bucket that contains `t_ms` (milliseconds since the Unix epoch).
    pub(crate) fn bucket(self, t_ms: i64) -> i64 {
        t_ms.div_euclid(self.width_ms)
    }

    /// Buckets in a window.
    pub(crate) fn span(self) -> i64 {
        self.span
    }

    /// The first millisecond at which an event of bucket `event_bucket` no longer counts.
    pub(crate) fn end_ms(self, event_bucket: i64) -> i64 {
        event_bucket
            .saturating_add(self.span)
            .saturating_mul(self.width_ms)
    }

    /// Whether an event of bucket `event_bucket` still counts in bucket `now_bucket`.
    pub(crate) fn live(self, event_bucket: i64, now_bucket: i64) -> bool {
        now_bucket.saturating_sub(event_bucket) < self.span
    }
}

/// `a / b` rounded up, for positive `a` and `b`.
fn ceil_div(a: i64, b: i64) -> i64 {
    (a + b - 1) / b
}

/// A single sliding counter (one per `alert_threshold` rule): at most `span` buckets.
#[derive(Debug, Clone, Default)]
pub(crate) struct SlidingCounter {
    buckets: VecDeque<(i64, u64)>,
    total: u64,
}

impl SlidingCounter {
    /// Drops the buckets that left the window at `now_bucket`.
    pub(crate) fn expire(&mut self, geometry: Buckets, now_bucket: i64) {
        while let Some(&(bucket, count)) = self.buckets.front() {
            if geometry.live(bucket, now_bucket) {
                break;
            }
            self.total -= count;
            self.buckets.pop_front();
        }
    }

    /// Counts one event in `now_bucket` and returns the count over the window.
    pub(crate) fn add(&mut self, geometry: Buckets, now_bucket: i64) -> u64 {
        self.expire(geometry, now_bucket);
        match self.buckets.back_mut() {
            Some((bucket, count)) if *bucket >= now_bucket => *count += 1,
            _ => self.buckets.push_back((now_bucket, 1)),
        }
        self.total += 1;
        self.total
    }
}

/// Offset and count packed in one `u32`: 6 bits of bucket offset, 26 bits of count
/// (thresholds are at most 1,000,000 < 2^26).
pub(crate) mod slot {
    const COUNT_BITS: u32 = 26;
    const COUNT_MASK: u32 = (1 << COUNT_BITS) - 1;

    pub(crate) fn pack(offset: i64, count: u32) -> u32 {
        // Offsets are below MAX_SPAN (64) by construction; mask to stay in range regardless.
        ((offset as u32 & 0x3f) << COUNT_BITS) | count.min(COUNT_MASK)
    }

    pub(crate) fn offset(slot: u32) -> i64 {
        i64::from(slot >> COUNT_BITS)
    }

    pub(crate) fn count(slot: u32) -> u32 {
        slot & COUNT_MASK
    }

    pub(crate) fn increment(slot: u32) -> u32 {
        if count(slot) < COUNT_MASK {
            slot + 1
        } else {
            slot
        }
    }
}

/// Keeps the live slots of a key's window (sorted by offset from `base`) at the front of
/// `slots`, rebases so that every offset fits in 6 bits, and returns how many remain and their
/// total count.
pub(crate) fn expire_slots(
    geometry: Buckets,
    base: &mut i64,
    slots: &mut [u32],
    now_bucket: i64,
) -> (usize, u64) {
    let first_live = slots
        .iter()
        .position(|&s| geometry.live(*base + slot::offset(s), now_bucket))
        .unwrap_or(slots.len());
    slots.copy_within(first_live.., 0);
    let len = slots.len() - first_live;
    let live = slots.get_mut(..len).unwrap_or_default();
    let shift = live.first().map_or(0, |&s| slot::offset(s));
    if live.is_empty() {
        *base = now_bucket;
    } else if now_bucket - *base >= MAX_SPAN {
        for s in live.iter_mut() {
            *s = slot::pack(slot::offset(*s) - shift, slot::count(*s));
        }
        *base += shift;
    }
    let total = live.iter().map(|&s| u64::from(slot::count(s))).sum();
    (len, total)
}
