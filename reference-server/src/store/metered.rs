//! A [`Store`] that times every operation of another: the database latency of the metrics,
//! whatever the backend. It forwards each method unchanged; a method added to the trait is
//! forwarded here too, named as the trait names it (the `operation` label).

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use policy_engine::PolicyVersion;
use policy_engine::policy::Limit;
use policy_engine::protocol::{ApprovalStatus, ReportId};
use serde_json::Value;

use super::{
    AgentRecord, Approval, AuditFilter, AuditPage, Change, DecideError, Decision, Finish,
    FleetBlock, Heartbeat, NewBlock, NewDelivery, NewEntry, NewPolicy, Notice, OrgSummary,
    PendingDelivery, PolicySummary, Pushed, Recording, ReportReceipt, Rollout, SentPolicy,
    ShadowRun, Store, StoreError, StoredOverrides, StoredPolicy, StreamSnapshot, Upserted,
};
use crate::auth::{Principal, TokenHash};
use crate::metrics::ServerMetrics;

/// `inner`, with the time of each operation recorded in `metrics`.
#[derive(Debug)]
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: Arc<ServerMetrics>,
}

impl MeteredStore {
    /// Times the operations of `inner` into `metrics`.
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<ServerMetrics>) -> Self {
        Self { inner, metrics }
    }

    async fn timed<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = call.await;
        let failed = result.as_ref().err().is_some_and(fails);
        self.metrics
            .db_operation(operation, started.elapsed(), !failed);
        result
    }
}

/// Whether `error` is a failure of the database. A refusal of the request (a version taken, a
/// report already received) is the database doing its job, not an error of it.
fn fails(error: &StoreError) -> bool {
    matches!(
        error,
        StoreError::Backend(_)
            | StoreError::Unavailable(_)
            | StoreError::Corrupt(_)
            | StoreError::Closed
            | StoreError::Open(_)
    )
}

#[async_trait]
impl Store for MeteredStore {
    async fn insert_policy(&self, new: NewPolicy) -> Result<Pushed<StoredPolicy>, StoreError> {
        self.timed("insert_policy", self.inner.insert_policy(new))
            .await
    }

    async fn policy_versions(
        &self,
        org_id: String,
        before: Option<PolicyVersion>,
        limit: u32,
    ) -> Result<Vec<PolicySummary>, StoreError> {
        self.timed(
            "policy_versions",
            self.inner.policy_versions(org_id, before, limit),
        )
        .await
    }

    async fn orgs(&self) -> Result<Vec<String>, StoreError> {
        self.timed("orgs", self.inner.orgs()).await
    }

    async fn put_rollout(
        &self,
        rollout: Rollout,
        entry: NewEntry,
    ) -> Result<Pushed<()>, StoreError> {
        self.timed("put_rollout", self.inner.put_rollout(rollout, entry))
            .await
    }

    async fn move_rollout(
        &self,
        from: Rollout,
        to: Rollout,
        entry: NewEntry,
    ) -> Result<Pushed<()>, StoreError> {
        self.timed("move_rollout", self.inner.move_rollout(from, to, entry))
            .await
    }

    async fn latest_rollout(&self, org_id: String) -> Result<Option<Rollout>, StoreError> {
        self.timed("latest_rollout", self.inner.latest_rollout(org_id))
            .await
    }

    async fn rollout(&self, id: String) -> Result<Option<Rollout>, StoreError> {
        self.timed("rollout", self.inner.rollout(id)).await
    }

    async fn put_shadow_run(
        &self,
        run: ShadowRun,
        entry: NewEntry,
    ) -> Result<Pushed<()>, StoreError> {
        self.timed("put_shadow_run", self.inner.put_shadow_run(run, entry))
            .await
    }

    async fn shadow_run(&self, org_id: String) -> Result<Option<ShadowRun>, StoreError> {
        self.timed("shadow_run", self.inner.shadow_run(org_id))
            .await
    }

    async fn rollouts(&self, org_id: String, limit: u32) -> Result<Vec<Rollout>, StoreError> {
        self.timed("rollouts", self.inner.rollouts(org_id, limit))
            .await
    }

    async fn policy(
        &self,
        org_id: String,
        version: PolicyVersion,
    ) -> Result<Option<StoredPolicy>, StoreError> {
        self.timed("policy", self.inner.policy(org_id, version))
            .await
    }

    async fn record_sent(&self, sent: Vec<SentPolicy>) -> Result<(), StoreError> {
        self.timed("record_sent", self.inner.record_sent(sent))
            .await
    }

