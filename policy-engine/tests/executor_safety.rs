//! What the host protects, on real files and processes: protected paths are not quarantined
//! (directly, through a symlink, through a symlinked directory), nor files a protected process
//! has mapped; protected processes are not killed; ordinary files and processes still are.
//! The defaults are checked against real `/usr` paths inside a private mount namespace, on a
//! tmpfs mounted there, so a broken check could never move a file of this host.
#![cfg(all(feature = "executor", target_os = "linux"))]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod executor_common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use executor_common::{record, wait_until};
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use policy_engine::Action;
use policy_engine::executor::{
    Executor, HostConfig, HostExecutor, Outcome, Protection, Quarantine, QuarantineConfig,
    SafetyConfig,
};

/// A directory under /tmp, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Self {
        let path = PathBuf::from(format!("/tmp/pe-safety-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    /// `self/rel`, created as a directory.
    fn sub(&self, rel: &str) -> PathBuf {
        let path = self.0.join(rel);
        fs::create_dir_all(&path).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A child process killed and reaped on drop, whatever the test did.
struct Guard {
    child: Child,
    _stdin: Option<ChildStdin>,
}

impl Guard {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copies the executable `from` to `to` (mode 0755).
fn copy_exe(from: &Path, to: &Path) {
    fs::copy(from, to).unwrap();
    fs::set_permissions(to, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Starts `command`, retrying while the kernel says the just-written executable is busy (a
/// parallel test's fork may hold it open for writing for a moment).
fn spawn(mut command: Command) -> Guard {
    command.stdin(Stdio::piped());
    let mut result = command.spawn();
    let settled = wait_until(Duration::from_secs(5), || {
        if matches!(&result, Err(e) if e.raw_os_error() == Some(26)) {
            result = command.spawn();
        }
        !matches!(&result, Err(e) if e.raw_os_error() == Some(26))
    });
    assert!(settled, "{command:?} stayed busy");
    let mut child = result.unwrap();
    let stdin = child.stdin.take();
    Guard {
        child,
        _stdin: stdin,
    }
}

/// `exe 30` (a copy of `sleep`), once the kernel shows it running `exe`.
fn sleeper(exe: &Path) -> Guard {
    let mut command = Command::new(exe);
    command.arg("30");
    let guard = spawn(command);
    wait_exe(guard.pid(), exe);
    guard
}

fn wait_exe(pid: u32, exe: &Path) {
    assert!(
        wait_until(Duration::from_secs(5), || {
            fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == exe)
        }),
        "pid {pid} never ran {exe:?}"
    );
}

fn sleep_binary() -> PathBuf {
    fs::canonicalize("/usr/bin/sleep").unwrap()
}

/// A host executor with `safety` (the state dir added), a fake `nft` and a 2 s grace period.
fn host(state: &Path, safety: SafetyConfig) -> HostExecutor {
    let mut config = HostConfig::new(state, vec![])
        .with_nft_command(executor_common::fake_nft())
        .with_safety(safety);
    config.kill.grace = Duration::from_secs(2);
    HostExecutor::open(config).unwrap()
}

fn quarantine(executor: &mut HostExecutor, path: &Path) -> Outcome {
    executor.execute(&record(Action::QuarantineFile {
        path: path.display().to_string(),
    }))
}

fn kill(executor: &mut HostExecutor, pid: u32) -> Outcome {
    executor.execute(&record(Action::KillProcess { pid, process: None }))
}

/// The defaults plus `paths` protected and `allowed` carved out.
fn safety(paths: &[&Path], allowed: &[&Path]) -> SafetyConfig {
    let mut config = SafetyConfig::default();
    config
        .protected_paths
        .extend(paths.iter().map(|p| p.to_path_buf()));
    config
        .allowed_paths
        .extend(allowed.iter().map(|p| p.to_path_buf()));
    config
}

#[test]
fn protected_paths_are_refused_directly_through_a_link_and_through_a_linked_directory() {
    let dir = Dir::new("paths");
    let system = dir.sub("system");
    let free = dir.sub("free");
    let tool = system.join("tool");
    fs::write(&tool, b"#!/bin/sh\n").unwrap();
    let mut executor = host(&dir.sub("state"), safety(&[&system], &[]));
    let s = system.display();
    let f = free.display();

    assert_eq!(
        quarantine(&mut executor, &tool),
        Outcome::skipped(format!("protected path `{s}/tool` is under `{s}`"))
    );
    std::os::unix::fs::symlink(&tool, free.join("link")).unwrap();
    assert_eq!(
        quarantine(&mut executor, &free.join("link")),
        Outcome::skipped(format!(
            "protected path `{s}/tool` (resolved from `{f}/link`) is under `{s}`"
        ))
    );
    std::os::unix::fs::symlink(&system, free.join("dir-link")).unwrap();
    assert_eq!(
        quarantine(&mut executor, &free.join("dir-link/tool")),
        Outcome::skipped(format!(
            "protected path `{s}/tool` (resolved from `{f}/dir-link/tool`) is under `{s}`"
        ))
    );
    // A link to a link ends at the same file.
    std::os::unix::fs::symlink(free.join("link"), free.join("link2")).unwrap();
    assert_eq!(
        quarantine(&mut executor, &free.join("link2")),
        Outcome::skipped(format!(
            "protected path `{s}/tool` (resolved from `{f}/link2`) is under `{s}`"
        ))
    );
    assert_eq!(fs::read(&tool).unwrap(), b"#!/bin/sh\n", "untouched");

    // An ordinary file beside them is still quarantined.
    let payload = free.join("payload");
    fs::write(&payload, b"evil").unwrap();
    let outcome = quarantine(&mut executor, &payload);
    assert!(outcome.is_done(), "{outcome}");
    assert!(!payload.exists());
}

#[test]
fn an_allowed_subtree_is_quarantined_and_the_operator_can_restore_it() {
    let dir = Dir::new("allowed");
    let system = dir.sub("system");
    let local = dir.sub("system/local");
    let state = dir.sub("state");
    let mut executor = host(&state, safety(&[&system], &[&local]));
    let dropper = local.join("dropper");
    fs::write(&dropper, b"evil").unwrap();
    let outcome = quarantine(&mut executor, &dropper);
    assert!(outcome.is_done(), "{outcome}");
    assert!(!dropper.exists());
    // A deeper protected prefix inside the allowed one wins again.
    drop(executor);
    let keep = dir.sub("system/local/keep");
    fs::write(keep.join("file"), b"x").unwrap();
    let mut executor = host(&state, safety(&[&system, &keep], &[&local]));
    assert_eq!(
        quarantine(&mut executor, &keep.join("file")),
        Outcome::skipped(format!(
            "protected path `{}/file` is under `{}`",
            keep.display(),
            keep.display()
        ))
    );

    // The operator's side (`executor_ctl restore`): restoring is never refused.
    let mut operator = Quarantine::new(QuarantineConfig {
        dir: state.join("quarantine"),
    });
    let entry = operator.list().unwrap().pop().unwrap();
    operator.restore(&entry.id).unwrap();
    assert_eq!(fs::read(&dropper).unwrap(), b"evil");
}

#[test]
fn hard_links_and_the_agents_own_files_are_refused() {
    let dir = Dir::new("links");
    let state = dir.sub("state");
    let free = dir.sub("free");
    let mut executor = host(&state, SafetyConfig::default());
    let a = free.join("a");
    fs::write(&a, b"x").unwrap();
    fs::hard_link(&a, free.join("b")).unwrap();
    assert_eq!(
        quarantine(&mut executor, &a),
        Outcome::skipped(format!(
            "`{}` has 2 hard links: quarantining one name would leave the others",
            a.display()
        ))
    );
    let stored = state.join("firewall").join("blocks.jsonl");
    fs::create_dir_all(stored.parent().unwrap()).unwrap();
    fs::write(&stored, b"").unwrap();
    assert_eq!(
        quarantine(&mut executor, &stored),
        Outcome::skipped(format!(
            "protected path `{}` is under the agent's own `{}`",
            stored.display(),
            state.display()
        ))
    );
    let me = fs::canonicalize(std::env::current_exe().unwrap()).unwrap();
    assert_eq!(
        quarantine(&mut executor, &me),
        Outcome::skipped(format!(
            "protected path `{}` is the agent's executable",
            me.display()
        ))
    );
}

#[test]
fn a_file_mapped_by_a_protected_process_is_refused_until_it_exits() {
    let dir = Dir::new("mapped");
    let guarded = dir.sub("guarded");
    let free = dir.sub("free");
    // A real shared library beside libc, preloaded by the processes below.
    let libc_dir = fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.split_whitespace()
                .nth(5)
                .filter(|p| p.ends_with("/libc.so.6"))
        })
        .map(|p| Path::new(p).parent().unwrap().to_owned())
        .expect("this test binary maps libc.so.6");
    let libdl = libc_dir.join("libdl.so.2");
    let exe = guarded.join("pe-guarded");
    let lib = guarded.join("libpe-guard.so");
    copy_exe(&sleep_binary(), &exe);
    fs::copy(&libdl, &lib).unwrap();
    let mut config = SafetyConfig::default();
    config.protected_executables.push(exe.clone());
    let mut executor = host(&dir.sub("state"), config);

    let mut command = Command::new(&exe);
    command.arg("30").env("LD_PRELOAD", &lib);
    let mut process = spawn(command);
    let pid = process.pid();
    assert!(
        wait_until(Duration::from_secs(5), || {
            fs::read_to_string(format!("/proc/{pid}/maps"))
                .is_ok_and(|m| m.contains(lib.to_str().unwrap()))
        }),
        "the guarded process never mapped the library"
    );
    let why = format!("it runs the protected executable `{}`", exe.display());
    for file in [&lib, &exe] {
        assert_eq!(
            quarantine(&mut executor, file),
            Outcome::skipped(format!(
                "`{}` is mapped by pid {pid} (`pe-guarded`), a protected process: {why}",
                file.display()
            ))
        );
    }
    assert_eq!(
        kill(&mut executor, pid),
        Outcome::skipped(format!("refusing to kill pid {pid} (`pe-guarded`): {why}"))
    );
    assert!(process.alive());

    // The same library and binary used by an ordinary process: a running dropper is
    // quarantined like any file.
    let malware = free.join("pe-malware");
    let malware_lib = free.join("libpe-malware.so");
    copy_exe(&sleep_binary(), &malware);
    fs::copy(&libdl, &malware_lib).unwrap();
    let mut command = Command::new(&malware);
    command.arg("30").env("LD_PRELOAD", &malware_lib);
    let running = spawn(command);
    wait_exe(running.pid(), &malware);
    for file in [&malware, &malware_lib] {
        let outcome = quarantine(&mut executor, file);
        assert!(outcome.is_done(), "{outcome}");
    }

    // Once the protected process is gone its files are ordinary too.
    drop(process);
    let outcome = quarantine(&mut executor, &lib);
    assert!(outcome.is_done(), "{outcome}");
}

#[test]
fn protected_executables_and_names_are_not_killed_but_ordinary_processes_are() {
    let dir = Dir::new("kill");
    let sbin = dir.sub("sbin");
    let free = dir.sub("free");
    let daemon = sbin.join("pe-daemon");
    let impostor = free.join("pe-daemon");
    copy_exe(&sleep_binary(), &daemon);
    copy_exe(&sleep_binary(), &impostor);
    let mut config = safety(&[&sbin], &[]);
    config.protected_names.push("pe-daemon".into());
    let mut executor = host(&dir.sub("state"), config);

    let mut protected = sleeper(&daemon);
    let pid = protected.pid();
    assert_eq!(
        kill(&mut executor, pid),
        Outcome::skipped(format!(
            "refusing to kill pid {pid} (`pe-daemon`): `{}` is the protected process `pe-daemon`",
            daemon.display()
        ))
    );
    assert!(protected.alive());
    // Same name, but run from an unprotected directory: malware posing as a daemon.
    let mut posing = sleeper(&impostor);
    let pid = posing.pid();
    assert_eq!(
        kill(&mut executor, pid),
        Outcome::done(format!("pid {pid} (`pe-daemon`) exited after SIGTERM"))
    );
    assert!(!posing.alive());
    // An ordinary program under /usr is not protected by its path.
    let mut sleep = sleeper(&sleep_binary());
    let pid = sleep.pid();
    assert_eq!(Protection::default().process_refusal(pid), None);
    assert_eq!(
        kill(&mut executor, pid),
        Outcome::done(format!("pid {pid} (`sleep`) exited after SIGTERM"))
    );
    assert!(!sleep.alive());
}

#[test]
fn a_master_is_protected_and_its_per_connection_children_are_not() {
    let dir = Dir::new("master");
    let sbin = dir.sub("sbin");
    // A shell named like a daemon: the outer one forks an inner one that waits on stdin.
    let daemon = sbin.join("pe-sshd");
    copy_exe(Path::new("/bin/sh"), &daemon);
    let mut config = safety(&[&sbin], &[]);
    config.protected_masters.push("pe-sshd".into());
    let mut executor = host(&dir.sub("state"), config);
    let mut command = Command::new(&daemon);
    // The master reports its child's SIGTERM on stderr: not part of the test's output.
    command
        .arg("-c")
        .arg(format!("{} -c 'read line'; :", daemon.display()))
        .stderr(Stdio::null());
    let mut master = spawn(command);
    let master_pid = master.pid();
    let mut child_pid = None;
    assert!(
        wait_until(Duration::from_secs(5), || {
            child_pid = fs::read_dir("/proc")
                .unwrap()
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .find(|pid| {
                    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
                    after.split_whitespace().nth(1) == Some(&master_pid.to_string())
                        && fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == daemon)
                });
            child_pid.is_some()
        }),
        "the inner shell never started"
    );
    let child_pid = child_pid.unwrap();
    let me = std::process::id();
    assert_eq!(
        kill(&mut executor, master_pid),
        Outcome::skipped(format!(
            "refusing to kill pid {master_pid} (`pe-sshd`): `{}` is the protected process `pe-sshd` and its master (its parent, pid {me}, is not a `pe-sshd`)",
            daemon.display()
        ))
    );
    assert_eq!(
        kill(&mut executor, child_pid),
        Outcome::done(format!("pid {child_pid} (`pe-sshd`) exited after SIGTERM"))
    );
    assert!(
        wait_until(Duration::from_secs(5), || !master.alive()),
        "the master ends once its child is gone"
    );
}

#[test]
fn kernel_threads_are_never_killed() {
    let kthread = fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            // `flags` is field 9 of /proc/PID/stat; PF_KTHREAD is 0x200000.
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            after
                .split_whitespace()
                .nth(6)
                .and_then(|f| f.parse::<u64>().ok())
                .is_some_and(|flags| flags & 0x20_0000 != 0)
        })
        .expect("the host shows kernel threads");
    let comm = fs::read_to_string(format!("/proc/{kthread}/comm")).unwrap();
    let dir = Dir::new("kthread");
    let mut executor = host(&dir.sub("state"), SafetyConfig::default());
    assert_eq!(
        kill(&mut executor, kthread),
        Outcome::skipped(format!(
            "refusing to kill pid {kthread} (`{}`): it is a kernel thread",
            comm.trim_end()
        ))
    );
}

/// Runs `f` on a thread with its own mount namespace in which `/usr/local/src` is a fresh
/// tmpfs: files and daemons can live "in /usr" there without touching this host's /usr.
fn with_private_usr<T: Send>(f: impl FnOnce(&Path) -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                unshare(CloneFlags::CLONE_NEWNS).unwrap();
                mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                )
                .unwrap();
                let usr = Path::new("/usr/local/src");
                mount(
                    Some("tmpfs"),
                    usr,
                    Some("tmpfs"),
                    MsFlags::empty(),
                    Some("mode=0755"),
                )
                .unwrap();
                // Only this thread sees the tmpfs: the file written here is not in the host's.
                fs::write(usr.join(".pe-private"), b"").unwrap();
                f(usr)
            })
            .join()
            .unwrap()
    })
}

