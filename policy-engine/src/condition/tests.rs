use super::*;

fn error(source: &str) -> String {
    Condition::compile(source).unwrap_err().to_string()
}

#[test]
fn compiles_read_only_expressions_and_lists_their_variables() {
    let condition = Condition::compile(r#"severity == "critical" && confidence > 0.9"#).unwrap();
    assert_eq!(condition.variables(), ["confidence", "severity"]);
    assert_eq!(
        condition.source(),
        r#"severity == "critical" && confidence > 0.9"#
    );
}

#[test]
fn precompiles_constant_regexes() {
    let condition = Condition::compile(r#"str::regex_matches(process, "^ssh")"#).unwrap();
    assert!(condition.regex("^ssh").unwrap().is_match("sshd"));
    assert!(condition.regex("^other").is_none());
}

#[test]
fn a_constant_regex_over_the_size_limit_is_refused_where_it_is() {
    // In a condition's string a backslash is written `\\`.
    assert_eq!(
        error(r#"type == "x" || str::regex_matches(process, "\\w{200}")"#),
        "at column 45: regular expression `\\w{200}` needs more than 256 KiB compiled: use a \
         simpler pattern (bounded repetitions of Unicode classes such as `\\w{6}` are large; \
         `[A-Za-z0-9_]` or `(?-u:\\w)` are small)"
    );
    let long = format!("{}.{{1000}}", "a".repeat(100));
    assert!(
        error(&format!(r#"str::regex_matches(process, "{long}")"#)).contains(&format!(
            "regular expression `{}...` needs more than 256 KiB",
            "a".repeat(64)
        ))
    );
    // The small spellings of the same idea compile, and match as evalexpr's would.
    for (written, pattern) in [
        (r"\\w{5}", r"\w{5}"),
        (r"[A-Za-z0-9_]{64}", r"[A-Za-z0-9_]{64}"),
        (r"(?-u:\\w){200}", r"(?-u:\w){200}"),
    ] {
        let condition =
            Condition::compile(&format!(r#"str::regex_matches(process, "{written}")"#)).unwrap();
        let regex = condition.regex(pattern).unwrap();
        assert!(regex.is_match("a".repeat(300).as_str()), "{pattern}");
        assert!(!regex.is_match("a-b"), "{pattern}");
        assert!(condition.regex_bytes() <= 2 * MAX_REGEX_BYTES, "{pattern}");
    }
}

#[test]
fn the_conditions_of_one_policy_share_a_regex_budget() {
    let pattern = |i: usize| format!(r#"str::regex_matches(process, "\\w{{4}}{i}")"#);
    let one = Condition::compile(&pattern(0)).unwrap().regex_bytes();
    assert!(one > 100 * 1024, "{one}");
    // Room for two and a half.
    let mut budget = RegexBudget::new(one * 5 / 2);
    let first = Condition::compile_within(&pattern(1), &mut budget).unwrap();
    let second = Condition::compile_within(&pattern(2), &mut budget).unwrap();
    assert_eq!(budget.spent(), first.regex_bytes() + second.regex_bytes());
    // The same pattern twice in one condition is compiled once, then the budget runs out.
    let twice = format!(
        "{} || {}",
        pattern(3),
        pattern(3).replace("process", "user")
    );
    let message = Condition::compile_within(&twice, &mut budget)
        .unwrap_err()
        .to_string();
    assert!(
        message.starts_with(&format!(
            "at column 30: the regular expressions of the policy's conditions need more than {} \
             KiB compiled together (`\\w{{4}}3` takes ",
            one * 5 / 2 / 1024
        )),
        "{message}"
    );
    assert!(
        message.ends_with("use fewer or simpler patterns"),
        "{message}"
    );
    // Past the budget, later conditions compile no regex: their policy is refused already.
    assert!(budget.is_exhausted());
    let later = Condition::compile_within(&pattern(4), &mut budget).unwrap();
    assert_eq!(
        (later.regex_bytes(), later.regex(r"\w{4}4").is_none()),
        (0, true)
    );
    // Literal patterns are small: a thousand fit in one policy's budget.
    let mut budget = RegexBudget::default();
    for i in 0..1000 {
        let ioc = format!(r#"str::regex_matches(process, "^(evil{i}|dropper-{i}\\.bin)$")"#);
        Condition::compile_within(&ioc, &mut budget).unwrap();
    }
    assert!(
        budget.spent() < MAX_POLICY_REGEX_BYTES / 2,
        "{}",
        budget.spent()
    );
}

#[test]
fn syntax_errors_point_into_the_expression() {
    let cases = [
        ("(a == b", "at column 1: unclosed `(`"),
        ("a == b)", "at column 7: `)` without a matching `(`"),
        (r#"a == "x"#, "at column 6: unterminated string"),
        (
            r#""a\q""#,
            "at column 3: illegal escape sequence `\\q` in string",
        ),
        (
            "1 2",
            "at column 3: expected an operator between two values",
        ),
        (
            "a == == b",
            "at column 3: operator `==` is missing an operand",
        ),
        ("a +", "at column 3: operator `+` is missing an operand"),
        (
            "a && (b ||)",
            "at column 9: operator `||` is missing an operand",
        ),
        (
            "min(1,,2)",
            "at column 7: empty element in an argument list",
        ),
        (
            "a b == c",
            "at column 1: unknown function `a` (a name followed by a value is a call in this language)",
        ),
        (
            r#"str::regex_matches(process, "(")"#,
            "at column 30: invalid regular expression `(`: unclosed group",
        ),
    ];
    for (source, expected) in cases {
        assert_eq!(error(source), expected, "{source}");
    }
}

#[test]
fn assignment_and_chaining_are_rejected_at_load_time() {
    assert_eq!(
        error("attempts = 3"),
        "at column 10: conditions may only read, but this one assigns to `attempts`"
    );
    assert_eq!(
        error("a += 2"),
        "at column 3: conditions may only read, but this one assigns to `a`"
    );
    assert_eq!(
        error("a == 1; b"),
        "at column 7: conditions may not chain expressions with `;`"
    );
}

#[test]
fn an_unquoted_address_is_refused_rather_than_read_as_a_variable() {
    // Probe 6: `srcIp == 10.0.0.1` loaded, never held, and counted an error on every event.
    assert_eq!(
        error("srcIp == 10.0.0.1"),
        "at column 10: `10.0.0.1` reads as a variable name, not a value: quote it (`\"10.0.0.1\"`)"
    );
    assert_eq!(
        error("version == 1.2.3 && user == \"root\""),
        "at column 12: `1.2.3` reads as a variable name, not a value: quote it (`\"1.2.3\"`)"
    );
    assert!(Condition::compile("srcIp == \"10.0.0.1\" && dstPort == 22 && ratio > 1.5").is_ok());
}

#[test]
fn nondeterministic_functions_are_rejected() {
    assert_eq!(
        error("random() > 0.5"),
        "at column 1: unknown function `random` (a name followed by a value is a call in this language)"
    );
}

#[test]
fn empty_and_oversized_conditions_are_rejected_before_parsing() {
    assert_eq!(error("   "), "condition is empty");
    let huge = "a".repeat(MAX_CONDITION_BYTES + 1);
    assert_eq!(
        error(&huge),
        "condition is 4097 bytes, longer than the limit of 4096 bytes"
    );
}

#[test]
fn hostile_conditions_within_the_limit_compile_or_fail_quickly() {
    // Regression: 4 KiB of `!` overflowed a 2 MiB stack in evalexpr's recursive parser.
    let nesting = "at column 257: condition nests parentheses and unary operators deeper than the limit of 256";
    let bangs = format!("{}true", "!".repeat(MAX_CONDITION_BYTES - 4));
    assert_eq!(error(&bangs), nesting);
    let parens = format!("{}a{}", "(".repeat(2047), ")".repeat(2047));
    assert_eq!(error(&parens), nesting);
    let unclosed = "(".repeat(MAX_CONDITION_BYTES);
    assert_eq!(error(&unclosed), nesting);
    let mixed = "!(".repeat(200) + "a" + &")".repeat(200);
    assert_eq!(
        error(&mixed),
        "at column 257: condition nests parentheses and unary operators deeper than the limit of 256"
    );
    // At the limit everything still works, on a small stack and in a debug build.
    let deepest = format!("{}true", "!".repeat(MAX_CONDITION_NESTING));
    let handle = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            let c = Condition::compile(&deepest).unwrap();
            c.tree().eval_boolean().unwrap()
        })
        .unwrap();
    assert!(handle.join().unwrap());
    let long_chain = format!("true{}", " && true".repeat(500));
    assert!(
        Condition::compile(&long_chain)
            .unwrap()
            .tree()
            .eval_boolean()
            .unwrap()
    );
}
