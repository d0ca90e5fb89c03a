//! Arbitrary log text through the sshd tracker: never a panic, and an attempt always carries
//! a canonical address that appears in the text sshd wrote.
#![no_main]

use libfuzzer_sys::fuzz_target;
use policy_engine::sshd::{SshdConfig, SshdTracker};

fuzz_target!(|data: &[u8]| {
    let mut tracker = SshdTracker::new(SshdConfig::for_year(2026));
    for line in data.split(|&b| b == b'\n') {
        if let Some(attempt) = tracker.feed_bytes(line) {
            assert_eq!(policy_engine::event::canonical_ip(attempt.ip), attempt.ip);
        }
    }
});
