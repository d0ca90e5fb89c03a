//! `kill_process`: SIGTERM, then SIGKILL after a grace period, with guards against killing the
//! wrong process.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, getpid, getppid};

use super::outcome::Outcome;

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
/// Refuses PID 1, the agent itself and its parent. When the action names the process, the PID
/// must still belong to a process of that name (`comm`, the executable or `argv[0]`), or the
/// PID may have been reused and nothing is killed. Between signals the process's start time
/// from `/proc/PID/stat` must stay the same.
#[derive(Debug, Clone, Default)]
pub struct ProcessKiller {
    config: KillConfig,
}

/// What `/proc/PID/stat` says about a process.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stat {
    comm: String,
    state: char,
    start_time: u64,
}

impl ProcessKiller {
    /// A killer with `config`.
    pub fn new(config: KillConfig) -> Self {
        Self { config }
    }

    /// Ends `pid`, which the event called `expected` if given.
    pub fn kill(&self, pid: u32, expected: Option<&str>) -> Outcome {
        let raw = match i32::try_from(pid) {
            Ok(raw) if raw > 0 => raw,
            _ => return Outcome::skipped(format!("`{pid}` is not a valid pid")),
        };
        if raw == 1 {
            return Outcome::skipped("refusing to kill pid 1 (init)");
        }
        if raw == getpid().as_raw() {
            return Outcome::skipped(format!("refusing to kill the agent itself (pid {pid})"));
        }
        if raw == getppid().as_raw() {
            return Outcome::skipped(format!("refusing to kill the agent's parent (pid {pid})"));
        }
        let Some(stat) = read_stat(pid).filter(|s| !s.is_dead()) else {
            return Outcome::skipped(format!("process {pid} is already gone"));
        };
        if let Some(expected) = expected {
            if !names_match(pid, &stat.comm, expected) {
                return Outcome::skipped(format!(
                    "pid {pid} is now `{}`, not `{expected}`: not killed (the pid may have been reused)",
                    stat.comm
                ));
            }
        }
        let target = Pid::from_raw(raw);
        let comm = &stat.comm;
        match kill(target, Signal::SIGTERM) {
            Ok(()) => {}
            Err(Errno::ESRCH) => return Outcome::skipped(format!("process {pid} is already gone")),
            Err(e) => return Outcome::failed(format!("cannot signal pid {pid} (`{comm}`): {e}")),
        }
        if self.wait_gone(pid, &stat, self.config.grace) {
            return Outcome::done(format!("pid {pid} (`{comm}`) exited after SIGTERM"));
        }
        // Still the same process (same start time)? wait_gone said so: send SIGKILL.
        match kill(target, Signal::SIGKILL) {
            Ok(()) => {}
            Err(Errno::ESRCH) => {
                return Outcome::done(format!("pid {pid} (`{comm}`) exited after SIGTERM"));
            }
            Err(e) => return Outcome::failed(format!("cannot signal pid {pid} (`{comm}`): {e}")),
        }
        if self.wait_gone(pid, &stat, self.config.kill_wait) {
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
            let gone = match read_stat(pid) {
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

impl Stat {
    fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses `/proc/PID/stat`; `None` if the process does not exist.
fn read_stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

fn parse_stat(text: &str) -> Option<Stat> {
    // `pid (comm) state ppid ...`: comm may hold spaces and parentheses, so split at the last `)`.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let mut fields = text.get(close + 1..)?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Field 22 of the file is the start time; `state` was field 3.
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(Stat {
        comm,
        state,
        start_time,
    })
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
    fn parses_stat_with_awkward_names() {
        let text = "4242 (my (evil) proc) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                comm: "my (evil) proc".into(),
                state: 'S',
                start_time: 987654
            })
        );
        assert_eq!(parse_stat("4242 (x) S 1"), None);
    }

    #[test]
    fn basename_takes_the_last_component() {
        assert_eq!(basename("/usr/bin/xmrig"), "xmrig");
        assert_eq!(basename("xmrig"), "xmrig");
    }
}
