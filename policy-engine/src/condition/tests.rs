use super::*;

#[test]
fn scratch() {
    for src in [
        "a b == c",
        "a == == b",
        "a +",
        "f(1,2,)",
        "min(1,,2)",
        "-a",
        "!a",
        "str::regex_matches(process, \"^ssh\")",
        "str::regex_matches(process, \"(\")",
        "a && (b ||)",
        "random() > 1",
        "contains(user, \"root\")",
    ] {
        match Condition::compile(src) {
            Ok(c) => println!(
                "{src:?} OK vars={:?} regexes={:?}",
                c.variables(),
                c.regexes.keys().collect::<Vec<_>>()
            ),
            Err(e) => println!("{src:?} ERR {e}"),
        }
    }
}
