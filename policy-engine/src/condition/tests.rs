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
