//! The socket hooks (`hsmon run --hooks socket`): the `cgroup_skb` ingress
//! and egress programs and the `sock_ops` program, attached once at the
//! cgroup v2 root (every local socket of every network namespace; see
//! `monitor-ebpf/src/sock.rs`).
//!
//! Their links are pinned like the TC links (`DIR/links/sock-ingress`,
//! `sock-egress`, `sock-ops` under the pin directory), so a stopped,
//! killed or restarting agent leaves them attached: the kernel keeps
//! counting and capping (the programs keep the maps they were loaded with;
//! `SOCK_FLOWS` and `FLOWS` are pinned, so the next agent continues them).
//! An agent that finds them swaps its own programs in (`BPF_LINK_UPDATE`
//! on each cgroup link: atomic, never two hsmon programs on the hook and
//! never none). When a pinned link cannot be updated it is removed and a
//! new one attached (a moment without the hook, logged). `--no-persist`
//! unpins them at stop (closing the last descriptor detaches); an agent in
//! TC mode removes socket-hook pins a previous agent left
//! ([`remove_pins`]); `hsmon cleanup` removes every pinned link.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use aya::programs::links::{CgroupAttachMode, FdLink};
use aya::programs::{CgroupSkb, CgroupSkbAttachType, SockOps};
use aya::Ebpf;

use crate::agent::kernel::loader::program;
use crate::agent::kernel::pins::{self, PinDir};
use crate::api::status::Hook;

/// Pinned link names of the socket hooks (under `DIR/links`).
pub const LINK_INGRESS: &str = "sock-ingress";
/// See [`LINK_INGRESS`].
pub const LINK_EGRESS: &str = "sock-egress";
/// See [`LINK_INGRESS`].
pub const LINK_OPS: &str = "sock-ops";
/// Every socket-hook link name starts with this.
pub const LINK_PREFIX: &str = "sock-";

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

/// One socket-hook link as the agent holds it (the descriptors are held
/// for what closing them does: nothing while pinned, detach once unpinned).
#[allow(dead_code)]
enum Held {
    /// Attached by this agent and pinned at the path; our descriptor.
    Ours(FdLink, PathBuf),
    /// A previous agent's pinned link our program was swapped into.
    Adopted(OwnedFd, PathBuf),
}

