//! The examples' integration tests, one module per program or area, built as one test binary
//! (one link of tokio, rustls, reqwest and the in-process reference server instead of one per
//! file). `cargo test -p examples --test integration agent_stalls::` runs one area. The SSH
//! guard on real OpenSSH (`ssh_guard_e2e`) and the fleet simulator (`fleet_sim`) are binaries of
//! their own: they load the machine and would slow the timing-sensitive agent tests beside
//! them.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod agent_common;
#[path = "../../reference-server/tests/metrics_docs/mod.rs"]
mod metrics_docs;

mod agent_acks;
mod agent_budgets;
mod agent_cli;
mod agent_hostile;
mod agent_metrics;
mod agent_outbox;
mod agent_reconnect;
mod agent_rollout;
mod agent_safety;
mod agent_shadow;
mod agent_signed;
mod agent_stalls;
mod agent_sync;
mod fleet_agent_cli;
mod fleet_e2e;
mod policy_sign_cli;
mod simulate_cli;
mod ssh_guard_exact;
mod ssh_guard_follow;
mod validate_cli;
