//! The per-connection rules, fed by the events and the flow sweep:
//!
//! - `handshake_timeout`: the first handshake not done long after the first
//!   ClientHello. Only for connections whose handshake this agent can time:
//!   the flow was first seen at its ClientHello (`client_hellos` > 0), the
//!   server answered (its direction carried bytes: a forged one-segment
//!   "ClientHello" from a spoofed source never gets an answer, so an
//!   eviction flood produces no decisions), and it began after this agent
//!   started ([`Conns::adopt_flows_before`]: a connection that predates the
//!   agent or its restart is adopted, never timed from the restart).
//! - `keyupdates_per_second`: `keyupdate_streaked` records (the client's
//!   KeyUpdate-size records in streaks: no record of another size in
//!   either direction between them, from the 4th on; see
//!   [`monitor_common::tracker::KEYUPDATE_STREAK_MIN`]) added since a
//!   baseline observation, over at least one second; the baseline moves to
//!   the current observation once it is a second old, so the rate is taken
//!   over about one second whatever the observations' spacing (events every
//!   8 KeyUpdate-size records, a sweep every second). A KeyUpdate flood is
//!   one streak; an application that mixes sizes in either direction, or
//!   whose 5-byte messages come from the server, never counts. An
//!   application exchanging only 5-byte messages looks exactly like a
//!   flood, so the rule's default action is `alert`.
//! - in dry-run `reneg_cap` (the kernel does not enforce the cap then, so
//!   the agent notices a connection over it and reports `would_reset`).
//!
//! Each rule fires at most once per connection.

use monitor_common::flow::{FlowKey, FlowValue};
use monitor_common::tracker::{DIR_NEW, FF_CLOSED, FF_FIRST_HS_DONE, FF_UNSYNCED, SERVER};

use super::{endpoints, ConnRef, Counts, HashMap, HashSet, Rule, Settings, SEC};

type FlowId = (FlowKey, u64);

const FIRED_TIMEOUT: u8 = 1;
const FIRED_KEYUPDATES: u8 = 2;
const FIRED_CAP: u8 = 4;

/// What is remembered of one live connection.
#[derive(Clone, Copy, Debug, Default)]
struct Watch {
    /// `keyupdate_streaked` at the baseline observation.
    keyupdates: u32,
    /// When that was read (monotonic ns).
    at: u64,
    /// When the connection was last observed (monotonic ns).
    seen: u64,
    /// `FIRED_*` bits.
    fired: u8,
}

/// A connection that broke a per-connection rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnHit {
    /// The rule.
    pub rule: Rule,
    /// The connection.
    pub conn: ConnRef,
    /// Its counts (the per-connection fields only).
    pub counts: Counts,
}

/// The live connections' watch state.
#[derive(Debug, Default)]
pub struct Conns {
    watch: HashMap<FlowId, Watch>,
    /// Flows first seen before this (monotonic ns) predate the agent: never
    /// subject to `handshake_timeout`.
    adopt_before: u64,
}

impl Conns {
    /// Flows first seen before `now` (the agent's start) are adopted: their
    /// handshake began before this agent watched, so `handshake_timeout`
    /// never applies to them.
    pub fn adopt_flows_before(&mut self, now: u64) {
        self.adopt_before = now;
    }

    /// Checks the live flows of a sweep taken at `now`, and the flows that
    /// departed since the last sweep (only the dry-run cap applies to
    /// those: they cannot be reset); forgets flows no longer live (unless
    /// an event observed them after `now`).
    pub fn check(
        &mut self,
        now: u64,
        live: &[&(FlowKey, FlowValue)],
        departed: &[&(FlowKey, FlowValue)],
        s: &Settings,
    ) -> Vec<ConnHit> {
        let mut hits = Vec::new();
        let mut live_ids = HashSet::default();
        live_ids.reserve(live.len());
        for (k, v) in live {
            live_ids.insert((*k, v.first_seen_ns));
            self.check_live(now, k, v, s, &mut hits);
        }
        for (k, v) in departed {
            self.depart(k, v, s, &mut hits);
        }
        self.watch
            .retain(|id, w| w.seen > now || live_ids.contains(id));
        hits
    }

