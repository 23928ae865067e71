//! What the host must provide before loading: the capabilities, enough
//! locked memory and tracefs.

use std::ffi::CString;
use std::fs;
use std::path::Path;

use anyhow::{bail, Context as _, Result};

/// Where the tracepoint program expects tracefs.
pub const TRACEFS: &str = "/sys/kernel/tracing";

/// Lifts `RLIMIT_MEMLOCK` (needed by kernels before 5.11, harmless after).
pub fn raise_memlock_limit() {
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: `lim` is a valid rlimit for the duration of the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) } != 0 {
        tracing::debug!(
            "could not lift RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// A capability `hsmon run` needs: number, name, what for, and whether
/// CAP_SYS_ADMIN grants the same (the kernel's `bpf_capable()`,
/// `perfmon_capable()`).
struct Needed {
    bit: u32,
    name: &'static str,
    why: &'static str,
    sys_admin_will_do: bool,
}

const CAP_SYS_ADMIN: u32 = 21;

const NEEDED: &[Needed] = &[
    Needed {
        bit: 39,
        name: "CAP_BPF",
        why: "bpf(2): create the maps, load the programs",
        sys_admin_will_do: true,
    },
    Needed {
        bit: 38,
        name: "CAP_PERFMON",
        why: "attach the tracepoints and libssl uprobes (perf_event_open), read kernel memory",
        sys_admin_will_do: true,
    },
    Needed {
        bit: 12,
        name: "CAP_NET_ADMIN",
        why: "attach the TC programs, reset connections (SOCK_DESTROY)",
        sys_admin_will_do: false,
    },
];

/// Fails, naming each missing capability and what it is for, when this
/// process's effective set lacks one that `hsmon run` needs (a unit's
/// `AmbientCapabilities=`/`CapabilityBoundingSet=` without it). Unknown
/// (no `/proc/self/status`): let the kernel decide.
pub fn check_capabilities() -> Result<()> {
    let Ok(status) = fs::read_to_string("/proc/self/status") else {
        return Ok(());
    };
    let Some(eff) = cap_eff(&status) else {
        return Ok(());
    };
    let last_cap = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40);
    let missing = missing_capabilities(eff, last_cap);
    if missing.is_empty() {
        return Ok(());
    }
    bail!(
        "hsmon run lacks {}: grant {} (run as root, or list {} in the unit's \
         AmbientCapabilities= and CapabilityBoundingSet=)",
        missing.join("; "),
        if missing.len() == 1 { "it" } else { "them" },
        if missing.len() == 1 { "it" } else { "them" },
    )
}

/// `CapEff:` of a `/proc/PID/status` text.
fn cap_eff(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// "NAME (what for)" of each needed capability `eff` lacks. A capability
/// the kernel does not know (above `last_cap`: CAP_BPF and CAP_PERFMON
/// before 5.8) is covered by CAP_SYS_ADMIN only.
fn missing_capabilities(eff: u64, last_cap: u32) -> Vec<String> {
    let has = |bit: u32| bit < 64 && eff & (1u64 << bit) != 0;
    NEEDED
        .iter()
        .filter(|n| {
            let own = n.bit <= last_cap && has(n.bit);
            let admin = n.sys_admin_will_do && has(CAP_SYS_ADMIN);
            !own && !admin
        })
        .map(|n| {
            if n.bit > last_cap {
                format!("CAP_SYS_ADMIN ({}; this kernel has no {})", n.why, n.name)
            } else {
                format!("{} ({})", n.name, n.why)
            }
        })
        .collect()
}

/// Mounts tracefs at [`TRACEFS`] unless it is mounted there already (a fresh
/// `/sys`, as `ip netns exec` gives, lacks it).
pub fn ensure_tracefs() -> Result<()> {
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    if is_mounted(&mountinfo, TRACEFS, "tracefs") {
        return Ok(());
    }
    if !Path::new(TRACEFS).is_dir() {
        bail!("{TRACEFS} does not exist: this kernel has no tracefs mount point");
    }
    if let Err(err) = mount_fs("tracefs", TRACEFS, "tracefs") {
        let hint = if err.raw_os_error() == Some(libc::EPERM) {
            ": mounting needs CAP_SYS_ADMIN; mount it before the agent starts \
             (`mount -t tracefs tracefs /sys/kernel/tracing`, or systemd's sys-kernel-tracing.mount, \
             which the packaged unit wants)"
        } else {
            ""
        };
        return Err(err).with_context(|| {
            format!("mounting tracefs at {TRACEFS} (needed for tracepoints){hint}")
        });
    }
    tracing::info!("mounted tracefs at {TRACEFS}");
    Ok(())
}

/// Does `/proc/self/mountinfo` text list a `fstype` mount at `mount_point`?
fn is_mounted(mountinfo: &str, mount_point: &str, fstype: &str) -> bool {
    mountinfo.lines().any(|line| {
        let mut halves = line.splitn(2, " - ");
        let (Some(left), Some(right)) = (halves.next(), halves.next()) else {
            return false;
        };
        left.split(' ').nth(4) == Some(mount_point) && right.split(' ').next() == Some(fstype)
    })
}

/// `mount -t FSTYPE SOURCE TARGET` without options or flags (a path with a
/// NUL byte is an `InvalidInput` error).
pub fn mount_fs(source: &str, target: &str, fstype: &str) -> std::io::Result<()> {
    let (src, tgt, fs_type) = (
        CString::new(source)?,
        CString::new(target)?,
        CString::new(fstype)?,
    );
    // SAFETY: all pointers are valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            fs_type.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 27 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
24 22 0:12 / /sys/kernel/tracing rw,nosuid,nodev,noexec,relatime shared:9 - tracefs tracefs rw
30 22 0:7 / /sys/kernel/debug rw,relatime shared:10 - debugfs debugfs rw
";

    #[test]
    fn capabilities_missing() {
        let bpf = 1u64 << 39;
        let perfmon = 1u64 << 38;
        let net_admin = 1u64 << 12;
        let sys_admin = 1u64 << 21;
        assert!(missing_capabilities(bpf | perfmon | net_admin, 40).is_empty());
        assert!(missing_capabilities(u64::MAX, 40).is_empty());
        let m = missing_capabilities(perfmon | net_admin, 40);
        assert_eq!(m.len(), 1);
        assert!(m[0].starts_with("CAP_BPF ("), "{m:?}");
        // CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON, not CAP_NET_ADMIN.
        assert!(missing_capabilities(sys_admin | net_admin, 40).is_empty());
        let m = missing_capabilities(sys_admin, 40);
        assert!(m.len() == 1 && m[0].starts_with("CAP_NET_ADMIN"), "{m:?}");
        // A kernel without CAP_BPF/CAP_PERFMON (cap_last_cap 37).
        let m = missing_capabilities(bpf | perfmon | net_admin, 37);
        assert!(
            m.len() == 2 && m.iter().all(|s| s.starts_with("CAP_SYS_ADMIN")),
            "{m:?}"
        );
        assert_eq!(missing_capabilities(0, 40).len(), 3);
    }

    #[test]
    fn cap_eff_parsing() {
        let status = "Name:\thsmon\nCapPrm:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(cap_eff(status), Some(0x1ff_ffff_ffff));
        assert_eq!(cap_eff("Name: x\n"), None);
    }

    #[test]
    fn finds_tracefs() {
        assert!(is_mounted(SAMPLE, TRACEFS, "tracefs"));
        assert!(!is_mounted(SAMPLE, "/sys/kernel/debug/tracing", "tracefs"));
        assert!(!is_mounted(SAMPLE, TRACEFS, "debugfs"));
        assert!(!is_mounted("", TRACEFS, "tracefs"));
        assert!(!is_mounted("garbage without separator", TRACEFS, "tracefs"));
    }
}
