//! `Protection`: the compiled [`SafetyConfig`], deciding whether a path may be quarantined and
//! whether a process may be killed, from what the host looks like at that moment.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::procfs::{self, MappedFile, Stat};
use super::safety::{FLOOR_PREFIXES, SafetyConfig, SafetyError};

/// The host's protections, ready to check paths and processes; cheap to clone.
///
/// Paths: a resolved path is protected when it is
/// - under `/proc`, `/sys` or `/dev`, one of the agent's own paths, the agent's executable,
///   PID 1's executable, or a dynamic loader (`ld-linux*`, `ld-musl-*`): the floor, which no
///   configuration removes;
/// - or under a protected prefix, unless an allowed prefix at least as long also holds it.
///
/// Processes: PID 1, the agent itself and kernel threads always; a process whose executable
/// cannot be resolved (nothing is killed blind); a process running the agent's executable or a
/// protected executable; a process whose executable is a protected path and whose file name is
/// a protected name, or a protected master name whose parent's executable does not have that
/// name. Names are matched on the executable's file name only: a process can rename itself
/// (`prctl(PR_SET_NAME)`, `argv[0]`) but cannot change which file it runs, so malware calling
/// itself `dockerd`, or running a `dockerd` it dropped in `/tmp`, is not protected. Ordinary
/// programs under `/usr` (`sleep`, `python3`) are not protected by their path: only the listed
/// daemons are.
///
/// Files mapped by a protected process (`/proc/PID/maps`: its executable, libc, the loader)
/// are never quarantined either.
///
/// ```
/// use std::path::Path;
/// use policy_engine::executor::{Protection, SafetyConfig};
/// let mut config = SafetyConfig::default();
/// config.allowed_paths.push("/usr/local/bin".into());
/// let protection = Protection::new(&config).unwrap();
/// let reason = |path: &str| protection.path_reason(Path::new(path));
/// assert_eq!(reason("/usr/bin/sudo").as_deref(), Some("is under `/usr`"));
/// assert_eq!(reason("/usr/local/bin/dropper"), None);
/// assert_eq!(reason("/tmp/dropper"), None);
/// assert_eq!(
///     protection.process_refusal(std::process::id()).as_deref(),
///     Some("it is the agent itself")
/// );
/// ```
#[derive(Debug, Clone)]
pub struct Protection {
    rules: Arc<Rules>,
}

#[derive(Debug)]
struct Rules {
    protected: Vec<Prefix>,
    allowed: Vec<Prefix>,
    agent_paths: Vec<Prefix>,
    agent_exe: Option<PathBuf>,
    init_exe: Option<PathBuf>,
    names: Vec<String>,
    masters: Vec<String>,
    executables: Vec<Prefix>,
    agent_pid: u32,
}

/// A configured path and the forms it matches as: as written and with symlinks resolved
/// (`/lib` is `/usr/lib` on merged-`/usr` systems; resolved paths only ever show the latter).
#[derive(Debug)]
struct Prefix {
    shown: PathBuf,
    forms: Vec<PathBuf>,
}

impl Prefix {
    fn new(path: &Path) -> Self {
        let mut forms = vec![path.to_owned()];
        if let Ok(real) = std::fs::canonicalize(path) {
            if real != path {
                forms.push(real);
            }
        }
        Self {
            shown: path.to_owned(),
            forms,
        }
    }

    /// The number of components of the longest form `path` lies under.
    fn depth_of(&self, path: &Path) -> Option<usize> {
        self.forms
            .iter()
            .filter(|form| path.starts_with(form))
            .map(|form| form.components().count())
            .max()
    }

    fn is(&self, path: &Path) -> bool {
        self.forms.iter().any(|form| form == path)
    }
}

impl Default for Protection {
    /// The default protections ([`SafetyConfig::default`]) and the floor.
    fn default() -> Self {
        Self::compile(&SafetyConfig::default())
    }
}

impl Protection {
    /// Compiles `config` after checking it ([`SafetyConfig::validate`]).
    pub fn new(config: &SafetyConfig) -> Result<Self, SafetyError> {
        config.validate()?;
        Ok(Self::compile(config))
    }

    fn compile(config: &SafetyConfig) -> Self {
        let prefixes = |list: &[PathBuf]| list.iter().map(|p| Prefix::new(p)).collect();
        Self {
            rules: Arc::new(Rules {
                protected: prefixes(&config.protected_paths),
                allowed: prefixes(&config.allowed_paths),
                agent_paths: prefixes(&config.agent_paths),
                agent_exe: std::env::current_exe()
                    .ok()
                    .and_then(|exe| std::fs::canonicalize(exe).ok()),
                init_exe: procfs::exe(1).ok(),
                names: config.protected_names.clone(),
                masters: config.protected_masters.clone(),
                executables: prefixes(&config.protected_executables),
                agent_pid: std::process::id(),
            }),
        }
    }

