//! The agents' event streams as the fleet uses them: the hub with each stream's view, the
//! [`Publisher`] that pushes the store's numbered changes to them in order, and what a new
//! stream gets first.
//!
//! Invariant: every change whose effect goes to streams (a policy, overrides, a fleet block, an
//! unblock, an approval) is recorded by the store with a number per org, in commit order,
//! whichever server replica wrote it; the publisher pushes an org's changes in that order, each
//! once, and a stream gets exactly the changes after the state it started from
//! ([`StreamView::since`]). So a stream never misses a change, sees one twice, or sees versions
//! out of order, with one server or several on one database.
//!
//! The policy version a stream gets is the one [`assignment`](super::assignment) gives its
//! agent: a staged rollout's stage changes and rollbacks are changes too
//! ([`ChangeKind::Rollout`](crate::store::ChangeKind::Rollout)), and each replica computes
//! the assignment of its own streams when it pushes one.
//!
//! The publisher also tells the console's admin streams what changed
//! ([`Publisher::changed`]): the fleet function that wrote calls it on its replica, and a
//! notice of a commit ([`Publisher::notice`], any replica's) tells the admin streams of that
//! org on every replica that everything may have changed.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use policy_engine::PolicyVersion;
use policy_engine::protocol::{FleetEvent, ShadowEndEvent};
use tokio::sync::{Mutex, MutexGuard};

use super::assignment::assign;
use super::changes::{Changes, Topic};
use super::stream_changes;
pub use super::stream_changes::{AgentOverrides, EventHub, StreamView, policy_frame, sent};
use super::views::{approval_event, block_event, policy_event, shadow_event};
use crate::clock;
use crate::error::ApiError;
use crate::metrics::ServerMetrics;
use crate::store::{ShadowRun, Store, StoreError, StoredPolicy, StreamSnapshot};
use crate::transport::{Delivery, Frame, Subscription};

/// How many recent deliveries an org remembers, for the writer of a change that another push
/// delivered first.
const RECENT: usize = 256;

/// Changes read from the store per query while catching up.
const BATCH: u32 = 256;

/// The hub and the push order (the last change pushed per org, under one lock), the lock of
/// rollout decisions, and the admin streams told of every change.
#[derive(Debug)]
pub struct Publisher {
    hub: EventHub,
    pushed: Mutex<HashMap<String, OrgCursor>>,
    rollouts: Mutex<()>,
    changes: Changes,
    metrics: Arc<ServerMetrics>,
    /// The `shadow` frame of each org's latest shadow run, by its number: every stream opening
    /// while a run runs starts with it, and the run's document is validated once, not per
    /// stream (a reconnect storm during a run).
    shadow_frames: std::sync::Mutex<HashMap<String, (u64, Frame)>>,
}

/// Where the pushes of one org stand.
#[derive(Debug, Default)]
struct OrgCursor {
    /// The last change pushed.
    seq: u64,
    /// Deliveries of the last changes pushed, by number.
    recent: VecDeque<(u64, Delivery)>,
}

/// Why [`Publisher::subscribe`] did not open a stream.
enum Refused {
    /// The snapshot is older than changes already pushed: read it again.
    Stale,
    /// The server is stopping.
    Closed,
}

