//! What the store keeps, as typed records (no SQL types), and the pure rules of how a stored
//! fleet block or approval changes, shared by every backend so that they decide alike.

use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use policy_engine::protocol::{
    ApprovalStatus, PolicySignature, ReportId, ReportKind, ShadowReport, VersionAck, time,
};
use policy_engine::{Action, ActionRecord, Policy, PolicyDuration, PolicyVersion};
use serde::Serialize;
use serde_json::Value;

use crate::clock;

/// A stored policy version.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPolicy {
    /// `pol_...`
    pub id: String,
    /// Org the policy belongs to.
    pub org_id: String,
    /// Version within the org.
    pub version: PolicyVersion,
    /// The validated policy.
    pub policy: Arc<Policy>,
    /// When the version was created.
    pub created_at: DateTime<Utc>,
    /// The operator's signature over this version, when it was posted signed.
    pub signature: Option<PolicySignature>,
}

/// A policy version to store: [`Store::insert_policy`](super::Store::insert_policy).
#[derive(Debug, Clone)]
pub struct NewPolicy {
    /// The org it belongs to.
    pub org_id: String,
    /// The validated policy.
    pub policy: Arc<Policy>,
    /// `pol_...`
    pub id: String,
    /// When it was posted.
    pub created_at: DateTime<Utc>,
    /// The operator's signature and the version it was made for: the store takes the version
    /// only if it is the org's next one.
    pub signed: Option<(PolicyVersion, PolicySignature)>,
}

/// One version of an org's policy as a list shows it: what it is called and when it came,
/// without its rules (read the version for those).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySummary {
    /// `pol_...`
    pub id: String,
    /// Version within the org.
    pub version: PolicyVersion,
    /// The policy's name.
    pub name: String,
    /// Its description, if it has one.
    pub description: Option<String>,
    /// How many rules it has.
    pub rule_count: u64,
    /// How many of them are enabled.
    pub enabled_count: u64,
    /// When the version was created.
    pub created_at: DateTime<Utc>,
    /// The id of the operator key that signed it, when it was posted signed.
    pub key_id: Option<String>,
}

/// A staged rollout of one policy version of an org (see `fleet::rollouts`): the record the
/// store keeps whole (as JSON in SQLite).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// `ro_...`
    pub id: String,
    /// Its org.
    pub org_id: String,
    /// The version rolled out.
    pub version: PolicyVersion,
    /// The version agents outside the stages keep, and the one a rollback returns to.
    pub previous: PolicyVersion,
    /// Where it is.
    pub state: RolloutState,
    /// The stage in force (index into `stages`).
    pub stage: usize,
    /// The stages, in order; each includes the agents of the earlier ones.
    pub stages: Vec<RolloutStage>,
    /// When a stage fails.
    pub gate: RolloutGate,
    /// When the stage in force began, in milliseconds since the epoch.
    pub stage_started_ms: i64,
    /// When it was created.
    pub created_ms: i64,
    /// Last change.
    pub updated_ms: i64,
    /// Why it stopped (a failed gate, an abort), for the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// The stage's agents run the version; it advances when the gate allows.
    Running,
    /// Held at its stage by an operator (the gate still rolls it back).
    Paused,
    /// Every agent of the org runs the version.
    Completed,
    /// A gate failed: the stage's agents were sent the previous version.
    RolledBack,
    /// An operator aborted it: the stage's agents were sent the previous version.
    Aborted,
}

impl RolloutState {
    /// Whether it still decides which agents run the version (running or paused).
    pub fn is_active(self) -> bool {
        matches!(self, Self::Running | Self::Paused)
    }
}

/// One stage: a share of the org's agents (by a stable hash of the agent id) and/or named
/// agents, and how long it soaks before the next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStage {
    /// Percent of the agents, 0 to 100.
    pub percent: u8,
    /// Agents named explicitly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<String>,
    /// Minimum time in this stage before it advances on its own, in seconds.
    pub soak_secs: u64,
}

