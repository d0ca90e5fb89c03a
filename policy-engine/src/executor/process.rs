//! `kill_process`: SIGTERM, then SIGKILL after a grace period, with guards against killing the
//! wrong process.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, getpid, getppid};

use super::outcome::Outcome;
use super::procfs::{self, Stat};
use super::protect::Protection;

/// How processes are ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KillConfig {
    /// Time between SIGTERM and SIGKILL (default 5 s).
    pub grace: Duration,
    /// How long to wait for the process to vanish after SIGKILL (default 2 s).
    pub kill_wait: Duration,
    /// How often to look whether it is gone (default 20 ms).
    pub poll: Duration,
}

impl Default for KillConfig {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(5),
            kill_wait: Duration::from_secs(2),
            poll: Duration::from_millis(20),
        }
    }
}

/// Ends processes by PID.
///
/// Refuses PID 1, the agent itself and its parent, and every process its [`Protection`]
/// protects (decided on `/proc/PID/exe` at kill time). When the action names the process, the
/// PID must still belong to a process of that name (`comm`, the executable or `argv[0]`), or
/// the PID may have been reused and nothing is killed. The process is pinned with a pidfd
/// before it is looked at, and its start time from `/proc/PID/stat` must stay the same while
/// it is looked at and between signals: the process signalled is the process checked.
#[derive(Debug, Clone, Default)]
pub struct ProcessKiller {
    config: KillConfig,
    protection: Protection,
}

impl ProcessKiller {
    /// A killer with `config` and the default protections ([`Protection::default`]).
    pub fn new(config: KillConfig) -> Self {
        Self {
            config,
            protection: Protection::default(),
        }
    }

    /// The same killer, refusing what `protection` protects instead.
    pub fn with_protection(mut self, protection: Protection) -> Self {
        self.protection = protection;
        self
    }

    /// Ends `pid`, which the event called `expected` if given.
    pub fn kill(&self, pid: u32, expected: Option<&str>) -> Outcome {
        match self.pin(pid, expected) {
            Ok((target, stat)) => self.end(pid, &target, &stat),
            Err(refusal) => refusal,
        }
    }

    /// Every check before a signal: the pinned process and what `/proc` said about it, or the
    /// outcome that ends the action here.
    fn pin(&self, pid: u32, expected: Option<&str>) -> Result<(Target, Stat), Outcome> {
        let raw = match i32::try_from(pid) {
            Ok(raw) if raw > 0 => raw,
            _ => return Err(Outcome::skipped(format!("`{pid}` is not a valid pid"))),
        };
        if raw == 1 {
            return Err(Outcome::skipped("refusing to kill pid 1 (init)"));
        }
        if raw == getpid().as_raw() {
            return Err(Outcome::skipped(format!(
                "refusing to kill the agent itself (pid {pid})"
            )));
        }
        if raw == getppid().as_raw() {
            return Err(Outcome::skipped(format!(
                "refusing to kill the agent's parent (pid {pid})"
            )));
        }
        let gone = || Outcome::skipped(format!("process {pid} is already gone"));
        let stat = procfs::stat(pid)
            .filter(|s| !s.is_dead())
            .ok_or_else(gone)?;
        // Opened after `stat` was read: while the start time stays the same, the pidfd and
        // every look at /proc/PID are about the process `stat` describes.
        let target = match Target::open(raw) {
            Ok(target) => target,
            Err(Errno::ESRCH) => return Err(gone()),
            Err(e) => return Err(Outcome::failed(format!("cannot open pid {pid}: {e}"))),
        };
        if !same_process(pid, &stat) {
            return Err(gone());
        }
        let comm = &stat.comm;
        if let Some(expected) = expected {
            if !names_match(pid, comm, expected) {
                return Err(Outcome::skipped(format!(
                    "pid {pid} is now `{comm}`, not `{expected}`: not killed (the pid may have been reused)"
                )));
            }
        }
        if let Some(why) = self.protection.process_reason(pid, &stat) {
            return Err(Outcome::skipped(format!(
                "refusing to kill pid {pid} (`{comm}`): {why}"
            )));
        }
        if !same_process(pid, &stat) {
            return Err(gone());
        }
        Ok((target, stat))
    }

