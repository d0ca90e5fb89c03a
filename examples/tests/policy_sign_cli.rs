//! `policy-sign` as an operator runs it: keygen, sign, verify; tampering, another key, a key
//! rotation, and the errors that say which file and what.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use examples::example_bin;

const POLICY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../policy-engine/tests/data/policies/valid/api-page-example.json"
);

fn run(args: &[&str]) -> Output {
    Command::new(example_bin("policy-sign"))
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn keygen(dir: &Path, name: &str) -> String {
    let prefix = dir.join(name);
    let output = run(&["keygen", "--out", prefix.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let line = text(&output.stdout);
    line.strip_prefix("key id ")
        .and_then(|rest| rest.split(':').next())
        .unwrap()
        .to_owned()
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).to_str().unwrap().to_owned()
}

#[test]
fn keygen_sign_verify_and_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let id = keygen(dir.path(), "operator");
    assert_eq!(id.len(), 16);
    let mode = std::fs::metadata(dir.path().join("operator.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let signed = path(dir.path(), "policy.signed.json");
    let output = run(&[
        "sign",
        "--key",
        &path(dir.path(), "operator.key"),
        "--org",
        "acme",
        "--version",
        "v3",
        "--out",
        &signed,
        POLICY,
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(
        text(&output.stdout),
        format!(
            "signed `Block Brute Force Sources` for org `acme` as v3 with key {id}: {signed}\n"
        )
    );

    let output = run(&[
        "verify",
        "--key",
        &path(dir.path(), "operator.pub"),
        &signed,
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(
        text(&output.stdout),
        format!("valid: `Block Brute Force Sources` for org `acme` as v3, signed by key {id}\n")
    );

    // Tampered rule, tampered version, tampered org: each exit 1 with the reason.
    let original = std::fs::read_to_string(&signed).unwrap();
    for (from, to, version, org) in [
        ("\"threshold\": 50", "\"threshold\": 5000", "v3", "acme"),
        ("\"version\": \"v3\"", "\"version\": \"v9\"", "v9", "acme"),
        ("\"orgId\": \"acme\"", "\"orgId\": \"other\"", "v3", "other"),
    ] {
        assert!(original.contains(from), "{from} not in {original}");
        std::fs::write(&signed, original.replace(from, to)).unwrap();
        let output = run(&[
            "verify",
            "--key",
            &path(dir.path(), "operator.pub"),
            &signed,
        ]);
        assert_eq!(output.status.code(), Some(1));
        assert_eq!(
            text(&output.stderr),
            format!(
                "{signed}: policy {version} of org `{org}`: the signature by key `{id}` does not match (tampered document, or signed for another org or version)\n"
            )
        );
    }
}

#[test]
fn another_key_is_refused_and_rotation_accepts_either() {
    let dir = tempfile::tempdir().unwrap();
    let old = keygen(dir.path(), "old");
    let new = keygen(dir.path(), "new");
    let signed = path(dir.path(), "signed.json");
    let output = run(&[
        "sign",
        "--key",
        &path(dir.path(), "new.key"),
        "--org",
        "default",
        "--version",
        "v1",
        "--out",
        &signed,
        POLICY,
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));

    let output = run(&["verify", "--key", &path(dir.path(), "old.pub"), &signed]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        text(&output.stderr),
        format!(
            "{signed}: policy v1 is signed by key `{new}`, which is not one of the pinned keys ({old})\n"
        )
    );
    let output = run(&[
        "verify",
        "--key",
        &path(dir.path(), "old.pub"),
        "--key",
        &path(dir.path(), "new.pub"),
        &signed,
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));

    // A version signed with the version its rollout may fall back to.
    let output = run(&[
        "sign",
        "--key",
        &path(dir.path(), "new.key"),
        "--org",
        "default",
        "--version",
        "v4",
        "--fallback",
        "v3",
        "--out",
        &signed,
        POLICY,
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let output = run(&["verify", "--key", &path(dir.path(), "new.pub"), &signed]);
    assert_eq!(
        text(&output.stdout),
        format!(
            "valid: `Block Brute Force Sources` for org `default` as v4, fallback v3, signed by key {new}\n"
        )
    );
    let output = run(&[
        "sign",
        "--key",
        &path(dir.path(), "new.key"),
        "--org",
        "default",
        "--version",
        "v4",
        "--fallback",
        "v4",
        POLICY,
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        text(&output.stderr),
        "error: --fallback must be an earlier version than v4, found v4\n"
    );
}

#[test]
fn errors_name_the_file_and_the_place() {
    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path(), "k");
    // keygen never overwrites.
    let output = run(&["keygen", "--out", &path(dir.path(), "k")]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).starts_with(&format!(
            "error: cannot create `{}`: ",
            path(dir.path(), "k.key")
        )),
        "{}",
        text(&output.stderr)
    );

    let bad = path(dir.path(), "bad.json");
    std::fs::write(
        &bad,
        r#"{"name":"x","rules":[{"type":"block_ip","config":{"trigger":"t","treshold":5,"duration":"1h","scope":"host"}}]}"#,
    )
    .unwrap();
    let output = run(&[
        "sign",
        "--key",
        &path(dir.path(), "k.key"),
        "--org",
        "acme",
        "--version",
        "v1",
        &bad,
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        text(&output.stderr),
        format!(
            "{bad}: rules[0].config.treshold: unknown field `treshold`, expected one of `trigger`, `threshold`, `duration`, `scope`, `window`\n{bad}: rules[0].config.threshold: missing required field `threshold`\n"
        )
    );

    let other_org = path(dir.path(), "other-org.json");
    std::fs::write(
        &other_org,
        r#"{"name":"x","org_id":"globex","rules":[{"type":"alert_threshold","config":{"severity":"high","countPerHour":5,"notifyChannels":["email"]}}]}"#,
    )
    .unwrap();
    let output = run(&[
        "sign",
        "--key",
        &path(dir.path(), "k.key"),
        "--org",
        "acme",
        "--version",
        "v1",
        &other_org,
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        text(&output.stderr),
        format!("{other_org}: org_id: the document names org `globex`, but --org is `acme`\n")
    );

    // The public key where the private key belongs.
    let output = run(&[
        "sign",
        "--key",
        &path(dir.path(), "k.pub"),
        "--org",
        "acme",
        "--version",
        "v1",
        POLICY,
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).starts_with(&format!(
            "error: {}: not an Ed25519 private key in PKCS#8 PEM (",
            path(dir.path(), "k.pub")
        )),
        "{}",
        text(&output.stderr)
    );
}
