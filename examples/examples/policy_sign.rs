//! `policy-sign`: the operator's offline signing tool. The private key stays on the operator's
//! machine; the server stores signatures it cannot make, and agents pinned to the public key
//! (`agent --policy-key FILE`) run only what the key signed.
//!
//! ```text
//! policy-sign keygen --out operator            # operator.key (0600) and operator.pub
//! policy-sign sign --key operator.key --org acme --version v7 policy.json > policy.signed.json
//! policy-sign verify --key operator.pub policy.signed.json
//! ```
//!
//! Exit codes: 0 done, 1 invalid policy or signature, 2 unreadable file or bad usage.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use policy_engine::protocol::{RolloutTerms, SignedPolicy};
use policy_engine::signing::{KeyRing, PublicKey, SigningKey};
use policy_engine::{Policy, PolicyVersion};

/// Sign policy versions with an operator key, offline.
#[derive(Parser)]
#[command(name = "policy-sign", about, long_about = None)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generates a key pair: PREFIX.key (private, mode 0600) and PREFIX.pub (for agents).
    Keygen {
        /// Path prefix of the two files; existing files are never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
    /// Signs a policy document for one org and one version; prints the signed file.
    Sign {
        /// The private key (PKCS#8 PEM).
        #[arg(long)]
        key: PathBuf,
        /// The org the policy is for.
        #[arg(long)]
        org: String,
        /// The version it will be (the org's next version, e.g. `v7`); the server refuses any
        /// other.
        #[arg(long)]
        version: PolicyVersion,
        /// The version agents may fall back to from this one when its rollout is rolled back
        /// (signed with it; without it, agents never go back to an older version).
        #[arg(long)]
        fallback: Option<PolicyVersion>,
        /// Write the signed file here instead of standard output.
        #[arg(long, short)]
        out: Option<PathBuf>,
        /// The policy document.
        policy: PathBuf,
    },
    /// Checks a signed file against one or more public keys, as an agent would.
    Verify {
        /// A public key (PEM); repeat for several (rotation).
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// The signed file.
        signed: PathBuf,
    },
}

/// An error and the exit code it maps to.
struct Failure(u8, String);

fn main() -> ExitCode {
    let args: Args = match examples::parse_args() {
        Ok(args) => args,
        Err(code) => return code,
    };
    let result = match args.command {
        Command::Keygen { out } => keygen(&out),
        Command::Sign {
            key,
            org,
            version,
            fallback,
            out,
            policy,
        } => sign(&key, &org, version, fallback, out.as_deref(), &policy),
        Command::Verify { keys, signed } => verify(&keys, &signed),
    };
    match result {
        Ok(message) => {
            if !message.is_empty() {
                println!("{message}");
            }
            ExitCode::SUCCESS
        }
        Err(Failure(code, message)) => {
            eprintln!("{message}");
            ExitCode::from(code)
        }
    }
}

fn keygen(out: &Path) -> Result<String, Failure> {
    let key = SigningKey::generate().map_err(|e| Failure(2, format!("error: {e}")))?;
    let private = key
        .to_pem()
        .map_err(|e| Failure(2, format!("error: {e}")))?;
    let public = key
        .public_key()
        .to_pem()
        .map_err(|e| Failure(2, format!("error: {e}")))?;
    let key_path = with_suffix(out, "key");
    let pub_path = with_suffix(out, "pub");
    write_new(&key_path, private.as_bytes(), 0o600)?;
    write_new(&pub_path, public.as_bytes(), 0o644)?;
    Ok(format!(
        "key id {}: private key {} (keep it off the server), public key {} (give it to agents with --policy-key)",
        key.id(),
        key_path.display(),
        pub_path.display()
    ))
}

