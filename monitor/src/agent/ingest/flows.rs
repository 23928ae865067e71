//! The agent's flow table: live flows come from the kernel's `FLOWS` map,
//! closed ones are copied into a bounded "recently closed" ring and deleted
//! from the map.
//!
//! A flow is identified by its key and `first_seen_ns`, so a 4-tuple reused
//! by a later connection is a different flow, and a flow closed twice (both
//! endpoints live on this host, so both sockets report the close) is kept
//! once, with the later of the two states.
//!
//! A live flow that disappears from the map without having closed was evicted
//! by the LRU map (it was full): it is kept like a closed flow, with the state
//! of the last sweep, reported as `evicted` and counted, never dropped
//! silently. A flow created and evicted between two sweeps is known from its
//! `EVENT_FLOW_OPENED` (with the state after its first segment); only if
//! that event was lost too (the ring buffer was full, `events_lost`) does
//! the agent not see it.
//!
//! Every flow that leaves the live set (closed or evicted) has its counts
//! taken into [`Departed`] once, so the Prometheus totals
//! ([`FlowTable::metrics`]) are the departed flows' final counts plus the
//! live flows' current ones, never counting a flow twice.
//!
//! The map is reached through [`FlowStore`], so all of this is tested on a
//! plain `BTreeMap` without root.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;

use anyhow::Result;
use monitor_common::flow::{FlowKey, FlowValue};
use monitor_common::tracker::FF_CLOSED;

use crate::agent::ingest::flow_stats::{top_k, Departed, FlowCounts, FlowMetrics};
use crate::agent::ingest::record::{ConnRecord, ConnState};

pub use crate::agent::kernel::maps::FlowStore;

/// Identity of one flow: the connection's key and when it was first seen.
type FlowId = (FlowKey, u64);

/// A bounded, de-duplicated ring of the most recently closed flows, oldest first.
#[derive(Debug)]
pub struct ClosedRing {
    capacity: usize,
    flows: VecDeque<(FlowKey, FlowValue)>,
    ids: HashSet<FlowId>,
}

/// What [`ClosedRing::insert`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inserted {
    /// A flow not seen before was added (possibly evicting the oldest).
    New,
    /// The flow was already there; its state was replaced by the newer one.
    Updated,
    /// The flow was already there with a newer state; nothing changed.
    Duplicate,
}

impl ClosedRing {
    /// An empty ring that keeps at most `capacity` flows (0 keeps none).
    pub fn new(capacity: usize) -> Self {
        ClosedRing {
            capacity,
            flows: VecDeque::with_capacity(capacity.min(1024)),
            ids: HashSet::new(),
        }
    }

    /// Adds a closed flow, or refreshes it when the same flow (key and
    /// `first_seen_ns`) is already kept: the state last seen later wins.
    pub fn insert(&mut self, key: FlowKey, value: FlowValue) -> Inserted {
        let id = (key, value.first_seen_ns);
        if self.ids.contains(&id) {
            // Duplicates arrive close together: search from the newest end.
            if let Some(slot) = self
                .flows
                .iter_mut()
                .rev()
                .find(|(k, v)| *k == key && v.first_seen_ns == value.first_seen_ns)
            {
                if newer(&value, &slot.1) {
                    slot.1 = value;
                    return Inserted::Updated;
                }
            }
            return Inserted::Duplicate;
        }
        if self.capacity == 0 {
            return Inserted::New;
        }
        while self.flows.len() >= self.capacity {
            if let Some((k, v)) = self.flows.pop_front() {
                self.ids.remove(&(k, v.first_seen_ns));
            }
        }
        self.ids.insert(id);
        self.flows.push_back((key, value));
        Inserted::New
    }

    /// Number of flows kept.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// No flow kept.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// The flows kept, oldest close first.
    pub fn iter(&self) -> impl Iterator<Item = &(FlowKey, FlowValue)> {
        self.flows.iter()
    }
}

/// Is `a` a strictly later state of the same flow than `b`?
fn newer(a: &FlowValue, b: &FlowValue) -> bool {
    let progress = |v: &FlowValue| {
        let c = &v.tracker.counters;
        let records: u64 = c.records.iter().map(|&r| u64::from(r)).sum();
        (v.last_seen_ns, records, c.alerts, v.tracker.flags)
    };
    a != b && progress(a) >= progress(b)
}

