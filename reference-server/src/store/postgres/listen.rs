//! The notices of other replicas' commits: one dedicated connection (not from the pool) that
//! `LISTEN`s on the change, token and stream channels and forwards each notification as a [`Notice`].
//! When that connection drops it reconnects with backoff and, once listening again, sends
//! [`Notice::Resync`]: whatever was committed meanwhile is read from the tables, not from the
//! lost notifications.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::{AsyncMessage, Notification};

use super::agents::TOKENS_CHANNEL;
use super::policies::CHANGES_CHANNEL;
use super::{Result, connect};
use crate::auth::TokenHash;
use crate::store::{Notice, StoreError};

/// Starts listening; resolves once the first `LISTEN` is in place (so nothing committed after
/// the store opened is missed), then keeps listening on its own task until `stop`.
pub async fn spawn(
    config: tokio_postgres::Config,
    notices: Notices,
    stop: watch::Receiver<bool>,
) -> Result<()> {
    let (listening, ready) = oneshot::channel();
    tokio::spawn(run(config, notices, stop, listening));
    ready.await.map_err(|_| StoreError::Closed)?
}

async fn run(
    config: tokio_postgres::Config,
    notices: Notices,
    mut stop: watch::Receiver<bool>,
    listening: oneshot::Sender<Result<()>>,
) {
    let mut listening = Some(listening);
    let mut delay = Duration::from_millis(100);
    loop {
        let session = listen(&config, &notices).await;
        match session {
            Ok(pump) => {
                match listening.take() {
                    Some(first) => {
                        let _ = first.send(Ok(()));
                    }
                    None => {
                        tracing::info!("listening to the other replicas again; catching up");
                        send(&notices, Notice::Resync);
                    }
                }
                delay = Duration::from_millis(100);
                tokio::select! {
                    _ = pump => tracing::warn!(
                        "lost the connection that receives other replicas' changes; reconnecting"
                    ),
                    _ = stop.changed() => return,
                }
            }
            Err(error) => {
                if let Some(first) = listening.take() {
                    let _ = first.send(Err(error));
                    return;
                }
                tracing::warn!(%error, retry_in = ?delay, "cannot listen to the other replicas");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Connects, starts forwarding notifications and issues the `LISTEN`s; returns the task that
/// ends when the connection does.
async fn listen(
    config: &tokio_postgres::Config,
    notices: &Notices,
) -> Result<tokio::task::JoinHandle<()>> {
    let (client, mut connection) = connect(config).await?;
    let forward = notices.clone();
    let pump = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(notification)) => {
                    if let Some(notice) = notice_of(&notification, &forward.replica) {
                        send(&forward, notice);
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(error = %super::describe(&error), "listen connection failed");
                    break;
                }
            }
        }
    });
    let listened = client
        .batch_execute(&format!(
            "LISTEN {CHANGES_CHANNEL}; LISTEN {TOKENS_CHANNEL}; LISTEN {STREAMS_CHANNEL}"
        ))
        .await;
    if let Err(error) = listened {
        pump.abort();
        return Err(error.into());
    }
    // Keep the client until the connection ends.
    Ok(tokio::spawn(async move {
        let _client = client;
        let _ = pump.await;
    }))
}

/// Where notices go: the store's queue, read by the server.
#[derive(Debug, Clone)]
pub struct Notices {
    queue: mpsc::Sender<Notice>,
    /// Whether a [`Notice::Resync`] for a full queue is already on its way.
    lagging: Arc<AtomicBool>,
    /// This replica's id: its own stream notices are not for it.
    replica: Arc<str>,
}

impl Notices {
    /// Notices into `queue`, for replica `replica`.
    pub fn new(queue: mpsc::Sender<Notice>, replica: String) -> Self {
        Self {
            queue,
            lagging: Arc::new(AtomicBool::new(false)),
            replica: replica.into(),
        }
    }
}

/// The channel stream notices go out on: payload `<replica id> <agent id>`, when an agent
/// opened an event stream on that replica. Not stored: one lost (the listening connection was
/// down) leaves the older stream open until it ends otherwise.
pub const STREAMS_CHANNEL: &str = "policy_streams";

/// Queues a notice; when the reader is behind (the queue is full), the notice is dropped and
/// one [`Notice::Resync`] takes its place as soon as there is room.
fn send(notices: &Notices, notice: Notice) {
    match notices.queue.try_send(notice) {
        Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
        Err(mpsc::error::TrySendError::Full(_)) => {
            if notices.lagging.swap(true, Ordering::AcqRel) {
                return;
            }
            tracing::warn!("notices of other replicas come faster than they are read; resyncing");
            let notices = notices.clone();
            tokio::spawn(async move {
                let _ = notices.queue.send(Notice::Resync).await;
                notices.lagging.store(false, Ordering::Release);
            });
        }
    }
}

/// The notice a notification carries; `None` for this replica's own stream notice, and
/// (logged) for a payload that does not read.
fn notice_of(notification: &Notification, replica: &str) -> Option<Notice> {
    let payload = notification.payload();
    let notice = match notification.channel() {
        STREAMS_CHANNEL => match payload.split_once(' ') {
            Some((from, _)) if from == replica => return None,
            Some((_, agent_id)) if !agent_id.is_empty() => Some(Notice::StreamOpened {
                agent_id: agent_id.to_owned(),
            }),
            _ => None,
        },
        CHANGES_CHANNEL => payload.split_once(' ').and_then(|(seq, org)| {
            Some(Notice::Change {
                org_id: org.to_owned(),
                seq: seq.parse().ok()?,
            })
        }),
        TOKENS_CHANNEL if payload == "*" => Some(Notice::Resync),
        TOKENS_CHANNEL => hex::decode(payload)
            .ok()
            .and_then(|bytes| TokenHash::from_slice(&bytes))
            .map(Notice::Token),
        _ => None,
    };
    if notice.is_none() {
        tracing::warn!(
            channel = notification.channel(),
            "ignoring a malformed notification"
        );
    }
    notice
}
