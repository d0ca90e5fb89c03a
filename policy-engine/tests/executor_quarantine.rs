//! `quarantine_file` and `restore` on real files, across filesystems too.
#![cfg(all(feature = "executor", target_os = "linux"))]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod executor_common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use executor_common::record;
use policy_engine::Action;
use policy_engine::executor::{
    Executor, HostConfig, HostExecutor, Outcome, Quarantine, QuarantineConfig, QuarantineError,
};

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(base: &str, tag: &str) -> Self {
        let path = PathBuf::from(format!("{base}/pe-exec-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn sha256_of(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn quarantine_and_restore(files: &Path, qdir: &Path) {
    let path = files.join("dropper.sh");
    let content = b"#!/bin/sh\necho pwned\n";
    fs::write(&path, content).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o4755)).unwrap();
    std::os::unix::fs::chown(&path, Some(1234), Some(5678)).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o4755)).unwrap();
    let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();

    let mut quarantine = Quarantine::new(QuarantineConfig {
        dir: qdir.to_owned(),
    });
    let origin = record(Action::QuarantineFile {
        path: path.display().to_string(),
    });
    let entry = quarantine.quarantine(&path, Some(&origin)).unwrap();
    assert!(!path.exists(), "the original is gone");
    assert_eq!(entry.original_path, path);
    assert_eq!(entry.sha256, sha256_of(content));
    assert_eq!(
        (entry.size, entry.mode, entry.uid, entry.gid),
        (content.len() as u64, 0o4755, 1234, 5678)
    );
    assert_eq!(entry.rule, Some(0));
    assert_eq!(entry.event_id.as_deref(), Some("evt-test"));
    let stored = qdir.join(&entry.id);
    assert_eq!(fs::read(&stored).unwrap(), content);
    assert_eq!(
        fs::metadata(&stored).unwrap().mode() & 0o7777,
        0o400,
        "not executable"
    );
    assert_eq!(
        fs::metadata(qdir).unwrap().mode() & 0o7777,
        0o700,
        "private directory"
    );
    assert_eq!(quarantine.list().unwrap(), vec![entry.clone()]);
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(qdir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["entries"][0]["originalPath"],
        path.display().to_string()
    );
    assert_eq!(manifest["entries"][0]["sha256"], sha256_of(content));

    let restored = quarantine.restore(&entry.id).unwrap();
    assert_eq!(restored, entry);
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(fs::read(&path).unwrap(), content);
    assert_eq!(
        meta.mode() & 0o7777,
        0o4755,
        "mode restored, setuid included"
    );
    assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
    assert_eq!(meta.modified().unwrap(), mtime);
    assert!(!stored.exists());
    assert!(quarantine.list().unwrap().is_empty());
    assert_eq!(
        quarantine.restore(&entry.id).unwrap_err().to_string(),
        format!("no quarantined file has the id `{}`", entry.id)
    );
}

#[test]
fn quarantine_and_restore_on_the_same_filesystem() {
    let dir = TempDir::new("/tmp", "q-same");
    fs::create_dir(dir.0.join("files")).unwrap();
    quarantine_and_restore(&dir.0.join("files"), &dir.0.join("quarantine"));
}

#[test]
fn quarantine_and_restore_across_filesystems() {
    // /tmp is on the root filesystem here and /dev/shm is a tmpfs: rename fails with EXDEV.
    let files = TempDir::new("/tmp", "q-cross");
    let shm = TempDir::new("/dev/shm", "q-cross");
    assert_ne!(
        fs::metadata(&files.0).unwrap().dev(),
        fs::metadata(&shm.0).unwrap().dev(),
        "the test needs two filesystems"
    );
    quarantine_and_restore(&files.0, &shm.0.join("quarantine"));
}

