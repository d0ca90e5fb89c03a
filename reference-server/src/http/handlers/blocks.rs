//! `/api/blocks`: fleet blocks in force, and lifting one.

use std::net::IpAddr;
use std::sync::Arc;

use warp::http::StatusCode;

use super::{Answer, ok};
use crate::app::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::fleet::blocks;
use crate::http::filters::{Query, org_query};

/// `GET /api/blocks` (admin, or an agent of the org): a plain array.
pub async fn list(principal: Principal, query: Query, state: Arc<AppState>) -> Answer {
    let org = principal.read_org(org_query(&query))?;
    ok(StatusCode::OK, &blocks::active(&*state.store, org).await?)
}

/// `DELETE /api/blocks/:ip` (admin): lifts the block and pushes `unblock` to every agent of the
/// org; 404 when none is in force, 400 for a non-address.
pub async fn lift(ip: String, principal: Principal, query: Query, state: Arc<AppState>) -> Answer {
    let org = principal.read_org(org_query(&query))?;
    let decoded = percent_decode(&ip);
    // `::ffff:a.b.c.d` names the block of a.b.c.d, as reports are read.
    let addr: IpAddr = decoded
        .parse()
        .map(policy_engine::event::canonical_ip)
        .map_err(|_| ApiError::bad_request(format!("`{decoded}` is not an IP address")))?;
    let unblocked = blocks::lift(
        &*state.store,
        &state.publisher,
        org,
        addr,
        principal.actor(),
    )
    .await?;
    ok(StatusCode::OK, &unblocked)
}

/// IPv6 addresses in a path arrive percent-encoded (`%3A` for `:`).
fn percent_decode(text: &str) -> String {
    let mut out = Vec::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            if let Some(value) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(value);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
