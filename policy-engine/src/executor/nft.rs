//! Running `nft`: one process per batch, the script on stdin (`nft -f -`).

use std::io::Write;
use std::process::{Command, Stdio};

/// How to run `nft`: the command and its leading arguments, e.g. `["nft"]` or
/// `["ip", "netns", "exec", "test-ns", "nft"]` to act inside a network namespace.
///
/// ```
/// use policy_engine::executor::Nft;
/// let nft = Nft::new(vec!["ip".into(), "netns".into(), "exec".into(), "ns1".into(), "nft".into()]);
/// assert_eq!(nft.to_string(), "ip netns exec ns1 nft");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nft {
    command: Vec<String>,
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
}

impl Default for Nft {
    fn default() -> Self {
        Self::new(vec!["nft".to_owned()])
    }
}

impl Nft {
    /// Runs `nft` as `command` (program first).
    pub fn new(command: Vec<String>) -> Self {
        Self { command }
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
        let (program, leading) = self.command.split_first().ok_or(NftError::NoCommand)?;
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
            .spawn()
            .map_err(spawn_error)?;
        let pipe = child.stdin.take();
        // Feed stdin from another thread so a chatty nft cannot deadlock us on a full pipe;
        // dropping the pipe when the thread ends closes nft's stdin.
        let (written, output) = std::thread::scope(|scope| {
            let writer = scope.spawn(move || match (stdin, pipe) {
                (Some(script), Some(mut pipe)) => pipe.write_all(script.as_bytes()),
                _ => Ok(()),
            });
            let output = child.wait_with_output();
            let written = writer
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("stdin writer panicked")));
            (written, output)
        });
        let output = output.map_err(spawn_error)?;
        if output.status.success() {
            written.map_err(spawn_error)?;
        }
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            let stderr = String::from_utf8_lossy(&output.stderr);
            // nft echoes the failing line and a caret line; the first line says what is wrong.
            let first = stderr.lines().next().unwrap_or("").trim().to_owned();
            Err(NftError::Exit {
                command: line(),
                status: output.status.to_string(),
                stderr: first,
            })
        }
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
