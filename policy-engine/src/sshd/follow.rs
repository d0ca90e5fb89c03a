//! Following a log file the way `tail -F` does: new lines as they are written, across
//! rotation (the path now names a new file) and truncation (the file got shorter).

use std::fs::{File, Metadata};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Why a log could not be followed.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The file could not be opened.
    #[error("cannot open `{path}`: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Reading failed.
    #[error("cannot read `{path}`: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// A log file being followed. Call [`LogFollower::poll`] whenever convenient (for instance
/// every 200 ms): it hands over every complete line written since the last call.
#[derive(Debug)]
pub struct LogFollower {
    path: PathBuf,
    reader: Option<BufReader<File>>,
    identity: Option<(u64, u64)>,
    offset: u64,
    partial: Vec<u8>,
}

impl LogFollower {
    /// Follows `path`. With `from_start` the lines already in the file are read too; without,
    /// only lines written from now on. A file that does not exist yet is waited for.
    pub fn open(path: impl Into<PathBuf>, from_start: bool) -> Result<Self, FollowError> {
        let mut follower = Self {
            path: path.into(),
            reader: None,
            identity: None,
            offset: 0,
            partial: Vec::new(),
        };
        if follower.reopen()? && !from_start {
            if let Some(reader) = follower.reader.as_mut() {
                follower.offset = reader
                    .seek(SeekFrom::End(0))
                    .map_err(|source| follower_read(&follower.path, source))?;
            }
        }
        Ok(follower)
    }

    /// The followed path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hands every complete line (without its newline) written since the last call to
    /// `on_line`; returns how many there were.
    pub fn poll(&mut self, mut on_line: impl FnMut(&[u8])) -> Result<usize, FollowError> {
        let mut count = self.drain(&mut on_line)?;
        match std::fs::metadata(&self.path) {
            Ok(meta) if Some(identity(&meta)) != self.identity => {
                // Rotated: the old file is read to its end above; a last line without its
                // newline is still a line. Then the new file from its start.
                if !self.partial.is_empty() {
                    on_line(&self.partial);
                    self.partial.clear();
                    count += 1;
                }
                if self.reopen()? {
                    count += self.drain(&mut on_line)?;
                }
            }
            Ok(meta) if meta.len() < self.offset => {
                // Truncated in place (copytruncate): start over.
                self.partial.clear();
                if let Some(reader) = self.reader.as_mut() {
                    reader
                        .seek(SeekFrom::Start(0))
                        .map_err(|source| follower_read(&self.path, source))?;
                }
                self.offset = 0;
                count += self.drain(&mut on_line)?;
            }
            // Unchanged, or moved away and not yet recreated: keep reading the open file.
            _ => {}
        }
        Ok(count)
    }

    fn drain(&mut self, on_line: &mut impl FnMut(&[u8])) -> Result<usize, FollowError> {
        let Some(reader) = self.reader.as_mut() else {
            return Ok(0);
        };
        let mut count = 0;
        loop {
            let read = reader
                .read_until(b'\n', &mut self.partial)
                .map_err(|source| follower_read(&self.path, source))?;
            if read == 0 {
                return Ok(count);
            }
            self.offset += read as u64;
            if self.partial.last() == Some(&b'\n') {
                self.partial.pop();
                on_line(&self.partial);
                self.partial.clear();
                count += 1;
            }
        }
    }

    /// Opens the file at the path, if there is one; `Ok(false)` when there is none.
    fn reopen(&mut self) -> Result<bool, FollowError> {
        let file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(source) => {
                return Err(FollowError::Open {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let meta = file.metadata().map_err(|source| FollowError::Open {
            path: self.path.clone(),
            source,
        })?;
        self.identity = Some(identity(&meta));
        self.reader = Some(BufReader::with_capacity(64 * 1024, file));
        self.offset = 0;
        self.partial.clear();
        Ok(true)
    }
}

fn follower_read(path: &Path, source: io::Error) -> FollowError {
    FollowError::Read {
        path: path.to_owned(),
        source,
    }
}

#[cfg(unix)]
fn identity(meta: &Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

#[cfg(not(unix))]
fn identity(meta: &Metadata) -> (u64, u64) {
    (
        0,
        meta.created()
            .map(|t| t.elapsed().map_or(0, |d| d.as_nanos() as u64))
            .unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn lines(follower: &mut LogFollower) -> Vec<String> {
        let mut out = Vec::new();
        follower
            .poll(|l| out.push(String::from_utf8_lossy(l).into_owned()))
            .unwrap();
        out
    }

    fn append(path: &Path, text: &str) {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }

    #[test]
    fn follows_appends_rotation_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.log");
        append(&path, "old\n");
        let mut follower = LogFollower::open(&path, false).unwrap();
        assert_eq!(lines(&mut follower), Vec::<String>::new());
        append(&path, "a\nb");
        assert_eq!(lines(&mut follower), ["a"]);
        append(&path, "c\n");
        assert_eq!(lines(&mut follower), ["bc"]);

        // Rotation: renamed away, a new file appears; the tail of the old one comes first.
        append(&path, "d\n");
        std::fs::rename(&path, dir.path().join("auth.log.1")).unwrap();
        append(&dir.path().join("auth.log.1"), "e\n");
        assert_eq!(lines(&mut follower), ["d", "e"]);
        append(&path, "f\n");
        assert_eq!(lines(&mut follower), ["f"]);

        // Truncation in place.
        std::fs::write(&path, "").unwrap();
        assert_eq!(lines(&mut follower), Vec::<String>::new());
        append(&path, "g\n");
        assert_eq!(lines(&mut follower), ["g"]);
    }

    #[test]
    fn waits_for_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("later.log");
        let mut follower = LogFollower::open(&path, false).unwrap();
        assert_eq!(lines(&mut follower), Vec::<String>::new());
        append(&path, "x\n");
        assert_eq!(lines(&mut follower), ["x"]);
    }
}
