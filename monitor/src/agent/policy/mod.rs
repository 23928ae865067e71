//! The policy: per-connection rules ([`conn`]: handshake timeout, KeyUpdate
//! rate, the renegotiation cap in dry-run), per-peer sliding windows of new
//! handshakes (10 s) and client renegotiation attempts (60 s), and the same
//! windows summed per client prefix (off by default). A rule that fires takes
//! its action: `alert`, `reset` (the offending connection), `ban` (the peer,
//! or for a prefix rule the prefix, with escalation), or in dry-run
//! `would_reset` / `would_ban`.
//!
//! Pure: bans and resets are reached through [`Enforcer`], so everything here
//! is tested without root.
//!
//! # Two feeds, one observation
//!
//! - **Events** ([`Policy::on_events`]): every ring-buffer event (flow
//!   opened, flow progress, limit hit: a live flow; flow closed: a departed
//!   one) carries the flow's state. The policy takes it in and evaluates at
//!   once the rules of that flow's peer and of that connection, so a ban or
//!   reset follows the segment that crossed a threshold by the event
//!   reader's wake-up, not by the next sweep.
//! - **The sweep** ([`Policy::step`], every second): the live flows read from
//!   the kernel's map and the flows that left the live set without an event
//!   the agent saw (found closed in the map, or evicted). It is the fallback
//!   for lost events and the clock of the time-based rules (handshake
//!   timeout, windows emptying).
//!
//! Both feed the same per-flow observation: what counts is the growth
//! relative to the last observation of that flow, whichever feed made it, so
//! an event and a later sweep of the same state count once.
//!
//! - A flow counts as one handshake of its client, at its `first_seen_ns`,
//!   the first time the policy sees it (live or departed); a departed flow is
//!   remembered (bounded) so a repeated close is not counted again.
//! - Renegotiations are the growth of `renegotiations_client` per flow since
//!   its previous observation, plus what a flow added before it left.
//! - A window rule fires when the count goes above its threshold, once; it
//!   fires again only after the count fell back to the threshold or below. A
//!   peer (prefix) with a ban in force is never banned again.
//! - The allowlist wins: an allowlisted peer is never banned or reset
//!   (`not_banned_allowlisted`, `not_reset_allowlisted`) and is left out of
//!   its prefix's sums; a prefix that overlaps the allowlist is never banned.
//! - The prefix rules sum every peer of a prefix, so they are evaluated on
//!   the sweep only (once a second), not per event.
//!
//! # Cost
//!
//! Per event: a few lookups in `foldhash` maps (seeded per process) and
//! O(1) window updates: windows are 100 ms buckets with a running total.
//! Only peers that changed, and peers currently above a threshold, are
//! evaluated on a sweep; idle peers are dropped by a full pass at most every
//! 10 s.

pub mod conn;
pub mod history;
mod settings;
mod windows;

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::Duration;

use monitor_common::flow::{FlowKey, FlowValue};

use crate::agent::ingest::record::client_server_addrs;
use crate::api::cidr::Cidr;
pub use crate::api::decisions::{Action, ConnRef, Counts, Decision, Outcome};
pub use crate::api::peers::PeerRecord;
pub use settings::{Rule, Settings};
use windows::{bit, Group, History, Peer, Sum};

/// A `HashMap` with `foldhash` (fast, and seeded per process: peers and
/// flows are keyed by addresses and ports a remote party chooses).
pub type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// A `HashSet` with `foldhash` (see [`HashMap`]).
pub type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

const SEC: u64 = 1_000_000_000;
/// The handshake window.
pub const HANDSHAKE_WINDOW_NS: u64 = 10 * SEC;
/// The renegotiation window.
pub const RENEG_WINDOW_NS: u64 = 60 * SEC;
/// Repeat offences escalate within this long.
pub const REPEAT_WINDOW_NS: u64 = 24 * 3600 * SEC;
/// Departed flows remembered to recognise a repeated close.
const DEPARTED_MEMORY: usize = 16_384;
/// Window entries this close to the newest one are merged into it (a window
/// ends up to this much early for them: 1/100 of the handshake window).
const BUCKET_NS: u64 = 100_000_000;
/// How often a sweep visits every peer to drop the idle ones.
const GC_EVERY_NS: u64 = HANDSHAKE_WINDOW_NS;

