//! The firewall's list of active blocks, persisted as an append-only JSON Lines journal.
//!
//! Each block or unblock appends one line and fsyncs; opening replays the lines (a torn last
//! line from a crash is skipped) and rewrites the file compactly when it has grown past twice
//! the number of active blocks.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::durable::write_atomically;

/// When each blocked address is released; `None` is permanent.
pub(crate) type Blocks = HashMap<IpAddr, Option<DateTime<Utc>>>;

/// One journal line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Entry {
    /// `ip` is blocked until `until` (absent: permanently).
    Block {
        ip: IpAddr,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<DateTime<Utc>>,
    },
    /// `ip` is no longer blocked.
    Unblock { ip: IpAddr },
}

/// The journal file.
#[derive(Debug)]
pub(crate) struct Journal {
    path: PathBuf,
    lines: usize,
}

impl Journal {
    /// Opens (or starts) the journal at `path` and returns the blocks still active at `now`.
    pub(crate) fn open(path: &Path, now: DateTime<Utc>) -> io::Result<(Self, Blocks)> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let mut blocks = Blocks::new();
        let mut lines = 0;
        for line in text.lines() {
            lines += 1;
            match serde_json::from_str::<Entry>(line) {
                Ok(Entry::Block { ip, until }) => {
                    blocks.insert(ip, until);
                }
                Ok(Entry::Unblock { ip }) => {
                    blocks.remove(&ip);
                }
                Err(_) => {} // a torn write from a crash: the block it described is lost
            }
        }
        blocks.retain(|_, until| until.is_none_or(|t| t > now));
        let mut journal = Self {
            path: path.to_owned(),
            lines,
        };
        if journal.lines > 2 * blocks.len() + 16 {
            journal.compact(&blocks)?;
        }
        Ok((journal, blocks))
    }

    /// Appends `entries` durably.
    pub(crate) fn append(&mut self, entries: &[Entry]) -> io::Result<()> {
        let mut text = String::new();
        for entry in entries {
            text.push_str(&serde_json::to_string(entry).map_err(io::Error::other)?);
            text.push('\n');
        }
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)?;
        file.write_all(text.as_bytes())?;
        file.sync_data()?;
        self.lines += entries.len();
        Ok(())
    }

    /// Rewrites the journal with one line per active block, if it has grown large.
    pub(crate) fn compact_if_large(&mut self, blocks: &Blocks) -> io::Result<()> {
        if self.lines > 2 * blocks.len() + 1024 {
            self.compact(blocks)?;
        }
        Ok(())
    }

    fn compact(&mut self, blocks: &Blocks) -> io::Result<()> {
        let mut text = String::new();
        for (ip, until) in blocks {
            let entry = Entry::Block {
                ip: *ip,
                until: *until,
            };
            text.push_str(&serde_json::to_string(&entry).map_err(io::Error::other)?);
            text.push('\n');
        }
        write_atomically(&self.path, text.as_bytes(), 0o600)?;
        self.lines = blocks.len();
        Ok(())
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_blocks_and_unblocks_and_drops_expired_and_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blocks.jsonl");
        let now: DateTime<Utc> = "2030-01-01T00:00:00Z".parse().unwrap();
        let later: DateTime<Utc> = "2030-01-02T00:00:00Z".parse().unwrap();
        let earlier: DateTime<Utc> = "2029-12-31T00:00:00Z".parse().unwrap();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        let c: IpAddr = "192.0.2.3".parse().unwrap();
        let (mut journal, blocks) = Journal::open(&path, now).unwrap();
        assert!(blocks.is_empty());
        journal
            .append(&[
                Entry::Block {
                    ip: a,
                    until: Some(later),
                },
                Entry::Block { ip: b, until: None },
                Entry::Block {
                    ip: c,
                    until: Some(earlier),
                },
                Entry::Unblock { ip: a },
                Entry::Block {
                    ip: a,
                    until: Some(later),
                },
            ])
            .unwrap();
        fs::write(&path, fs::read_to_string(&path).unwrap() + "{\"op\":\"blo").unwrap();
        let (_, blocks) = Journal::open(&path, now).unwrap();
        let expected: Blocks = [(a, Some(later)), (b, None)].into_iter().collect();
        assert_eq!(blocks, expected);
    }
}
