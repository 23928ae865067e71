//! Flow statistics the flow table keeps for the metrics: per-flow counts,
//! the cumulative totals of departed flows (each counted once) and the
//! busiest peers.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use monitor_common::flow::{FlowKey, FlowValue};
use monitor_common::tracker::{FF_FIRST_HS_DONE, FF_RESUMED, FF_UNSYNCED};

/// How many peers `hsmon_peer_renegotiations` lists at most.
pub const TOP_PEERS: usize = 10;
/// How many departed flows [`Departed`] remembers, to recognise a repeated
/// close (both endpoints on this host, or an event and a sweep) of a flow.
pub const DEPARTED_MEMORY: usize = 16_384;
/// Counts taken from one flow, or summed over many. Each is a `u64` so sums
/// never wrap in practice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCounts {
    /// First handshakes that were full (not resumed): 0 or 1 per flow.
    pub handshakes_full: u64,
    /// First handshakes that resumed a session: 0 or 1 per flow.
    pub handshakes_resumed: u64,
    /// Completed handshakes after the first (honoured renegotiations).
    pub handshakes_renegotiation: u64,
    /// ClientHellos, cleartext and encrypted.
    pub client_hellos: u64,
    /// Client-initiated renegotiations.
    pub renegotiations_client: u64,
    /// Server-initiated renegotiations (HelloRequests).
    pub renegotiations_server: u64,
    /// Renegotiations the peer refused.
    pub renegotiations_refused: u64,
    /// Alert records, both directions.
    pub alerts: u64,
    /// TLS 1.3 post-handshake records of KeyUpdate size.
    pub keyupdate_like: u64,
    /// Flows a direction of which lost sync: 0 or 1 per flow.
    pub unsynced: u64,
}

/// Applies `$op` to every field of [`FlowCounts`].
macro_rules! each_count {
    ($a:expr, $b:expr, $op:expr) => {{
        let (a, b) = ($a, $b);
        FlowCounts {
            handshakes_full: $op(a.handshakes_full, b.handshakes_full),
            handshakes_resumed: $op(a.handshakes_resumed, b.handshakes_resumed),
            handshakes_renegotiation: $op(a.handshakes_renegotiation, b.handshakes_renegotiation),
            client_hellos: $op(a.client_hellos, b.client_hellos),
            renegotiations_client: $op(a.renegotiations_client, b.renegotiations_client),
            renegotiations_server: $op(a.renegotiations_server, b.renegotiations_server),
            renegotiations_refused: $op(a.renegotiations_refused, b.renegotiations_refused),
            alerts: $op(a.alerts, b.alerts),
            keyupdate_like: $op(a.keyupdate_like, b.keyupdate_like),
            unsynced: $op(a.unsynced, b.unsynced),
        }
    }};
}

impl FlowCounts {
    /// The counts of one flow's current state.
    pub fn of(value: &FlowValue) -> Self {
        let t = &value.tracker;
        let c = &t.counters;
        let first_done = t.flags & FF_FIRST_HS_DONE != 0;
        let resumed = t.flags & FF_RESUMED != 0;
        FlowCounts {
            handshakes_full: u64::from(first_done && !resumed),
            handshakes_resumed: u64::from(first_done && resumed),
            handshakes_renegotiation: u64::from(c.handshakes).saturating_sub(u64::from(first_done)),
            client_hellos: c.client_hellos.into(),
            renegotiations_client: c.renegotiations_client.into(),
            renegotiations_server: c.renegotiations_server.into(),
            renegotiations_refused: c.renegotiations_refused.into(),
            alerts: c.alerts.into(),
            keyupdate_like: c.keyupdate_like.into(),
            unsynced: u64::from(t.flags & FF_UNSYNCED != 0),
        }
    }

    /// Field-wise sum (saturating).
    pub fn plus(&self, other: &Self) -> Self {
        each_count!(self, other, u64::saturating_add)
    }

    /// Field-wise `self - other`, 0 where `other` is larger.
    pub fn minus(&self, other: &Self) -> Self {
        each_count!(self, other, u64::saturating_sub)
    }

    /// Field-wise maximum.
    pub fn max(&self, other: &Self) -> Self {
        each_count!(self, other, std::cmp::max)
    }
}

/// Identity of one flow: its key and `first_seen_ns`.
pub type FlowId = (FlowKey, u64);

/// The counts of every flow that has left the live set (closed or evicted),
/// each accumulated once.
///
/// A flow reported again (a second close, or a close after an eviction)
/// only adds what grew since its last report; a flow reported with an older
/// state adds nothing. The last [`DEPARTED_MEMORY`] flows are remembered for
/// this.
#[derive(Debug)]
pub struct Departed {
    totals: FlowCounts,
    seen: HashMap<FlowId, FlowCounts>,
    order: VecDeque<FlowId>,
    memory: usize,
}

impl Default for Departed {
    fn default() -> Self {
        Departed::new(DEPARTED_MEMORY)
    }
}

impl Departed {
    /// Nothing departed yet; remembers the last `memory` flows (at least 1).
    pub fn new(memory: usize) -> Self {
        Departed {
            totals: FlowCounts::default(),
            seen: HashMap::new(),
            order: VecDeque::new(),
            memory: memory.max(1),
        }
    }

