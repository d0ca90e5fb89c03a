//! The durable outbox: every report is written to the state dir before it is sent, and stays
//! there until the server acknowledged it.
//!
//! One file per report (`outbox/00000000000000000042.json`, the exact body to POST), written
//! atomically (temp file, fsync, rename, fsync of the directory): after a crash or a `kill -9`
//! a report is either whole on disk or absent, never half written. The file is removed once the
//! server answered 2xx; if the agent dies in between, the report is sent again after the
//! restart and the server, which remembers report ids, answers it without acting twice.
//!
//! The outbox is bounded in count and bytes. When a new report does not fit, the oldest ones
//! are dropped: recent actions matter more to an operator than the start of a long outage.
//! Drops are counted in `outbox/dropped.json` (so a restart does not hide them) and shown in
//! the heartbeat's `lastError` for a day after the last drop.

use std::collections::VecDeque;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::executor::durable::write_atomically;

/// File that counts dropped reports, beside the reports.
const DROPPED_FILE: &str = "dropped.json";

/// How much the outbox holds before it drops its oldest reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxLimits {
    /// Most reports kept (default 10,000).
    pub max_reports: usize,
    /// Most bytes of reports kept (default 16 MiB).
    pub max_bytes: u64,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        Self {
            max_reports: 10_000,
            max_bytes: 16 << 20,
        }
    }
}

/// Why the outbox could not be opened or written.
#[derive(Debug, thiserror::Error)]
#[error("outbox `{}`: {source}", path.display())]
pub struct OutboxError {
    /// The file or directory.
    pub path: PathBuf,
    /// The I/O error.
    pub source: io::Error,
}

/// Reports dropped so far (over the life of the state dir).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Dropped {
    /// How many, whatever the cause.
    pub count: u64,
    /// Of them, how many the server refused for good (a report it will never take).
    #[serde(default)]
    pub refused: u64,
    /// Of them, how many could not be written (a full or failing disk).
    #[serde(default)]
    pub unwritable: u64,
    /// When the last one was dropped.
    pub last: Option<DateTime<Utc>>,
}

/// Why reports were dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropCause {
    /// The outbox was full (the oldest made room), or one report was larger than its limit.
    Full,
    /// The server refused them for good.
    Refused,
    /// They could not be written.
    Unwritable,
}

impl Dropped {
    /// The note for the heartbeat's `lastError`, while the last drop is less than a day old.
    pub fn note(&self, now: DateTime<Utc>, limits: OutboxLimits) -> Option<String> {
        let last = self.last?;
        (self.count > 0 && now - last < chrono::Duration::days(1)).then(|| {
            let full = self
                .count
                .saturating_sub(self.refused)
                .saturating_sub(self.unwritable);
            let mut causes = Vec::new();
            if full > 0 {
                causes.push(format!(
                    "{full} because the outbox was full (it keeps at most {} reports and {} \
                     bytes while the server is unreachable)",
                    limits.max_reports, limits.max_bytes
                ));
            }
            if self.refused > 0 {
                causes.push(format!("{} refused by the server for good", self.refused));
            }
            if self.unwritable > 0 {
                causes.push(format!("{} that could not be written", self.unwritable));
            }
            format!(
                "outbox: {} action reports dropped, the last at {}: {}; the audit misses them",
                self.count,
                last.to_rfc3339_opts(SecondsFormat::Secs, true),
                causes.join(", ")
            )
        })
    }
}

/// A report waiting for the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    /// Its place in the outbox (increasing).
    pub seq: u64,
    /// Its size in bytes.
    pub size: u64,
}