    async fn begin_record_sent(&self, sent: Vec<SentPolicy>) -> Result<Recording, StoreError> {
        // Timed from the start to the commit, as `record_sent` (the same write).
        let started = Instant::now();
        let begun = self.inner.begin_record_sent(sent).await;
        let metrics = self.metrics.clone();
        let recording = match begun {
            Ok(recording) => recording,
            Err(error) => {
                metrics.db_operation("record_sent", started.elapsed(), !fails(&error));
                return Err(error);
            }
        };
        Ok(Recording::pending(async move {
            let result = recording.await;
            let failed = result.as_ref().err().is_some_and(fails);
            metrics.db_operation("record_sent", started.elapsed(), !failed);
            result
        }))
    }

    async fn sent_overrides(
        &self,
        org_id: String,
        agent_id: String,
        version: u64,
    ) -> Result<Vec<Value>, StoreError> {
        self.timed(
            "sent_overrides",
            self.inner.sent_overrides(org_id, agent_id, version),
        )
        .await
    }

    async fn pending_approvals(&self, agent_id: String) -> Result<usize, StoreError> {
        self.timed("pending_approvals", self.inner.pending_approvals(agent_id))
            .await
    }

    async fn insert_alert(
        &self,
        entries: Vec<NewEntry>,
        deliveries: Vec<NewDelivery>,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.timed(
            "insert_alert",
            self.inner.insert_alert(entries, deliveries, at),
        )
        .await
    }