    /// SIGTERM, the grace period, SIGKILL.
    fn end(&self, pid: u32, target: &Target, stat: &Stat) -> Outcome {
        let comm = &stat.comm;
        match target.signal(Signal::SIGTERM) {
            Ok(()) => {}
            Err(Errno::ESRCH) => return Outcome::skipped(format!("process {pid} is already gone")),
            Err(e) => return Outcome::failed(format!("cannot signal pid {pid} (`{comm}`): {e}")),
        }
        if self.wait_gone(pid, stat, self.config.grace) {
            return Outcome::done(format!("pid {pid} (`{comm}`) exited after SIGTERM"));
        }
        // Still the same process (same start time)? wait_gone said so: send SIGKILL.
        match target.signal(Signal::SIGKILL) {
            Ok(()) => {}
            Err(Errno::ESRCH) => {
                return Outcome::done(format!("pid {pid} (`{comm}`) exited after SIGTERM"));
            }
            Err(e) => return Outcome::failed(format!("cannot signal pid {pid} (`{comm}`): {e}")),
        }
        if self.wait_gone(pid, stat, self.config.kill_wait) {
            Outcome::done(format!(
                "pid {pid} (`{comm}`) killed with SIGKILL after a {}ms grace period",
                self.config.grace.as_millis()
            ))
        } else {
            Outcome::failed(format!(
                "pid {pid} (`{comm}`) is still alive {}ms after SIGKILL",
                self.config.kill_wait.as_millis()
            ))
        }
    }

    /// Waits up to `limit` for the process `first` described to be gone (exited, a zombie, or
    /// replaced by another process with the same pid).
    fn wait_gone(&self, pid: u32, first: &Stat, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let gone = match procfs::stat(pid) {
                None => true,
                Some(now) => now.is_dead() || now.start_time != first.start_time,
            };
            if gone {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(self.config.poll);
        }
    }
}

/// The process to signal: a pidfd where the kernel has them (Linux 5.3), else the bare pid.
enum Target {
    Pidfd(OwnedFd),
    Pid(Pid),
}

impl Target {
    fn open(raw: i32) -> Result<Self, Errno> {
        let Some(pid) = rustix::process::Pid::from_raw(raw) else {
            return Err(Errno::EINVAL);
        };
        match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
            Ok(fd) => Ok(Self::Pidfd(fd)),
            Err(e) if e == rustix::io::Errno::NOSYS => Ok(Self::Pid(Pid::from_raw(raw))),
            Err(e) => Err(Errno::from_raw(e.raw_os_error())),
        }
    }

    fn signal(&self, signal: Signal) -> Result<(), Errno> {
        match self {
            Self::Pidfd(fd) => {
                let signal = match signal {
                    Signal::SIGKILL => rustix::process::Signal::KILL,
                    _ => rustix::process::Signal::TERM,
                };
                rustix::process::pidfd_send_signal(fd, signal)
                    .map_err(|e| Errno::from_raw(e.raw_os_error()))
            }
            Self::Pid(pid) => kill(*pid, signal),
        }
    }
}

/// Whether `pid` is still the process `first` described (same start time, not exited).
fn same_process(pid: u32, first: &Stat) -> bool {
    procfs::stat(pid).is_some_and(|now| !now.is_dead() && now.start_time == first.start_time)
}

/// Whether the process `pid` with kernel name `comm` is the one the event called `expected`.
fn names_match(pid: u32, comm: &str, expected: &str) -> bool {
    let expected = basename(expected);
    if expected.is_empty() {
        return false;
    }
    // The kernel keeps only the first 15 bytes of the name.
    let truncated = expected.get(..expected.len().min(15)).unwrap_or(expected);
    if comm == expected || comm == truncated {
        return true;
    }
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    if exe
        .as_deref()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        == Some(expected)
    {
        return true;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or(&[]);
    basename(&String::from_utf8_lossy(argv0)) == expected
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basename_takes_the_last_component() {
        assert_eq!(basename("/usr/bin/xmrig"), "xmrig");
        assert_eq!(basename("xmrig"), "xmrig");
    }
}