/// What fails a stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutGate {
    /// Stage agents that may refuse the version or fail to load it (default 0).
    pub max_failures: u32,
    /// Stage agents that may be silent (default 0).
    pub max_silent: u32,
    /// An agent is silent when its last heartbeat is older than this, in seconds (default 300).
    pub silent_after_secs: u64,
    /// Most percent of the stage's events on which a condition failed (`None`: not checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_condition_error_percent: Option<u32>,
    /// Most actions per event of the stage, in percent of the previous version's on the
    /// agents outside the stage (`None`: not checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_action_rate_percent: Option<u32>,
    /// Events needed before a rate is judged (default 100).
    #[serde(default = "default_min_events")]
    pub min_events: u64,
}

/// The default of [`RolloutGate::min_events`].
pub const DEFAULT_MIN_EVENTS: u64 = 100;

fn default_min_events() -> u64 {
    DEFAULT_MIN_EVENTS
}

impl Default for RolloutGate {
    fn default() -> Self {
        Self {
            max_failures: 0,
            max_silent: 0,
            silent_after_secs: 300,
            max_condition_error_percent: None,
            max_action_rate_percent: None,
            min_events: DEFAULT_MIN_EVENTS,
        }
    }
}

/// An enrolled agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRecord {
    /// `agent-...`
    pub id: String,
    /// Org the agent belongs to.
    pub org_id: String,
    /// Hostname given at enrollment.
    pub hostname: String,
    /// When it was enrolled.
    pub enrolled_at: DateTime<Utc>,
    /// Last heartbeat, if any.
    pub last_seen: Option<DateTime<Utc>>,
    /// Version reported in the last heartbeat.
    pub policy_version: Option<PolicyVersion>,
    /// Error reported in the last heartbeat.
    pub last_error: Option<String>,
    /// The last ack it sent: what became of the last version offered to it.
    pub ack: Option<VersionAck>,
    /// The last shadow report it sent (checked), with when it arrived.
    pub shadow: Option<StoredShadowReport>,
}

/// A shadow report as stored with its agent: the report and when the server received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredShadowReport {
    /// When it arrived (the server's clock), in milliseconds since the epoch.
    pub received_ms: i64,
    /// The report.
    pub report: ShadowReport,
}

/// A shadow run of an org (see `fleet::shadows`): a policy document every agent of the org
/// evaluates beside its enforced version without executing it. The record the store keeps
/// whole (as JSON in SQLite).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShadowRun {
    /// Its org.
    pub org_id: String,
    /// Its number in the org: 1, 2, ...
    pub shadow: u64,
    /// The normalized policy document evaluated in shadow.
    pub document: serde_json::Value,
    /// Who started it (`admin`, `admin:<org>`).
    pub started_by: String,
    /// When it started, in milliseconds since the epoch.
    pub started_ms: i64,
    /// When an operator ended it; `None` while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_ms: Option<i64>,
}

/// One heartbeat of an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// The agent.
    pub agent_id: String,
    /// The version it enforces.
    pub policy_version: Option<PolicyVersion>,
    /// Its last error.
    pub last_error: Option<String>,
    /// Its ack, if it sent one (`None` keeps the stored one).
    pub ack: Option<VersionAck>,
    /// Its shadow report, checked, if it sent one (`None` keeps the stored one).
    pub shadow: Option<StoredShadowReport>,
    /// When it arrived.
    pub at: DateTime<Utc>,
}

/// The overrides of one agent, as last stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredOverrides {
    /// The normalized override list.
    pub list: Value,
    /// When it was stored.
    pub updated_at: DateTime<Utc>,
}

