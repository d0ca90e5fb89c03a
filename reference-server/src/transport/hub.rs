//! The SSE hub: open event streams by org, each with a bounded queue of serialized frames.
//!
//! An agent has at most one live stream: a new one replaces the old, which ends (an agent that
//! reconnects after a network change must not wait for the old connection to time out, and a
//! stolen token cannot multiply the fan-out). So every count of streams is a count of agents.
//!
//! A frame is serialized once into a shared `Arc<str>` and queued to every stream that gets
//! the same payload. A full queue means the agent does not keep up: its stream is dropped (it
//! reconnects and gets the current state first), so no agent delays the others and no queue
//! grows without bound. What goes out (policies, fleet events) is the fleet's business; the
//! hub only knows frames and a per-stream view `V` its owner uses to tailor broadcasts.
//!
//! A stream whose connection can take writes from any thread (the lean path's, `lean.rs`) is
//! attached to its [`Direct`] writer: a broadcast then writes its frame to the connection
//! itself, from threads of the blocking pool, one share of the streams each, instead of
//! queueing it and waking the stream's task (at 10,000 streams, the queues, the wake-ups and
//! the tasks' polls cost as much CPU as the TLS writes themselves).

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use policy_engine::protocol::{
    FleetEvent, POLICY_EVENT, PolicyEvent, SHADOW_END_EVENT, SHADOW_EVENT, ShadowEndEvent,
    ShadowEvent,
};
use serde::Serialize;
use tokio::sync::mpsc;

/// One event, serialized once as the SSE text every stream that gets it writes: the bytes are
/// shared (a broadcast to 10,000 streams encodes its frame once, not 10,000 times), and a
/// frame is one pointer, so the queue of an idle stream stays small (its first block holds 32
/// of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame(Arc<Encoded>);

#[derive(Debug, PartialEq, Eq)]
struct Encoded {
    event: &'static str,
    id: Option<u64>,
    wire: Bytes,
}

impl Frame {
    /// The frame of event `event` with `id` and the JSON payload `data`.
    pub fn new(event: &'static str, id: Option<u64>, data: &str) -> Self {
        Self(Arc::new(Encoded {
            event,
            id,
            wire: Self::encode(event, id, data),
        }))
    }

    /// The SSE text of an event as the contract and the README show it: `event: NAME`,
    /// `id: N` when given, one `data: ` line per line of `data`, and the blank line. (warp's
    /// `sse::Event` wrote `event:NAME`, `data:` before `id:`, without the space: the same
    /// event to an SSE parser, which drops one space after the colon, but not the text the
    /// contract shows, which a client matching lines literally looks for.)
    fn encode(event: &str, id: Option<u64>, data: &str) -> Bytes {
        use std::fmt::Write as _;
        let mut text = String::with_capacity(event.len() + data.len() + 40);
        let _ = writeln!(text, "event: {event}");
        if let Some(id) = id {
            let _ = writeln!(text, "id: {id}");
        }
        for line in data.split('\n') {
            if line.is_empty() {
                text.push_str("data:\n");
            } else {
                let _ = writeln!(text, "data: {line}");
            }
        }
        text.push('\n');
        Bytes::from(text)
    }

    /// The SSE `event:` name: `policy`, `block`, `unblock`, `approval`, `shadow` or
    /// `shadow_end`.
    pub fn event(&self) -> &'static str {
        self.0.event
    }

    /// The SSE `id:`: the version number of `policy` events; fleet events carry none, so an
    /// agent's last event id stays its policy version.
    pub fn id(&self) -> Option<u64> {
        self.0.id
    }

    /// The event as written on the stream.
    pub fn wire(&self) -> &Bytes {
        &self.0.wire
    }

    /// A `policy` event.
    pub fn policy<R: Serialize>(event: &PolicyEvent<R>) -> Self {
        let data = serde_json::to_string(event).unwrap_or_else(|_| "{}".to_owned());
        Self::new(POLICY_EVENT, Some(event.version.number()), &data)
    }

    /// A `shadow` event (no `id:`: an agent's last event id stays its policy version).
    pub fn shadow<R: Serialize>(event: &ShadowEvent<R>) -> Self {
        let data = serde_json::to_string(event).unwrap_or_else(|_| "{}".to_owned());
        Self::new(SHADOW_EVENT, None, &data)
    }

    /// A `shadow_end` event.
    pub fn shadow_end(event: &ShadowEndEvent) -> Self {
        let data = serde_json::to_string(event).unwrap_or_else(|_| "{}".to_owned());
        Self::new(SHADOW_END_EVENT, None, &data)
    }

    /// A fleet event (`block`, `unblock`, `approval`).
    pub fn fleet(event: &FleetEvent) -> Self {
        Self::new(event.name(), None, &event.data())
    }
}

