//! The HTTP side of sync: a rustls client that trusts the server's CA, and the agent endpoints
//! (enroll, heartbeat, event stream).

use std::path::PathBuf;
use std::time::Duration;

use reqwest::{Client, RequestBuilder, Response, StatusCode};
use serde_json::Value;

use super::SyncError;
use crate::protocol::{
    AgentIdentity, EnrollAnswer, Envelope, ErrorEnvelope, HeartbeatAnswer, HeartbeatRequest,
    ReportAnswer,
};

/// Which certificates the agent accepts from the server.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TlsTrust {
    /// The public web PKI (Mozilla's roots, built in).
    #[default]
    WebPki,
    /// The CA certificates in this PEM file (for a self-signed server, its own certificate),
    /// in addition to the built-in roots.
    CaFile(PathBuf),
    /// Any certificate, without checks: for lab setups only, the connection can be intercepted.
    Insecure,
}

impl TlsTrust {
    /// The trust a command line asks for: a CA file if given, else anything if `insecure`, else
    /// the web PKI.
    ///
    /// ```
    /// use policy_engine::sync::TlsTrust;
    /// assert_eq!(TlsTrust::choose(Some("ca.pem".into()), false), TlsTrust::CaFile("ca.pem".into()));
    /// assert_eq!(TlsTrust::choose(None, true), TlsTrust::Insecure);
    /// assert_eq!(TlsTrust::choose(None, false), TlsTrust::WebPki);
    /// ```
    pub fn choose(ca_file: Option<PathBuf>, insecure: bool) -> Self {
        match (ca_file, insecure) {
            (Some(path), _) => Self::CaFile(path),
            (None, true) => Self::Insecure,
            (None, false) => Self::WebPki,
        }
    }
}

/// How long a plain request (enroll, heartbeat) may take in total.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long establishing a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest a pooled connection waits idle for its next request: well below the reference
/// server's wait for the next request on a keep-alive connection (its header-read timeout,
/// 10 s).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// A client for one server.
///
/// ```
/// use policy_engine::sync::{ApiClient, TlsTrust};
/// let client = ApiClient::new("https://127.0.0.1:8443/", &TlsTrust::Insecure).unwrap();
/// assert_eq!(client.url("/api/events"), "https://127.0.0.1:8443/api/events");
/// let err = ApiClient::new("ftp://example.org", &TlsTrust::WebPki).unwrap_err();
/// assert_eq!(err.to_string(), "invalid server URL `ftp://example.org`: expected `https://host:port` (or `http://` for tests)");
/// ```
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: Client,
    base: String,
}

/// The answer to `POST /api/agents/enroll` (the protocol's [`EnrollAnswer`]).
pub type Enrollment = EnrollAnswer;

/// The answer to `POST /api/agents/:id/heartbeat` (the protocol's [`HeartbeatAnswer`]).
pub type HeartbeatReply = HeartbeatAnswer;

impl ApiClient {
    /// A client for the server at `server` (`https://host:port`), trusting `trust`.
    ///
    /// No overall timeout is set on the client, since the event stream stays open for hours;
    /// instead a read that stalls longer than `idle` (three keep-alive periods by default, see
    /// [`ApiClient::with_idle_timeout`]) breaks the connection.
    pub fn new(server: &str, trust: &TlsTrust) -> Result<Self, SyncError> {
        Self::with_idle_timeout(server, trust, Duration::from_secs(45))
    }