/// What the policy needs of the enforcement side.
pub trait Enforcer {
    /// `target` overlaps the allowlist.
    fn allowed(&self, target: &Cidr) -> bool;
    /// Bans `target` for `ttl`.
    fn ban(&mut self, target: Cidr, ttl: Duration, reason: &str) -> Result<(), String>;
    /// Resets the connection: `Ok(true)` reset, `Ok(false)` it was already
    /// gone.
    fn reset(&mut self, conn: &ConnRef) -> Result<bool, String>;
}

impl Decision {
    /// A decision about `peer` under `rule`, its action not taken yet
    /// (`alert`).
    pub fn new(rule: Rule, peer: IpAddr, dry_run: bool) -> Self {
        Decision {
            time: String::new(),
            rule: rule.name(),
            peer,
            prefix: None,
            connection: None,
            counts: Counts::default(),
            action: Outcome::Alert,
            ttl_s: None,
            dry_run,
        }
    }
}

/// A flow's identity (its key and `first_seen_ns`) as a 64-bit seeded hash:
/// the policy's flow maps hold 8-byte keys instead of 44 bytes, so the
/// departed-flow memory stays in cache. Two flows share a fingerprint with
/// probability about n^2 / 2^65 (1e-10 for 65,536 flows); the seed is per
/// process, so a remote party cannot aim for a collision.
type Fp = u64;

/// Hashes a [`Fp`] (already a seeded hash) as itself.
#[derive(Clone, Copy, Debug, Default)]
struct FpHasher(u64);

impl std::hash::Hasher for FpHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A map keyed by [`Fp`].
type FpMap<V> = std::collections::HashMap<Fp, V, std::hash::BuildHasherDefault<FpHasher>>;

/// The last observation of a live flow.
#[derive(Clone, Copy, Debug)]
struct Seen {
    /// `renegotiations_client` (the highest seen).
    renegs: u32,
    /// When (monotonic ns).
    at: u64,
}

/// One flow's state handed to [`Policy::on_events`] (what ingest observed).
pub use crate::agent::ingest::record::FlowUpdate;

/// The policy's state.
#[derive(Debug)]
pub struct Policy {
    settings: Settings,
    peers: HashMap<IpAddr, Peer>,
    prefixes: HashMap<Cidr, Group>,
    conns: conn::Conns,
    /// Live flows' last observation.
    live: FpMap<Seen>,
    /// Departed flows already taken in, with their last count.
    departed: FpMap<u32>,
    departed_order: VecDeque<Fp>,
    /// Seeds the flows' [`Fp`]s.
    fp_seed: foldhash::fast::RandomState,
    /// Peers changed since their last evaluation.
    dirty: Vec<IpAddr>,
    /// Peers with a window rule above its threshold (evaluated every sweep,
    /// so the rule re-arms when the window empties).
    over_peers: HashSet<IpAddr>,
    /// The latest time the policy was given.
    now: u64,
    /// When the last full pass over the peers ran.
    last_gc: u64,
}

/// A flow's client and server endpoints.
pub fn endpoints(key: &FlowKey, value: &FlowValue) -> ConnRef {
    let (client, server) = client_server_addrs(key, value);
    ConnRef {
        client,
        server,
        socket: crate::api::decisions::SocketCookies::of_key(key),
    }
}

/// What a ban would cover: the prefix, its ban history, and the reason text.
struct Target<'a> {
    cidr: Cidr,
    history: &'a mut History,
    reason: String,
}