/// A block in force for a whole org.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetBlock {
    /// Org.
    pub org_id: String,
    /// Address.
    pub ip: IpAddr,
    /// Duration as reported by the agent whose report set the expiry.
    pub duration: PolicyDuration,
    /// Expiry in milliseconds since the epoch; `None` is permanent.
    pub expires_ms: Option<i64>,
    /// The agent whose report set the expiry.
    pub agent_id: String,
    /// That report's rule index.
    pub rule: Option<u64>,
    /// That report's policy version.
    pub policy_version: Option<PolicyVersion>,
    /// Reports collapsed into this block.
    pub reports: u32,
    /// First report.
    pub created_at: DateTime<Utc>,
    /// Last change of the expiry.
    pub updated_at: DateTime<Utc>,
}

impl FleetBlock {
    /// Whether the block is still in force at `now_ms`.
    pub fn in_force(&self, now_ms: i64) -> bool {
        self.expires_ms.is_none_or(|e| e > now_ms)
    }
}

/// A fleet block reported by an agent.
#[derive(Debug, Clone, PartialEq)]
pub struct NewBlock {
    /// Org of the reporting agent.
    pub org_id: String,
    /// Address.
    pub ip: IpAddr,
    /// Duration of the block.
    pub duration: PolicyDuration,
    /// The reporting agent.
    pub agent_id: String,
    /// Rule index.
    pub rule: u64,
    /// Policy version.
    pub policy_version: PolicyVersion,
    /// Receipt time, milliseconds since the epoch.
    pub now_ms: i64,
}

/// A policy version sent to an agent, with the overrides it was resolved with.
#[derive(Debug, Clone, PartialEq)]
pub struct SentPolicy {
    /// The agent's org.
    pub org_id: String,
    /// The agent.
    pub agent_id: String,
    /// The version.
    pub version: PolicyVersion,
    /// The normalized override list it was resolved with (`[]`: none).
    pub overrides: Value,
    /// When, ms since the epoch.
    pub sent_ms: i64,
}

/// What storing a reported block did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upserted {
    /// The block now in force.
    pub block: FleetBlock,
    /// Whether the report created the block or extended its expiry (then it is pushed to the
    /// other agents); `false` when an equal or later block was already in force.
    pub changed: bool,
}

/// Merges a reported block into the one in force (`existing`, if any): a new address creates
/// it, a later expiry (permanent beats everything) replaces the expiry and becomes its source,
/// an equal or earlier one only counts the report. Expiry is computed at receipt.
pub fn merge_block(existing: Option<FleetBlock>, new: &NewBlock) -> Upserted {
    let existing = existing.filter(|b| b.in_force(new.now_ms));
    let expires_ms = new
        .duration
        .as_duration()
        .map(|d| new.now_ms.saturating_add(clock::millis(d)));
    let later = |old: Option<i64>| match (old, expires_ms) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(old), Some(new)) => new > old,
    };
    let now = clock::from_ms(new.now_ms);
    match existing {
        Some(mut block) if !later(block.expires_ms) => {
            block.reports = block.reports.saturating_add(1);
            Upserted {
                block,
                changed: false,
            }
        }
        existing => Upserted {
            block: FleetBlock {
                org_id: new.org_id.clone(),
                ip: new.ip,
                duration: new.duration,
                expires_ms,
                agent_id: new.agent_id.clone(),
                rule: Some(new.rule),
                policy_version: Some(new.policy_version),
                reports: existing.as_ref().map_or(1, |b| b.reports.saturating_add(1)),
                created_at: existing.as_ref().map_or(now, |b| b.created_at),
                updated_at: now,
            },
            changed: true,
        },
    }
}

/// A stored approval request.
#[derive(Debug, Clone, PartialEq)]
pub struct Approval {
    /// `apr_...`
    pub id: String,
    /// Org.
    pub org_id: String,
    /// The requesting agent.
    pub agent_id: String,
    /// The action awaiting approval, with the rule, version and event of the request.
    pub request: ActionRecord,
    /// Where it stands.
    pub status: ApprovalStatus,
    /// Received, ms since the epoch.
    pub created_ms: i64,
    /// Deadline to approve and execute, ms since the epoch.
    pub expires_ms: i64,
    /// When an admin decided, or (when nobody did) when the server expired it, ms since the
    /// epoch; executing it does not change it.
    pub decided_ms: Option<i64>,
    /// Who decided.
    pub decided_by: Option<String>,
    /// The admin's reason, if given.
    pub reason: Option<String>,
}

