//! Moving a file durably and hashing it on the way: a rename, or a copy, fsync and unlink
//! across filesystems; by path (restore), or through descriptors the quarantine's checks
//! pinned (quarantine).

use std::ffi::OsStr;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, renameat};
use nix::sys::stat::fstatat;
use nix::unistd::{UnlinkatFlags, unlinkat};
use sha2::{Digest, Sha256};

use super::durable::sync_dir;

/// `EXDEV`: rename across filesystems.
const EXDEV: i32 = 18;

/// Why a file was not moved.
#[derive(Debug)]
pub(crate) enum MoveError {
    /// An operation failed on `path`.
    Io { path: PathBuf, source: io::Error },
    /// What sat at the name was no longer the file that was checked; nothing was moved.
    Swapped,
}

/// A file pinned by the checks: its path (for messages), its open directory, its name there,
/// the file open, and what `fstat` said about it.
pub(crate) struct Pinned<'a> {
    pub(crate) path: &'a Path,
    pub(crate) dir: &'a File,
    pub(crate) name: &'a OsStr,
    pub(crate) file: File,
    pub(crate) meta: &'a Metadata,
}

/// Moves the pinned file to `id` in `to_dir`: a rename, or a copy from the open file and an
/// unlink across filesystems. Returns the content's SHA-256. Whatever sits at the name must
/// be the pinned inode: a file swapped in after the checks is put back and not moved.
pub(crate) fn move_pinned(
    pinned: Pinned<'_>,
    to_dir: &Path,
    id: &str,
) -> Result<String, MoveError> {
    let Pinned {
        path,
        dir,
        name,
        mut file,
        meta,
    } = pinned;
    let to = File::open(to_dir).map_err(|e| io_error(to_dir, e))?;
    let is_pinned = |at: &File, name: &OsStr| {
        fstatat(at, name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .is_ok_and(|st| (st.st_dev, st.st_ino) == (meta.dev(), meta.ino()))
    };
    match renameat(dir, name, &to, id) {
        Ok(()) => {
            if !is_pinned(&to, OsStr::new(id)) {
                renameat(&to, id, dir, name).map_err(|e| io_error(&to_dir.join(id), e.into()))?;
                return Err(MoveError::Swapped);
            }
            to.sync_all().map_err(|e| io_error(to_dir, e))?;
            dir.sync_all().map_err(|e| io_error(path, e))?;
            file.seek(SeekFrom::Start(0))
                .map_err(|e| io_error(&to_dir.join(id), e))?;
            let mut hasher = Sha256::new();
            io::copy(&mut file, &mut hasher).map_err(|e| io_error(&to_dir.join(id), e))?;
            Ok(hex(&hasher.finalize()))
        }
        Err(Errno::EXDEV) => {
            let stored = to_dir.join(id);
            let sha256 = copy_into(&mut file, path, &stored)?;
            // The unlink is by name: the name must still be the file that was copied.
            if !is_pinned(dir, name) {
                let _ = fs::remove_file(&stored);
                return Err(MoveError::Swapped);
            }
            unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)
                .map_err(|e| io_error(path, e.into()))?;
            dir.sync_all().map_err(|e| io_error(path, e))?;
            Ok(sha256)
        }
        Err(e) => Err(io_error(path, e.into())),
    }
}

/// Moves `from` to `to` durably and returns the content's SHA-256: a rename on the same
/// filesystem, else copy, fsync, rename into place and remove the source.
pub(crate) fn move_file(from: &Path, to: &Path) -> Result<String, MoveError> {
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

fn copy_then_remove(from: &Path, to: &Path) -> Result<String, MoveError> {
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
fn copy_into(source: &mut File, from: &Path, to: &Path) -> Result<String, MoveError> {
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

fn sync_parent(path: &Path) -> Result<(), MoveError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    sync_dir(dir).map_err(|e| io_error(dir, e))
}

/// The SHA-256 of the file at `path`, lowercase hex.
pub(crate) fn hash_file(path: &Path) -> Result<String, MoveError> {
    let mut file = File::open(path).map_err(|e| io_error(path, e))?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher).map_err(|e| io_error(path, e))?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn io_error(path: &Path, source: io::Error) -> MoveError {
    MoveError::Io {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins `dir/name`, then puts another file at that name (what a race after the checks
    /// would do), then moves the pinned file into `to`.
    fn move_after_a_swap(dir: &Path, to: &Path) -> Result<String, MoveError> {
        let path = dir.join("x");
        fs::write(&path, b"checked").unwrap();
        let dir_file = File::open(dir).unwrap();
        let file = File::open(&path).unwrap();
        let meta = file.metadata().unwrap();
        fs::write(dir.join("other"), b"swapped in").unwrap();
        fs::rename(dir.join("other"), &path).unwrap();
        let pinned = Pinned {
            path: &path,
            dir: &dir_file,
            name: OsStr::new("x"),
            file,
            meta: &meta,
        };
        move_pinned(pinned, to, "id")
    }

    #[test]
    fn a_file_swapped_in_after_the_checks_is_not_moved() {
        let dir = tempfile::tempdir().unwrap();
        let to = dir.path().join("to");
        fs::create_dir(&to).unwrap();
        let moved = move_after_a_swap(dir.path(), &to);
        assert!(matches!(moved, Err(MoveError::Swapped)), "{moved:?}");
        assert_eq!(fs::read(dir.path().join("x")).unwrap(), b"swapped in");
        assert_eq!(fs::read_dir(&to).unwrap().count(), 0);
    }

    #[test]
    fn a_file_swapped_in_is_not_unlinked_across_filesystems_either() {
        // /tmp and /dev/shm are different filesystems here: the copy path.
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        let to = tempfile::tempdir_in("/dev/shm").unwrap();
        let dev = |p: &Path| fs::metadata(p).unwrap().dev();
        assert_ne!(
            dev(dir.path()),
            dev(to.path()),
            "the test needs two filesystems"
        );
        let moved = move_after_a_swap(dir.path(), to.path());
        assert!(matches!(moved, Err(MoveError::Swapped)), "{moved:?}");
        assert_eq!(fs::read(dir.path().join("x")).unwrap(), b"swapped in");
        assert_eq!(fs::read_dir(to.path()).unwrap().count(), 0);
    }

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
