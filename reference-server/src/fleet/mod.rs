//! The fleet domain: what the server does, independent of HTTP. Each module takes exactly what
//! it needs (the [`Store`](crate::store::Store), the [`Publisher`] of the event streams, the
//! [`Notifier`](notify::Notifier), the caller's [`Principal`](crate::auth::Principal)) and
//! typed inputs, never the app state or a request.
//!
//! - [`policies`]: publishing versions, the active policy, an agent's resolved rules, overrides
//!   ([`overrides`] holds their format and validation); [`plan`]: what a publication would do
//!   (the dry run);
//! - [`agents`]: enrollment, identity, heartbeats, the status list, tokens;
//! - [`streams`]: the event streams, the publisher that pushes the store's numbered changes in
//!   order, what a new stream gets first; [`stream_changes`]: one store change turned into
//!   frames (the version each stream is assigned, after a rollout too); [`replicas`]: the notices of other server replicas' commits (a shared database);
//! - [`reports`]: what the server does with an agent's report, one workflow per kind, and
//!   report-id idempotency;
//! - [`rollouts`]: staged rollouts, the gate and rollback ([`health`]: its rate criteria);
//!   [`assignment`]: which version each agent gets;
//! - [`blocks`], [`approvals`]: fleet blocks and approval requests; [`budgets`]: the org's
//!   fleet-block budget;
//! - [`notify`]: alert channels and delivery; [`audit`]: the trail;
//! - [`views`]: records as the protocol shows them; [`sweeper`]: expiry in the background;
//! - [`changes`]: what changed, for the admin event streams of the console; [`admin`]: who an
//!   admin token is and which orgs it may pick.
//! - [`gauges`]: the fleet's figures for the metrics (agents online and outdated, versions,
//!   streams, approvals by org).

pub mod admin;
pub mod agents;
pub mod approvals;
pub mod assignment;
pub mod audit;
pub mod blocks;
pub mod budgets;
pub mod changes;
pub mod checks;
pub mod gauges;
pub mod health;
pub mod notify;
pub mod overrides;
pub mod plan;
pub mod policies;
pub mod quotas;
pub mod replicas;
pub mod reports;
pub mod rollouts;
pub mod shadows;
pub mod stream_changes;
pub mod streams;
pub mod sweeper;
pub mod views;

pub use streams::{AgentOverrides, EventHub, Publisher, StreamView};