/// The registry of open event streams, by org. Each stream carries a `V` its owner chose
/// (what it needs to tailor a broadcast to that stream, e.g. the agent's overrides).
#[derive(Debug)]
pub struct Hub<V> {
    inner: Arc<Mutex<Inner<V>>>,
    queue: usize,
    keep_alive: Duration,
}

impl<V> Clone for Hub<V> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            queue: self.queue,
            keep_alive: self.keep_alive,
        }
    }
}

#[derive(Debug)]
struct Inner<V> {
    next_id: u64,
    closed: bool,
    orgs: HashMap<String, HashMap<u64, Conn<V>>>,
    /// The live stream of each agent: its org and stream id.
    by_agent: HashMap<String, (String, u64)>,
    /// Streams opened since start (replaced ones included).
    opened: u64,
}

impl<V> Inner<V> {
    /// Removes stream `id` of `org_id` (its org too, once it has no stream left); the stream
    /// ends after the events already queued to it.
    fn remove(&mut self, org_id: &str, id: u64) -> Option<Conn<V>> {
        let conns = self.orgs.get_mut(org_id)?;
        let conn = conns.remove(&id);
        if conns.is_empty() {
            self.orgs.remove(org_id);
        }
        conn
    }
}

struct Conn<V> {
    agent_id: String,
    tx: mpsc::Sender<Frame>,
    direct: Outlet,
    view: V,
}

impl<V: std::fmt::Debug> std::fmt::Debug for Conn<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("agent_id", &self.agent_id)
            .field("view", &self.view)
            .finish_non_exhaustive()
    }
}

/// A stream's connection that frames can be written to from the broadcasting thread, without
/// waiting: the lean path's.
pub trait Direct: Send + Sync {
    /// Writes `wire`, or adds it to what the connection still holds back when the socket does
    /// not take it now (the stream's own task writes that on). `false` when the stream cannot
    /// take it: more than `limit` frames are held back already (a client that does not keep
    /// up), or the connection failed. The hub then drops the stream.
    fn write(&self, wire: &Bytes, limit: usize) -> bool;
}

/// Where a stream's frames go once it is attached: shared by the hub's entry and the stream.
/// A frame is queued or written while this is locked, and attaching drains the queue while it
/// is, so no frame overtakes another.
type Outlet = Arc<Mutex<Option<Arc<dyn Direct>>>>;

fn lock_outlet(outlet: &Outlet) -> MutexGuard<'_, Option<Arc<dyn Direct>>> {
    outlet
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Streams a broadcast writes to on the broadcasting task itself; past that the writes are
/// shared among threads of the blocking pool ([`DirectWrites`]).
const WRITE_INLINE: usize = 64;

/// What happened to one broadcast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Delivery {
    /// Streams the event was queued to.
    pub queued: usize,
    /// Streams dropped because their queue was full.
    pub dropped: usize,
}

