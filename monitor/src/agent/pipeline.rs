//! The only code that wires the agent's components together, one way:
//! ingest → policy → enforce → publish. It feeds the policy from the
//! ring-buffer reader's observations and from the timer's sweep, hands the
//! resets to the enforcer and the decisions to the publisher, and owns the
//! sweep timer (closed flows the close event missed are collected there,
//! never by a read).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use aya::maps::{MapData, RingBuf};

use crate::agent::enforce::cap::{self, LimitHit};
use crate::agent::enforce::resets::{perform_resets, AgentEnforcer};
use crate::agent::ingest::events::{self, Observed};
use crate::agent::ingest::record::FlowUpdate;
use crate::agent::kernel::clock::monotonic_now_ns;
use crate::agent::policy::Decision;
use crate::agent::publish::{decision_log, notify};
use crate::agent::state::{lock, Shared};

/// Reads the ring buffer until the task is cancelled: each batch's flow
/// states go to the policy at once (bans are made before the reader sleeps
/// again); resets (netlink round trips) and printing the decisions run on a
/// blocking thread, after the policy's lock is released.
pub async fn read_events(ring: RingBuf<MapData>, shared: Arc<Shared>) -> Result<()> {
    let s = shared.clone();
    events::read_events(ring, shared, move |observed| on_events(&s, observed)).await
}

/// One batch of observations from the ring-buffer reader.
fn on_events(shared: &Arc<Shared>, observed: Observed) {
    let hits: Vec<LimitHit> = {
        let mut over_cap = lock(&shared.over_cap);
        observed
            .limit_hits
            .iter()
            .map(|(k, v)| {
                over_cap.mark_reset(k, v);
                LimitHit::of_flow(k, v)
            })
            .collect()
    };
    let mut decisions = decide(shared, &observed.updates);
    if !hits.is_empty() || !decisions.is_empty() {
        // Netlink round trips and stdout: off the async workers.
        let s = shared.clone();
        tokio::task::spawn_blocking(move || {
            act_and_publish(&s, &mut decisions);
            reset_over_cap(&s, &hits);
        });
    }
}

/// Flow states from ring-buffer events, handed to the policy at once (bans
/// are made under the policy's lock: a map update each; resets are left for
/// [`act_and_publish`]).
fn decide(shared: &Shared, updates: &[FlowUpdate]) -> Vec<Decision> {
    if updates.is_empty() {
        return Vec::new();
    }
    let mut policy = lock(&shared.policy);
    let mut bans = lock(&shared.bans);
    policy.on_events(
        monotonic_now_ns(),
        updates,
        &mut AgentEnforcer { bans: &mut *bans },
    )
}

/// Makes the resets the policy decided (blocking), then prints the
/// decisions and publishes them on the event stream. Call it without the
/// policy's lock.
fn act_and_publish(shared: &Shared, decisions: &mut [Decision]) {
    if decisions.is_empty() {
        return;
    }
    perform_resets(decisions);
    decision_log::emit(decisions, &shared.events);
}

/// Resets the connections over the renegotiation cap (blocking) and
/// publishes their `reneg_cap` decisions.
fn reset_over_cap(shared: &Shared, hits: &[LimitHit]) {
    if hits.is_empty() {
        return;
    }
    let mut decisions = cap::reset_all(hits, |ip| lock(&shared.policy).peer_counts(ip));
    decision_log::emit(&mut decisions, &shared.events);
}

/// One periodic sweep: closed flows move out of the kernel map, and the
/// policy takes in the live flows and the flows that left the live set
/// without an event (its decisions are printed on stdout as JSON lines);
/// over-cap flows whose event was lost are reset.
fn sweep(shared: &Shared) -> Result<()> {
    // The snapshot's time: taken before the map is read, so what an
    // event shows the policy after it is not forgotten by this sweep.
    let now = monotonic_now_ns();
    let (live, departed) = {
        let mut table = lock(&shared.table);
        let live = table.sweep()?;
        (live, table.take_departed())
    };
    let mut decisions = {
        let mut policy = lock(&shared.policy);
        let mut bans = lock(&shared.bans);
        policy.step(
            now,
            &live,
            &departed,
            &mut AgentEnforcer { bans: &mut *bans },
        )
    };
    act_and_publish(shared, &mut decisions);
    let due = lock(&shared.over_cap).due(&live);
    if !due.is_empty() {
        tracing::warn!(
            flows = due.len(),
            "renegotiation cap: resetting flows whose event was lost"
        );
        let hits: Vec<_> = due.iter().map(|(k, v)| LimitHit::of_flow(k, v)).collect();
        reset_over_cap(shared, &hits);
    }
    Ok(())
}

/// Every `interval` (`--sweep-interval`, 1 s by default): re-read `FLOWS`, collect
/// closed flows; then, under a systemd watchdog, ping it at half its interval
/// (sweeping more often when that is shorter), so a stuck sweep stops the
/// pings.
pub async fn sweep_timer(
    shared: Arc<Shared>,
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
        let s = shared.clone();
        match tokio::task::spawn_blocking(move || sweep(&s)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("flow sweep: {e:#}"),
            Err(e) => tracing::warn!("flow sweep task: {e}"),
        }
        if let Some(w) = watchdog.as_mut() {
            w.tick();
        }
    }
}
