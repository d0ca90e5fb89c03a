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

#[derive(Debug)]
struct Conn<V> {
    agent_id: String,
    tx: mpsc::Sender<Frame>,
    view: V,
}

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
        inner.orgs.entry(org_id.to_owned()).or_default().insert(
            id,
            Conn {
                agent_id: agent_id.to_owned(),
                tx,
                view,
            },
        );
        Some(Subscription {
            id,
            org_id: org_id.to_owned(),
            agent_id: agent_id.to_owned(),
            hub: self.inner.clone(),
            rx,
        })
    }

    /// Visits every stream of `org_id`: `visit` gets its agent and view (which it may update)
    /// and returns the frame to queue to it, if any (a broadcast tailored per stream).
    pub fn visit_org(
        &self,
        org_id: &str,
        mut visit: impl FnMut(&str, &mut V) -> Option<Frame>,
    ) -> Delivery {
        let mut inner = self.lock();
        let mut delivery = Delivery::default();
        if let Some(conns) = inner.orgs.get_mut(org_id) {
            conns.retain(|_, conn| match visit(&conn.agent_id, &mut conn.view) {
                Some(frame) => deliver(conn, frame, &mut delivery),
                None => true,
            });
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
#[derive(Debug)]
pub struct Subscription<V> {
    id: u64,
    org_id: String,
    agent_id: String,
    hub: Arc<Mutex<Inner<V>>>,
    rx: mpsc::Receiver<Frame>,
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
        if let Some(conns) = inner.orgs.get_mut(&self.org_id) {
            conns.remove(&self.id);
            if conns.is_empty() {
                inner.orgs.remove(&self.org_id);
            }
        }
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
        assert_eq!(hub.visit_org("org", |_, _| Some(frame("x"))).queued, 2);
        assert!(new.next().await.is_some());
        // Dropping the replaced stream does not unregister the new one.
        drop(old);
        assert_eq!(hub.online_agents("org").len(), 2);
        assert_eq!(
            hub.visit_org("org", |agent, _| (agent == "a").then(|| frame("y")))
                .queued,
            1
        );
        drop(new);
        assert_eq!(
            hub.visit_org("org", |agent, _| (agent == "a").then(|| frame("z")))
                .queued,
            0
        );
        assert!(!hub.lock().by_agent.contains_key("a"));
    }
}
