//! Why a signature, a key or a signed policy was refused.

use crate::policy::PolicyVersion;

/// A signature check or key operation that failed. Every message says what and which key,
/// org or version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// Keys are configured but the policy carries no signature.
    #[error("policy {version} is not signed, and this agent accepts only signed policies")]
    Unsigned {
        /// The version offered.
        version: PolicyVersion,
    },
    /// The signature names a key that is not pinned.
    #[error(
        "policy {version} is signed by key `{key_id}`, which is not one of the pinned keys ({pinned})"
    )]
    UnknownKey {
        /// The version offered.
        version: PolicyVersion,
        /// The key id the signature names.
        key_id: String,
        /// The pinned key ids, comma separated.
        pinned: String,
    },
    /// The signature does not verify for this document, org and version.
    #[error(
        "policy {version} of org `{org_id}`: the signature by key `{key_id}` does not match (tampered document, or signed for another org or version)"
    )]
    BadSignature {
        /// The version offered.
        version: PolicyVersion,
        /// The org it was checked against.
        org_id: String,
        /// The key id the signature names.
        key_id: String,
    },
    /// The signature value is not base64 of 64 bytes.
    #[error("policy {version}: the signature value is not a base64 Ed25519 signature")]
    MalformedSignature {
        /// The version offered.
        version: PolicyVersion,
    },
    /// The policy is for another org than the agent's.
    #[error(
        "policy {version} is signed for org `{signed}`, but this agent belongs to `{expected}`"
    )]
    WrongOrg {
        /// The version offered.
        version: PolicyVersion,
        /// The org in the signed policy.
        signed: String,
        /// The agent's org.
        expected: String,
    },
    /// A version not newer than one already applied: a replay or a downgrade.
    #[error(
        "policy {offered} is not newer than {applied}, which this agent already applied (replay or downgrade refused)"
    )]
    Downgrade {
        /// The version offered.
        offered: PolicyVersion,
        /// The newest version applied so far.
        applied: PolicyVersion,
    },
    /// A rollback to a version the running version's signature does not name as its fallback.
    #[error(
        "policy {offered} refused: rolling back from {applied} to {offered} is not what {applied}'s signature allows ({allowed})"
    )]
    RollbackNotAllowed {
        /// The version offered.
        offered: PolicyVersion,
        /// The version running.
        applied: PolicyVersion,
        /// What the running version's signature allows, in words.
        allowed: String,
    },
    /// A key file that could not be read as an Ed25519 key.
    #[error("{what}: {reason}")]
    Key {
        /// Which key (usually the file name).
        what: String,
        /// What is wrong with it.
        reason: String,
    },
}
