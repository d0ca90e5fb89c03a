//! Key store tests: counting, blocking, eviction at the cap, members sharing records.

use std::time::Duration;

use super::*;

fn key(n: u32) -> IpKey {
    IpKey::from(IpAddr::from(std::net::Ipv4Addr::from(n)))
}

fn single(window: Duration, cap: usize) -> KeyStore {
    KeyStore::new(&[(Buckets::new(window), cap)])
}

/// Hits `key` for `member`, looking the record up.
fn hit(store: &mut KeyStore, member: usize, key: IpKey, now: i64) -> Hit {
    store.hit(member, key, None, now).0
}

fn block(store: &mut KeyStore, member: usize, key: IpKey, until: Option<i64>) {
    let record = store.find(key).unwrap();
    store.block(member, record, until);
}

#[test]
fn a_single_rule_record_is_36_bytes() {
    let store = single(Duration::from_secs(60), 10);
    assert_eq!(store.stride * std::mem::size_of::<u32>(), 36);
}

#[test]
fn key_count_stays_at_the_cap_under_a_spray() {
    let mut store = single(Duration::from_secs(3600), 1000);
    for n in 0..100_000 {
        hit(&mut store, 0, key(n), i64::from(n));
        assert!(store.len(0) <= 1000);
    }
    assert_eq!(store.len(0), 1000);
    assert_eq!(store.records(), 1000);
    assert_eq!(store.evictions(0), 99_000);
    // The most recent keys survive, the oldest were evicted.
    assert_eq!(store.count(0, key(99_999), 100_000), 1);
    assert_eq!(store.count(0, key(0), 100_000), 0);
}

#[test]
fn a_key_with_more_live_buckets_than_inline_slots_spills_and_comes_back() {
    let mut store = single(Duration::from_secs(60), 10);
    let k = key(7);
    // One event per second for 90 seconds: at most 60 one-second buckets are live at once.
    for s in 0..90i64 {
        assert_eq!(
            hit(&mut store, 0, k, s * 1000),
            Hit::Counted((s + 1).min(60) as u64),
            "second {s}"
        );
    }
    assert_eq!(store.rings.in_use(), 1);
    // Quiet for 59 s: one bucket remains, and the hit makes two, back inline.
    assert_eq!(hit(&mut store, 0, k, 148_000), Hit::Counted(2));
    assert_eq!(store.rings.in_use(), 0);
    assert_eq!(store.count(0, k, 148_000), 2);
    block(&mut store, 0, k, Some(200_000));
    assert_eq!(hit(&mut store, 0, k, 199_999), Hit::Blocked);
    assert_eq!(hit(&mut store, 0, k, 200_000), Hit::Counted(1));
}

#[test]
fn a_ring_grows_to_wide_counts_past_255_events_in_a_bucket() {
    let mut store = single(Duration::from_secs(60), 10);
    let k = key(3);
    hit(&mut store, 0, k, 0);
    hit(&mut store, 0, k, 1_000);
    for n in 0..300u64 {
        assert_eq!(hit(&mut store, 0, k, 2_000), Hit::Counted(3 + n));
    }
    assert_eq!(store.rings.in_use(), 1);
    assert_eq!(hit(&mut store, 0, k, 3_000), Hit::Counted(303));
    // The first two seconds leave the window; 301 events remain.
    assert_eq!(hit(&mut store, 0, k, 61_500), Hit::Counted(302));
    assert_eq!(store.count(0, k, 61_500), 302);
}

#[test]
fn stale_keys_are_swept_once_their_window_has_passed() {
    let mut store = single(Duration::from_secs(60), 10);
    hit(&mut store, 0, key(1), 0);
    hit(&mut store, 0, key(2), 30_000);
    block(&mut store, 0, key(2), Some(100_000));
    hit(&mut store, 0, key(3), 50_000);
    assert_eq!(store.next_sweep_ms(0), 60_000);
    store.sweep(0, 59_999, 10);
    assert_eq!(store.len(0), 3);
    // Key 1's minute is over; key 3 still counts; key 2 is blocked until 100 s.
    store.sweep(0, 60_000, 10);
    assert_eq!(store.len(0), 2);
    assert_eq!(store.next_sweep_ms(0), 100_000);
    store.sweep(0, 100_000, 10);
    assert_eq!(store.len(0), 1);
    assert_eq!(store.next_sweep_ms(0), 110_000);
    store.sweep(0, 110_000, 10);
    assert_eq!(store.len(0), 0);
    assert_eq!(store.records(), 0);
    assert_eq!(store.next_sweep_ms(0), i64::MAX);
}

#[test]
fn members_share_a_record_but_keep_their_own_counts_blocks_and_lists() {
    let minute = Buckets::new(Duration::from_secs(60));
    let hour = Buckets::new(Duration::from_secs(3600));
    let mut store = KeyStore::new(&[(minute, 10), (hour, 10)]);
    let k = key(9);
    let (first, record) = store.hit(0, k, None, 0);
    assert_eq!(first, Hit::Counted(1));
    let (second, same) = store.hit(1, k, Some(record), 0);
    assert_eq!((second, same), (Hit::Counted(1), record));
    assert_eq!(store.records(), 1);
    // Member 0 blocks the address; member 1 keeps counting it.
    store.block(0, record, Some(30_000));
    assert_eq!(hit(&mut store, 0, k, 10_000), Hit::Blocked);
    assert_eq!(hit(&mut store, 1, k, 10_000), Hit::Counted(2));
    // The block expires and member 0 sweeps the address; member 1 still holds the record.
    store.sweep(0, 30_000, 2);
    assert_eq!((store.len(0), store.len(1), store.records()), (0, 1, 1));
    assert_eq!(store.count(1, k, 30_000), 2);
    // Member 1's window ends at the hour: the record goes with it.
    store.sweep(1, 3_600_000, 2);
    assert_eq!((store.len(1), store.records()), (0, 0));
}