/// Counts the flow table keeps about itself (served by `/v1/stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Live flows at the last sweep.
    pub open: usize,
    /// Closes taken in (events and sweeps), duplicates included.
    pub closes_seen: u64,
    /// Closes that repeated a flow already closed.
    pub duplicate_closes: u64,
    /// Deleting a closed flow from the map failed.
    pub delete_errors: u64,
    /// Live flows that vanished from the map without closing (LRU eviction).
    pub evicted: u64,
}

/// Live flows in a [`FlowStore`] plus the recently closed ones.
pub struct FlowTable<S> {
    store: S,
    closed: ClosedRing,
    stats: TableStats,
    /// The live flows of the last sweep, to notice evictions.
    last_live: HashMap<FlowId, FlowValue>,
    /// Flows in `closed` that were evicted rather than closed.
    evicted: HashSet<FlowId>,
    /// Counts of every flow that left the live set, each taken once.
    departed: Departed,
    /// Flows that left the live set since the last [`FlowTable::take_departed`]
    /// (for the policy; bounded by [`MAX_PENDING_DEPARTED`]).
    pending_departed: Vec<(FlowKey, FlowValue)>,
}

/// At most this many departed flows wait for the policy between sweeps.
pub const MAX_PENDING_DEPARTED: usize = 65_536;

impl<S: FlowStore> FlowTable<S> {
    /// A table over `store` that keeps the last `keep_closed` closed flows.
    pub fn new(store: S, keep_closed: usize) -> Self {
        FlowTable {
            store,
            closed: ClosedRing::new(keep_closed),
            stats: TableStats::default(),
            last_live: HashMap::new(),
            evicted: HashSet::new(),
            departed: Departed::default(),
            pending_departed: Vec::new(),
        }
    }

    /// The flows that left the live set (closed or evicted) since the last
    /// call, repeats included.
    pub fn take_departed(&mut self) -> Vec<(FlowKey, FlowValue)> {
        std::mem::take(&mut self.pending_departed)
    }

    fn note_departed(&mut self, key: FlowKey, value: FlowValue) {
        if self.pending_departed.len() < MAX_PENDING_DEPARTED {
            self.pending_departed.push((key, value));
        }
    }

    /// Takes in a flow the kernel just created (`EVENT_FLOW_OPENED`): it
    /// joins the live set the next sweep compares against, so a flow the
    /// full LRU map evicts before that sweep is still reported `evicted`.
    /// A flow already known (live, or departed) is left alone.
    pub fn on_opened(&mut self, key: FlowKey, value: FlowValue) {
        let id = (key, value.first_seen_ns);
        if self.closed.ids.contains(&id) || self.departed.remembers(&id) {
            return;
        }
        self.last_live.entry(id).or_insert(value);
    }

    /// Takes in a newer state of a live flow (`EVENT_FLOW_PROGRESS`,
    /// `EVENT_LIMIT_HIT`): an eviction before the next sweep is then
    /// reported with it. Unknown flows are taken in as by
    /// [`FlowTable::on_opened`].
    pub fn on_progress(&mut self, key: FlowKey, value: FlowValue) {
        let id = (key, value.first_seen_ns);
        if self.closed.ids.contains(&id) || self.departed.remembers(&id) {
            return;
        }
        match self.last_live.get_mut(&id) {
            Some(old) => {
                if newer(&value, old) {
                    *old = value;
                }
            }
            None => {
                self.last_live.insert(id, value);
            }
        }
    }

    /// Takes in a flow that ended, found by a sweep (marked closed in the
    /// map): keeps its final state and deletes it from the store, unless the
    /// store already holds a newer connection with the same 4-tuple; the
    /// policy gets it with [`FlowTable::take_departed`].
    pub fn on_closed(&mut self, key: FlowKey, value: FlowValue) -> Inserted {
        self.note_departed(key, value);
        self.on_closed_event(key, value)
    }

