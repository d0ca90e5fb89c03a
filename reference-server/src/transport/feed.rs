//! Change notifications for watchers (the console's admin event streams): each subscriber has
//! a scope (an org) and a set of pending change bits. Notifying ORs bits into every subscriber
//! of the scope and wakes it; a subscriber takes all its pending bits at once, and at most once
//! per interval, so a burst of changes (a thousand heartbeats) costs one notification per
//! watcher, memory per watcher is one word, and no queue can fill up. What the bits mean is the
//! owner's business.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The registry of watchers, by scope.
#[derive(Debug, Clone)]
pub struct Feed {
    inner: Arc<Mutex<Inner>>,
    interval: Duration,
    max_watchers: usize,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    closed: bool,
    watchers: HashMap<u64, (String, Arc<Pending>)>,
}

/// One watcher's pending bits and its wake-up.
#[derive(Debug, Default)]
struct Pending {
    bits: AtomicU32,
    closed: AtomicBool,
    wake: Notify,
}

/// Why a watcher was not registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    /// The feed is closed: the server is stopping.
    #[error("the server is shutting down")]
    Closed,
    /// As many watchers as allowed are open.
    #[error("too many open watchers (at most {0})")]
    Full(usize),
}

impl Feed {
    /// A feed whose watchers get at most one batch per `interval`, with at most `max_watchers`
    /// open at once.
    pub fn new(interval: Duration, max_watchers: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner::default())),
            interval,
            max_watchers,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks `bits` changed for every watcher of `scope`.
    pub fn notify(&self, scope: &str, bits: u32) {
        for (watched, pending) in self.lock().watchers.values() {
            if watched == scope {
                pending.bits.fetch_or(bits, Ordering::AcqRel);
                pending.wake.notify_one();
            }
        }
    }

    /// Open watchers.
    pub fn watcher_count(&self) -> usize {
        self.lock().watchers.len()
    }

    /// Registers a watcher of `scope`: a stream of the bits changed since its last item, ending
    /// when the feed closes.
    pub fn watch(&self, scope: &str) -> Result<Watcher, WatchError> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(WatchError::Closed);
        }
        if inner.watchers.len() >= self.max_watchers {
            return Err(WatchError::Full(self.max_watchers));
        }
        inner.next_id += 1;
        let id = inner.next_id;
        let pending = Arc::new(Pending::default());
        inner
            .watchers
            .insert(id, (scope.to_owned(), pending.clone()));
        Ok(Watcher {
            _registration: Registration {
                id,
                feed: self.inner.clone(),
            },
            pending,
            interval: self.interval,
        })
    }

    /// Ends every watcher and refuses new ones: shutdown.
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        for (_, pending) in inner.watchers.values() {
            pending.closed.store(true, Ordering::Release);
            pending.wake.notify_one();
        }
    }
}

/// One registered watcher; [`Watcher::changes`] turns it into its stream.
#[derive(Debug)]
pub struct Watcher {
    /// Held for its `Drop`.
    _registration: Registration,
    pending: Arc<Pending>,
    interval: Duration,
}

/// Removes the watcher from the feed when its stream is dropped (the client went away).
#[derive(Debug)]
struct Registration {
    id: u64,
    feed: Arc<Mutex<Inner>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut inner = self.feed.lock().unwrap_or_else(|p| p.into_inner());
        inner.watchers.remove(&self.id);
    }
}

impl Watcher {
    /// The bits changed since the previous item (never 0), at most one item per interval;
    /// ends when the feed closes.
    pub fn changes(self) -> impl Stream<Item = u32> + Send + 'static {
        let state = (self, None::<Instant>);
        futures_util::stream::unfold(state, |(watcher, last)| async move {
            loop {
                if watcher.pending.closed.load(Ordering::Acquire) {
                    return None;
                }
                if watcher.pending.bits.load(Ordering::Acquire) != 0 {
                    // A rate limit, not a wait for a condition: changes arriving meanwhile
                    // join this batch.
                    if let Some(last) = last {
                        tokio::time::sleep_until(last + watcher.interval).await;
                    }
                    let bits = watcher.pending.bits.swap(0, Ordering::AcqRel);
                    if bits != 0 {
                        return Some((bits, (watcher, Some(Instant::now()))));
                    }
                }
                watcher.pending.wake.notified().await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn changes_of_a_scope_are_coalesced_into_one_item_per_interval() {
        let feed = Feed::new(Duration::from_millis(500), 4);
        let watcher = feed.watch("acme").unwrap();
        let other = feed.watch("default").unwrap();
        let mut changes = Box::pin(watcher.changes());
        let mut other = Box::pin(other.changes());
        feed.notify("acme", 0b001);
        assert_eq!(changes.next().await, Some(0b001));
        // Within the interval: three notifications, one item with all their bits, not before
        // the interval has passed.
        let sent = Instant::now();
        feed.notify("acme", 0b010);
        feed.notify("acme", 0b100);
        feed.notify("acme", 0b010);
        assert_eq!(changes.next().await, Some(0b110));
        assert!(Instant::now() >= sent + Duration::from_millis(500));
        // The other org's watcher saw nothing of acme's: its first item is its own.
        feed.notify("default", 0b1000);
        assert_eq!(other.next().await, Some(0b1000));
    }

    #[tokio::test]
    async fn watchers_are_capped_removed_on_drop_and_ended_by_close() {
        let feed = Feed::new(Duration::from_millis(1), 2);
        let first = feed.watch("a").unwrap();
        let second = feed.watch("a").unwrap();
        assert_eq!(feed.watch("a").err(), Some(WatchError::Full(2)));
        drop(second);
        assert_eq!(feed.watcher_count(), 1);
        let third = feed.watch("b").unwrap();
        let mut changes = Box::pin(first.changes());
        feed.close();
        assert_eq!(changes.next().await, None);
        assert_eq!(feed.watch("a").err(), Some(WatchError::Closed));
        drop(changes);
        drop(third);
        assert_eq!(feed.watcher_count(), 0);
    }
}