#[test]
fn a_retired_member_frees_the_records_only_it_held() {
    let geometry = Buckets::new(Duration::from_secs(60));
    let mut store = KeyStore::new(&[(geometry, 10), (geometry, 10)]);
    let (_, shared) = store.hit(0, key(1), None, 0);
    store.hit(1, key(1), Some(shared), 0);
    hit(&mut store, 0, key(2), 0);
    assert_eq!(store.records(), 2);
    assert_eq!(store.retire_member(0), 0);
    assert_eq!((store.len(0), store.len(1), store.records()), (0, 1, 1));
    assert_eq!(store.count(1, key(1), 0), 1);
}

#[test]
fn counts_survive_the_rebase_of_relative_buckets() {
    // One-second windows have 17 ms buckets: bases are rebased after about 400 days.
    let mut store = single(Duration::from_secs(1), 10);
    let day = 86_400_000i64;
    hit(&mut store, 0, key(1), 0);
    let later = 420 * day;
    assert_eq!(hit(&mut store, 0, key(2), later - 500), Hit::Counted(1));
    assert_eq!(hit(&mut store, 0, key(2), later), Hit::Counted(2));
    assert_eq!(store.count(0, key(2), later), 2);
    assert_eq!(store.count(0, key(1), later), 0);
    // Key 1's window is long over: it is swept first, key 2 a second after its last event.
    assert_eq!(store.next_sweep_ms(0), i64::MIN);
    store.sweep(0, later, 1);
    assert_eq!(store.len(0), 1);
    assert!(store.next_sweep_ms(0) > later);
    assert_eq!(hit(&mut store, 0, key(2), later + 400), Hit::Counted(3));
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

const WINDOWS_MS: [i64; 3] = [1_000, 60_000, 3_600_000];

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
        let window_ms = WINDOWS_MS[window_index];
        let geometry = Buckets::new(Duration::from_millis(window_ms as u64));
        let mut store = KeyStore::new(&[(geometry, 1_000)]);
        let mut model = vec![NaiveKey::default(); 5];
        // Scale steps to the window so that keys see from many to few events per window.
        let mut now = 1_772_000_000_000i64;
        for (k, dt) in steps {
            now += dt * window_ms / 400;
            store.sweep(0, now, 2);
            let expected = naive_hit(&mut model[k as usize], geometry, now, threshold, block_ms);
            let hit = hit(&mut store, 0, key(k), now);
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
                block(&mut store, 0, key(k), Some(now + block_ms));
            }
        }
    }

    /// A store shared by several members behaves, member by member, exactly like one store per
    /// member: same hits, counts, keys, evictions and sweep times, with small caps so that
    /// members evict different keys; and it never holds more records than the members' keys.
    #[test]
    fn shared_members_behave_like_separate_stores(
        members in proptest::collection::vec((0usize..3, 1usize..6, 1u64..6, 1i64..200_000), 1..5),
        steps in proptest::collection::vec(
            (0u32..8, proptest::prop_oneof![3 => 0i64..12, 1 => 0i64..1_000], 0u8..16),
            1..300,
        ),
    ) {
        let layout: Vec<(Buckets, usize)> = members
            .iter()
            .map(|&(w, cap, _, _)| (Buckets::new(Duration::from_millis(WINDOWS_MS[w] as u64)), cap))
            .collect();
        let mut shared = KeyStore::new(&layout);
        let mut separate: Vec<KeyStore> = layout.iter().map(|&m| KeyStore::new(&[m])).collect();
        let mut now = 1_772_000_000_000i64;
        for (k, dt, sweep) in steps {
            now += dt * 60_000 / 400;
            let mut record = None;
            for (m, &(_, _, threshold, block_ms)) in members.iter().enumerate() {
                if sweep < 12 {
                    shared.sweep(m, now, 2);
                    separate[m].sweep(0, now, 2);
                }
                let (got, r) = shared.hit(m, key(k), record, now);
                record = Some(r);
                let want = hit(&mut separate[m], 0, key(k), now);
                proptest::prop_assert_eq!(got, want, "member {} key {}", m, k);
                if matches!(got, Hit::Counted(c) if c >= threshold) {
                    shared.block(m, r, Some(now + block_ms));
                    block(&mut separate[m], 0, key(k), Some(now + block_ms));
                }
            }
            for (m, store) in separate.iter().enumerate() {
                proptest::prop_assert_eq!(shared.len(m), store.len(0));
                proptest::prop_assert_eq!(shared.evictions(m), store.evictions(0));
                proptest::prop_assert_eq!(shared.next_sweep_ms(m), store.next_sweep_ms(0));
                for other in 0..8 {
                    proptest::prop_assert_eq!(
                        shared.count(m, key(other), now),
                        store.count(0, key(other), now)
                    );
                }
            }
            let keys: usize = (0..members.len()).map(|m| shared.len(m)).sum();
            proptest::prop_assert!(shared.records() <= keys);
            proptest::prop_assert!(shared.records() >= (0..members.len()).map(|m| shared.len(m)).max().unwrap_or(0));
        }
    }
}
