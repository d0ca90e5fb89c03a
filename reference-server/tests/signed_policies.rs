//! Signed policy versions at the server: a signed file is stored as exactly the version it was
//! signed for with its signature, shown and streamed with it; an org that requires signatures
//! refuses unsigned posts and overrides that do more than disable a rule.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::path::Path;

use crate::common::*;
use policy_engine::signing::SigningKey;
use policy_engine::{Policy, PolicyVersion};
use reference_server::ServerConfig;
use reference_server::fleet::policies::SignedOrgs;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn signed(key: &SigningKey, org: &str, version: u64, document: &Value) -> Value {
    let policy = Policy::from_value(document).unwrap();
    let signature = key.sign(org, PolicyVersion::new(version), &policy);
    json!({
        "orgId": org,
        "version": format!("v{version}"),
        "policy": document,
        "signature": serde_json::to_value(signature).unwrap(),
    })
}

async fn start(require: &[&str]) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let orgs: Vec<String> = require.iter().map(|s| (*s).to_owned()).collect();
    TestServer::start_in(dir, move |path: &Path| ServerConfig {
        signed_orgs: SignedOrgs::new(orgs.clone()),
        ..config(path, true)
    })
    .await
}

#[tokio::test]
async fn a_signed_file_is_stored_as_its_version_with_its_signature() {
    let server = start(&[]).await;
    let key = SigningKey::generate().unwrap();
    let (_, agent) = server.enroll(ADMIN, "web-1").await;
    let mut stream = server.stream(&agent, "default").await;

    let document = block_ip_policy("signed", 5);
    let body = signed(&key, "default", 1, &document);
    let data = server.post_policy(ADMIN, body.clone()).await;
    assert_eq!(data["version"], "v1");
    assert_eq!(data["signature"], body["signature"]);
    assert_eq!(data["rules"], document["rules"]);

    let event = stream.next_policy().await;
    assert_eq!(event.id, "1");
    assert_eq!(event.data["signed"]["signature"], body["signature"]);
    assert_eq!(event.data["signed"]["rules"], document["rules"]);
    assert_eq!(event.data["signed"]["disabledRules"], json!([]));
    assert_eq!(event.data["rules"], document["rules"]);

    // The same file again: v1 is taken; 409 at `version` and nothing stored.
    let (status, answer) = server.post("/api/policy", ADMIN, body).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert_eq!(
        answer["error"],
        json!({"code": "conflict", "path": "version", "message":
            "the policy is signed for v1, but the next version of org `default` is v2: sign the policy again for that version and post it"})
    );
    // Signed for a version far ahead: refused too (no gaps).
    let (status, _) = server
        .post("/api/policy", ADMIN, signed(&key, "default", 7, &document))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    // Survives a restart.
    let server = server.restart().await;
    let (status, active) = server.get("/api/policy/active", ADMIN).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(active["data"]["version"], "v1");
    assert_eq!(active["data"]["signature"]["keyId"], key.id().to_string());
    // An unsigned v2 carries no signature.
    let data = server.post_policy(ADMIN, document).await;
    assert_eq!(data["version"], "v2");
    assert!(data.get("signature").is_none(), "{data}");

    // The list of versions names the signing key of each signed one (the console marks them);
    // one version read alone carries its whole signature.
    let (status, list) = server.get("/api/policy/versions", ADMIN).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let versions = list["data"]["versions"].as_array().unwrap();
    assert_eq!(versions[0]["version"], "v2");
    assert!(versions[0].get("keyId").is_none(), "{list}");
    assert_eq!(versions[1]["version"], "v1");
    assert_eq!(versions[1]["keyId"], key.id().to_string());
    let (_, v1) = server.get("/api/policy/versions/v1", ADMIN).await;
    assert_eq!(v1["data"]["signature"], active["data"]["signature"]);
}

