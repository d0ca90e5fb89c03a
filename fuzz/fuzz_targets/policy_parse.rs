//! Arbitrary bytes into the policy parser; every accepted policy must round-trip:
//! valid -> serialize -> parse again -> equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use policy_engine::Policy;

fuzz_target!(|data: &[u8]| {
    let Ok(policy) = Policy::from_json(data) else {
        return;
    };
    let serialized = serde_json::to_vec(&policy.to_document()).expect("a policy serializes");
    let again = Policy::from_json(&serialized).expect("a serialized policy parses again");
    assert_eq!(policy, again, "round trip changed the policy");
});