/// The outbox of one agent; shared between the threads that add reports and the task that
/// sends them. Every method does blocking file I/O: call it off async workers.
///
/// ```
/// use policy_engine::agent::{Outbox, OutboxLimits};
/// let dir = tempfile::tempdir().unwrap();
/// let limits = OutboxLimits { max_reports: 2, max_bytes: 1 << 20 };
/// let outbox = Outbox::open(dir.path(), limits).unwrap();
/// for n in 1..=3 {
///     outbox.push(format!(r#"{{"n":{n}}}"#).as_bytes()).unwrap();
/// }
/// // The oldest report made room for the third one.
/// let first = outbox.front().unwrap();
/// assert_eq!(outbox.read(first).unwrap().unwrap(), br#"{"n":2}"#);
/// assert_eq!(outbox.dropped().count, 1);
/// outbox.remove(first).unwrap();
/// // A restart finds what was not acknowledged.
/// let reopened = Outbox::open(dir.path(), limits).unwrap();
/// assert_eq!(reopened.len(), 1);
/// assert_eq!(reopened.dropped().count, 1);
/// ```
#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    limits: OutboxLimits,
    /// Held while a report is written, so reports enter the queue in the order of their
    /// numbers; never held while the queue is locked by a reader.
    writer: Mutex<()>,
    queue: Mutex<Queue>,
}

#[derive(Debug, Default)]
struct Queue {
    pending: VecDeque<Pending>,
    bytes: u64,
    next_seq: u64,
    dropped: Dropped,
}

