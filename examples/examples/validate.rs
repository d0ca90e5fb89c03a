//! Validates a policy file: `cargo run --example validate -- FILE` (or `-` for stdin);
//! `--schema` prints the policy document's JSON Schema instead (for editors).
//!
//! Exit codes: 0 valid (prints a one-line summary), 1 invalid (prints `PATH: message` per
//! error), 2 unreadable file or bad usage.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use policy_engine::Policy;

/// Validate a policy document against the policy API's rules.
#[derive(Parser)]
#[command(about, long_about = None)]
struct Args {
    /// Policy JSON file, or `-` for standard input.
    #[arg(required_unless_present = "schema")]
    file: Option<PathBuf>,
    /// Print the policy document's JSON Schema (draft 2020-12) and exit.
    #[arg(long, conflicts_with = "file")]
    schema: bool,
}

fn main() -> ExitCode {
    let args: Args = match examples::parse_args() {
        Ok(args) => args,
        Err(code) => return code,
    };
    let Some(file) = args.file.filter(|_| !args.schema) else {
        print!("{}", policy_engine::policy::JSON_SCHEMA);
        return ExitCode::SUCCESS;
    };
    let input = match read_input(&file) {
        Ok(input) => input,
        Err(err) => {
            eprintln!("error: cannot read `{}`: {err}", file.display());
            return ExitCode::from(2);
        }
    };
    match Policy::from_json(&input) {
        Ok(policy) => {
            println!("{}", summary(&policy));
            ExitCode::SUCCESS
        }
        Err(err) => {
            for error in &err.errors {
                if error.path.is_empty() {
                    println!("$: {}", error.message);
                } else {
                    println!("{error}");
                }
            }
            ExitCode::from(1)
        }
    }
}

fn read_input(file: &PathBuf) -> std::io::Result<Vec<u8>> {
    if file.as_os_str() == "-" {
        let mut input = Vec::new();
        std::io::stdin().read_to_end(&mut input)?;
        Ok(input)
    } else {
        std::fs::read(file)
    }
}

/// `valid: "Block Brute Force Sources": 2 rules (1 alert_threshold, 1 block_ip), 2 enabled`
fn summary(policy: &Policy) -> String {
    let mut by_type: BTreeMap<&str, usize> = BTreeMap::new();
    for rule in &policy.rules {
        *by_type.entry(rule.kind.type_name()).or_default() += 1;
    }
    let types: Vec<String> = by_type.iter().map(|(t, n)| format!("{n} {t}")).collect();
    let enabled = policy.rules.iter().filter(|r| r.enabled).count();
    let plural = if policy.rules.len() == 1 { "" } else { "s" };
    format!(
        "valid: `{}`: {} rule{plural} ({}), {enabled} enabled",
        policy.name,
        policy.rules.len(),
        types.join(", ")
    )
}
