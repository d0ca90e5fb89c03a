//! Differential testing of the rule engine: the linear reference model (`model`) and random
//! workloads decoded from bytes (`cases`). Used by `tests/engine_differential.rs` and by the
//! `engine_differential` fuzz target, which includes this directory with `#[path]`.

pub mod cases;
pub mod model;
