//! The only code that wires the agent's components together, one way:
//! kernel → ingest → policy → enforce → publish. It feeds the policy from
//! the ring-buffer reader's observations and from the sweep, hands the
//! resets to the enforcer and the decisions to the publisher, and owns
//! every timer: the flow sweep (closed flows the close event missed are
//! collected there, never by a read), the ban expiry, the state file save
//! and the uprobe rescan.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use aya::Ebpf;

use crate::agent::enforce::bans::{self, BanTable, KernelBans};
use crate::agent::enforce::cap::{self, LimitHit};
use crate::agent::enforce::over_cap::OverCap;
use crate::agent::enforce::resets::{perform_resets, AgentEnforcer};
use crate::agent::ingest::events::{self, Observed, ReaderCounts};
use crate::agent::ingest::flows::FlowTable;
use crate::agent::ingest::record::FlowUpdate;
use crate::agent::kernel::clock::monotonic_now_ns;
use crate::agent::kernel::maps::KernelFlows;
use crate::agent::kernel::uprobes::{Uprobes, RESCAN_EVERY};
use crate::agent::persist::StateWriter;
use crate::agent::policy::{Decision, Outcome, Policy};
use crate::agent::publish::event_bus::EventBus;
use crate::agent::publish::{decision_log, notify};
use crate::locks::lock;
use monitor_common::flow::FlowKey;

/// How often the state file is checked for changes.
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// The pieces the pipeline moves data between, each shared with whoever
/// else needs it (the publisher's view, the reloader) by the agent's
/// start-up, which made them.
#[derive(Clone)]
pub struct Pipeline {
    /// Ingest: live and recently closed flows.
    pub table: Arc<Mutex<FlowTable<KernelFlows>>>,
    /// Policy: per-peer windows and rules.
    pub policy: Arc<Mutex<Policy>>,
    /// Enforce: the bans in force (tells the event bus of each change).
    pub bans: Arc<Mutex<BanTable<KernelBans>>>,
    /// Enforce: over-cap flows reset (event path) or due a reset (sweep).
    pub over_cap: Arc<Mutex<OverCap>>,
    /// Publish: the event bus.
    pub events: Arc<EventBus>,
}

impl Pipeline {
    /// Reads the ring buffer until the task is cancelled: each event goes
    /// to the flow table, each batch's flow states to the policy at once
    /// (bans are made before the reader sleeps again); resets (netlink
    /// round trips) and printing the decisions run on a blocking thread,
    /// after the policy's lock is released.
    pub async fn read_events(
        self: Arc<Self>,
        ring: RingBuf<MapData>,
        counts: Arc<ReaderCounts>,
    ) -> Result<()> {
        let table = self.table.clone();
        events::read_events(ring, table, counts, move |observed| {
            self.on_events(observed)
        })
        .await
    }

    /// One batch of observations from the ring-buffer reader.
    fn on_events(self: &Arc<Self>, observed: Observed) {
        let hits: Vec<(LimitHit, FlowKey, u64)> = {
            let mut over_cap = lock(&self.over_cap);
            observed
                .limit_hits
                .iter()
                .map(|(k, v)| {
                    over_cap.mark_reset(k, v);
                    (LimitHit::of_flow(k, v), *k, v.first_seen_ns)
                })
                .collect()
        };
        let mut decisions = self.decide(&observed.updates);
        if !hits.is_empty() || !decisions.is_empty() {
            // Netlink round trips and stdout: off the async workers.
            let p = self.clone();
            tokio::task::spawn_blocking(move || {
                p.act_and_publish(&mut decisions);
                let only: Vec<LimitHit> = hits.iter().map(|(h, _, _)| *h).collect();
                let outcomes = p.reset_over_cap(&only);
                // A failed reset goes back to the sweep, which retries it.
                let mut over_cap = lock(&p.over_cap);
                for ((_, k, first_seen), outcome) in hits.iter().zip(outcomes) {
                    if outcome == Outcome::ResetFailed {
                        over_cap.unmark_reset(k, *first_seen);
                    }
                }
            });
        }
    }

    /// Flow states from ring-buffer events, handed to the policy at once
    /// (bans are made under the policy's lock: a map update each; resets
    /// are left for [`Pipeline::act_and_publish`]).
    fn decide(&self, updates: &[FlowUpdate]) -> Vec<Decision> {
        if updates.is_empty() {
            return Vec::new();
        }
        let mut policy = lock(&self.policy);
        let mut bans = lock(&self.bans);
        policy.on_events(
            monotonic_now_ns(),
            updates,
            &mut AgentEnforcer { bans: &mut *bans },
        )
    }

    /// Makes the resets the policy decided (blocking), then prints the
    /// decisions and publishes them on the event stream. Call it without
    /// the policy's lock.
    fn act_and_publish(&self, decisions: &mut [Decision]) {
        if decisions.is_empty() {
            return;
        }
        perform_resets(decisions);
        decision_log::emit(decisions, &self.events);
    }

    /// Resets the connections over the renegotiation cap (blocking) and
    /// publishes their `reneg_cap` decisions.
    /// Returns each hit's outcome, in order.
    fn reset_over_cap(&self, hits: &[LimitHit]) -> Vec<Outcome> {
        if hits.is_empty() {
            return Vec::new();
        }
        let mut decisions = cap::reset_all(hits, |ip| lock(&self.policy).peer_counts(ip));
        let outcomes = decisions.iter().map(|d| d.action).collect();
        decision_log::emit(&mut decisions, &self.events);
        outcomes
    }

