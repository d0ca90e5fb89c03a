//! `quarantine_file`: move a file into a private directory with a manifest entry, and `restore`.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, major, minor};
use serde::{Deserialize, Serialize};

use super::durable::write_atomically;
use super::firewall::create_private_dir;
use super::procfs::MappedFile;
use super::protect::Protection;
use super::relocate::{MoveError, Pinned, hash_file, move_file, move_pinned};
use super::safety::FLOOR_PREFIXES;
use crate::action::ActionRecord;
use crate::policy::PolicyVersion;

/// Where quarantined files go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantineConfig {
    /// The quarantine directory, made 0700; it holds the files (mode 0400, named by id) and
    /// `manifest.json`.
    pub dir: PathBuf,
}

/// What the manifest records about one quarantined file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestEntry {
    /// Name of the file in the quarantine directory; what `restore` takes.
    pub id: String,
    /// Where it was, symlinks in its directories resolved.
    pub original_path: PathBuf,
    /// SHA-256 of its content, lowercase hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits (`0o7777` part of `st_mode`).
    pub mode: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Its modification time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified: Option<DateTime<Utc>>,
    /// When it was quarantined.
    pub quarantined_at: DateTime<Utc>,
    /// Index of the rule that asked for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<usize>,
    /// Version of that rule's policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<PolicyVersion>,
    /// The triggering event's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

/// Why a file was not quarantined or restored.
#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    /// The file must not be quarantined (a directory, a device, a symlink, under `/proc`, a
    /// protected path...).
    #[error("{0}")]
    Refused(String),
    /// A file operation failed.
    #[error("`{path}`: {source}")]
    Io {
        /// The path it failed on.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The manifest is not valid JSON.
    #[error("manifest `{path}` is damaged: {message}")]
    Manifest {
        /// Its path.
        path: PathBuf,
        /// The JSON error.
        message: String,
    },
    /// No entry with this id.
    #[error("no quarantined file has the id `{0}`")]
    UnknownId(String),
    /// Something is at the original path again.
    #[error("not restoring `{id}`: `{path}` exists")]
    Exists {
        /// The entry's id.
        id: String,
        /// Its original path.
        path: PathBuf,
    },
    /// The quarantined copy no longer has the recorded hash.
    #[error("not restoring `{id}`: its SHA-256 is {actual}, the manifest says {expected}")]
    Tampered {
        /// The entry's id.
        id: String,
        /// The manifest's hash.
        expected: String,
        /// The file's hash now.
        actual: String,
    },
}

/// The quarantine directory and its manifest.
#[derive(Debug, Clone)]
pub struct Quarantine {
    config: QuarantineConfig,
    protection: Protection,
}

/// A file that passed the path checks: its directory (open, and checked to be the resolved
/// one), its name in it, and its resolved path.
struct Target {
    dir: File,
    name: OsString,
    real: PathBuf,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Manifest {
    entries: Vec<ManifestEntry>,
}

impl Quarantine {
    /// A quarantine in `config.dir` (created on first use) with the default protections
    /// ([`Protection::default`]).
    pub fn new(config: QuarantineConfig) -> Self {
        Self {
            config,
            protection: Protection::default(),
        }
    }

    /// The same quarantine, refusing what `protection` protects instead.
    pub fn with_protection(mut self, protection: Protection) -> Self {
        self.protection = protection;
        self
    }

    /// Moves `path` into the quarantine; `origin` names the rule and event in the manifest.
    ///
    /// Refusals are [`QuarantineError::Refused`]: besides directories, symlinks and special
    /// files, whatever the [`Protection`] protects, decided on the path with its symlinks
    /// resolved, a file with other hard links, and a file a protected process has mapped. The
    /// file is then moved through descriptors (its directory pinned and checked, the file
    /// opened with `O_NOFOLLOW`), so nothing swapped in after the checks is moved.
    pub fn quarantine(
        &mut self,
        path: &Path,
        origin: Option<&ActionRecord>,
    ) -> Result<ManifestEntry, QuarantineError> {
        let target = self.check(path)?;
        let Target { dir, name, real } = &target;
        let (file, meta) = self.open_checked(path, &target)?;

        create_private_dir(&self.config.dir).map_err(|e| io_error(&self.config.dir, e))?;
        let mut manifest = self.load()?;
        let now = Utc::now();
        let id = unique_id(&self.config.dir, now);
        let stored = self.config.dir.join(&id);
        let pinned = Pinned {
            path: real,
            dir,
            name,
            file,
            meta: &meta,
        };
        let sha256 = move_pinned(pinned, &self.config.dir, &id).map_err(|e| moved(path, e))?;
        fs::set_permissions(&stored, fs::Permissions::from_mode(0o400))
            .map_err(|e| io_error(&stored, e))?;
        let entry = ManifestEntry {
            id,
            original_path: real.clone(),
            sha256,
            size: meta.len(),
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            modified: meta.modified().ok().map(DateTime::<Utc>::from),
            quarantined_at: now,
            rule: origin.map(|r| r.rule),
            policy_version: origin.map(|r| r.policy_version),
            event_id: origin.and_then(|r| r.event_id.clone()),
        };
        manifest.entries.push(entry.clone());
        if let Err(e) = self.save(&manifest) {
            // Without a manifest entry nobody could restore it: put it back.
            let _ = move_file(&stored, real);
            let _ = fs::set_permissions(real, fs::Permissions::from_mode(entry.mode));
            return Err(e);
        }
        Ok(entry)
    }

