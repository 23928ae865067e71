//! Network namespaces of this host, for work that must happen inside one
//! (`SOCK_DESTROY` of a container's socket: sock_diag acts on the calling
//! thread's namespace).
//!
//! A namespace is named by its cookie (`SO_NETNS_COOKIE`, the same value
//! `bpf_get_netns_cookie` gives the socket hooks). The namespaces are found
//! through `/proc/*/ns/net` (every namespace a process is in) and
//! `/run/netns/*` (the ones `ip netns add` keeps without a process),
//! deduplicated by inode; each one's cookie is read by a thread that
//! `setns(CLONE_NEWNET)`s into it (a per-thread switch: the rest of the
//! agent stays where it is) and opens a socket there. The cache maps a
//! cookie to a path and inode, not to an open descriptor, so a namespace
//! that ends is not kept alive by the agent; a miss, or a path that now
//! names another namespace, rescans.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use anyhow::{Context as _, Result};

use crate::locks::lock;

/// `SO_NETNS_COOKIE` (`asm-generic/socket.h`).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// Where named namespaces (`ip netns add`) are kept.
const RUN_NETNS: &str = "/run/netns";

/// One network namespace found on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Found {
    /// A path that named it when it was found.
    path: PathBuf,
    /// The nsfs device and inode (the namespace's identity while it lives).
    dev: u64,
    ino: u64,
}

/// An open network namespace.
#[derive(Debug)]
pub struct Netns {
    /// Its cookie.
    pub cookie: u64,
    /// The path it was opened from (for logs).
    pub path: PathBuf,
    file: File,
}

impl Netns {
    /// The namespace's descriptor (for `setns`).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// The cookie of the calling thread's network namespace.
pub fn current_cookie() -> io::Result<u64> {
    // SAFETY: plain socket(2); checked before use.
    let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor owned by nothing else.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid for the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// The agent's own namespace's cookie (read once, by a thread that never
/// switched namespace).
pub fn own_cookie() -> Result<u64> {
    static OWN: OnceLock<u64> = OnceLock::new();
    if let Some(c) = OWN.get() {
        return Ok(*c);
    }
    let c = current_cookie().context("reading the agent's network namespace cookie")?;
    Ok(*OWN.get_or_init(|| c))
}

/// Runs `f` on a new thread moved into the namespace `ns` (the caller's
/// thread is not moved); returns what `f` returns.
pub fn run_in<T: Send>(ns: BorrowedFd<'_>, f: impl FnOnce() -> T + Send) -> Result<T> {
    let raw = ns.as_raw_fd();
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: setns(2) on a namespace descriptor the caller keeps
            // open for the whole scope; it moves only this thread.
            if unsafe { libc::setns(raw, libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error()).context("setns(CLONE_NEWNET)");
            }
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread in another network namespace panicked"))?
    })
}

/// Runs `f` in each namespace of `nss` in turn, on one new thread that
/// enters each (the caller's thread is not moved); one result per
/// namespace, in order (an error where the namespace could not be entered).
pub fn run_in_each<T: Send>(nss: &[Netns], f: impl Fn(&Netns) -> T + Sync) -> Vec<Result<T>> {
    std::thread::scope(|s| {
        s.spawn(|| {
            nss.iter()
                .map(|ns| {
                    // SAFETY: setns(2) on a namespace descriptor `nss`
                    // keeps open; it moves only this scoped thread.
                    if unsafe { libc::setns(ns.file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(io::Error::last_os_error()).with_context(|| {
                            format!("setns(CLONE_NEWNET) into {}", ns.path.display())
                        });
                    }
                    Ok(f(ns))
                })
                .collect()
        })
        .join()
        .unwrap_or_else(|_| vec![])
    })
}

/// Every network namespace that a process is in or `ip netns` keeps,
/// once each.
fn scan_paths() -> Vec<Found> {
    let mut out: Vec<Found> = Vec::new();
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(rd) = std::fs::read_dir(RUN_NETNS) {
        candidates.extend(rd.flatten().map(|e| e.path()));
    }
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let name = e.file_name();
            if name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                candidates.push(e.path().join("ns/net"));
            }
        }
    }
    for path in candidates {
        // A process that exited meanwhile, or a file that is not a
        // namespace (a stale /run/netns entry), is skipped.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let (dev, ino) = (meta.dev(), meta.ino());
        if out.iter().any(|f| f.dev == dev && f.ino == ino) {
            continue;
        }
        out.push(Found { path, dev, ino });
    }
    out
}

