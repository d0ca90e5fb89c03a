//! `--tls-cert/--tls-key`: the server serves an operator's own certificate, and refuses to
//! start with a clear error when the files are wrong.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::path::Path;
use std::time::Duration;

use reference_server::{ServerConfig, TlsMode};

const ADMIN: &str = "tls-files-test-admin";

fn write_certificate(dir: &Path, names: &[&str]) -> (std::path::PathBuf, std::path::PathBuf) {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let generated = rcgen::generate_simple_self_signed(names).unwrap();
    let cert = dir.join("operator-cert.pem");
    let key = dir.join("operator-key.pem");
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

fn config(data_dir: &Path, tls: TlsMode) -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.to_path_buf(),
        tls,
        admin_token: Some(ADMIN.to_owned()),
        ..ServerConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_operators_certificate_and_generates_none() {
    let files = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let (cert, key) = write_certificate(files.path(), &["127.0.0.1", "localhost"]);
    let server = reference_server::start(config(
        data.path(),
        TlsMode::Files {
            cert: cert.clone(),
            key,
        },
    ))
    .await
    .unwrap();

    // A client that trusts only the operator's certificate gets through.
    let pem = std::fs::read(&cert).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .https_only(true)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let response = client
        .get(format!("{}/api/policy/active", server.base_url()))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");

    // A client that trusts a different certificate is refused by its own TLS check.
    let other = tempfile::tempdir().unwrap();
    let (other_cert, _) = write_certificate(other.path(), &["127.0.0.1"]);
    let stranger = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(other_cert).unwrap()).unwrap(),
        )
        .tls_built_in_root_certs(false)
        .build()
        .unwrap();
    let refused = stranger
        .get(format!("{}/api/policy/active", server.base_url()))
        .send()
        .await;
    assert!(refused.is_err(), "a foreign CA was accepted");

    // With operator files, no self-signed certificate is generated into the data dir.
    assert!(!data.path().join("tls/cert.pem").exists());
    server.shutdown().await;
}

#[tokio::test]
async fn wrong_files_are_a_clear_startup_error() {
    let files = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let (cert, key) = write_certificate(files.path(), &["127.0.0.1"]);

    let missing = files.path().join("missing.pem");
    let err = reference_server::start(config(
        data.path(),
        TlsMode::Files {
            cert: cert.clone(),
            key: missing.clone(),
        },
    ))
    .await
    .err()
    .unwrap();
    assert_eq!(
        err.to_string(),
        format!("cannot read a private key from `{}`", missing.display())
    );

    // A key that belongs to another certificate.
    let other = tempfile::tempdir().unwrap();
    let (_, other_key) = write_certificate(other.path(), &["127.0.0.1"]);
    let err = reference_server::start(config(
        data.path(),
        TlsMode::Files {
            cert: cert.clone(),
            key: other_key,
        },
    ))
    .await
    .err()
    .unwrap();
    assert_eq!(err.to_string(), "certificate and key do not match");

    // A key file given as the certificate.
    let err = reference_server::start(config(
        data.path(),
        TlsMode::Files {
            cert: key.clone(),
            key,
        },
    ))
    .await
    .err()
    .unwrap();
    assert_eq!(
        err.to_string(),
        format!(
            "no certificate in `{}`",
            files.path().join("operator-key.pem").display()
        )
    );
}