#[test]
fn the_defaults_protect_system_paths_and_daemons_but_not_impostors() {
    let dir = Dir::new("defaults");
    let free = dir.sub("free");
    let state = dir.sub("state");
    with_private_usr(|usr| {
        let mut executor = host(&state, SafetyConfig::default());
        let tool = usr.join("sudo");
        fs::write(&tool, b"#!/bin/sh\n").unwrap();
        let u = usr.display();
        let f = free.display();
        assert_eq!(
            quarantine(&mut executor, &tool),
            Outcome::skipped(format!("protected path `{u}/sudo` is under `/usr`"))
        );
        std::os::unix::fs::symlink(&tool, free.join("sudo")).unwrap();
        assert_eq!(
            quarantine(&mut executor, &free.join("sudo")),
            Outcome::skipped(format!(
                "protected path `{u}/sudo` (resolved from `{f}/sudo`) is under `/usr`"
            ))
        );
        std::os::unix::fs::symlink(usr, free.join("usr")).unwrap();
        assert_eq!(
            quarantine(&mut executor, &free.join("usr/sudo")),
            Outcome::skipped(format!(
                "protected path `{u}/sudo` (resolved from `{f}/usr/sudo`) is under `/usr`"
            ))
        );
        assert!(tool.exists());

        // A container runtime installed under /usr is protected by name; the same binary
        // dropped in /tmp is not.
        let dockerd = usr.join("dockerd");
        copy_exe(&sleep_binary(), &dockerd);
        let mut daemon = sleeper(&dockerd);
        let pid = daemon.pid();
        assert_eq!(
            kill(&mut executor, pid),
            Outcome::skipped(format!(
                "refusing to kill pid {pid} (`dockerd`): `{u}/dockerd` is the protected process `dockerd`"
            ))
        );
        assert!(daemon.alive());
        let impostor = free.join("dockerd");
        copy_exe(&sleep_binary(), &impostor);
        let mut posing = sleeper(&impostor);
        let pid = posing.pid();
        assert_eq!(
            kill(&mut executor, pid),
            Outcome::done(format!("pid {pid} (`dockerd`) exited after SIGTERM"))
        );
        assert!(!posing.alive());
    });
    assert!(
        !Path::new("/usr/local/src/.pe-private").exists(),
        "the tmpfs stayed private to the test thread"
    );
}