    /// The checks on paths: absolute, not a kernel interface, not protected (as given, with
    /// its directories resolved, and with every symlink resolved), not in the quarantine, a
    /// regular file. Returns its directory, opened and checked to be the resolved one.
    fn check(&self, path: &Path) -> Result<Target, QuarantineError> {
        let refuse = |why: &str| QuarantineError::Refused(format!("`{}` {why}", path.display()));
        if !path.is_absolute() {
            return Err(refuse("is not an absolute path"));
        }
        if under_forbidden(path) {
            return Err(refuse("is under /proc, /sys or /dev"));
        }
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(refuse("is not a file"));
        };
        let parent = match fs::canonicalize(parent) {
            Ok(parent) => parent,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(refuse("does not exist"));
            }
            Err(source) => return Err(io_error(parent, source)),
        };
        let real = parent.join(name);
        if under_forbidden(&real) {
            return Err(QuarantineError::Refused(format!(
                "`{}` is `{}`, under /proc, /sys or /dev",
                path.display(),
                real.display()
            )));
        }
        if let Ok(dir) = fs::canonicalize(&self.config.dir) {
            if real.starts_with(dir) {
                return Err(refuse("is already in the quarantine directory"));
            }
        }
        // What would be moved (`real`) and what the name leads to (`resolved`): a link in /tmp
        // to /usr/bin/sudo is refused as /usr/bin/sudo.
        let resolved = fs::canonicalize(path).ok();
        for candidate in std::iter::once(&real).chain(resolved.as_ref()) {
            if let Some(reason) = self.protection.path_refusal(path, candidate) {
                return Err(QuarantineError::Refused(reason));
            }
        }
        let meta = match fs::symlink_metadata(&real) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(refuse("does not exist"));
            }
            Err(source) => return Err(io_error(&real, source)),
        };
        let kind = meta.file_type();
        if kind.is_symlink() {
            let target = fs::read_link(&real).unwrap_or_default();
            return Err(QuarantineError::Refused(format!(
                "`{}` is a symlink to `{}`: quarantine the target itself",
                path.display(),
                target.display()
            )));
        }
        if kind.is_dir() {
            return Err(refuse("is a directory"));
        }
        if !kind.is_file() {
            return Err(refuse("is not a regular file (a device, FIFO or socket)"));
        }
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags((OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW).bits())
            .open(&parent)
            .map_err(|e| io_error(&parent, e))?;
        // A directory on the way swapped for a symlink since `canonicalize` shows here.
        let opened = fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd()))
            .map_err(|e| io_error(&parent, e))?;
        if opened != parent {
            return Err(refuse("changed while it was checked: not quarantined"));
        }
        Ok(Target {
            dir,
            name: name.to_owned(),
            real,
        })
    }

    /// Opens the file in its pinned directory without following a link, and checks what is
    /// open: a regular file, one name only, not mapped by a protected process.
    fn open_checked(
        &self,
        path: &Path,
        target: &Target,
    ) -> Result<(File, fs::Metadata), QuarantineError> {
        let refuse = |why: &str| QuarantineError::Refused(format!("`{}` {why}", path.display()));
        let flags = OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC;
        let file = match openat(&target.dir, target.name.as_os_str(), flags, Mode::empty()) {
            Ok(fd) => File::from(fd),
            Err(Errno::ELOOP) => return Err(refuse("changed into a symlink: not quarantined")),
            Err(Errno::ENOENT) => return Err(refuse("does not exist")),
            Err(e) => return Err(io_error(&target.real, io::Error::from(e))),
        };
        let meta = file.metadata().map_err(|e| io_error(&target.real, e))?;
        if !meta.is_file() {
            return Err(refuse("is not a regular file (a device, FIFO or socket)"));
        }
        if meta.nlink() > 1 {
            return Err(refuse(&format!(
                "has {} hard links: quarantining one name would leave the others",
                meta.nlink()
            )));
        }
        let mapped = MappedFile {
            major: major(meta.dev()),
            minor: minor(meta.dev()),
            inode: meta.ino(),
            path: target.real.clone(),
        };
        if let Some(reason) = self.protection.mapped_refusal(&mapped) {
            return Err(QuarantineError::Refused(reason));
        }
        Ok((file, meta))
    }

    /// Puts the file with `id` back where it was, with its mode, owner and modification time.
    pub fn restore(&mut self, id: &str) -> Result<ManifestEntry, QuarantineError> {
        let mut manifest = self.load()?;
        let index = manifest
            .entries
            .iter()
            .position(|e| e.id == id)
            .ok_or_else(|| QuarantineError::UnknownId(id.to_owned()))?;
        let entry = manifest.entries.remove(index);
        let target = &entry.original_path;
        if fs::symlink_metadata(target).is_ok() {
            return Err(QuarantineError::Exists {
                id: id.to_owned(),
                path: target.clone(),
            });
        }
        let stored = self.config.dir.join(&entry.id);
        let actual = hash_file(&stored).map_err(|e| moved(&stored, e))?;
        if actual != entry.sha256 {
            return Err(QuarantineError::Tampered {
                id: id.to_owned(),
                expected: entry.sha256,
                actual,
            });
        }
        move_file(&stored, target).map_err(|e| moved(target, e))?;
        let put_back = (|| {
            if let Some(modified) = entry.modified {
                let file = OpenOptions::new().write(true).open(target)?;
                file.set_modified(SystemTime::from(modified))?;
            }
            // chown first: it clears setuid and setgid bits, which the mode then restores.
            std::os::unix::fs::chown(target, Some(entry.uid), Some(entry.gid))?;
            fs::set_permissions(target, fs::Permissions::from_mode(entry.mode))
        })();
        put_back.map_err(|e| io_error(target, e))?;
        self.save(&manifest)?;
        Ok(entry)
    }

    /// Every quarantined file, oldest first.
    pub fn list(&self) -> Result<Vec<ManifestEntry>, QuarantineError> {
        Ok(self.load()?.entries)
    }

    /// The manifest's path.
    pub fn manifest_path(&self) -> PathBuf {
        self.config.dir.join("manifest.json")
    }

    fn load(&self) -> Result<Manifest, QuarantineError> {
        let path = self.manifest_path();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| QuarantineError::Manifest {
                path,
                message: e.to_string(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Manifest::default()),
            Err(source) => Err(QuarantineError::Io { path, source }),
        }
    }

    fn save(&self, manifest: &Manifest) -> Result<(), QuarantineError> {
        let path = self.manifest_path();
        let bytes = serde_json::to_vec_pretty(manifest).map_err(|e| QuarantineError::Manifest {
            path: path.clone(),
            message: e.to_string(),
        })?;
        write_atomically(&path, &bytes, 0o600)
            .map_err(|source| QuarantineError::Io { path, source })
    }
}

fn io_error(path: &Path, source: io::Error) -> QuarantineError {
    QuarantineError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A failed move as the quarantine reports it.
fn moved(path: &Path, error: MoveError) -> QuarantineError {
    match error {
        MoveError::Io { path, source } => QuarantineError::Io { path, source },
        MoveError::Swapped => QuarantineError::Refused(format!(
            "`{}` was replaced while it was being quarantined: not quarantined",
            path.display()
        )),
    }
}

fn under_forbidden(path: &Path) -> bool {
    FLOOR_PREFIXES.iter().any(|root| path.starts_with(root))
}

fn unique_id(dir: &Path, now: DateTime<Utc>) -> String {
    let base = now.format("%Y%m%dT%H%M%S%.9fZ").to_string();
    let mut id = base.clone();
    let mut n = 1;
    while fs::symlink_metadata(dir.join(&id)).is_ok() {
        n += 1;
        id = format!("{base}-{n}");
    }
    id
}
