//! Persistence behind one interface: [`Store`], an async trait over typed records
//! ([`records`]), so that no backend type (no rusqlite or tokio-postgres connection, row or
//! error) reaches the layers above. Two backends: [`sqlite::SqliteStore`] (embedded, the
//! default, one server) and [`postgres::PgStore`] (several server replicas on one database).
//!
//! Every method is one atomic operation: what must change together (a fleet block and its
//! audit entry, a report's effect and its receipt, a policy version and its [`Change`]) is one
//! call, so a backend can make it one transaction. A method's future resolves only once its
//! change is durable: a request is answered only after its write committed.
//!
//! Writes whose change goes to the agents' event streams record a numbered [`Change`] in the
//! same transaction; [`Store::changes`] reads them back in order, and a backend shared by
//! several servers tells each of them about the others' commits through [`Store::notices`].

pub mod metered;
pub mod postgres;
pub mod records;
pub mod sqlite;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use policy_engine::PolicyVersion;
use policy_engine::policy::Limit;
use policy_engine::protocol::{ApprovalStatus, ReportId};
use serde_json::Value;

pub use records::{
    AgentRecord, Approval, AuditEntry, AuditFilter, AuditPage, Change, ChangeKind, DecideError,
    Decision, Finish, FleetBlock, Heartbeat, NewBlock, NewDelivery, NewEntry, NewPolicy,
    OrgSummary, PendingDelivery, PolicySummary, Pushed, ReportReceipt, Rollout, RolloutGate,
    RolloutStage, RolloutState, SentPolicy, ShadowRun, StoredOverrides, StoredPolicy,
    StoredShadowReport, StreamSnapshot, Upserted,
};

/// How many sends are remembered: an agent's newest this many (version, overrides) rows of its
/// own (a stream opening, an overrides change), and each org's broadcasts of its newest this
/// many versions (a broadcast of a version this many or more below the newest one broadcast
/// is dropped). A report about a send no longer remembered is refused.
pub const MAX_SENT_PER_AGENT: usize = 64;

/// The most agents a [`Store::record_sent`] write may name with one version and override list
/// for them to be remembered one row per agent; more are one broadcast row naming them all
/// (a broadcast to 10,000 agents wrote 10,000 rows, about 250 ms of the database thread on
/// SQLite and 100 ms on PostgreSQL; one row costs a few milliseconds).
pub const SMALL_SENT_BATCH: usize = 16;

/// What separates (and surrounds) the agents named by a broadcast row: agent ids never
/// contain it (an agent id that does is remembered in its own row).
pub const SENT_AGENTS_SEPARATOR: char = '\n';

use crate::auth::{Principal, TokenHash};
use crate::error::ApiError;

/// A [`Store::record_sent`] write as both backends store it.
#[derive(Debug, Default, PartialEq)]
pub struct SentRows<'a> {
    /// Sends remembered per agent (few agents got their version with their overrides), with
    /// their override list as JSON, in agent order.
    pub single: Vec<(&'a SentPolicy, String)>,
    /// Sends to many agents at once, one row each.
    pub broadcasts: Vec<SentBroadcast>,
    /// Per org, the version at or below which its broadcast rows are dropped (the newest
    /// version broadcast here, less [`MAX_SENT_PER_AGENT`]).
    pub broadcast_cuts: Vec<(String, i64)>,
}

/// One version with one override list sent to many agents of an org.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentBroadcast {
    /// The org.
    pub org_id: String,
    /// The version.
    pub version: i64,
    /// The override list, as JSON.
    pub overrides: String,
    /// When (the latest of the sends), ms since the epoch.
    pub sent_ms: i64,
    /// The agents, sorted, each followed by [`SENT_AGENTS_SEPARATOR`], which also leads: one
    /// is named when `\n<agent>\n` occurs ([`sent_agent_needle`]).
    pub agents: String,
}

/// What a broadcast row's `agents` contains when it names `agent_id`.
pub fn sent_agent_needle(agent_id: &str) -> String {
    format!("{SENT_AGENTS_SEPARATOR}{agent_id}{SENT_AGENTS_SEPARATOR}")
}

