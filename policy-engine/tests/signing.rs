//! Signed policy versions: what a signature binds (document, org, version), what agents refuse,
//! key files from this crate and from OpenSSL, rotation with two pinned keys.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use policy_engine::protocol::{PolicySignature, RolloutTerms, SignedPolicy};
use policy_engine::signing::{self, KeyRing, PublicKey, SignatureError, SigningKey};
use policy_engine::{Policy, PolicyVersion};

const POLICY: &str = r#"{"name":"Block Brute Force Sources","rules":[
  {"type":"block_ip","config":{"trigger":"brute_force","threshold":50,"duration":"24h","scope":"host"}},
  {"type":"auto_respond","config":{"trigger":"malware","action":"kill_process","minConfidence":0.9}}]}"#;

fn policy(text: &str) -> Policy {
    Policy::from_json(text.as_bytes()).unwrap()
}

fn v(n: u64) -> PolicyVersion {
    PolicyVersion::new(n)
}

#[test]
fn a_signature_verifies_for_its_document_org_and_version_only() {
    let key = SigningKey::generate().unwrap();
    let ring = KeyRing::new(vec![key.public_key()]);
    let original = policy(POLICY);
    let signature = key.sign("acme", v(3), &original);
    assert_eq!(
        ring.verify("acme", v(3), &original, &signature).unwrap(),
        *key.id()
    );

    // A tampered rule: threshold 50 -> 5000.
    let tampered = policy(&POLICY.replace("\"threshold\":50", "\"threshold\":5000"));
    let err = ring
        .verify("acme", v(3), &tampered, &signature)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "policy v3 of org `acme`: the signature by key `{}` does not match (tampered document, or signed for another org or version)",
            key.id()
        )
    );
    // A disabled rule is a different policy too.
    let disabled = policy(&POLICY.replace(
        r#""minConfidence":0.9}}"#,
        r#""minConfidence":0.9},"enabled":false}"#,
    ));
    assert!(matches!(
        ring.verify("acme", v(3), &disabled, &signature),
        Err(SignatureError::BadSignature { .. })
    ));
    // The same document replayed as another version, or for another org.
    assert!(matches!(
        ring.verify("acme", v(4), &original, &signature),
        Err(SignatureError::BadSignature { .. })
    ));
    assert!(matches!(
        ring.verify("other", v(3), &original, &signature),
        Err(SignatureError::BadSignature { .. })
    ));
}

#[test]
fn formatting_and_defaults_do_not_change_what_is_signed() {
    let key = SigningKey::generate().unwrap();
    let compact = policy(POLICY);
    // Same rules with the defaults spelled out, other key order, other whitespace.
    let spelled_out = policy(
        r#"{ "rules": [
          {"enabled": true, "config": {"scope":"host","duration":"24h","threshold":50,"trigger":"brute_force"}, "type": "block_ip"},
          {"type":"auto_respond","enabled":true,"config":{"requireApproval":false,"minConfidence":0.9,"action":"kill_process","trigger":"malware"}}
        ], "name": "Block Brute Force Sources" }"#,
    );
    assert_eq!(
        signing::payload("acme", v(1), &compact, None),
        signing::payload("acme", v(1), &spelled_out, None)
    );
    let signature = key.sign("acme", v(1), &compact);
    KeyRing::new(vec![key.public_key()])
        .verify("acme", v(1), &spelled_out, &signature)
        .unwrap();
}

#[test]
fn the_payload_is_pinned() {
    // A golden payload: changing the canonical form breaks every signature in the field.
    let payload = signing::payload("acme", v(7), &policy(POLICY), None);
    assert_eq!(
        String::from_utf8(payload).unwrap(),
        "policy-engine signed policy v1\n{\"orgId\":\"acme\",\"policy\":{\"name\":\"Block Brute Force Sources\",\"rules\":[{\"config\":{\"duration\":\"24h\",\"scope\":\"host\",\"threshold\":50,\"trigger\":\"brute_force\"},\"enabled\":true,\"type\":\"block_ip\"},{\"config\":{\"action\":\"kill_process\",\"minConfidence\":0.9,\"requireApproval\":false,\"trigger\":\"malware\"},\"enabled\":true,\"type\":\"auto_respond\"}]},\"version\":\"v7\"}"
    );
}

