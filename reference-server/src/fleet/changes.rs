//! What changed, for the console: every write tells the admin event streams of its org which
//! topics changed (agents, policies, approvals, blocks, the audit), without saying what; a
//! console refetches what it shows. Notifications are coalesced per stream
//! ([`Feed`](crate::transport::Feed)), so a burst of writes costs one event per stream.
//!
//! Who notifies: a fleet function that writes through the [`Publisher`](super::Publisher)
//! (publishing, overrides, blocks, decisions) notifies itself; writes without it (enrollment,
//! heartbeats, reports, an agent's stream opening or closing) are notified by their handler.

use std::time::Duration;

use futures_util::{Stream, StreamExt};
use serde::Serialize;

use crate::error::ApiError;
use crate::transport::{Feed, WatchError};

/// Shortest time between two `changed` events of one admin stream.
pub const CHANGE_INTERVAL: Duration = Duration::from_millis(250);

/// Most admin event streams open at once (each costs a task and a socket).
pub const MAX_ADMIN_STREAMS: usize = 256;

/// A kind of thing that changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Topic {
    /// Agents: enrolled, a heartbeat, a stream opened or closed, outdated after a new version.
    Agents,
    /// A new policy version.
    Policies,
    /// An approval requested, decided or closed.
    Approvals,
    /// A fleet block stored, extended or lifted.
    Blocks,
    /// New audit entries.
    Audit,
}

impl Topic {
    /// Every topic.
    pub const ALL: [Self; 5] = [
        Self::Agents,
        Self::Policies,
        Self::Approvals,
        Self::Blocks,
        Self::Audit,
    ];

    fn bit(self) -> u32 {
        match self {
            Self::Agents => 1,
            Self::Policies => 2,
            Self::Approvals => 4,
            Self::Blocks => 8,
            Self::Audit => 16,
        }
    }

    fn bits(topics: &[Self]) -> u32 {
        topics.iter().fold(0, |bits, t| bits | t.bit())
    }
}

/// The first event of an admin stream (`event: ready`): the stream is open for `orgId`; a
/// console fetches what it shows now, then again on each `changed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ready {
    /// The org watched.
    pub org_id: String,
    /// The topics `changed` events name.
    pub topics: Vec<Topic>,
}

/// `event: changed`: these topics changed since the previous event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Changed {
    /// What changed.
    pub topics: Vec<Topic>,
}

/// The admin event streams.
#[derive(Debug, Clone)]
pub struct Changes {
    feed: Feed,
}

impl Default for Changes {
    fn default() -> Self {
        Self {
            feed: Feed::new(CHANGE_INTERVAL, MAX_ADMIN_STREAMS),
        }
    }
}

impl Changes {
    /// Tells the admin streams of `org` that `topics` changed.
    pub fn changed(&self, org: &str, topics: &[Topic]) {
        self.feed.notify(org, Topic::bits(topics));
    }

    /// Open admin streams.
    pub fn stream_count(&self) -> usize {
        self.feed.watcher_count()
    }

    /// A new admin stream of `org`: 503 when the server is stopping or too many are open.
    pub fn watch(&self, org: &str) -> Result<impl Stream<Item = Changed> + use<>, ApiError> {
        let watcher = self.feed.watch(org).map_err(|error| match error {
            WatchError::Closed => ApiError::unavailable(),
            WatchError::Full(_) => ApiError::overloaded(format!("{error}; try again later")),
        })?;
        Ok(watcher.changes().map(|bits| Changed {
            topics: Topic::ALL
                .into_iter()
                .filter(|t| bits & t.bit() != 0)
                .collect(),
        }))
    }

    /// Ends every admin stream and refuses new ones: shutdown.
    pub fn close(&self) {
        self.feed.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stream_gets_the_topics_of_its_org_only() {
        let changes = Changes::default();
        let mut acme = Box::pin(changes.watch("acme").unwrap());
        changes.changed("default", &[Topic::Agents]);
        changes.changed("acme", &[Topic::Audit, Topic::Approvals]);
        assert_eq!(
            acme.next().await,
            Some(Changed {
                topics: vec![Topic::Approvals, Topic::Audit]
            })
        );
        assert_eq!(
            serde_json::to_string(&Changed {
                topics: vec![Topic::Blocks]
            })
            .unwrap(),
            r#"{"topics":["blocks"]}"#
        );
    }
}