impl Publisher {
    /// A publisher pushing to `hub`, timing each fan-out into `metrics`.
    pub fn new(hub: EventHub, metrics: Arc<ServerMetrics>) -> Self {
        Self {
            hub,
            pushed: Mutex::new(HashMap::new()),
            rollouts: Mutex::new(()),
            changes: Changes::default(),
            metrics,
            shadow_frames: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The `shadow` frame of a running shadow run, built once per run.
    fn shadow_frame(&self, run: &ShadowRun) -> Frame {
        let frames = || self.shadow_frames.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((shadow, frame)) = frames().get(&run.org_id) {
            if *shadow == run.shadow {
                return frame.clone();
            }
        }
        let frame = Frame::shadow(&shadow_event(run));
        frames().insert(run.org_id.clone(), (run.shadow, frame.clone()));
        frame
    }

    /// The admin event streams.
    pub fn changes(&self) -> &Changes {
        &self.changes
    }

    /// Tells the admin streams of `org` that `topics` changed.
    pub fn changed(&self, org: &str, topics: &[Topic]) {
        self.changes.changed(org, topics);
    }

    /// Held while deciding a rollout's next state, a plain post (read the rollout, then
    /// write) or a shadow run's number: decisions on this replica are taken one at a time. Pushes do not need it (the
    /// store's changes order them).
    pub async fn rollout_lock(&self) -> MutexGuard<'_, ()> {
        self.rollouts.lock().await
    }

    /// The hub, for reads (open streams, online agents).
    pub fn hub(&self) -> &EventHub {
        &self.hub
    }

    /// Pushes the changes of `org_id` up to change `seq` (the one a write just recorded) and
    /// returns its delivery (none when `seq` is `None`: the write pushed nothing).
    pub async fn push(&self, store: &dyn Store, org_id: &str, seq: Option<u64>) -> Delivery {
        let Some(seq) = seq else {
            return Delivery::default();
        };
        let mut pushed = self.pushed.lock().await;
        if self.hub.stream_count(org_id) == 0 {
            drop(pushed);
            self.fan_out_to_none(store, org_id, seq).await;
            return Delivery::default();
        }
        if let Err(error) = self.catch_up_locked(store, org_id, &mut pushed).await {
            tracing::warn!(org = org_id, %error, "cannot push changes; the next change or resync will");
        }
        pushed
            .get(org_id)
            .and_then(|cursor| cursor.recent.iter().find(|(s, _)| *s == seq))
            .map(|(_, delivery)| *delivery)
            .unwrap_or_default()
    }

    /// Counts the fan-out of change `seq` of an org without a stream here (the metrics count
    /// every write's fan-out on the replica that wrote it, empty ones too) and forgets the
    /// org's cursor (a new stream starts from a snapshot).
    async fn fan_out_to_none(&self, store: &dyn Store, org_id: &str, seq: u64) {
        let mut pushed = self.pushed.lock().await;
        if self.hub.stream_count(org_id) == 0 {
            pushed.remove(org_id);
        }
        drop(pushed);
        match store
            .changes(org_id.to_owned(), seq.saturating_sub(1), 1)
            .await
        {
            Ok(changes) => {
                for change in changes.iter().filter(|c| c.seq == seq) {
                    let name = stream_changes::event_name(&change.kind);
                    self.metrics.broadcast(name, Duration::ZERO, 0, 0);
                }
            }
            Err(error) => tracing::warn!(org = org_id, %error, "cannot read a change to count it"),
        }
    }

    /// Pushes the changes of `org_id` up to `seq`, unless they are already pushed (or the org
    /// has no stream here): a notice of a replica's commit. The notice does not say what
    /// changed: the org's admin streams are told every topic may have.
    pub async fn notice(
        &self,
        store: &dyn Store,
        org_id: &str,
        seq: u64,
    ) -> Result<(), StoreError> {
        self.changes.changed(org_id, &Topic::ALL);
        let mut pushed = self.pushed.lock().await;
        if pushed.get(org_id).is_none_or(|cursor| cursor.seq >= seq) {
            return Ok(());
        }
        self.catch_up_locked(store, org_id, &mut pushed).await
    }

    /// Pushes every change not yet pushed, for every org with a stream here: after notices
    /// may have been lost.
    pub async fn resync(&self, store: &dyn Store) -> Result<(), StoreError> {
        let mut pushed = self.pushed.lock().await;
        let orgs: Vec<String> = pushed.keys().cloned().collect();
        for org_id in orgs {
            let last = store.change_seq(org_id.clone()).await?;
            if pushed.get(&org_id).is_some_and(|cursor| cursor.seq < last) {
                tracing::info!(org = %org_id, last, "catching up on changes");
                // Their notices were lost: the org's admin streams did not hear of them either.
                self.changes.changed(&org_id, &Topic::ALL);
                self.catch_up_locked(store, &org_id, &mut pushed).await?;
            }
        }
        Ok(())
    }

    /// Reads and pushes the changes of `org_id` after the last one pushed, in order. An org
    /// without an open stream here is forgotten instead (a new stream starts from a snapshot).
    async fn catch_up_locked(
        &self,
        store: &dyn Store,
        org_id: &str,
        pushed: &mut HashMap<String, OrgCursor>,
    ) -> Result<(), StoreError> {
        if self.hub.stream_count(org_id) == 0 {
            pushed.remove(org_id);
            return Ok(());
        }
        let Some(cursor) = pushed.get_mut(org_id) else {
            return Ok(());
        };
        loop {
            let batch = store.changes(org_id.to_owned(), cursor.seq, BATCH).await?;
            if batch.is_empty() {
                return Ok(());
            }
            for change in &batch {
                let started = Instant::now();
                let delivery = stream_changes::apply(store, &self.hub, change).await?;
                self.metrics.broadcast(
                    stream_changes::event_name(&change.kind),
                    started.elapsed(),
                    delivery.queued,
                    delivery.dropped,
                );
                if cursor.recent.len() == RECENT {
                    cursor.recent.pop_front();
                }
                cursor.recent.push_back((change.seq, delivery));
                cursor.seq = change.seq;
            }
        }
    }

    /// Opens a stream of `agent_id` whose initial frames `initial` are the state of `snapshot`.
    /// Refused as stale when changes after the snapshot were already pushed (the stream would
    /// miss them).
    async fn subscribe(
        &self,
        org_id: &str,
        agent_id: &str,
        snapshot: &StreamSnapshot,
        view: StreamView,
        initial: Vec<Frame>,
    ) -> Result<Subscription<StreamView>, Refused> {
        let mut pushed = self.pushed.lock().await;
        let first = self.hub.stream_count(org_id) == 0;
        let cursor = pushed.entry(org_id.to_owned()).or_default();
        if first {
            // Nothing here followed the org: start from this snapshot.
            cursor.seq = snapshot.seq;
            cursor.recent.clear();
        } else if cursor.seq > snapshot.seq {
            return Err(Refused::Stale);
        }
        self.hub
            .subscribe(org_id, agent_id, view, initial)
            .ok_or(Refused::Closed)
    }
}

/// Opens the event stream of an agent. It gets, first, its current resolved policy (if any: the
/// version assigned to it, see [`assign`]; and unless `last_event_id` says the agent already
/// runs that version and it has no overrides that could have changed it), then one `block` per fleet block of its org in force (reported
/// by anyone, the agent itself included: a restarted reporter needs them too), then one
/// `approval` per approved request of its own not yet executed, then the org's shadow run if
/// one runs (or the `shadow_end` of its last run, which an agent away when it ended still
/// runs); then every change as it
/// happens. 503 once the server is stopping.
pub async fn open(
    store: &dyn Store,
    publisher: &Publisher,
    org_id: &str,
    agent_id: &str,
    last_event_id: Option<u64>,
) -> Result<(Subscription<StreamView>, Option<StoredPolicy>), ApiError> {
    // A change pushed between reading the snapshot and subscribing makes it stale; rare, so
    // read again a few times.
    for _ in 0..8 {
        let now = clock::now_ms();
        let snapshot = store
            .stream_snapshot(org_id.to_owned(), agent_id.to_owned(), now)
            .await?;
        let assigned = assigned(&snapshot, agent_id);
        let (view, initial) =
            initial_state(publisher, &snapshot, assigned, agent_id, last_event_id, now);
        // Reports are checked against what was sent: record the version this stream runs
        // (sent now, or already run by the agent) before the agent can report on it.
        if let Some((policy, _)) = assigned {
            store
                .record_sent(vec![sent(
                    agent_id.to_owned(),
                    policy,
                    &view.overrides,
                    now,
                )])
                .await?;
        }
        match publisher
            .subscribe(org_id, agent_id, &snapshot, view, initial)
            .await
        {
            Ok(subscription) => {
                // The agent's stream on another replica, if any, ends there.
                if let Err(error) = store.announce_stream(agent_id.to_owned()).await {
                    tracing::warn!(agent = agent_id, %error, "cannot tell the other replicas of a new stream");
                }
                return Ok((subscription, assigned.map(|(p, _)| p.clone())));
            }
            Err(Refused::Stale) => continue,
            Err(Refused::Closed) => return Err(ApiError::unavailable()),
        }
    }
    Err(ApiError::unavailable())
}

/// The policy `agent_id` is assigned in `snapshot` (the org's latest version, or the
/// rollout's previous one), with the version it is the rollback of.
fn assigned<'a>(
    snapshot: &'a StreamSnapshot,
    agent_id: &str,
) -> Option<(&'a StoredPolicy, Option<PolicyVersion>)> {
    let latest = snapshot.policy.as_ref()?;
    let assignment = assign(snapshot.rollout.as_ref(), latest.version, agent_id);
    if assignment.version == latest.version {
        return Some((latest, None));
    }
    match snapshot.fallback.as_ref() {
        Some(fallback) if fallback.version == assignment.version => {
            Some((fallback, assignment.rollback_from))
        }
        // The rollout's previous version is gone (deleted by hand): the latest it is.
        _ => Some((latest, None)),
    }
}

