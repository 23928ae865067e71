//! State across restarts, as `hsmon run` uses it: the pin directory
//! ([`crate::agent::kernel::pins`]), the state file ([`crate::agent::persist::state_file`]) and what a stop
//! does with them.
//!
//! Start: lock the pin directory, read the state file, reuse the pinned maps
//! that fit, take over pinned links, restore the bans (kernel maps + the
//! state file's reasons) and the policy's ban history. Run: rewrite the
//! state file when it changes (the pipeline checks every second). Stop (SIGINT/SIGTERM):
//! by default everything stays pinned and attached, so bans keep dropping
//! and counters keep counting until the next agent takes over (`hsmon
//! cleanup` removes it all); with `--no-persist` the agent detaches, unpins
//! and removes the state file instead. `kill -9` leaves the pins either way.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use aya::Ebpf;

pub use crate::agent::kernel::pins;
pub mod state_file;

use crate::agent::enforce::bans::{BanTable, KernelBans};
use crate::agent::kernel::attach::Attachments;
use crate::agent::kernel::clock::monotonic_now_ns;
use crate::agent::kernel::ifaces::Iface;
use crate::agent::policy::history::SavedHistory;
use crate::api::cidr::Cidr;
pub use crate::config::flags::{PersistArgs, TcMode};
use crate::locks::lock;
use pins::PinDir;
use state_file::{Loaded, SavedBan, SavedState, STATE_VERSION};

/// What `hsmon status` says about persistence.
#[derive(Clone, Debug, Default)]
pub struct PersistInfo {
    /// The pin directory.
    pub pin_dir: String,
    /// The state file.
    pub state_file: String,
    /// Whether a clean stop leaves everything pinned.
    pub persist_on_stop: bool,
    /// Pinned maps of a previous agent reused.
    pub maps_reused: Vec<String>,
    /// A previous agent's links taken over.
    pub links_taken_over: usize,
    /// Bans restored from the kernel maps.
    pub bans_restored: usize,
    /// What became of the state file: `"restored"`, `"missing"`, or why it
    /// was not usable.
    pub state_file_status: String,
}

impl PersistInfo {
    /// Whether this agent continued a previous agent's state.
    pub fn restored(&self) -> bool {
        !self.maps_reused.is_empty() || self.links_taken_over > 0
    }
}

/// The agent's persistence: the locked pin directory and the previous
/// state.
pub struct Persistence {
    args: PersistArgs,
    pins: PinDir,
    prior: Option<SavedState>,
    info: PersistInfo,
}

impl Persistence {
    /// Locks the pin directory and reads the state file (a missing or bad
    /// one is a warning: the kernel maps alone are then the starting point).
    pub fn open(args: &PersistArgs) -> Result<Self> {
        let pins = PinDir::open(&args.pin_dir)?;
        let (prior, status) = match state_file::load(&args.state_file, &state_file::boot_id()) {
            Loaded::State(s) => (Some(*s), "restored".to_owned()),
            Loaded::Missing => (None, "missing".to_owned()),
            Loaded::Unusable(why) => {
                tracing::warn!(
                    "the state file {} is not used: {why}; starting from the pinned maps alone \
                     (their bans are listed with the reason \"restored\")",
                    args.state_file.display()
                );
                (None, format!("unusable: {why}"))
            }
        };
        let info = PersistInfo {
            pin_dir: args.pin_dir.display().to_string(),
            state_file: args.state_file.display().to_string(),
            persist_on_stop: !args.no_persist,
            state_file_status: status,
            ..PersistInfo::default()
        };
        Ok(Persistence {
            args: args.clone(),
            pins,
            prior,
            info,
        })
    }

    /// Loads the object with the persistent maps reused or pinned.
    pub fn load(&mut self, flow_map_size: u32, events_ring_size: u32) -> Result<Ebpf> {
        let specs = pins::persistent_maps(flow_map_size, events_ring_size);
        let paths = self.pins.prepare_maps(&specs)?;
        let ebpf =
            crate::agent::kernel::loader::load_pinned(flow_map_size, events_ring_size, &paths)?;
        self.info.maps_reused = self
            .pins
            .maps_reused()
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        if self.info.maps_reused.is_empty() {
            tracing::info!(pin_dir = %self.pins.root().display(), "maps pinned (fresh)");
        } else {
            tracing::info!(
                pin_dir = %self.pins.root().display(),
                maps = %self.info.maps_reused.join(","),
                "reusing the pinned maps of a previous agent: bans and counters continue"
            );
        }
        Ok(ebpf)
    }