impl Outbox {
    /// Opens (creating) the outbox in `dir`: reads the reports a previous run left, in order,
    /// and deletes temp files of writes a crash interrupted.
    pub fn open(dir: &Path, limits: OutboxLimits) -> Result<Self, OutboxError> {
        let error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| OutboxError { path, source }
        };
        fs::create_dir_all(dir).map_err(error(dir))?;
        let mut pending = Vec::new();
        for entry in fs::read_dir(dir).map_err(error(dir))? {
            let entry = entry.map_err(error(dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name.contains(".tmp-") {
                let _ = fs::remove_file(entry.path());
                continue;
            }
            let Some(seq) = name
                .strip_suffix(".json")
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let size = entry.metadata().map_err(error(&entry.path()))?.len();
            pending.push(Pending { seq, size });
        }
        pending.sort_by_key(|p| p.seq);
        let dropped_path = dir.join(DROPPED_FILE);
        let dropped = match fs::read(&dropped_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|err| {
                tracing::warn!(path = %dropped_path.display(), %err, "unreadable drop counter; starting from zero");
                Dropped::default()
            }),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Dropped::default(),
            Err(source) => {
                return Err(OutboxError {
                    path: dropped_path,
                    source,
                });
            }
        };
        let queue = Queue {
            bytes: pending.iter().map(|p| p.size).sum(),
            next_seq: pending.last().map_or(0, |p| p.seq + 1),
            pending: pending.into(),
            dropped,
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            limits,
            writer: Mutex::new(()),
            queue: Mutex::new(queue),
        })
    }

    /// Writes `body` durably and queues it; drops the oldest reports if the limits require it
    /// (a report larger than the byte limit on its own is dropped itself). Returns what it
    /// queued, or `None` if `body` itself was dropped.
    pub fn push(&self, body: &[u8]) -> Result<Option<Pending>, OutboxError> {
        let size = body.len() as u64;
        if size > self.limits.max_bytes || self.limits.max_reports == 0 {
            self.count_drops(1, DropCause::Full)?;
            return Ok(None);
        }
        let _writing = lock(&self.writer);
        let seq = lock(&self.queue).next_seq;
        let path = self.path_of(seq);
        write_atomically(&path, body, 0o600).map_err(|source| OutboxError {
            path: path.clone(),
            source,
        })?;
        let pending = Pending { seq, size };
        let evicted: Vec<Pending> = {
            let mut queue = lock(&self.queue);
            queue.next_seq = seq + 1;
            queue.pending.push_back(pending);
            queue.bytes += size;
            let mut evicted = Vec::new();
            while queue.pending.len() > self.limits.max_reports
                || queue.bytes > self.limits.max_bytes
            {
                let Some(oldest) = queue.pending.pop_front() else {
                    break;
                };
                queue.bytes -= oldest.size;
                evicted.push(oldest);
            }
            evicted
        };
        if !evicted.is_empty() {
            for old in &evicted {
                let _ = fs::remove_file(self.path_of(old.seq));
            }
            tracing::warn!(
                dropped = evicted.len(),
                "outbox full: dropped the oldest action reports"
            );
            self.count_drops(evicted.len() as u64, DropCause::Full)?;
        }
        Ok(Some(pending))
    }

    /// The oldest report waiting.
    pub fn front(&self) -> Option<Pending> {
        lock(&self.queue).pending.front().copied()
    }

    /// The body of `pending`; `None` if it was dropped meanwhile.
    pub fn read(&self, pending: Pending) -> Result<Option<Vec<u8>>, OutboxError> {
        let path = self.path_of(pending.seq);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(OutboxError { path, source }),
        }
    }

    /// Forgets `pending` (the server acknowledged it) and deletes its file. A crash before the
    /// deletion reaches the disk only means one more (idempotent) send after the restart.
    pub fn remove(&self, pending: Pending) -> Result<(), OutboxError> {
        {
            let mut queue = lock(&self.queue);
            let Some(index) = queue.pending.iter().position(|p| p.seq == pending.seq) else {
                return Ok(());
            };
            queue.pending.remove(index);
            queue.bytes -= pending.size;
        }
        let path = self.path_of(pending.seq);
        match fs::remove_file(&path) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => {
                Err(OutboxError { path, source: err })
            }
            _ => Ok(()),
        }
    }

    /// Reports waiting.
    pub fn len(&self) -> usize {
        lock(&self.queue).pending.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes waiting.
    pub fn bytes(&self) -> u64 {
        lock(&self.queue).bytes
    }

    /// Reports dropped so far.
    pub fn dropped(&self) -> Dropped {
        lock(&self.queue).dropped
    }

    /// The limits.
    pub fn limits(&self) -> OutboxLimits {
        self.limits
    }

    /// Counts `n` more drops for `cause` and persists the counter.
    pub fn count_drops(&self, n: u64, cause: DropCause) -> Result<(), OutboxError> {
        let dropped = {
            let mut queue = lock(&self.queue);
            queue.dropped.count += n;
            match cause {
                DropCause::Full => {}
                DropCause::Refused => queue.dropped.refused += n,
                DropCause::Unwritable => queue.dropped.unwritable += n,
            }
            queue.dropped.last = Some(Utc::now());
            queue.dropped
        };
        let path = self.dir.join(DROPPED_FILE);
        let bytes = serde_json::to_vec(&dropped).unwrap_or_default();
        write_atomically(&path, &bytes, 0o600).map_err(|source| OutboxError { path, source })
    }

    fn path_of(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.json"))
    }
}