#[test]
fn unknown_keys_and_malformed_signatures_are_refused_with_their_ids() {
    let key = SigningKey::generate().unwrap();
    let other = SigningKey::generate().unwrap();
    let ring = KeyRing::new(vec![key.public_key()]);
    let p = policy(POLICY);
    let signature = other.sign("acme", v(2), &p);
    assert_eq!(
        ring.verify("acme", v(2), &p, &signature)
            .unwrap_err()
            .to_string(),
        format!(
            "policy v2 is signed by key `{}`, which is not one of the pinned keys ({})",
            other.id(),
            key.id()
        )
    );
    // A signature from the other key relabelled with the pinned key's id.
    let relabelled = PolicySignature {
        key_id: key.id().to_string(),
        ..signature.clone()
    };
    assert!(matches!(
        ring.verify("acme", v(2), &p, &relabelled),
        Err(SignatureError::BadSignature { .. })
    ));
    for value in ["", "not base64!", "AAAA", &"A".repeat(88)] {
        let malformed = PolicySignature {
            key_id: key.id().to_string(),
            value: value.to_owned(),
            ..signature.clone()
        };
        let err = ring.verify("acme", v(2), &p, &malformed).unwrap_err();
        assert!(
            matches!(
                err,
                SignatureError::MalformedSignature { .. } | SignatureError::BadSignature { .. }
            ),
            "{value}: {err}"
        );
    }
    let err = ring
        .verify(
            "acme",
            v(2),
            &p,
            &PolicySignature {
                key_id: key.id().to_string(),
                value: "AAAA".into(),
                ..signature
            },
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "policy v2: the signature value is not a base64 Ed25519 signature"
    );
}

#[test]
fn rotation_two_pinned_keys_accept_either() {
    let old = SigningKey::generate().unwrap();
    let new = SigningKey::generate().unwrap();
    let ring = KeyRing::new(vec![old.public_key(), new.public_key()]);
    let p = policy(POLICY);
    assert_eq!(
        ring.verify("acme", v(5), &p, &old.sign("acme", v(5), &p))
            .unwrap(),
        *old.id()
    );
    assert_eq!(
        ring.verify("acme", v(6), &p, &new.sign("acme", v(6), &p))
            .unwrap(),
        *new.id()
    );
    // After the old key is revoked (dropped from the ring) its signatures fail.
    let revoked = KeyRing::new(vec![new.public_key()]);
    assert!(matches!(
        revoked.verify("acme", v(5), &p, &old.sign("acme", v(5), &p)),
        Err(SignatureError::UnknownKey { .. })
    ));
}

#[test]
fn pem_round_trip_and_openssl_key_files() {
    let key = SigningKey::generate().unwrap();
    let again = SigningKey::from_pem(&key.to_pem().unwrap(), "operator.key").unwrap();
    assert_eq!(again.id(), key.id());
    let public = PublicKey::from_pem(&key.public_key().to_pem().unwrap(), "operator.pub").unwrap();
    assert_eq!(public, key.public_key());

    // Files made by `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout`.
    let openssl_key = SigningKey::from_pem(
        include_str!("data/signing/openssl-operator.key"),
        "openssl-operator.key",
    )
    .unwrap();
    let openssl_pub = PublicKey::from_pem(
        include_str!("data/signing/openssl-operator.pub"),
        "openssl-operator.pub",
    )
    .unwrap();
    assert_eq!(openssl_key.public_key(), openssl_pub);
    let p = policy(POLICY);
    KeyRing::new(vec![openssl_pub])
        .verify("default", v(1), &p, &openssl_key.sign("default", v(1), &p))
        .unwrap();
}

