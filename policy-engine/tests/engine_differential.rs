//! Differential test of the rule engine: for random policies (all four rule types, disabled
//! rules, windows, thresholds, custom conditions), random event streams and policy updates,
//! `Engine` emits exactly what the linear reference model in `tests/differential/model/` emits (actions with
//! their event, rule, target and order; diagnostics; stats), event by event.

// Test code: a failed unwrap is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod differential;

use proptest::prelude::*;

use differential::cases::{self, Case, Step};
use differential::model::LinearEngine;
use policy_engine::{Engine, PolicyVersion};

/// Runs `steps` through both engines and compares every evaluation and the stats after it.
fn check(case: &Case) -> Result<(), TestCaseError> {
    let mut version = 1;
    let mut engine = Engine::new(
        case.policy.clone(),
        PolicyVersion::new(version),
        case.config.clone(),
    );
    let mut reference = LinearEngine::new(
        &case.policy,
        PolicyVersion::new(version),
        case.config.clone(),
    );
    for (i, step) in case.steps.iter().enumerate() {
        match step {
            Step::Event(event, now) => {
                let got = engine.process(event, *now);
                let want = reference.process(event, *now);
                prop_assert_eq!(got, want, "step {}: {:?}", i, event);
            }
            Step::Update(policy) => {
                version += 1;
                engine.update_policy(policy.clone(), PolicyVersion::new(version));
                reference.update_policy(policy, PolicyVersion::new(version));
            }
        }
        prop_assert_eq!(engine.stats(), reference.stats(), "stats after step {}", i);
    }
    Ok(())
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
