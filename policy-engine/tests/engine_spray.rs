//! A spray of distinct source IPs: the engine's tracked keys stay at the per-rule cap and every
//! key beyond it is counted as an eviction.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv6Addr};

use chrono::{DateTime, TimeDelta, Utc};
use policy_engine::{Engine, EngineConfig, Policy, PolicyVersion, ThreatEvent};

#[test]
fn tracked_keys_stay_at_the_cap_under_a_spray() {
    let policy = Policy::from_json(
        br#"{"name":"spray","rules":[
          {"type":"block_ip","config":{"trigger":"brute_force","threshold":3,"duration":"1h","scope":"host"}},
          {"type":"block_ip","config":{"trigger":"brute_force","threshold":5,"duration":"1h","scope":"host","window":"10m"}}
        ]}"#,
    )
    .unwrap();
    let cap = 1_000;
    let config = EngineConfig {
        max_keys_per_rule: cap,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(policy, PolicyVersion::new(1), config);
    let start: DateTime<Utc> = "2026-03-07T12:00:00Z".parse().unwrap();
    let mut event = ThreatEvent {
        threat_type: Some("brute_force".into()),
        ..ThreatEvent::default()
    };
    let n = 200_000u32;
    for i in 0..n {
        // Half IPv4, half IPv6, all distinct, one event each, all within a minute.
        let ip = if i % 2 == 0 {
            IpAddr::from(i.to_be_bytes())
        } else {
            IpAddr::V6(Ipv6Addr::from(u128::from(i) << 64))
        };
        event.src_ip = Some(ip);
        let evaluation = engine.process(&event, start + TimeDelta::microseconds(i64::from(i)));
        assert!(evaluation.actions.is_empty());
        assert!(engine.stats().tracked_keys <= 2 * cap as u64, "event {i}");
    }
    let stats = engine.stats();
    assert_eq!(stats.tracked_keys, 2 * cap as u64);
    assert_eq!(stats.evictions, 2 * u64::from(n - cap as u32));

    // The store still works at the cap: the latest key (one event so far) reaches rule 0's
    // threshold of 3.
    let evaluation = engine.process(&event, start + TimeDelta::seconds(61));
    assert!(evaluation.actions.is_empty());
    let evaluation = engine.process(&event, start + TimeDelta::seconds(62));
    assert_eq!(evaluation.actions.len(), 1);
    assert_eq!(evaluation.actions[0].rule, 0);

    // Once the windows have passed, stale keys are swept as events arrive, making room for new
    // keys without evictions.
    let evictions = engine.stats().evictions;
    let later = start + TimeDelta::hours(3);
    for i in 0..cap as u32 {
        event.src_ip = Some(IpAddr::from((n + i).to_be_bytes()));
        engine.process(&event, later);
    }
    assert_eq!(engine.stats().evictions, evictions);
    assert_eq!(engine.stats().tracked_keys, 2 * cap as u64);
}
