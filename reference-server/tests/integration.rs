//! The server's integration tests, one module per area, built as one test binary (one link
//! of tokio, warp, rustls and reqwest instead of one per file: about half the release build of
//! every target). `cargo test -p reference-server --test integration hostile::` runs one area.
//! The console's browser test is a binary of its own (`--test console_browser`): CI runs it
//! again against the release server.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;
mod hostile_common;
mod metrics_docs;

mod approval_outcomes;
mod console_api;
mod dry_run;
mod e2e;
mod fleet_budget;
mod fleet_overrides;
mod fleet_server;
mod handlers;
mod hostile;
mod http_framing;
mod layering;
mod lean_streams;
mod metrics;
mod openapi;
mod protocol_wire;
mod query_params;
mod quick_start;
mod replicas;
mod rollout_gates;
mod rollout_versions;
mod rollouts;
mod shadow;
mod signed_policies;
mod store_backends;
mod stream_admission;
mod tls_files;
