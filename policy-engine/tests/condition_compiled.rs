//! Compiled conditions against evalexpr: for random expressions (every field, literals of every
//! type, most operators, regexes with constant and computed patterns) and random events, the
//! evaluator's answer (its typed tree where it has one) equals evalexpr's own evaluation, errors
//! and their messages included.

// Test code: a failed unwrap is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod differential;

use proptest::prelude::*;

use differential::cases::{self, Source};
use differential::compare_conditions;
use policy_engine::Condition;
use policy_engine::condition::Evaluator;

fn agree(text: &str, src: &mut Source<'_>) -> Result<(), TestCaseError> {
    compare_conditions(text, src)
        .map(drop)
        .map_err(TestCaseError::fail)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn compiled_conditions_agree_with_evalexpr(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut src = Source::new(&bytes);
        let text = cases::expression(&mut src, 4);
        agree(&text, &mut src)?;
    }

    #[test]
    fn compiled_rule_conditions_agree_with_evalexpr(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut src = Source::new(&bytes);
        let text = cases::condition(&mut src, 3);
        agree(&text, &mut src)?;
    }
}

#[test]
fn realistic_shapes_compile_and_the_rest_falls_back_to_evalexpr() {
    let compiled = [
        r#"type == "brute_force" && confidence > 0.8"#,
        r#"(type == "a" || type == "b") && severityLevel >= 3"#,
        r#"type == "malware" && process == "xmrig""#,
        r#"severity == "critical" && confidence > 0.9"#,
        r#"str::regex_matches(process, "^(nc|ncat)$") && dstPort == 4444"#,
        r#"!(user == "root") || pid < 1000"#,
        "confidence >= 1 && -severityLevel < 0",
        r#"srcIp == "10.0.0.1" && timestamp > "2026""#,
    ];
    let fallback = [
        "attempts > 3",
        "pid + 1 > 5",
        "len(process) > 3",
        r#"str::regex_matches(process, user)"#,
        "type > 3",
        "confidence",
        "true && 1",
    ];
    for text in compiled {
        let condition = Condition::compile(text).unwrap();
        assert!(Evaluator::new(&condition).is_compiled(), "{text}");
    }
    for text in fallback {
        let condition = Condition::compile(text).unwrap();
        assert!(!Evaluator::new(&condition).is_compiled(), "{text}");
    }
}