    /// Checks one live connection's state observed at `now` (by a sweep or
    /// an event).
    pub fn check_live(
        &mut self,
        now: u64,
        k: &FlowKey,
        v: &FlowValue,
        s: &Settings,
        hits: &mut Vec<ConnHit>,
    ) {
        let id = (*k, v.first_seen_ns);
        let w = self.watch.entry(id).or_insert(Watch {
            keyupdates: 0,
            at: v.first_seen_ns.min(now),
            seen: now,
            fired: 0,
        });
        w.seen = w.seen.max(now);
        let t = &v.tracker;
        let age = now.saturating_sub(v.first_seen_ns);
        let timeout = u64::try_from(s.handshake_timeout.as_nanos()).unwrap_or(u64::MAX);
        // The handshake's start was seen by this agent's programs, and the
        // server answered: only then is the handshake's time known and the
        // connection real.
        let timed = v.first_seen_ns >= self.adopt_before
            && t.counters.client_hellos > 0
            && t.dirs[SERVER].status != DIR_NEW;
        if timeout > 0
            && timed
            && w.fired & FIRED_TIMEOUT == 0
            && t.flags & (FF_FIRST_HS_DONE | FF_CLOSED | FF_UNSYNCED) == 0
            && age > timeout
        {
            w.fired |= FIRED_TIMEOUT;
            hits.push(ConnHit {
                rule: Rule::HandshakeTimeout,
                conn: endpoints(k, v),
                counts: Counts {
                    handshake_ms: Some(age / 1_000_000),
                    ..Counts::default()
                },
            });
        }
        let ku = t.counters.keyupdate_streaked;
        let grown = u64::from(ku.saturating_sub(w.keyupdates));
        let elapsed = now.saturating_sub(w.at);
        let span = elapsed.max(SEC);
        let limit = u64::from(s.keyupdates_per_second);
        // More than `limit` streaked records per second over the span (at
        // least 1 s).
        if limit > 0
            && w.fired & FIRED_KEYUPDATES == 0
            && u128::from(grown) * u128::from(SEC) > u128::from(limit) * u128::from(span)
        {
            w.fired |= FIRED_KEYUPDATES;
            hits.push(ConnHit {
                rule: Rule::KeyupdatesPerSecond,
                conn: endpoints(k, v),
                counts: Counts {
                    keyupdates_1s: Some(grown * SEC / span),
                    ..Counts::default()
                },
            });
        }
        if elapsed >= SEC || ku < w.keyupdates {
            w.keyupdates = ku;
            w.at = now;
        }
        if let Some(hit) = over_cap(k, v, w, s) {
            hits.push(hit);
        }
    }

    /// A connection left: only the dry-run cap applies; its watch is
    /// forgotten.
    pub fn depart(&mut self, k: &FlowKey, v: &FlowValue, s: &Settings, hits: &mut Vec<ConnHit>) {
        let mut w = self
            .watch
            .remove(&(*k, v.first_seen_ns))
            .unwrap_or_default();
        if let Some(hit) = over_cap(k, v, &mut w, s) {
            hits.push(hit);
        }
    }

    /// No connection is watched.
    pub fn is_empty(&self) -> bool {
        self.watch.is_empty()
    }

    /// Connections watched now.
    #[cfg(test)]
    pub fn watched(&self) -> usize {
        self.watch.len()
    }
}

/// In dry-run only (otherwise the kernel enforces the cap): the flow's
/// client went over the renegotiation cap.
fn over_cap(k: &FlowKey, v: &FlowValue, w: &mut Watch, s: &Settings) -> Option<ConnHit> {
    let renegs = v.tracker.counters.renegotiations_client;
    if !s.dry_run || s.reneg_cap == 0 || renegs <= s.reneg_cap || w.fired & FIRED_CAP != 0 {
        return None;
    }
    w.fired |= FIRED_CAP;
    Some(ConnHit {
        rule: Rule::RenegCap,
        conn: endpoints(k, v),
        counts: Counts {
            renegotiations_conn: Some(u64::from(renegs)),
            ..Counts::default()
        },
    })
}
