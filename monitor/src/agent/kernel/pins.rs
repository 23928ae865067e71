//! State that outlives the agent on a bpf filesystem: the pin directory
//! (`--pin-dir`, default `/sys/fs/bpf/hsmon`) holds the maps that carry
//! state and the links that keep the programs attached while no agent runs.
//!
//! Layout:
//!
//! ```text
//! DIR/maps-v<LAYOUT_VERSION>/FLOWS, STATS, EVENTS, BANS_V4, BANS_V6, BAN_COUNT
//! DIR/links/tc-<iface>-<ingress|egress>, DIR/links/tp-sock_state
//! DIR/links/sock-ingress, sock-egress, sock-ops   (--hooks socket)
//! ```
//!
//! A pinned map is reused only when it still fits this build: the maps
//! directory carries [`LAYOUT_VERSION`] in its name, and each map's type, key
//! size, value size and capacity must match what this agent would create. A
//! map that does not fit is unpinned and created afresh, with a warning that
//! says what is lost; an old layout's whole directory likewise. The agent
//! holds an exclusive `flock` on DIR while it runs, so two agents never share
//! (and fight over) one pin directory.

use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use aya::maps::{MapInfo, MapType};
use monitor_common::ban::{BanAddrV4, BanAddrV6, BanValue, MAX_BANS_PER_FAMILY};
use monitor_common::flow::{FlowKey, FlowValue, STAT_COUNT};

/// Where `hsmon run` pins unless `--pin-dir` says otherwise.
pub use crate::config::flags::DEFAULT_PIN_DIR;

/// Version of the pinned maps' meaning. Bump it when a pinned map's key or
/// value changes meaning at the same size (a reordered field): the agent
/// then recreates every map instead of misreading the old ones.
pub const LAYOUT_VERSION: u32 = 1;

/// `statfs` magic of the bpf filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Where systemd (and most distributions) mount the bpf filesystem.
const BPFFS_MOUNT: &str = "/sys/fs/bpf";

/// The subdirectory of the pin directory that holds the links.
const LINKS_DIR: &str = "links";

/// Prefix of every maps directory (followed by the layout version).
const MAPS_DIR_PREFIX: &str = "maps-v";

/// What a pinned map must look like to be reused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapSpec {
    /// The map's name in the object (and its pin's file name).
    pub name: &'static str,
    /// What is lost when a pin that does not fit is replaced.
    pub loses: &'static str,
    /// Map type, key size, value size, capacity.
    pub shape: Shape,
}

/// The kernel's description of a map that decides whether it fits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shape {
    /// `BPF_MAP_TYPE_*`.
    pub map_type: MapType,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes.
    pub value_size: u32,
    /// Entries (bytes for a ring buffer).
    pub max_entries: u32,
}

impl Eq for Shape {}

impl Shape {
    fn of(info: &MapInfo) -> Result<Self> {
        Ok(Shape {
            map_type: info.map_type().context("reading a pinned map's type")?,
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
        })
    }
}

/// `size_of::<T>()` as the kernel's `u32`.
fn size<T>() -> u32 {
    u32::try_from(std::mem::size_of::<T>()).unwrap_or(u32::MAX)
}

/// The value of `SOCK_FLOWS` as `monitor-ebpf/src/sock.rs` lays out its
/// `SockFlow` (kept in step with it: a different size makes the agent
/// replace the pinned map instead of reusing it).
#[repr(C)]
#[allow(dead_code)]
struct SockFlowLayout {
    key: FlowKey,
    value: FlowValue,
    rewind: monitor_common::rewind::Rewind,
    /// `bpf_spin_lock` (one `u32`).
    lock: u32,
    ingress_busy: u32,
}

