//! Running `nft`: one process per batch, the script on stdin (`nft -f -`), killed at a timeout.

use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// How long one `nft` run may take by default before it is killed.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a killed `nft` gets to be reaped before it is left to a background thread (a
/// process stuck in the kernel dies only when its system call returns).
const REAP_WAIT: Duration = Duration::from_secs(1);

/// How to run `nft`: the command and its leading arguments, e.g. `["nft"]` or
/// `["ip", "netns", "exec", "test-ns", "nft"]` to act inside a network namespace, and how long
/// one run may take.
///
/// Every run has a deadline: a hung `nft` (a stuck netlink socket, a wedged kernel module) is
/// killed with its whole process group at the deadline and the run fails with
/// [`NftError::Timeout`], so the caller never waits for good.
///
/// ```
/// use std::time::Duration;
/// use policy_engine::executor::Nft;
/// let nft = Nft::new(vec!["ip".into(), "netns".into(), "exec".into(), "ns1".into(), "nft".into()])
///     .with_timeout(Duration::from_secs(5));
/// assert_eq!(nft.to_string(), "ip netns exec ns1 nft");
/// assert_eq!(nft.timeout(), Duration::from_secs(5));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nft {
    command: Vec<String>,
    timeout: Duration,
}

/// Why an `nft` run failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The command list is empty.
    #[error("the nft command is empty")]
    NoCommand,
    /// The process could not be started or fed.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `nft` exited with an error.
    #[error("`{command}` failed ({status}): {stderr}")]
    Exit {
        /// The command line.
        command: String,
        /// The exit status.
        status: String,
        /// What `nft` printed on stderr, trimmed.
        stderr: String,
    },
    /// `nft` did not finish in time and was killed.
    #[error("`{command}` did not finish within {}: killed", describe_duration(*.timeout))]
    Timeout {
        /// The command line.
        command: String,
        /// The time it had.
        timeout: Duration,
    },
}

impl Default for Nft {
    fn default() -> Self {
        Self::new(vec!["nft".to_owned()])
    }
}

impl Nft {
    /// Runs `nft` as `command` (program first), with [`DEFAULT_COMMAND_TIMEOUT`].
    pub fn new(command: Vec<String>) -> Self {
        Self {
            command,
            timeout: DEFAULT_COMMAND_TIMEOUT,
        }
    }

    /// Kills a run that takes longer than `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The longest a run may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Applies `script` as one atomic transaction (`nft -f -`).
    pub fn apply(&self, script: &str) -> Result<(), NftError> {
        self.run(&["-f", "-"], Some(script)).map(drop)
    }

    /// Runs `nft ARGS...` and returns its stdout.
    pub fn query(&self, args: &[&str]) -> Result<String, NftError> {
        self.run(args, None)
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String, NftError> {
        use std::os::unix::process::CommandExt;
        let (program, leading) = self.command.split_first().ok_or(NftError::NoCommand)?;
        let deadline = Instant::now() + self.timeout;
        let line = || {
            let mut line = self.to_string();
            for arg in args {
                line.push(' ');
                line.push_str(arg);
            }
            line
        };
        let spawn_error = |source| NftError::Spawn {
            command: line(),
            source,
        };
        let mut child = Command::new(program)
            .args(leading)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so that a timeout kills whatever it started too
            // (`ip netns exec`, a wrapper script) and nothing keeps its pipes open.
            .process_group(0)
            .spawn()
            .map_err(spawn_error)?;
        // Feed stdin and drain stdout and stderr on their own threads: a chatty or stuck nft
        // can neither deadlock us on a full pipe nor hold us past the deadline.
        let (sender, streams) = mpsc::channel();
        let writer = match (stdin, child.stdin.take()) {
            (Some(script), Some(mut pipe)) => {
                let script = script.to_owned();
                let (done, written) = mpsc::channel();
                std::thread::spawn(move || {
                    // Dropping the pipe at the end closes nft's stdin.
                    let _ = done.send(pipe.write_all(script.as_bytes()));
                });
                Some(written)
            }
            _ => None,
        };
        for (stream, pipe) in [
            (Stream::Stdout, child.stdout.take().map(boxed)),
            (Stream::Stderr, child.stderr.take().map(boxed)),
        ] {
            if let Some(mut pipe) = pipe {
                let sender = sender.clone();
                std::thread::spawn(move || {
                    let mut bytes = Vec::new();
                    let read = pipe.read_to_end(&mut bytes).map(|_| bytes);
                    let _ = sender.send((stream, read));
                });
            }
        }
        drop(sender);
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        for _ in 0..2 {
            let left = deadline.saturating_duration_since(Instant::now());
            match streams.recv_timeout(left) {
                Ok((Stream::Stdout, read)) => stdout = read.map_err(spawn_error)?,
                Ok((Stream::Stderr, read)) => stderr = read.unwrap_or_default(),
                Err(_) => break,
            }
        }
        let Some(status) = wait_until(&mut child, deadline).map_err(spawn_error)? else {
            kill_group(child);
            return Err(NftError::Timeout {
                command: line(),
                timeout: self.timeout,
            });
        };
        if status.success() {
            if let Some(written) = writer {
                let left = deadline.saturating_duration_since(Instant::now());
                if let Ok(Err(source)) = written.recv_timeout(left) {
                    return Err(spawn_error(source));
                }
            }
            Ok(String::from_utf8_lossy(&stdout).into_owned())
        } else {
            let stderr = String::from_utf8_lossy(&stderr);
            // nft echoes the failing line and a caret line; the first line says what is wrong.
            let first = stderr.lines().next().unwrap_or("").trim().to_owned();
            Err(NftError::Exit {
                command: line(),
                status: status.to_string(),
                stderr: first,
            })
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

fn boxed(pipe: impl Read + Send + 'static) -> Box<dyn Read + Send> {
    Box::new(pipe)
}

/// Waits for `child` to exit until `deadline`; `None` if it is still running then. Called once
/// its output pipes closed, which almost always means it exited: the first look usually
/// answers, and the pauses between looks stay short.
fn wait_until(child: &mut Child, deadline: Instant) -> std::io::Result<Option<ExitStatus>> {
    let mut pause = Duration::from_micros(100);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

/// Kills the process group of `child` (not reaped yet, so its group id is still its own) and
/// reaps it; a process that does not die at once (stuck in a system call) is left to a thread
/// that reaps it whenever it does.
fn kill_group(mut child: Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let _ = child.kill();
    if matches!(
        wait_until(&mut child, Instant::now() + REAP_WAIT),
        Ok(Some(_))
    ) {
        return;
    }
    reap_later(child);
}

fn reap_later(mut child: Child) {
    std::thread::spawn(move || {
        let _ = child.wait();
    });
}

/// `2s`, `1500ms`.
fn describe_duration(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

impl std::fmt::Display for Nft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.command.join(" "))
    }
}

/// Whether `name` can be used as an nftables table or set name without quoting.
pub(crate) fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 64
}
