//! The background sweeper: marks expired approval requests (with their audit entries) and
//! forgets old report ids.

use std::sync::Weak;
use std::time::Duration;

use super::reports::REPORT_RECEIPT_TTL;
use crate::clock;
use crate::store::{Store, StoreError};

/// Sweeps every `every`, until the store closes or is gone.
pub fn spawn(store: Weak<dyn Store>, every: Duration) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every.max(Duration::from_millis(10)));
        loop {
            ticks.tick().await;
            let Some(store) = store.upgrade() else { break };
            match store.expire_approvals(clock::now_ms()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(expired = n, "approval requests expired"),
                Err(StoreError::Closed) => break,
                Err(error) => tracing::warn!(%error, "cannot expire approval requests"),
            }
            let before = clock::now_ms().saturating_sub(clock::millis(REPORT_RECEIPT_TTL));
            match store.prune_report_receipts(before).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(forgotten = n, "old report ids forgotten"),
                Err(StoreError::Closed) => break,
                Err(error) => tracing::warn!(%error, "cannot forget old report ids"),
            }
        }
    });
}
