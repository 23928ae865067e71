//! The status document (`GET /v1/status`, route in
//! [`crate::agent::publish::routes::status`]): the agent's own facts (set
//! once at start-up, see [`AgentInfo`]) joined with the live state the
//! [`View`] reads: the flow table, `STATS`, the event reader's counts, the bans.

use std::time::Instant;

use anyhow::{anyhow, Result};
use monitor_common::ban::MAX_BANS_PER_FAMILY;

use crate::agent::kernel::uprobes::UprobeSet;
use crate::agent::publish::view::View;
use crate::api::status::{EventCounts, Fill, Hook, MapFills, Status, TracepointHook};
use crate::locks::lock;

/// What the agent knows about itself once its programs are attached.
#[derive(Clone, Debug)]
pub struct AgentInfo {
    /// When `hsmon run` started.
    pub started: Instant,
    /// The control socket.
    pub socket: String,
    /// The metrics address, if served.
    pub metrics_addr: Option<String>,
    /// `--flow-map-size`.
    pub flow_map_capacity: u32,
    /// The TC programs attached.
    pub hooks: Vec<Hook>,
    /// The tracepoints attached.
    pub tracepoints: Vec<TracepointHook>,
    /// Where the policy came from (a path or "embedded defaults").
    pub policy_source: String,
    /// State across restarts.
    pub persist: crate::agent::persist::PersistInfo,
}

impl View {
    /// The status document (blocking: reads `FLOWS` and `STATS`; changes nothing).
    pub fn status(&self) -> Result<Status> {
        let info = self
            .info
            .get()
            .ok_or_else(|| anyhow!("the agent is still starting"))?;
        let kernel = lock(&self.stats).read()?;
        let flows = lock(&self.table).live_count()?;
        let (v4, v6) = lock(&self.bans).family_counts();
        let per_family = u64::from(MAX_BANS_PER_FAMILY);
        Ok(Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            uptime_ms: u64::try_from(info.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            socket: info.socket.clone(),
            metrics_addr: info.metrics_addr.clone(),
            hooks: info.hooks.clone(),
            tracepoints: info.tracepoints.clone(),
            libraries: self
                .uprobes
                .get()
                .map(|u| u.libraries())
                .unwrap_or_default(),
            uprobe_set: self
                .uprobes
                .get()
                .map_or(UprobeSet::Off, |u| u.set())
                .name()
                .to_owned(),
            maps: MapFills {
                flows: Fill {
                    entries: flows as u64,
                    capacity: u64::from(info.flow_map_capacity),
                },
                bans_v4: Fill {
                    entries: v4 as u64,
                    capacity: per_family,
                },
                bans_v6: Fill {
                    entries: v6 as u64,
                    capacity: per_family,
                },
                memory_bytes: bpf_map_memory(),
            },
            events: EventCounts {
                read: self.reader.read(),
                lost: kernel.get("events_lost").copied().unwrap_or(0),
                bad: self.reader.bad(),
            },
            bans_active: (v4 + v6) as u64,
            policy: lock(&self.policy).settings().summary(&info.policy_source),
            persistence: crate::api::status::Persistence {
                pin_dir: info.persist.pin_dir.clone(),
                state_file: info.persist.state_file.clone(),
                persist_on_stop: info.persist.persist_on_stop,
                restored: info.persist.restored(),
                maps_reused: info.persist.maps_reused.clone(),
                links_taken_over: info.persist.links_taken_over as u64,
                bans_restored: info.persist.bans_restored as u64,
                state_file_status: info.persist.state_file_status.clone(),
            },
        })
    }
}

/// Kernel memory charged for the BPF maps this process holds: the sum of
/// `memlock` over the map fds in `/proc/self/fdinfo`, each map once (by
/// `map_id`). 0 when `/proc` cannot be read.
fn bpf_map_memory() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/fdinfo") else {
        return 0;
    };
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    for entry in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        if let Some((id, memlock)) = map_fdinfo(&text) {
            if seen.insert(id) {
                total = total.saturating_add(memlock);
            }
        }
    }
    total
}

/// `(map_id, memlock)` of an fdinfo text that describes a BPF map.
fn map_fdinfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    field("map_type:")?;
    Some((field("map_id:")?, field("memlock:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_memory_from_fdinfo() {
        let map = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nmap_type:\t9\n\
                   key_size:\t36\nvalue_size:\t176\nmax_entries:\t65536\nmap_flags:\t0x0\n\
                   map_extra:\t0x0\nmemlock:\t18350080\nmap_id:\t42\nfrozen:\t0\n";
        assert_eq!(map_fdinfo(map), Some((42, 18_350_080)));
        let prog = "pos:\t0\nflags:\t02000002\nprog_type:\t3\nprog_jited:\t1\nmemlock:\t4096\nprog_id:\t7\n";
        assert_eq!(map_fdinfo(prog), None);
        assert_eq!(map_fdinfo("pos:\t0\nflags:\t02\n"), None);
    }
}