/// The address an action is about, if any (the audit's `ip`).
pub fn target_ip(record: &ActionRecord) -> Option<IpAddr> {
    match &record.action {
        Action::BlockIp { ip, .. } => Some(*ip),
        Action::ApprovalRequest { request } => match request.as_ref() {
            Action::BlockIp { ip, .. } => Some(*ip),
            _ => None,
        },
        _ => None,
    }
}

/// An admin's decision on an approval request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The approval.
    pub id: String,
    /// The org the admin is confined to (`None`: the global admin, any org).
    pub org: Option<String>,
    /// Approve, else deny.
    pub approve: bool,
    /// Who decides (the audit's actor).
    pub by: String,
    /// The reason given, if any.
    pub reason: Option<String>,
    /// When, ms since the epoch.
    pub now_ms: i64,
}

/// Why a decision was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum DecideError {
    /// No such approval.
    NotFound,
    /// It belongs to another org.
    OtherOrg(String),
    /// Already decided, expired or executed.
    NotPending(Box<Approval>),
}

/// What a decision does to `approval`.
#[derive(Debug, Clone, PartialEq)]
pub enum Decided {
    /// Approved or denied: store it with its audit entry.
    Changed(Approval),
    /// It had expired before anyone swept it: store that with its audit entry, then refuse.
    Expired(Approval),
    /// Refused without a change.
    Refused(DecideError),
}

/// Applies `decision` to `approval` (the rule every backend follows).
pub fn decide(mut approval: Approval, decision: &Decision) -> Decided {
    if let Some(org) = &decision.org {
        if *org != approval.org_id {
            return Decided::Refused(DecideError::OtherOrg(approval.org_id));
        }
    }
    if approval.status == ApprovalStatus::Pending && approval.expires_ms <= decision.now_ms {
        approval.status = ApprovalStatus::Expired;
        approval.decided_ms = Some(decision.now_ms);
        approval.decided_by = Some("server".to_owned());
        return Decided::Expired(approval);
    }
    if approval.status != ApprovalStatus::Pending {
        return Decided::Refused(DecideError::NotPending(Box::new(approval)));
    }
    approval.status = if decision.approve {
        ApprovalStatus::Approved
    } else {
        ApprovalStatus::Denied
    };
    approval.decided_ms = Some(decision.now_ms);
    approval.decided_by = Some(decision.by.clone());
    approval.reason = decision.reason.clone();
    Decided::Changed(approval)
}

/// The agent's report of what became of an approved action.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    /// The approval.
    pub id: String,
    /// The reporting agent (only the requester's report counts).
    pub agent_id: String,
    /// Executed, else failed.
    pub executed: bool,
    /// When, ms since the epoch.
    pub now_ms: i64,
}

/// One audit entry as written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewEntry {
    /// Org the entry belongs to.
    pub org_id: String,
    /// The agent concerned (reporter, requester, or the target of an override).
    pub agent_id: Option<String>,
    /// Who did it: an agent id, `admin` (global admin), `admin:<org>` (org admin) or `server`.
    pub actor: String,
    /// Index of the rule that decided it.
    pub rule: Option<u64>,
    /// Policy version in force.
    pub policy_version: Option<PolicyVersion>,
    /// What: an action name (`block_ip`, `alert`, ...) or an admin operation (`policy_created`,
    /// `overrides_set`, `approval_approved`, `unblock`, `notify`, ...).
    pub action: String,
    /// The address concerned.
    pub ip: Option<IpAddr>,
    /// How it ended: `executed`, `failed`, `refused`, `requested`, `approved`, `denied`,
    /// `expired`, `delivered`, ...
    pub outcome: String,
    /// Anything else worth keeping (the action JSON, an error message, a channel name).
    pub detail: Option<Value>,
    /// For the entry of a report with a `reportId`: its receipt, written in the same
    /// transaction; a report already received fails the transaction with
    /// [`StoreError::DuplicateReport`](super::StoreError::DuplicateReport).
    pub receipt: Option<ReportReceipt>,
}

