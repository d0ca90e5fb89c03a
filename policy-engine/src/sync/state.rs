//! The last known good policy on disk: written atomically after every apply, read at start.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::policy::{Policy, PolicyVersion};
use crate::protocol::PolicySignature;

/// Name of the policy file inside the state dir.
pub const POLICY_FILE: &str = "policy.json";

/// Format number written into the file; a file of another format is ignored.
const FORMAT: u32 = 1;

/// A policy as stored on disk, with the version the server gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPolicy {
    /// The server's version of the policy.
    pub version: PolicyVersion,
    /// The validated policy.
    pub policy: Policy,
    /// The operator's signature of the version, when it was signed (its rollout terms decide
    /// which older version a rollback may return to).
    pub signature: Option<PolicySignature>,
}

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file exists but cannot be read.
    #[error("cannot read `{path}`: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error (shown in the message, not chained as a source).
        cause: io::Error,
    },
    /// The file was read but is not a complete, intact policy file.
    #[error("`{path}` is corrupted: {message}")]
    Corrupted {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// Writing, syncing or renaming failed; the previous file, if any, is untouched.
    #[error("cannot write `{path}`: {cause}")]
    Write {
        /// The file (or directory) being written.
        path: PathBuf,
        /// The I/O error (shown in the message, not chained as a source).
        cause: io::Error,
    },
}

/// The on-disk form: the document, its version and a checksum of the document, so that a
/// truncated or bit-flipped file is detected instead of enforced.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PolicyFile {
    format: u32,
    version: PolicyVersion,
    sha256: String,
    policy: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signature: Option<PolicySignature>,
}

