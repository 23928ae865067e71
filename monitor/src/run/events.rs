//! The `EVENTS` ring-buffer reader: wakes on readiness, drains, and hands
//! closed flows to the flow table.

use std::io;
use std::mem::size_of;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use monitor_common::flow::{addr_bytes, FlowEvent, EVENT_FLOW_CLOSED, EVENT_FLOW_OPENED};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::state::{lock, Shared};
use crate::record::socket_addr;

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

/// Reads `EVENTS` until the task is cancelled.
pub async fn read_events(ring: RingBuf<MapData>, shared: Arc<Shared>) -> Result<()> {
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
        handle(&shared, &mut batch);
        if more {
            tokio::task::yield_now().await;
        }
    }
}

/// Applies a batch of decoded events to the flow table.
fn handle(shared: &Shared, batch: &mut Vec<Option<FlowEvent>>) {
    if batch.is_empty() {
        return;
    }
    shared
        .events_read
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    let mut table = lock(&shared.table);
    for ev in batch.drain(..) {
        match ev {
            Some(ev) if ev.kind == EVENT_FLOW_CLOSED => {
                table.on_closed(ev.key, ev.value);
            }
            Some(ev) if ev.kind == EVENT_FLOW_OPENED => {
                let a = socket_addr(&addr_bytes(&ev.key.addr_a), ev.key.port_a);
                let b = socket_addr(&addr_bytes(&ev.key.addr_b), ev.key.port_b);
                let (client, server) = if ev.value.client_is_a != 0 {
                    (a, b)
                } else {
                    (b, a)
                };
                tracing::debug!(%client, %server, "TLS flow opened");
            }
            _ => {
                shared.events_bad.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::sample_flow;

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
