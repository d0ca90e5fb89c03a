//! Fleet-wide blocks: a reported `scope: fleet` block stored per org and address (duplicates
//! collapsed, the later expiry wins) and pushed to the other agents; lifting one pushes
//! `unblock` to every agent of the org.

use std::net::IpAddr;

use policy_engine::protocol::BlockView;
use serde::Serialize;

use super::changes::Topic;
use super::streams::Publisher;
use super::views::block_view;
use crate::clock;
use crate::error::ApiError;
use crate::store::{NewBlock, NewEntry, Store, StoreError, Upserted};

/// The answer to `DELETE /api/blocks/:ip` (admin only).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Unblocked {
    /// The address.
    pub ip: IpAddr,
    /// The block that was lifted.
    pub block: BlockView,
    /// Streams the `unblock` event was queued to.
    pub broadcasted_to: usize,
}

/// A stored report of a fleet block: the block now in force, and the streams it was pushed to
/// (every agent of the org but the reporter, only when the report created or extended it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// What the store did.
    pub upserted: Upserted,
    /// Streams the `block` event was queued to.
    pub broadcasted_to: usize,
}

/// Stores a reported fleet block with its report's audit `entry` and pushes it when it changed.
pub async fn record(
    store: &dyn Store,
    publisher: &Publisher,
    new: NewBlock,
    entry: NewEntry,
) -> Result<Recorded, StoreError> {
    let org = new.org_id.clone();
    let reporter = new.agent_id.clone();
    let pushed = store.upsert_block(new, entry).await?;
    let upserted = pushed.value;
    let broadcasted_to = publisher.push(store, &org, pushed.seq).await.queued;
    publisher.changed(&org, &[Topic::Blocks]);
    tracing::info!(
        org = org.as_str(),
        agent = reporter.as_str(),
        ip = %upserted.block.ip,
        changed = upserted.changed,
        broadcasted_to,
        "fleet block"
    );
    Ok(Recorded {
        upserted,
        broadcasted_to,
    })
}

/// The blocks of `org` in force.
pub async fn active(store: &dyn Store, org: String) -> Result<Vec<BlockView>, ApiError> {
    let blocks = store.active_blocks(org, clock::now_ms()).await?;
    Ok(blocks.iter().map(block_view).collect())
}

/// Lifts the block on `ip` in `org` and pushes `unblock` to every agent of the org (the
/// original reporter included); 404 when none is in force.
pub async fn lift(
    store: &dyn Store,
    publisher: &Publisher,
    org: String,
    ip: IpAddr,
    by: String,
) -> Result<Unblocked, ApiError> {
    let entry = NewEntry {
        org_id: org.clone(),
        actor: by,
        action: "unblock".to_owned(),
        ip: Some(ip),
        outcome: "lifted".to_owned(),
        ..NewEntry::default()
    };
    let pushed = store
        .remove_block(org.clone(), ip, clock::now_ms(), entry)
        .await?;
    let removed = pushed
        .value
        .ok_or_else(|| ApiError::not_found(format!("no fleet block on `{ip}` in org `{org}`")))?;
    let delivery = publisher.push(store, &org, pushed.seq).await;
    publisher.changed(&org, &[Topic::Blocks, Topic::Audit]);
    tracing::info!(org = org.as_str(), %ip, broadcasted_to = delivery.queued, "fleet block lifted");
    Ok(Unblocked {
        ip,
        block: block_view(&removed),
        broadcasted_to: delivery.queued,
    })
}