    /// The ban table over the (possibly reused) ban maps.
    pub fn ban_table(&mut self, ebpf: &mut Ebpf, allow: Vec<Cidr>) -> Result<BanTable<KernelBans>> {
        let maps = KernelBans::take(ebpf)?;
        let kernel = maps.entries()?;
        let saved = self
            .prior
            .as_ref()
            .map(|s| s.bans.clone())
            .unwrap_or_default();
        let table = BanTable::restore(
            maps,
            allow,
            kernel,
            &saved,
            self.pins.maps_replaced(),
            monotonic_now_ns(),
        )?;
        self.info.bans_restored = table.len();
        if !table.is_empty() {
            tracing::info!(bans = table.len(), "bans restored from the pinned maps");
        }
        Ok(table)
    }

    /// Attaches the programs, taking over a previous agent's links.
    pub fn attach(&mut self, ebpf: &mut Ebpf, ifaces: &[Iface]) -> Result<Attachments> {
        let (filters, clsact) = match &self.prior {
            Some(s) => (s.filters.clone(), s.clsact_added.clone()),
            None => (Vec::new(), Vec::new()),
        };
        let a = Attachments::attach(
            ebpf,
            ifaces,
            Some(&self.pins),
            &filters,
            &clsact,
            self.args.tc_mode == TcMode::Clsact,
        )?;
        self.info.links_taken_over = a.taken_over();
        Ok(a)
    }

    /// Attaches the socket hooks (`--hooks socket`), taking over a previous
    /// agent's pinned socket-hook links; with `None` (`--hooks tc`) removes
    /// the ones a previous agent left.
    pub fn attach_sock_hooks(
        &mut self,
        ebpf: &mut Ebpf,
        socket_mode: bool,
    ) -> Result<Option<crate::agent::kernel::sock_hooks::SockHooks>> {
        use crate::agent::kernel::sock_hooks;
        if !socket_mode {
            sock_hooks::remove_pins(&self.pins)?;
            return Ok(None);
        }
        let hooks = sock_hooks::SockHooks::attach(ebpf, &self.pins, !self.args.no_persist)?;
        self.info.links_taken_over += hooks.taken_over();
        Ok(Some(hooks))
    }

    /// The previous agent's policy ban history.
    pub fn history(&self) -> Vec<SavedHistory> {
        self.prior
            .as_ref()
            .map(|s| s.history.clone())
            .unwrap_or_default()
    }

    /// What `hsmon status` reports.
    pub fn info(&self) -> PersistInfo {
        self.info.clone()
    }

    /// The state file's writer, with the parts that do not change.
    pub fn writer(&self, socket: &str, attachments: &Attachments) -> Arc<StateWriter> {
        Arc::new(StateWriter {
            path: self.args.state_file.clone(),
            base: SavedState {
                version: STATE_VERSION,
                boot_id: state_file::boot_id(),
                pid: std::process::id(),
                socket: socket.to_owned(),
                pin_dir: self.args.pin_dir.display().to_string(),
                bans: Vec::new(),
                history: Vec::new(),
                clsact_added: attachments.clsact_added().to_vec(),
                filters: attachments.filters().to_vec(),
            },
            last: Mutex::new(None),
        })
    }

    /// The clean stop: keep everything (default, after `last_save`) or, with
    /// `--no-persist`, remove everything.
    pub fn stop(&self, attachments: &mut Attachments, last_save: impl FnOnce() -> Result<()>) {
        if self.args.no_persist {
            attachments.detach();
            self.pins.unpin_maps();
            self.pins.remove_dirs();
            match state_file::remove(&self.args.state_file) {
                Ok(_) => {}
                Err(e) => tracing::warn!("{e:#}"),
            }
            tracing::info!("--no-persist: programs detached, pins and state file removed");
        } else {
            if let Err(e) = last_save() {
                tracing::warn!("{e:#}");
            }
            attachments.release();
            tracing::info!(
                pin_dir = %self.args.pin_dir.display(),
                state_file = %self.args.state_file.display(),
                "maps and links stay pinned: bans keep dropping until the next agent takes over \
                 (`hsmon cleanup` removes everything hsmon left)"
            );
        }
    }
}

/// Writes the state file when its content changed.
pub struct StateWriter {
    path: PathBuf,
    base: SavedState,
    last: Mutex<Option<SavedState>>,
}

impl StateWriter {
    /// Writes the state file if the bans or the history changed since the
    /// last write.
    pub fn save(&self, bans: Vec<SavedBan>, history: Vec<SavedHistory>) -> Result<()> {
        let mut state = self.base.clone();
        state.bans = bans;
        state.history = history;
        let mut last = lock(&self.last);
        if last.as_ref() == Some(&state) {
            return Ok(());
        }
        state_file::save(&self.path, &state)?;
        *last = Some(state);
        Ok(())
    }
}

