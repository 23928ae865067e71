//! What the agent's tasks share: the flow table, the kernel counters, and the
//! event reader's own counts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use anyhow::Result;

use super::bans::{BanTable, KernelBans};
use super::flows::FlowTable;
use super::maps::{KernelFlows, KernelStats};
use crate::api::Stats;
use crate::record::{monotonic_now_ns, ConnRecord};

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
    pub info: OnceLock<super::status::AgentInfo>,
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
        }
    }

    /// Every connection, read from the kernel now (blocking: map syscalls).
    pub fn conns(&self) -> Result<Vec<ConnRecord>> {
        lock(&self.table).conns(monotonic_now_ns())
    }

    /// The statistics document (blocking: map syscalls).
    pub fn stats(&self) -> Result<Stats> {
        let kernel = lock(&self.stats).read()?;
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
        })
    }

    /// One periodic sweep: closed flows move out of the kernel map.
    pub fn sweep(&self) -> Result<()> {
        lock(&self.table).sweep().map(drop)
    }
}
