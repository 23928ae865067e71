//! What a benchmark killed on its timeout leaves behind, and its removal.
//!
//! A benchmark runs in a process group of its own; on its timeout the whole
//! group is killed, so its peers and agents die with it, but its guards
//! never run. The `tests` harness names what it creates after the creating
//! process: network namespaces `hsmt-PID-N-srv`/`-cli` and the agents'
//! bpffs mounts `.../bpffs-PID-N`. Those of the killed benchmark's
//! processes ([`descendants`], taken before the kill) are removed here
//! (namespaces after killing what is left inside them; mounts lazily
//! unmounted). Nothing of another process is touched.

use std::path::Path;
use std::process::Command;

use crate::util;

/// The pid embedded in a harness name `hsmt-PID-...` (namespace) or
/// `bpffs-PID-N` (mount point's last component).
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name
        .strip_prefix("hsmt-")
        .or_else(|| name.strip_prefix("bpffs-"))?;
    rest.split('-').next()?.parse().ok()
}

/// `pid` and every process below it ([`crate::procs::tree`]).
pub fn descendants(pid: u32) -> Vec<u32> {
    crate::procs::tree(pid)
        .into_iter()
        .map(|(p, _)| p)
        .collect()
}

/// Network namespaces in `ip netns list` output (first word of each line).
fn parse_netns(list: &str) -> Vec<String> {
    list.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// bpffs mount points in `/proc/mounts` text.
fn parse_bpffs_mounts(mounts: &str) -> Vec<String> {
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, point, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "bpf").then(|| point.to_owned())
        })
        .collect()
}

/// Removes the namespaces and bpffs mounts named after one of `owners`
/// (the killed benchmark's processes); prints what it removed.
pub fn remove(owners: &[u32]) {
    let list = util::probe(Command::new("ip").args(["netns", "list"])).unwrap_or_default();
    for ns in parse_netns(&list) {
        let Some(pid) = owner_pid(&ns) else { continue };
        if !owners.contains(&pid) {
            continue;
        }
        let pids = util::probe(Command::new("ip").args(["netns", "pids", &ns])).unwrap_or_default();
        for p in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: kill(2) on a process inside a namespace a killed
            // benchmark created.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        if util::succeeds(Command::new("ip").args(["netns", "del", &ns])) {
            println!("removed the stale namespace {ns}");
        }
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    for point in parse_bpffs_mounts(&mounts) {
        let last = Path::new(&point)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(pid) = owner_pid(&last) else {
            continue;
        };
        if !owners.contains(&pid) {
            continue;
        }
        if util::succeeds(Command::new("umount").arg("-l").arg(&point)) {
            println!("unmounted the stale bpffs {point}");
            let _ = std::fs::remove_dir(&point);
            // The mount sits in the killed process's work directory
            // (`hsmt-NAME-XXXXXX`, its logs): remove that too.
            if let Some(dir) = Path::new(&point).parent() {
                let is_workdir = dir
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("hsmt-"));
                if is_workdir && std::fs::remove_dir_all(dir).is_ok() {
                    println!("removed {}", dir.display());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pids_of_harness_names() {
        assert_eq!(owner_pid("hsmt-4242-0-srv"), Some(4242));
        assert_eq!(owner_pid("bpffs-77-3"), Some(77));
        assert_eq!(owner_pid("hsmon"), None);
        assert_eq!(owner_pid("hsmt-x-0-srv"), None);
    }

    #[test]
    fn descendants_start_with_the_process_itself() {
        let me = std::process::id();
        assert_eq!(descendants(me).first(), Some(&me));
    }

    #[test]
    fn parses_netns_and_mounts() {
        assert_eq!(
            parse_netns("hsmt-1-0-srv (id: 3)\nother\n"),
            ["hsmt-1-0-srv", "other"]
        );
        let m =
            "bpf /sys/fs/bpf bpf rw 0 0\nbpf /tmp/x/bpffs-9-0 bpf rw 0 0\nproc /proc proc rw 0 0\n";
        assert_eq!(parse_bpffs_mounts(m), ["/sys/fs/bpf", "/tmp/x/bpffs-9-0"]);
    }
}
