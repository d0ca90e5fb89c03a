//! Why an agent could not start or stopped with an error.

use std::path::PathBuf;

use super::outbox::OutboxError;
use super::source::SourceError;
use crate::executor::HostError;
use crate::sync::SyncError;

/// Why an agent could not start, or why it stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No token given and none stored by an enrollment.
    #[error(
        "no agent credentials: no token given and no `{}` from an enrollment",
        path.display()
    )]
    NoCredentials {
        /// Where enrolled credentials would be.
        path: PathBuf,
    },
    /// The stored credentials cannot be read or written.
    #[error("credentials `{}`: {message}", path.display())]
    Credentials {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// No hostname was given for an enrollment and the host's own cannot be read.
    #[error("cannot read this host's name from `/proc/sys/kernel/hostname` ({0}); give one")]
    Hostname(std::io::Error),
    /// Enrollment failed.
    #[error("enrollment failed: {0}")]
    Enroll(SyncError),
    /// The state dir cannot be created.
    #[error("cannot create state dir `{}`: {source}", path.display())]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The host executor cannot be set up (nftables missing, not root).
    #[error(
        "cannot set up the host executor (it needs root and nftables; a dry run needs neither): {0}"
    )]
    Host(#[from] HostError),
    /// Signing keys are pinned but the org they must sign for is unknown.
    #[error(
        "pinned signing keys need the agent's org: enroll with this state dir (the org is stored with the credentials) or give it (--policy-org)"
    )]
    NoPolicyOrg,
    /// Neither an executor nor a dry run was chosen.
    #[error("no executor: give the agent one, or make it a dry run")]
    NoExecutor,
    /// The server connection cannot be set up (URL, CA file).
    #[error(transparent)]
    Sync(#[from] SyncError),
    /// The outbox cannot be opened.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// An event source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A thread for an event source cannot be started.
    #[error("cannot start a thread for an event source: {0}")]
    Thread(std::io::Error),
    /// The metrics address cannot be bound.
    #[error("cannot serve metrics on `{addr}`: {source}")]
    Metrics {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}
