//! Event sources: JSON Lines on stdin or in a followed file, and the OpenSSH log. Each source
//! reads on its own thread (reads block; the async runtime never waits for them) and feeds its
//! own [`Pipeline`].

use std::io::{self, BufRead, BufReader, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;

use super::pipeline::{Pipeline, PipelineStats};
use crate::sshd::{FollowError, LogFollower, SshdConfig, SshdTracker};

/// How often a followed file is looked at when nothing new was in it.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// Where an agent reads threat events.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// JSON Lines on standard input; the source ends with the input.
    Stdin,
    /// JSON Lines appended to a file, followed like `tail -F` (rotation, truncation, a file
    /// that does not exist yet).
    JsonLinesFile {
        /// The file.
        path: PathBuf,
        /// Read the lines already in it too (default: only new ones).
        from_start: bool,
    },
    /// An OpenSSH log (syslog, RFC 3339 or `sshd -E` lines), followed like `tail -F`: every
    /// failed authentication becomes a `brute_force` event from its source address.
    SshdLog {
        /// The log.
        path: PathBuf,
        /// Read the lines already in it too.
        from_start: bool,
    },
}

impl Source {
    /// JSON Lines from `path`, or from stdin if it is `-`.
    ///
    /// ```
    /// use policy_engine::agent::Source;
    /// assert_eq!(Source::json_lines("-", false), Source::Stdin);
    /// assert_eq!(
    ///     Source::json_lines("/var/log/threats.jsonl", true),
    ///     Source::JsonLinesFile { path: "/var/log/threats.jsonl".into(), from_start: true }
    /// );
    /// ```
    pub fn json_lines(path: impl Into<PathBuf>, from_start: bool) -> Self {
        let path = path.into();
        if path.as_os_str() == "-" {
            Self::Stdin
        } else {
            Self::JsonLinesFile { path, from_start }
        }
    }

    fn name(&self) -> String {
        match self {
            Self::Stdin => "stdin".to_owned(),
            Self::JsonLinesFile { path, .. } | Self::SshdLog { path, .. } => {
                path.display().to_string()
            }
        }
    }
}

/// Why a source stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Standard input could not be read.
    #[error("cannot read events from stdin: {0}")]
    Stdin(io::Error),
    /// A followed file could not be opened or read.
    #[error(transparent)]
    Follow(#[from] FollowError),
    /// The actions could not be written out.
    #[error("cannot write actions: {0}")]
    Output(io::Error),
}

/// The end of a source's thread: its counts, or why it stopped.
pub(crate) type SourceEnd = Result<PipelineStats, SourceError>;

/// Reads `source` into `pipeline` on a new thread until it ends or `stop` is set (checked
/// between reads; a blocked read of stdin is left behind, the process is ending anyway).
pub(crate) fn spawn<W: Write + Send + 'static>(
    source: Source,
    mut pipeline: Pipeline<W>,
    stop: Arc<AtomicBool>,
) -> io::Result<oneshot::Receiver<SourceEnd>> {
    let (done, ended) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("source {}", source.name()))
        .spawn(move || {
            let result =
                match &source {
                    Source::Stdin => read_stdin(&mut pipeline, &stop),
                    Source::JsonLinesFile { path, from_start } => {
                        follow(&mut pipeline, path, *from_start, &stop, |pipeline, line| {
                            pipeline.line(line)
                        })
                    }
                    Source::SshdLog { path, from_start } => {
                        let mut tracker = SshdTracker::new(SshdConfig::default());
                        follow(&mut pipeline, path, *from_start, &stop, |pipeline, line| {
                            match tracker.feed_bytes(line) {
                                Some(attempt) => pipeline.event(&attempt.into_event()),
                                None => Ok(()),
                            }
                        })
                    }
                };
            let flushed = pipeline.flush().map_err(SourceError::Output);
            let _ = done.send(result.and(flushed).map(|()| pipeline.stats()));
        })?;
    Ok(ended)
}

fn read_stdin<W: Write>(pipeline: &mut Pipeline<W>, stop: &AtomicBool) -> Result<(), SourceError> {
    let mut input = BufReader::with_capacity(256 * 1024, io::stdin().lock());
    let mut line = Vec::with_capacity(1024);
    while !stop.load(Ordering::Relaxed) {
        line.clear();
        let read = match input.read_until(b'\n', &mut line) {
            Ok(read) => read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(SourceError::Stdin(err)),
        };
        if read == 0 {
            return Ok(());
        }
        pipeline.line(&line).map_err(SourceError::Output)?;
        // Print actions as soon as no more input is waiting: prompt when events trickle in,
        // batched when they stream.
        if input.buffer().is_empty() {
            pipeline.flush().map_err(SourceError::Output)?;
        }
    }
    Ok(())
}

/// Follows `path` like `tail -F`, handing each line to `handle`, until `stop`.
fn follow<W: Write>(
    pipeline: &mut Pipeline<W>,
    path: &std::path::Path,
    from_start: bool,
    stop: &AtomicBool,
    mut handle: impl FnMut(&mut Pipeline<W>, &[u8]) -> io::Result<()>,
) -> Result<(), SourceError> {
    let mut follower = LogFollower::open(path, from_start)?;
    tracing::info!(path = %follower.path().display(), "following events");
    while !stop.load(Ordering::Relaxed) {
        let mut failure = None;
        let read = follower.poll(|line| {
            if failure.is_none() {
                failure = handle(pipeline, line).err();
            }
        })?;
        if let Some(err) = failure {
            return Err(SourceError::Output(err));
        }
        pipeline.flush().map_err(SourceError::Output)?;
        if read == 0 {
            std::thread::sleep(FOLLOW_POLL);
        }
    }
    Ok(())
}