#[test]
fn bad_key_files_say_which_file_and_what() {
    let err = PublicKey::from_pem("not a key", "/etc/policy-agent/operator.pub").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/etc/policy-agent/operator.pub: not an Ed25519 public key in PEM ("),
        "{err}"
    );
    // A private key given where a public key is expected.
    let key = SigningKey::generate().unwrap();
    let err = PublicKey::from_pem(&key.to_pem().unwrap(), "operator.pub").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("operator.pub: not an Ed25519 public key in PEM ("),
        "{err}"
    );
    let err =
        SigningKey::from_pem(&key.public_key().to_pem().unwrap(), "operator.key").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("operator.key: not an Ed25519 private key in PKCS#8 PEM ("),
        "{err}"
    );
}

#[test]
fn signed_policy_files_are_read_strictly_with_paths() {
    let key = SigningKey::generate().unwrap();
    let p = policy(POLICY);
    let signed = SignedPolicy {
        org_id: "acme".into(),
        version: v(9),
        policy: serde_json::from_str(POLICY).unwrap(),
        signature: key.sign("acme", v(9), &p),
    };
    let value = serde_json::to_value(&signed).unwrap();
    assert!(SignedPolicy::is_signed_document(&value));
    assert_eq!(SignedPolicy::from_value(&value).unwrap(), signed);
    // A document with a stray `signature` and nothing else of a signed file stays a document
    // (probe 6: the server read it as a broken signed file, with seven wrong errors).
    let mut stray: serde_json::Value = serde_json::from_str(POLICY).unwrap();
    stray["signature"] = serde_json::json!("abc");
    assert!(!SignedPolicy::is_signed_document(&stray));
    let mut partial = stray.clone();
    partial["version"] = serde_json::json!("v3");
    assert!(SignedPolicy::is_signed_document(&partial));

    let bad = serde_json::json!({
        "orgId": "ac me",
        "version": "7",
        "policy": [],
        "signature": {"keyId": "x y", "algorithm": "rsa", "value": 5, "extra": 1},
        "note": "hi"
    });
    let errors: Vec<String> = SignedPolicy::from_value(&bad)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        errors,
        [
            "note: unknown field `note`, expected one of `orgId`, `version`, `policy`, `signature`",
            "orgId: expected 1 to 64 letters, digits, `-`, `_` or `.`, found `ac me`",
            "version: expected a version such as `v7`, found `7`",
            "policy: expected a policy document, found an array",
            "signature.extra: unknown field `extra`, expected one of `keyId`, `algorithm`, `value`, `rollout`",
            "signature.keyId: expected 1 to 64 letters, digits, `-` or `_`, found `x y`",
            "signature.algorithm: unknown algorithm `rsa`, expected `ed25519`",
            "signature.value: expected a string, found `5`",
        ]
    );
    let errors: Vec<String> = SignedPolicy::from_value(&serde_json::json!({"signature": {}}))
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        errors,
        [
            "orgId: missing required field `orgId`",
            "version: missing required field `version`",
            "policy: missing required field `policy`",
            "signature.keyId: missing required field `keyId`",
            "signature.algorithm: missing required field `algorithm`",
            "signature.value: missing required field `value`",
        ]
    );
}

