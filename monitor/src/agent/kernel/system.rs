//! What the host must provide before loading: enough locked memory and tracefs.

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
    let c = |s: &str| CString::new(s).context("a path with a NUL byte");
    let (src, target, fstype) = (c("tracefs")?, c(TRACEFS)?, c("tracefs")?);
    // SAFETY: all pointers are valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("mounting tracefs at {TRACEFS} (needed for tracepoints)"));
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

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 27 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
24 22 0:12 / /sys/kernel/tracing rw,nosuid,nodev,noexec,relatime shared:9 - tracefs tracefs rw
30 22 0:7 / /sys/kernel/debug rw,relatime shared:10 - debugfs debugfs rw
";

    #[test]
    fn finds_tracefs() {
        assert!(is_mounted(SAMPLE, TRACEFS, "tracefs"));
        assert!(!is_mounted(SAMPLE, "/sys/kernel/debug/tracing", "tracefs"));
        assert!(!is_mounted(SAMPLE, TRACEFS, "debugfs"));
        assert!(!is_mounted("", TRACEFS, "tracefs"));
        assert!(!is_mounted("garbage without separator", TRACEFS, "tracefs"));
    }
}