#[test]
fn restore_refuses_to_overwrite_or_to_restore_a_modified_copy() {
    let dir = TempDir::new("/tmp", "q-guard");
    let path = dir.0.join("evil");
    fs::write(&path, b"evil").unwrap();
    let qdir = dir.0.join("quarantine");
    let mut quarantine = Quarantine::new(QuarantineConfig { dir: qdir.clone() });
    let entry = quarantine.quarantine(&path, None).unwrap();
    fs::write(&path, b"new file in its place").unwrap();
    assert_eq!(
        quarantine.restore(&entry.id).unwrap_err().to_string(),
        format!("not restoring `{}`: `{}` exists", entry.id, path.display())
    );
    fs::remove_file(&path).unwrap();
    let stored = qdir.join(&entry.id);
    fs::set_permissions(&stored, fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(&stored, b"tampered").unwrap();
    assert_eq!(
        quarantine.restore(&entry.id).unwrap_err().to_string(),
        format!(
            "not restoring `{}`: its SHA-256 is {}, the manifest says {}",
            entry.id,
            sha256_of(b"tampered"),
            sha256_of(b"evil")
        )
    );
    assert_eq!(quarantine.list().unwrap().len(), 1, "the entry stays");
}

#[test]
fn refuses_directories_devices_symlinks_and_kernel_paths() {
    let dir = TempDir::new("/tmp", "q-refuse");
    let mut quarantine = Quarantine::new(QuarantineConfig {
        dir: dir.0.join("quarantine"),
    });
    let refusal = |q: &mut Quarantine, path: &Path| match q.quarantine(path, None) {
        Err(QuarantineError::Refused(reason)) => reason,
        other => panic!("expected a refusal for {path:?}, got {other:?}"),
    };
    let d = dir.0.display();
    fs::create_dir(dir.0.join("sub")).unwrap();
    assert_eq!(
        refusal(&mut quarantine, &dir.0.join("sub")),
        format!("`{d}/sub` is a directory")
    );
    fs::write(dir.0.join("target"), b"x").unwrap();
    std::os::unix::fs::symlink(dir.0.join("target"), dir.0.join("link")).unwrap();
    assert_eq!(
        refusal(&mut quarantine, &dir.0.join("link")),
        format!("`{d}/link` is a symlink to `{d}/target`: quarantine the target itself")
    );
    // A link to a protected file is refused as that file.
    std::os::unix::fs::symlink("/etc/hostname", dir.0.join("etc-link")).unwrap();
    assert_eq!(
        refusal(&mut quarantine, &dir.0.join("etc-link")),
        format!("protected path `/etc/hostname` (resolved from `{d}/etc-link`) is under `/etc`")
    );
    assert_eq!(
        refusal(&mut quarantine, Path::new("/dev/null")),
        "`/dev/null` is under /proc, /sys or /dev"
    );
    assert_eq!(
        refusal(&mut quarantine, Path::new("/proc/self/status")),
        "`/proc/self/status` is under /proc, /sys or /dev"
    );
    assert_eq!(
        refusal(&mut quarantine, Path::new("/sys/kernel/notes")),
        "`/sys/kernel/notes` is under /proc, /sys or /dev"
    );
    // A symlinked directory does not smuggle a kernel path past the check.
    std::os::unix::fs::symlink("/proc/self", dir.0.join("p")).unwrap();
    assert_eq!(
        refusal(&mut quarantine, &dir.0.join("p/status")),
        format!(
            "`{d}/p/status` is `/proc/{}/status`, under /proc, /sys or /dev",
            std::process::id()
        )
    );
    nix::unistd::mkfifo(
        &dir.0.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    assert_eq!(
        refusal(&mut quarantine, &dir.0.join("fifo")),
        format!("`{d}/fifo` is not a regular file (a device, FIFO or socket)")
    );
    assert_eq!(
        refusal(&mut quarantine, Path::new("relative/file")),
        "`relative/file` is not an absolute path"
    );
    assert_eq!(
        refusal(&mut quarantine, &dir.0.join("missing")),
        format!("`{d}/missing` does not exist")
    );
    assert!(dir.0.join("target").exists() && dir.0.join("sub").is_dir());
}

#[test]
fn the_host_executor_reports_quarantine_as_outcomes() {
    let state = TempDir::new("/tmp", "q-host");
    let config = HostConfig::new(state.0.join("state"), vec![])
        .with_nft_command(executor_common::fake_nft());
    let mut executor = HostExecutor::open(config).unwrap();
    let path = state.0.join("payload");
    fs::write(&path, b"abc").unwrap();
    let outcome = executor.execute(&record(Action::QuarantineFile {
        path: path.display().to_string(),
    }));
    let entry = executor.quarantine().list().unwrap().pop().unwrap();
    assert_eq!(
        outcome,
        Outcome::done(format!(
            "quarantined `{}` as `{}` (sha256 {})",
            path.display(),
            entry.id,
            sha256_of(b"abc")
        ))
    );
    assert_eq!(
        executor.execute(&record(Action::QuarantineFile {
            path: "/dev/null".into()
        })),
        Outcome::skipped("`/dev/null` is under /proc, /sys or /dev")
    );
}