/// The agent's state dir: where the last known good policy lives.
///
/// ```
/// use policy_engine::sync::{StateStore, StoredPolicy};
/// use policy_engine::{Policy, PolicyVersion};
/// let dir = std::env::temp_dir().join(format!("state-doc-{}", std::process::id()));
/// let store = StateStore::new(&dir);
/// assert_eq!(store.load().unwrap(), None);
/// let policy = Policy::from_json(br#"{"name":"p","rules":[{"type":"custom",
///     "config":{"condition":"confidence > 0.5","action":"alert"}}]}"#).unwrap();
/// let stored = StoredPolicy { version: PolicyVersion::new(4), policy, signature: None };
/// store.save(&stored).unwrap();
/// assert_eq!(store.load().unwrap(), Some(stored));
/// # std::fs::remove_dir_all(&dir).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    /// A store in `dir`; nothing is touched until [`StateStore::save`] or [`StateStore::load`].
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The state dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the policy file.
    pub fn policy_path(&self) -> PathBuf {
        self.dir.join(POLICY_FILE)
    }

    /// Reads the last known good policy: `Ok(None)` when there is none yet, an error when the
    /// file is unreadable or not intact (the caller warns and goes on without it).
    pub fn load(&self) -> Result<Option<StoredPolicy>, StateError> {
        let path = self.policy_path();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(cause) => return Err(StateError::Read { path, cause }),
        };
        let corrupted = |message: String| StateError::Corrupted {
            path: path.clone(),
            message,
        };
        let file: PolicyFile =
            serde_json::from_slice(&bytes).map_err(|e| corrupted(e.to_string()))?;
        if file.format != FORMAT {
            return Err(corrupted(format!(
                "unknown format {}, expected {FORMAT}",
                file.format
            )));
        }
        let checksum = digest(&file.policy);
        if checksum != file.sha256 {
            return Err(corrupted(format!(
                "checksum mismatch: the file says `{}`, the policy hashes to `{checksum}`",
                file.sha256
            )));
        }
        let policy = Policy::from_value(&file.policy)
            .map_err(|e| corrupted(format!("stored policy is invalid: {e}")))?;
        Ok(Some(StoredPolicy {
            version: file.version,
            policy,
            signature: file.signature,
        }))
    }

    /// Writes `stored` atomically: a temp file in the same dir, fsync, rename over the old file,
    /// fsync the dir. A crash at any point leaves either the old or the new file, never a mix.
    pub fn save(&self, stored: &StoredPolicy) -> Result<(), StateError> {
        let write_err = |path: &Path| {
            let path = path.to_path_buf();
            move |cause| StateError::Write { path, cause }
        };
        fs::create_dir_all(&self.dir).map_err(write_err(&self.dir))?;
        let policy = stored.policy.to_json_value();
        let file = PolicyFile {
            format: FORMAT,
            version: stored.version,
            sha256: digest(&policy),
            policy,
            signature: stored.signature.clone(),
        };
        let mut bytes = serde_json::to_vec_pretty(&file)
            .map_err(|e| write_err(&self.dir)(io::Error::other(e)))?;
        bytes.push(b'\n');

        let target = self.policy_path();
        let temp = self
            .dir
            .join(format!(".{POLICY_FILE}.tmp-{}", std::process::id()));
        let result = write_synced(&temp, &bytes)
            .map_err(write_err(&temp))
            .and_then(|()| fs::rename(&temp, &target).map_err(write_err(&target)));
        if result.is_err() {
            // Best effort: a leftover temp file is harmless but untidy.
            let _ = fs::remove_file(&temp);
        }
        result?;
        // The rename is only durable once the directory entry is on disk.
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(write_err(&self.dir))
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Hex SHA-256 of the compact serialization of `value`.
fn digest(value: &Value) -> String {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(threshold: u32) -> Policy {
        Policy::from_json(
            format!(
                r#"{{"name":"ssh","rules":[{{"type":"block_ip","config":{{"trigger":"brute_force",
                "threshold":{threshold},"duration":"1h","scope":"host"}}}}]}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    fn saved(dir: &Path) -> StateStore {
        let store = StateStore::new(dir);
        store
            .save(&StoredPolicy {
                version: PolicyVersion::new(7),
                policy: policy(5),
                signature: None,
            })
            .unwrap();
        store
    }

    fn load_error(store: &StateStore) -> String {
        store.load().unwrap_err().to_string()
    }

    #[test]
    fn round_trip_overwrites_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = saved(dir.path());
        let newer = StoredPolicy {
            version: PolicyVersion::new(8),
            policy: policy(9),
            signature: None,
        };
        store.save(&newer).unwrap();
        assert_eq!(store.load().unwrap(), Some(newer));
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, [POLICY_FILE]);
    }

    #[test]
    fn missing_dir_means_no_policy() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            StateStore::new(dir.path().join("nope")).load().unwrap(),
            None
        );
    }

    #[test]
    fn truncated_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = saved(dir.path());
        let path = store.policy_path();
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let message = load_error(&store);
        assert_eq!(
            message,
            format!(
                "`{}` is corrupted: EOF while parsing an object at line 10 column 3",
                path.display()
            )
        );
    }

    #[test]
    fn edited_policy_fails_the_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let store = saved(dir.path());
        let path = store.policy_path();
        let text = fs::read_to_string(&path).unwrap();
        let edited = text.replace("\"threshold\": 5", "\"threshold\": 500");
        fs::write(&path, &edited).unwrap();
        let file: Value = serde_json::from_str(&edited).unwrap();
        assert_eq!(
            load_error(&store),
            format!(
                "`{}` is corrupted: checksum mismatch: the file says `{}`, the policy hashes to `{}`",
                path.display(),
                file["sha256"].as_str().unwrap(),
                digest(&file["policy"]),
            )
        );
    }

    #[test]
    fn garbage_and_unknown_format_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        let path = store.policy_path();
        fs::write(&path, b"\x00\xffgarbage").unwrap();
        assert_eq!(
            load_error(&store),
            format!(
                "`{}` is corrupted: expected value at line 1 column 1",
                path.display()
            )
        );
        let policy = serde_json::json!({"name":"p","rules":[]});
        let file = serde_json::json!({
            "format": 2, "version": "v1", "sha256": digest(&policy), "policy": policy,
        });
        fs::write(&path, file.to_string()).unwrap();
        assert_eq!(
            load_error(&store),
            format!(
                "`{}` is corrupted: unknown format 2, expected 1",
                path.display()
            )
        );
    }

    #[test]
    fn intact_but_invalid_policy_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        let policy = serde_json::json!({"name":"p","rules":[]});
        let file = serde_json::json!({
            "format": 1, "version": "v1", "sha256": digest(&policy), "policy": policy,
        });
        fs::write(store.policy_path(), file.to_string()).unwrap();
        let message = load_error(&store);
        assert_eq!(
            message,
            format!(
                "`{}` is corrupted: stored policy is invalid: rules: expected 1 to 1000 rules, found 0",
                store.policy_path().display()
            )
        );
    }

    #[test]
    fn unwritable_dir_is_an_error_and_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = saved(dir.path());
        // A directory where the temp file should go makes the write fail.
        let temp = dir
            .path()
            .join(format!(".{POLICY_FILE}.tmp-{}", std::process::id()));
        fs::create_dir(&temp).unwrap();
        let err = store
            .save(&StoredPolicy {
                version: PolicyVersion::new(9),
                policy: policy(1),
                signature: None,
            })
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot write `{}`: Is a directory (os error 21)",
                temp.display()
            )
        );
        assert_eq!(
            store.load().unwrap().unwrap().version,
            PolicyVersion::new(7)
        );
    }
}