    /// Why `path` (absolute, symlinks resolved) must not be touched, as a phrase such as
    /// "is under `/usr`"; `None` when it may be. Looks at the path only, not at what maps it.
    pub fn path_reason(&self, path: &Path) -> Option<String> {
        let rules = &self.rules;
        if let Some(floor) = FLOOR_PREFIXES.iter().find(|f| path.starts_with(f)) {
            return Some(format!("is under `{floor}`"));
        }
        if let Some(agent) = rules
            .agent_paths
            .iter()
            .find(|a| a.depth_of(path).is_some())
        {
            return Some(if agent.is(path) {
                format!("is the agent's own `{}`", agent.shown.display())
            } else {
                format!("is under the agent's own `{}`", agent.shown.display())
            });
        }
        if rules.agent_exe.as_deref() == Some(path) {
            return Some("is the agent's executable".to_owned());
        }
        if rules.init_exe.as_deref() == Some(path) {
            return Some("is the init system's executable (PID 1)".to_owned());
        }
        let name = procfs::file_name(path);
        if name.starts_with("ld-linux") || name.starts_with("ld-musl-") {
            return Some("is a dynamic loader".to_owned());
        }
        self.prefix_reason(path)
    }

    /// Whether `path` is under a protected prefix that no allowed prefix overrides.
    fn prefix_reason(&self, path: &Path) -> Option<String> {
        let (depth, protected) = deepest(&self.rules.protected, path)?;
        if deepest(&self.rules.allowed, path).is_some_and(|(allowed, _)| allowed >= depth) {
            return None;
        }
        // Name the prefix as configured when the path is literally under one (`/usr`), else
        // the resolved form that holds it (`/usr/bin`, from `/bin`).
        let literal = (self.rules.protected.iter())
            .filter(|p| path.starts_with(&p.shown))
            .max_by_key(|p| p.shown.components().count());
        Some(match literal {
            Some(prefix) => format!("is under `{}`", prefix.shown.display()),
            None => {
                let form = protected
                    .forms
                    .iter()
                    .find(|form| path.starts_with(form))
                    .unwrap_or(&protected.shown);
                format!(
                    "is under `{}` (`{}`)",
                    form.display(),
                    protected.shown.display()
                )
            }
        })
    }

    /// The refusal for `resolved`, which `given` names (through symlinks, perhaps):
    /// "protected path `/usr/bin/sudo` (resolved from `/tmp/link`) is under `/usr`".
    pub fn path_refusal(&self, given: &Path, resolved: &Path) -> Option<String> {
        let why = self.path_reason(resolved)?;
        Some(if given == resolved {
            format!("protected path `{}` {why}", resolved.display())
        } else {
            format!(
                "protected path `{}` (resolved from `{}`) {why}",
                resolved.display(),
                given.display()
            )
        })
    }

    /// Why quarantining `path` would be refused for what it is (the path as given and with its
    /// symlinks resolved, and who maps it); `None` when only the quarantine's own checks
    /// (a regular file, one link...) remain. For operators asking before anything happens.
    pub fn file_refusal(&self, path: &Path) -> Option<String> {
        if let Some(reason) = self.path_refusal(path, path) {
            return Some(reason);
        }
        let resolved = std::fs::canonicalize(path).ok()?;
        if let Some(reason) = self.path_refusal(path, &resolved) {
            return Some(reason);
        }
        let meta = std::fs::metadata(&resolved).ok()?;
        self.mapped_refusal(&MappedFile {
            major: nix::sys::stat::major(meta.dev()),
            minor: nix::sys::stat::minor(meta.dev()),
            inode: meta.ino(),
            path: resolved,
        })
    }

    /// The refusal for a file mapped by a protected process: "`/x/lib.so` is mapped by pid 812
    /// (`sshd`), a protected process: ...". Refuses too when `/proc` cannot be listed.
    pub(crate) fn mapped_refusal(&self, file: &MappedFile) -> Option<String> {
        let pids = match procfs::pids() {
            Ok(pids) => pids,
            Err(e) => {
                return Some(format!(
                    "cannot tell whether a protected process maps `{}` (reading /proc: {e})",
                    file.path.display()
                ));
            }
        };
        for pid in pids {
            let Some(stat) = procfs::stat(pid) else {
                continue;
            };
            if stat.is_kernel_thread() {
                continue;
            }
            let Some(why) = self.process_reason(pid, &stat) else {
                continue;
            };
            if procfs::maps_file(pid, file) == Some(true) {
                return Some(format!(
                    "`{}` is mapped by pid {pid} (`{}`), a protected process: {why}",
                    file.path.display(),
                    stat.comm
                ));
            }
        }
        None
    }

    /// Why `pid` must not be killed ("it runs the protected executable `/opt/db`"); `None`
    /// when it may be, or when it is gone.
    pub fn process_refusal(&self, pid: u32) -> Option<String> {
        let stat = procfs::stat(pid)?;
        self.process_reason(pid, &stat)
    }

