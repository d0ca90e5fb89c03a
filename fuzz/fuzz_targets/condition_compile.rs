//! Arbitrary text into the condition compiler; whatever compiles must be read-only and
//! evaluate without panicking against an empty context.
#![no_main]

use libfuzzer_sys::fuzz_target;
use policy_engine::Condition;

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(condition) = Condition::compile(source) else {
        return;
    };
    assert!(condition.tree().iter_write_variable_identifiers().next().is_none());
    let _ = condition.tree().eval();
});
