//! What `/proc` says about a process: its `stat` line, its executable and the files it maps.

use std::io;
use std::path::{Path, PathBuf};

/// `PF_KTHREAD` in the `flags` field of `/proc/PID/stat`.
const PF_KTHREAD: u64 = 0x0020_0000;

/// What `/proc/PID/stat` says about a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stat {
    /// The kernel's name for it (at most 15 bytes).
    pub(crate) comm: String,
    /// `R`, `S`, `Z`...
    pub(crate) state: char,
    /// Its parent's pid.
    pub(crate) ppid: u32,
    /// `PF_*` flags.
    pub(crate) flags: u64,
    /// Start time in clock ticks after boot: with the pid, it names one process for good.
    pub(crate) start_time: u64,
}

impl Stat {
    /// Exited (a zombie or being reaped).
    pub(crate) fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }

    /// A kernel thread: no executable, no memory map, and signals do not end it.
    pub(crate) fn is_kernel_thread(&self) -> bool {
        self.flags & PF_KTHREAD != 0
    }
}

/// Parses `/proc/PID/stat`; `None` if the process does not exist.
pub(crate) fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

pub(crate) fn parse_stat(text: &str) -> Option<Stat> {
    // `pid (comm) state ppid ...`: comm may hold spaces and parentheses, so split at the last `)`.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let mut fields = text.get(close + 1..)?.split_whitespace();
    // Field numbers as in proc(5): `state` is field 3.
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let flags = fields.nth(4)?.parse().ok()?;
    let start_time = fields.nth(12)?.parse().ok()?;
    Some(Stat {
        comm,
        state,
        ppid,
        flags,
        start_time,
    })
}

/// The executable `pid` runs, from `/proc/PID/exe`, without the ` (deleted)` the kernel
/// appends once the file was removed or replaced (an upgraded daemon is still that daemon).
pub(crate) fn exe(pid: u32) -> io::Result<PathBuf> {
    let link = std::fs::read_link(format!("/proc/{pid}/exe"))?;
    Ok(without_deleted(link))
}

fn without_deleted(path: PathBuf) -> PathBuf {
    match path.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(stripped) => PathBuf::from(stripped),
        None => path,
    }
}

/// The pids of every process now visible in `/proc` (threads are not listed).
pub(crate) fn pids() -> io::Result<Vec<u32>> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        if let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// A file as `/proc/PID/maps` names it: device numbers, inode and path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MappedFile {
    /// Major device number.
    pub(crate) major: u64,
    /// Minor device number.
    pub(crate) minor: u64,
    /// Inode number.
    pub(crate) inode: u64,
    /// Absolute path, ` (deleted)` removed.
    pub(crate) path: PathBuf,
}

/// Whether `pid` maps the file `file` (same device and inode, or the same path: overlay
/// filesystems report the inode of the layer below). `None` when the map cannot be read (the
/// process is gone, or is not ours to look at).
pub(crate) fn maps_file(pid: u32, file: &MappedFile) -> Option<bool> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    Some(text.lines().filter_map(parse_maps_line).any(|mapped| {
        (mapped.major, mapped.minor, mapped.inode) == (file.major, file.minor, file.inode)
            || mapped.path == file.path
    }))
}

/// One line of `/proc/PID/maps`: `address perms offset major:minor inode path`; `None` for
/// anonymous mappings and pseudo files (`[heap]`, `[stack]`...).
pub(crate) fn parse_maps_line(line: &str) -> Option<MappedFile> {
    let mut fields = line.splitn(6, ' ');
    let (_address, _perms, _offset) = (fields.next()?, fields.next()?, fields.next()?);
    let (major, minor) = fields.next()?.split_once(':')?;
    let inode = fields.next()?.parse().ok()?;
    let path = fields.next()?.trim_start();
    if inode == 0 || !path.starts_with('/') {
        return None;
    }
    Some(MappedFile {
        major: u64::from_str_radix(major, 16).ok()?,
        minor: u64::from_str_radix(minor, 16).ok()?,
        inode,
        path: without_deleted(PathBuf::from(path)),
    })
}

/// The last component of `path` as text (`""` when there is none).
pub(crate) fn file_name(path: &Path) -> &str {
    path.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_names() {
        let text = "4242 (my (evil) proc) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                comm: "my (evil) proc".into(),
                state: 'S',
                ppid: 1,
                flags: 4194560,
                start_time: 987654
            })
        );
        assert_eq!(parse_stat("4242 (x) S 1"), None);
    }

    #[test]
    fn kernel_threads_are_told_apart_by_their_flags() {
        let kthreadd = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 1 0 0";
        let stat = parse_stat(kthreadd).unwrap();
        assert!(stat.is_kernel_thread());
        let sleep = "9 (sleep) S 1 9 9 0 -1 4194304 0 0 0 0 0 0 0 0 20 0 1 0 77 0 0";
        assert!(!parse_stat(sleep).unwrap().is_kernel_thread());
    }

    #[test]
    fn maps_lines_name_device_inode_and_path() {
        let line = "7f1c2a000000-7f1c2a028000 r--p 00000000 fd:01 1311778                    /usr/lib/x86_64-linux-gnu/libc.so.6";
        assert_eq!(
            parse_maps_line(line),
            Some(MappedFile {
                major: 0xfd,
                minor: 1,
                inode: 1311778,
                path: "/usr/lib/x86_64-linux-gnu/libc.so.6".into()
            })
        );
        let deleted = "00400000-00452000 r-xp 00000000 08:02 173521      /tmp/x y (deleted)";
        assert_eq!(
            parse_maps_line(deleted).map(|m| m.path),
            Some(PathBuf::from("/tmp/x y"))
        );
        assert_eq!(
            parse_maps_line("7ffd5a000000-7ffd5a021000 rw-p 00000000 00:00 0    [stack]"),
            None
        );
        assert_eq!(parse_maps_line("7f00-7f01 rw-p 00000000 00:00 0 "), None);
    }

    #[test]
    fn deleted_executables_keep_their_path() {
        assert_eq!(
            without_deleted("/usr/sbin/sshd (deleted)".into()),
            PathBuf::from("/usr/sbin/sshd")
        );
        assert_eq!(
            without_deleted("/usr/sbin/sshd".into()),
            PathBuf::from("/usr/sbin/sshd")
        );
    }
}
