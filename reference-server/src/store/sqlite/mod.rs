//! The SQLite backend of [`Store`]: a read-write connection on a dedicated thread (WAL,
//! `synchronous=FULL`, migrations by `user_version`) and a read-only one on another, queries
//! by table in the submodules.
//!
//! Invariant: rusqlite is only ever called on the store's own two threads, never on an async
//! worker. Every write runs on the writer's; the reads of the broadcast, of a stream's connect,
//! of a request's token and of the views run on the reader's, so a commit waiting for a slow
//! fsync (up to a second measured on a VM disk) holds back writes only. A read that must see a
//! write only queued before it (the sent records, report receipts) runs on the writer's.
//! Every write commits before its future resolves, durably (fsynced) except heartbeats (soft
//! state, see `agents::heartbeat`).

mod agents;
mod approvals;
mod audit;
mod blocks;
mod changes;
mod deliveries;
mod migrations;
mod policies;
mod receipts;
mod rollouts;
mod rows;
mod sent;
mod shadows;
mod summary;
mod worker;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use policy_engine::PolicyVersion;
use policy_engine::policy::Limit;
use policy_engine::protocol::{ApprovalStatus, ReportId};
use rusqlite::{Connection, OpenFlags};
use serde_json::Value;

use super::{
    AgentRecord, Approval, AuditFilter, AuditPage, Change, DecideError, Decision, Finish,
    FleetBlock, Heartbeat, NewBlock, NewDelivery, NewEntry, NewPolicy, Notice, OrgSummary,
    PendingDelivery, PolicySummary, Pushed, Recording, ReportReceipt, Rollout, SentPolicy,
    ShadowRun, Store, StoreError, StoredOverrides, StoredPolicy, StreamSnapshot, Upserted,
};
use crate::auth::{Principal, TokenHash};
use worker::Worker;

/// What a query on a store thread returns.
type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Handle to the database's two connections, each on a thread of its own.
#[derive(Debug)]
pub struct SqliteStore {
    /// The read-write connection: every write, and the reads that must see a write queued
    /// before them (see [`SqliteStore::read`]).
    writer: Worker,
    /// A read-only connection: WAL readers never wait for the writer, so what the broadcast
    /// and a stream's connect read does not queue behind a commit waiting for its fsync.
    reader: Worker,
    /// The latest policy of each org read or written so far: reads of the active policy
    /// (heartbeats, stream connects) need no database round trip or re-validation. Valid
    /// because this process is the only writer of its database file.
    latest: Mutex<HashMap<String, StoredPolicy>>,
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        match error {
            rusqlite::Error::FromSqlConversionFailure(..) => Self::Corrupt(error.to_string()),
            other => Self::Backend(other.to_string()),
        }
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(error: serde_json::Error) -> Self {
        Self::Corrupt(format!("stored JSON: {error}"))
    }
}

