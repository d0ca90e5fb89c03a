//! Open event streams and the broadcast of policies (and the fleet events `block`, `unblock`,
//! `approval`) to them.
//!
//! Each stream owns a bounded queue. A broadcast serializes the policy once into a shared
//! `Arc<str>` and queues that to every stream of the org; only agents with overrides get a
//! payload of their own. A full queue means the agent does not keep up: its stream is dropped
//! (it reconnects and gets the current policy first), so no agent delays the others and no queue
//! grows without bound.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use policy_engine::policy::wire::RuleDocument;
use policy_engine::protocol::{FleetEvent, POLICY_EVENT};
use tokio::sync::mpsc;
use warp::sse::Event;

use crate::models::policy_event;
use crate::overrides::{self, Override};
use crate::store::StoredPolicy;

/// One event, serialized: `data` is shared by every stream that gets the same payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The SSE `event:` name: `policy`, `block`, `unblock` or `approval`.
    pub event: &'static str,
    /// Version number, sent as the SSE `id:` of `policy` events (fleet events carry no id, so
    /// an agent's last event id stays its policy version).
    pub version: u64,
    /// The JSON payload (a protocol `PolicyEvent` for `policy`).
    pub data: Arc<str>,
}

impl Frame {
    /// A fleet event (`block`, `unblock`, `approval`), serialized.
    pub fn fleet(event: &FleetEvent) -> Self {
        Self {
            event: event.name(),
            version: 0,
            data: Arc::from(event.data()),
        }
    }

    /// The frame of `policy` for an agent with `overrides` (none: the policy as stored).
    /// Overrides that no longer fit the policy are ignored, with a warning.
    pub fn for_agent(policy: &StoredPolicy, agent_id: &str, overrides: &[Override]) -> Self {
        if overrides.is_empty() {
            return Self::encode(policy, policy.policy.to_document().rules);
        }
        match overrides::apply(&policy.policy.to_json_value(), overrides) {
            Ok(resolved) => Self::encode(policy, resolved.to_document().rules),
            Err(error) => {
                tracing::warn!(
                    agent = agent_id,
                    version = %policy.version,
                    %error,
                    "overrides do not fit this policy version; sending it unmodified"
                );
                Self::encode(policy, policy.policy.to_document().rules)
            }
        }
    }

    fn encode(policy: &StoredPolicy, rules: Vec<RuleDocument>) -> Self {
        let data =
            serde_json::to_string(&policy_event(policy, rules)).unwrap_or_else(|_| "{}".to_owned());
        Self {
            event: POLICY_EVENT,
            version: policy.version.number(),
            data: Arc::from(data),
        }
    }
}

/// The registry of open event streams, by org.
#[derive(Debug, Clone)]
pub struct Hub {
    inner: Arc<Mutex<Inner>>,
    queue: usize,
    keep_alive: Duration,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    closed: bool,
    orgs: HashMap<String, HashMap<u64, Conn>>,
}

#[derive(Debug)]
struct Conn {
    agent_id: String,
    tx: mpsc::Sender<Frame>,
    overrides: Arc<Vec<Override>>,
}

/// What happened to one broadcast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Delivery {
    /// Streams the event was queued to.
    pub queued: usize,
    /// Streams dropped because their queue was full.
    pub dropped: usize,
}