/// The filters of `GET /api/audit`; all optional, combined with AND.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Org (always set, from the token).
    pub org_id: String,
    /// `agent=`
    pub agent_id: Option<String>,
    /// `ip=`
    pub ip: Option<IpAddr>,
    /// `action=`
    pub action: Option<String>,
    /// `from=` (inclusive)
    pub from: Option<DateTime<Utc>>,
    /// `to=` (exclusive)
    pub to: Option<DateTime<Utc>>,
    /// `cursor=`: only entries with a smaller id (the `nextCursor` of the previous page).
    pub before_id: Option<i64>,
    /// `limit=`: page size.
    pub limit: u32,
}

/// One audit entry as stored, served as is by `GET /api/audit`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// Increasing id; also the paging cursor.
    pub id: i64,
    /// When.
    #[serde(with = "time::millis")]
    pub time: DateTime<Utc>,
    /// Org.
    pub org_id: String,
    /// Agent concerned.
    pub agent_id: Option<String>,
    /// Who did it.
    pub actor: String,
    /// Rule index.
    pub rule: Option<u64>,
    /// Policy version.
    pub policy_version: Option<String>,
    /// Action or operation.
    pub action: String,
    /// Address.
    pub ip: Option<String>,
    /// Outcome.
    pub outcome: String,
    /// Extra detail.
    pub detail: Option<Value>,
}

/// One page of audit entries, newest first.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditPage {
    /// The entries.
    pub entries: Vec<AuditEntry>,
    /// Pass as `cursor=` for the next (older) page; `null` on the last page.
    pub next_cursor: Option<i64>,
}

/// What the server remembers of a report with a `reportId`: what it did, and its answer once
/// sent (a repeated report gets it instead of being acted on twice).
#[derive(Debug, Clone, PartialEq)]
pub struct ReportReceipt {
    /// The reporting agent.
    pub agent_id: String,
    /// The report's id.
    pub report_id: ReportId,
    /// What the server did with it.
    pub kind: ReportKind,
    /// The answer: written with the effect when it is known before (alerts), else stored after
    /// the effect (absent only if the server stopped in between).
    pub answer: Option<Value>,
}

/// What the metrics report of one org ([`Store::fleet_summary`](super::Store::fleet_summary)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgSummary {
    /// The org.
    pub org_id: String,
    /// Its latest policy version, if it has one.
    pub latest_version: Option<PolicyVersion>,
    /// Its agents, by id.
    pub agents: Vec<AgentRecord>,
    /// How many of its approval requests are in each status (statuses without any left out).
    pub approvals: Vec<(ApprovalStatus, u64)>,
}

/// A change that goes to the event streams of an org. Changes are numbered per org from 1, in
/// the order their transactions commit, without gaps (`seq`): a server replica that reads the
/// changes after the last one it pushed pushes every change once and in order, whichever
/// replica wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The org whose streams get it.
    pub org_id: String,
    /// Its number within the org.
    pub seq: u64,
    /// What changed (ids of the rows to read).
    pub kind: ChangeKind,
}

