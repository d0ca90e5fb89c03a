//! The host's safety configuration: the paths and processes no action may touch, with safe
//! defaults, read from a file the host owns (`--safety-config`, TOML or JSON) and from flags.
//!
//! Nothing the server sends reaches this type: policies and fleet events name targets, the host
//! decides what may be touched. [`Protection`](super::Protection) is its compiled form.

use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

/// Path prefixes protected by default: system binaries, libraries, boot files, configuration.
pub const DEFAULT_PROTECTED_PATHS: [&str; 9] = [
    "/bin", "/sbin", "/usr", "/lib", "/lib32", "/lib64", "/libx32", "/boot", "/etc",
];

/// Process names protected by default (every process of that name whose executable is a
/// protected path): the init system and its journal, D-Bus, container runtimes.
pub const DEFAULT_PROTECTED_NAMES: [&str; 17] = [
    "init",
    "systemd",
    "systemd-journald",
    "systemd-logind",
    "systemd-udevd",
    "dbus-daemon",
    "dbus-broker",
    "containerd",
    "containerd-shim",
    "containerd-shim-runc-v2",
    "dockerd",
    "runc",
    "crun",
    "crio",
    "conmon",
    "podman",
    "kubelet",
];

/// Process names whose master is protected by default, but not the per-connection children
/// it forks (a child whose parent has the same name): OpenSSH's listener.
pub const DEFAULT_PROTECTED_MASTERS: [&str; 1] = ["sshd"];

/// Largest safety file read.
const MAX_FILE: u64 = 1024 * 1024;
/// Longest process name accepted (a file name).
const MAX_NAME: usize = 255;

/// What the host protects from every action, whatever a policy or the server says.
///
/// [`SafetyConfig::default`] holds the defaults; [`SafetyConfig::from_file`] adds the host's
/// file to them; [`SafetyConfig::with_flags`] adds command-line entries. Besides these lists a
/// floor applies that no configuration removes (see [`Protection`](super::Protection)):
/// `/proc`, `/sys`, `/dev`, PID 1 and its executable, the agent itself, its executable, the
/// [`agent_paths`](Self::agent_paths), the dynamic loader, and every file a protected
/// process has mapped.
///
/// ```
/// use policy_engine::executor::SafetyConfig;
/// let config = SafetyConfig::default()
///     .with_flags(&["/opt/payments".into()], &["postgres".into(), "/opt/app/server".into()])
///     .unwrap();
/// assert!(config.protected_paths.contains(&"/usr".into()));
/// assert!(config.protected_paths.contains(&"/opt/payments".into()));
/// assert!(config.protected_names.contains(&"postgres".to_owned()));
/// assert!(config.protected_executables.contains(&"/opt/app/server".into()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetyConfig {
    /// Path prefixes no file may be quarantined under.
    pub protected_paths: Vec<PathBuf>,
    /// Carve-outs of `protected_paths`: the longest matching prefix wins, and an allowed
    /// prefix as long as a protected one wins the tie (so `/etc` may be allowed outright).
    pub allowed_paths: Vec<PathBuf>,
    /// Processes protected by name (kernel name or executable file name), when their
    /// executable is itself a protected path: a `dockerd` running from `/tmp` is not protected.
    pub protected_names: Vec<String>,
    /// Like `protected_names`, but a process whose parent has the same name (a per-connection
    /// child) is not protected.
    pub protected_masters: Vec<String>,
    /// Processes protected by the exact path of their executable, wherever it is.
    pub protected_executables: Vec<PathBuf>,
    /// The agent's own files and directories (state dir, configuration): never touched, and
    /// no allowed path reaches into them.
    pub agent_paths: Vec<PathBuf>,
}

impl Default for SafetyConfig {
    fn default() -> Self {
        Self {
            protected_paths: DEFAULT_PROTECTED_PATHS.iter().map(PathBuf::from).collect(),
            allowed_paths: Vec::new(),
            protected_names: owned(&DEFAULT_PROTECTED_NAMES),
            protected_masters: owned(&DEFAULT_PROTECTED_MASTERS),
            protected_executables: Vec::new(),
            agent_paths: Vec::new(),
        }
    }
}