impl Hub {
    /// A hub whose streams queue at most `queue` events and send a keep-alive comment after
    /// `keep_alive` of silence.
    pub fn new(queue: usize, keep_alive: Duration) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner::default())),
            queue: queue.max(1),
            keep_alive,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Opens a stream for an agent; `initial` (its policy, then the fleet blocks and approvals
    /// in force) is queued first, on top of the stream's queue. `None` once the hub is closed.
    pub fn subscribe(
        &self,
        org_id: &str,
        agent_id: &str,
        overrides: Arc<Vec<Override>>,
        initial: impl IntoIterator<Item = Frame>,
    ) -> Option<Subscription> {
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
        let id = inner.next_id;
        inner.orgs.entry(org_id.to_owned()).or_default().insert(
            id,
            Conn {
                agent_id: agent_id.to_owned(),
                tx,
                overrides,
            },
        );
        Some(Subscription {
            id,
            org_id: org_id.to_owned(),
            hub: self.inner.clone(),
            rx,
        })
    }

    /// Queues `policy` to every stream of its org (each agent's overrides applied).
    pub fn broadcast(&self, policy: &StoredPolicy) -> Delivery {
        let shared = Frame::for_agent(policy, "", &[]);
        let mut inner = self.lock();
        let Some(conns) = inner.orgs.get_mut(&policy.org_id) else {
            return Delivery::default();
        };
        let mut delivery = Delivery::default();
        conns.retain(|_, conn| {
            let frame = if conn.overrides.is_empty() {
                shared.clone()
            } else {
                Frame::for_agent(policy, &conn.agent_id, &conn.overrides)
            };
            deliver(conn, frame, &mut delivery)
        });
        delivery
    }

    /// Replaces the overrides of an agent's open streams and queues `frame` (its newly
    /// resolved policy) to them.
    pub fn update_agent(
        &self,
        org_id: &str,
        agent_id: &str,
        overrides: Arc<Vec<Override>>,
        frame: Option<Frame>,
    ) -> Delivery {
        let mut inner = self.lock();
        let mut delivery = Delivery::default();
        if let Some(conns) = inner.orgs.get_mut(org_id) {
            conns.retain(|_, conn| {
                if conn.agent_id != agent_id {
                    return true;
                }
                conn.overrides = overrides.clone();
                match &frame {
                    Some(frame) => deliver(conn, frame.clone(), &mut delivery),
                    None => true,
                }
            });
        }
        delivery
    }

    /// Queues a fleet event to every stream of `org` except those of `except` (the agent that
    /// reported it).
    pub fn send_org(&self, org_id: &str, frame: &Frame, except: Option<&str>) -> Delivery {
        let mut inner = self.lock();
        let mut delivery = Delivery::default();
        if let Some(conns) = inner.orgs.get_mut(org_id) {
            conns.retain(|_, conn| {
                if except == Some(conn.agent_id.as_str()) {
                    return true;
                }
                deliver(conn, frame.clone(), &mut delivery)
            });
        }
        delivery
    }

    /// Queues a fleet event to the open streams of one agent.
    pub fn send_agent(&self, org_id: &str, agent_id: &str, frame: &Frame) -> Delivery {
        let mut inner = self.lock();
        let mut delivery = Delivery::default();
        if let Some(conns) = inner.orgs.get_mut(org_id) {
            conns.retain(|_, conn| {
                if conn.agent_id != agent_id {
                    return true;
                }
                deliver(conn, frame.clone(), &mut delivery)
            });
        }
        delivery
    }

    /// Agents of `org` with an open stream.
    pub fn online_agents(&self, org_id: &str) -> HashSet<String> {
        self.lock()
            .orgs
            .get(org_id)
            .map(|conns| conns.values().map(|c| c.agent_id.clone()).collect())
            .unwrap_or_default()
    }

    /// Open streams of `org`.
    pub fn stream_count(&self, org_id: &str) -> usize {
        self.lock().orgs.get(org_id).map_or(0, HashMap::len)
    }

    /// Ends every stream (after its queued events) and refuses new ones: shutdown.
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.orgs.clear();
    }

    /// See [`crate::ServerConfig::keep_alive`].
    pub fn keep_alive(&self) -> Duration {
        self.keep_alive
    }
}

/// Queues `frame`; `false` (remove the stream) when the queue is full or the stream is gone.
fn deliver(conn: &Conn, frame: Frame, delivery: &mut Delivery) -> bool {
    match conn.tx.try_send(frame) {
        Ok(()) => {
            delivery.queued += 1;
            true
        }
        Err(mpsc::error::TrySendError::Full(_)) => {
            tracing::warn!(agent = %conn.agent_id, "event queue full; dropping the slow stream");
            delivery.dropped += 1;
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

/// One open event stream: yields `policy` and fleet events until the hub drops it.
#[derive(Debug)]
pub struct Subscription {
    id: u64,
    org_id: String,
    hub: Arc<Mutex<Inner>>,
    rx: mpsc::Receiver<Frame>,
}

impl Stream for Subscription {
    type Item = Result<Event, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|frame| {
            frame.map(|frame| {
                let event = Event::default().event(frame.event);
                let event = if frame.event == POLICY_EVENT {
                    event.id(frame.version.to_string())
                } else {
                    event
                };
                Ok(event.data(&*frame.data))
            })
        })
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut inner = self.hub.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(conns) = inner.orgs.get_mut(&self.org_id) {
            conns.remove(&self.id);
            if conns.is_empty() {
                inner.orgs.remove(&self.org_id);
            }
        }
    }
}
