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
