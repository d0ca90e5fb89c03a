//! Differential testing of the rule engine: the linear reference model (`model`) and random
//! workloads decoded from bytes (`cases`). Used by `tests/engine_differential.rs` and by the
//! `engine_differential` fuzz target, which includes this directory with `#[path]`.

// Each test crate uses a different part of this module.
#![allow(dead_code)]

pub mod cases;
pub mod model;