/// The attached socket hooks. With a persistent pin directory, dropping
/// them closes the agent's descriptors and leaves the pinned links
/// attached; otherwise dropping detaches them.
pub struct SockHooks {
    held: Vec<(&'static str, Held)>,
    persistent: bool,
    taken_over: usize,
    hooks: Vec<Hook>,
}

/// `BPF_OBJ_GET`: a descriptor for the object pinned at `path`.
fn bpf_obj_get(path: &Path) -> std::io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // union bpf_attr for BPF_OBJ_GET: pathname (u64), bpf_fd (u32),
    // file_flags (u32), path_fd (s32); the rest zero.
    let mut attr = [0u64; 16];
    attr[0] = c.as_ptr() as u64;
    // SAFETY: `attr` is a zeroed bpf_attr-sized buffer holding a pointer to
    // a NUL-terminated path that outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            7, // BPF_OBJ_GET
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a fresh descriptor owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `BPF_LINK_UPDATE`: puts `prog` into the link `link` in place of the
/// program it runs now (atomic for cgroup links).
fn bpf_link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> std::io::Result<()> {
    // link_update: link_fd, new_prog_fd, flags, old_prog_fd (u32 each).
    let mut attr = [0u32; 32];
    attr[0] = link.as_raw_fd() as u32;
    attr[1] = prog.as_raw_fd() as u32;
    // SAFETY: a zeroed bpf_attr-sized buffer with plain integers.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            29, // BPF_LINK_UPDATE
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Swaps `prog` into the link pinned at `path`.
fn adopt(path: &Path, prog: BorrowedFd<'_>) -> Result<OwnedFd> {
    let link = bpf_obj_get(path).context("opening the pinned link")?;
    bpf_link_update(link.as_fd(), prog).context("BPF_LINK_UPDATE")?;
    Ok(link)
}

/// Removes the socket-hook links a previous agent pinned (for an agent
/// that runs without the socket hooks): they detach with their pin.
pub fn remove_pins(pins: &PinDir) -> Result<()> {
    for name in pins.pinned_links()? {
        if name.starts_with(LINK_PREFIX) {
            let path = pins.link_path(&name);
            pins::remove_pin(&path)?;
            tracing::info!(
                "removed the pinned socket-hook link {} (this agent runs --hooks tc)",
                path.display()
            );
        }
    }
    Ok(())
}

impl SockHooks {
    /// Loads the three programs and attaches them at the cgroup v2 root,
    /// swapping them into a previous agent's pinned links where there are
    /// some; pins new links in `pins` (`persistent`: they stay after the
    /// agent stops).
    pub fn attach(ebpf: &mut Ebpf, pins: &PinDir, persistent: bool) -> Result<Self> {
        let root = cgroup2_root()?;
        let cg = File::open(&root).with_context(|| format!("opening {}", root.display()))?;
        let where_ = format!("cgroup:{}", root.display());
        let mut this = SockHooks {
            held: Vec::new(),
            persistent,
            taken_over: 0,
            hooks: Vec::new(),
        };
        for (name, link_name, dir) in [
            (PROG_SOCK_INGRESS, LINK_INGRESS, "ingress"),
            (PROG_SOCK_EGRESS, LINK_EGRESS, "egress"),
            (PROG_SOCK_OPS, LINK_OPS, "sock_ops"),
        ] {
            let path = pins.link_path(link_name);
            let held = attach_one(ebpf, name, dir, &cg, &root, &path)?;
            if matches!(held, Held::Adopted(..)) {
                this.taken_over += 1;
            }
            this.held.push((name, held));
            this.hooks.push(Hook {
                iface: where_.clone(),
                program: name.to_owned(),
                direction: dir.to_owned(),
                mode: "cgroup".to_owned(),
            });
        }
        Ok(this)
    }

    /// The socket hooks as `hsmon status` lists them.
    pub fn hooks(&self) -> &[Hook] {
        &self.hooks
    }

    /// How many of a previous agent's pinned links this agent took over.
    pub fn taken_over(&self) -> usize {
        self.taken_over
    }
}

/// Loads `name` and attaches it: into the link pinned at `path` when there
/// is one that takes it, else as a new link, pinned at `path`.
fn attach_one(
    ebpf: &mut Ebpf,
    name: &'static str,
    dir: &str,
    cg: &File,
    root: &Path,
    path: &Path,
) -> Result<Held> {
    let prog = program(ebpf, name)?;
    let kind = match dir {
        "ingress" => Some(CgroupSkbAttachType::Ingress),
        "egress" => Some(CgroupSkbAttachType::Egress),
        _ => None,
    };
    // Load, then try the pinned link.
    let prog_fd: OwnedFd = match kind {
        Some(_) => {
            let p: &mut CgroupSkb = prog
                .try_into()
                .with_context(|| format!("{name} is not a cgroup_skb program"))?;
            p.load()
                .with_context(|| format!("loading program {name} into the kernel"))?;
            p.fd()?.as_fd().try_clone_to_owned()?
        }
        None => {
            let p: &mut SockOps = prog
                .try_into()
                .with_context(|| format!("{name} is not a sock_ops program"))?;
            p.load()
                .with_context(|| format!("loading program {name} into the kernel"))?;
            p.fd()?.as_fd().try_clone_to_owned()?
        }
    };
    if path.exists() {
        match adopt(path, prog_fd.as_fd()) {
            Ok(link) => {
                tracing::info!(
                    "took over the pinned link {} ({name}; program replaced atomically)",
                    path.display()
                );
                return Ok(Held::Adopted(link, path.to_owned()));
            }
            Err(e) => {
                tracing::warn!(
                    "the pinned link {} cannot be reused ({e:#}); removing it and attaching afresh \
                     (the hook is off for a moment)",
                    path.display()
                );
                pins::remove_pin(path)?;
            }
        }
    }
    let prog = program(ebpf, name)?;
    let link: FdLink = match kind {
        Some(kind) => {
            let p: &mut CgroupSkb = prog
                .try_into()
                .with_context(|| format!("{name} is not a cgroup_skb program"))?;
            let id = p
                .attach(cg, kind, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {name} to {}", root.display()))?;
            let link = p
                .take_link(id)
                .with_context(|| format!("taking the link of {name}"))?;
            FdLink::try_from(link).context("a cgroup link without an fd (kernel < 5.7)")?
        }
        None => {
            let p: &mut SockOps = prog
                .try_into()
                .with_context(|| format!("{name} is not a sock_ops program"))?;
            let id = p
                .attach(cg, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {name} to {}", root.display()))?;
            let link = p
                .take_link(id)
                .with_context(|| format!("taking the link of {name}"))?;
            FdLink::try_from(link).context("a sock_ops link without an fd (kernel < 5.7)")?
        }
    };
    let pinned = link
        .pin(path)
        .with_context(|| format!("pinning the link of {name} at {}", path.display()))?;
    tracing::info!(cgroup = %root.display(), direction = dir, pin = %path.display(), "attached {name}");
    Ok(Held::Ours(pinned.into(), path.to_owned()))
}

impl Drop for SockHooks {
    fn drop(&mut self) {
        if self.persistent {
            tracing::info!(
                "socket hooks left attached through their pinned links (`hsmon cleanup` removes them)"
            );
            return;
        }
        for (name, held) in self.held.drain(..) {
            let (Held::Ours(_, path) | Held::Adopted(_, path)) = &held;
            if let Err(e) = pins::remove_pin(path) {
                tracing::warn!("{e:#}");
            }
            // Our descriptor was the last reference: closing it detaches.
            drop(held);
            tracing::info!("detached {name}");
        }
    }
}
