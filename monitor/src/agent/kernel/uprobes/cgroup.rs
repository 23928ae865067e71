//! cgroup v2 id to path: the id `bpf_get_current_cgroup_id` returns is the
//! inode number of the cgroup's directory in the cgroup2 filesystem.
//!
//! Lookup: the cache; else the process's own `/proc/PID/cgroup` line
//! `0::PATH`, checked against the id (the directory's inode) when the
//! cgroup2 root is reachable; else a walk of the whole cgroup2 tree (at
//! most [`MAX_DIRS`] directories, at most once per [`WALK_EVERY`]), which
//! fills the cache. The root is `/sys/fs/cgroup` or, when that is not a
//! cgroup2 mount, `/sys/fs/cgroup/unified` (the hybrid layout), or, when
//! the agent's `/sys` has neither (`ip netns exec` remounts `/sys`), init's
//! view of them through `/proc/1/root`. Without any, the `/proc/PID/cgroup`
//! path is taken unchecked.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `statfs` magic of cgroup2.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// Directories a walk visits at most.
const MAX_DIRS: usize = 100_000;
/// Depth a walk descends to at most.
const MAX_DEPTH: usize = 32;
/// Walks happen at most this often.
const WALK_EVERY: Duration = Duration::from_secs(5);
/// Cached names at most (the cache is cleared when it grows past this).
const MAX_CACHED: usize = 200_000;

/// Where the cgroup2 hierarchy can be read, if anywhere.
fn cgroup2_root() -> Option<PathBuf> {
    [
        "/sys/fs/cgroup",
        "/sys/fs/cgroup/unified",
        "/proc/1/root/sys/fs/cgroup",
        "/proc/1/root/sys/fs/cgroup/unified",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| is_cgroup2(p))
}

/// Whether `path` is the root of a cgroup2 mount.
fn is_cgroup2(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated path; `st` is written by statfs.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == CGROUP2_SUPER_MAGIC
}

/// The cgroup names found so far.
#[derive(Debug, Default)]
pub struct CgroupNames {
    root: Option<PathBuf>,
    cache: HashMap<u64, String>,
    last_walk: Option<Instant>,
    looked_for_root: bool,
}

impl CgroupNames {
    /// The path (relative to the cgroup2 root, starting with `/`) of cgroup
    /// `id`, which process `pid` was in.
    pub fn path(&mut self, id: u64, pid: u32) -> Option<String> {
        if id == 0 {
            return None;
        }
        if let Some(p) = self.cache.get(&id) {
            return Some(p.clone());
        }
        if !self.looked_for_root {
            self.looked_for_root = true;
            self.root = cgroup2_root();
            if self.root.is_none() {
                tracing::debug!(
                    "no cgroup2 hierarchy found: cgroup paths from /proc/PID/cgroup, unchecked"
                );
            }
        }
        if let Some(rel) = proc_cgroup(pid) {
            let checked = match &self.root {
                Some(root) => inode(&root.join(rel.trim_start_matches('/'))) == Some(id),
                None => true,
            };
            if checked {
                self.remember(id, rel.clone());
                return Some(rel);
            }
        }
        let root = self.root.clone()?;
        let due = self.last_walk.is_none_or(|t| t.elapsed() >= WALK_EVERY);
        if due {
            self.last_walk = Some(Instant::now());
            for (ino, rel) in walk(&root) {
                self.remember(ino, rel);
            }
        }
        self.cache.get(&id).cloned()
    }

    fn remember(&mut self, id: u64, path: String) {
        if self.cache.len() >= MAX_CACHED {
            self.cache.clear();
        }
        self.cache.insert(id, path);
    }
}

/// The cgroup2 path in `/proc/PID/cgroup` (its `0::PATH` line).
fn proc_cgroup(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    parse_proc_cgroup(&text)
}

/// The path of the `0::PATH` line.
fn parse_proc_cgroup(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_end().to_owned())
        .filter(|p| p.starts_with('/'))
}

fn inode(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// (inode, path relative to `root`) of every directory under `root`,
/// `root` itself as `/`; bounded by [`MAX_DIRS`] and [`MAX_DEPTH`].
fn walk(root: &Path) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut stack: Vec<(PathBuf, String, usize)> = vec![(root.to_owned(), "/".to_owned(), 0)];
    while let Some((dir, rel, depth)) = stack.pop() {
        if out.len() >= MAX_DIRS {
            tracing::debug!("cgroup walk stopped after {MAX_DIRS} directories");
            break;
        }
        let Some(ino) = inode(&dir) else {
            continue;
        };
        out.push((ino, rel.clone()));
        if depth >= MAX_DEPTH {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let name = e.file_name().to_string_lossy().into_owned();
                let child = if rel == "/" {
                    format!("/{name}")
                } else {
                    format!("{rel}/{name}")
                };
                stack.push((e.path(), child, depth + 1));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_cgroup_lines() {
        assert_eq!(
            parse_proc_cgroup("0::/system.slice/nginx.service\n"),
            Some("/system.slice/nginx.service".to_owned())
        );
        assert_eq!(parse_proc_cgroup("12:cpu:/x\n0::/\n"), Some("/".to_owned()));
        assert_eq!(parse_proc_cgroup("1:name=systemd:/x\n"), None);
    }

    /// Our own cgroup resolves to what `/proc/self/cgroup` says, when this
    /// host has a cgroup2 hierarchy.
    #[test]
    fn own_cgroup() {
        let Some(root) = cgroup2_root() else {
            return; // no cgroup2 here: nothing to resolve against
        };
        let Some(rel) = proc_cgroup(std::process::id()) else {
            return;
        };
        let Some(id) = inode(&root.join(rel.trim_start_matches('/'))) else {
            return;
        };
        let mut names = CgroupNames::default();
        assert_eq!(names.path(id, std::process::id()), Some(rel.clone()));
        // Found by the walk too (pid 0 has no /proc entry).
        let mut names = CgroupNames::default();
        assert_eq!(names.path(id, 0), Some(rel));
        assert_eq!(names.path(0, 0), None);
    }
}
