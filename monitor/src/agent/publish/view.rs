//! What the outputs read: the pieces of the other components' state the
//! pipeline hands the publisher (the flow table, `STATS`, the event
//! reader's counts, the bans, the policy, the uprobes, the event bus).
//! Reading through it never changes state: no sweep, no collection.

use std::sync::{Arc, Mutex, OnceLock};

use anyhow::Result;

use crate::agent::enforce::bans::{BanTable, KernelBans};
use crate::agent::enforce::over_cap::OverCap;
use crate::agent::ingest::events::ReaderCounts;
use crate::agent::ingest::flows::FlowTable;
use crate::agent::ingest::record::ConnRecord;
use crate::agent::kernel::clock::monotonic_now_ns;
use crate::agent::kernel::maps::{KernelFlows, KernelStats};
use crate::agent::kernel::uprobes::Uprobes;
use crate::agent::policy::Policy;
use crate::agent::publish::event_bus::EventBus;
use crate::agent::publish::status::AgentInfo;
use crate::api::Stats;
use crate::locks::lock;

/// The read side of the agent, for the control API and the metrics.
pub struct View {
    /// Live and recently closed flows.
    pub table: Arc<Mutex<FlowTable<KernelFlows>>>,
    /// The `STATS` map.
    pub stats: Mutex<KernelStats>,
    /// The ring-buffer reader's counts.
    pub reader: Arc<ReaderCounts>,
    /// The bans in force (the ban routes change them through the table,
    /// which tells the event bus).
    pub bans: Arc<Mutex<BanTable<KernelBans>>>,
    /// The per-peer policy.
    pub policy: Arc<Mutex<Policy>>,
    /// Over-cap flows reset.
    pub over_cap: Arc<Mutex<OverCap>>,
    /// The libssl uprobes, once attached.
    pub uprobes: Arc<OnceLock<Uprobes>>,
    /// What `GET /v1/status` reports about the agent itself; set once the
    /// programs are attached.
    pub info: OnceLock<AgentInfo>,
    /// Decisions and transitions for `GET /v1/events`.
    pub events: Arc<EventBus>,
}

impl View {
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
            events_read: self.reader.read(),
            events_bad: self.reader.bad(),
            closes_seen: t.closes_seen,
            duplicate_closes: t.duplicate_closes,
            flows_evicted: t.evicted,
            over_cap_sweep_resets: lock(&self.over_cap).sweep_resets,
        })
    }
}
