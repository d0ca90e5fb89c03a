//! Arbitrary bytes as a threat event and as JSON Lines: never a panic, and every line is either
//! an event or an error that names its line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use policy_engine::ThreatEvent;
use policy_engine::event::parse_lines;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = ThreatEvent::from_json(data) {
        if let Some(ip) = event.src_ip {
            assert_eq!(policy_engine::event::canonical_ip(ip), ip, "srcIp not canonical");
        }
    }
    for item in parse_lines(data) {
        if let Err(err) = item {
            assert!(err.line >= 1);
        }
    }
});