    /// [`FlowTable::on_closed`] for an `EVENT_FLOW_CLOSED`, whose reader
    /// hands the flow to the policy itself (so it is not in
    /// [`FlowTable::take_departed`]).
    pub fn on_closed_event(&mut self, key: FlowKey, value: FlowValue) -> Inserted {
        self.stats.closes_seen += 1;
        self.departed
            .record((key, value.first_seen_ns), FlowCounts::of(&value));
        let inserted = self.closed.insert(key, value);
        if inserted != Inserted::New {
            self.stats.duplicate_closes += 1;
        }
        let same_flow = match self.store.lookup(&key) {
            Ok(Some(current)) => current.first_seen_ns == value.first_seen_ns,
            Ok(None) => false,
            Err(e) => {
                tracing::debug!("looking up a closed flow failed: {e:#}");
                false
            }
        };
        if same_flow {
            if let Err(e) = self.store.delete(&key) {
                self.stats.delete_errors += 1;
                tracing::debug!("deleting a closed flow failed: {e:#}");
            }
        }
        inserted
    }

    /// Reads the store once: flows marked closed (`FF_CLOSED`) move to the
    /// closed ring, the others are returned as the live flows.
    ///
    /// A flow live at the previous sweep that is neither in the store now nor
    /// closed meanwhile was evicted: it joins the closed ring, marked so.
    pub fn sweep(&mut self) -> Result<Vec<(FlowKey, FlowValue)>> {
        let mut live = Vec::new();
        for (key, value) in self.store.entries()? {
            if value.tracker.flags & FF_CLOSED != 0 {
                self.on_closed(key, value);
            } else {
                live.push((key, value));
            }
        }
        let now_live: HashMap<FlowId, FlowValue> = live
            .iter()
            .map(|(k, v)| ((*k, v.first_seen_ns), *v))
            .collect();
        let previous = std::mem::replace(&mut self.last_live, now_live);
        for ((key, first_seen), value) in previous {
            let id = (key, first_seen);
            if !self.last_live.contains_key(&id)
                && !self.closed.ids.contains(&id)
                && !self.departed.remembers(&id)
            {
                self.stats.evicted += 1;
                tracing::debug!("flow evicted from the full flow map: {key:?}");
                self.departed.record(id, FlowCounts::of(&value));
                self.note_departed(key, value);
                if self.closed.insert(key, value) == Inserted::New {
                    self.evicted.insert(id);
                }
            }
        }
        if self.evicted.len() > self.closed.len() {
            let kept = &self.closed.ids;
            self.evicted.retain(|id| kept.contains(id));
        }
        self.stats.open = live.len();
        Ok(live)
    }

    /// Reads the store without changing it or the table: the live flows,
    /// and the flows marked closed whose close neither an event nor a sweep
    /// has taken in yet (the pipeline's timer collects them).
    fn snapshot(&self) -> Result<Snapshot> {
        let mut snap = Snapshot::default();
        for (key, value) in self.store.entries()? {
            if value.tracker.flags & FF_CLOSED == 0 {
                snap.live.push((key, value));
            } else if !self.closed.ids.contains(&(key, value.first_seen_ns)) {
                snap.closing.push((key, value));
            }
        }
        Ok(snap)
    }

    /// Every connection: live ones (oldest first), then the recently closed
    /// (oldest close first, those still waiting in the store last). A read:
    /// the store and the table are left as they are.
    pub fn conns(&self, now_ns: u64) -> Result<Vec<ConnRecord>> {
        let Snapshot { mut live, closing } = self.snapshot()?;
        live.sort_by_key(|(k, v)| (v.first_seen_ns, *k));
        let open = live
            .iter()
            .map(|(k, v)| ConnRecord::from_flow(k, v, ConnState::Open, now_ns));
        let closed = self.closed.iter().map(|(k, v)| {
            let state = if self.evicted.contains(&(*k, v.first_seen_ns)) {
                ConnState::Evicted
            } else {
                ConnState::Closed
            };
            ConnRecord::from_flow(k, v, state, now_ns)
        });
        let closing = closing
            .iter()
            .map(|(k, v)| ConnRecord::from_flow(k, v, ConnState::Closed, now_ns));
        Ok(open.chain(closed).chain(closing).collect())
    }

    /// Live flows in the store now (a read, like [`FlowTable::conns`]).
    pub fn live_count(&self) -> Result<usize> {
        Ok(self.snapshot()?.live.len())
    }

    /// The table's own counters.
    pub fn stats(&self) -> TableStats {
        self.stats
    }

    /// Number of recently closed flows kept.
    pub fn closed_len(&self) -> usize {
        self.closed.len()
    }