/// The maps that carry state across restarts, as this build creates them.
/// `SOCK_FLOWS` (the socket hooks' per-socket state) is among them so that
/// a restarted agent's socket programs, swapped into the pinned links, go
/// on with the counts of connections that are open across the restart.
pub fn persistent_maps(flow_map_size: u32, events_ring_size: u32) -> Vec<MapSpec> {
    // An LPM trie's key is the prefix length (u32) followed by the address.
    let lpm_v4 = size::<u32>() + size::<BanAddrV4>();
    let lpm_v6 = size::<u32>() + size::<BanAddrV6>();
    vec![
        MapSpec {
            name: "FLOWS",
            loses: "the tracked connections' counters",
            shape: Shape {
                map_type: MapType::LruHash,
                key_size: size::<FlowKey>(),
                value_size: size::<FlowValue>(),
                max_entries: flow_map_size,
            },
        },
        MapSpec {
            name: "STATS",
            loses: "the kernel counters (they restart from zero)",
            shape: Shape {
                map_type: MapType::PerCpuArray,
                key_size: 4,
                value_size: 8,
                max_entries: STAT_COUNT,
            },
        },
        MapSpec {
            name: "EVENTS",
            loses: "events not read yet",
            shape: Shape {
                map_type: MapType::RingBuf,
                key_size: 0,
                value_size: 0,
                max_entries: events_ring_size,
            },
        },
        MapSpec {
            name: "BANS_V4",
            loses: "IPv4 bans (re-added from the state file where it has them)",
            shape: Shape {
                map_type: MapType::LpmTrie,
                key_size: lpm_v4,
                value_size: size::<BanValue>(),
                max_entries: MAX_BANS_PER_FAMILY,
            },
        },
        MapSpec {
            name: "BANS_V6",
            loses: "IPv6 bans (re-added from the state file where it has them)",
            shape: Shape {
                map_type: MapType::LpmTrie,
                key_size: lpm_v6,
                value_size: size::<BanValue>(),
                max_entries: MAX_BANS_PER_FAMILY,
            },
        },
        MapSpec {
            name: "SOCK_FLOWS",
            loses: "the socket hooks' per-socket counters (open connections are counted afresh \
                    from their next ClientHello)",
            shape: Shape {
                map_type: MapType::SkStorage,
                key_size: 4,
                value_size: size::<SockFlowLayout>(),
                max_entries: 0,
            },
        },
        MapSpec {
            name: "BAN_COUNT",
            loses: "the ban count (rewritten from the bans)",
            shape: Shape {
                map_type: MapType::Array,
                key_size: 4,
                value_size: 4,
                max_entries: 1,
            },
        },
    ]
}

/// What to do with a pinned map, given its shape and the one wanted.
#[derive(Debug, PartialEq, Eq)]
pub enum Fit {
    /// Nothing pinned: create and pin.
    Absent,
    /// Pinned and fits: reuse.
    Reuse,
    /// Pinned but different: unpin, create afresh (the string says how).
    Replace(String),
}

/// Decides whether a pinned map of shape `found` can serve as `want`.
pub fn fit(want: &Shape, found: Option<&Shape>) -> Fit {
    let Some(found) = found else {
        return Fit::Absent;
    };
    if found == want {
        return Fit::Reuse;
    }
    let mut diffs = Vec::new();
    if found.map_type != want.map_type {
        diffs.push(format!(
            "type {:?} instead of {:?}",
            found.map_type, want.map_type
        ));
    }
    if found.key_size != want.key_size || found.value_size != want.value_size {
        diffs.push(format!(
            "key/value of {}/{} bytes instead of {}/{}",
            found.key_size, found.value_size, want.key_size, want.value_size
        ));
    }
    if found.max_entries != want.max_entries {
        diffs.push(format!(
            "capacity {} instead of {}",
            found.max_entries, want.max_entries
        ));
    }
    Fit::Replace(diffs.join(", "))
}

/// The pin directory of a running agent, locked for its lifetime.
#[derive(Debug)]
pub struct PinDir {
    root: PathBuf,
    /// The open directory, holding the `flock`.
    _lock: File,
    /// The maps of this layout were all reused (a restart).
    maps_reused: Vec<&'static str>,
    /// Maps recreated although something was pinned (layout change).
    maps_replaced: Vec<&'static str>,
}

