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

/// The host's safety flags, shared by `agent` and `ssh-guard`: what actions may never touch,
/// added to the built-in defaults (README, "What actions never touch").
#[derive(Debug, Clone, clap::Args)]
pub struct SafetyArgs {
    /// The host's safety file (TOML, or JSON): paths and processes no action may touch.
    #[arg(long, value_name = "FILE")]
    pub safety_config: Option<PathBuf>,
    /// A path prefix no file is quarantined under (repeatable).
    #[arg(long, value_name = "PATH")]
    pub protect_path: Vec<PathBuf>,
    /// A process never killed: its executable's path, or a name (repeatable).
    #[arg(long, value_name = "EXE|NAME")]
    pub protect_process: Vec<String>,
}

impl SafetyArgs {
    /// The settings: the file and the flags over the defaults, checked (every error with its
    /// place).
    pub fn load(
        &self,
    ) -> Result<policy_engine::executor::SafetyConfig, policy_engine::executor::SafetyError> {
        policy_engine::executor::SafetyConfig::load(
            self.safety_config.as_deref(),
            &self.protect_path,
            &self.protect_process,
        )
    }
}

/// Parses the command line of a tool whose usage errors exit 2: `--help` and `--version` print
/// and exit 0, a usage error prints and exits 2 (`Err` carries that exit code).
pub fn parse_args<T: clap::Parser>() -> Result<T, std::process::ExitCode> {
    T::try_parse().map_err(|err| {
        let _ = err.print();
        if err.use_stderr() {
            std::process::ExitCode::from(2)
        } else {
            std::process::ExitCode::SUCCESS
        }
    })
}

/// Parses a positive number of seconds (`0.2`, `30`) for duration flags.
pub fn secs(text: &str) -> Result<std::time::Duration, String> {
    let value: Option<f64> = text.parse().ok();
    let duration = value.and_then(|s| std::time::Duration::try_from_secs_f64(s).ok());
    let positive = duration.filter(|d| !d.is_zero());
    positive.ok_or_else(|| format!("expected a positive number of seconds, found `{text}`"))
}
