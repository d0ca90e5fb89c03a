//! Differential fuzzing of the rule engine: the bytes decode into a policy, an engine config and
//! a stream of events and policy updates (`policy-engine/tests/differential/cases.rs`), run
//! through `Engine` and through the linear reference model; every evaluation and the stats
//! after every step must be equal. The same bytes also give a random condition, whose compiled
//! evaluation must equal evalexpr's on random events.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../policy-engine/tests/differential/mod.rs"]
mod differential;

use differential::cases::{self, Source};

fuzz_target!(|data: &[u8]| {
    let case = cases::decode(data, 40, 200);
    if let Err(difference) = differential::compare_engines(&case) {
        panic!("engine and linear model differ: {difference}");
    }
    let mut src = Source::new(data);
    let text = cases::expression(&mut src, 4);
    if let Err(difference) = differential::compare_conditions(&text, &mut src) {
        panic!("compiled condition and evalexpr differ: {difference}");
    }
});