    /// What a metrics scrape needs (a read: nothing changes): cumulative
    /// counts (departed flows plus live and not yet collected closed ones,
    /// each flow once), the table's sizes, and the `top` clients by
    /// client-initiated renegotiations over live and recently closed flows.
    pub fn metrics(&self, top: usize) -> Result<FlowMetrics> {
        let Snapshot { live, closing } = self.snapshot()?;
        let mut counts = self.departed.totals();
        let mut per_peer: HashMap<IpAddr, u64> = HashMap::new();
        for (key, value) in live.iter().chain(closing.iter()) {
            let own = FlowCounts::of(value);
            counts = counts.plus(&self.departed.live_share(&(*key, value.first_seen_ns), &own));
            *per_peer.entry(client_ip(key, value)).or_default() += own.renegotiations_client;
        }
        for (key, value) in self.closed.iter() {
            *per_peer.entry(client_ip(key, value)).or_default() +=
                u64::from(value.tracker.counters.renegotiations_client);
        }
        Ok(FlowMetrics {
            counts,
            live: live.len(),
            recently_closed: (self.closed.len() + closing.len()).min(self.closed.capacity),
            evicted: self.stats.evicted,
            top_peers: top_k(per_peer, top),
        })
    }
}

/// One read of the store: see [`FlowTable::snapshot`].
#[derive(Default)]
struct Snapshot {
    live: Vec<(FlowKey, FlowValue)>,
    closing: Vec<(FlowKey, FlowValue)>,
}

