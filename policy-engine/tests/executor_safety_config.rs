//! The host's safety file (TOML or JSON) and flags: what they add to the defaults, what they
//! may remove, and every bad entry reported with where it is.
#![cfg(all(feature = "executor", target_os = "linux"))]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod executor_common;

use std::path::{Path, PathBuf};

use policy_engine::executor::{
    DEFAULT_PROTECTED_MASTERS, DEFAULT_PROTECTED_NAMES, DEFAULT_PROTECTED_PATHS, HostConfig,
    HostExecutor, SafetyConfig,
};

fn paths(list: &[&str]) -> Vec<PathBuf> {
    list.iter().map(PathBuf::from).collect()
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// Writes `text` to a file named `name` in a fresh directory and loads it.
fn load(name: &str, text: &str) -> (tempfile::TempDir, PathBuf, Result<SafetyConfig, String>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    let loaded = SafetyConfig::from_file(&path).map_err(|e| e.to_string());
    (dir, path, loaded)
}

/// The defaults with `podman` no longer protected, as both files below ask.
fn expected(file: &Path) -> SafetyConfig {
    let mut paths_protected = paths(&DEFAULT_PROTECTED_PATHS);
    paths_protected.push("/opt/payments".into());
    let mut protected_names = names(&DEFAULT_PROTECTED_NAMES);
    protected_names.retain(|n| n != "podman");
    protected_names.push("postgres".into());
    let mut protected_masters = names(&DEFAULT_PROTECTED_MASTERS);
    protected_masters.push("nginx".into());
    SafetyConfig {
        protected_paths: paths_protected,
        allowed_paths: paths(&["/etc/cron.d", "/usr/local/bin"]),
        protected_names,
        protected_masters,
        protected_executables: paths(&["/opt/app/bin/server"]),
        agent_paths: vec![file.to_owned()],
    }
}

#[test]
fn a_toml_file_adds_to_the_defaults_and_removes_only_what_it_names() {
    let (_dir, path, loaded) = load(
        "safety.toml",
        r#"
[paths]
protect = ["/opt/payments/"]
allow = ["/etc/cron.d", "/usr/local/bin"]

[processes]
names = ["postgres"]
masters = ["nginx"]
executables = ["/opt/app/bin/server"]
allow = ["podman"]
"#,
    );
    assert_eq!(loaded.unwrap(), expected(&path));
}

#[test]
fn a_json_file_says_the_same() {
    let (_dir, path, loaded) = load(
        "safety.json",
        r#"{"paths": {"protect": ["/opt/payments"], "allow": ["/etc/cron.d", "/usr/local/bin"]},
            "processes": {"names": ["postgres"], "masters": ["nginx"],
                          "executables": ["/opt/app/bin/server"], "allow": ["podman"]}}"#,
    );
    assert_eq!(loaded.unwrap(), expected(&path));
}

#[test]
fn an_empty_file_is_the_defaults_and_the_file_itself_is_protected() {
    let (_dir, path, loaded) = load("safety.toml", "");
    assert_eq!(
        loaded.unwrap(),
        SafetyConfig::default().with_agent_path(&path)
    );
}

#[test]
fn every_bad_entry_is_reported_with_where_it_is() {
    let (_dir, path, loaded) = load(
        "safety.toml",
        r#"
[paths]
protect = ["relative/dir", "/srv/../etc", "/srv/db"]
allow = ["/tmp", "/proc/sys", "/srv/db", "/etc/ssh", ""]

[processes]
names = ["bad/name", ""]
executables = ["sshd"]
allow = ["sshd", "postgres", "dockerd"]
masters = ["dockerd"]
"#,
    );
    let errors = [
        "paths.protect[0]: `relative/dir` is not an absolute path",
        "paths.protect[1]: `/srv/../etc` contains `.` or `..`",
        "paths.allow[0]: `/tmp` is not under a protected path; nothing to allow",
        "paths.allow[1]: `/proc/sys` is under `/proc`, which is never touched",
        "paths.allow[2]: `/srv/db` is both protected and allowed; keep one of the two",
        "paths.allow[4]: `` is empty",
        "processes.names[0]: `bad/name` contains `/` or a NUL byte",
        "processes.names[1]: `` is empty",
        "processes.executables[0]: `sshd` is not an absolute path",
        "processes.allow[1]: `postgres` is not a default protected process; nothing to allow",
        "processes.allow[2]: `dockerd` is also protected by this file; keep one of the two",
    ];
    assert_eq!(
        loaded.unwrap_err(),
        format!(
            "invalid safety config `{}`: {}",
            path.display(),
            errors.join("; ")
        )
    );
}