/// Takes `action` for a decision `d` already filled in (rule, peer, counts,
/// connection); returns false when nothing is to be reported (a ban on a
/// target whose ban is still in force).
fn act(
    s: &Settings,
    now: u64,
    action: Action,
    target: Target<'_>,
    d: &mut Decision,
    enforcer: &mut impl Enforcer,
) -> bool {
    let Target {
        cidr: target,
        history,
        reason,
    } = target;
    match action {
        Action::Alert => d.action = Outcome::Alert,
        Action::Reset => {
            let Some(conn) = d.connection.clone() else {
                d.action = Outcome::Alert;
                return true;
            };
            if enforcer.allowed(&Cidr::host(conn.client.ip())) {
                d.action = Outcome::NotResetAllowlisted;
            } else if s.dry_run {
                d.action = Outcome::WouldReset;
            } else {
                d.action = match enforcer.reset(&conn) {
                    Ok(true) => Outcome::Reset,
                    Ok(false) => Outcome::AlreadyClosed,
                    Err(e) => {
                        tracing::warn!(client = %conn.client, server = %conn.server, rule = d.rule, "policy reset failed: {e}");
                        Outcome::ResetFailed
                    }
                };
            }
        }
        Action::Ban => {
            if history.banned_until > now {
                return false;
            }
            if enforcer.allowed(&target) {
                d.action = Outcome::NotBannedAllowlisted;
                return true;
            }
            let ttl = s.escalated_ttl(history.bans.len());
            d.ttl_s = Some(ttl.as_secs());
            if s.dry_run {
                d.action = Outcome::WouldBan;
            } else {
                let reason = format!("{reason}, offence {}", history.bans.len() + 1);
                match enforcer.ban(target, ttl, &reason) {
                    Ok(()) => {
                        d.action = Outcome::Ban;
                        // The connection that crossed the threshold is
                        // usually mid-handshake: with its packets dropped
                        // from now on, the server would wait on it until
                        // the ban ends. Reset it too (the outcome is not
                        // the decision's: the ban is).
                        if let Some(conn) = &d.connection {
                            if let Err(e) = enforcer.reset(conn) {
                                tracing::debug!(client = %conn.client, "resetting a banned connection: {e}");
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(%target, "policy ban failed: {e}");
                        d.action = Outcome::BanFailed;
                    }
                }
            }
            if d.action != Outcome::BanFailed {
                history.bans.push_back(now);
                let ttl_ns = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX);
                history.banned_until = now.saturating_add(ttl_ns);
            }
        }
    }
    true
}

impl Policy {
    /// A policy with no history.
    pub fn new(settings: Settings) -> Self {
        Policy {
            settings,
            peers: HashMap::default(),
            prefixes: HashMap::default(),
            conns: conn::Conns::default(),
            live: FpMap::default(),
            departed: FpMap::default(),
            departed_order: VecDeque::new(),
            fp_seed: foldhash::fast::RandomState::default(),
            dirty: Vec::new(),
            over_peers: HashSet::default(),
            now: 0,
            last_gc: 0,
        }
    }

    /// The fingerprint of the flow `key` first seen at `first_seen_ns`.
    fn fp(&self, key: &FlowKey, first_seen_ns: u64) -> Fp {
        use std::hash::BuildHasher as _;
        self.fp_seed.hash_one((key, first_seen_ns))
    }

    /// Adopts the connections first seen before `now` (the agent's start,
    /// monotonic ns): they predate this agent or its restart, so their
    /// handshake is never timed (`handshake_timeout`).
    pub fn adopt_flows_before(&mut self, now: u64) {
        self.conns.adopt_flows_before(now);
    }

    /// The settings in use.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Replaces the settings (SIGHUP reload); the windows, the ban history
    /// and the per-connection watch state stay. Every known peer is
    /// evaluated again at the next step: a lowered threshold applies to what
    /// the windows already hold, not only to peers that send more.
    pub fn set_settings(&mut self, settings: Settings) {
        self.settings = settings;
        for (ip, peer) in self.peers.iter_mut() {
            if !peer.dirty {
                peer.dirty = true;
                self.dirty.push(*ip);
            }
        }
    }

    /// Takes in one flow (live or departed) at `now`: counts a new flow's
    /// handshake and its renegotiation growth since its last observation
    /// (by an event or a sweep), and marks its peer for evaluation when
    /// something counted.
    fn observe(&mut self, now: u64, key: &FlowKey, value: &FlowValue, departed: bool) {
        let id = self.fp(key, value.first_seen_ns);
        let renegs = value.tracker.counters.renegotiations_client;
        let was_live = if departed {
            self.live.remove(&id)
        } else {
            self.live.get(&id).copied()
        };
        let (previous, known_departed) = match was_live {
            Some(seen) => (Some(seen.renegs), false),
            None => match self.departed.get(&id) {
                Some(n) => (Some(*n), true),
                None => (None, false),
            },
        };
        let new_handshake =
            previous.is_none() && now.saturating_sub(value.first_seen_ns) <= HANDSHAKE_WINDOW_NS;
        let grown = renegs.saturating_sub(previous.unwrap_or(0));
        if new_handshake || grown > 0 {
            let conn = endpoints(key, value);
            let ip = conn.client.ip();
            let peer = self.peers.entry(ip).or_default();
            if new_handshake {
                peer.handshakes.add(value.first_seen_ns.min(now), 1);
            }
            if grown > 0 {
                peer.renegs.add(now, u64::from(grown));
                peer.reneg_conn = Some(conn.clone());
            }
            if new_handshake {
                peer.handshake_conn = Some(conn);
            }
            if !peer.dirty {
                peer.dirty = true;
                self.dirty.push(ip);
            }
        }
        let seen = previous.unwrap_or(0).max(renegs);
        if known_departed {
            // Already departed (a repeated close, or a sweep's live snapshot
            // taken before the close event was handled): keep the highest
            // count.
            if grown > 0 {
                if let Some(n) = self.departed.get_mut(&id) {
                    *n = seen;
                }
            }
        } else if departed {
            self.departed.insert(id, seen);
            self.departed_order.push_back(id);
            while self.departed_order.len() > DEPARTED_MEMORY {
                if let Some(old) = self.departed_order.pop_front() {
                    self.departed.remove(&old);
                }
            }
        } else {
            self.live.insert(
                id,
                Seen {
                    renegs: seen,
                    at: now,
                },
            );
        }
    }

    /// Ring-buffer events at `now`, in order: each flow's state is taken in
    /// (see [`Policy::observe`]), its connection's rules are checked, and
    /// then the rules of every peer that changed. Returns the decisions
    /// taken (bans and resets already made through `enforcer`).
    pub fn on_events(
        &mut self,
        now: u64,
        updates: &[FlowUpdate],
        enforcer: &mut impl Enforcer,
    ) -> Vec<Decision> {
        self.now = self.now.max(now);
        let mut hits = Vec::new();
        let dry_run_cap = self.settings.dry_run && self.settings.reneg_cap > 0;
        for u in updates {
            // A departed flow matters to the connection rules only for its
            // watch (if any) and the dry-run cap.
            let check = !u.departed || dry_run_cap || !self.conns.is_empty();
            if check
                && !self
                    .departed
                    .contains_key(&self.fp(&u.key, u.value.first_seen_ns))
            {
                if u.departed {
                    self.conns
                        .depart(&u.key, &u.value, &self.settings, &mut hits);
                } else {
                    self.conns
                        .check_live(now, &u.key, &u.value, &self.settings, &mut hits);
                }
            }
            self.observe(now, &u.key, &u.value, u.departed);
        }
        let mut out = Vec::new();
        self.act_on_hits(now, hits, enforcer, &mut out);
        self.evaluate_dirty(now, false, enforcer, &mut out);
        out
    }

    /// One sweep: `live` are the flows live at `now` (read from the kernel
    /// at that time), `departed` those that left the live set since the last
    /// sweep without the policy being told by an event; `now` is
    /// `CLOCK_MONOTONIC` ns. Returns the decisions taken (bans and resets
    /// already made through `enforcer`).
    pub fn step(
        &mut self,
        now: u64,
        live: &[(FlowKey, FlowValue)],
        departed: &[(FlowKey, FlowValue)],
        enforcer: &mut impl Enforcer,
    ) -> Vec<Decision> {
        self.now = self.now.max(now);
        // A departed flow matters to the connection rules only for its
        // watch (if any) and the dry-run cap.
        let check_departed =
            (self.settings.dry_run && self.settings.reneg_cap > 0) || !self.conns.is_empty();
        let newly_departed: Vec<&(FlowKey, FlowValue)> = if check_departed {
            departed
                .iter()
                .filter(|(k, v)| !self.departed.contains_key(&self.fp(k, v.first_seen_ns)))
                .collect()
        } else {
            Vec::new()
        };
        // Flows an event already reported departed are not live any more.
        let live: Vec<(Fp, &(FlowKey, FlowValue))> = live
            .iter()
            .map(|f| (self.fp(&f.0, f.1.first_seen_ns), f))
            .filter(|(id, _)| !self.departed.contains_key(id))
            .collect();
        let live_flows: Vec<&(FlowKey, FlowValue)> = live.iter().map(|(_, f)| *f).collect();
        let hits = self
            .conns
            .check(now, &live_flows, &newly_departed, &self.settings);
        for (k, v) in departed {
            self.observe(now, k, v, true);
        }
        for (k, v) in &live_flows {
            self.observe(now, k, v, false);
        }
        // Live flows that vanished without being reported departed (and that
        // no event observed after this snapshot was taken).
        let live_ids: std::collections::HashSet<Fp, std::hash::BuildHasherDefault<FpHasher>> =
            live.iter().map(|(id, _)| *id).collect();
        self.live
            .retain(|id, seen| seen.at > now || live_ids.contains(id));

        let mut out = Vec::new();
        self.act_on_hits(now, hits, enforcer, &mut out);
        self.evaluate_dirty(now, true, enforcer, &mut out);
        self.prefix_step(now, enforcer, &mut out);
        if now.saturating_sub(self.last_gc) >= GC_EVERY_NS || self.last_gc > now {
            self.last_gc = now;
            for p in self.peers.values_mut() {
                p.prune(now);
            }
            self.peers
                .retain(|_, p| !p.idle() || p.history.banned_until > now || p.over != 0 || p.dirty);
        }
        out
    }

    /// Takes the action of each per-connection rule hit.
    fn act_on_hits(
        &mut self,
        now: u64,
        hits: Vec<conn::ConnHit>,
        enforcer: &mut impl Enforcer,
        out: &mut Vec<Decision>,
    ) {
        let s = &self.settings;
        for hit in hits {
            let ip = hit.conn.client.ip();
            let peer = self.peers.entry(ip).or_default();
            let mut d = Decision::new(hit.rule, ip, s.dry_run);
            d.counts = Counts {
                handshake_ms: hit.counts.handshake_ms,
                keyupdates_1s: hit.counts.keyupdates_1s,
                renegotiations_conn: hit.counts.renegotiations_conn,
                ..peer.counts_at(now)
            };
            let reason = format!(
                "policy: {} on {} -> {}",
                hit.rule.name(),
                hit.conn.client,
                hit.conn.server
            );
            d.connection = Some(hit.conn);
            let action = s.action(hit.rule);
            let target = Target {
                cidr: Cidr::host(ip),
                history: &mut peer.history,
                reason,
            };
            if act(s, now, action, target, &mut d, enforcer) {
                out.push(d);
            }
        }
    }

    /// Evaluates the window rules of the peers that changed, and with
    /// `with_over` of the peers above a threshold (so a rule re-arms when
    /// its window empties).
    fn evaluate_dirty(
        &mut self,
        now: u64,
        with_over: bool,
        enforcer: &mut impl Enforcer,
        out: &mut Vec<Decision>,
    ) {
        let mut todo = std::mem::take(&mut self.dirty);
        if with_over {
            todo.extend(self.over_peers.iter().copied());
        }
        for ip in &todo {
            self.evaluate_peer(now, *ip, enforcer, out);
        }
        todo.clear();
        if self.dirty.is_empty() {
            // Keep the allocation.
            self.dirty = todo;
        }
    }

    /// The window rules of one peer.
    fn evaluate_peer(
        &mut self,
        now: u64,
        ip: IpAddr,
        enforcer: &mut impl Enforcer,
        out: &mut Vec<Decision>,
    ) {
        let Policy {
            settings: s,
            peers,
            over_peers,
            ..
        } = self;
        let Some(peer) = peers.get_mut(&ip) else {
            over_peers.remove(&ip);
            return;
        };
        peer.dirty = false;
        peer.prune(now);
        let counts = peer.counts();
        let rules = [
            (Rule::HandshakesPer10s, s.handshakes_per_10s),
            (Rule::RenegotiationsPerMinute, s.renegotiations_per_minute),
        ];
        for (rule, threshold) in rules {
            let n = match rule {
                Rule::HandshakesPer10s => counts.handshakes_10s,
                _ => counts.renegotiations_1m,
            };
            if threshold == 0 || n <= u64::from(threshold) {
                peer.over &= !bit(rule);
                continue;
            }
            if peer.over & bit(rule) != 0 {
                continue;
            }
            peer.over |= bit(rule);
            let mut d = Decision::new(rule, ip, s.dry_run);
            d.connection = peer.last_conn(rule).cloned();
            d.counts = counts;
            let reason = format!("policy: {} > {threshold} (n={n})", rule.name());
            let target = Target {
                cidr: Cidr::host(ip),
                history: &mut peer.history,
                reason,
            };
            if act(s, now, s.action(rule), target, &mut d, enforcer) {
                out.push(d);
            }
        }
        if peer.over != 0 {
            over_peers.insert(ip);
        } else if !over_peers.is_empty() {
            over_peers.remove(&ip);
        }
    }

    /// The prefix rules: the peers' windows summed per prefix.
    fn prefix_step(&mut self, now: u64, enforcer: &mut impl Enforcer, out: &mut Vec<Decision>) {
        let s = self.settings.clone();
        let rules = [
            (Rule::PrefixHandshakesPer10s, s.prefix_handshakes_per_10s),
            (
                Rule::PrefixRenegotiationsPerMinute,
                s.prefix_renegotiations_per_minute,
            ),
        ];
        if rules.iter().all(|(_, t)| *t == 0) {
            self.prefixes.clear();
            return;
        }
        let mut sums: HashMap<Cidr, Sum> = HashMap::default();
        for (ip, peer) in &self.peers {
            if enforcer.allowed(&Cidr::host(*ip)) {
                continue;
            }
            let len = if ip.is_ipv4() {
                s.prefix_v4_len
            } else {
                s.prefix_v6_len
            };
            let Ok(prefix) = Cidr::new(*ip, len) else {
                continue;
            };
            let c = peer.counts_at(now);
            let sum = sums.entry(prefix).or_default();
            sum.counts.handshakes_10s += c.handshakes_10s;
            sum.counts.renegotiations_1m += c.renegotiations_1m;
            for (slot, n, own) in [
                (0, c.handshakes_10s, Rule::HandshakesPer10s),
                (1, c.renegotiations_1m, Rule::RenegotiationsPerMinute),
            ] {
                let best = sum.busiest[slot].get_or_insert((0, *ip, None));
                if n > best.0 || best.2.is_none() {
                    *best = (n, *ip, peer.last_conn(own).cloned());
                }
            }
        }
        for (prefix, sum) in &sums {
            let group = self.prefixes.entry(*prefix).or_default();
            group.history.prune(now);
            for (rule, threshold) in rules {
                let (n, slot) = match rule {
                    Rule::PrefixHandshakesPer10s => (sum.counts.handshakes_10s, 0),
                    _ => (sum.counts.renegotiations_1m, 1),
                };
                if threshold == 0 || n <= u64::from(threshold) {
                    group.over &= !bit(rule);
                    continue;
                }
                if group.over & bit(rule) != 0 {
                    continue;
                }
                group.over |= bit(rule);
                let (peer, conn) = match &sum.busiest[slot] {
                    Some((_, ip, conn)) => (*ip, conn.clone()),
                    None => (prefix.addr(), None),
                };
                let mut d = Decision::new(rule, peer, s.dry_run);
                d.prefix = Some(*prefix);
                d.connection = conn;
                d.counts = sum.counts;
                let reason = format!("policy: {} > {threshold} (n={n})", rule.name());
                let target = Target {
                    cidr: *prefix,
                    history: &mut group.history,
                    reason,
                };
                if act(&s, now, s.action(rule), target, &mut d, enforcer) {
                    out.push(d);
                }
            }
        }
        for (prefix, group) in &mut self.prefixes {
            if !sums.contains_key(prefix) {
                group.over = 0;
                group.history.prune(now);
            }
        }
        self.prefixes
            .retain(|p, g| sums.contains_key(p) || !g.history.bans.is_empty());
    }

    /// A peer's window counts as of the latest time the policy was given
    /// (zero for an unknown peer).
    pub fn peer_counts(&self, ip: IpAddr) -> Counts {
        self.peers
            .get(&ip)
            .map(|p| p.counts_at(self.now))
            .unwrap_or_default()
    }

    /// Every peer with something in its windows or ban history, by address
    /// (counts as of the latest time the policy was given).
    pub fn peers(&self) -> Vec<PeerRecord> {
        let mut out: Vec<PeerRecord> = self
            .peers
            .iter()
            .filter_map(|(ip, p)| {
                let c = p.counts_at(self.now);
                let bans_24h = p
                    .history
                    .bans
                    .iter()
                    .filter(|t| self.now.saturating_sub(**t) <= REPEAT_WINDOW_NS)
                    .count() as u64;
                let listed = c.handshakes_10s > 0
                    || c.renegotiations_1m > 0
                    || bans_24h > 0
                    || p.history.banned_until > self.now
                    || p.over != 0;
                listed.then_some(PeerRecord {
                    peer: *ip,
                    handshakes_10s: c.handshakes_10s,
                    renegotiations_1m: c.renegotiations_1m,
                    bans_24h,
                })
            })
            .collect();
        out.sort_by_key(|p| p.peer);
        out
    }
}

#[cfg(test)]
mod tests;