#[test]
fn the_protocol_golden_files_carry_a_real_signature() {
    // policy_event_signed.json and signed_policy.json were signed with the OpenSSL test key;
    // what the agent verifies (the signed rules with name and description) is what was signed.
    let public = PublicKey::from_pem(
        include_str!("data/signing/openssl-operator.pub"),
        "openssl-operator.pub",
    )
    .unwrap();
    let ring = KeyRing::new(vec![public]);
    let file: SignedPolicy =
        SignedPolicy::from_json(include_bytes!("data/protocol/signed_policy.json")).unwrap();
    let policy = Policy::from_value(&file.policy).unwrap();
    ring.verify(&file.org_id, file.version, &policy, &file.signature)
        .unwrap();

    let event: policy_engine::protocol::PolicyEvent =
        serde_json::from_str(include_str!("data/protocol/policy_event_signed.json")).unwrap();
    let signed = event.signed.clone().unwrap();
    let document = serde_json::json!({
        "name": event.name,
        "description": event.description,
        "rules": signed.rules,
    });
    let base = Policy::from_value(&document).unwrap();
    assert_eq!(base, policy);
    ring.verify("acme", event.version, &base, &signed.signature)
        .unwrap();
}

#[test]
fn rollout_terms_are_signed_with_the_version() {
    let key = SigningKey::generate().unwrap();
    let ring = KeyRing::new(vec![key.public_key()]);
    let p = policy(POLICY);
    let terms = RolloutTerms {
        fallback: Some(v(6)),
    };
    let signature = key.sign_with_rollout("acme", v(7), &p, Some(terms.clone()));
    assert_eq!(signature.rollout, Some(terms));
    ring.verify("acme", v(7), &p, &signature).unwrap();
    // The payload carries the terms; without terms it is the same as before.
    let with = String::from_utf8(signing::payload(
        "acme",
        v(7),
        &p,
        signature.rollout.as_ref(),
    ))
    .unwrap();
    assert!(
        with.ends_with(r#""rollout":{"fallback":"v6"},"version":"v7"}"#),
        "{with}"
    );
    // A server that changes or strips the terms breaks the signature.
    for rollout in [
        None,
        Some(RolloutTerms {
            fallback: Some(v(1)),
        }),
    ] {
        let changed = PolicySignature {
            rollout,
            ..signature.clone()
        };
        assert!(matches!(
            ring.verify("acme", v(7), &p, &changed),
            Err(SignatureError::BadSignature { .. })
        ));
    }
}

#[test]
fn an_empty_key_id_is_refused_at_its_path() {
    let value = serde_json::json!({
        "orgId": "acme",
        "version": "v7",
        "policy": {"name": "p", "rules": []},
        "signature": {"keyId": "", "algorithm": "ed25519", "value": "AAAA"}
    });
    let errors: Vec<String> = SignedPolicy::from_value(&value)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .filter(|e| e.starts_with("signature"))
        .collect();
    assert_eq!(
        errors,
        ["signature.keyId: expected a non-empty string, found an empty one"]
    );
}

#[test]
fn numbers_read_back_exactly_so_a_signature_survives_the_wire() {
    // Each of these is what serde_json writes for some f64 (its shortest form). Its default
    // reader may land one unit in the last place off, and then read its own output as another
    // number: 0.9963446783047141 came back as 0.996344678304714, so the agent verified a
    // different document than the operator signed. Numbers are read correctly rounded.
    let key = SigningKey::generate().unwrap();
    let ring = KeyRing::new(vec![key.public_key()]);
    for confidence in [
        "0.9963446783047141",
        "0.9849272623926617",
        "0.9207521332446403",
    ] {
        let text = POLICY.replace("0.9}", &format!("{confidence}}}"));
        let signed = policy(&text);
        let document = serde_json::to_value(signed.to_document()).unwrap();
        assert_eq!(
            document["rules"][1]["config"]["minConfidence"].as_f64(),
            Some(confidence.parse::<f64>().unwrap()),
            "{confidence} was not read as the nearest number"
        );
        let signature = key.sign("acme", v(3), &signed);
        // The server writes the document into its `policy` event; the agent reads it.
        let wire = serde_json::to_string(&document).unwrap();
        let received = policy(&wire);
        assert_eq!(received, signed, "{confidence} changed on the wire: {wire}");
        ring.verify("acme", v(3), &received, &signature)
            .unwrap_or_else(|e| panic!("{confidence}: {e}"));
    }
}
