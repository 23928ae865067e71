//! The agent's state file (`--state-file`, default `/run/hsmon/state.json`):
//! what must survive a restart next to the pinned maps but that the kernel
//! maps do not hold — each ban's reason text and origin, the policy's ban
//! history (for escalation), and the clsact qdiscs hsmon added.
//!
//! Written atomically (a temporary file renamed over the old one). Times are
//! `CLOCK_MONOTONIC` nanoseconds, valid only within one boot: a file from
//! another boot (its `boot_id` differs) is ignored, as is a missing or
//! corrupt one (with a warning); the agent then starts from the kernel maps
//! alone and lists their bans with the reason "restored".

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

/// Where `hsmon run` keeps its state file unless `--state-file` says otherwise.
pub use crate::config::flags::DEFAULT_STATE_FILE;

pub use crate::agent::enforce::bans::SavedBan;
pub use crate::agent::kernel::attach::SavedFilter;
pub use crate::agent::policy::history::SavedHistory;

/// The format version written in the file.
pub const STATE_VERSION: u32 = 1;

/// Everything in the state file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedState {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// `/proc/sys/kernel/random/boot_id` when written.
    pub boot_id: String,
    /// The agent that wrote it.
    pub pid: u32,
    /// Its control socket (`hsmon cleanup` checks whether it answers).
    pub socket: String,
    /// Its pin directory.
    pub pin_dir: String,
    /// The bans in force.
    pub bans: Vec<SavedBan>,
    /// The policy's ban history.
    pub history: Vec<SavedHistory>,
    /// Interfaces whose clsact qdisc hsmon added (removed by `hsmon cleanup`).
    pub clsact_added: Vec<String>,
    /// clsact filters hsmon attached (when TCX was refused).
    pub filters: Vec<SavedFilter>,
}

/// This boot's id (empty when unreadable).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// What reading the state file gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Loaded {
    /// No file.
    Missing,
    /// A file that cannot be used (why).
    Unusable(String),
    /// A usable file.
    State(Box<SavedState>),
}

/// Reads and checks the state file at `path` against this boot.
pub fn load(path: &Path, boot: &str) -> Loaded {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Loaded::Missing,
        Err(e) => return Loaded::Unusable(format!("cannot read it: {e}")),
    };
    parse(&text, boot)
}

/// Parses state file text and checks it belongs to boot `boot`.
pub fn parse(text: &str, boot: &str) -> Loaded {
    let state: SavedState = match serde_json::from_str(text) {
        Ok(s) => s,
        Err(e) => return Loaded::Unusable(format!("not a valid state file: {e}")),
    };
    if state.version != STATE_VERSION {
        return Loaded::Unusable(format!(
            "format version {} (this hsmon reads {STATE_VERSION})",
            state.version
        ));
    }
    if state.boot_id != boot {
        return Loaded::Unusable("written during another boot (its times mean nothing now)".into());
    }
    Loaded::State(Box::new(state))
}

/// Writes `state` to `path` atomically (temporary file, fsync, rename).
pub fn save(path: &Path, state: &SavedState) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = tmp_path(path);
    let text = serde_json::to_vec_pretty(state).context("encoding the state")?;
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&text)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().with_context(|| format!("writing the state file {}", path.display()))
}

/// The temporary file `save` writes first.
fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Removes the state file (absent is fine); true when there was one.
pub fn remove(path: &Path) -> Result<bool> {
    let _ = std::fs::remove_file(tmp_path(path));
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SavedState {
        SavedState {
            version: STATE_VERSION,
            boot_id: "boot-a".into(),
            pid: 42,
            socket: "/run/hsmon/hsmon.sock".into(),
            pin_dir: "/sys/fs/bpf/hsmon".into(),
            bans: vec![SavedBan {
                cidr: "192.0.2.7/32".into(),
                reason: "flood".into(),
                code: 1,
                expires_ns: 123_000_000_000,
            }],
            history: vec![SavedHistory {
                kind: "peer".into(),
                target: "192.0.2.7/32".into(),
                bans_ns: vec![1, 2],
                banned_until_ns: 3,
            }],
            clsact_added: vec!["eth0".into()],
            filters: vec![SavedFilter {
                iface: "eth0".into(),
                direction: "ingress".into(),
                priority: 49152,
                handle: 1,
            }],
        }
    }

    #[test]
    fn round_trip() {
        let dir = std::env::temp_dir().join(format!("hsmon-state-{}", std::process::id()));
        let path = dir.join("sub/state.json");
        let s = sample();
        save(&path, &s).expect("save");
        assert_eq!(load(&path, "boot-a"), Loaded::State(Box::new(s.clone())));
        // Saving again replaces it whole.
        let mut t = s;
        t.bans.clear();
        save(&path, &t).expect("save again");
        assert_eq!(load(&path, "boot-a"), Loaded::State(Box::new(t)));
        assert!(remove(&path).expect("remove"));
        assert!(!remove(&path).expect("remove again"));
        assert_eq!(load(&path, "boot-a"), Loaded::Missing);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn corrupt_or_foreign_files_are_unusable() {
        assert!(matches!(parse("{not json", "b"), Loaded::Unusable(_)));
        assert!(matches!(parse("", "b"), Loaded::Unusable(_)));
        let text = serde_json::to_string(&sample()).expect("json");
        let Loaded::Unusable(why) = parse(&text, "boot-b") else {
            panic!("another boot's file must not be used")
        };
        assert!(why.contains("another boot"), "{why}");
        let mut v = sample();
        v.version = 99;
        let text = serde_json::to_string(&v).expect("json");
        assert!(matches!(parse(&text, "boot-a"), Loaded::Unusable(_)));
        assert!(matches!(
            parse(&serde_json::to_string(&sample()).expect("json"), "boot-a"),
            Loaded::State(_)
        ));
    }
}