/// Why a safety configuration was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SafetyError {
    /// The file could not be read.
    #[error("cannot read the safety config `{path}`: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is larger than 1 MiB.
    #[error("the safety config `{path}` is {size} bytes, more than the 1 MiB allowed")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The file is not valid TOML or JSON, or has an unknown or mistyped field.
    #[error("invalid safety config `{path}`: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// Entries are wrong; every one of them is listed.
    #[error("invalid safety config {origin}: {}", .errors.join("; "))]
    Invalid {
        /// The file in backticks, or `flags`, or `settings` for a config built in code.
        origin: String,
        /// One message per bad entry, each starting with where it is.
        errors: Vec<String>,
    },
}

/// The file's form: `[paths]` and `[processes]`, each list optional, nothing else.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SafetyFile {
    #[serde(default)]
    paths: PathsSection,
    #[serde(default)]
    processes: ProcessesSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PathsSection {
    #[serde(default)]
    protect: Vec<String>,
    #[serde(default)]
    allow: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProcessesSection {
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    masters: Vec<String>,
    #[serde(default)]
    executables: Vec<String>,
    #[serde(default)]
    allow: Vec<String>,
}

impl SafetyConfig {
    /// The defaults plus the host's file: TOML when the name ends in `.toml`, JSON otherwise.
    ///
    /// `[paths] protect` and `allow` add protected prefixes and carve-outs;
    /// `[processes] names`, `masters`, `executables` add protected processes and `allow`
    /// removes default names. The file itself becomes one of the [`agent_paths`](Self::agent_paths).
    /// Every bad entry is reported, each with where it is (`paths.allow[1]`).
    pub fn from_file(path: &Path) -> Result<Self, SafetyError> {
        let read_error = |source| SafetyError::Read {
            path: path.to_owned(),
            source,
        };
        let size = std::fs::metadata(path).map_err(read_error)?.len();
        if size > MAX_FILE {
            return Err(SafetyError::TooLarge {
                path: path.to_owned(),
                size,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_error)?;
        let syntax = |message: String| SafetyError::Syntax {
            path: path.to_owned(),
            message,
        };
        let file: SafetyFile = if path.extension().is_some_and(|e| e == "toml") {
            toml::from_str(&text).map_err(|e| syntax(toml_message(&text, &e)))?
        } else {
            serde_json::from_str(&text).map_err(|e| syntax(e.to_string()))?
        };
        let mut config = Self::default();
        let mut errors = Vec::new();
        config.apply(file, &mut errors);
        config.agent_paths.push(absolute(path));
        if !errors.is_empty() {
            return Err(SafetyError::Invalid {
                origin: format!("`{}`", path.display()),
                errors,
            });
        }
        Ok(config)
    }

    /// What an agent's flags say: `file` (`--safety-config`) or the defaults, plus the
    /// `--protect-path` and `--protect-process` entries ([`with_flags`](Self::with_flags)).
    pub fn load(
        file: Option<&Path>,
        paths: &[PathBuf],
        processes: &[String],
    ) -> Result<Self, SafetyError> {
        let config = match file {
            Some(file) => Self::from_file(file)?,
            None => Self::default(),
        };
        config.with_flags(paths, processes)
    }

    /// Adds `--protect-path` prefixes and `--protect-process` entries: an entry with a `/` is
    /// an executable path, any other a process name.
    pub fn with_flags(
        mut self,
        paths: &[PathBuf],
        processes: &[String],
    ) -> Result<Self, SafetyError> {
        let mut errors = Vec::new();
        for path in paths {
            let text = path.to_string_lossy();
            if let Some(path) = check_path(&format!("--protect-path `{text}`"), &text, &mut errors)
            {
                self.protected_paths.push(path);
            }
        }
        for entry in processes {
            let label = format!("--protect-process `{entry}`");
            if entry.contains('/') {
                if let Some(path) = check_path(&label, entry, &mut errors) {
                    self.protected_executables.push(path);
                }
            } else if let Some(name) = check_name(&label, entry, &mut errors) {
                self.protected_names.push(name);
            }
        }
        if !errors.is_empty() {
            return Err(SafetyError::Invalid {
                origin: "flags".to_owned(),
                errors,
            });
        }
        Ok(self)
    }

    /// Adds one of the agent's own files or directories (its state dir, a config file),
    /// made absolute (`--state-dir ./state` works).
    pub fn with_agent_path(mut self, path: impl AsRef<Path>) -> Self {
        self.agent_paths.push(absolute(path.as_ref()));
        self
    }

    /// Checks every entry (absolute, normalized paths; names without `/`; allowed paths under
    /// a protected one and not also protected), reporting all problems.
    pub fn validate(&self) -> Result<(), SafetyError> {
        let mut errors = Vec::new();
        let lists = [
            ("protected_paths", &self.protected_paths),
            ("allowed_paths", &self.allowed_paths),
            ("protected_executables", &self.protected_executables),
            ("agent_paths", &self.agent_paths),
        ];
        for (field, paths) in lists {
            for (i, path) in paths.iter().enumerate() {
                check_path(
                    &format!("{field}[{i}]"),
                    &path.to_string_lossy(),
                    &mut errors,
                );
            }
        }
        let names = [
            ("protected_names", &self.protected_names),
            ("protected_masters", &self.protected_masters),
        ];
        for (field, list) in names {
            for (i, name) in list.iter().enumerate() {
                check_name(&format!("{field}[{i}]"), name, &mut errors);
            }
        }
        for (i, allowed) in self.allowed_paths.iter().enumerate() {
            if let Some(problem) = self.allowed_problem(allowed) {
                errors.push(format!("allowed_paths[{i}]: {problem}"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(SafetyError::Invalid {
                origin: "settings".to_owned(),
                errors,
            })
        }
    }

    fn apply(&mut self, file: SafetyFile, errors: &mut Vec<String>) {
        let paths = |field: &str, list: &[String], errors: &mut Vec<String>| -> Vec<PathBuf> {
            list.iter()
                .enumerate()
                .filter_map(|(i, p)| check_path(&format!("{field}[{i}]"), p, errors))
                .collect()
        };
        let names = |field: &str, list: &[String], errors: &mut Vec<String>| -> Vec<String> {
            list.iter()
                .enumerate()
                .filter_map(|(i, n)| check_name(&format!("{field}[{i}]"), n, errors))
                .collect()
        };
        self.protected_paths
            .extend(paths("paths.protect", &file.paths.protect, errors));
        for (i, text) in file.paths.allow.iter().enumerate() {
            let label = format!("paths.allow[{i}]");
            if let Some(allowed) = check_path(&label, text, errors) {
                match self.allowed_problem(&allowed) {
                    Some(problem) => errors.push(format!("{label}: {problem}")),
                    None => self.allowed_paths.push(allowed),
                }
            }
        }
        self.protected_names
            .extend(names("processes.names", &file.processes.names, errors));
        self.protected_masters
            .extend(names("processes.masters", &file.processes.masters, errors));
        self.protected_executables.extend(paths(
            "processes.executables",
            &file.processes.executables,
            errors,
        ));
        for (i, name) in file.processes.allow.iter().enumerate() {
            let label = format!("processes.allow[{i}]");
            let Some(name) = check_name(&label, name, errors) else {
                continue;
            };
            let default = DEFAULT_PROTECTED_NAMES.contains(&name.as_str())
                || DEFAULT_PROTECTED_MASTERS.contains(&name.as_str());
            if !default {
                errors.push(format!(
                    "{label}: `{name}` is not a default protected process; nothing to allow"
                ));
            } else if file.processes.names.contains(&name) || file.processes.masters.contains(&name)
            {
                errors.push(format!(
                    "{label}: `{name}` is also protected by this file; keep one of the two"
                ));
            } else {
                self.protected_names.retain(|n| *n != name);
                self.protected_masters.retain(|n| *n != name);
            }
        }
    }

    /// What is wrong with allowing `allowed`: it must lie under a protected prefix (else it
    /// allows nothing), must not be one the configuration adds itself, and must stay out of
    /// the floor.
    fn allowed_problem(&self, allowed: &Path) -> Option<String> {
        let shown = allowed.display();
        if let Some(floor) = FLOOR_PREFIXES.iter().find(|f| allowed.starts_with(f)) {
            Some(format!(
                "`{shown}` is under `{floor}`, which is never touched"
            ))
        } else if let Some(agent) =
            (self.agent_paths.iter()).find(|a| allowed.starts_with(a) || a.starts_with(allowed))
        {
            Some(format!(
                "`{shown}` overlaps the agent's own `{}`, which is never touched",
                agent.display()
            ))
        } else if self.protected_paths.iter().any(|p| p == allowed) && !is_default_path(allowed) {
            Some(format!(
                "`{shown}` is both protected and allowed; keep one of the two"
            ))
        } else if !self.protected_paths.iter().any(|p| allowed.starts_with(p)) {
            Some(format!(
                "`{shown}` is not under a protected path; nothing to allow"
            ))
        } else {
            None
        }
    }
}

/// Kernel interfaces and devices: never quarantined, never allowed.
pub(crate) const FLOOR_PREFIXES: [&str; 3] = ["/proc", "/sys", "/dev"];

/// `path` with its symlinks resolved if it exists, else made absolute against the working
/// directory; as given if neither works (validation then says what is wrong).
fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_owned())
}

fn is_default_path(path: &Path) -> bool {
    DEFAULT_PROTECTED_PATHS.iter().any(|d| path == Path::new(d))
}

fn owned(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// An absolute path with no `.`, `..` or NUL, as given (a trailing `/` dropped).
fn check_path(label: &str, text: &str, errors: &mut Vec<String>) -> Option<PathBuf> {
    let path = Path::new(text);
    let problem = if text.is_empty() {
        Some("is empty")
    } else if text.contains('\0') {
        Some("contains a NUL byte")
    } else if !path.is_absolute() {
        Some("is not an absolute path")
    } else if path
        .components()
        .any(|c| matches!(c, Component::CurDir | Component::ParentDir))
    {
        Some("contains `.` or `..`")
    } else if path == Path::new("/") {
        Some("is the root directory")
    } else {
        None
    };
    match problem {
        Some(problem) => {
            errors.push(format!("{label}: `{text}` {problem}"));
            None
        }
        None => Some(path.components().collect()),
    }
}

/// A process name: a file name of at most 255 bytes.
fn check_name(label: &str, name: &str, errors: &mut Vec<String>) -> Option<String> {
    let problem = if name.is_empty() {
        Some("is empty".to_owned())
    } else if name.contains(['/', '\0']) {
        Some("contains `/` or a NUL byte".to_owned())
    } else if name.len() > MAX_NAME {
        Some(format!("is longer than {MAX_NAME} bytes"))
    } else {
        None
    };
    match problem {
        Some(problem) => {
            errors.push(format!("{label}: `{name}` {problem}"));
            None
        }
        None => Some(name.to_owned()),
    }
}

/// A TOML error as `line L column C: message`.
fn toml_message(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim_end();
    let Some(span) = error.span() else {
        return message.to_owned();
    };
    let before = text.get(..span.start).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!("{message} at line {line} column {column}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_path_names_every_problem() {
        let mut errors = Vec::new();
        for text in ["", "relative", "/a/../b", "/", "/ok/"] {
            check_path("x", text, &mut errors);
        }
        assert_eq!(
            errors,
            [
                "x: `` is empty",
                "x: `relative` is not an absolute path",
                "x: `/a/../b` contains `.` or `..`",
                "x: `/` is the root directory",
            ]
        );
        assert_eq!(
            check_path("x", "/ok/", &mut errors),
            Some(PathBuf::from("/ok"))
        );
        assert_eq!(
            check_path("x", "/a/./b", &mut errors),
            Some(PathBuf::from("/a/b"))
        );
    }

    #[test]
    fn toml_errors_say_line_and_column() {
        let text = "[paths]\nprotect = [\"/a\"]\nallow = 3\n";
        let error = toml::from_str::<SafetyFile>(text).unwrap_err();
        assert_eq!(
            toml_message(text, &error),
            "invalid type: integer `3`, expected a sequence at line 3 column 9"
        );
    }
}
