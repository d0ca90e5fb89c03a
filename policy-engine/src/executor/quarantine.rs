//! `quarantine_file`: move a file into a private directory with a manifest entry, and `restore`.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, renameat};
use nix::sys::stat::{Mode, fstatat, major, minor};
use nix::unistd::{UnlinkatFlags, unlinkat};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::durable::{sync_dir, write_atomically};
use super::firewall::create_private_dir;
use super::procfs::MappedFile;
use super::protect::Protection;
use crate::action::ActionRecord;
use crate::policy::PolicyVersion;

/// Paths never quarantined: kernel interfaces and devices.
const FORBIDDEN: [&str; 3] = ["/proc", "/sys", "/dev"];
/// `EXDEV`: rename across filesystems.
const EXDEV: i32 = 18;

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
        let sha256 = self.move_pinned(path, dir, name, file, &meta, &id)?;
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

    /// Moves `name` in `dir`, which `file` has open, to `id` in the quarantine: a rename, or a
    /// copy from `file` and an unlink across filesystems. Returns the content's SHA-256. If
    /// what sits at `name` is no longer `file` (swapped after the checks), nothing is moved.
    fn move_pinned(
        &self,
        path: &Path,
        dir: &File,
        name: &OsStr,
        mut file: File,
        meta: &fs::Metadata,
        id: &str,
    ) -> Result<String, QuarantineError> {
        let qdir_path = &self.config.dir;
        let qdir = File::open(qdir_path).map_err(|e| io_error(qdir_path, e))?;
        let swapped = || {
            QuarantineError::Refused(format!(
                "`{}` was replaced while it was being quarantined: not quarantined",
                path.display()
            ))
        };
        let same = |at: &File, name: &OsStr| {
            fstatat(at, name, AtFlags::AT_SYMLINK_NOFOLLOW)
                .is_ok_and(|st| (st.st_dev, st.st_ino) == (meta.dev(), meta.ino()))
        };
        match renameat(dir, name, &qdir, id) {
            Ok(()) => {
                if !same(&qdir, OsStr::new(id)) {
                    renameat(&qdir, id, dir, name)
                        .map_err(|e| io_error(&qdir_path.join(id), io::Error::from(e)))?;
                    return Err(swapped());
                }
                qdir.sync_all().map_err(|e| io_error(qdir_path, e))?;
                dir.sync_all().map_err(|e| io_error(path, e))?;
                file.seek(SeekFrom::Start(0))
                    .map_err(|e| io_error(path, e))?;
                let mut hasher = Sha256::new();
                io::copy(&mut file, &mut hasher).map_err(|e| io_error(path, e))?;
                Ok(hex(&hasher.finalize()))
            }
            Err(Errno::EXDEV) => {
                let stored = qdir_path.join(id);
                let sha256 = copy_into(&mut file, path, &stored)?;
                // The unlink is by name: the name must still be the file that was copied.
                if !same(dir, name) {
                    let _ = fs::remove_file(&stored);
                    return Err(swapped());
                }
                unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)
                    .map_err(|e| io_error(path, io::Error::from(e)))?;
                dir.sync_all().map_err(|e| io_error(path, e))?;
                Ok(sha256)
            }
            Err(e) => Err(io_error(path, io::Error::from(e))),
        }
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
        let actual = hash_file(&stored)?;
        if actual != entry.sha256 {
            return Err(QuarantineError::Tampered {
                id: id.to_owned(),
                expected: entry.sha256,
                actual,
            });
        }
        move_file(&stored, target)?;
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

fn under_forbidden(path: &Path) -> bool {
    FORBIDDEN.iter().any(|root| path.starts_with(root))
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

/// Moves `from` to `to` durably and returns the content's SHA-256: a rename on the same
/// filesystem, else copy, fsync, rename into place and remove the source.
pub(crate) fn move_file(from: &Path, to: &Path) -> Result<String, QuarantineError> {
    match fs::rename(from, to) {
        Ok(()) => {
            sync_parent(to)?;
            sync_parent(from)?;
            hash_file(to)
        }
        Err(e) if e.raw_os_error() == Some(EXDEV) => copy_then_remove(from, to),
        Err(e) => Err(io_error(from, e)),
    }
}

pub(crate) fn copy_then_remove(from: &Path, to: &Path) -> Result<String, QuarantineError> {
    let mut source = OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_NOFOLLOW.bits())
        .open(from)
        .map_err(|e| io_error(from, e))?;
    let copied = copy_into(&mut source, from, to)?;
    fs::remove_file(from).map_err(|e| io_error(from, e))?;
    sync_parent(from)?;
    Ok(copied)
}

/// Copies what `source` (opened from `from`) holds to `to` durably: a temporary file beside
/// it, fsync, rename into place. Returns the content's SHA-256.
fn copy_into(source: &mut File, from: &Path, to: &Path) -> Result<String, QuarantineError> {
    let dir = to.parent().unwrap_or(Path::new("/"));
    let name = to
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.partial"));
    let copied = (|| {
        let mut dest = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io_error(&tmp, e))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = source.read(&mut buf).map_err(|e| io_error(from, e))?;
            let Some(chunk) = buf.get(..n).filter(|c| !c.is_empty()) else {
                break;
            };
            hasher.update(chunk);
            dest.write_all(chunk).map_err(|e| io_error(&tmp, e))?;
        }
        dest.sync_all().map_err(|e| io_error(&tmp, e))?;
        fs::rename(&tmp, to).map_err(|e| io_error(to, e))?;
        sync_parent(to)?;
        Ok(hex(&hasher.finalize()))
    })();
    if copied.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    copied
}

fn sync_parent(path: &Path) -> Result<(), QuarantineError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    sync_dir(dir).map_err(|e| io_error(dir, e))
}

fn hash_file(path: &Path) -> Result<String, QuarantineError> {
    let mut file = File::open(path).map_err(|e| io_error(path, e))?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher).map_err(|e| io_error(path, e))?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_fallback_moves_content_and_hash() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("a");
        let to = dir.path().join("b");
        fs::write(&from, b"abc").unwrap();
        let hash = copy_then_remove(&from, &to).unwrap();
        assert_eq!(
            hash,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(!from.exists());
        assert_eq!(fs::read(&to).unwrap(), b"abc");
    }
}