/// Splits a [`Store::record_sent`] write into the rows to store: per (org, version,
/// overrides), more than [`SMALL_SENT_BATCH`] agents make one broadcast row, fewer one row
/// per agent.
pub fn split_sent(sent: &[SentPolicy]) -> Result<SentRows<'_>, serde_json::Error> {
    use std::collections::{BTreeMap, BTreeSet};
    type Group<'a> = (Vec<&'a SentPolicy>, i64);
    let mut groups: BTreeMap<(&str, u64, String), Group<'_>> = BTreeMap::new();
    for row in sent {
        let key = (
            row.org_id.as_str(),
            row.version.number(),
            serde_json::to_string(&row.overrides)?,
        );
        let (rows, at) = groups.entry(key).or_insert((Vec::new(), row.sent_ms));
        rows.push(row);
        *at = (*at).max(row.sent_ms);
    }
    let mut split = SentRows::default();
    let mut newest: BTreeMap<&str, u64> = BTreeMap::new();
    for ((org_id, version, overrides), (rows, sent_ms)) in groups {
        let (named, odd): (Vec<&SentPolicy>, Vec<&SentPolicy>) = rows
            .into_iter()
            .partition(|row| !row.agent_id.contains(SENT_AGENTS_SEPARATOR));
        let agents: BTreeSet<&str> = named.iter().map(|row| row.agent_id.as_str()).collect();
        if agents.len() <= SMALL_SENT_BATCH {
            let rows = named.into_iter().chain(odd);
            split
                .single
                .extend(rows.map(|row| (row, overrides.clone())));
            continue;
        }
        split
            .single
            .extend(odd.into_iter().map(|row| (row, overrides.clone())));
        let mut list = String::with_capacity(agents.iter().map(|a| a.len() + 1).sum::<usize>() + 1);
        list.push(SENT_AGENTS_SEPARATOR);
        for agent in agents {
            list.push_str(agent);
            list.push(SENT_AGENTS_SEPARATOR);
        }
        let max = newest.entry(org_id).or_default();
        *max = (*max).max(version);
        split.broadcasts.push(SentBroadcast {
            org_id: org_id.to_owned(),
            version: i64::try_from(version).unwrap_or(i64::MAX),
            overrides,
            sent_ms,
            agents: list,
        });
    }
    // By agent: a write's rows then touch each page of the indexes once, in turn (10,000
    // agents in hash order thrashed SQLite's page cache). Stable: an agent's rows keep their
    // order.
    split.single.sort_by(|a, b| a.0.agent_id.cmp(&b.0.agent_id));
    let keep = i64::try_from(MAX_SENT_PER_AGENT).unwrap_or(i64::MAX);
    split.broadcast_cuts = newest
        .into_iter()
        .map(|(org, version)| {
            let version = i64::try_from(version).unwrap_or(i64::MAX);
            (org.to_owned(), version.saturating_sub(keep))
        })
        .collect();
    Ok(split)
}

/// The distinct override lists of `rows` (JSON text with its time), newest first: what
/// [`Store::sent_overrides`] answers.
pub fn newest_lists(mut rows: Vec<(String, i64)>) -> Result<Vec<Value>, serde_json::Error> {
    rows.sort_by_key(|row| std::cmp::Reverse(row.1));
    let mut lists: Vec<Value> = Vec::with_capacity(rows.len());
    for (text, _) in rows {
        let list: Value = serde_json::from_str(&text)?;
        if !lists.contains(&list) {
            lists.push(list);
        }
    }
    Ok(lists)
}

/// A write begun by [`Store::begin_record_sent`]: awaiting it gives its commit's outcome.
#[must_use = "a recording's outcome is known only once it is awaited"]
pub struct Recording(Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>);

impl Recording {
    /// A write that is committed already.
    pub fn done() -> Self {
        Self(Box::pin(std::future::ready(Ok(()))))
    }

    /// A write that commits when `commit` resolves.
    pub fn pending(commit: impl Future<Output = Result<(), StoreError>> + Send + 'static) -> Self {
        Self(Box::pin(commit))
    }
}

impl std::fmt::Debug for Recording {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Recording")
    }
}