/// The view and first frames of a new stream whose agent is assigned `assigned`.
fn initial_state(
    publisher: &Publisher,
    snapshot: &StreamSnapshot,
    assigned: Option<(&StoredPolicy, Option<PolicyVersion>)>,
    agent_id: &str,
    last_event_id: Option<u64>,
    now: i64,
) -> (StreamView, Vec<Frame>) {
    let list = super::overrides::stored_list(snapshot.overrides.as_ref());
    let mut initial = Vec::new();
    if let Some((policy, rollback_from)) = assigned {
        // Without overrides a version is the same document for everyone: an agent that says it
        // runs it does not need it again.
        let runs_it =
            last_event_id == Some(policy.version.number()) && snapshot.overrides.is_none();
        if !runs_it {
            let mut event = policy_event(policy, agent_id, &list);
            event.rollback_from = rollback_from;
            initial.push(Frame::policy(&event));
        }
    }
    for block in &snapshot.blocks {
        if let Some(event) = block_event(block, now) {
            initial.push(Frame::fleet(&FleetEvent::Block(event)));
        }
    }
    for approval in &snapshot.approved {
        initial.push(Frame::fleet(&FleetEvent::Approval(approval_event(
            approval,
        ))));
    }
    match snapshot.shadow.as_ref() {
        Some(run) if run.ended_ms.is_none() => initial.push(publisher.shadow_frame(run)),
        // The org's last run ended: an agent that was away when it ended still runs it, and
        // ends it only on `shadow_end` (one it does not run changes nothing).
        Some(run) => initial.push(Frame::shadow_end(&ShadowEndEvent { shadow: run.shadow })),
        None => {}
    }
    let view = StreamView {
        overrides: Arc::new(list),
        version: assigned.map(|(p, _)| p.version),
        rollback_from: assigned.and_then(|(_, from)| from),
        since: snapshot.seq,
    };
    (view, initial)
}
