//! An agent pinned to operator keys, at the library level (`LiveEngine` with a
//! `SignatureCheck`): what it runs, what it refuses and why, rotations and signed rollbacks.
//! Every refusal keeps the running policy and becomes the heartbeat's `lastError`.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use policy_engine::protocol::{PolicySignature, RolloutTerms};
use policy_engine::signing::{KeyRing, SigningKey};
use policy_engine::sync::{
    Applied, LiveEngine, PolicyUpdate, SignatureCheck, StateStore, StoredPolicy,
};
use policy_engine::{EngineConfig, Policy, PolicyVersion};
use serde_json::{Value, json};

fn v(n: u64) -> PolicyVersion {
    PolicyVersion::new(n)
}

fn rules(threshold: u32) -> Value {
    json!([
        {"type": "block_ip", "config": {"trigger": "brute_force", "threshold": threshold,
         "duration": "24h", "scope": "host"}, "enabled": true},
        {"type": "alert_threshold", "config": {"severity": "critical", "countPerHour": 5,
         "notifyChannels": ["email"]}, "enabled": true}
    ])
}

fn document(rules: &Value) -> Value {
    json!({"name": "signed", "rules": rules})
}

/// A `policy` event as the server sends it: `rules` resolved, the signed part beside them.
fn event(version: u64, signed_rules: &Value, signature: Option<&PolicySignature>) -> Value {
    let mut event =
        json!({"version": format!("v{version}"), "name": "signed", "rules": signed_rules});
    if let Some(signature) = signature {
        event["signed"] =
            json!({"rules": signed_rules, "signature": signature, "disabledRules": []});
    }
    event
}

fn sign(key: &SigningKey, org: &str, version: u64, rules: &Value) -> PolicySignature {
    key.sign(
        org,
        v(version),
        &Policy::from_value(&document(rules)).unwrap(),
    )
}

fn pinned(keys: &[&SigningKey]) -> LiveEngine {
    LiveEngine::with_signatures(
        EngineConfig::default(),
        Some(SignatureCheck {
            keys: KeyRing::new(keys.iter().map(|k| k.public_key()).collect()),
            org_id: "acme".into(),
        }),
    )
}

fn apply(live: &LiveEngine, event: &Value) -> Result<Applied, String> {
    let update = PolicyUpdate::from_event(&event.to_string()).unwrap();
    live.apply_update(&update).map_err(|e| e.to_string())
}

#[test]
fn only_signed_versions_for_the_agents_org_run() {
    let key = SigningKey::generate().unwrap();
    let live = pinned(&[&key]);

    // Unsigned: refused, nothing runs (fail closed).
    assert_eq!(
        apply(&live, &event(1, &rules(5), None)).unwrap_err(),
        "policy v1 is not signed, and this agent accepts only signed policies"
    );
    assert_eq!(live.version(), None);
    assert_eq!(
        live.status().last_error.as_deref(),
        Some("policy v1 is not signed, and this agent accepts only signed policies")
    );

    // Signed for another org (same operator key): refused.
    let other_org = sign(&key, "globex", 1, &rules(5));
    assert_eq!(
        apply(&live, &event(1, &rules(5), Some(&other_org))).unwrap_err(),
        format!(
            "policy v1 of org `acme`: the signature by key `{}` does not match (tampered document, or signed for another org or version)",
            key.id()
        )
    );

    let good = sign(&key, "acme", 1, &rules(5));
    assert!(matches!(
        apply(&live, &event(1, &rules(5), Some(&good))),
        Ok(Applied::Swapped { previous: None })
    ));
    assert_eq!(live.version(), Some(v(1)));
    assert_eq!(live.status().last_error, None);
    assert_eq!(live.applied().unwrap().signature, Some(good));
}