/// The address of a flow's client (the endpoint that sent the first ClientHello).
fn client_ip(key: &FlowKey, value: &FlowValue) -> IpAddr {
    crate::agent::ingest::record::client_server_addrs(key, value)
        .0
        .ip()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::ingest::record::tests::sample_flow;
    use std::collections::BTreeMap;

    /// A `FlowStore` on a `BTreeMap`.
    #[derive(Default)]
    struct MemStore(BTreeMap<FlowKey, FlowValue>);

    impl FlowStore for MemStore {
        fn entries(&self) -> Result<Vec<(FlowKey, FlowValue)>> {
            Ok(self.0.iter().map(|(k, v)| (*k, *v)).collect())
        }
        fn lookup(&self, key: &FlowKey) -> Result<Option<FlowValue>> {
            Ok(self.0.get(key).copied())
        }
        fn delete(&mut self, key: &FlowKey) -> Result<()> {
            self.0.remove(key);
            Ok(())
        }
    }

    fn flow(port: u16, first_seen_ns: u64) -> (FlowKey, FlowValue) {
        let (mut key, mut value) = sample_flow();
        key.port_a = port;
        value.first_seen_ns = first_seen_ns;
        value.last_seen_ns = first_seen_ns + 10;
        (key, value)
    }

    #[test]
    fn ring_is_bounded_and_keeps_the_newest() {
        let mut ring = ClosedRing::new(3);
        for i in 0..10u16 {
            let (k, v) = flow(1000 + i, 1 + u64::from(i));
            assert_eq!(ring.insert(k, v), Inserted::New);
            assert!(ring.len() <= 3);
        }
        let ports: Vec<u16> = ring.iter().map(|(k, _)| k.port_a).collect();
        assert_eq!(ports, [1007, 1008, 1009]);
        assert_eq!(ring.ids.len(), 3);
        // An evicted flow closing again is new again (its id was forgotten).
        let (k, v) = flow(1000, 1);
        assert_eq!(ring.insert(k, v), Inserted::New);
        assert_eq!(ring.len(), 3);
    }

    #[test]
    fn a_live_flow_that_vanishes_without_closing_is_reported_evicted() {
        let mut store = MemStore::default();
        let (k1, v1) = flow(1, 100);
        let (k2, mut v2) = flow(2, 200);
        store.0.insert(k1, v1);
        store.0.insert(k2, v2);
        let mut table = FlowTable::new(store, 10);
        assert_eq!(table.sweep().expect("sweep").len(), 2);
        // k1 is evicted by the kernel; k2 closes normally.
        table.store.0.remove(&k1);
        v2.tracker.flags |= FF_CLOSED;
        table.on_closed(k2, v2);
        assert_eq!(table.sweep().expect("sweep").len(), 0);
        assert_eq!(table.stats().evicted, 1);
        let conns = table.conns(1_000).expect("conns");
        let states: Vec<(u16, ConnState)> = conns
            .iter()
            .map(|c| (c.client.port().min(c.server.port()), c.state))
            .collect();
        assert!(states.contains(&(1, ConnState::Evicted)), "{states:?}");
        assert!(states.contains(&(2, ConnState::Closed)), "{states:?}");
        // Nothing is counted twice on later sweeps.
        table.sweep().expect("sweep");
        assert_eq!(table.stats().evicted, 1);
    }

    #[test]
    fn a_flow_opened_and_evicted_between_sweeps_is_reported_evicted() {
        let mut table = FlowTable::new(MemStore::default(), 10);
        table.sweep().expect("sweep");
        // Opened (the event arrives) and evicted before the next sweep: the
        // store never shows it.
        let (k1, v1) = flow(1, 100);
        table.on_opened(k1, v1);
        // Opened and closed before the sweep: closed, not evicted.
        let (k2, mut v2) = flow(2, 200);
        table.on_opened(k2, v2);
        v2.tracker.flags |= FF_CLOSED;
        table.on_closed(k2, v2);
        // Opened and still live at the sweep: live.
        let (k3, v3) = flow(3, 300);
        table.on_opened(k3, v3);
        table.store.0.insert(k3, v3);
        assert_eq!(table.sweep().expect("sweep").len(), 1);
        assert_eq!(table.stats().evicted, 1);
        let departed = table.take_departed();
        assert!(
            departed.iter().any(|(k, _)| *k == k1),
            "evicted flow departed"
        );
        // A late open event of a departed flow does not bring it back.
        table.on_opened(k1, v1);
        table.on_opened(k2, v2);
        table.sweep().expect("sweep");
        assert_eq!(table.stats().evicted, 1);
        let conns = table.conns(1_000).expect("conns");
        let states: Vec<(u16, ConnState)> = conns
            .iter()
            .map(|c| (c.client.port().min(c.server.port()), c.state))
            .collect();
        assert!(states.contains(&(1, ConnState::Evicted)), "{states:?}");
        assert!(states.contains(&(2, ConnState::Closed)), "{states:?}");
        assert!(states.contains(&(3, ConnState::Open)), "{states:?}");
    }

    #[test]
    fn closes_read_from_events_are_not_handed_to_the_sweep_again() {
        let mut table = FlowTable::new(MemStore::default(), 10);
        let (k1, v1) = flow(1, 100);
        let (k2, mut v2) = flow(2, 200);
        table.on_opened(k1, v1);
        table.on_opened(k2, v2);
        // A progress event: an eviction is reported with the newer state.
        let mut v1b = with_renegs(v1, 2);
        table.on_progress(k1, v1b);
        table.on_progress(k1, v1);
        v1b.tracker.flags |= FF_CLOSED;
        // k1's close comes as an event (the reader tells the policy); k2 is
        // found closed by the sweep (the sweep tells the policy).
        table.on_closed_event(k1, v1b);
        v2.tracker.flags |= FF_CLOSED;
        table.store.0.insert(k2, v2);
        table.sweep().expect("sweep");
        let departed: Vec<u16> = table
            .take_departed()
            .iter()
            .map(|(k, _)| k.port_a)
            .collect();
        assert_eq!(departed, [2]);
        // Each flow counted once, k1 with the state of its close event.
        let want = 2 + u64::from(v2.tracker.counters.renegotiations_client);
        assert_eq!(renegs_total(&mut table), want);
    }

    #[test]
    fn ring_of_zero_keeps_nothing() {
        let mut ring = ClosedRing::new(0);
        let (k, v) = flow(1, 1);
        ring.insert(k, v);
        assert_eq!(ring.len(), 0);
    }

    #[test]
    fn ring_dedupes_by_key_and_first_seen() {
        let mut ring = ClosedRing::new(10);
        let (k, v) = flow(1, 100);
        assert_eq!(ring.insert(k, v), Inserted::New);
        // The same flow, reported again with a later state: updated in place.
        let mut later = v;
        later.last_seen_ns += 5;
        later.tracker.counters.alerts += 1;
        assert_eq!(ring.insert(k, later), Inserted::Updated);
        // Reported again with the older state: ignored.
        assert_eq!(ring.insert(k, v), Inserted::Duplicate);
        assert_eq!(ring.len(), 1);
        assert_eq!(
            ring.iter().next().map(|(_, v)| v.tracker.counters.alerts),
            Some(2)
        );
        // Same 4-tuple, different connection (first_seen differs): a new flow.
        let (k2, v2) = flow(1, 200);
        assert_eq!(k2, k);
        assert_eq!(ring.insert(k2, v2), Inserted::New);
        assert_eq!(ring.len(), 2);
    }

    #[test]
    fn close_deletes_only_the_same_flow() {
        let mut store = MemStore::default();
        let (k, v) = flow(1, 100);
        store.0.insert(k, v);
        let mut table = FlowTable::new(store, 10);
        table.on_closed(k, v);
        assert!(table.store.0.is_empty());

        // The 4-tuple was reused by a newer connection: keep it in the map.
        let (k2, v2) = flow(2, 300);
        table.store.0.insert(k2, v2);
        let mut old = v2;
        old.first_seen_ns = 200;
        table.on_closed(k2, old);
        assert_eq!(table.store.0.len(), 1);
        assert_eq!(table.closed_len(), 2);
    }

    fn with_renegs(mut v: FlowValue, n: u32) -> FlowValue {
        v.tracker.counters.renegotiations_client = n;
        v.tracker.counters.alerts = n;
        v.last_seen_ns += u64::from(n);
        v
    }

    fn renegs_total(table: &mut FlowTable<MemStore>) -> u64 {
        table
            .metrics(10)
            .expect("metrics")
            .counts
            .renegotiations_client
    }

    #[test]
    fn metrics_count_a_flow_once_from_live_to_closed() {
        let mut store = MemStore::default();
        let (k, v) = flow(1, 100);
        store.0.insert(k, with_renegs(v, 2));
        let mut table = FlowTable::new(store, 10);
        // Seen live with 2.
        assert_eq!(renegs_total(&mut table), 2);
        assert_eq!(table.metrics(10).expect("metrics").live, 1);
        // Closes with 3: the close event, then the same close from the other
        // socket, then the sweep finding it marked closed in the map.
        let mut closed = with_renegs(v, 3);
        closed.tracker.flags |= FF_CLOSED;
        table.store.0.insert(k, closed);
        table.on_closed(k, closed);
        table.on_closed(k, closed);
        assert_eq!(renegs_total(&mut table), 3);
        // An older state of the same close arriving late adds nothing.
        let mut stale = with_renegs(v, 2);
        stale.tracker.flags |= FF_CLOSED;
        table.on_closed(k, stale);
        assert_eq!(renegs_total(&mut table), 3);
        let m = table.metrics(10).expect("metrics");
        assert_eq!((m.live, m.recently_closed), (0, 1));
        // The same 4-tuple reused by a new connection counts on its own.
        let (_, v2) = flow(1, 500);
        table.store.0.insert(k, with_renegs(v2, 1));
        assert_eq!(renegs_total(&mut table), 4);
        // Totals never go down, whatever the ring forgets.
        for i in 0..20u16 {
            let (k3, v3) = flow(100 + i, 1_000 + u64::from(i));
            let mut v3 = with_renegs(v3, 1);
            v3.tracker.flags |= FF_CLOSED;
            table.on_closed(k3, v3);
        }
        assert_eq!(renegs_total(&mut table), 24);
        assert_eq!(table.metrics(10).expect("metrics").recently_closed, 10);
    }

    #[test]
    fn metrics_count_an_evicted_flow_once() {
        let mut store = MemStore::default();
        let (k, v) = flow(1, 100);
        store.0.insert(k, with_renegs(v, 5));
        let mut table = FlowTable::new(store, 10);
        assert_eq!(renegs_total(&mut table), 5);
        // The pipeline's timer sweeps while it is live, and after the
        // kernel evicted it: the second sweep notices the eviction.
        table.sweep().expect("sweep");
        table.store.0.remove(&k);
        assert_eq!(table.metrics(10).expect("metrics").evicted, 0);
        table.sweep().expect("sweep");
        assert_eq!(renegs_total(&mut table), 5);
        assert_eq!(table.metrics(10).expect("metrics").evicted, 1);
        // If it shows up again (a walk that missed it), only growth counts.
        table.store.0.insert(k, with_renegs(v, 6));
        assert_eq!(renegs_total(&mut table), 6);
        let mut closed = with_renegs(v, 6);
        closed.tracker.flags |= FF_CLOSED;
        table.on_closed(k, closed);
        assert_eq!(renegs_total(&mut table), 6);
    }

    #[test]
    fn metrics_top_peers_from_live_and_closed() {
        let mut store = MemStore::default();
        let (k1, v1) = flow(1, 100);
        let (mut k2, v2) = flow(2, 200);
        k2.addr_a[3] ^= u32::from_ne_bytes([0, 0, 0, 7]);
        store.0.insert(k1, with_renegs(v1, 2));
        store.0.insert(k2, with_renegs(v2, 1));
        let mut table = FlowTable::new(store, 10);
        let (k3, v3) = flow(3, 300);
        let mut v3 = with_renegs(v3, 4);
        v3.tracker.flags |= FF_CLOSED;
        table.on_closed(k3, v3);
        let m = table.metrics(10).expect("metrics");
        let ip1 = client_ip(&k1, &v1);
        let ip2 = client_ip(&k2, &v2);
        assert_ne!(ip1, ip2);
        assert_eq!(m.top_peers, vec![(ip1, 6), (ip2, 1)]);
        assert_eq!(table.metrics(1).expect("metrics").top_peers, vec![(ip1, 6)]);
    }

    #[test]
    fn reads_never_change_the_table() {
        let mut store = MemStore::default();
        let (k1, v1) = flow(1, 100);
        let (k2, v2) = flow(2, 50);
        let mut v2 = with_renegs(v2, 3);
        v2.tracker.flags |= FF_CLOSED;
        store.0.insert(k1, with_renegs(v1, 2));
        store.0.insert(k2, v2);
        let mut table = FlowTable::new(store, 10);
        let first = (
            table.conns(1_000).expect("conns"),
            table.metrics(10).expect("metrics"),
        );
        let second = (
            table.conns(1_000).expect("conns"),
            table.metrics(10).expect("metrics"),
        );
        // Reads leave the store and the table alone, and agree with each other.
        assert_eq!(first, second);
        assert_eq!(table.store.0.len(), 2);
        assert_eq!(table.closed_len(), 0);
        assert_eq!(table.stats().closes_seen, 0);
        assert!(table.take_departed().is_empty());
        assert_eq!(table.live_count().expect("live"), 1);
        // The flow not yet collected already shows as closed, counted once.
        let states: Vec<ConnState> = first.0.iter().map(|c| c.state).collect();
        assert_eq!(states, [ConnState::Open, ConnState::Closed]);
        assert_eq!((first.1.live, first.1.recently_closed), (1, 1));
        assert_eq!(first.1.counts.renegotiations_client, 5);
        // The timer's sweep collects it; what the reads show stays the same.
        table.sweep().expect("sweep");
        assert_eq!(table.store.0.len(), 1);
        assert_eq!(table.closed_len(), 1);
        assert_eq!(table.take_departed().len(), 1);
        assert_eq!(table.conns(1_000).expect("conns"), first.0);
        assert_eq!(table.metrics(10).expect("metrics"), first.1);
    }

    #[test]
    fn sweep_moves_closed_flows() {
        let mut store = MemStore::default();
        let (k1, v1) = flow(1, 100);
        let (k2, mut v2) = flow(2, 50);
        v2.tracker.flags |= FF_CLOSED;
        store.0.insert(k1, v1);
        store.0.insert(k2, v2);
        let mut table = FlowTable::new(store, 10);
        let live = table.sweep().expect("sweep");
        assert_eq!(live.len(), 1);
        assert_eq!(table.stats().open, 1);
        assert_eq!(table.closed_len(), 1);
        assert_eq!(table.store.0.len(), 1);

        // The event for the same close arrives after the sweep: deduped.
        assert_eq!(table.on_closed(k2, v2), Inserted::Duplicate);
        assert_eq!(table.stats().duplicate_closes, 1);
        assert_eq!(table.closed_len(), 1);

        let conns = table.conns(1_000_000_000).expect("conns");
        assert_eq!(conns.len(), 2);
        assert_eq!(conns[0].state, ConnState::Open);
        assert_eq!(conns[0].client.port(), 1);
        assert_eq!(conns[1].state, ConnState::Closed);
    }
}
