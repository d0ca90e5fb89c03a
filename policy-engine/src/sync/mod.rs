//! Agent <-> server sync (feature `sync`): follow the server's event stream, apply each pushed
//! policy atomically to the running engine, keep the last good one on disk, send heartbeats.
//!
//! The pieces, from the wire inward:
//!
//! - [`ApiClient`]: reqwest over rustls, trusting the web PKI, a CA file or (lab only) anything;
//!   enroll, heartbeat, and the `GET /api/events` request.
//! - [`PolicyUpdate`]: the payload of one `policy` event, read into a version and a document.
//! - [`LiveEngine`]: the engine shared by the event loop and the sync task. A policy is validated
//!   and compiled outside the engine's lock, then swapped in under it with
//!   [`Engine::update_policy`](crate::engine::Engine::update_policy): events see the old policy
//!   or the new one, never a mix, and counters of unchanged rules carry over.
//! - [`StateStore`]: the last known good policy, written atomically (temp file, fsync, rename,
//!   fsync of the dir) with a checksum, read back before the agent connects.
//! - [`PolicySync`]: the tasks that tie it together, with exponential backoff and jitter on
//!   reconnects and a slow retry when the server rejects the token.
//!
//! Invariant: the agent never drops a running policy because of the network or the server. Only
//! a newer (or same-version, re-resolved) valid policy replaces it; anything else is refused,
//! logged and reported as `lastError` in the next heartbeat.

mod backoff;
mod client;
mod error;
pub mod fleet;
mod live;
mod message;
mod shadow;
mod state;
mod task;

pub use backoff::{Backoff, BackoffConfig};
pub use client::{ApiClient, Enrollment, HeartbeatReply, TlsTrust};
pub use error::{ApplyError, SyncError};
pub use fleet::FleetEvents;
pub use live::{Applied, Checked, LiveEngine, SignatureCheck, SyncStatus};
pub use message::{PolicyUpdate, SignedUpdate};
pub use state::{POLICY_FILE, StateError, StateStore, StoredPolicy};
pub use task::{PolicySync, SyncConfig};
