//! The PostgreSQL backend of [`Store`]: several server replicas on one database. A deadpool
//! pool of tokio-postgres connections, the same migrations as SQLite in PostgreSQL types
//! (`schema.rs`), queries by table in the submodules, and a listening connection that turns
//! other replicas' commits into [`Notice`]s (`listen.rs`).
//!
//! Guarantees, whichever replica writes: policy versions and change numbers per org are
//! assigned under the org's advisory lock, so they are unique, gap-free and in commit order;
//! every write commits before its future resolves; a report's receipt is written in the
//! transaction of its effect, so a report resent to another replica is acted on once; each
//! expired approval is swept once (`FOR UPDATE SKIP LOCKED`); each queued alert delivery is
//! claimed by one replica (`FOR UPDATE SKIP LOCKED`, `deliveries.rs`).
//!
//! The connection to PostgreSQL is not encrypted (no second TLS stack in the server): run the
//! database on the same host (loopback or a unix socket, `host=/var/run/postgresql`) or on a
//! private network. A URL asking for `sslmode=require` is refused rather than ignored.

mod agents;
mod audit;
mod deliveries;
mod fleet;
mod listen;
mod policies;
mod rollouts;
mod rows;
mod schema;
mod sent;
mod shadows;
mod summary;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use policy_engine::PolicyVersion;
use policy_engine::policy::Limit;
use policy_engine::protocol::{ApprovalStatus, ReportId};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::config::SslMode;
use tokio_postgres::{IsolationLevel, NoTls};

use super::{
    AgentRecord, Approval, AuditFilter, AuditPage, Change, DecideError, Decision, Finish,
    FleetBlock, Heartbeat, NewBlock, NewDelivery, NewEntry, NewPolicy, Notice, OrgSummary,
    PendingDelivery, PolicySummary, Pushed, ReportReceipt, Rollout, SentPolicy, ShadowRun, Store,
    StoreError, StoredOverrides, StoredPolicy, StreamSnapshot, Upserted,
};
use crate::auth::{Principal, TokenHash};

/// What a query returns.
type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Connections in the pool of one replica.
pub const POOL_SIZE: usize = 16;

/// How long a request waits for a pooled connection before it is answered 503 (every
/// connection busy, for example on queries PostgreSQL does not answer).
pub const POOL_WAIT: Duration = Duration::from_secs(5);

/// How long opening (or checking) a connection to PostgreSQL may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Most sent records written in one transaction by the writer of [`PgStore::record_sent`]
/// (one write bigger than this, a broadcast to a whole org, is written alone).
const SENT_BATCH: usize = 4096;

/// Notices queued before the server reads them (beyond, one resync replaces them).
const NOTICE_QUEUE: usize = 4096;

/// Handle to the database of a replica.
#[derive(Debug)]
pub struct PgStore {
    pool: Pool,
    /// The latest policy of each org read so far, validated. Another replica may have stored a
    /// newer version: every read checks the latest version number first (one index lookup) and
    /// only reads and validates the document again when it changed.
    latest: Mutex<HashMap<String, StoredPolicy>>,
    notices: Mutex<Option<mpsc::Receiver<Notice>>>,
    /// The writer of sent records ([`write_sent`]). Unbounded, but each caller waits for its
    /// answer: what waits is at most one write per opening stream (admission bounds them) and
    /// per broadcast.
    sent: mpsc::UnboundedSender<SentWrite>,
    stop: watch::Sender<bool>,
    /// This replica's random id, in its stream notices (so that it ignores its own).
    replica: String,
}

impl From<tokio_postgres::Error> for StoreError {
    /// A lost or refused connection is [`StoreError::Unavailable`]; what PostgreSQL answered
    /// (a constraint, a syntax error) and a value that does not convert are backend errors.
    fn from(error: tokio_postgres::Error) -> Self {
        if error.is_closed() {
            return Self::Unavailable("the connection to PostgreSQL closed".to_owned());
        }
        if error.as_db_error().is_none() && io_caused(&error) {
            return Self::Unavailable(describe(&error));
        }
        Self::Backend(describe(&error))
    }
}

