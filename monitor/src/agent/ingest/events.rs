//! The `EVENTS` ring-buffer reader: wakes on readiness (epoll through
//! tokio's `AsyncFd`: the kernel's ring-buffer notification, no polling
//! interval), drains, hands every event's flow state to the flow table and
//! then at once to the policy ([`crate::agent::policy::Policy::on_events`]: the
//! peer's and the connection's rules are evaluated per event, bans go into
//! the kernel's map before the reader sleeps again), and resets connections
//! that went over the renegotiation cap (`EVENT_LIMIT_HIT`, see
//! [`crate::agent::enforce::sock_destroy`]). Resets (netlink round trips) and printing the
//! decisions run on a blocking thread, after the policy's lock is released.

use std::io;
use std::mem::size_of;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use monitor_common::flow::{
    FlowEvent, FlowKey, FlowValue, EVENT_FLOW_CLOSED, EVENT_FLOW_OPENED, EVENT_FLOW_PROGRESS,
    EVENT_LIMIT_HIT,
};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::agent::ingest::record::client_server_addrs;
use crate::agent::policy::{ConnRef, Counts, Decision, FlowUpdate, Outcome, Rule};
use crate::agent::state::{lock, Shared};

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
    let mut updates = Vec::with_capacity(64);
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
        let resets = handle(&shared, &mut batch, &mut updates);
        let mut decisions = shared.policy_events(&updates);
        updates.clear();
        if !resets.is_empty() || !decisions.is_empty() {
            // Netlink round trips and stdout: off the async workers.
            let s = shared.clone();
            tokio::task::spawn_blocking(move || {
                s.publish_decisions(&mut decisions);
                reset_all(&s, &resets);
            });
        }
        if more {
            tokio::task::yield_now().await;
        }
    }
}

/// Applies a batch of decoded events to the flow table; fills `updates`
/// with the flow states for the policy and returns the connections to reset
/// (their flows went over the renegotiation cap).
fn handle(
    shared: &Shared,
    batch: &mut Vec<Option<FlowEvent>>,
    updates: &mut Vec<FlowUpdate>,
) -> Vec<LimitHit> {
    let mut resets = Vec::new();
    if batch.is_empty() {
        return resets;
    }
    shared
        .events_read
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    let mut table = lock(&shared.table);
    for ev in batch.drain(..) {
        let Some(ev) = ev else {
            shared.events_bad.fetch_add(1, Ordering::Relaxed);
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
                lock(&shared.over_cap).mark_reset(&ev.key, &ev.value);
                resets.push(LimitHit::of(&ev));
                false
            }
            _ => {
                shared.events_bad.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        updates.push(FlowUpdate {
            key: ev.key,
            value: ev.value,
            departed,
        });
    }
    resets
}

/// A connection whose client went over the renegotiation cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitHit {
    /// The client (the peer of the socket to reset).
    pub client: std::net::SocketAddr,
    /// The server (this host: its socket is reset).
    pub server: std::net::SocketAddr,
    /// Client-initiated renegotiations counted when the cap was hit.
    pub renegotiations_client: u32,
}

impl LimitHit {
    /// The client and server of an `EVENT_LIMIT_HIT`.
    pub fn of(ev: &FlowEvent) -> Self {
        Self::of_flow(&ev.key, &ev.value)
    }

    /// The client and server of a flow.
    pub fn of_flow(key: &FlowKey, value: &FlowValue) -> Self {
        let (client, server) = client_server_addrs(key, value);
        LimitHit {
            client,
            server,
            renegotiations_client: value.tracker.counters.renegotiations_client,
        }
    }
}

/// Resets (`SOCK_DESTROY`) the server-side socket of each connection, logging
/// each with its 4-tuple, and reports each as a `reneg_cap` decision (stdout
/// and the event stream).
pub fn reset_all(shared: &Shared, hits: &[LimitHit]) {
    let mut decisions = Vec::with_capacity(hits.len());
    for hit in hits {
        let conn = crate::agent::enforce::sock_destroy::Conn {
            local: hit.server,
            remote: hit.client,
        };
        let (client, server, renegs) = (hit.client, hit.server, hit.renegotiations_client);
        let action = match crate::agent::enforce::sock_destroy::destroy(&conn) {
            Ok(crate::agent::enforce::sock_destroy::Outcome::Destroyed) => {
                tracing::warn!(
                    %client, %server, renegotiations_client = renegs,
                    "renegotiation cap exceeded: connection reset"
                );
                Outcome::Reset
            }
            Ok(crate::agent::enforce::sock_destroy::Outcome::Gone) => {
                tracing::info!(
                    %client, %server, renegotiations_client = renegs,
                    "renegotiation cap exceeded: connection already closed, nothing to reset"
                );
                Outcome::AlreadyClosed
            }
            Err(e) => {
                tracing::warn!(
                    %client, %server, renegotiations_client = renegs,
                    "renegotiation cap exceeded: resetting the connection failed: {e:#}"
                );
                Outcome::ResetFailed
            }
        };
        decisions.push(cap_decision(
            hit,
            action,
            lock(&shared.policy).peer_counts(client.ip()),
        ));
    }
    crate::agent::publish::decision_log::emit(&mut decisions, &shared.events);
}

/// The `reneg_cap` decision for a connection the kernel stopped.
fn cap_decision(hit: &LimitHit, action: Outcome, peer: Counts) -> Decision {
    let mut d = Decision::new(Rule::RenegCap, hit.client.ip(), false);
    d.connection = Some(ConnRef {
        client: hit.client,
        server: hit.server,
    });
    d.counts = Counts {
        renegotiations_conn: Some(u64::from(hit.renegotiations_client)),
        ..peer
    };
    d.action = action;
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::ingest::record::tests::sample_flow;

    #[test]
    fn limit_hit_names_client_and_server() {
        use crate::agent::ingest::record::socket_addr;
        use monitor_common::flow::addr_bytes;
        let (key, mut value) = sample_flow();
        value.tracker.counters.renegotiations_client = 4;
        let ev = FlowEvent {
            kind: EVENT_LIMIT_HIT,
            value,
            key,
            ..FlowEvent::default()
        };
        let hit = LimitHit::of(&ev);
        let a = socket_addr(&addr_bytes(&key.addr_a), key.port_a);
        let b = socket_addr(&addr_bytes(&key.addr_b), key.port_b);
        let want = if value.client_is_a != 0 {
            (a, b)
        } else {
            (b, a)
        };
        assert_eq!((hit.client, hit.server), want);
        assert_eq!(hit.renegotiations_client, 4);
        let mut flipped = ev;
        flipped.value.client_is_a ^= 1;
        let hit2 = LimitHit::of(&flipped);
        assert_eq!((hit2.client, hit2.server), (hit.server, hit.client));
    }

    #[test]
    fn cap_resets_are_decisions() {
        let (key, mut value) = sample_flow();
        value.tracker.counters.renegotiations_client = 4;
        let hit = LimitHit::of_flow(&key, &value);
        let peer = Counts {
            renegotiations_1m: 4,
            ..Counts::default()
        };
        let d = cap_decision(&hit, Outcome::Reset, peer);
        let v = serde_json::to_value(&d).expect("json");
        assert_eq!(v["rule"], "reneg_cap");
        assert_eq!(v["action"], "reset");
        assert_eq!(v["peer"], hit.client.ip().to_string());
        assert_eq!(v["connection"]["server"], hit.server.to_string());
        assert_eq!(v["counts"]["renegotiations_conn"], 4);
        assert_eq!(v["counts"]["renegotiations_1m"], 4);
        assert_eq!(v["dry_run"], false);
    }

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