/// The namespaces of `found` with their cookies, read by one thread that
/// visits each in turn. A namespace that cannot be opened or entered (it
/// ended meanwhile) is left out.
fn read_cookies(found: Vec<Found>) -> Vec<(u64, Found)> {
    let files: Vec<(Found, File)> = found
        .into_iter()
        .filter_map(|f| File::open(&f.path).ok().map(|file| (f, file)))
        .collect();
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut out = Vec::new();
            for (f, file) in &files {
                // SAFETY: setns(2) on an open namespace descriptor; moves
                // only this scoped thread.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    tracing::debug!(path = %f.path.display(), "setns: {}", io::Error::last_os_error());
                    continue;
                }
                match current_cookie() {
                    Ok(c) => out.push((c, f.clone())),
                    Err(e) => tracing::debug!(path = %f.path.display(), "SO_NETNS_COOKIE: {e}"),
                }
            }
            out
        })
        .join()
        .unwrap_or_default()
    })
}

/// cookie → where that namespace was found.
fn cache() -> &'static Mutex<HashMap<u64, Found>> {
    static CACHE: OnceLock<Mutex<HashMap<u64, Found>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Opens `f` if its path still names the same namespace.
fn open_checked(cookie: u64, f: &Found) -> Option<Netns> {
    let file = File::open(&f.path).ok()?;
    let meta = file.metadata().ok()?;
    (meta.dev() == f.dev && meta.ino() == f.ino).then(|| Netns {
        cookie,
        path: f.path.clone(),
        file,
    })
}

/// Rescans the host and replaces the cache; returns every namespace found.
fn rescan() -> Vec<(u64, Found)> {
    let all = read_cookies(scan_paths());
    let mut c = lock(cache());
    c.clear();
    for (cookie, f) in &all {
        c.insert(*cookie, f.clone());
    }
    tracing::debug!(namespaces = all.len(), "network namespaces scanned");
    all
}

/// The network namespace whose cookie is `cookie`, opened; `None` when no
/// process is in it and `ip netns` does not keep it (it may still exist,
/// held only by sockets).
pub fn find(cookie: u64) -> Option<Netns> {
    let cached = lock(cache()).get(&cookie).cloned();
    if let Some(ns) = cached.and_then(|f| open_checked(cookie, &f)) {
        return Some(ns);
    }
    rescan()
        .into_iter()
        .find(|(c, _)| *c == cookie)
        .and_then(|(c, f)| open_checked(c, &f))
}

/// Every network namespace of the host except the agent's own, opened.
pub fn others() -> Result<Vec<Netns>> {
    let own = own_cookie()?;
    Ok(rescan()
        .into_iter()
        .filter(|(c, _)| *c != own)
        .filter_map(|(c, f)| open_checked(c, &f))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_namespace_is_found_with_its_cookie() {
        let own = own_cookie().expect("SO_NETNS_COOKIE works here");
        assert_ne!(own, 0);
        assert_eq!(current_cookie().expect("cookie"), own);
        // Reading /proc/self/ns/net needs no privilege for our own process.
        let found = scan_paths();
        let me = std::fs::metadata("/proc/self/ns/net").expect("own ns");
        assert!(found.iter().any(|f| f.ino == me.ino() && f.dev == me.dev()));
    }

    /// Needs root: a namespace made by `unshare` is found by its cookie,
    /// and a thread moved into it reads that cookie; the caller stays.
    #[test]
    #[ignore = "needs root (CAP_SYS_ADMIN for setns)"]
    fn a_new_namespace_is_found_and_entered() {
        let own = own_cookie().expect("own");
        let mut child = std::process::Command::new("unshare")
            .args(["-n", "sleep", "30"])
            .spawn()
            .expect("unshare runs");
        std::thread::sleep(std::time::Duration::from_millis(300));
        let path = PathBuf::from(format!("/proc/{}/ns/net", child.id()));
        let file = File::open(&path).expect("open the child's ns");
        let inside = run_in(file.as_fd(), current_cookie)
            .expect("setns")
            .expect("cookie");
        assert_ne!(inside, own);
        assert_eq!(current_cookie().expect("cookie"), own, "caller not moved");
        let ns = find(inside).expect("found by cookie");
        assert_eq!(ns.cookie, inside);
        let all = others().expect("others");
        assert!(all.iter().any(|n| n.cookie == inside));
        // One thread visiting each namespace reads each one's own cookie.
        let seen = run_in_each(&all, |_| current_cookie().expect("cookie"));
        let want: Vec<u64> = all.iter().map(|n| n.cookie).collect();
        let got: Vec<u64> = seen.into_iter().map(|r| r.expect("entered")).collect();
        assert_eq!(got, want);
        let _ = child.kill();
        let _ = child.wait();
    }
}