    async fn pending_deliveries(
        &self,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<PendingDelivery>, StoreError> {
        self.timed(
            "pending_deliveries",
            self.inner.pending_deliveries(after_id, limit),
        )
        .await
    }

    async fn finish_delivery(
        &self,
        id: i64,
        entry: NewEntry,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.timed("finish_delivery", self.inner.finish_delivery(id, entry, at))
            .await
    }

    async fn latest_policy(&self, org_id: String) -> Result<Option<StoredPolicy>, StoreError> {
        self.timed("latest_policy", self.inner.latest_policy(org_id))
            .await
    }

    async fn insert_agent(
        &self,
        agent: AgentRecord,
        token: TokenHash,
    ) -> Result<AgentRecord, StoreError> {
        self.timed("insert_agent", self.inner.insert_agent(agent, token))
            .await
    }

    async fn agent(&self, id: String) -> Result<Option<AgentRecord>, StoreError> {
        self.timed("agent", self.inner.agent(id)).await
    }

    async fn agents(&self, org_id: String) -> Result<Vec<AgentRecord>, StoreError> {
        self.timed("agents", self.inner.agents(org_id)).await
    }

    async fn heartbeat(&self, heartbeat: Heartbeat) -> Result<(), StoreError> {
        self.timed("heartbeat", self.inner.heartbeat(heartbeat))
            .await
    }

    async fn insert_token(
        &self,
        token: TokenHash,
        principal: Principal,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.timed(
            "insert_token",
            self.inner.insert_token(token, principal, now),
        )
        .await
    }

    async fn set_global_admin(
        &self,
        token: TokenHash,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.timed("set_global_admin", self.inner.set_global_admin(token, now))
            .await
    }

    async fn tokens(&self) -> Result<Vec<(TokenHash, Principal)>, StoreError> {
        self.timed("tokens", self.inner.tokens()).await
    }

    async fn token(&self, token: TokenHash) -> Result<Option<Principal>, StoreError> {
        self.timed("token", self.inner.token(token)).await
    }

    async fn has_global_admin(&self) -> Result<bool, StoreError> {
        self.timed("has_global_admin", self.inner.has_global_admin())
            .await
    }

    async fn overrides(&self, agent_id: String) -> Result<Option<StoredOverrides>, StoreError> {
        self.timed("overrides", self.inner.overrides(agent_id))
            .await
    }

    async fn set_overrides(
        &self,
        org_id: String,
        agent_id: String,
        overrides: StoredOverrides,
    ) -> Result<Pushed<()>, StoreError> {
        self.timed(
            "set_overrides",
            self.inner.set_overrides(org_id, agent_id, overrides),
        )
        .await
    }

    async fn upsert_block(
        &self,
        new: NewBlock,
        entry: NewEntry,
    ) -> Result<Pushed<Upserted>, StoreError> {
        self.timed("upsert_block", self.inner.upsert_block(new, entry))
            .await
    }

    async fn admit_fleet_block(
        &self,
        org_id: String,
        ip: IpAddr,
        limit: Limit,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.timed(
            "admit_fleet_block",
            self.inner.admit_fleet_block(org_id, ip, limit, now_ms),
        )
        .await
    }

    async fn block(&self, org_id: String, ip: IpAddr) -> Result<Option<FleetBlock>, StoreError> {
        self.timed("block", self.inner.block(org_id, ip)).await
    }

    async fn active_blocks(
        &self,
        org_id: String,
        now_ms: i64,
    ) -> Result<Vec<FleetBlock>, StoreError> {
        self.timed("active_blocks", self.inner.active_blocks(org_id, now_ms))
            .await
    }

    async fn remove_block(
        &self,
        org_id: String,
        ip: IpAddr,
        now_ms: i64,
        entry: NewEntry,
    ) -> Result<Pushed<Option<FleetBlock>>, StoreError> {
        self.timed(
            "remove_block",
            self.inner.remove_block(org_id, ip, now_ms, entry),
        )
        .await
    }

    async fn insert_approval(&self, approval: Approval, entry: NewEntry) -> Result<(), StoreError> {
        self.timed(
            "insert_approval",
            self.inner.insert_approval(approval, entry),
        )
        .await
    }

    async fn approval(&self, id: String) -> Result<Option<Approval>, StoreError> {
        self.timed("approval", self.inner.approval(id)).await
    }

    async fn expire_approvals(&self, now_ms: i64) -> Result<usize, StoreError> {
        self.timed("expire_approvals", self.inner.expire_approvals(now_ms))
            .await
    }

    async fn approvals(
        &self,
        org_id: String,
        status: Option<ApprovalStatus>,
        limit: u32,
    ) -> Result<Vec<Approval>, StoreError> {
        self.timed("approvals", self.inner.approvals(org_id, status, limit))
            .await
    }

    async fn decide_approval(
        &self,
        decision: Decision,
    ) -> Result<Result<Pushed<Approval>, DecideError>, StoreError> {
        self.timed("decide_approval", self.inner.decide_approval(decision))
            .await
    }

    async fn finish_approval(&self, finish: Finish, entry: NewEntry) -> Result<bool, StoreError> {
        self.timed("finish_approval", self.inner.finish_approval(finish, entry))
            .await
    }

    async fn approved_for(
        &self,
        agent_id: String,
        now_ms: i64,
    ) -> Result<Vec<Approval>, StoreError> {
        self.timed("approved_for", self.inner.approved_for(agent_id, now_ms))
            .await
    }

    async fn append_audit(&self, entry: NewEntry, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.timed("append_audit", self.inner.append_audit(entry, at))
            .await
    }

    async fn audit(&self, filter: AuditFilter) -> Result<AuditPage, StoreError> {
        self.timed("audit", self.inner.audit(filter)).await
    }

    async fn report_receipt(
        &self,
        agent_id: String,
        report_id: ReportId,
    ) -> Result<Option<ReportReceipt>, StoreError> {
        self.timed(
            "report_receipt",
            self.inner.report_receipt(agent_id, report_id),
        )
        .await
    }

    async fn set_report_answer(
        &self,
        agent_id: String,
        report_id: ReportId,
        answer: Value,
    ) -> Result<(), StoreError> {
        self.timed(
            "set_report_answer",
            self.inner.set_report_answer(agent_id, report_id, answer),
        )
        .await
    }

    async fn prune_report_receipts(&self, before_ms: i64) -> Result<usize, StoreError> {
        self.timed(
            "prune_report_receipts",
            self.inner.prune_report_receipts(before_ms),
        )
        .await
    }

    async fn fleet_summary(&self) -> Result<Vec<OrgSummary>, StoreError> {
        self.timed("fleet_summary", self.inner.fleet_summary())
            .await
    }

    async fn changes(
        &self,
        org_id: String,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Change>, StoreError> {
        self.timed("changes", self.inner.changes(org_id, after, limit))
            .await
    }

    async fn change_seq(&self, org_id: String) -> Result<u64, StoreError> {
        self.timed("change_seq", self.inner.change_seq(org_id))
            .await
    }

    async fn stream_snapshot(
        &self,
        org_id: String,
        agent_id: String,
        now_ms: i64,
    ) -> Result<StreamSnapshot, StoreError> {
        self.timed(
            "stream_snapshot",
            self.inner.stream_snapshot(org_id, agent_id, now_ms),
        )
        .await
    }

    async fn announce_stream(&self, agent_id: String) -> Result<(), StoreError> {
        self.timed("announce_stream", self.inner.announce_stream(agent_id))
            .await
    }

    fn notices(&self) -> Option<tokio::sync::mpsc::Receiver<Notice>> {
        self.inner.notices()
    }

    async fn close(&self) {
        self.inner.close().await;
    }
}
