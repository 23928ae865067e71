//! What the agent's tasks share: the flow table, the kernel counters, and the
//! event reader's own counts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use anyhow::Result;

use crate::agent::enforce::bans::{BanTable, KernelBans};
use crate::agent::ingest::flows::FlowTable;
use crate::agent::ingest::record::ConnRecord;
use crate::agent::kernel::clock::monotonic_now_ns;
use crate::agent::kernel::maps::{KernelFlows, KernelStats};
use crate::api::Stats;

/// State shared by the sweep, the event reader and the control server.
pub struct Shared {
    /// Live and recently closed flows.
    pub table: Mutex<FlowTable<KernelFlows>>,
    /// The `STATS` map.
    pub stats: Mutex<KernelStats>,
    /// Ring-buffer events read.
    pub events_read: AtomicU64,
    /// Ring-buffer events that were too short or of an unknown kind.
    pub events_bad: AtomicU64,
    /// The bans in force, the allowlist, and the kernel maps that enforce them.
    pub bans: Mutex<BanTable<KernelBans>>,
    /// What `GET /v1/status` reports about the agent itself; set once the
    /// programs are attached.
    pub info: OnceLock<crate::agent::publish::status::AgentInfo>,
    /// The per-peer policy, fed by the event reader ([`Shared::policy_events`])
    /// and by [`Shared::sweep`].
    pub policy: Mutex<crate::agent::policy::Policy>,
    /// Over-cap flows reset (event path) or due a reset (sweep fallback).
    pub over_cap: Mutex<crate::agent::enforce::over_cap::OverCap>,
    /// The libssl uprobes' maps, set once when they are attached.
    pub uprobes: OnceLock<crate::agent::kernel::uprobes::Uprobes>,
    /// Decisions and transitions for `GET /v1/events` (`hsmon events`).
    pub events: Arc<crate::agent::publish::event_bus::EventBus>,
}

/// Locks `m`, carrying on with the data if another thread panicked holding it
/// (every update leaves the table consistent).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// A fresh state around the kernel maps.
    pub fn new(
        table: FlowTable<KernelFlows>,
        stats: KernelStats,
        bans: BanTable<KernelBans>,
    ) -> Self {
        Shared {
            table: Mutex::new(table),
            stats: Mutex::new(stats),
            events_read: AtomicU64::new(0),
            events_bad: AtomicU64::new(0),
            bans: Mutex::new(bans),
            info: OnceLock::new(),
            uprobes: OnceLock::new(),
            policy: Mutex::new(crate::agent::policy::Policy::new(
                crate::agent::policy::Settings::from_config(&crate::config::Config::default()),
            )),
            over_cap: Mutex::new(crate::agent::enforce::over_cap::OverCap::default()),
            events: Arc::new(crate::agent::publish::event_bus::EventBus::new()),
        }
    }

    /// Every connection, read from the kernel now (blocking: map syscalls).
    pub fn conns(&self) -> Result<Vec<ConnRecord>> {
        let mut records = lock(&self.table).conns(monotonic_now_ns())?;
        if let Some(u) = self.uprobes.get() {
            u.annotate(&mut records);
        }
        Ok(records)
    }

    /// The statistics document (blocking: map syscalls).
    pub fn stats(&self) -> Result<Stats> {
        let mut kernel = lock(&self.stats).read()?;
        if let Some(u) = self.uprobes.get() {
            kernel.extend(u.stats_by_name()?);
        }
        let table = lock(&self.table);
        let t = table.stats();
        Ok(Stats {
            kernel,
            flows_tracked: t.open,
            flows_recently_closed: table.closed_len(),
            events_read: self.events_read.load(Ordering::Relaxed),
            events_bad: self.events_bad.load(Ordering::Relaxed),
            closes_seen: t.closes_seen,
            duplicate_closes: t.duplicate_closes,
            flows_evicted: t.evicted,
            over_cap_sweep_resets: lock(&self.over_cap).sweep_resets,
        })
    }
}
