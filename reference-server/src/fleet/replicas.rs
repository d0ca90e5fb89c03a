//! Several server replicas on one database: each pushes the others' changes to its own
//! streams. The store's [`Notice`]s (PostgreSQL `NOTIFY`, carrying only a change number or a
//! token hash) trigger reading the rows; a periodic resync reads what a lost notice would have
//! announced, so no change waits on a notice forever.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::mpsc;

use super::streams::Publisher;
use crate::auth::TokenCache;
use crate::store::{Notice, Store, StoreError};

/// What the notice loop keeps up to date.
#[derive(Debug, Clone)]
pub struct Replica {
    /// The database shared with the other replicas.
    pub store: Weak<dyn Store>,
    /// This replica's streams.
    pub publisher: Weak<Publisher>,
    /// This replica's tokens.
    pub tokens: Weak<TokenCache>,
}

/// Follows `notices` until the store closes (or the server is gone), and resyncs every
/// `resync` meanwhile.
pub fn spawn(replica: Replica, mut notices: mpsc::Receiver<Notice>, resync: Duration) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(resync.max(Duration::from_millis(10)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            // `None`: the periodic resync of changes (tokens come with their notices).
            let notice = tokio::select! {
                notice = notices.recv() => match notice {
                    Some(notice) => Some(notice),
                    None => break,
                },
                _ = ticks.tick() => None,
            };
            let (Some(store), Some(publisher), Some(tokens)) = (
                replica.store.upgrade(),
                replica.publisher.upgrade(),
                replica.tokens.upgrade(),
            ) else {
                break;
            };
            let handled = match notice {
                Some(notice) => handle(&*store, &publisher, &tokens, notice).await,
                None => publisher.resync(&*store).await,
            };
            match handled {
                Ok(()) => {}
                Err(StoreError::Closed) => break,
                Err(error) => tracing::warn!(%error, "cannot follow the other replicas' changes"),
            }
        }
        tracing::debug!("stopped following the other replicas");
    });
}

async fn handle(
    store: &dyn Store,
    publisher: &Publisher,
    tokens: &TokenCache,
    notice: Notice,
) -> Result<(), StoreError> {
    match notice {
        Notice::Change { org_id, seq } => publisher.notice(store, &org_id, seq).await,
        Notice::Token(hash) => {
            if let Some(principal) = store.token(hash).await? {
                tokens.insert(hash, principal);
            }
            Ok(())
        }
        Notice::StreamOpened { agent_id } => {
            if publisher.hub().end_agent(&agent_id) {
                tracing::info!(
                    agent = agent_id.as_str(),
                    "event stream replaced by a new one on another replica"
                );
            }
            Ok(())
        }
        Notice::Resync => {
            tokens.replace(store.tokens().await?);
            publisher.resync(store).await
        }
    }
}

/// The notice loop of an app whose store is shared with other replicas; nothing for an
/// embedded store.
pub fn follow(
    store: &Arc<dyn Store>,
    publisher: &Arc<Publisher>,
    tokens: &Arc<TokenCache>,
    resync: Duration,
) {
    let Some(notices) = store.notices() else {
        return;
    };
    spawn(
        Replica {
            store: Arc::downgrade(store),
            publisher: Arc::downgrade(publisher),
            tokens: Arc::downgrade(tokens),
        },
        notices,
        resync,
    );
}
