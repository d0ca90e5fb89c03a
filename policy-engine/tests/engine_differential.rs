//! Differential test of the rule engine: for random policies (all four rule types, disabled
//! rules, windows, thresholds, custom conditions), random event streams and policy updates,
//! `Engine` emits exactly what the linear reference model in `tests/differential/model/`
//! emits (actions with their event, rule, target and order; diagnostics; stats), event by
//! event.

// Test code: a failed unwrap is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod differential;

use proptest::prelude::*;

use differential::{cases, compare_engines};

fn check(case: &cases::Case) -> Result<(), TestCaseError> {
    compare_engines(case).map_err(TestCaseError::fail)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Small vocabularies so that triggers, types and addresses collide often, small key caps so
    /// that evictions happen, and time steps from milliseconds to hours so that windows slide,
    /// blocks expire and stale keys are swept.
    #[test]
    fn indexed_engine_matches_the_linear_model(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
    ) {
        check(&cases::decode(&bytes, 12, 300))?;
    }

    /// Many rules per policy: the index lists hold many rules each, and triggers often have
    /// more `block_ip` rules than one key store holds.
    #[test]
    fn indexed_engine_matches_the_linear_model_with_many_rules(
        bytes in proptest::collection::vec(any::<u8>(), 0..8192),
    ) {
        check(&cases::decode(&bytes, 100, 100))?;
    }
}