/// Removes everything a persistent agent left (for `hsmon cleanup`): the
/// pinned links (detaching the programs), the clsact filters and qdiscs the
/// state file names, the pinned maps, the pin directory and the state file.
/// Returns what it removed, one description each.
pub fn remove_all(
    pin_dir: &std::path::Path,
    state_path: &std::path::Path,
    saved: Option<&SavedState>,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let links = pin_dir.join("links");
    for name in pins::list_names(&links)? {
        let path = links.join(&name);
        pins::remove_pin(&path)?;
        out.push(format!("link {} (its program is detached)", path.display()));
    }
    if let Some(s) = saved {
        for f in &s.filters {
            crate::agent::kernel::attach::remove_saved_filter(f);
            out.push(format!("clsact filter on {} {}", f.iface, f.direction));
        }
        for iface in &s.clsact_added {
            match crate::agent::kernel::attach::remove_clsact(iface) {
                Ok(()) => out.push(format!("clsact qdisc on {iface}")),
                Err(e) => tracing::warn!("removing the clsact qdisc on {iface}: {e:#}"),
            }
        }
    }
    for name in pins::list_names(pin_dir)? {
        if !name.starts_with("maps-v") {
            continue;
        }
        let dir = pin_dir.join(&name);
        for map in pins::list_names(&dir)? {
            let path = dir.join(&map);
            pins::remove_pin(&path)?;
            out.push(format!("map {}", path.display()));
        }
        if let Err(e) = std::fs::remove_dir(&dir) {
            tracing::warn!("removing {}: {e}", dir.display());
        }
    }
    let _ = std::fs::remove_dir(&links);
    if pin_dir.is_dir() {
        match std::fs::remove_dir(pin_dir) {
            Ok(()) => out.push(format!("pin directory {}", pin_dir.display())),
            Err(e) => tracing::warn!(
                "{} is not empty or cannot be removed ({e}): left in place",
                pin_dir.display()
            ),
        }
    }
    if state_file::remove(state_path)? {
        out.push(format!("state file {}", state_path.display()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::persist::state_file::SavedHistory;

    #[test]
    fn policy_history_round_trips() {
        let settings =
            crate::agent::policy::Settings::from_config(&crate::config::Config::default());
        let mut p = crate::agent::policy::Policy::new(settings.clone());
        let saved = vec![
            SavedHistory {
                kind: "peer".into(),
                target: "192.0.2.7/32".into(),
                bans_ns: vec![5, 9],
                banned_until_ns: 100,
            },
            SavedHistory {
                kind: "prefix".into(),
                target: "198.51.100.0/24".into(),
                bans_ns: vec![7],
                banned_until_ns: 50,
            },
        ];
        p.import_history(&saved);
        assert_eq!(p.export_history(), saved);
        let mut q = crate::agent::policy::Policy::new(settings);
        q.import_history(&[SavedHistory {
            kind: "bogus".into(),
            target: "not a cidr".into(),
            bans_ns: vec![1],
            banned_until_ns: 1,
        }]);
        assert!(q.export_history().is_empty());
    }

    #[test]
    fn options_parse() {
        use clap::Parser as _;
        let parse = |args: &[&str]| {
            crate::cli::Cli::try_parse_from(std::iter::once("hsmon").chain(args.iter().copied()))
        };
        let crate::cli::Verb::Run(a) = parse(&["run"]).expect("run").verb else {
            panic!("not run")
        };
        assert_eq!(a.persist.pin_dir, PathBuf::from(pins::DEFAULT_PIN_DIR));
        assert_eq!(
            a.persist.state_file,
            PathBuf::from(state_file::DEFAULT_STATE_FILE)
        );
        assert!(!a.persist.no_persist);
        assert_eq!(a.persist.tc_mode, TcMode::Auto);
        let crate::cli::Verb::Run(a) = parse(&[
            "run",
            "--pin-dir",
            "/sys/fs/bpf/x",
            "--state-file",
            "/tmp/s.json",
            "--no-persist",
            "--tc-mode",
            "clsact",
        ])
        .expect("run")
        .verb
        else {
            panic!("not run")
        };
        assert_eq!(a.persist.pin_dir, PathBuf::from("/sys/fs/bpf/x"));
        assert!(a.persist.no_persist);
        assert_eq!(a.persist.tc_mode, TcMode::Clsact);
        let e = parse(&["run", "--tc-mode", "xdp"]).expect_err("bad mode");
        assert_eq!(e.exit_code(), 2);
        let crate::cli::Verb::Cleanup(c) = parse(&["cleanup", "--force"]).expect("cleanup").verb
        else {
            panic!("not cleanup")
        };
        assert!(c.force);
        assert_eq!(c.pin_dir, PathBuf::from(pins::DEFAULT_PIN_DIR));
    }

    #[test]
    fn remove_all_on_nothing_is_empty() {
        let base = std::env::temp_dir().join(format!("hsmon-rmall-{}", std::process::id()));
        let removed =
            remove_all(&base.join("pins"), &base.join("state.json"), None).expect("remove_all");
        assert!(removed.is_empty(), "{removed:?}");
    }
}