    /// Like [`ApiClient::new`], with the longest silence tolerated on a connection.
    pub fn with_idle_timeout(
        server: &str,
        trust: &TlsTrust,
        idle: Duration,
    ) -> Result<Self, SyncError> {
        if !(server.starts_with("https://") || server.starts_with("http://")) {
            return Err(SyncError::ServerUrl {
                url: server.to_owned(),
            });
        }
        let mut builder = Client::builder()
            .use_rustls_tls()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(idle)
            // A pooled connection the server may be closing is not picked for a request (which
            // then failed with "peer closed connection" where the server closed it as the
            // request went out).
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .user_agent(concat!("policy-engine-agent/", env!("CARGO_PKG_VERSION")));
        match trust {
            TlsTrust::WebPki => {}
            TlsTrust::CaFile(path) => {
                let pem = std::fs::read(path).map_err(|cause| SyncError::CaFile {
                    path: path.clone(),
                    cause,
                })?;
                let certs =
                    reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| SyncError::CaPem {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                if certs.is_empty() {
                    return Err(SyncError::CaPem {
                        path: path.clone(),
                        message: "no PEM certificate found".to_owned(),
                    });
                }
                for cert in certs {
                    builder = builder.add_root_certificate(cert);
                }
            }
            TlsTrust::Insecure => builder = builder.danger_accept_invalid_certs(true),
        }
        let http = builder
            .build()
            .map_err(|e| SyncError::Client(error_chain(&e)))?;
        Ok(Self {
            http,
            base: server.trim_end_matches('/').to_owned(),
        })
    }

    /// The full URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Enrolls a new agent with an admin token: `POST /api/agents/enroll`.
    pub async fn enroll(
        &self,
        admin_token: &str,
        hostname: &str,
        org_id: Option<&str>,
    ) -> Result<Enrollment, SyncError> {
        let mut body = serde_json::json!({ "hostname": hostname });
        if let (Some(org), Value::Object(map)) = (org_id, &mut body) {
            map.insert("org_id".to_owned(), Value::String(org.to_owned()));
        }
        let url = self.url("/api/agents/enroll");
        let request = self
            .http
            .post(&url)
            .bearer_auth(admin_token)
            .timeout(REQUEST_TIMEOUT)
            .json(&body);
        send(&url, request).await
    }

    /// Reports the running version, the last error and the ack of the last offered version:
    /// `POST /api/agents/:id/heartbeat`.
    pub async fn heartbeat(
        &self,
        agent_id: &str,
        token: &str,
        request: HeartbeatRequest,
    ) -> Result<HeartbeatReply, SyncError> {
        let url = self.url(&format!("/api/agents/{agent_id}/heartbeat"));
        let request = self
            .http
            .post(&url)
            .bearer_auth(token)
            .timeout(REQUEST_TIMEOUT)
            .json(&request);
        send(&url, request).await
    }

    /// Who `token` is: `GET /api/agents/me`, so an agent needs only its token to start.
    pub async fn identity(&self, token: &str) -> Result<AgentIdentity, SyncError> {
        let url = self.url("/api/agents/me");
        let request = self
            .http
            .get(&url)
            .bearer_auth(token)
            .timeout(REQUEST_TIMEOUT);
        send(&url, request).await
    }

    /// Reports an action this agent took or requests (fleet block, approval request, alert,
    /// outcome): `POST /api/agents/:id/reports` with `body`, a serialized
    /// [`Report`](crate::protocol::Report) (the agent's outbox keeps reports as bytes).
    pub async fn report(
        &self,
        agent_id: &str,
        token: &str,
        body: Vec<u8>,
    ) -> Result<ReportAnswer, SyncError> {
        let url = self.url(&format!("/api/agents/{agent_id}/reports"));
        let request = self
            .http
            .post(&url)
            .bearer_auth(token)
            .timeout(REQUEST_TIMEOUT)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        send(&url, request).await
    }

    /// The request that opens the event stream: `GET /api/events`.
    pub fn events_request(&self, token: &str) -> RequestBuilder {
        self.http.get(self.url("/api/events")).bearer_auth(token)
    }
}

async fn send<T: serde::de::DeserializeOwned>(
    url: &str,
    request: RequestBuilder,
) -> Result<T, SyncError> {
    let response = request.send().await.map_err(|e| SyncError::Transport {
        url: url.to_owned(),
        message: error_chain(&e),
    })?;
    let status = response.status();
    if !status.is_success() {
        return Err(status_error(url, status, response).await);
    }
    let bytes = response.bytes().await.map_err(|e| SyncError::Transport {
        url: url.to_owned(),
        message: error_chain(&e),
    })?;
    serde_json::from_slice::<Envelope<T>>(&bytes)
        .map(|envelope| envelope.data)
        .map_err(|e| SyncError::Response {
            url: url.to_owned(),
            message: e.to_string(),
        })
}

/// The error for a non-2xx answer, with the message from the server's error envelope.
pub(crate) async fn status_error(url: &str, status: StatusCode, response: Response) -> SyncError {
    let body = response.bytes().await.unwrap_or_default();
    let message = serde_json::from_slice::<ErrorEnvelope>(&body)
        .map(|envelope| envelope.error.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(&body).chars().take(200).collect());
    let url = url.to_owned();
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        SyncError::Unauthorized {
            url,
            status: status.as_u16(),
            message,
        }
    } else {
        SyncError::Status {
            url,
            status: status.as_u16(),
            message,
        }
    }
}

/// An error with its sources, since reqwest's own message ("error sending request") hides the
/// cause an operator needs (connection refused, unknown issuer, ...).
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}