impl<V> Hub<V> {
    /// A hub whose streams queue at most `queue` events and send a keep-alive comment after
    /// `keep_alive` of silence.
    pub fn new(queue: usize, keep_alive: Duration) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                next_id: 0,
                closed: false,
                orgs: HashMap::new(),
                by_agent: HashMap::new(),
                opened: 0,
            })),
            queue: queue.max(1),
            keep_alive,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<V>> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Opens a stream for an agent with its `view`; `initial` (its policy, then the fleet
    /// blocks and approvals in force) is queued first, on top of the stream's queue. The
    /// agent's earlier stream, if any, is ended (after the events already queued to it).
    /// `None` once the hub is closed.
    pub fn subscribe(
        &self,
        org_id: &str,
        agent_id: &str,
        view: V,
        initial: impl IntoIterator<Item = Frame>,
    ) -> Option<Subscription<V>> {
        let initial: Vec<Frame> = initial.into_iter().collect();
        let (tx, rx) = mpsc::channel(self.queue + initial.len());
        for frame in initial {
            tx.try_send(frame).ok()?;
        }
        let mut inner = self.lock();
        if inner.closed {
            return None;
        }
        inner.next_id += 1;
        inner.opened += 1;
        let id = inner.next_id;
        if let Some((old_org, old_id)) = inner
            .by_agent
            .insert(agent_id.to_owned(), (org_id.to_owned(), id))
        {
            if let Some(conns) = inner.orgs.get_mut(&old_org) {
                conns.remove(&old_id);
            }
            tracing::info!(agent = agent_id, "event stream replaced by a new one");
        }
        let direct = Outlet::default();
        inner.orgs.entry(org_id.to_owned()).or_default().insert(
            id,
            Conn {
                agent_id: agent_id.to_owned(),
                tx,
                direct: direct.clone(),
                view,
            },
        );
        Some(Subscription {
            id,
            org_id: org_id.to_owned(),
            agent_id: agent_id.to_owned(),
            hub: self.inner.clone(),
            rx,
            direct,
        })
    }

    /// Visits every stream of `org_id`: `visit` gets its agent and view (which it may update)
    /// and returns the frame to send it, if any (a broadcast tailored per stream). The frames
    /// are queued, or written to the attached streams' connections, by the time this returns:
    /// the next broadcast's frames come after them.
    pub async fn visit_org(
        &self,
        org_id: &str,
        mut visit: impl FnMut(&str, &mut V) -> Option<Frame>,
    ) -> Delivery {
        let mut delivery = Delivery::default();
        let writes = {
            let mut inner = self.lock();
            let Some(conns) = inner.orgs.get_mut(org_id) else {
                return delivery;
            };
            let mut writes = DirectWrites::new(conns.len(), self.queue);
            conns.retain(|id, conn| match visit(&conn.agent_id, &mut conn.view) {
                Some(frame) => {
                    let outlet = lock_outlet(&conn.direct);
                    match &*outlet {
                        Some(writer) => {
                            writes.push(*id, writer.clone(), frame);
                            true
                        }
                        None => deliver(conn, frame, &mut delivery),
                    }
                }
                None => true,
            });
            writes
        };
        let (written, failed) = writes.finish().await;
        delivery.queued += written - failed.len();
        delivery.dropped += failed.len();
        if !failed.is_empty() {
            let mut inner = self.lock();
            if let Some(conns) = inner.orgs.get_mut(org_id) {
                for id in &failed {
                    if let Some(conn) = conns.remove(id) {
                        tracing::warn!(
                            agent = conn.agent_id.as_str(),
                            "event stream does not keep up or failed; dropping it"
                        );
                    }
                }
            }
        }
        delivery
    }

    /// What `pick` takes of each stream of `org_id` (its agent and view), in one pass: a
    /// broadcast's recipients, without cloning every view.
    pub fn collect_org<T>(
        &self,
        org_id: &str,
        mut pick: impl FnMut(&str, &V) -> Option<T>,
    ) -> Vec<T> {
        let inner = self.lock();
        let Some(conns) = inner.orgs.get(org_id) else {
            return Vec::new();
        };
        let mut picked = Vec::with_capacity(conns.len());
        picked.extend(
            conns
                .values()
                .filter_map(|conn| pick(&conn.agent_id, &conn.view)),
        );
        picked
    }

    /// The views of the open streams of one agent.
    pub fn views_of(&self, org_id: &str, agent_id: &str) -> Vec<V>
    where
        V: Clone,
    {
        self.lock()
            .orgs
            .get(org_id)
            .map(|conns| {
                conns
                    .values()
                    .filter(|c| c.agent_id == agent_id)
                    .map(|c| c.view.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Ends the open stream of `agent_id`, if any (after the events already queued to it, as
    /// a replaced stream ends): it opened one on another server. Whether there was one.
    pub fn end_agent(&self, agent_id: &str) -> bool {
        let mut inner = self.lock();
        let Some((org_id, id)) = inner.by_agent.remove(agent_id) else {
            return false;
        };
        inner.remove(&org_id, id).is_some()
    }

    /// Orgs with at least one open stream.
    pub fn orgs(&self) -> Vec<String> {
        self.lock().orgs.keys().cloned().collect()
    }

    /// Agents of `org` with an open stream.
    pub fn online_agents(&self, org_id: &str) -> HashSet<String> {
        self.lock()
            .orgs
            .get(org_id)
            .map(|conns| conns.values().map(|c| c.agent_id.clone()).collect())
            .unwrap_or_default()
    }

    /// Open streams of `org` (one per agent).
    pub fn stream_count(&self, org_id: &str) -> usize {
        self.lock().orgs.get(org_id).map_or(0, HashMap::len)
    }

    /// Streams opened since start, replaced ones included.
    pub fn streams_opened(&self) -> u64 {
        self.lock().opened
    }

    /// Ends every stream (after its queued events) and refuses new ones: shutdown.
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.orgs.clear();
        inner.by_agent.clear();
    }

    /// Longest silence on a stream before a keep-alive comment.
    pub fn keep_alive(&self) -> Duration {
        self.keep_alive
    }
}

/// A broadcast's writes to attached streams. Past [`WRITE_INLINE`] streams they are shared
/// among threads of the blocking pool, a few shares per core (a share whose thread is
/// preempted does not hold up the rest), each share starting as soon as it is collected: the
/// writes are CPU (TLS and the kernel's send), and the runtime's workers stay free meanwhile.
struct DirectWrites {
    limit: usize,
    share: usize,
    written: usize,
    part: Vec<(u64, Arc<dyn Direct>, Frame)>,
    started: Vec<(Vec<u64>, tokio::task::JoinHandle<Vec<u64>>)>,
}

impl DirectWrites {
    /// Writes to at most `streams` streams, each holding back at most `limit` frames.
    fn new(streams: usize, limit: usize) -> Self {
        let share = if streams <= WRITE_INLINE {
            usize::MAX
        } else {
            let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
            streams.div_ceil(4 * cores).max(WRITE_INLINE)
        };
        Self {
            limit,
            share,
            written: 0,
            part: Vec::new(),
            started: Vec::new(),
        }
    }

    fn push(&mut self, id: u64, writer: Arc<dyn Direct>, frame: Frame) {
        self.part.push((id, writer, frame));
        self.written += 1;
        if self.part.len() >= self.share {
            self.start();
        }
    }

    fn start(&mut self) {
        let part = std::mem::take(&mut self.part);
        let ids = part.iter().map(|(id, _, _)| *id).collect();
        let limit = self.limit;
        let task = tokio::task::spawn_blocking(move || write_all(&part, limit));
        self.started.push((ids, task));
    }

    /// Waits for every write: how many there were, and the streams that could not take theirs.
    async fn finish(mut self) -> (usize, Vec<u64>) {
        if self.started.is_empty() {
            return (self.written, write_all(&self.part, self.limit));
        }
        if !self.part.is_empty() {
            self.start();
        }
        let mut failed = Vec::new();
        for (ids, task) in self.started {
            match task.await {
                Ok(part) => failed.extend(part),
                // A panic, or the runtime's shutdown: those streams may have missed the frame,
                // so they end (their agents reconnect and get the current state first).
                Err(error) => {
                    tracing::error!(%error, "a broadcast's writes did not finish");
                    failed.extend(ids);
                }
            }
        }
        (self.written, failed)
    }
}

/// Writes each frame to its stream's connection; returns the streams that could not take it.
fn write_all(writes: &[(u64, Arc<dyn Direct>, Frame)], limit: usize) -> Vec<u64> {
    writes
        .iter()
        .filter(|(_, writer, frame)| !writer.write(frame.wire(), limit))
        .map(|(id, _, _)| *id)
        .collect()
}

/// Queues `frame`; `false` (remove the stream) when the queue is full or the stream is gone.
fn deliver<V>(conn: &Conn<V>, frame: Frame, delivery: &mut Delivery) -> bool {
    match conn.tx.try_send(frame) {
        Ok(()) => {
            delivery.queued += 1;
            true
        }
        Err(mpsc::error::TrySendError::Full(_)) => {
            tracing::warn!(
                agent = conn.agent_id.as_str(),
                "event queue full; dropping the slow stream"
            );
            delivery.dropped += 1;
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

/// One open event stream: yields `policy` and fleet events until the hub drops it.
pub struct Subscription<V> {
    id: u64,
    org_id: String,
    agent_id: String,
    hub: Arc<Mutex<Inner<V>>>,
    rx: mpsc::Receiver<Frame>,
    direct: Outlet,
}

impl<V> std::fmt::Debug for Subscription<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("org_id", &self.org_id)
            .field("agent_id", &self.agent_id)
            .finish_non_exhaustive()
    }
}

impl<V> Subscription<V> {
    /// Hands this stream's frames to `writer`: those queued so far at once, in order, then
    /// every later one straight from its broadcast (not through the queue and the stream's
    /// task). The stream still ends as it does without a writer: its [`Stream`] ends once the
    /// hub dropped it (replaced, too slow, shutdown). `false` when `writer` refused a queued
    /// frame (its connection failed).
    pub fn attach(&mut self, writer: Arc<dyn Direct>) -> bool {
        let mut outlet = lock_outlet(&self.direct);
        while let Ok(frame) = self.rx.try_recv() {
            if !writer.write(frame.wire(), usize::MAX) {
                return false;
            }
        }
        *outlet = Some(writer);
        true
    }
}

impl<V> Stream for Subscription<V> {
    /// The SSE text of each event ([`Frame::wire`]).
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx
            .poll_recv(cx)
            .map(|frame| frame.map(|frame| frame.wire().clone()))
    }
}

impl<V> Drop for Subscription<V> {
    fn drop(&mut self) {
        let mut inner = self.hub.lock().unwrap_or_else(|p| p.into_inner());
        inner.remove(&self.org_id, self.id);
        if inner.by_agent.get(&self.agent_id).map(|(_, id)| *id) == Some(self.id) {
            inner.by_agent.remove(&self.agent_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    fn frame(data: &str) -> Frame {
        Frame::new("block", None, data)
    }

    #[test]
    fn frames_are_written_as_the_contract_shows_them() {
        for (event, id, data, wire) in [
            (
                "policy",
                Some(7),
                r#"{"version":"v7","rules":[]}"#,
                "event: policy\nid: 7\ndata: {\"version\":\"v7\",\"rules\":[]}\n\n",
            ),
            (
                "block",
                None,
                r#"{"ip":"198.51.100.7"}"#,
                "event: block\ndata: {\"ip\":\"198.51.100.7\"}\n\n",
            ),
            (
                "shadow",
                None,
                "two\nlines",
                "event: shadow\ndata: two\ndata: lines\n\n",
            ),
            ("unblock", None, "", "event: unblock\ndata:\n\n"),
        ] {
            let frame = Frame::new(event, id, data);
            assert_eq!((frame.event(), frame.id()), (event, id));
            assert_eq!(
                std::str::from_utf8(frame.wire()).unwrap(),
                wire,
                "{event} {id:?}"
            );
        }
    }

    /// Regression (issue 13, finding 5): one agent token opened 2,000 streams and the next
    /// broadcast counted 2,000; a new stream now replaces the agent's old one.
    #[tokio::test]
    async fn a_new_stream_replaces_the_agents_old_one_and_counts_are_agents() {
        let hub: Hub<()> = Hub::new(4, Duration::from_secs(15));
        let mut old = hub.subscribe("org", "a", (), [frame("first")]).unwrap();
        let _b = hub.subscribe("org", "b", (), []).unwrap();
        let mut new = hub.subscribe("org", "a", (), []).unwrap();
        assert_eq!(hub.stream_count("org"), 2);
        assert_eq!(hub.streams_opened(), 3);
        // The old stream gets what was queued to it, then ends.
        assert!(old.next().await.is_some());
        assert!(old.next().await.is_none());
        assert_eq!(
            hub.visit_org("org", |_, _| Some(frame("x"))).await.queued,
            2
        );
        assert!(new.next().await.is_some());
        // Dropping the replaced stream does not unregister the new one.
        drop(old);
        assert_eq!(hub.online_agents("org").len(), 2);
        assert_eq!(
            hub.visit_org("org", |agent, _| (agent == "a").then(|| frame("y")))
                .await
                .queued,
            1
        );
        drop(new);
        assert_eq!(
            hub.visit_org("org", |agent, _| (agent == "a").then(|| frame("z")))
                .await
                .queued,
            0
        );
        assert!(!hub.lock().by_agent.contains_key("a"));
    }
}