    /// One periodic sweep: closed flows move out of the kernel map, and the
    /// policy takes in the live flows and the flows that left the live set
    /// without an event (its decisions are printed on stdout as JSON
    /// lines); over-cap flows whose event was lost are reset.
    fn sweep(&self) -> Result<()> {
        // The snapshot's time: taken before the map is read, so what an
        // event shows the policy after it is not forgotten by this sweep.
        let now = monotonic_now_ns();
        let (live, departed) = {
            let mut table = lock(&self.table);
            let live = table.sweep()?;
            (live, table.take_departed())
        };
        let mut decisions = {
            let mut policy = lock(&self.policy);
            let mut bans = lock(&self.bans);
            policy.step(
                now,
                &live,
                &departed,
                &mut AgentEnforcer { bans: &mut *bans },
            )
        };
        self.act_and_publish(&mut decisions);
        let due = lock(&self.over_cap).due(&live);
        if !due.is_empty() {
            tracing::warn!(
                flows = due.len(),
                "renegotiation cap: resetting flows whose event was lost"
            );
            let hits: Vec<_> = due.iter().map(|(k, v)| LimitHit::of_flow(k, v)).collect();
            let outcomes = self.reset_over_cap(&hits);
            let mut over_cap = lock(&self.over_cap);
            for ((k, v), outcome) in due.iter().zip(outcomes) {
                if outcome == Outcome::ResetFailed {
                    over_cap.unmark_reset(k, v.first_seen_ns);
                }
            }
        }
        Ok(())
    }

    /// Every `interval` (`--sweep-interval`, 1 s by default): re-read
    /// `FLOWS`, collect closed flows; then, under a systemd watchdog, ping
    /// it at half its interval (sweeping more often when that is shorter),
    /// so a stuck sweep stops the pings.
    pub async fn sweep_timer(
        self: Arc<Self>,
        interval: Duration,
        mut watchdog: Option<notify::Watchdog>,
    ) -> Result<()> {
        let every = match &watchdog {
            Some(w) => {
                tracing::info!(every = ?w.every(), "systemd watchdog enabled: pinging it from the sweep");
                interval.min(w.every() / 2).max(Duration::from_millis(10))
            }
            None => interval,
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let p = self.clone();
            match tokio::task::spawn_blocking(move || p.sweep()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("flow sweep: {e:#}"),
                Err(e) => tracing::warn!("flow sweep task: {e}"),
            }
            if let Some(w) = watchdog.as_mut() {
                w.tick();
            }
        }
    }

    /// Every [`bans::SWEEP_EVERY`]: remove the bans that ended from the
    /// maps (the ban table publishes each `ban_expired`).
    pub async fn ban_timer(self: Arc<Self>) -> Result<()> {
        let mut tick = tokio::time::interval(bans::SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let p = self.clone();
            match tokio::task::spawn_blocking(move || lock(&p.bans).sweep(monotonic_now_ns())).await
            {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!("ban sweep: {e:#}"),
                Err(e) => tracing::warn!("ban sweep task: {e}"),
            }
        }
    }

    /// Writes the state file through `writer` if the bans or the policy's
    /// ban history changed since the last write (blocking).
    pub fn save_state(&self, writer: &StateWriter) -> Result<()> {
        let bans = lock(&self.bans).saved();
        let history = lock(&self.policy).export_history();
        writer.save(bans, history)
    }

    /// Every [`SAVE_EVERY`]: rewrite the state file if it changed.
    pub async fn state_timer(self: Arc<Self>, writer: Arc<StateWriter>) -> Result<()> {
        let mut tick = tokio::time::interval(SAVE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut warned = false;
        loop {
            tick.tick().await;
            let (p, w) = (self.clone(), writer.clone());
            match tokio::task::spawn_blocking(move || p.save_state(&w)).await {
                Ok(Ok(())) => warned = false,
                Ok(Err(e)) if !warned => {
                    tracing::warn!("state file: {e:#}");
                    warned = true;
                }
                Ok(Err(_)) => {}
                Err(e) => tracing::warn!("state file task: {e}"),
            }
        }
    }
}

/// Every [`RESCAN_EVERY`]: [`Uprobes::rescan`] (in a blocking thread:
/// `/proc` and ELF reads). Runs until the agent stops; does nothing when
/// the uprobes are not attached or their targets are fixed
/// (`--uprobe-target`).
pub async fn uprobe_timer(ebpf: Arc<Mutex<Ebpf>>, uprobes: Arc<OnceLock<Uprobes>>) -> Result<()> {
    let mut tick = tokio::time::interval(RESCAN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate: attaching just scanned
    loop {
        tick.tick().await;
        if !uprobes.get().is_some_and(Uprobes::discovers) {
            continue;
        }
        let (e, u) = (ebpf.clone(), uprobes.clone());
        let done = tokio::task::spawn_blocking(move || {
            if let Some(u) = u.get() {
                u.rescan(&mut lock(&e));
            }
        })
        .await;
        if let Err(e) = done {
            tracing::warn!("uprobe target scan failed: {e}");
        }
    }
}
