//! Key store tests: counting, blocking, eviction at the cap.

use std::time::Duration;

use super::*;

fn key(n: u32) -> IpKey {
    IpKey::from(IpAddr::from(std::net::Ipv4Addr::from(n)))
}

#[test]
fn entries_are_64_bytes() {
    assert_eq!(std::mem::size_of::<Entry>(), 64);
}

#[test]
fn key_count_stays_at_the_cap_under_a_spray() {
    let mut store = KeyStore::new(Buckets::new(Duration::from_secs(3600)), 1000);
    for n in 0..100_000 {
        store.hit(key(n), i64::from(n));
        assert!(store.len() <= 1000);
    }
    assert_eq!(store.len(), 1000);
    assert_eq!(store.evictions(), 99_000);
    // The most recent keys survive, the oldest were evicted.
    assert_eq!(store.count(key(99_999), 100_000), 1);
    assert_eq!(store.count(key(0), 100_000), 0);
}

#[test]
fn a_key_with_more_live_buckets_than_inline_slots_spills_and_comes_back() {
    let geometry = Buckets::new(Duration::from_secs(60));
    let mut store = KeyStore::new(geometry, 10);
    let k = key(7);
    // One event per second for 90 seconds: at most 60 one-second buckets are live at once.
    for s in 0..90i64 {
        let hit = store.hit(k, s * 1000);
        assert_eq!(hit, Hit::Counted((s + 1).min(60) as u64), "second {s}");
    }
    assert_eq!(store.spilled.len(), 1);
    // Quiet for 55 s: five buckets remain, and the next hit moves the key back inline.
    assert_eq!(store.hit(k, 144_000), Hit::Counted(6));
    assert!(store.spilled.is_empty());
    assert_eq!(store.count(k, 144_000), 6);
    store.block(k, Some(200_000));
    assert_eq!(store.hit(k, 199_999), Hit::Blocked);
    assert_eq!(store.hit(k, 200_000), Hit::Counted(1));
}

#[test]
fn stale_keys_are_swept_once_their_window_has_passed() {
    let geometry = Buckets::new(Duration::from_secs(60));
    let mut store = KeyStore::new(geometry, 10);
    store.hit(key(1), 0);
    store.hit(key(2), 30_000);
    store.block(key(2), Some(100_000));
    store.hit(key(3), 50_000);
    store.sweep(59_999, 10);
    assert_eq!(store.len(), 3);
    // Key 1's minute is over; key 3 still counts; key 2 is blocked until 100 s.
    store.sweep(60_000, 10);
    assert_eq!(store.len(), 2);
    store.sweep(100_000, 10);
    assert_eq!(store.len(), 1);
    store.sweep(110_000, 10);
    assert_eq!(store.len(), 0);
}

/// The naive model of one key: every event time since the last block, and the block expiry.
#[derive(Default, Clone)]
struct NaiveKey {
    events: Vec<i64>,
    blocked_until: Option<i64>,
}

/// Offers an event to the model: the same contract as `KeyStore::hit` plus the block at the
/// threshold, computed from raw event times.
fn naive_hit(
    key: &mut NaiveKey,
    geometry: Buckets,
    now: i64,
    threshold: u64,
    block_ms: i64,
) -> (Hit, bool) {
    if key.blocked_until.is_some_and(|until| until > now) {
        return (Hit::Blocked, false);
    }
    key.blocked_until = None;
    key.events.push(now);
    let now_bucket = geometry.bucket(now);
    let count = key
        .events
        .iter()
        .filter(|&&t| geometry.live(geometry.bucket(t), now_bucket))
        .count() as u64;
    let blocked = count >= threshold;
    if blocked {
        key.events.clear();
        key.blocked_until = Some(now + block_ms);
    }
    (Hit::Counted(count), blocked)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

    /// Windowed counts, blocks and expiries of the store equal those of the naive model under a
    /// fake clock, and the bucketed count stays within one bucket of the exact sliding window.
    #[test]
    fn store_matches_the_naive_model(
        window_index in 0usize..3,
        threshold in proptest::prop_oneof![1u64..9, 9u64..40],
        block_ms in 1i64..200_000,
        steps in proptest::collection::vec(
            (0u32..5, proptest::prop_oneof![3 => 0i64..12, 1 => 0i64..1_000]),
            1..400,
        ),
    ) {
        let window_ms = [1_000i64, 60_000, 3_600_000][window_index];
        let geometry = Buckets::new(Duration::from_millis(window_ms as u64));
        let mut store = KeyStore::new(geometry, 1_000);
        let mut model = vec![NaiveKey::default(); 5];
        // Scale steps to the window so that keys see from many to few events per window.
        let mut now = 1_772_000_000_000i64;
        for (k, dt) in steps {
            now += dt * window_ms / 400;
            store.sweep(now, 2);
            let expected = naive_hit(&mut model[k as usize], geometry, now, threshold, block_ms);
            let hit = store.hit(key(k), now);
            proptest::prop_assert_eq!(hit, expected.0, "key {} at {}", k, now);
            if let Hit::Counted(count) = hit {
                let events = &model[k as usize].events;
                // Exact sliding-window bounds, one bucket either way.
                let width = window_ms / 60;
                let exact = |span: i64| events.iter().filter(|&&t| now - t < span).count() as u64;
                if !expected.1 {
                    proptest::prop_assert!(count >= exact(window_ms - width));
                    proptest::prop_assert!(count <= exact(window_ms + width));
                }
            }
            if expected.1 {
                store.block(key(k), Some(now + block_ms));
            }
        }
    }
}
