//! Helpers shared by the examples and their tests.

use std::path::PathBuf;

/// Path of a built example binary (`cargo test` builds every example next to the test binaries,
/// in `target/<profile>/examples/`), for tests that run an example as a user would.
pub fn example_bin(name: &str) -> PathBuf {
    let mut dir = std::env::current_exe().unwrap_or_default();
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("examples").join(name)
}

/// Prints one benchmark figure in the form `.ci/bench` collects into the README's table:
/// `figure<TAB>what<TAB>result`. Benchmarks print their detailed lines as well; only these lines
/// reach the table.
pub fn figure(what: &str, result: impl std::fmt::Display) {
    println!("figure\t{what}\t{result}");
}