impl PinDir {
    /// Opens (creating it if needed) the pin directory and locks it; fails
    /// when another agent holds it, or when it is not on a bpf filesystem.
    pub fn open(root: &Path) -> Result<Self> {
        ensure_bpffs(root)?;
        std::fs::create_dir_all(root.join(LINKS_DIR))
            .with_context(|| format!("creating the pin directory {}", root.display()))?;
        let lock = File::open(root)
            .with_context(|| format!("opening the pin directory {}", root.display()))?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                bail!(
                    "another hsmon agent uses the pin directory {} (stop it, or pick another --pin-dir)",
                    root.display()
                );
            }
            return Err(e).with_context(|| format!("locking {}", root.display()));
        }
        Ok(PinDir {
            root: root.to_owned(),
            _lock: lock,
            maps_reused: Vec::new(),
            maps_replaced: Vec::new(),
        })
    }

    /// The pin directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of this layout's maps.
    pub fn maps_dir(&self) -> PathBuf {
        self.root.join(format!("{MAPS_DIR_PREFIX}{LAYOUT_VERSION}"))
    }

    /// Where the link called `name` is pinned.
    pub fn link_path(&self, name: &str) -> PathBuf {
        self.root.join(LINKS_DIR).join(name)
    }

    /// The names of the links pinned now.
    pub fn pinned_links(&self) -> Result<Vec<String>> {
        list_names(&self.root.join(LINKS_DIR))
    }

    /// Makes the maps directory ready for the loader: removes other layouts'
    /// maps and every pinned map that does not fit `specs` (warning what is
    /// lost); returns each persistent map's pin path for
    /// `EbpfLoader::map_pin_path`.
    pub fn prepare_maps(&mut self, specs: &[MapSpec]) -> Result<Vec<(&'static str, PathBuf)>> {
        for name in list_names(&self.root)? {
            let current = format!("{MAPS_DIR_PREFIX}{LAYOUT_VERSION}");
            if name.starts_with(MAPS_DIR_PREFIX) && name != current {
                let dir = self.root.join(&name);
                tracing::warn!(
                    "{} holds maps of another hsmon map layout ({name}, this build uses {current}): \
                     not reused; its flows, counters and kernel bans are lost \
                     (bans in the state file are re-added)",
                    dir.display()
                );
                for map in list_names(&dir)? {
                    self.maps_replaced.push("(old layout)");
                    remove_pin(&dir.join(map))?;
                }
                std::fs::remove_dir(&dir).with_context(|| format!("removing {}", dir.display()))?;
            }
        }
        let dir = self.maps_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut out = Vec::new();
        for spec in specs {
            let path = dir.join(spec.name);
            let found = if path.exists() {
                let info = MapInfo::from_pin(&path)
                    .with_context(|| format!("reading the pinned map {}", path.display()))?;
                Some(Shape::of(&info)?)
            } else {
                None
            };
            match fit(&spec.shape, found.as_ref()) {
                Fit::Absent => {}
                Fit::Reuse => self.maps_reused.push(spec.name),
                Fit::Replace(why) => {
                    tracing::warn!(
                        "the pinned map {} does not fit this agent ({why}): creating it afresh; \
                         lost: {}",
                        path.display(),
                        spec.loses
                    );
                    remove_pin(&path)?;
                    self.maps_replaced.push(spec.name);
                }
            }
            out.push((spec.name, path));
        }
        Ok(out)
    }

    /// The persistent maps found pinned and reused.
    pub fn maps_reused(&self) -> &[&'static str] {
        &self.maps_reused
    }

    /// Whether a map was pinned but had to be created afresh.
    pub fn maps_replaced(&self) -> bool {
        !self.maps_replaced.is_empty()
    }

    /// Unpins every map (for `--no-persist`): the maps live on only as long
    /// as this agent holds them.
    pub fn unpin_maps(&self) {
        let dir = self.maps_dir();
        if let Ok(names) = list_names(&dir) {
            for name in names {
                if let Err(e) = remove_pin(&dir.join(&name)) {
                    tracing::warn!("{e:#}");
                }
            }
        }
        let _ = std::fs::remove_dir(&dir);
    }

    /// Removes the (empty) directories, for `--no-persist`.
    pub fn remove_dirs(&self) {
        let _ = std::fs::remove_dir(self.root.join(LINKS_DIR));
        let _ = std::fs::remove_dir(&self.root);
    }
}