#[test]
fn syntax_errors_and_unknown_fields_say_where() {
    let (_dir, path, loaded) = load("safety.toml", "[paths]\nprotect = [\"/a\"]\nallw = []\n");
    assert_eq!(
        loaded.unwrap_err(),
        format!(
            "invalid safety config `{}`: unknown field `allw`, expected `protect` or `allow` at line 3 column 1",
            path.display()
        )
    );
    let (_dir, path, loaded) = load("safety.json", r#"{"processes": {"name": ["x"]}}"#);
    assert_eq!(
        loaded.unwrap_err(),
        format!(
            "invalid safety config `{}`: unknown field `name`, expected one of `names`, `masters`, `executables`, `allow` at line 1 column 21",
            path.display()
        )
    );
    let missing = Path::new("/nonexistent/pe-safety.toml");
    assert_eq!(
        SafetyConfig::from_file(missing).unwrap_err().to_string(),
        "cannot read the safety config `/nonexistent/pe-safety.toml`: No such file or directory (os error 2)"
    );
}

#[test]
fn a_file_over_one_mebibyte_is_refused_before_it_is_parsed() {
    let (_dir, path, loaded) = load("safety.toml", &"#".repeat(1024 * 1024 + 1));
    assert_eq!(
        loaded.unwrap_err(),
        format!(
            "the safety config `{}` is 1048577 bytes, more than the 1 MiB allowed",
            path.display()
        )
    );
}

#[test]
fn flags_add_paths_executables_and_names() {
    let config = SafetyConfig::load(
        None,
        &paths(&["/srv/db"]),
        &names(&["/opt/app/server", "haproxy"]),
    )
    .unwrap();
    let mut expected = SafetyConfig::default();
    expected.protected_paths.push("/srv/db".into());
    expected
        .protected_executables
        .push("/opt/app/server".into());
    expected.protected_names.push("haproxy".into());
    assert_eq!(config, expected);
    assert_eq!(
        SafetyConfig::load(None, &paths(&["srv"]), &names(&["a/../b", ""]))
            .unwrap_err()
            .to_string(),
        "invalid safety config flags: --protect-path `srv`: `srv` is not an absolute path; \
         --protect-process `a/../b`: `a/../b` is not an absolute path; \
         --protect-process ``: `` is empty"
    );
}

#[test]
fn the_host_executor_does_not_start_with_an_invalid_config() {
    let state = tempfile::tempdir().unwrap();
    let mut config =
        HostConfig::new(state.path(), vec![]).with_nft_command(executor_common::fake_nft());
    config.safety.allowed_paths.push("/var/tmp".into());
    config.safety.protected_names.push("a/b".into());
    assert_eq!(
        HostExecutor::open(config).unwrap_err().to_string(),
        "invalid safety config settings: protected_names[17]: `a/b` contains `/` or a NUL byte; \
         allowed_paths[0]: `/var/tmp` is not under a protected path; nothing to allow"
    );
}

#[test]
fn with_safety_keeps_the_state_dir_protected() {
    let config = HostConfig::new("/var/lib/policy-agent/host", vec![]).with_safety(
        SafetyConfig::default()
            .with_agent_path("/var/lib/policy-agent")
            .with_flags(&[], &names(&["postgres"]))
            .unwrap(),
    );
    assert_eq!(
        config.safety.agent_paths,
        paths(&["/var/lib/policy-agent", "/var/lib/policy-agent/host"])
    );
    assert!(config.safety.protected_names.contains(&"postgres".into()));
}

#[test]
fn relative_agent_paths_are_made_absolute() {
    // `--state-dir ./state` must not make the agent refuse to start, nor leave it unprotected.
    let config = SafetyConfig::default().with_agent_path("pe-relative-state");
    assert_eq!(
        config.agent_paths,
        vec![std::env::current_dir().unwrap().join("pe-relative-state")]
    );
    assert!(config.validate().is_ok());
}
