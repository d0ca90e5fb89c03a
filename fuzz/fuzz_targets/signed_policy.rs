//! Arbitrary bytes as a signed policy file (`POST /api/policy` body, `policy-sign verify`):
//! never a panic; the only signature that verifies is the one the key makes; whatever policy is
//! accepted verifies once signed, and only for the org and version it was signed for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use policy_engine::protocol::SignedPolicy;
use policy_engine::signing::{KeyRing, SigningKey};
use policy_engine::{Policy, PolicyVersion};

fuzz_target!(|data: &[u8]| {
    let key = SigningKey::from_pem(
        include_str!("../../policy-engine/tests/data/signing/openssl-operator.key"),
        "fuzz key",
    )
    .expect("the test key parses");
    let ring = KeyRing::new(vec![key.public_key()]);
    let Ok(signed) = SignedPolicy::from_json(data) else {
        return;
    };
    let Ok(policy) = Policy::from_value(&signed.policy) else {
        return;
    };
    let signature = key.sign_with_rollout(
        &signed.org_id,
        signed.version,
        &policy,
        signed.signature.rollout.clone(),
    );
    // Ed25519 signatures are deterministic and verified strictly: the only signature that
    // verifies is the one the key itself makes (the seeds are genuinely signed; any mutation
    // of document, org, version or signature must fail).
    if ring
        .verify(&signed.org_id, signed.version, &policy, &signed.signature)
        .is_ok()
    {
        assert_eq!(signed.signature, signature, "a signature the key did not make verified");
    }
    ring.verify(&signed.org_id, signed.version, &policy, &signature)
        .expect("a fresh signature verifies");
    let next = PolicyVersion::new(signed.version.number().wrapping_add(1));
    assert!(
        ring.verify(&signed.org_id, next, &policy, &signature)
            .is_err()
    );
});