#[tokio::test]
async fn an_org_that_requires_signatures_refuses_unsigned_posts() {
    let server = start(&["acme"]).await;
    let key = SigningKey::generate().unwrap();
    let document = block_ip_policy("p", 5);

    let (status, answer) = server
        .post("/api/policy?org_id=acme", ADMIN, document.clone())
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["error"]["path"], "signature");
    assert_eq!(
        answer["error"]["message"],
        "org `acme` accepts only signed policies: sign the document offline (`policy-sign sign --org acme --version vN`) and post the signed file"
    );
    let (status, _) = server.get("/api/policy/active?org_id=acme", ADMIN).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Checking the document (the console's editor) says the same before anyone posts it.
    let (status, checked) = server
        .post("/api/policy/validate?org_id=acme", ADMIN, document.clone())
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{checked}");
    assert_eq!(checked["error"], answer["error"]);
    let (status, _) = server
        .post("/api/policy/validate", ADMIN, document.clone())
        .await;
    assert_eq!(status, StatusCode::OK);

    // Other orgs are unaffected; the signed file goes through, and checks as it posts (the
    // checking endpoint refused a signed file with `unknown field policy`).
    assert_eq!(
        server.post_policy(ADMIN, document.clone()).await["version"],
        "v1"
    );
    let file = signed(&key, "acme", 1, &document);
    let (status, checked) = server
        .post("/api/policy/validate", ADMIN, file.clone())
        .await;
    assert_eq!(status, StatusCode::OK, "{checked}");
    assert_eq!(
        (
            &checked["data"]["valid"],
            &checked["data"]["orgId"],
            &checked["data"]["version"],
            &checked["data"]["rules"]
        ),
        (
            &json!(true),
            &json!("acme"),
            &json!("v1"),
            &document["rules"]
        )
    );
    let mut broken = file.clone();
    broken["signature"]["algorithm"] = json!("rsa");
    broken["policy"]["rules"][0]["config"]["threshold"] = json!(0);
    let (status, checked) = server
        .post("/api/policy/validate", ADMIN, broken.clone())
        .await;
    let (_, posted) = server.post("/api/policy", ADMIN, broken).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{checked}");
    assert_eq!(
        error_list(&checked),
        [
            (
                "signature.algorithm",
                "unknown algorithm `rsa`, expected `ed25519`"
            ),
            (
                "policy.rules[0].config.threshold",
                "expected an integer from 1 to 1000000, found `0`"
            )
        ]
    );
    assert_eq!(checked["error"], posted["error"]);
    let data = server.post_policy(ADMIN, file).await;
    assert_eq!(data["version"], "v1");
}