#[test]
fn tampering_by_the_server_is_refused_and_the_running_policy_stays() {
    let key = SigningKey::generate().unwrap();
    let live = pinned(&[&key]);
    let v1 = sign(&key, "acme", 1, &rules(5));
    apply(&live, &event(1, &rules(5), Some(&v1))).unwrap();

    // A tampered rule in the signed part.
    let v2 = sign(&key, "acme", 2, &rules(10));
    let mut tampered = event(2, &rules(10), Some(&v2));
    tampered["signed"]["rules"][0]["config"]["threshold"] = json!(1);
    let err = apply(&live, &tampered).unwrap_err();
    assert!(err.contains("does not match"), "{err}");
    // A tampered version: v2's signature sent as v3.
    let err = apply(&live, &event(3, &rules(10), Some(&v2))).unwrap_err();
    assert_eq!(
        err,
        format!(
            "policy v3 of org `acme`: the signature by key `{}` does not match (tampered document, or signed for another org or version)",
            key.id()
        )
    );
    assert_eq!(live.version(), Some(v(1)));

    // Resolved rules the server changed are ignored: the signed ones run.
    let mut swapped = event(2, &rules(10), Some(&v2));
    swapped["rules"] = rules(1_000_000);
    apply(&live, &swapped).unwrap();
    let running = live.applied().unwrap().policy;
    assert_eq!(running, Policy::from_value(&document(&rules(10))).unwrap());

    // A replay of the older signed v1.
    assert_eq!(
        apply(&live, &event(1, &rules(5), Some(&v1))).unwrap_err(),
        "policy v1 is not newer than v2, which this agent already applied (replay or downgrade refused)"
    );
    assert_eq!(live.version(), Some(v(2)));
}

#[test]
fn overrides_may_only_disable_signed_rules() {
    let key = SigningKey::generate().unwrap();
    let live = pinned(&[&key]);
    let signature = sign(&key, "acme", 1, &rules(5));
    let mut disabled = event(1, &rules(5), Some(&signature));
    disabled["signed"]["disabledRules"] = json!([1]);
    apply(&live, &disabled).unwrap();
    let running = live.applied().unwrap().policy;
    assert!(running.rules[0].enabled);
    assert!(!running.rules[1].enabled);

    let mut out_of_range = event(1, &rules(5), Some(&signature));
    out_of_range["signed"]["disabledRules"] = json!([7]);
    assert_eq!(
        apply(&live, &out_of_range).unwrap_err(),
        "policy v1: `disabledRules` names rule 7, but the policy has 2 rules"
    );
}

#[test]
fn a_rotation_accepts_either_key_and_a_revoked_key_is_refused() {
    let old = SigningKey::generate().unwrap();
    let new = SigningKey::generate().unwrap();
    let live = pinned(&[&old, &new]);
    apply(
        &live,
        &event(1, &rules(5), Some(&sign(&old, "acme", 1, &rules(5)))),
    )
    .unwrap();
    apply(
        &live,
        &event(2, &rules(6), Some(&sign(&new, "acme", 2, &rules(6)))),
    )
    .unwrap();
    assert_eq!(live.version(), Some(v(2)));

    // The old key revoked: only the new one is pinned.
    let live = pinned(&[&new]);
    let err = apply(
        &live,
        &event(3, &rules(7), Some(&sign(&old, "acme", 3, &rules(7)))),
    )
    .unwrap_err();
    assert_eq!(
        err,
        format!(
            "policy v3 is signed by key `{}`, which is not one of the pinned keys ({})",
            old.id(),
            new.id()
        )
    );
}

#[test]
fn a_rollback_goes_only_to_the_fallback_the_running_version_was_signed_with() {
    let key = SigningKey::generate().unwrap();
    let live = pinned(&[&key]);
    let v1 = sign(&key, "acme", 1, &rules(5));
    let v2 = key.sign_with_rollout(
        "acme",
        v(2),
        &Policy::from_value(&document(&rules(6))).unwrap(),
        Some(RolloutTerms {
            fallback: Some(v(1)),
        }),
    );
    apply(&live, &event(1, &rules(5), Some(&v1))).unwrap();
    apply(&live, &event(2, &rules(6), Some(&v2))).unwrap();

    // v1 again without a rollback marker is a replay.
    assert!(
        apply(&live, &event(1, &rules(5), Some(&v1)))
            .unwrap_err()
            .contains("replay or downgrade refused")
    );
    // As the rollback of v2, which names v1 as its fallback: accepted.
    let mut rollback = event(1, &rules(5), Some(&v1));
    rollback["rollbackFrom"] = json!("v2");
    apply(&live, &rollback).unwrap();
    assert_eq!(live.version(), Some(v(1)));

    // v3 names no fallback: no rollback from it.
    let v3 = sign(&key, "acme", 3, &rules(7));
    apply(&live, &event(3, &rules(7), Some(&v3))).unwrap();
    let mut rollback = event(1, &rules(5), Some(&v1));
    rollback["rollbackFrom"] = json!("v3");
    assert_eq!(
        apply(&live, &rollback).unwrap_err(),
        "policy v1 refused: rolling back from v3 to v1 is not what v3's signature allows (it names no fallback)"
    );
    // A rollback marker naming a version that is not running is no rollback at all.
    let mut stale = event(1, &rules(5), Some(&v1));
    stale["rollbackFrom"] = json!("v2");
    assert!(
        apply(&live, &stale)
            .unwrap_err()
            .contains("replay or downgrade refused")
    );
    assert_eq!(live.version(), Some(v(3)));
}

