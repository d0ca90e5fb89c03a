//! What can go wrong between the agent and the server, and why a pushed policy is refused.

use std::path::PathBuf;

use crate::policy::{PolicyError, PolicyVersion};
use crate::signing::SignatureError;

/// Errors talking to the server or setting up the connection.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The CA file given for the server's certificate cannot be read.
    #[error("cannot read CA certificate `{path}`: {cause}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// The I/O error (shown in the message, not chained as a source).
        cause: std::io::Error,
    },
    /// The CA file holds no usable PEM certificate.
    #[error("CA certificate `{path}`: {message}")]
    CaPem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The server URL is not an `http://` or `https://` URL.
    #[error("invalid server URL `{url}`: expected `https://host:port` (or `http://` for tests)")]
    ServerUrl {
        /// The URL as given.
        url: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
    /// The server rejected the token (401) or the token may not do this (403).
    #[error("`{url}` refused the token ({status}): {message}")]
    Unauthorized {
        /// The request URL.
        url: String,
        /// 401 or 403.
        status: u16,
        /// The server's error message.
        message: String,
    },
    /// The server could not be reached or the connection broke.
    #[error("cannot reach `{url}`: {message}")]
    Transport {
        /// The request URL.
        url: String,
        /// What failed.
        message: String,
    },
    /// The server answered with an error status.
    #[error("`{url}` answered {status}: {message}")]
    Status {
        /// The request URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The server's error message.
        message: String,
    },
    /// The server answered 2xx with a body that is not what the API describes.
    #[error("unexpected answer from `{url}`: {message}")]
    Response {
        /// The request URL.
        url: String,
        /// What is wrong with the body.
        message: String,
    },
}

/// Why a policy pushed by the server was not applied; the previous policy keeps running and the
/// refusal goes into the next heartbeat as `lastError`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApplyError {
    /// The event's payload is not a policy event at all.
    #[error("{0}")]
    Malformed(String),
    /// The document does not validate (or a condition does not compile).
    #[error("policy {version} refused: {error}")]
    Invalid {
        /// The version the server gave it.
        version: PolicyVersion,
        /// Every validation error.
        error: PolicyError,
    },
    /// The server offered a version older than the one running, other than as the rollback
    /// of the running version.
    #[error("policy {offered} refused: older than the applied {applied}")]
    Older {
        /// The version offered.
        offered: PolicyVersion,
        /// The version running.
        applied: PolicyVersion,
    },
    /// The agent is pinned to signing keys and the version's signature does not hold (or it
    /// has none, or it is a rollback its signed terms do not allow).
    #[error("{0}")]
    Signature(#[from] SignatureError),
}
