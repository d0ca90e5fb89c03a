//! An agent's credentials: its bearer token and, when known, its id. `enroll` obtains both with
//! an admin token and keeps them in the state dir (`agent.json`, mode 0600); an agent started
//! with only a token learns its id from the server (`GET /api/agents/me`).

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::AgentError;
use crate::executor::durable::write_atomically;
use crate::sync::{ApiClient, TlsTrust};

/// Credentials file in the state dir.
pub const CREDENTIALS_FILE: &str = "agent.json";

/// Who the agent is to the server.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Credentials {
    /// The agent's id; `None` until the server said it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// The bearer token.
    pub token: String,
    /// The org the agent was enrolled into: what an agent pinned to signing keys checks
    /// signatures against (kept locally, so the server cannot change it later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("Credentials")
            .field("agent_id", &self.agent_id)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// The credentials stored in `state_dir` by [`enroll`]; `None` if there are none.
    pub fn load(state_dir: &Path) -> Result<Option<Self>, AgentError> {
        let path = state_dir.join(CREDENTIALS_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|err| AgentError::Credentials {
                        path,
                        message: err.to_string(),
                    })
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(AgentError::Credentials {
                path,
                message: err.to_string(),
            }),
        }
    }

    /// Stores them in `state_dir` (mode 0600, atomically).
    pub fn save(&self, state_dir: &Path) -> Result<PathBuf, AgentError> {
        let path = state_dir.join(CREDENTIALS_FILE);
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        write_atomically(&path, &bytes, 0o600).map_err(|err| AgentError::Credentials {
            path: path.clone(),
            message: err.to_string(),
        })?;
        Ok(path)
    }

    /// What an agent runs with: `token` and `agent_id` as given, completed from the stored
    /// credentials (the stored id only goes with the stored token).
    pub fn resolve(
        token: Option<String>,
        agent_id: Option<String>,
        stored: Option<Credentials>,
    ) -> Option<Self> {
        match (token, stored) {
            (Some(token), Some(stored)) if stored.token == token => Some(Self {
                agent_id: agent_id.or(stored.agent_id),
                token,
                org_id: stored.org_id,
            }),
            (Some(token), _) => Some(Self {
                agent_id,
                token,
                org_id: None,
            }),
            (None, Some(stored)) => Some(Self {
                agent_id: agent_id.or(stored.agent_id),
                token: stored.token,
                org_id: stored.org_id,
            }),
            (None, None) => None,
        }
    }
}

/// What enrolling a new agent takes.
#[derive(Clone, PartialEq, Eq)]
pub struct Enrollment {
    /// An admin token of the org (or a global one).
    pub admin_token: String,
    /// The name to enroll under; `None` is this host's name.
    pub hostname: Option<String>,
    /// The org; `None` is the admin token's.
    pub org_id: Option<String>,
}

impl Enrollment {
    /// An enrollment with `admin_token`, under `hostname` (default: this host's name) into
    /// `org_id` (default: the admin token's).
    pub fn new(admin_token: String, hostname: Option<String>, org_id: Option<String>) -> Self {
        Self {
            admin_token,
            hostname,
            org_id,
        }
    }
}

impl std::fmt::Debug for Enrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrollment")
            .field("hostname", &self.hostname)
            .field("org_id", &self.org_id)
            .finish_non_exhaustive()
    }
}

/// Enrolls a new agent with an admin token (`POST /api/agents/enroll`) and stores its
/// credentials in `state_dir`.
pub async fn enroll(
    server: &str,
    trust: &TlsTrust,
    enrollment: &Enrollment,
    state_dir: &Path,
) -> Result<Credentials, AgentError> {
    let client = ApiClient::new(server, trust)?;
    let hostname = match &enrollment.hostname {
        Some(name) => name.clone(),
        None => std::fs::read_to_string(HOSTNAME_FILE)
            .map(|name| name.trim().to_owned())
            .map_err(AgentError::Hostname)?,
    };
    let enrollment = client
        .enroll(
            &enrollment.admin_token,
            &hostname,
            enrollment.org_id.as_deref(),
        )
        .await
        .map_err(AgentError::Enroll)?;
    std::fs::create_dir_all(state_dir).map_err(|source| AgentError::StateDir {
        path: state_dir.to_path_buf(),
        source,
    })?;
    let credentials = Credentials {
        agent_id: Some(enrollment.agent_id),
        token: enrollment.token,
        org_id: Some(enrollment.org_id),
    };
    let path = credentials.save(state_dir)?;
    tracing::info!(agent = ?credentials.agent_id, hostname, credentials = %path.display(), "enrolled");
    Ok(credentials)
}

/// Where Linux keeps the host's name.
pub(crate) const HOSTNAME_FILE: &str = "/proc/sys/kernel/hostname";

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(id: Option<&str>, token: &str) -> Credentials {
        Credentials {
            agent_id: id.map(str::to_owned),
            token: token.to_owned(),
            org_id: None,
        }
    }

    #[test]
    fn the_stored_id_goes_only_with_the_stored_token() {
        let stored = Some(creds(Some("agent-1"), "t1"));
        let resolve = |token: Option<&str>, id: Option<&str>| {
            Credentials::resolve(
                token.map(str::to_owned),
                id.map(str::to_owned),
                stored.clone(),
            )
        };
        assert_eq!(resolve(None, None), Some(creds(Some("agent-1"), "t1")));
        assert_eq!(
            resolve(Some("t1"), None),
            Some(creds(Some("agent-1"), "t1"))
        );
        assert_eq!(resolve(Some("t2"), None), Some(creds(None, "t2")));
        assert_eq!(
            resolve(Some("t2"), Some("agent-2")),
            Some(creds(Some("agent-2"), "t2"))
        );
        assert_eq!(Credentials::resolve(None, Some("x".into()), None), None);
    }

    #[test]
    fn stored_credentials_round_trip_and_never_show_the_token() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Credentials::load(dir.path()).unwrap(), None);
        let path = creds(Some("agent-1"), "secret").save(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            r#"{"agentId":"agent-1","token":"secret"}"#
        );
        let loaded = Credentials::load(dir.path()).unwrap().unwrap();
        assert_eq!(loaded, creds(Some("agent-1"), "secret"));
        assert!(!format!("{loaded:?}").contains("secret"));
        std::fs::write(&path, "{").unwrap();
        assert_eq!(
            Credentials::load(dir.path()).unwrap_err().to_string(),
            format!(
                "credentials `{}`: EOF while parsing an object at line 1 column 1",
                path.display()
            )
        );
    }
}