impl Future for Recording {
    type Output = Result<(), StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend reported an error.
    #[error("database error: {0}")]
    Backend(String),
    /// The database cannot be reached (refused or lost connection, no pooled connection freed
    /// in time): nothing was written; the same request may succeed later.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// A stored value no longer reads (the file was edited by hand).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The store is closed (the server is shutting down).
    #[error("the database is closed")]
    Closed,
    /// The store could not be opened.
    #[error("cannot open the database: {0}")]
    Open(String),
    /// A signed policy was signed for a version that is not the org's next one.
    #[error("the policy is signed for {signed}, but the next version of org `{org_id}` is {next}")]
    VersionTaken {
        /// The org.
        org_id: String,
        /// The version in the signature.
        signed: PolicyVersion,
        /// The org's next version.
        next: PolicyVersion,
    },
    /// The agent already sent a report with this id (it was acted on once; its answer stands).
    #[error("report `{report_id}` of agent `{agent_id}` was already received")]
    DuplicateReport {
        /// The reporting agent.
        agent_id: String,
        /// The report's id.
        report_id: String,
    },
    /// A shadow run with this number was started already (by another server replica at once).
    #[error("shadow run {shadow} of org `{org_id}` was started meanwhile")]
    ShadowTaken {
        /// The org.
        org_id: String,
        /// The run's number.
        shadow: u64,
    },
    /// A rollout was not as the caller read it: another decision (on another server replica, or
    /// an operator) moved it first.
    #[error("rollout `{id}` was changed meanwhile")]
    RolloutMoved {
        /// The rollout.
        id: String,
    },
}

/// What a backend shared by several servers tells each of them about the others' commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Change `seq` of `org_id` committed: push the org's changes up to it.
    Change {
        /// The org.
        org_id: String,
        /// The change's number.
        seq: u64,
    },
    /// A token was stored (an enrolled agent, an org admin): load it.
    Token(TokenHash),
    /// An agent opened an event stream on another replica: end its stream here (an agent has
    /// one live stream across the replicas).
    StreamOpened {
        /// The agent.
        agent_id: String,
    },
    /// Notices may have been lost (the connection that receives them was down, or they came
    /// faster than they were read): read every org's changes and every token again.
    Resync,
}

/// The `Retry-After` of a 503 for an unreachable database: about a pool's wait for a freed
/// connection.
pub const DATABASE_RETRY_AFTER_SECS: u64 = 5;

impl From<StoreError> for ApiError {
    /// A store failure is the server's problem: 500, logged, not shown; an unreachable
    /// database is 503 with `Retry-After` (logged, its cause not shown); a version, a shadow
    /// run number or a rollout's state taken by another write is the client's: 409 with what to
    /// do.
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(_) => {
                tracing::warn!(%error, "answering 503");
                ApiError::database_unavailable(DATABASE_RETRY_AFTER_SECS)
            }
            StoreError::ShadowTaken { .. } => ApiError::conflict(format!(
                "{error}: read it (`GET /api/policy/shadow`) and start yours again if it is \
                 still wanted"
            )),
            StoreError::VersionTaken { .. } => ApiError::conflict(format!(
                "{error}: sign the policy again for that version and post it"
            ))
            .at("version"),
            StoreError::RolloutMoved { .. } => ApiError::conflict(format!(
                "{error}: read it again and decide on its new state"
            )),
            other => ApiError::internal(other),
        }
    }
}