/// The entries of `dir` (none when it does not exist).
pub fn list_names(dir: &Path) -> Result<Vec<String>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        out.push(entry.file_name().to_string_lossy().into_owned());
    }
    out.sort();
    Ok(out)
}

/// Removes one pin (absent is fine).
pub fn remove_pin(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("unpinning {}", path.display())),
    }
}

/// Whether `path` is on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> Result<bool> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("{} has a NUL byte", path.display()))?;
    // SAFETY: zeroed statfs is a valid out-parameter; `c` outlives the call.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statfs {}", path.display()));
    }
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// The nearest existing ancestor of `path` (itself included).
fn existing_ancestor(path: &Path) -> &Path {
    let mut p = path;
    while !p.exists() {
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => p = parent,
            _ => break,
        }
    }
    p
}

/// Checks that `root` is (or will be created) on a bpf filesystem; mounts
/// one at `/sys/fs/bpf` when that is where `root` lives and none is mounted
/// (as in `ip netns exec`'s private `/sys`: pins then last only as long as
/// that mount namespace, which the log says).
fn ensure_bpffs(root: &Path) -> Result<()> {
    let anchor = existing_ancestor(root);
    if is_bpffs(anchor)? {
        return Ok(());
    }
    if root.starts_with(BPFFS_MOUNT) && Path::new(BPFFS_MOUNT).is_dir() {
        super::system::mount_fs("bpf", BPFFS_MOUNT, "bpf")
            .with_context(|| format!("mounting a bpf filesystem at {BPFFS_MOUNT}"))?;
        tracing::warn!(
            "no bpf filesystem was mounted at {BPFFS_MOUNT}: mounted one; in a private mount \
             namespace (e.g. `ip netns exec`) the pins last only as long as that namespace"
        );
        return Ok(());
    }
    bail!(
        "the pin directory {} is not on a bpf filesystem (use a directory under {BPFFS_MOUNT}, \
         or mount one: mount -t bpf bpf DIR)",
        root.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(max: u32) -> Shape {
        Shape {
            map_type: MapType::LruHash,
            key_size: 40,
            value_size: 120,
            max_entries: max,
        }
    }

    #[test]
    fn fit_decisions() {
        let want = shape(1024);
        assert_eq!(fit(&want, None), Fit::Absent);
        assert_eq!(fit(&want, Some(&shape(1024))), Fit::Reuse);
        let Fit::Replace(why) = fit(&want, Some(&shape(65536))) else {
            panic!("a different capacity must not be reused")
        };
        assert!(why.contains("capacity 65536 instead of 1024"), "{why}");
        let mut other = shape(1024);
        other.value_size = 128;
        let Fit::Replace(why) = fit(&want, Some(&other)) else {
            panic!("a different value size must not be reused")
        };
        assert!(why.contains("120"), "{why}");
        other = shape(1024);
        other.map_type = MapType::Hash;
        assert!(matches!(fit(&want, Some(&other)), Fit::Replace(_)));
    }

    #[test]
    fn persistent_maps_follow_the_sizes() {
        let specs = persistent_maps(4096, 8192);
        let flows = specs.iter().find(|s| s.name == "FLOWS").expect("FLOWS");
        assert_eq!(flows.shape.max_entries, 4096);
        let events = specs.iter().find(|s| s.name == "EVENTS").expect("EVENTS");
        assert_eq!(events.shape.max_entries, 8192);
        let v6 = specs.iter().find(|s| s.name == "BANS_V6").expect("BANS_V6");
        assert_eq!(v6.shape.key_size, 20);
    }

    #[test]
    fn non_bpffs_dir_is_refused() {
        let dir = std::env::temp_dir().join(format!("hsmon-pins-{}", std::process::id()));
        let err = ensure_bpffs(&dir).expect_err("tmp is not bpffs");
        assert!(err.to_string().contains("not on a bpf filesystem"), "{err}");
    }
}
