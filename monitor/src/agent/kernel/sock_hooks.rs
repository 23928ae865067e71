//! The socket hooks (`hsmon run --hooks socket`): the `cgroup_skb` ingress
//! and egress programs and the `sock_ops` program, attached once at the
//! cgroup v2 root (every local socket of every network namespace; see
//! `monitor-ebpf/src/sock.rs`).
//!
//! Their links are not pinned in this version: they live as long as the
//! agent (a stopped or killed agent leaves no socket hook behind; the TC
//! programs, which then only drop banned sources, stay pinned as usual).

use std::ffi::CString;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use aya::programs::cgroup_skb::CgroupSkbLink;
use aya::programs::links::CgroupAttachMode;
use aya::programs::sock_ops::SockOpsLink;
use aya::programs::{CgroupSkb, CgroupSkbAttachType, SockOps};
use aya::Ebpf;

use crate::agent::kernel::loader::program;
use crate::api::status::Hook;

/// Name of the `cgroup_skb` ingress program.
pub const PROG_SOCK_INGRESS: &str = "hsmon_sock_ingress";
/// Name of the `cgroup_skb` egress program.
pub const PROG_SOCK_EGRESS: &str = "hsmon_sock_egress";
/// Name of the `sock_ops` program.
pub const PROG_SOCK_OPS: &str = "hsmon_sock_ops";

/// `CGROUP2_SUPER_MAGIC` (`include/uapi/linux/magic.h`).
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Where the cgroup v2 hierarchy is looked for, in order: hybrid hosts
/// mount it at `unified`, pure cgroup v2 hosts at `/sys/fs/cgroup`.
const CGROUP2_CANDIDATES: [&str; 2] = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"];

/// `SYSFS_MAGIC`: `/sys/fs/cgroup` is sysfs's own empty mount point when
/// nothing is mounted there (e.g. under `ip netns exec`, which remounts
/// `/sys` in a private mount namespace).
const SYSFS_MAGIC: i64 = 0x6265_6572;

/// The file system magic of `path` (`statfs`), if it can be read.
fn fs_magic(path: &Path) -> Option<i64> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: a zeroed statfs buffer and a NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)]
    Some(st.f_type as i64)
}

/// The cgroup v2 root to attach to (see [`CGROUP2_CANDIDATES`]). When this
/// mount namespace has none and `/sys/fs/cgroup` is sysfs's bare mount
/// point (a private `/sys`, as `ip netns exec` makes), cgroup2 is mounted
/// there, as the agent mounts tracefs where it is missing: it is the same
/// hierarchy the host uses (the agent's cgroup namespace's root).
pub fn cgroup2_root() -> Result<PathBuf> {
    for c in CGROUP2_CANDIDATES {
        let p = Path::new(c);
        if fs_magic(p) == Some(CGROUP2_SUPER_MAGIC) {
            return Ok(p.to_path_buf());
        }
    }
    let bare = Path::new("/sys/fs/cgroup");
    if fs_magic(bare) == Some(SYSFS_MAGIC) {
        super::system::mount_fs("cgroup2", "/sys/fs/cgroup", "cgroup2")
            .context("mounting cgroup2 at /sys/fs/cgroup (needed by --hooks socket)")?;
        tracing::info!("mounted cgroup2 at /sys/fs/cgroup (this mount namespace had none)");
        return Ok(bare.to_path_buf());
    }
    anyhow::bail!(
        "--hooks socket needs a mounted cgroup v2 hierarchy; none at {} \
         (mount one: `mount -t cgroup2 none /sys/fs/cgroup/unified`, or use --hooks tc)",
        CGROUP2_CANDIDATES.join(", ")
    )
}

/// The attached socket hooks; dropping detaches them.
pub struct SockHooks {
    // Held for what dropping them does: detach.
    _ingress: CgroupSkbLink,
    _egress: CgroupSkbLink,
    _ops: SockOpsLink,
    hooks: Vec<Hook>,
}

impl SockHooks {
    /// Loads the three programs and attaches them at the cgroup v2 root.
    pub fn attach(ebpf: &mut Ebpf) -> Result<Self> {
        let root = cgroup2_root()?;
        let cg = File::open(&root).with_context(|| format!("opening {}", root.display()))?;
        let where_ = format!("cgroup:{}", root.display());
        let mut hooks = Vec::new();
        let mut skb = |name: &str, kind: CgroupSkbAttachType, dir: &str| -> Result<CgroupSkbLink> {
            let p: &mut CgroupSkb = program(ebpf, name)?
                .try_into()
                .with_context(|| format!("{name} is not a cgroup_skb program"))?;
            p.load()
                .with_context(|| format!("loading program {name} into the kernel"))?;
            let id = p
                .attach(&cg, kind, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {name} to {}", root.display()))?;
            let link = p
                .take_link(id)
                .with_context(|| format!("taking the link of {name}"))?;
            hooks.push(Hook {
                iface: where_.clone(),
                program: name.to_owned(),
                direction: dir.to_owned(),
                mode: "cgroup".to_owned(),
            });
            tracing::info!(cgroup = %root.display(), direction = dir, "attached {name}");
            Ok(link)
        };
        let ingress = skb(PROG_SOCK_INGRESS, CgroupSkbAttachType::Ingress, "ingress")?;
        let egress = skb(PROG_SOCK_EGRESS, CgroupSkbAttachType::Egress, "egress")?;
        let p: &mut SockOps = program(ebpf, PROG_SOCK_OPS)?
            .try_into()
            .with_context(|| format!("{PROG_SOCK_OPS} is not a sock_ops program"))?;
        p.load()
            .with_context(|| format!("loading program {PROG_SOCK_OPS} into the kernel"))?;
        let id = p
            .attach(&cg, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {PROG_SOCK_OPS} to {}", root.display()))?;
        let ops = p
            .take_link(id)
            .with_context(|| format!("taking the link of {PROG_SOCK_OPS}"))?;
        hooks.push(Hook {
            iface: where_,
            program: PROG_SOCK_OPS.to_owned(),
            direction: "sock_ops".to_owned(),
            mode: "cgroup".to_owned(),
        });
        tracing::info!(cgroup = %root.display(), "attached {PROG_SOCK_OPS}");
        Ok(SockHooks {
            _ingress: ingress,
            _egress: egress,
            _ops: ops,
            hooks,
        })
    }

    /// The socket hooks as `hsmon status` lists them.
    pub fn hooks(&self) -> &[Hook] {
        &self.hooks
    }
}

impl Drop for SockHooks {
    fn drop(&mut self) {
        tracing::info!("detaching the socket hooks (cgroup_skb, sock_ops)");
    }
}