/// What a [`Change`] is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeKind {
    /// A new policy version.
    Policy {
        /// The version.
        version: PolicyVersion,
    },
    /// The overrides of an agent were replaced.
    Overrides {
        /// The agent.
        agent_id: String,
    },
    /// A fleet block was created or extended by an agent's report.
    Block {
        /// The address.
        ip: IpAddr,
        /// The reporting agent (its own streams do not get the block back).
        reporter: String,
    },
    /// A fleet block was lifted.
    Unblock {
        /// The address.
        ip: IpAddr,
        /// Who lifted it.
        by: String,
    },
    /// An approval request was approved: its agent executes it.
    Approved {
        /// The approval.
        approval_id: String,
        /// The requesting agent.
        agent_id: String,
    },
    /// A rollout was created or changed state or stage: each agent's assigned version may
    /// have changed ([`assign`](crate::fleet::assignment::assign)).
    Rollout {
        /// The rollout.
        id: String,
    },
    /// A shadow run was started: every agent of the org runs it beside its version.
    ShadowStarted {
        /// The run's number in the org.
        shadow: u64,
    },
    /// A shadow run was ended.
    ShadowEnded {
        /// The run's number in the org.
        shadow: u64,
    },
}

impl ChangeKind {
    /// The name stored in the `changes` table.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Policy { .. } => "policy",
            Self::Overrides { .. } => "overrides",
            Self::Block { .. } => "block",
            Self::Unblock { .. } => "unblock",
            Self::Approved { .. } => "approved",
            Self::Rollout { .. } => "rollout",
            Self::ShadowStarted { .. } => "shadow",
            Self::ShadowEnded { .. } => "shadow_end",
        }
    }

    /// The stored columns: `(kind, agent_id, ip, ref, version)`; `ref` is the reporter, the
    /// lifter, the approval id or the rollout id.
    pub fn columns(&self) -> ChangeColumns {
        let mut columns = ChangeColumns {
            kind: self.name().to_owned(),
            ..ChangeColumns::default()
        };
        match self {
            Self::Policy { version } => {
                columns.version = i64::try_from(version.number()).ok();
            }
            Self::Overrides { agent_id } => columns.agent_id = Some(agent_id.clone()),
            Self::Block { ip, reporter } => {
                columns.ip = Some(ip.to_string());
                columns.reference = Some(reporter.clone());
            }
            Self::Unblock { ip, by } => {
                columns.ip = Some(ip.to_string());
                columns.reference = Some(by.clone());
            }
            Self::Approved {
                approval_id,
                agent_id,
            } => {
                columns.agent_id = Some(agent_id.clone());
                columns.reference = Some(approval_id.clone());
            }
            Self::Rollout { id } => columns.reference = Some(id.clone()),
            Self::ShadowStarted { shadow } | Self::ShadowEnded { shadow } => {
                columns.version = i64::try_from(*shadow).ok();
            }
        }
        columns
    }

    /// The change stored as `columns`; `None` when they do not make one (a row edited by hand).
    pub fn from_columns(columns: ChangeColumns) -> Option<Self> {
        let ip = || columns.ip.as_deref().and_then(|ip| ip.parse().ok());
        Some(match columns.kind.as_str() {
            "policy" => Self::Policy {
                version: PolicyVersion::new(u64::try_from(columns.version?).ok()?),
            },
            "overrides" => Self::Overrides {
                agent_id: columns.agent_id?,
            },
            "block" => Self::Block {
                ip: ip()?,
                reporter: columns.reference?,
            },
            "unblock" => Self::Unblock {
                ip: ip()?,
                by: columns.reference?,
            },
            "approved" => Self::Approved {
                approval_id: columns.reference?,
                agent_id: columns.agent_id?,
            },
            "rollout" => Self::Rollout {
                id: columns.reference?,
            },
            "shadow" => Self::ShadowStarted {
                shadow: u64::try_from(columns.version?).ok()?,
            },
            "shadow_end" => Self::ShadowEnded {
                shadow: u64::try_from(columns.version?).ok()?,
            },
            _ => return None,
        })
    }
}

/// A [`ChangeKind`] as the `changes` table stores it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeColumns {
    /// [`ChangeKind::name`].
    pub kind: String,
    /// The agent concerned.
    pub agent_id: Option<String>,
    /// The address concerned.
    pub ip: Option<String>,
    /// The reporter, the lifter, the approval id or the rollout id.
    pub reference: Option<String>,
    /// The policy version, or the shadow run's number.
    pub version: Option<i64>,
}

