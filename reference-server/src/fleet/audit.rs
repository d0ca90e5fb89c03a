//! The audit trail: one entry per decision (agent reports, policy changes, overrides, approval
//! decisions, unblocks, notification deliveries), and its filtered, paged reads.
//!
//! Writes that belong to a change (a fleet block, an approval transition) are made by the store
//! in that change's transaction; the others go through [`record`], which never fails the
//! request whose effect already happened.

use crate::clock;
use crate::store::{AuditFilter, AuditPage, NewEntry, Store, StoreError};

/// Records one entry; a failure is logged, never returned.
pub async fn record(store: &dyn Store, entry: NewEntry) {
    let action = entry.action.clone();
    if let Err(error) = store.append_audit(entry, clock::now()).await {
        tracing::error!(%error, action, "cannot write the audit entry");
    }
}

/// Records one entry that must be stored (it carries a report receipt).
pub async fn write(store: &dyn Store, entry: NewEntry) -> Result<(), StoreError> {
    store.append_audit(entry, clock::now()).await
}

/// One page of entries matching `filter`, newest first.
pub async fn page(store: &dyn Store, filter: AuditFilter) -> Result<AuditPage, StoreError> {
    store.audit(filter).await
}