/// Whether an I/O error (a refused, reset or timed-out connection) is among `error`'s causes.
fn io_caused(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = error.source();
    while let Some(current) = cause {
        if current.is::<std::io::Error>() {
            return true;
        }
        cause = current.source();
    }
    false
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        match error {
            deadpool_postgres::PoolError::Closed => Self::Closed,
            deadpool_postgres::PoolError::Backend(error) => error.into(),
            deadpool_postgres::PoolError::Timeout(_) => {
                Self::Unavailable(format!("no database connection within {POOL_WAIT:?}"))
            }
            other => Self::Backend(format!("no database connection: {other}")),
        }
    }
}

/// A tokio-postgres error with the server's message, when it sent one, or with its causes.
fn describe(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Connects once (for the listener); the connection must be polled by the caller.
async fn connect(
    config: &tokio_postgres::Config,
) -> Result<(
    tokio_postgres::Client,
    tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
)> {
    Ok(config.connect(NoTls).await?)
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/db`, or
    /// key-value form), migrates it (once, whichever replica gets there first) and starts
    /// listening to the other replicas' changes.
    pub async fn open(url: &str) -> Result<Self> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Open(format!("invalid PostgreSQL URL: {}", describe(&e))))?;
        if config.get_ssl_mode() == SslMode::Require {
            return Err(StoreError::Open(
                "sslmode=require: the server speaks to PostgreSQL without TLS; use a unix socket, \
                 loopback or a private network, and sslmode=disable"
                    .to_owned(),
            ));
        }
        config.ssl_mode(SslMode::Disable);
        if config.get_application_name().is_none() {
            config.application_name("policy-server");
        }
        config.connect_timeout(CONNECT_TIMEOUT);
        let target = target(&config);
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Open(e.to_string()))?;
        let opened = async {
            let mut client = pool.get().await?;
            schema::migrate(&mut client).await
        };
        opened.await.map_err(|e| {
            let detail = match e {
                StoreError::Backend(detail) | StoreError::Unavailable(detail) => detail,
                other => other.to_string(),
            };
            StoreError::Open(format!("PostgreSQL at {target}: {detail}"))
        })?;
        let (queue, notices) = mpsc::channel(NOTICE_QUEUE);
        let (stop, stopped) = watch::channel(false);
        let mut listen_config = config;
        listen_config
            .application_name("policy-server-listen")
            .keepalives_idle(Duration::from_secs(10));
        let replica = crate::auth::random_hex(8);
        listen::spawn(
            listen_config,
            listen::Notices::new(queue, replica.clone()),
            stopped,
        )
        .await
        .map_err(|e| StoreError::Open(format!("PostgreSQL at {target}: cannot listen: {e}")))?;
        tracing::info!(database = %target, "PostgreSQL store open");
        let (sent, writes) = mpsc::unbounded_channel();
        tokio::spawn(write_sent(pool.clone(), writes));
        Ok(Self {
            sent,
            pool,
            latest: Mutex::new(HashMap::new()),
            notices: Mutex::new(Some(notices)),
            stop,
            replica,
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        Ok(self.pool.get().await?)
    }

    fn cached(&self, org_id: &str, version: PolicyVersion) -> Option<StoredPolicy> {
        self.latest
            .lock()
            .ok()
            .and_then(|l| l.get(org_id).filter(|p| p.version == version).cloned())
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

    /// Version `version` of `org_id`: the cached one, else read, validated and remembered.
    async fn resolve(
        &self,
        org_id: &str,
        version: Option<PolicyVersion>,
    ) -> Result<Option<StoredPolicy>> {
        let Some(version) = version else {
            return Ok(None);
        };
        if let Some(known) = self.cached(org_id, version) {
            return Ok(Some(known));
        }
        let client = self.client().await?;
        let found = policies::version(&client, org_id, version).await?;
        if let Some(policy) = &found {
            self.remember(policy);
        }
        Ok(found)
    }
}

/// Sent records to write, answered once committed.
#[derive(Debug)]
struct SentWrite {
    sent: Vec<SentPolicy>,
    done: oneshot::Sender<Result<()>>,
}

/// Writes sent records (a stream opening, a broadcast): each transaction takes every write
/// waiting, up to [`SENT_BATCH`] records, so that thousands of streams opening at once after a
/// restart cost a few commits instead of one each (the database, not the pool, is what a
/// reconnect storm runs short of). Each write keeps its own rows ([`sent::record`]); a
/// transaction that fails is retried write by write, so that one write's failure is its own.
/// Ends when the store is dropped.
async fn write_sent(pool: Pool, mut writes: mpsc::UnboundedReceiver<SentWrite>) {
    while let Some(first) = writes.recv().await {
        let mut records = first.sent.len();
        let mut batch = vec![first];
        while records < SENT_BATCH {
            let Ok(next) = writes.try_recv() else { break };
            records += next.sent.len();
            batch.push(next);
        }
        let all: Vec<&[SentPolicy]> = batch.iter().map(|w| w.sent.as_slice()).collect();
        match record_in_transaction(&pool, &all).await {
            Ok(()) => {
                for write in batch {
                    let _ = write.done.send(Ok(()));
                }
            }
            Err(error) if batch.len() == 1 => {
                if let Some(write) = batch.pop() {
                    let _ = write.done.send(Err(error));
                }
            }
            Err(_) => {
                for write in batch {
                    let result = record_in_transaction(&pool, &[write.sent.as_slice()]).await;
                    let _ = write.done.send(result);
                }
            }
        }
    }
}

/// Records `writes` in one transaction.
async fn record_in_transaction(pool: &Pool, writes: &[&[SentPolicy]]) -> Result<()> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    sent::record(&tx, writes).await?;
    tx.commit().await?;
    Ok(())
}

/// `host:port/db` of a config, without user or password, for messages.
fn target(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|host| match host {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".to_owned());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or("(default)");
    format!("{host}:{port}/{db}")
}

#[async_trait]
impl Store for PgStore {
    async fn insert_policy(&self, new: NewPolicy) -> Result<Pushed<StoredPolicy>> {
        let NewPolicy {
            org_id,
            policy,
            id,
            created_at,
            signed,
        } = new;
        let document = serde_json::to_string(&policy.to_json_value())?;
        let created_at = rows::stored(&created_at);
        let signed_text = signed
            .as_ref()
            .map(|(version, signature)| serde_json::to_string(signature).map(|t| (*version, t)))
            .transpose()?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let row = policies::NewRow {
            org_id: &org_id,
            document: &document,
            id: &id,
            created_at,
            signed: signed_text,
        };
        let (version, seq) = policies::insert(&tx, &row).await?;
        tx.commit().await?;
        let stored = StoredPolicy {
            id,
            org_id,
            version,
            policy,
            created_at,
            signature: signed.map(|(_, signature)| signature),
        };
        self.remember(&stored);
        Ok(Pushed {
            value: stored,
            seq: Some(seq),
        })
    }

    async fn latest_policy(&self, org_id: String) -> Result<Option<StoredPolicy>> {
        let version = {
            let client = self.client().await?;
            policies::latest_version(&client, &org_id).await?
        };
        self.resolve(&org_id, version).await
    }

    async fn policy(&self, org_id: String, version: PolicyVersion) -> Result<Option<StoredPolicy>> {
        self.resolve(&org_id, Some(version)).await
    }

    async fn policy_versions(
        &self,
        org_id: String,
        before: Option<PolicyVersion>,
        limit: u32,
    ) -> Result<Vec<PolicySummary>> {
        summary::versions(&self.client().await?, &org_id, before, limit).await
    }

    async fn orgs(&self) -> Result<Vec<String>> {
        summary::orgs(&self.client().await?).await
    }

    async fn put_rollout(&self, rollout: Rollout, entry: NewEntry) -> Result<Pushed<()>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let seq = rollouts::put(&tx, &rollout, &entry).await?;
        tx.commit().await?;
        Ok(Pushed::change(seq))
    }

    async fn move_rollout(
        &self,
        from: Rollout,
        to: Rollout,
        entry: NewEntry,
    ) -> Result<Pushed<()>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let seq = rollouts::move_to(&tx, &from, &to, &entry).await?;
        tx.commit().await?;
        Ok(Pushed::change(seq))
    }

    async fn latest_rollout(&self, org_id: String) -> Result<Option<Rollout>> {
        rollouts::latest(&self.client().await?, &org_id).await
    }

    async fn rollout(&self, id: String) -> Result<Option<Rollout>> {
        rollouts::one(&self.client().await?, &id).await
    }

    async fn rollouts(&self, org_id: String, limit: u32) -> Result<Vec<Rollout>> {
        rollouts::of_org(&self.client().await?, &org_id, limit).await
    }

    async fn put_shadow_run(&self, run: ShadowRun, entry: NewEntry) -> Result<Pushed<()>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let seq = shadows::put(&tx, &run, &entry).await?;
        tx.commit().await?;
        Ok(Pushed::change(seq))
    }

    async fn shadow_run(&self, org_id: String) -> Result<Option<ShadowRun>> {
        shadows::latest(&self.client().await?, &org_id).await
    }

    /// Handed to the writer ([`write_sent`]), which commits the records of many callers in one
    /// transaction when they come at once (a fleet reconnecting); answered once committed.
    async fn record_sent(&self, sent: Vec<SentPolicy>) -> Result<()> {
        if sent.is_empty() {
            return Ok(());
        }
        let (done, committed) = oneshot::channel();
        self.sent
            .send(SentWrite { sent, done })
            .map_err(|_| StoreError::Closed)?;
        committed.await.map_err(|_| StoreError::Closed)?
    }

    async fn sent_overrides(
        &self,
        org_id: String,
        agent_id: String,
        version: u64,
    ) -> Result<Vec<Value>> {
        sent::overrides(&self.client().await?, &org_id, &agent_id, version).await
    }

    async fn pending_approvals(&self, agent_id: String) -> Result<usize> {
        sent::pending_approvals(&self.client().await?, &agent_id).await
    }

    async fn insert_agent(&self, agent: AgentRecord, token: TokenHash) -> Result<AgentRecord> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        agents::insert(&tx, &agent, &token).await?;
        tx.commit().await?;
        Ok(agent)
    }

    async fn agent(&self, id: String) -> Result<Option<AgentRecord>> {
        agents::one(&self.client().await?, &id).await
    }

    async fn agents(&self, org_id: String) -> Result<Vec<AgentRecord>> {
        agents::of_org(&self.client().await?, &org_id).await
    }

    async fn heartbeat(&self, heartbeat: Heartbeat) -> Result<()> {
        agents::heartbeat(&self.client().await?, &heartbeat).await
    }

    async fn insert_token(
        &self,
        token: TokenHash,
        principal: Principal,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        agents::insert_token(&tx, &token, &principal, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn set_global_admin(&self, token: TokenHash, now: DateTime<Utc>) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        agents::set_global_admin(&tx, &token, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn tokens(&self) -> Result<Vec<(TokenHash, Principal)>> {
        agents::tokens(&self.client().await?).await
    }

    async fn token(&self, token: TokenHash) -> Result<Option<Principal>> {
        agents::token(&self.client().await?, &token).await
    }

    async fn has_global_admin(&self) -> Result<bool> {
        agents::has_global_admin(&self.client().await?).await
    }

    async fn overrides(&self, agent_id: String) -> Result<Option<StoredOverrides>> {
        policies::overrides(&self.client().await?, &agent_id).await
    }

    async fn set_overrides(
        &self,
        org_id: String,
        agent_id: String,
        overrides: StoredOverrides,
    ) -> Result<Pushed<()>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let seq = policies::set_overrides(&tx, &org_id, &agent_id, &overrides).await?;
        tx.commit().await?;
        Ok(Pushed::change(seq))
    }

    async fn upsert_block(&self, new: NewBlock, entry: NewEntry) -> Result<Pushed<Upserted>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let (value, seq) = fleet::upsert_block(&tx, &new, entry).await?;
        tx.commit().await?;
        Ok(Pushed { value, seq })
    }

    async fn admit_fleet_block(
        &self,
        org_id: String,
        ip: IpAddr,
        limit: Limit,
        now_ms: i64,
    ) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let admitted = fleet::admit_budget(&tx, &org_id, ip, limit, now_ms).await?;
        tx.commit().await?;
        Ok(admitted)
    }

    async fn block(&self, org_id: String, ip: IpAddr) -> Result<Option<FleetBlock>> {
        fleet::block(&self.client().await?, &org_id, ip).await
    }

    async fn active_blocks(&self, org_id: String, now_ms: i64) -> Result<Vec<FleetBlock>> {
        let client = self.client().await?;
        fleet::delete_expired_blocks(&client, &org_id, now_ms).await?;
        fleet::blocks_in_force(&client, &org_id, now_ms).await
    }

    async fn remove_block(
        &self,
        org_id: String,
        ip: IpAddr,
        now_ms: i64,
        entry: NewEntry,
    ) -> Result<Pushed<Option<FleetBlock>>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let (value, seq) = fleet::remove_block(&tx, &org_id, ip, now_ms, &entry).await?;
        tx.commit().await?;
        Ok(Pushed { value, seq })
    }

    async fn insert_approval(&self, approval: Approval, entry: NewEntry) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        fleet::insert_approval(&tx, &approval, &entry).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn expire_approvals(&self, now_ms: i64) -> Result<usize> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let expired = fleet::expire(&tx, now_ms).await?;
        tx.commit().await?;
        Ok(expired)
    }

    async fn approval(&self, id: String) -> Result<Option<Approval>> {
        fleet::approval(&self.client().await?, &id).await
    }

    async fn approvals(
        &self,
        org_id: String,
        status: Option<ApprovalStatus>,
        limit: u32,
    ) -> Result<Vec<Approval>> {
        fleet::approvals(&self.client().await?, &org_id, status, limit).await
    }

    async fn decide_approval(
        &self,
        decision: Decision,
    ) -> Result<std::result::Result<Pushed<Approval>, DecideError>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let decided = fleet::decide(&tx, &decision).await?;
        // A refusal may still have recorded an expiry: commit whatever was written.
        tx.commit().await?;
        Ok(decided.map(|(value, seq)| Pushed { value, seq }))
    }

    async fn finish_approval(&self, finish: Finish, entry: NewEntry) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let closed = fleet::finish(&tx, &finish, &entry).await?;
        if closed {
            tx.commit().await?;
        } else {
            // Nothing written (the update matched no row): nothing to keep.
            tx.rollback().await?;
        }
        Ok(closed)
    }

    async fn approved_for(&self, agent_id: String, now_ms: i64) -> Result<Vec<Approval>> {
        fleet::approved_for(&self.client().await?, &agent_id, now_ms).await
    }

    async fn append_audit(&self, entry: NewEntry, at: DateTime<Utc>) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        audit::insert(&tx, at, &entry).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn audit(&self, filter: AuditFilter) -> Result<AuditPage> {
        audit::query(&self.client().await?, &filter).await
    }

    async fn report_receipt(
        &self,
        agent_id: String,
        report_id: ReportId,
    ) -> Result<Option<ReportReceipt>> {
        audit::receipt(&self.client().await?, agent_id, report_id).await
    }

    async fn set_report_answer(
        &self,
        agent_id: String,
        report_id: ReportId,
        answer: Value,
    ) -> Result<()> {
        audit::set_answer(&self.client().await?, &agent_id, &report_id, &answer).await
    }

    async fn insert_alert(
        &self,
        entries: Vec<NewEntry>,
        deliveries: Vec<NewDelivery>,
        at: DateTime<Utc>,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        deliveries::insert_alert(&tx, &entries, &deliveries, at).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Claims deliveries no replica holds, whatever `after_id` (those this replica has under
    /// way are claimed by it, so they are not returned again).
    async fn pending_deliveries(&self, _after_id: i64, limit: u32) -> Result<Vec<PendingDelivery>> {
        deliveries::claim(&self.client().await?, limit).await
    }

    async fn finish_delivery(&self, id: i64, entry: NewEntry, at: DateTime<Utc>) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let finished = deliveries::finish(&tx, id, &entry, at).await?;
        tx.commit().await?;
        if !finished {
            tracing::warn!(
                id,
                "alert delivery was finished by another replica (its claim lapsed)"
            );
        }
        Ok(())
    }

    async fn prune_report_receipts(&self, before_ms: i64) -> Result<usize> {
        audit::prune(&self.client().await?, before_ms).await
    }

    async fn changes(&self, org_id: String, after: u64, limit: u32) -> Result<Vec<Change>> {
        policies::changes_after(&self.client().await?, &org_id, after, limit).await
    }

    async fn change_seq(&self, org_id: String) -> Result<u64> {
        policies::last_change(&self.client().await?, &org_id).await
    }

    async fn stream_snapshot(
        &self,
        org_id: String,
        agent_id: String,
        now_ms: i64,
    ) -> Result<StreamSnapshot> {
        let (seq, version, rollout, overrides, blocks, approved, shadow) = {
            let mut client = self.client().await?;
            let tx = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            // Sent together: tokio-postgres pipelines the queries of one connection, so the
            // seven reads cost one round trip, not seven (a fleet reconnecting after a restart
            // opens thousands of streams at once).
            let read = tokio::try_join!(
                policies::last_change(&tx, &org_id),
                policies::latest_version(&tx, &org_id),
                rollouts::latest(&tx, &org_id),
                policies::overrides(&tx, &agent_id),
                fleet::blocks_in_force(&tx, &org_id, now_ms),
                fleet::approved_for(&tx, &agent_id, now_ms),
                shadows::latest(&tx, &org_id),
            )?;
            tx.commit().await?;
            read
        };
        // Versions never change once stored: reading the documents after the transaction reads
        // the ones it saw.
        let fallback = match &rollout {
            Some(r) if version == Some(r.version) => {
                self.resolve(&org_id, Some(r.previous)).await?
            }
            _ => None,
        };
        Ok(StreamSnapshot {
            seq,
            policy: self.resolve(&org_id, version).await?,
            rollout,
            fallback,
            overrides,
            blocks,
            approved,
            shadow,
        })
    }

    async fn fleet_summary(&self) -> Result<Vec<OrgSummary>> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let summary = summary::fleet(&tx).await?;
        tx.commit().await?;
        Ok(summary)
    }

    async fn announce_stream(&self, agent_id: String) -> Result<()> {
        let client = self.client().await?;
        let statement = client.prepare_cached("SELECT pg_notify($1, $2)").await?;
        let payload = format!("{} {agent_id}", self.replica);
        client
            .query(&statement, &[&listen::STREAMS_CHANNEL, &payload])
            .await?;
        Ok(())
    }

    fn notices(&self) -> Option<mpsc::Receiver<Notice>> {
        self.notices.lock().ok().and_then(|mut n| n.take())
    }

    async fn close(&self) {
        let _ = self.stop.send(true);
        self.pool.close();
    }
}