/// The result of a write whose change may go to the event streams, with the number of that
/// change (`None` when nothing is pushed: a duplicate block report, a denial, a missing block).
#[derive(Debug, Clone, PartialEq)]
pub struct Pushed<T> {
    /// What the write returns.
    pub value: T,
    /// The [`Change::seq`] of the change it recorded.
    pub seq: Option<u64>,
}

impl Pushed<()> {
    /// A write that returns nothing and recorded change `seq`.
    pub fn change(seq: u64) -> Self {
        Self {
            value: (),
            seq: Some(seq),
        }
    }
}

/// What a new event stream starts from: the state of its org and agent as of change `seq`,
/// read in one transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSnapshot {
    /// The org's last change included.
    pub seq: u64,
    /// The latest policy version.
    pub policy: Option<StoredPolicy>,
    /// The org's latest rollout.
    pub rollout: Option<Rollout>,
    /// The version agents outside the rollout's stage (or all, after its rollback) run: the
    /// rollout's previous version, when the rollout is of the latest version.
    pub fallback: Option<StoredPolicy>,
    /// The agent's overrides.
    pub overrides: Option<StoredOverrides>,
    /// Fleet blocks in force.
    pub blocks: Vec<FleetBlock>,
    /// The agent's approved requests not yet executed.
    pub approved: Vec<Approval>,
    /// The org's latest shadow run, ended or not.
    pub shadow: Option<ShadowRun>,
}

/// An alert delivery queued with the alert's audit entry (one per channel).
#[derive(Debug, Clone, PartialEq)]
pub struct NewDelivery {
    /// The alert's org.
    pub org_id: String,
    /// The channel's name.
    pub channel: String,
    /// The alert (the notifier's JSON; the store does not read it).
    pub alert: Value,
}

/// A queued delivery not yet done (delivered, or given up after its retries).
#[derive(Debug, Clone, PartialEq)]
pub struct PendingDelivery {
    /// Its id: increasing in the order deliveries were queued.
    pub id: i64,
    /// The channel's name.
    pub channel: String,
    /// The alert.
    pub alert: Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(duration: &str, now_ms: i64) -> NewBlock {
        NewBlock {
            org_id: "default".to_owned(),
            ip: "203.0.113.7".parse().unwrap(),
            duration: duration.parse().unwrap(),
            agent_id: format!("agent-{now_ms}"),
            rule: 0,
            policy_version: PolicyVersion::new(1),
            now_ms,
        }
    }

    #[test]
    fn a_later_expiry_wins_and_an_earlier_one_only_counts() {
        let first = merge_block(None, &new("1h", 0));
        assert!(first.changed);
        assert_eq!(first.block.expires_ms, Some(3_600_000));
        let shorter = merge_block(Some(first.block.clone()), &new("10m", 1000));
        assert_eq!((shorter.changed, shorter.block.reports), (false, 2));
        assert_eq!(shorter.block.agent_id, "agent-0");
        let longer = merge_block(Some(shorter.block), &new("2h", 2000));
        assert_eq!((longer.changed, longer.block.reports), (true, 3));
        assert_eq!(longer.block.agent_id, "agent-2000");
        assert_eq!(longer.block.created_at, first.block.created_at);
        let permanent = merge_block(Some(longer.block), &new("permanent", 3000));
        assert_eq!(
            (permanent.changed, permanent.block.expires_ms),
            (true, None)
        );
        let after = merge_block(Some(permanent.block), &new("1w", 4000));
        assert!(!after.changed);
        // An expired block is replaced as if there were none.
        let expired = merge_block(Some(first.block), &new("1m", 3_600_000));
        assert_eq!((expired.changed, expired.block.reports), (true, 1));
    }
}
