//! SIGHUP (systemd's `ExecReload`): read the policy file again and apply it
//! without restarting. What changes: the policy's settings (thresholds,
//! actions, dry-run, ban TTLs), the allowlist, and the kernel's
//! renegotiation cap in `CONFIG`. What stays: the hooks, the flow table and
//! every counter, the bans in force and the policy's per-peer history.
//!
//! Command-line options still win over the file (`--dry-run`, `--reneg-cap`,
//! `--allow` are applied again on top of it). A file that is missing or bad
//! changes nothing: the error (with `FILE:LINE:COLUMN`) is logged and
//! published as a `config_reload_failed` event.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context as _, Result};
use aya::maps::{Array, MapData};
use aya::Ebpf;
use monitor_common::flow::TrackerConfig;
use serde_json::json;

use crate::agent::enforce::bans::{BanTable, KernelBans};
use crate::agent::policy::Policy;
use crate::agent::publish::event_bus::{EventBus, Kind};
use crate::config::Overrides;
use crate::locks::lock;

/// Re-applies the policy file on SIGHUP.
pub struct Reloader {
    bans: Arc<Mutex<BanTable<KernelBans>>>,
    policy: Arc<Mutex<Policy>>,
    events: Arc<EventBus>,
    overrides: Overrides,
    config_map: Array<MapData, TrackerConfig>,
}

impl Reloader {
    /// Takes the `CONFIG` map out of `ebpf` (already written and bound to
    /// the loaded programs) to rewrite it on reload; a reload sets the
    /// allowlist of `bans` and the settings of `policy` and tells `events`.
    pub fn new(
        ebpf: &mut Ebpf,
        bans: Arc<Mutex<BanTable<KernelBans>>>,
        policy: Arc<Mutex<Policy>>,
        events: Arc<EventBus>,
        overrides: Overrides,
    ) -> Result<Self> {
        let map = ebpf
            .take_map("CONFIG")
            .ok_or_else(|| anyhow!("the eBPF object has no map CONFIG"))?;
        let config_map = Array::try_from(map).context("CONFIG is not an array")?;
        Ok(Reloader {
            bans,
            policy,
            events,
            overrides,
            config_map,
        })
    }

    /// Reloads; never fails the agent. Logs and publishes the outcome.
    pub fn reload(&mut self) {
        match self.try_reload() {
            Ok((source, reneg_cap, dry_run)) => {
                tracing::info!(%source, reneg_cap, dry_run, "SIGHUP: configuration reloaded");
                self.events.publish(
                    Kind::ConfigReloaded,
                    json!({ "source": source, "reneg_cap": reneg_cap, "dry_run": dry_run }),
                );
            }
            Err(e) => {
                let msg = format!("{e:#}");
                tracing::error!("SIGHUP: configuration not reloaded, the old one stays: {msg}");
                self.events.publish(
                    Kind::ConfigReloadFailed,
                    json!({ "file": self.file_name(), "error": msg }),
                );
            }
        }
    }

    /// The file a reload reads (for messages).
    fn file_name(&self) -> String {
        self.overrides
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_CONFIG_PATH))
            .display()
            .to_string()
    }

    /// Reads and applies; returns (where from, kernel cap, dry-run).
    fn try_reload(&mut self) -> Result<(String, u32, bool)> {
        let effective = crate::config::resolve(&self.overrides)?;
        let settings = crate::agent::policy::Settings::from_config(&effective.config);
        let dry_run = settings.dry_run;
        let allow = crate::agent::enforce::bans::allowlist(&effective.allow)?;
        let source = effective.source;
        let cap = effective.kernel_reneg_cap;
        // Everything that can fail before anything changes: the kernel cap.
        let mut kernel = self
            .config_map
            .get(&0, 0)
            .context("reading the CONFIG map")?;
        if kernel.reneg_cap != cap {
            kernel.reneg_cap = cap;
            self.config_map
                .set(0, kernel, 0)
                .context("writing the CONFIG map")?;
        }
        lock(&self.bans).set_allowlist(allow);
        lock(&self.policy).set_settings(settings.clone());
        tracing::info!(?settings, "policy after reload");
        Ok((source, cap, dry_run))
    }
}