#[tokio::test]
async fn the_org_of_a_signed_file_is_the_org_it_goes_to() {
    let server = start(&[]).await;
    let key = SigningKey::generate().unwrap();
    let document = block_ip_policy("p", 5);

    // The query names another org.
    let (status, answer) = server
        .post(
            "/api/policy?org_id=globex",
            ADMIN,
            signed(&key, "acme", 1, &document),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(
        answer["error"]["message"],
        "`?org_id=globex` names another org than the one the policy is signed for (`acme`)"
    );
    // The document names another org.
    let mut other = document.clone();
    other["org_id"] = json!("globex");
    let (status, answer) = server
        .post("/api/policy", ADMIN, signed(&key, "acme", 1, &other))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["error"]["path"], "policy.org_id");
    // An org admin of globex cannot post acme's file.
    let (status, token) = server
        .post(
            "/api/tokens",
            ADMIN,
            json!({"role": "admin", "org_id": "globex"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let globex = token["data"]["token"].as_str().unwrap();
    let (status, _) = server
        .post("/api/policy", globex, signed(&key, "acme", 1, &document))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = server.get("/api/policy/active?org_id=acme", ADMIN).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn malformed_signed_files_are_refused_with_every_path() {
    let server = start(&[]).await;
    let (status, answer) = server
        .post(
            "/api/policy",
            ADMIN,
            json!({
                "orgId": "default",
                "version": "v1",
                "policy": {"name": "p", "rules": [{"type": "block_ip", "config": {"trigger": "x"}}]},
                "signature": {"keyId": "k", "algorithm": "rsa", "value": "AAAA"}
            }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    // The file's own errors and its document's, in one answer (a probe found the document's
    // hidden behind the signature's).
    assert_eq!(
        error_list(&answer),
        [
            (
                "signature.algorithm",
                "unknown algorithm `rsa`, expected `ed25519`"
            ),
            (
                "policy.rules[0].config.threshold",
                "missing required field `threshold`"
            ),
            (
                "policy.rules[0].config.duration",
                "missing required field `duration`"
            ),
            (
                "policy.rules[0].config.scope",
                "missing required field `scope`"
            ),
        ]
    );

    let key = SigningKey::generate().unwrap();
    let valid = block_ip_policy("p", 5);
    let mut body = signed(&key, "default", 1, &valid);
    body["policy"]["rules"][0]["config"]["threshold"] = json!(0);
    let (status, answer) = server.post("/api/policy", ADMIN, body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["error"]["path"], "policy.rules[0].config.threshold");

    // A document with a stray `signature` is a document with an unknown field, as `validate`
    // says (probe 6: the server read it as a signed file and named seven wrong errors).
    let mut stray = block_ip_policy("p", 5);
    stray["signature"] = json!("abc");
    for path in ["/api/policy", "/api/policy/validate"] {
        let (status, answer) = server.post(path, ADMIN, stray.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {answer}");
        let errors = error_list(&answer);
        assert_eq!(errors.len(), 1, "{path}: {answer}");
        assert_eq!(errors[0].0, "signature", "{path}: {answer}");
        assert!(
            errors[0].1.starts_with("unknown field `signature`"),
            "{path}: {answer}"
        );
    }
    // An error at the document's root has the root's path, `""`, in the envelope too.
    let (status, answer) = server.post("/api/policy", ADMIN, json!([1])).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(
        answer["error"],
        json!({"code": "validation_failed", "message": "expected an object, found an array",
               "path": "", "errors": [{"path": "", "message": "expected an object, found an array"}]})
    );
    let (status, _) = server.get("/api/policy/active", ADMIN).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn under_a_signature_overrides_may_only_disable_rules() {
    let server = start(&[]).await;
    let key = SigningKey::generate().unwrap();
    let (agent_id, agent) = server.enroll(ADMIN, "web-1").await;
    let document = block_ip_policy("p", 5);
    server
        .post_policy(ADMIN, signed(&key, "default", 1, &document))
        .await;
    let mut stream = server.stream(&agent, "default").await;
    assert_eq!(stream.next_policy().await.id, "1");

    let path = format!("/api/policy/agent/{agent_id}/overrides");
    let (status, answer) = server
        .put(
            &path,
            ADMIN,
            json!([{"rule": 0, "config": {"threshold": 500}}, {"rule": 1, "enabled": true}]),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    let errors: Vec<(String, String)> = answer["error"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["path"].as_str().unwrap().to_owned(),
                e["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        errors,
        [
            ("[0].config".to_owned(), "v1 of org `default` is signed: an override may only disable a rule (`\"enabled\": false`); change its config in a newly signed version".to_owned()),
            ("[1].enabled".to_owned(), "v1 of org `default` is signed: an override may only disable a rule, not enable one".to_owned()),
        ]
    );

    let (status, answer) = server
        .put(&path, ADMIN, json!([{"rule": 1, "enabled": false}]))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let event = stream.next_policy().await;
    assert_eq!(event.data["signed"]["disabledRules"], json!([1]));
    assert_eq!(event.data["signed"]["rules"], document["rules"]);
    assert_eq!(event.data["rules"][1]["enabled"], json!(false));
}