/// The server's persistent state: policies with per-org versions, agents, hashed tokens,
/// overrides, fleet blocks, approvals, the audit trail and report receipts.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Stores a new policy version of its org: the next number, atomically, so concurrent
    /// writes (on any server sharing the database) never share or skip a version. A signed
    /// policy is stored only as the version it was signed for: [`StoreError::VersionTaken`]
    /// when that is not the org's next one. Records its [`ChangeKind::Policy`].
    async fn insert_policy(&self, new: NewPolicy) -> Result<Pushed<StoredPolicy>, StoreError>;

    /// The latest policy version of `org_id`.
    async fn latest_policy(&self, org_id: String) -> Result<Option<StoredPolicy>, StoreError>;

    /// Versions of `org_id`, newest first: at most `limit`, only those older than `before`
    /// when given (paging).
    async fn policy_versions(
        &self,
        org_id: String,
        before: Option<PolicyVersion>,
        limit: u32,
    ) -> Result<Vec<PolicySummary>, StoreError>;

    /// Every org the store knows of (one with a policy, an agent or an admin token), sorted.
    async fn orgs(&self) -> Result<Vec<String>, StoreError>;

    /// Version `version` of `org_id`'s policy.
    async fn policy(
        &self,
        org_id: String,
        version: PolicyVersion,
    ) -> Result<Option<StoredPolicy>, StoreError>;

    /// Remembers that these policy versions (with these overrides) were sent to these agents,
    /// in one transaction ([`split_sent`]: many agents sent the same are one row); the newest
    /// ones are kept (see [`MAX_SENT_PER_AGENT`]).
    async fn record_sent(&self, sent: Vec<SentPolicy>) -> Result<(), StoreError>;

    /// [`Store::record_sent`] in two steps, so that a broadcast can queue its frames while the
    /// rows are written: once this returns, every store call made afterwards sees the rows
    /// (a report on a frame queued after it is checked against them); the [`Recording`]
    /// resolves when they are committed. The default commits first (right for a store whose
    /// calls may run in any order, such as a connection pool); a store that runs its calls one
    /// after another, in order, queues the write and returns at once.
    async fn begin_record_sent(&self, sent: Vec<SentPolicy>) -> Result<Recording, StoreError> {
        self.record_sent(sent).await?;
        Ok(Recording::done())
    }

    /// The override lists `version` of `org_id` was sent to its agent `agent_id` with, newest
    /// first; empty when it never was.
    async fn sent_overrides(
        &self,
        org_id: String,
        agent_id: String,
        version: u64,
    ) -> Result<Vec<Value>, StoreError>;

    /// Pending approval requests of `agent_id`.
    async fn pending_approvals(&self, agent_id: String) -> Result<usize, StoreError>;

    /// Stores a rollout (a new one, or a new state of one; see [`Store::move_rollout`] for a
    /// decision on one read before) with its audit entry and its
    /// [`ChangeKind::Rollout`] (the versions its org's agents get may have changed),
    /// atomically.
    async fn put_rollout(
        &self,
        rollout: Rollout,
        entry: NewEntry,
    ) -> Result<Pushed<()>, StoreError>;

    /// Stores `to`, the next state of rollout `from`, with its audit entry and its
    /// [`ChangeKind::Rollout`], atomically, only if the stored rollout is still `from`:
    /// otherwise [`StoreError::RolloutMoved`] and nothing is written. Decisions taken at once
    /// by several replicas (their gate timers, operators) thus move a rollout once.
    async fn move_rollout(
        &self,
        from: Rollout,
        to: Rollout,
        entry: NewEntry,
    ) -> Result<Pushed<()>, StoreError>;

    /// The org's most recent rollout.
    async fn latest_rollout(&self, org_id: String) -> Result<Option<Rollout>, StoreError>;

    /// One rollout by id.
    async fn rollout(&self, id: String) -> Result<Option<Rollout>, StoreError>;

    /// Stores a shadow run (a new one, or its end) with its audit entry and its change
    /// ([`ChangeKind::ShadowStarted`] or [`ChangeKind::ShadowEnded`]), atomically. A new run
    /// (not ended) whose number is taken is [`StoreError::ShadowTaken`], and nothing is written.
    async fn put_shadow_run(
        &self,
        run: ShadowRun,
        entry: NewEntry,
    ) -> Result<Pushed<()>, StoreError>;

    /// The org's latest shadow run (the highest number), ended or not.
    async fn shadow_run(&self, org_id: String) -> Result<Option<ShadowRun>, StoreError>;

    /// The org's rollouts, newest first, at most `limit`.
    async fn rollouts(&self, org_id: String, limit: u32) -> Result<Vec<Rollout>, StoreError>;

    /// Enrolls an agent and stores its token hash, together.
    async fn insert_agent(
        &self,
        agent: AgentRecord,
        token: TokenHash,
    ) -> Result<AgentRecord, StoreError>;

    /// One agent by id.
    async fn agent(&self, id: String) -> Result<Option<AgentRecord>, StoreError>;

    /// Every agent of `org_id`, by id.
    async fn agents(&self, org_id: String) -> Result<Vec<AgentRecord>, StoreError>;

    /// Records a heartbeat.
    async fn heartbeat(&self, heartbeat: Heartbeat) -> Result<(), StoreError>;

    /// Stores a token hash for an admin (agent tokens come with enrollment).
    async fn insert_token(
        &self,
        token: TokenHash,
        principal: Principal,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Makes `token` the only global admin token: earlier ones stop working.
    async fn set_global_admin(
        &self,
        token: TokenHash,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Every stored token hash with its principal.
    async fn tokens(&self) -> Result<Vec<(TokenHash, Principal)>, StoreError>;

    /// The principal of one stored token hash.
    async fn token(&self, token: TokenHash) -> Result<Option<Principal>, StoreError>;

    /// Whether any global admin token exists (false on a fresh data dir).
    async fn has_global_admin(&self) -> Result<bool, StoreError>;

    /// The overrides of an agent.
    async fn overrides(&self, agent_id: String) -> Result<Option<StoredOverrides>, StoreError>;

    /// Replaces the overrides of an agent of `org_id`; records its [`ChangeKind::Overrides`].
    async fn set_overrides(
        &self,
        org_id: String,
        agent_id: String,
        overrides: StoredOverrides,
    ) -> Result<Pushed<()>, StoreError>;

    /// Stores a reported fleet block merged into the one in force
    /// ([`records::merge_block`]), with `entry` (the report's audit entry, noting
    /// `detail.fleet = stored | duplicate`), atomically; a new or later block records its
    /// [`ChangeKind::Block`].
    async fn upsert_block(
        &self,
        new: NewBlock,
        entry: NewEntry,
    ) -> Result<Pushed<Upserted>, StoreError>;

    /// Admits a fleet block on `ip` under `org_id`'s fleet-block budget `limit` at `now_ms`:
    /// an address admitted within the window passes and spends nothing; a new one passes, and
    /// is counted, while fewer than `max` addresses were admitted within the window; `false`
    /// beyond. One window per org for every server on the database, decided atomically (the
    /// org's lock), so several replicas admit `max` addresses in all, not each.
    async fn admit_fleet_block(
        &self,
        org_id: String,
        ip: IpAddr,
        limit: Limit,
        now_ms: i64,
    ) -> Result<bool, StoreError>;

    /// The block on `ip` of `org_id`, in force or not.
    async fn block(&self, org_id: String, ip: IpAddr) -> Result<Option<FleetBlock>, StoreError>;

    /// Blocks of `org_id` in force at `now_ms`, by address; expired ones are deleted.
    async fn active_blocks(
        &self,
        org_id: String,
        now_ms: i64,
    ) -> Result<Vec<FleetBlock>, StoreError>;

    /// Lifts the block on `ip` with its audit entry and its [`ChangeKind::Unblock`] (lifted
    /// by `entry.actor`); `None` when none is in force.
    async fn remove_block(
        &self,
        org_id: String,
        ip: IpAddr,
        now_ms: i64,
        entry: NewEntry,
    ) -> Result<Pushed<Option<FleetBlock>>, StoreError>;

    /// Stores a new approval request with its audit entry.
    async fn insert_approval(&self, approval: Approval, entry: NewEntry) -> Result<(), StoreError>;

    /// Marks pending (and approved but never executed) requests past their expiry as expired,
    /// with an audit entry each; returns how many. Servers sharing the database may sweep at
    /// the same time: each request expires once, with one audit entry.
    async fn expire_approvals(&self, now_ms: i64) -> Result<usize, StoreError>;

    /// One approval request by id.
    async fn approval(&self, id: String) -> Result<Option<Approval>, StoreError>;

    /// Approvals of `org_id`, newest first, optionally only those with `status`.
    async fn approvals(
        &self,
        org_id: String,
        status: Option<ApprovalStatus>,
        limit: u32,
    ) -> Result<Vec<Approval>, StoreError>;

    /// Applies an admin's decision ([`records::decide`]) with its audit entry; an approval
    /// records its [`ChangeKind::Approved`].
    async fn decide_approval(
        &self,
        decision: Decision,
    ) -> Result<Result<Pushed<Approval>, DecideError>, StoreError>;

    /// Records the outcome of an approved action with the report's `entry`; returns whether
    /// it closed the approval (only the requester's report of an approved request not past
    /// its expiry does; otherwise nothing is written, the entry neither). The approval's
    /// `decided_ms` stays the admin's decision.
    async fn finish_approval(&self, finish: Finish, entry: NewEntry) -> Result<bool, StoreError>;

    /// Approved requests of `agent_id` not yet executed and not expired.
    async fn approved_for(
        &self,
        agent_id: String,
        now_ms: i64,
    ) -> Result<Vec<Approval>, StoreError>;

    /// Appends one audit entry (with its report receipt, if it has one).
    async fn append_audit(&self, entry: NewEntry, at: DateTime<Utc>) -> Result<(), StoreError>;

    /// One page of audit entries matching `filter`, newest first.
    async fn audit(&self, filter: AuditFilter) -> Result<AuditPage, StoreError>;

    /// The receipt of report `report_id` of `agent_id`, if the server acted on it.
    async fn report_receipt(
        &self,
        agent_id: String,
        report_id: ReportId,
    ) -> Result<Option<ReportReceipt>, StoreError>;

    /// Stores the answer of a report whose receipt was written with its effect.
    async fn set_report_answer(
        &self,
        agent_id: String,
        report_id: ReportId,
        answer: Value,
    ) -> Result<(), StoreError>;

    /// Stores an alert report: its audit `entries` (the report's own first, with its receipt and
    /// answer when it has a `reportId`; then one per channel that cannot be delivered) and one
    /// queued delivery per deliverable channel, in one transaction. A report is acknowledged
    /// only once its deliveries are queued, and they stay queued (across restarts) until
    /// [`Store::finish_delivery`].
    async fn insert_alert(
        &self,
        entries: Vec<NewEntry>,
        deliveries: Vec<NewDelivery>,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Queued deliveries for this server to deliver, oldest first, at most `limit`. An embedded
    /// backend returns those with an id above `after_id` (the server's worker has the earlier
    /// ones under way). A backend shared by several servers claims what it returns, so that one
    /// server delivers each: it returns deliveries no server has claimed (whatever `after_id`),
    /// and one whose claim is older than a lease (its server died while delivering it).
    async fn pending_deliveries(
        &self,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<PendingDelivery>, StoreError>;

    /// Ends queued delivery `id` (delivered or given up) with its audit entry, together;
    /// nothing when it was ended already (it keeps its one audit entry).
    async fn finish_delivery(
        &self,
        id: i64,
        entry: NewEntry,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Forgets report receipts older than `before_ms`; returns how many.
    async fn prune_report_receipts(&self, before_ms: i64) -> Result<usize, StoreError>;

    /// Every org with agents, policies or approval requests: its latest version, its agents and
    /// its approval counts by status, read at one moment (for the metrics).
    async fn fleet_summary(&self) -> Result<Vec<OrgSummary>, StoreError>;

    /// The changes of `org_id` after number `after`, in order, at most `limit`.
    async fn changes(
        &self,
        org_id: String,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Change>, StoreError>;

    /// The number of `org_id`'s last change (0 before the first).
    async fn change_seq(&self, org_id: String) -> Result<u64, StoreError>;

    /// What a new event stream of `agent_id` starts from, in one transaction.
    async fn stream_snapshot(
        &self,
        org_id: String,
        agent_id: String,
        now_ms: i64,
    ) -> Result<StreamSnapshot, StoreError>;

    /// Tells the other servers sharing the database that `agent_id` opened an event stream
    /// here, so that they end theirs ([`Notice::StreamOpened`]); nothing for an embedded store.
    async fn announce_stream(&self, _agent_id: String) -> Result<(), StoreError> {
        Ok(())
    }

    /// The notices of other servers' commits, for a backend shared by several servers; `None`
    /// for an embedded one (and after the first call: there is one receiver).
    fn notices(&self) -> Option<tokio::sync::mpsc::Receiver<Notice>>;

    /// Finishes queued work and closes the store.
    async fn close(&self);
}

#[cfg(test)]
mod tests {
    use super::*;
    use warp::http::StatusCode;

    #[test]
    fn a_write_taken_by_another_replica_is_a_409_and_an_unreachable_database_a_503() {
        // Probe 5, finding 6: two shadow runs started at once on two replicas; the loser got 500.
        let taken = ApiError::from(StoreError::ShadowTaken {
            org_id: "acme".to_owned(),
            shadow: 3,
        });
        assert_eq!(
            (taken.status, taken.code),
            (StatusCode::CONFLICT, "conflict")
        );
        assert_eq!(
            taken.message,
            "shadow run 3 of org `acme` was started meanwhile: read it (`GET /api/policy/shadow`) \
             and start yours again if it is still wanted"
        );
        let unavailable = ApiError::from(StoreError::Unavailable("refused".to_owned()));
        assert_eq!(
            (
                unavailable.status,
                unavailable.code,
                unavailable.retry_after
            ),
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable", Some(5))
        );
        assert_eq!(
            unavailable.message,
            "the database is unavailable; retry in 5 s"
        );
        let broken = ApiError::from(StoreError::Backend("syntax error".to_owned()));
        assert_eq!(
            (broken.status, broken.message.as_str()),
            (StatusCode::INTERNAL_SERVER_ERROR, "internal server error")
        );
    }
}