/// Statements each connection keeps prepared (about 60 distinct ones; the default keeps 16).
const STATEMENT_CACHE: usize = 128;

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, in WAL mode, and migrates it.
    pub async fn open(path: &Path) -> Result<Self> {
        let mut conn = Connection::open(path).map_err(|e| StoreError::Open(e.to_string()))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrations::migrate(&mut conn)?;
        // Opened after the writer made the file a migrated WAL database.
        let reader = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI,
        )
        .map_err(|e| StoreError::Open(format!("read-only connection: {e}")))?;
        reader.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        reader.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Self {
            writer: Worker::start("policy-store", conn)?,
            reader: Worker::start("policy-store-read", reader)?,
            latest: Mutex::new(HashMap::new()),
        })
    }

    /// Runs `f` on the writer's thread, after every job queued there before.
    async fn call<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        self.writer.call(f).await
    }

    /// Runs the read `f` on the read-only connection. It sees every write whose call has
    /// returned, and never waits for the writer: not for a commit's fsync, not for the jobs
    /// queued on the writer. So it must not need a write that was only queued
    /// ([`Store::begin_record_sent`]): those reads go through [`SqliteStore::call`].
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        self.reader.call(f).await
    }

    /// The cached policy of `org_id` if it is `version`.
    fn cached(&self, org_id: &str, version: PolicyVersion) -> Option<StoredPolicy> {
        self.latest
            .lock()
            .ok()
            .and_then(|l| l.get(org_id).filter(|p| p.version == version).cloned())
    }

    /// A row read on the store thread as a stored policy: the cached one when it is that
    /// version, else validated (off the store thread) and remembered.
    fn resolve(&self, row: Option<policies::PolicyRow>) -> Result<Option<StoredPolicy>> {
        let Some(row) = row else { return Ok(None) };
        if let Some(known) = self.cached(row.org_id(), row.version()) {
            return Ok(Some(known));
        }
        let policy = row.validate()?;
        self.remember(&policy);
        Ok(Some(policy))
    }

    fn remember(&self, policy: &StoredPolicy) {
        if let Ok(mut latest) = self.latest.lock() {
            let newer = latest
                .get(&policy.org_id)
                .is_none_or(|known| known.version < policy.version);
            if newer {
                latest.insert(policy.org_id.clone(), policy.clone());
            }
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert_policy(&self, new: NewPolicy) -> Result<Pushed<StoredPolicy>> {
        let stored = self.call(move |conn| policies::insert(conn, new)).await?;
        self.remember(&stored.value);
        Ok(stored)
    }

    async fn policy(&self, org_id: String, version: PolicyVersion) -> Result<Option<StoredPolicy>> {
        if let Some(known) = self.cached(&org_id, version) {
            return Ok(Some(known));
        }
        let row = self
            .read(move |conn| policies::version_row(conn, &org_id, version))
            .await?;
        self.resolve(row)
    }

    async fn latest_policy(&self, org_id: String) -> Result<Option<StoredPolicy>> {
        let known = self
            .latest
            .lock()
            .ok()
            .and_then(|l| l.get(&org_id).cloned());
        if let Some(known) = known {
            return Ok(Some(known));
        }
        let row = self
            .read(move |conn| policies::latest_row(conn, &org_id))
            .await?;
        self.resolve(row)
    }

    async fn policy_versions(
        &self,
        org_id: String,
        before: Option<PolicyVersion>,
        limit: u32,
    ) -> Result<Vec<PolicySummary>> {
        self.read(move |conn| policies::versions(conn, &org_id, before, limit))
            .await
    }

    async fn orgs(&self) -> Result<Vec<String>> {
        self.read(policies::orgs).await
    }

    async fn put_rollout(&self, rollout: Rollout, entry: NewEntry) -> Result<Pushed<()>> {
        self.call(move |conn| rollouts::put(conn, &rollout, &entry))
            .await
    }

    async fn move_rollout(
        &self,
        from: Rollout,
        to: Rollout,
        entry: NewEntry,
    ) -> Result<Pushed<()>> {
        self.call(move |conn| rollouts::move_to(conn, &from, &to, &entry))
            .await
    }

    async fn latest_rollout(&self, org_id: String) -> Result<Option<Rollout>> {
        self.read(move |conn| rollouts::latest(conn, &org_id)).await
    }

    async fn rollout(&self, id: String) -> Result<Option<Rollout>> {
        self.read(move |conn| rollouts::one(conn, &id)).await
    }

    async fn put_shadow_run(&self, run: ShadowRun, entry: NewEntry) -> Result<Pushed<()>> {
        self.call(move |conn| shadows::put(conn, &run, &entry))
            .await
    }

    async fn shadow_run(&self, org_id: String) -> Result<Option<ShadowRun>> {
        self.read(move |conn| shadows::latest(conn, &org_id)).await
    }

    async fn rollouts(&self, org_id: String, limit: u32) -> Result<Vec<Rollout>> {
        self.read(move |conn| rollouts::of_org(conn, &org_id, limit))
            .await
    }

    async fn record_sent(&self, sent: Vec<SentPolicy>) -> Result<()> {
        if sent.is_empty() {
            return Ok(());
        }
        self.call(move |conn| sent::record(conn, &sent)).await
    }

    /// Queues the write and returns: the database thread runs jobs in the order they were
    /// queued, so every call made after this one reads the rows.
    async fn begin_record_sent(&self, sent: Vec<SentPolicy>) -> Result<Recording> {
        if sent.is_empty() {
            return Ok(Recording::done());
        }
        let committed = self.writer.enqueue(move |conn| sent::record(conn, &sent))?;
        Ok(Recording::pending(async move {
            committed.await.map_err(|_| StoreError::Closed)?
        }))
    }

    async fn sent_overrides(
        &self,
        org_id: String,
        agent_id: String,
        version: u64,
    ) -> Result<Vec<Value>> {
        self.call(move |conn| sent::overrides(conn, &org_id, &agent_id, version))
            .await
    }

    async fn pending_approvals(&self, agent_id: String) -> Result<usize> {
        self.call(move |conn| approvals::pending_count(conn, &agent_id))
            .await
    }

    async fn insert_agent(&self, agent: AgentRecord, token: TokenHash) -> Result<AgentRecord> {
        self.call(move |conn| agents::insert(conn, agent, token))
            .await
    }

    async fn agent(&self, id: String) -> Result<Option<AgentRecord>> {
        self.read(move |conn| agents::one(conn, &id)).await
    }

    async fn agents(&self, org_id: String) -> Result<Vec<AgentRecord>> {
        self.read(move |conn| agents::of_org(conn, &org_id)).await
    }

    async fn heartbeat(&self, heartbeat: Heartbeat) -> Result<()> {
        self.call(move |conn| agents::heartbeat(conn, &heartbeat))
            .await
    }

    async fn insert_token(
        &self,
        token: TokenHash,
        principal: Principal,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.call(move |conn| agents::insert_token(conn, token, &principal, now))
            .await
    }

    async fn set_global_admin(&self, token: TokenHash, now: DateTime<Utc>) -> Result<()> {
        self.call(move |conn| agents::set_global_admin(conn, token, now))
            .await
    }

    async fn tokens(&self) -> Result<Vec<(TokenHash, Principal)>> {
        self.call(agents::tokens).await
    }

    async fn token(&self, token: TokenHash) -> Result<Option<Principal>> {
        self.read(move |conn| agents::token(conn, &token)).await
    }

    async fn has_global_admin(&self) -> Result<bool> {
        self.call(agents::has_global_admin).await
    }

    async fn overrides(&self, agent_id: String) -> Result<Option<StoredOverrides>> {
        self.read(move |conn| policies::overrides(conn, &agent_id))
            .await
    }

    async fn set_overrides(
        &self,
        org_id: String,
        agent_id: String,
        overrides: StoredOverrides,
    ) -> Result<Pushed<()>> {
        self.call(move |conn| policies::set_overrides(conn, &org_id, &agent_id, &overrides))
            .await
    }

    async fn upsert_block(&self, new: NewBlock, entry: NewEntry) -> Result<Pushed<Upserted>> {
        self.call(move |conn| blocks::upsert(conn, &new, entry))
            .await
    }

    async fn admit_fleet_block(
        &self,
        org_id: String,
        ip: IpAddr,
        limit: Limit,
        now_ms: i64,
    ) -> Result<bool> {
        self.call(move |conn| blocks::admit_budget(conn, &org_id, ip, limit, now_ms))
            .await
    }

    async fn block(&self, org_id: String, ip: IpAddr) -> Result<Option<FleetBlock>> {
        self.read(move |conn| blocks::one(conn, &org_id, ip)).await
    }

    async fn active_blocks(&self, org_id: String, now_ms: i64) -> Result<Vec<FleetBlock>> {
        // A write too: it deletes the expired rows.
        self.call(move |conn| blocks::active(conn, &org_id, now_ms))
            .await
    }

    async fn remove_block(
        &self,
        org_id: String,
        ip: IpAddr,
        now_ms: i64,
        entry: NewEntry,
    ) -> Result<Pushed<Option<FleetBlock>>> {
        self.call(move |conn| blocks::remove(conn, &org_id, ip, now_ms, &entry))
            .await
    }

    async fn insert_approval(&self, approval: Approval, entry: NewEntry) -> Result<()> {
        self.call(move |conn| approvals::insert(conn, &approval, &entry))
            .await
    }

    async fn expire_approvals(&self, now_ms: i64) -> Result<usize> {
        self.call(move |conn| approvals::expire(conn, now_ms)).await
    }

    async fn approval(&self, id: String) -> Result<Option<Approval>> {
        self.read(move |conn| approvals::one(conn, &id)).await
    }

    async fn approvals(
        &self,
        org_id: String,
        status: Option<ApprovalStatus>,
        limit: u32,
    ) -> Result<Vec<Approval>> {
        self.read(move |conn| approvals::list(conn, &org_id, status, limit))
            .await
    }

    async fn decide_approval(
        &self,
        decision: Decision,
    ) -> Result<std::result::Result<Pushed<Approval>, DecideError>> {
        self.call(move |conn| approvals::decide(conn, &decision))
            .await
    }

    async fn finish_approval(&self, finish: Finish, entry: NewEntry) -> Result<bool> {
        self.call(move |conn| approvals::finish(conn, &finish, &entry))
            .await
    }

    async fn approved_for(&self, agent_id: String, now_ms: i64) -> Result<Vec<Approval>> {
        self.read(move |conn| approvals::approved_for(conn, &agent_id, now_ms))
            .await
    }

    async fn append_audit(&self, entry: NewEntry, at: DateTime<Utc>) -> Result<()> {
        self.call(move |conn| {
            let tx = conn.transaction()?;
            audit::insert(&tx, at, &entry)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn audit(&self, filter: AuditFilter) -> Result<AuditPage> {
        self.read(move |conn| audit::query(conn, &filter)).await
    }

    async fn report_receipt(
        &self,
        agent_id: String,
        report_id: ReportId,
    ) -> Result<Option<ReportReceipt>> {
        self.call(move |conn| receipts::get(conn, agent_id, report_id))
            .await
    }

    async fn set_report_answer(
        &self,
        agent_id: String,
        report_id: ReportId,
        answer: Value,
    ) -> Result<()> {
        self.call(move |conn| receipts::set_answer(conn, &agent_id, &report_id, &answer))
            .await
    }

    async fn insert_alert(
        &self,
        entries: Vec<NewEntry>,
        deliveries: Vec<NewDelivery>,
        at: DateTime<Utc>,
    ) -> Result<()> {
        self.call(move |conn| deliveries::insert_alert(conn, &entries, &deliveries, at))
            .await
    }

    async fn pending_deliveries(&self, after_id: i64, limit: u32) -> Result<Vec<PendingDelivery>> {
        self.call(move |conn| deliveries::pending(conn, after_id, limit))
            .await
    }

    async fn finish_delivery(&self, id: i64, entry: NewEntry, at: DateTime<Utc>) -> Result<()> {
        self.call(move |conn| deliveries::finish(conn, id, &entry, at))
            .await
    }

    async fn prune_report_receipts(&self, before_ms: i64) -> Result<usize> {
        self.call(move |conn| receipts::prune(conn, before_ms))
            .await
    }

    async fn changes(&self, org_id: String, after: u64, limit: u32) -> Result<Vec<Change>> {
        self.read(move |conn| changes::after(conn, &org_id, after, limit))
            .await
    }

    async fn change_seq(&self, org_id: String) -> Result<u64> {
        self.read(move |conn| changes::last(conn, &org_id)).await
    }

    async fn stream_snapshot(
        &self,
        org_id: String,
        agent_id: String,
        now_ms: i64,
    ) -> Result<StreamSnapshot> {
        let (seq, row, rollout, fallback, overrides, blocks, approved, shadow) = self
            .read(move |conn| {
                // One read transaction: one committed state, whatever commits meanwhile.
                let tx = conn.transaction()?;
                let conn = &*tx;
                let row = policies::latest_row(conn, &org_id)?;
                let rollout = rollouts::latest(conn, &org_id)?;
                let fallback = match (&row, &rollout) {
                    (Some(latest), Some(r)) if latest.version_is(r.version) => {
                        policies::version_row(conn, &org_id, r.previous)?
                    }
                    _ => None,
                };
                let snapshot = (
                    changes::last(conn, &org_id)?,
                    row,
                    rollout,
                    fallback,
                    policies::overrides(conn, &agent_id)?,
                    blocks::in_force(conn, &org_id, now_ms)?,
                    approvals::approved_for(conn, &agent_id, now_ms)?,
                    shadows::latest(conn, &org_id)?,
                );
                tx.commit()?;
                Ok(snapshot)
            })
            .await?;
        Ok(StreamSnapshot {
            seq,
            policy: self.resolve(row)?,
            rollout,
            fallback: self.resolve(fallback)?,
            overrides,
            blocks,
            approved,
            shadow,
        })
    }

    fn notices(&self) -> Option<tokio::sync::mpsc::Receiver<Notice>> {
        // The only writer of its file: nobody else commits.
        None
    }

    async fn fleet_summary(&self) -> Result<Vec<OrgSummary>> {
        self.read(summary::fleet).await
    }

    async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}

#[cfg(test)]
mod tests;
