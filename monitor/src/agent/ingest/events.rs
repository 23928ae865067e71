//! The `EVENTS` ring-buffer reader: wakes on readiness (epoll through
//! tokio's `AsyncFd`: the kernel's ring-buffer notification, no polling
//! interval), drains, hands every event's flow state to the flow table, and
//! then the batch's observations to its caller (the pipeline, which feeds
//! the policy and resets what went over the renegotiation cap) before it
//! sleeps again.

use std::io;
use std::mem::size_of;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use monitor_common::flow::{
    FlowEvent, FlowKey, FlowValue, EVENT_FLOW_CLOSED, EVENT_FLOW_OPENED, EVENT_FLOW_PROGRESS,
    EVENT_LIMIT_HIT,
};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::agent::ingest::flows::FlowTable;
use crate::agent::ingest::record::{client_server_addrs, FlowUpdate};
use crate::agent::kernel::maps::KernelFlows;
use crate::locks::lock;

/// Most events handled per wake-up before giving other tasks a turn.
const BATCH: usize = 4096;

/// Decodes one ring-buffer record; `None` if it is too short.
pub fn parse_event(bytes: &[u8]) -> Option<FlowEvent> {
    if bytes.len() < size_of::<FlowEvent>() {
        return None;
    }
    // SAFETY: `bytes` holds at least size_of::<FlowEvent>() bytes; FlowEvent
    // is plain integers (every bit pattern is valid); the read is unaligned-safe.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<FlowEvent>()) })
}

/// What one batch of events showed: every flow state, for the policy, and
/// the flows the kernel stopped at the renegotiation cap (`EVENT_LIMIT_HIT`).
#[derive(Debug, Default)]
pub struct Observed {
    /// Each event's flow state, in order.
    pub updates: Vec<FlowUpdate>,
    /// Flows that went over the renegotiation cap.
    pub limit_hits: Vec<(FlowKey, FlowValue)>,
}

impl Observed {
    /// Nothing observed.
    pub fn is_empty(&self) -> bool {
        self.updates.is_empty() && self.limit_hits.is_empty()
    }
}

/// The reader's own counts.
#[derive(Debug, Default)]
pub struct ReaderCounts {
    read: AtomicU64,
    bad: AtomicU64,
}

impl ReaderCounts {
    /// Ring-buffer events read.
    pub fn read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// Ring-buffer events that were too short or of an unknown kind.
    pub fn bad(&self) -> u64 {
        self.bad.load(Ordering::Relaxed)
    }
}

/// Reads `EVENTS` until the task is cancelled: each event goes to the flow
/// `table`, each batch's observations to `on_batch` (called on the async
/// worker: it must not block).
pub async fn read_events(
    ring: RingBuf<MapData>,
    table: Arc<Mutex<FlowTable<KernelFlows>>>,
    counts: Arc<ReaderCounts>,
    mut on_batch: impl FnMut(Observed),
) -> Result<()> {
    // SAFETY: the ring buffer owns its map fd, which stays open and the same
    // for as long as the AsyncFd holds it.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(io::Error::from)
        .context("watching the EVENTS ring buffer")?;
    let mut batch = Vec::with_capacity(64);
    loop {
        let mut guard = fd
            .readable_mut()
            .await
            .context("waiting on the EVENTS ring buffer")?;
        let ring = guard.get_inner_mut();
        let mut more = false;
        while let Some(item) = ring.next() {
            batch.push(parse_event(&item));
            if batch.len() >= BATCH {
                more = true;
                break;
            }
        }
        if !more {
            guard.clear_ready();
        }
        drop(guard);
        let observed = handle(&table, &counts, &mut batch);
        if !observed.is_empty() {
            on_batch(observed);
        }
        if more {
            tokio::task::yield_now().await;
        }
    }
}

/// Applies a batch of decoded events to the flow table and returns what
/// they showed.
fn handle(
    table: &Mutex<FlowTable<KernelFlows>>,
    counts: &ReaderCounts,
    batch: &mut Vec<Option<FlowEvent>>,
) -> Observed {
    let mut out = Observed::default();
    if batch.is_empty() {
        return out;
    }
    counts.read.fetch_add(batch.len() as u64, Ordering::Relaxed);
    let mut table = lock(table);
    for ev in batch.drain(..) {
        let Some(ev) = ev else {
            counts.bad.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let departed = match ev.kind {
            EVENT_FLOW_CLOSED => {
                table.on_closed_event(ev.key, ev.value);
                true
            }
            EVENT_FLOW_OPENED => {
                table.on_opened(ev.key, ev.value);
                let (client, server) = client_server_addrs(&ev.key, &ev.value);
                tracing::debug!(%client, %server, "TLS flow opened");
                false
            }
            EVENT_FLOW_PROGRESS => {
                table.on_progress(ev.key, ev.value);
                false
            }
            EVENT_LIMIT_HIT => {
                table.on_progress(ev.key, ev.value);
                out.limit_hits.push((ev.key, ev.value));
                false
            }
            _ => {
                counts.bad.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        out.updates.push(FlowUpdate {
            key: ev.key,
            value: ev.value,
            departed,
        });
    }
    out
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::ingest::record::tests::sample_flow;

    #[test]
    fn events_round_trip_and_short_ones_fail() {
        let (key, value) = sample_flow();
        let ev = FlowEvent {
            kind: EVENT_FLOW_CLOSED,
            value,
            key,
            ..FlowEvent::default()
        };
        // SAFETY (test): viewing a plain repr(C) struct as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&ev as *const FlowEvent).cast::<u8>(),
                size_of::<FlowEvent>(),
            )
        };
        // Misaligned copy, with trailing slack as the ring buffer may add.
        let mut buf = vec![0u8; 1];
        buf.extend_from_slice(bytes);
        buf.extend_from_slice(&[0; 8]);
        assert_eq!(parse_event(&buf[1..]), Some(ev));
        assert_eq!(parse_event(&buf[1..100]), None);
        assert_eq!(parse_event(&[]), None);
    }
}