#[test]
fn unpinned_agents_follow_server_rollbacks_but_refuse_other_older_versions() {
    let live = LiveEngine::new(EngineConfig::default());
    apply(&live, &event(1, &rules(5), None)).unwrap();
    apply(&live, &event(2, &rules(6), None)).unwrap();
    assert_eq!(
        apply(&live, &event(1, &rules(5), None)).unwrap_err(),
        "policy v1 refused: older than the applied v2"
    );
    let mut rollback = event(1, &rules(5), None);
    rollback["rollbackFrom"] = json!("v2");
    apply(&live, &rollback).unwrap();
    assert_eq!(live.version(), Some(v(1)));
}

#[test]
fn the_signature_and_its_terms_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let policy = Policy::from_value(&document(&rules(5))).unwrap();
    let signature = key.sign_with_rollout(
        "acme",
        v(4),
        &policy,
        Some(RolloutTerms {
            fallback: Some(v(3)),
        }),
    );
    let stored = StoredPolicy {
        version: v(4),
        policy,
        signature: Some(signature),
    };
    let store = StateStore::new(dir.path());
    store.save(&stored).unwrap();
    let loaded = store.load().unwrap().unwrap();
    assert_eq!(loaded, stored);

    // Restored into a pinned engine: the floor is v4, and v4's fallback still allows v3.
    let live = pinned(&[&key]);
    live.restore(loaded).unwrap();
    let v2 = sign(&key, "acme", 2, &rules(5));
    assert!(
        apply(&live, &event(2, &rules(5), Some(&v2)))
            .unwrap_err()
            .contains("replay or downgrade refused")
    );
    let v3 = sign(&key, "acme", 3, &rules(5));
    let mut rollback = event(3, &rules(5), Some(&v3));
    rollback["rollbackFrom"] = json!("v4");
    apply(&live, &rollback).unwrap();
    assert_eq!(live.version(), Some(v(3)));
}

/// The two halves of `apply_update` that the sync task puts the state dir's write between: a
/// checked policy is not running until `apply_checked`, a refusal is recorded at the check, and
/// the policy already running checks as nothing to do.
#[test]
fn a_checked_policy_runs_only_once_applied() {
    let key = SigningKey::generate().unwrap();
    let live = pinned(&[&key]);
    let update = |n: u64, threshold: u32| {
        let event = event(
            n,
            &rules(threshold),
            Some(&sign(&key, "acme", n, &rules(threshold))),
        );
        PolicyUpdate::from_event(&event.to_string()).unwrap()
    };

    let checked = live.check_update(&update(1, 5)).unwrap().unwrap();
    assert_eq!(checked.policy().version, v(1));
    assert!(checked.policy().signature.is_some());
    assert_eq!(live.version(), None, "checked, not running yet");
    assert_eq!(
        live.apply_checked(checked).unwrap(),
        Applied::Swapped { previous: None }
    );
    assert_eq!(live.version(), Some(v(1)));

    // The same version again: nothing to save or run.
    assert!(live.check_update(&update(1, 5)).unwrap().is_none());

    // A refusal at the check keeps v1 and is the last error.
    let unsigned = PolicyUpdate::from_event(&event(2, &rules(6), None).to_string()).unwrap();
    assert_eq!(
        live.check_update(&unsigned).unwrap_err().to_string(),
        "policy v2 is not signed, and this agent accepts only signed policies"
    );
    assert_eq!(live.version(), Some(v(1)));
    assert_eq!(
        live.status().last_error.as_deref(),
        Some("policy v2 is not signed, and this agent accepts only signed policies")
    );

    // Checked, then overtaken by a newer version: applying the older one is refused then.
    let older = live.check_update(&update(2, 6)).unwrap().unwrap();
    live.apply_update(&update(3, 7)).unwrap();
    assert_eq!(
        live.apply_checked(older).unwrap_err().to_string(),
        "policy v2 refused: older than the applied v3"
    );
    assert_eq!(live.version(), Some(v(3)));
}