    /// [`process_refusal`](Self::process_refusal) for a process whose `stat` was just read.
    pub(crate) fn process_reason(&self, pid: u32, stat: &Stat) -> Option<String> {
        let rules = &self.rules;
        if pid == 1 {
            return Some("it is the init process (pid 1)".to_owned());
        }
        if pid == rules.agent_pid {
            return Some("it is the agent itself".to_owned());
        }
        if stat.is_kernel_thread() {
            return Some("it is a kernel thread".to_owned());
        }
        let exe = match procfs::exe(pid) {
            Ok(exe) => exe,
            Err(e) => {
                return Some(format!(
                    "its executable cannot be resolved (`/proc/{pid}/exe`: {e})"
                ));
            }
        };
        let shown = exe.display();
        if rules.agent_exe.as_deref() == Some(exe.as_path()) {
            return Some(format!("it runs the agent's executable `{shown}`"));
        }
        if let Some(protected) = rules.executables.iter().find(|e| e.is(&exe)) {
            return Some(format!(
                "it runs the protected executable `{}`",
                protected.shown.display()
            ));
        }
        // Names count only for system binaries: anyone can name a file `dockerd` in /tmp.
        self.prefix_reason(&exe)?;
        let name = procfs::file_name(&exe);
        if rules.names.iter().any(|n| n == name) {
            return Some(format!("`{shown}` is the protected process `{name}`"));
        }
        if rules.masters.iter().any(|n| n == name) {
            let parent_exe = procfs::exe(stat.ppid).ok();
            let parent_name = parent_exe.as_deref().map(procfs::file_name);
            if parent_name != Some(name) {
                return Some(format!(
                    "`{shown}` is the protected process `{name}` and its master (its parent, pid {}, is not a `{name}`)",
                    stat.ppid
                ));
            }
        }
        None
    }
}

/// The prefix of `list` that holds `path` with the most components, and that number.
fn deepest<'a>(list: &'a [Prefix], path: &Path) -> Option<(usize, &'a Prefix)> {
    list.iter()
        .filter_map(|p| p.depth_of(path).map(|depth| (depth, p)))
        .max_by_key(|(depth, _)| *depth)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn protection(edit: impl FnOnce(&mut SafetyConfig)) -> Protection {
        let mut config = SafetyConfig::default();
        edit(&mut config);
        Protection::new(&config).unwrap()
    }

    #[test]
    fn the_longest_prefix_wins_and_allow_wins_a_tie() {
        let p = protection(|c| {
            c.allowed_paths = vec!["/usr/local".into(), "/etc".into()];
            c.protected_paths.push("/etc/ssh".into());
        });
        let reason = |path: &str| p.path_reason(Path::new(path));
        assert_eq!(reason("/usr/bin/sudo").as_deref(), Some("is under `/usr`"));
        assert_eq!(reason("/usr/local/bin/dropper"), None);
        assert_eq!(reason("/etc/cron.d/evil"), None);
        assert_eq!(
            reason("/etc/ssh/sshd_config").as_deref(),
            Some("is under `/etc/ssh`")
        );
        assert_eq!(reason("/usr2/file"), None, "a prefix is whole components");
        assert_eq!(reason("/tmp/x"), None);
    }

    #[test]
    fn the_floor_holds_whatever_is_allowed() {
        let p = protection(|c| {
            c.allowed_paths = vec!["/lib".into(), "/usr".into()];
            c.agent_paths = vec!["/var/lib/policy-agent".into()];
        });
        let reason = |path: &str| p.path_reason(Path::new(path));
        assert_eq!(
            reason("/lib64/ld-linux-x86-64.so.2").as_deref(),
            Some("is a dynamic loader")
        );
        assert_eq!(
            reason("/usr/lib/ld-musl-x86_64.so.1").as_deref(),
            Some("is a dynamic loader")
        );
        assert_eq!(
            reason("/var/lib/policy-agent/agent.json").as_deref(),
            Some("is under the agent's own `/var/lib/policy-agent`")
        );
        assert_eq!(
            reason("/var/lib/policy-agent").as_deref(),
            Some("is the agent's own `/var/lib/policy-agent`")
        );
        assert_eq!(reason("/dev/sda").as_deref(), Some("is under `/dev`"));
        let exe = std::fs::canonicalize(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(
            p.path_reason(&exe).as_deref(),
            Some("is the agent's executable")
        );
        assert_eq!(reason("/usr/share/doc/x"), None, "allowed outright");
    }

    #[test]
    fn refusals_say_what_the_path_resolved_from() {
        let p = Protection::default();
        assert_eq!(
            p.path_refusal(Path::new("/tmp/link"), Path::new("/usr/bin/sudo"))
                .as_deref(),
            Some("protected path `/usr/bin/sudo` (resolved from `/tmp/link`) is under `/usr`")
        );
        assert_eq!(
            p.path_refusal(Path::new("/etc/passwd"), Path::new("/etc/passwd"))
                .as_deref(),
            Some("protected path `/etc/passwd` is under `/etc`")
        );
    }

    #[test]
    fn the_agent_and_pid_1_are_protected() {
        let p = Protection::default();
        assert_eq!(
            p.process_refusal(std::process::id()).as_deref(),
            Some("it is the agent itself")
        );
        assert_eq!(
            p.process_refusal(1).as_deref(),
            Some("it is the init process (pid 1)")
        );
    }
}