fn sign(
    key: &Path,
    org: &str,
    version: PolicyVersion,
    fallback: Option<PolicyVersion>,
    out: Option<&Path>,
    policy_path: &Path,
) -> Result<String, Failure> {
    if version.number() == 0 {
        return Err(Failure(2, "error: versions start at v1".into()));
    }
    if let Some(fallback) = fallback {
        if fallback.number() == 0 || fallback >= version {
            return Err(Failure(
                2,
                format!(
                    "error: --fallback must be an earlier version than {version}, found {fallback}"
                ),
            ));
        }
    }
    let key = SigningKey::from_pem(&read_text(key)?, &key.display().to_string())
        .map_err(|e| Failure(2, format!("error: {e}")))?;
    let bytes = read(policy_path)?;
    let policy = Policy::from_json(&bytes).map_err(|err| {
        let lines: Vec<String> = err
            .errors
            .iter()
            .map(|e| format!("{}: {e}", policy_path.display()))
            .collect();
        Failure(1, lines.join("\n"))
    })?;
    if let Some(named) = &policy.org_id {
        if named != org {
            return Err(Failure(
                1,
                format!(
                    "{}: org_id: the document names org `{named}`, but --org is `{org}`",
                    policy_path.display()
                ),
            ));
        }
    }
    let signed = SignedPolicy {
        org_id: org.to_owned(),
        version,
        policy: serde_json::from_slice(&bytes)
            .map_err(|e| Failure(1, format!("{}: {e}", policy_path.display())))?,
        signature: key.sign_with_rollout(
            org,
            version,
            &policy,
            fallback.map(|v| RolloutTerms { fallback: Some(v) }),
        ),
    };
    let mut text = serde_json::to_string_pretty(&signed)
        .map_err(|e| Failure(2, format!("error: cannot write the signed file: {e}")))?;
    text.push('\n');
    match out {
        Some(path) => {
            std::fs::write(path, text).map_err(|e| {
                Failure(2, format!("error: cannot write `{}`: {e}", path.display()))
            })?;
            Ok(format!(
                "signed `{}` for org `{org}` as {version} with key {}: {}",
                policy.name,
                key.id(),
                path.display()
            ))
        }
        None => {
            print!("{text}");
            Ok(String::new())
        }
    }
}

fn verify(keys: &[PathBuf], signed_path: &Path) -> Result<String, Failure> {
    let mut pinned = Vec::new();
    for path in keys {
        pinned.push(
            PublicKey::from_pem(&read_text(path)?, &path.display().to_string())
                .map_err(|e| Failure(2, format!("error: {e}")))?,
        );
    }
    let signed = SignedPolicy::from_json(&read(signed_path)?).map_err(|errors| {
        let lines: Vec<String> = errors
            .iter()
            .map(|e| format!("{}: {e}", signed_path.display()))
            .collect();
        Failure(1, lines.join("\n"))
    })?;
    let policy = Policy::from_value(&signed.policy).map_err(|err| {
        let lines: Vec<String> = err
            .errors
            .iter()
            .map(|e| format!("{}: policy.{e}", signed_path.display()))
            .collect();
        Failure(1, lines.join("\n"))
    })?;
    let key_id = KeyRing::new(pinned)
        .verify(&signed.org_id, signed.version, &policy, &signed.signature)
        .map_err(|e| Failure(1, format!("{}: {e}", signed_path.display())))?;
    let fallback = signed
        .signature
        .rollout
        .as_ref()
        .and_then(|terms| terms.fallback)
        .map(|v| format!(", fallback {v}"))
        .unwrap_or_default();
    Ok(format!(
        "valid: `{}` for org `{}` as {}{fallback}, signed by key {key_id}",
        policy.name, signed.org_id, signed.version
    ))
}

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut name = prefix.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), Failure> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| Failure(2, format!("error: cannot create `{}`: {e}", path.display())))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| Failure(2, format!("error: cannot write `{}`: {e}", path.display())))
}

fn read(path: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path)
        .map_err(|e| Failure(2, format!("error: cannot read `{}`: {e}", path.display())))
}

fn read_text(path: &Path) -> Result<String, Failure> {
    String::from_utf8(read(path)?)
        .map_err(|_| Failure(2, format!("error: `{}` is not text", path.display())))
}