/// Locks the queue or the writer: both hold plain data that a panic cannot leave half changed.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_reports: usize, max_bytes: u64) -> OutboxLimits {
        OutboxLimits {
            max_reports,
            max_bytes,
        }
    }

    #[test]
    fn reports_come_out_in_order_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), OutboxLimits::default()).unwrap();
        for n in 0..5 {
            outbox.push(format!("{{\"n\":{n}}}").as_bytes()).unwrap();
        }
        let first = outbox.front().unwrap();
        assert_eq!(outbox.read(first).unwrap().unwrap(), b"{\"n\":0}");
        outbox.remove(first).unwrap();
        drop(outbox);
        // A crash mid-write leaves a temp file: it is cleaned up, never taken for a report.
        std::fs::write(
            dir.path().join(".00000000000000000009.json.tmp-1"),
            b"{\"n\":",
        )
        .unwrap();
        let outbox = Outbox::open(dir.path(), OutboxLimits::default()).unwrap();
        let mut seen = Vec::new();
        while let Some(next) = outbox.front() {
            seen.push(String::from_utf8(outbox.read(next).unwrap().unwrap()).unwrap());
            outbox.remove(next).unwrap();
        }
        assert_eq!(seen, ["{\"n\":1}", "{\"n\":2}", "{\"n\":3}", "{\"n\":4}"]);
        // Numbers keep growing after a reopen, so order holds across restarts.
        outbox.push(b"{}").unwrap();
        assert_eq!(outbox.front().unwrap().seq, 5);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["00000000000000000005.json"]);
    }

    #[test]
    fn the_oldest_reports_make_room_and_drops_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), limits(100, 20)).unwrap();
        for body in ["aaaaaaaaaa", "bbbbbbbbbb", "cccccccccc"] {
            outbox.push(body.as_bytes()).unwrap();
        }
        assert_eq!((outbox.len(), outbox.bytes()), (2, 20));
        assert_eq!(
            outbox.read(outbox.front().unwrap()).unwrap().unwrap(),
            b"bbbbbbbbbb"
        );
        // Too big on its own: dropped, the others stay.
        assert_eq!(outbox.push(&[b'x'; 21]).unwrap(), None);
        assert_eq!(outbox.len(), 2);
        let dropped = outbox.dropped();
        assert_eq!(dropped.count, 2);
        let now = dropped.last.unwrap();
        let note = dropped.note(now, outbox.limits()).unwrap();
        assert_eq!(
            note,
            format!(
                "outbox: 2 action reports dropped, the last at {}: 2 because the outbox was full \
                 (it keeps at most 100 reports and 20 bytes while the server is unreachable); \
                 the audit misses them",
                now.to_rfc3339_opts(SecondsFormat::Secs, true)
            )
        );
        assert_eq!(
            dropped.note(now + chrono::Duration::days(1), outbox.limits()),
            None
        );
        assert_eq!(
            Outbox::open(dir.path(), limits(100, 20)).unwrap().dropped(),
            dropped
        );
    }

    #[test]
    fn the_note_names_each_cause_of_the_drops() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), limits(1, 1 << 20)).unwrap();
        outbox.count_drops(3, DropCause::Refused).unwrap();
        let refused = outbox.dropped();
        let at = refused
            .last
            .unwrap()
            .to_rfc3339_opts(SecondsFormat::Secs, true);
        assert_eq!(
            refused
                .note(refused.last.unwrap(), outbox.limits())
                .unwrap(),
            format!(
                "outbox: 3 action reports dropped, the last at {at}: 3 refused by the server for \
                 good; the audit misses them"
            )
        );
        outbox.push(b"1").unwrap();
        outbox.push(b"2").unwrap();
        outbox.count_drops(1, DropCause::Unwritable).unwrap();
        let all = outbox.dropped();
        assert_eq!((all.count, all.refused, all.unwritable), (5, 3, 1));
        let at = all.last.unwrap().to_rfc3339_opts(SecondsFormat::Secs, true);
        assert_eq!(
            all.note(all.last.unwrap(), outbox.limits()).unwrap(),
            format!(
                "outbox: 5 action reports dropped, the last at {at}: 1 because the outbox was \
                 full (it keeps at most 1 reports and 1048576 bytes while the server is \
                 unreachable), 3 refused by the server for good, 1 that could not be written; \
                 the audit misses them"
            )
        );
        // A counter written before the causes were kept reads as drops of a full outbox.
        let old: Dropped = serde_json::from_str(r#"{"count":2,"last":null}"#).unwrap();
        assert_eq!((old.count, old.refused, old.unwritable), (2, 0, 0));
    }

    #[test]
    fn a_report_removed_while_evicted_is_not_counted_twice() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), limits(1, 1 << 20)).unwrap();
        let first = outbox.push(b"1").unwrap().unwrap();
        outbox.push(b"2").unwrap();
        assert_eq!(outbox.read(first).unwrap(), None);
        outbox.remove(first).unwrap();
        assert_eq!((outbox.len(), outbox.bytes()), (1, 1));
    }
}