    /// Is `id` one of the remembered departed flows?
    pub fn remembers(&self, id: &FlowId) -> bool {
        self.seen.contains_key(id)
    }

    /// Takes in a flow that left the live set with `counts`; returns whether
    /// it was new (not a repeat of a remembered flow).
    pub fn record(&mut self, id: FlowId, counts: FlowCounts) -> bool {
        if let Some(prev) = self.seen.get_mut(&id) {
            self.totals = self.totals.plus(&counts.minus(prev));
            *prev = prev.max(&counts);
            return false;
        }
        self.totals = self.totals.plus(&counts);
        self.seen.insert(id, counts);
        self.order.push_back(id);
        while self.order.len() > self.memory {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }

    /// What a live flow with `counts` adds on top of [`Departed::totals`]:
    /// all of it, or, for a flow already taken in (it reappeared after
    /// looking evicted), only what grew since.
    pub fn live_share(&self, id: &FlowId, counts: &FlowCounts) -> FlowCounts {
        match self.seen.get(id) {
            Some(prev) => counts.minus(prev),
            None => *counts,
        }
    }

    /// The accumulated counts.
    pub fn totals(&self) -> FlowCounts {
        self.totals
    }
}

/// What the flow table contributes to a scrape.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowMetrics {
    /// Cumulative counts over every flow ever tracked.
    pub counts: FlowCounts,
    /// Flows live in the kernel's flow map.
    pub live: usize,
    /// Closed (and evicted) flows the agent keeps.
    pub recently_closed: usize,
    /// Flows the full flow map dropped before they closed.
    pub evicted: u64,
    /// At most [`TOP_PEERS`] clients with their client-initiated
    /// renegotiations over live and recently closed flows, most first; only
    /// clients with at least one.
    pub top_peers: Vec<(IpAddr, u64)>,
}

/// The `k` largest entries of `per_peer` (ties broken by address), largest
/// first, zeros left out.
pub fn top_k(per_peer: HashMap<IpAddr, u64>, k: usize) -> Vec<(IpAddr, u64)> {
    let mut all: Vec<(IpAddr, u64)> = per_peer.into_iter().filter(|(_, n)| *n > 0).collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    all.truncate(k);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::agent::ingest::record::tests::sample_flow;

    fn id(port: u16, first_seen: u64) -> FlowId {
        let (mut key, _) = sample_flow();
        key.port_a = port;
        (key, first_seen)
    }

    fn renegs(n: u64) -> FlowCounts {
        FlowCounts {
            renegotiations_client: n,
            handshakes_full: 1,
            handshakes_renegotiation: n,
            ..FlowCounts::default()
        }
    }

    #[test]
    fn departed_counts_each_flow_once() {
        let mut d = Departed::new(100);
        assert!(d.record(id(1, 10), renegs(3)));
        // The same close again (both sockets on this host): nothing added.
        assert!(!d.record(id(1, 10), renegs(3)));
        assert_eq!(d.totals().renegotiations_client, 3);
        // Reported again with a later state: only the growth is added.
        assert!(!d.record(id(1, 10), renegs(5)));
        assert_eq!(d.totals().renegotiations_client, 5);
        // An older state after that: nothing.
        assert!(!d.record(id(1, 10), renegs(4)));
        assert_eq!(d.totals().renegotiations_client, 5);
        assert_eq!(d.totals().handshakes_full, 1);
        // Same 4-tuple, another connection: counted.
        assert!(d.record(id(1, 20), renegs(2)));
        assert_eq!(d.totals().renegotiations_client, 7);
        assert_eq!(d.totals().handshakes_full, 2);
    }

    #[test]
    fn departed_live_share_never_double_counts() {
        let mut d = Departed::new(100);
        d.record(id(1, 10), renegs(3));
        // Looked evicted, then seen live again with more: only the growth.
        assert_eq!(
            d.live_share(&id(1, 10), &renegs(4)).renegotiations_client,
            1
        );
        assert_eq!(
            d.live_share(&id(2, 10), &renegs(4)).renegotiations_client,
            4
        );
    }

    #[test]
    fn departed_memory_is_bounded() {
        let mut d = Departed::new(3);
        for port in 0..10 {
            d.record(id(port, 1), renegs(1));
        }
        assert_eq!(d.seen.len(), 3);
        assert_eq!(d.order.len(), 3);
        assert_eq!(d.totals().renegotiations_client, 10);
    }

    #[test]
    fn top_k_is_bounded_and_ordered() {
        let mut m = HashMap::new();
        for i in 0..30u8 {
            m.insert(IpAddr::from([10, 0, 0, i]), u64::from(i % 15));
        }
        let top = top_k(m, TOP_PEERS);
        assert_eq!(top.len(), TOP_PEERS);
        assert_eq!(top[0], (IpAddr::from([10, 0, 0, 14]), 14));
        assert_eq!(top[1], (IpAddr::from([10, 0, 0, 29]), 14));
        assert!(top.windows(2).all(|w| w[0].1 >= w[1].1));
        assert!(top_k(HashMap::from([(IpAddr::from([1, 2, 3, 4]), 0)]), 5).is_empty());
    }
}
