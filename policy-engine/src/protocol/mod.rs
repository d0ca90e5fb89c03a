//! The wire protocol between the policy server and its agents: every JSON shape that crosses
//! the wire, defined once and used by both ends (the reference server writes what the agent's
//! [`sync`](crate::sync) reads, and reads what it writes). No feature needed beyond serde.
//!
//! | where | shape |
//! |---|---|
//! | every answer | [`Envelope`] `{"ok":true,"data"}`, [`ErrorEnvelope`] `{"ok":false,"error"}` |
//! | `GET /api/events` | [`PolicyEvent`] (`event: policy`), [`FleetEvent`]: [`BlockEvent`], [`UnblockEvent`], [`ApprovalEvent`]; [`ShadowEvent`], [`ShadowEndEvent`] |
//! | `POST /api/agents/enroll` | [`EnrollRequest`] -> [`EnrollAnswer`] |
//! | `GET /api/agents/me` | [`AgentIdentity`] |
//! | `POST /api/agents/:id/heartbeat` | [`HeartbeatRequest`] (with [`VersionAck`], [`ShadowReport`]) -> [`HeartbeatAnswer`] |
//! | `POST /api/agents/:id/reports` | [`Report`] (with [`ReportId`], [`ReportOutcome`]) -> [`ReportAnswer`] |
//! | `GET /api/policy/active`, `/api/policy/agent/:id` | [`PolicyView`], [`AgentPolicyView`] |
//! | `GET /api/blocks`, approvals | [`BlockView`], [`ApprovalView`] ([`ApprovalStatus`]) |
//! | executor results in reports | [`Outcome`] `{"outcome":"done","detail"}` |
//!
//! Actions inside events and reports are [`ActionRecord`](crate::ActionRecord)s (CONTRACT
//! section 4); the policy document inside a `policy` event is the API page's, read by
//! [`Policy::from_value`](crate::Policy::from_value). Times are RFC 3339 in UTC with
//! milliseconds ([`time`]); addresses are [`IpAddr`](std::net::IpAddr)s and versions
//! [`PolicyVersion`](crate::PolicyVersion)s on both ends.
//!
//! # Compatibility rule
//!
//! Agents and servers are upgraded at different times, so the protocol changes by adding, never
//! by changing:
//!
//! - **What the agent reads tolerates what it does not know.** Events and answers (every type
//!   here that derives `Deserialize`) have no `deny_unknown_fields`: a newer server may add a
//!   field and older agents ignore it. In particular a new field beside a `policy` event's
//!   document never makes an agent refuse a policy.
//! - **The policy document stays strict.** `name`, `description` and `rules` of a `policy`
//!   event are validated by `Policy::from_value`, which refuses unknown fields anywhere inside
//!   (a rule type, a config field): an agent that does not understand what a policy asks for
//!   refuses it and keeps its last good policy instead of enforcing half of it. So anything that
//!   changes what a policy does goes inside the document; a new top-level field of the event is
//!   metadata by definition.
//! - **What the server reads stays strict.** Requests ([`EnrollRequest`], [`HeartbeatRequest`],
//!   [`Report`]) are read with their `from_value` readers, which refuse unknown fields with
//!   their JSON path (422), as every body the server reads. A newer agent therefore sends a new
//!   request field only to a server that announced it understands it (the heartbeat answer is
//!   where such announcements go: `acceptsAcks` for [`HeartbeatRequest::ack`], `acceptsShadow`
//!   for [`HeartbeatRequest::shadow`]).
//! - **New fields are optional.** A field added later is an `Option` (absent means what it
//!   meant before), so messages of older peers still parse; a known field never changes type or
//!   meaning.
//!
//! The golden files in `policy-engine/tests/data/protocol/` pin every shape; the library's,
//! the agent's and the server's tests all check against them.

pub mod agent;
pub mod envelope;
pub mod fields;
mod outcome;
pub mod report;
pub mod shadow;
pub mod signature;
pub mod stream;
pub mod time;
pub mod views;

pub use agent::{
    AckStatus, AgentIdentity, EnrollAnswer, EnrollRequest, HeartbeatAnswer, HeartbeatRequest,
    VersionAck,
};
pub use envelope::{Envelope, ErrorBody, ErrorEnvelope, ErrorItem};
pub use outcome::Outcome;
pub use report::{Report, ReportAnswer, ReportId, ReportIdError, ReportKind, ReportOutcome};
pub use shadow::{
    ActionSample, CandidateTally, EnforcedTally, MAX_SHADOW_SAMPLES, MAX_SHADOW_SAMPLES_PER_RULE,
    MAX_SHADOW_TARGET_CHARS, RuleTally, SHADOW_END_EVENT, SHADOW_EVENT, ShadowEndEvent,
    ShadowEvent, ShadowReport, action_target,
};
pub use signature::{PolicySignature, RolloutTerms, SignatureAlgorithm, SignedPolicy};
pub use stream::{
    APPROVAL_EVENT, ApprovalEvent, BLOCK_EVENT, BlockEvent, FleetEvent, FleetEventError,
    POLICY_EVENT, PolicyEvent, SignedRules, UNBLOCK_EVENT, UnblockEvent,
};
pub use views::{
    AgentPolicyView, AgentRunning, ApprovalStatus, ApprovalView, BlockView, PolicyView,
};
