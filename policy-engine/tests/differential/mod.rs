//! Differential testing of the rule engine: the linear reference model (`model`), random
//! workloads decoded from bytes (`cases`), and the comparisons (`compare_engines`,
//! `compare_conditions`). Used by `tests/engine_differential.rs`,
//! `tests/condition_compiled.rs` and the `engine_differential` fuzz target, which includes
//! this directory with `#[path]`.

// Each test crate uses a different part of this module.
#![allow(dead_code)]

pub mod cases;
pub mod model;

use policy_engine::condition::Evaluator;
use policy_engine::{Condition, Engine, Policy, PolicyVersion};

use cases::{Case, Source, Step};
use model::LinearEngine;

/// Runs `case` through `Engine` and the linear model; the first difference (in an evaluation,
/// or in the stats after a step) as a message.
pub fn compare_engines(case: &Case) -> Result<(), String> {
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
                if got != want {
                    return Err(format!(
                        "step {i}, event {event:?}:\n engine: {got:?}\n model:  {want:?}"
                    ));
                }
            }
            Step::Update(policy) => {
                version += 1;
                engine.update_policy(Policy::clone(policy), PolicyVersion::new(version));
                reference.update_policy(policy, PolicyVersion::new(version));
            }
        }
        if engine.stats() != reference.stats() {
            return Err(format!(
                "stats after step {i}:\n engine: {:?}\n model:  {:?}",
                engine.stats(),
                reference.stats()
            ));
        }
    }
    Ok(())
}

/// Evaluates condition `text` (if it compiles) on eight events decoded from `src`, with the
/// evaluator (its compiled form where it has one) and with evalexpr alone; the first
/// difference as a message. `Ok(true)` when the condition compiled to a typed tree.
pub fn compare_conditions(text: &str, src: &mut Source<'_>) -> Result<bool, String> {
    let Ok(condition) = Condition::compile(text) else {
        return Ok(false);
    };
    let mut evaluator = Evaluator::new(&condition);
    let mut reference = Evaluator::new(&condition);
    for i in 0..8 {
        let event = cases::event(src, i);
        let got = evaluator.eval(&condition, &event);
        let want = reference.eval_reference(&condition, &event);
        if got != want {
            return Err(format!(
                "condition `{text}`, event {event:?}:\n compiled: {got:?}\n evalexpr: {want:?}"
            ));
        }
    }
    Ok(evaluator.is_compiled())
}
