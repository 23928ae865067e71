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

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::Duration;

use monitor_common::flow::{addr_bytes, FlowKey, FlowValue};
use serde::Serialize;

use crate::agent::ingest::record::socket_addr;
use crate::api::cidr::Cidr;
pub use crate::api::decisions::{Action, ConnRef, Counts, Decision, Outcome};
pub use crate::api::peers::PeerRecord;
use crate::api::policy::{PolicySummary, RuleSummary};
use crate::config::Config;

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

/// The policy's rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// `[peer] renegotiations_per_minute`.
    RenegotiationsPerMinute,
    /// `[peer] handshakes_per_10s`.
    HandshakesPer10s,
    /// `[prefix] renegotiations_per_minute`.
    PrefixRenegotiationsPerMinute,
    /// `[prefix] handshakes_per_10s`.
    PrefixHandshakesPer10s,
    /// `[limits] handshake_timeout`.
    HandshakeTimeout,
    /// `[limits] keyupdates_per_second`.
    KeyupdatesPerSecond,
    /// `[limits] reneg_cap` (the kernel resets; the agent reports).
    RenegCap,
}

impl Rule {
    /// The rule's name in the config and in events.
    pub fn name(self) -> &'static str {
        match self {
            Rule::RenegotiationsPerMinute => "renegotiations_per_minute",
            Rule::HandshakesPer10s => "handshakes_per_10s",
            Rule::PrefixRenegotiationsPerMinute => "prefix_renegotiations_per_minute",
            Rule::PrefixHandshakesPer10s => "prefix_handshakes_per_10s",
            Rule::HandshakeTimeout => "handshake_timeout",
            Rule::KeyupdatesPerSecond => "keyupdates_per_second",
            Rule::RenegCap => "reneg_cap",
        }
    }
}

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

/// The policy's settings, from the config file (and `--dry-run`,
/// `--reneg-cap`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Renegotiation threshold per minute (0: off).
    pub renegotiations_per_minute: u32,
    /// Handshake threshold per 10 s (0: off).
    pub handshakes_per_10s: u32,
    /// Action of the renegotiation rule.
    pub reneg_action: Action,
    /// Action of the handshake rule.
    pub handshake_action: Action,
    /// IPv4 prefix length of the prefix rules.
    pub prefix_v4_len: u32,
    /// IPv6 prefix length of the prefix rules.
    pub prefix_v6_len: u32,
    /// Prefix renegotiation threshold per minute (0: off).
    pub prefix_renegotiations_per_minute: u32,
    /// Prefix handshake threshold per 10 s (0: off).
    pub prefix_handshakes_per_10s: u32,
    /// Action of the prefix renegotiation rule.
    pub prefix_reneg_action: Action,
    /// Action of the prefix handshake rule.
    pub prefix_handshake_action: Action,
    /// The renegotiation cap per connection (0: none); the kernel enforces
    /// it, except in dry-run, where the policy reports `would_reset`.
    pub reneg_cap: u32,
    /// First-handshake time limit (zero: off).
    pub handshake_timeout: Duration,
    /// Action of the handshake timeout.
    pub handshake_timeout_action: Action,
    /// `keyupdate_like` records per connection per second (0: off).
    pub keyupdates_per_second: u32,
    /// Action of the KeyUpdate rule.
    pub keyupdate_action: Action,
    /// First ban TTL.
    pub ban_ttl: Duration,
    /// Factor per repeat offence.
    pub escalation: u32,
    /// Longest ban.
    pub max_ban_ttl: Duration,
    /// Compute, change nothing.
    pub dry_run: bool,
}

impl Settings {
    /// From the effective config ([`crate::config::resolve`] applied the
    /// command line to it).
    pub fn from_config(c: &Config) -> Self {
        Settings {
            renegotiations_per_minute: c.peer.renegotiations_per_minute,
            handshakes_per_10s: c.peer.handshakes_per_10s,
            reneg_action: c.action.renegotiations_per_minute,
            handshake_action: c.action.handshakes_per_10s,
            prefix_v4_len: c.prefix.v4_len,
            prefix_v6_len: c.prefix.v6_len,
            prefix_renegotiations_per_minute: c.prefix.renegotiations_per_minute,
            prefix_handshakes_per_10s: c.prefix.handshakes_per_10s,
            prefix_reneg_action: c.action.prefix_renegotiations_per_minute,
            prefix_handshake_action: c.action.prefix_handshakes_per_10s,
            reneg_cap: c.limits.reneg_cap,
            handshake_timeout: c.limits.handshake_timeout,
            handshake_timeout_action: c.action.handshake_timeout,
            keyupdates_per_second: c.limits.keyupdates_per_second,
            keyupdate_action: c.action.keyupdates_per_second,
            ban_ttl: c.action.ban_ttl,
            escalation: c.action.ban_escalation.max(1),
            max_ban_ttl: c.action.max_ban_ttl,
            dry_run: c.dry_run,
        }
    }

    /// The TTL of a ban after `prior` bans within 24 h.
    pub fn escalated_ttl(&self, prior: usize) -> Duration {
        let mut ttl = self.ban_ttl;
        for _ in 0..prior {
            ttl = ttl.saturating_mul(self.escalation);
            if ttl >= self.max_ban_ttl {
                break;
            }
        }
        ttl.min(self.max_ban_ttl).max(Duration::from_secs(1))
    }

    /// The action of `rule`.
    pub fn action(&self, rule: Rule) -> Action {
        match rule {
            Rule::RenegotiationsPerMinute => self.reneg_action,
            Rule::HandshakesPer10s => self.handshake_action,
            Rule::PrefixRenegotiationsPerMinute => self.prefix_reneg_action,
            Rule::PrefixHandshakesPer10s => self.prefix_handshake_action,
            Rule::HandshakeTimeout => self.handshake_timeout_action,
            Rule::KeyupdatesPerSecond => self.keyupdate_action,
            Rule::RenegCap => Action::Reset,
        }
    }

    /// What `hsmon status` shows: dry-run and the rules that are on.
    pub fn summary(&self, source: &str) -> PolicySummary {
        let timeout_ms = u64::try_from(self.handshake_timeout.as_millis()).unwrap_or(u64::MAX);
        let rules = [
            (Rule::RenegCap, u64::from(self.reneg_cap)),
            (Rule::HandshakeTimeout, timeout_ms),
            (
                Rule::KeyupdatesPerSecond,
                u64::from(self.keyupdates_per_second),
            ),
            (
                Rule::RenegotiationsPerMinute,
                u64::from(self.renegotiations_per_minute),
            ),
            (Rule::HandshakesPer10s, u64::from(self.handshakes_per_10s)),
            (
                Rule::PrefixRenegotiationsPerMinute,
                u64::from(self.prefix_renegotiations_per_minute),
            ),
            (
                Rule::PrefixHandshakesPer10s,
                u64::from(self.prefix_handshakes_per_10s),
            ),
        ];
        PolicySummary {
            source: source.to_owned(),
            dry_run: self.dry_run,
            rules: rules
                .iter()
                .filter(|(_, limit)| *limit > 0)
                .map(|(rule, limit)| RuleSummary {
                    rule: rule.name().to_owned(),
                    limit: *limit,
                    action: self.action(*rule).name().to_owned(),
                })
                .collect(),
            prefix_v4_len: self.prefix_v4_len,
            prefix_v6_len: self.prefix_v6_len,
            ban_ttl_s: self.ban_ttl.as_secs(),
            ban_escalation: self.escalation,
            max_ban_ttl_s: self.max_ban_ttl.as_secs(),
        }
    }
}

impl Decision {
    /// A decision about `peer` under `rule`, its action not taken yet
    /// (`alert`).
    pub fn new(rule: Rule, peer: IpAddr, dry_run: bool) -> Self {
        Decision {
            time: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
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

/// A peer's or prefix's ban history.
#[derive(Debug, Default)]
struct History {
    /// When bans were issued (or would have been), oldest first.
    bans: VecDeque<u64>,
    /// Ban end (monotonic ns) of the last ban.
    banned_until: u64,
}

impl History {
    fn prune(&mut self, now: u64) {
        while self
            .bans
            .front()
            .is_some_and(|t| now.saturating_sub(*t) > REPEAT_WINDOW_NS)
        {
            self.bans.pop_front();
        }
    }
}

/// A sliding window of counts: `(time, count)` buckets, oldest first, and
/// their running total.
#[derive(Debug, Default)]
struct Window {
    buckets: VecDeque<(u64, u64)>,
    total: u64,
}

impl Window {
    /// Adds `n` at time `t` (merged into the newest bucket when `t` is at
    /// most [`BUCKET_NS`] after it).
    fn add(&mut self, t: u64, n: u64) {
        self.total += n;
        if let Some(back) = self.buckets.back_mut() {
            if t >= back.0 && t - back.0 < BUCKET_NS {
                back.1 += n;
                return;
            }
        }
        self.buckets.push_back((t, n));
    }

    /// Drops the buckets older than `len` at `now`, from the oldest end.
    fn prune(&mut self, now: u64, len: u64) {
        while let Some(&(t, n)) = self.buckets.front() {
            if now.saturating_sub(t) <= len {
                break;
            }
            self.total -= n;
            self.buckets.pop_front();
        }
    }

    /// The total at `now` as [`Window::prune`] would leave it, without
    /// changing anything.
    fn count_at(&self, now: u64, len: u64) -> u64 {
        let expired: u64 = self
            .buckets
            .iter()
            .take_while(|(t, _)| now.saturating_sub(*t) > len)
            .map(|(_, n)| n)
            .sum();
        self.total - expired
    }

    fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// `over` bit of a window rule.
fn bit(rule: Rule) -> u8 {
    match rule {
        Rule::HandshakesPer10s | Rule::PrefixHandshakesPer10s => 1,
        _ => 2,
    }
}

#[derive(Debug, Default)]
struct Peer {
    /// New flows by first_seen_ns.
    handshakes: Window,
    /// Renegotiation attempts by the time they were observed.
    renegs: Window,
    /// Bans issued (or that would have been).
    history: History,
    /// Rules currently above their threshold (fired already), [`bit`]s.
    over: u8,
    /// The newest connection that counted a handshake.
    handshake_conn: Option<ConnRef>,
    /// The newest connection that counted a renegotiation.
    reneg_conn: Option<ConnRef>,
    /// Changed since it was last evaluated (it is in `Policy::dirty`).
    dirty: bool,
}

impl Peer {
    fn prune(&mut self, now: u64) {
        self.handshakes.prune(now, HANDSHAKE_WINDOW_NS);
        self.renegs.prune(now, RENEG_WINDOW_NS);
        self.history.prune(now);
    }

    /// The counts after [`Peer::prune`] at `now`.
    fn counts(&self) -> Counts {
        Counts {
            handshakes_10s: self.handshakes.total,
            renegotiations_1m: self.renegs.total,
            ..Counts::default()
        }
    }

    /// The counts at `now`, pruned or not.
    fn counts_at(&self, now: u64) -> Counts {
        Counts {
            handshakes_10s: self.handshakes.count_at(now, HANDSHAKE_WINDOW_NS),
            renegotiations_1m: self.renegs.count_at(now, RENEG_WINDOW_NS),
            ..Counts::default()
        }
    }

    fn last_conn(&self, rule: Rule) -> Option<&ConnRef> {
        match rule {
            Rule::HandshakesPer10s | Rule::PrefixHandshakesPer10s => self.handshake_conn.as_ref(),
            _ => self.reneg_conn.as_ref(),
        }
    }

    fn idle(&self) -> bool {
        self.handshakes.is_empty() && self.renegs.is_empty() && self.history.bans.is_empty()
    }
}

/// A client prefix's state.
#[derive(Debug, Default)]
struct Group {
    history: History,
    /// [`bit`]s of the prefix rules above their threshold.
    over: u8,
}

/// One prefix's sums in a sweep: counts, and per rule the busiest peer with
/// its newest connection.
#[derive(Default)]
struct Sum {
    counts: Counts,
    /// `[handshakes, renegotiations]`: (count, address, connection).
    busiest: [Option<(u64, IpAddr, Option<ConnRef>)>; 2],
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

/// One flow's state handed to [`Policy::on_events`].
#[derive(Clone, Copy, Debug)]
pub struct FlowUpdate {
    /// The flow.
    pub key: FlowKey,
    /// Its state in the event.
    pub value: FlowValue,
    /// It left the live set (`EVENT_FLOW_CLOSED`).
    pub departed: bool,
}

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
    let a = socket_addr(&addr_bytes(&key.addr_a), key.port_a);
    let b = socket_addr(&addr_bytes(&key.addr_b), key.port_b);
    if value.client_is_a != 0 {
        ConnRef {
            client: a,
            server: b,
        }
    } else {
        ConnRef {
            client: b,
            server: a,
        }
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

    /// The ban history of every peer and prefix, sorted (for the state
    /// file, so a restarted agent keeps escalating).
    pub fn export_history(&self) -> Vec<crate::agent::persist::state_file::SavedHistory> {
        let saved = |kind: &str, target: Cidr, h: &History| {
            crate::agent::persist::state_file::SavedHistory {
                kind: kind.to_owned(),
                target: target.to_string(),
                bans_ns: h.bans.iter().copied().collect(),
                banned_until_ns: h.banned_until,
            }
        };
        let mut out: Vec<_> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.history.bans.is_empty())
            .map(|(ip, p)| saved("peer", Cidr::host(*ip), &p.history))
            .chain(
                self.prefixes
                    .iter()
                    .filter(|(_, g)| !g.history.bans.is_empty())
                    .map(|(c, g)| saved("prefix", *c, &g.history)),
            )
            .collect();
        out.sort_by(|a, b| (&a.kind, &a.target).cmp(&(&b.kind, &b.target)));
        out
    }

    /// Takes in a previous agent's ban history ([`Policy::export_history`]).
    pub fn import_history(&mut self, saved: &[crate::agent::persist::state_file::SavedHistory]) {
        for h in saved {
            let Ok(target) = h.target.parse::<Cidr>() else {
                continue;
            };
            let history = History {
                bans: h.bans_ns.iter().copied().collect(),
                banned_until: h.banned_until_ns,
            };
            match h.kind.as_str() {
                "peer" => self.peers.entry(target.addr()).or_default().history = history,
                "prefix" => self.prefixes.entry(target).or_default().history = history,
                _ => {}
            }
        }
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

/// The agent's enforcement: bans in the kernel's ban maps (reason
/// [`monitor_common::ban::BAN_REASON_POLICY`]) at once; resets are only
/// noted (the decision says `reset`) and made by [`perform_resets`] after
/// the policy's lock is released, since each is a netlink round trip.
pub struct AgentEnforcer<'a, M: crate::agent::enforce::bans::BanMaps> {
    /// The ban table.
    pub bans: &'a mut crate::agent::enforce::bans::BanTable<M>,
}

impl<M: crate::agent::enforce::bans::BanMaps> Enforcer for AgentEnforcer<'_, M> {
    fn allowed(&self, target: &Cidr) -> bool {
        self.bans.allowlist().iter().any(|a| a.overlaps(target))
    }

    fn ban(&mut self, target: Cidr, ttl: Duration, reason: &str) -> Result<(), String> {
        self.bans
            .add_coded(
                target,
                ttl,
                reason,
                monitor_common::ban::BAN_REASON_POLICY,
                crate::agent::kernel::clock::monotonic_now_ns(),
            )
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn reset(&mut self, _conn: &ConnRef) -> Result<bool, String> {
        // Deferred: see `perform_resets`.
        Ok(true)
    }
}

/// Makes the resets that [`AgentEnforcer`] noted: `SOCK_DESTROY` of the
/// server's socket of each decision with action `reset`, which becomes
/// `already_closed` or `reset_failed` when it did not reset anything, and of
/// the connection of each `ban` (whose action stays `ban`). Blocking
/// (netlink); call it without the policy's lock.
pub fn perform_resets(decisions: &mut [Decision]) {
    for d in decisions
        .iter_mut()
        .filter(|d| d.action == Outcome::Reset || d.action == Outcome::Ban)
    {
        let Some(conn) = d.connection.as_ref() else {
            continue;
        };
        let c = crate::agent::enforce::sock_destroy::Conn {
            local: conn.server,
            remote: conn.client,
        };
        if d.action == Outcome::Ban {
            match crate::agent::enforce::sock_destroy::destroy(&c) {
                Ok(outcome) => {
                    tracing::debug!(client = %conn.client, server = %conn.server, ?outcome, "banned peer's connection reset");
                }
                Err(e) => {
                    tracing::warn!(client = %conn.client, server = %conn.server, "resetting a banned peer's connection failed: {e:#}");
                }
            }
            continue;
        }
        d.action = match crate::agent::enforce::sock_destroy::destroy(&c) {
            Ok(crate::agent::enforce::sock_destroy::Outcome::Destroyed) => Outcome::Reset,
            Ok(crate::agent::enforce::sock_destroy::Outcome::Gone) => Outcome::AlreadyClosed,
            Err(e) => {
                tracing::warn!(client = %conn.client, server = %conn.server, rule = d.rule, "policy reset failed: {e:#}");
                Outcome::ResetFailed
            }
        };
    }
}

/// Prints each decision as one JSON line on stdout (and logs it).
pub fn print_decisions(decisions: &[Decision]) {
    if decisions.is_empty() {
        return;
    }
    let mut out = String::new();
    for d in decisions {
        tracing::warn!(rule = d.rule, peer = %d.peer, action = d.action.name(), "policy decision");
        match serde_json::to_string(d) {
            Ok(line) => {
                out.push_str(&line);
                out.push('\n');
            }
            Err(e) => tracing::warn!("encoding a decision: {e}"),
        }
    }
    if let Err(e) = crate::stdout::write_stdout(out.as_bytes()) {
        tracing::warn!("writing decisions: {e:#}");
    }
    crate::agent::publish::decision_log::append(out.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::ingest::record::tests::sample_flow;

    #[derive(Default)]
    struct Fake {
        allow: Vec<Cidr>,
        bans: Vec<(Cidr, Duration, String)>,
        resets: Vec<ConnRef>,
    }

    impl Enforcer for Fake {
        fn allowed(&self, target: &Cidr) -> bool {
            self.allow.iter().any(|a| a.overlaps(target))
        }
        fn ban(&mut self, target: Cidr, ttl: Duration, reason: &str) -> Result<(), String> {
            self.bans.push((target, ttl, reason.to_owned()));
            Ok(())
        }
        fn reset(&mut self, conn: &ConnRef) -> Result<bool, String> {
            self.resets.push(conn.clone());
            Ok(true)
        }
    }

    fn settings() -> Settings {
        let mut c = Config::default();
        c.peer.handshakes_per_10s = 5;
        c.peer.renegotiations_per_minute = 3;
        c.action.handshakes_per_10s = Action::Ban;
        c.action.ban_ttl = Duration::from_secs(3);
        Settings::from_config(&c)
    }

    fn flow(port: u16, first_seen: u64, renegs: u32) -> (FlowKey, FlowValue) {
        let (mut k, mut v) = sample_flow();
        if v.client_is_a != 0 {
            k.port_a = port;
        } else {
            k.port_b = port;
        }
        v.first_seen_ns = first_seen;
        v.tracker.counters.renegotiations_client = renegs;
        (k, v)
    }

    #[test]
    fn handshake_flood_bans_once_and_escalates() {
        let mut p = Policy::new(settings());
        let mut e = Fake::default();
        let now = 100 * SEC;
        let flows: Vec<_> = (0..5).map(|i| flow(1000 + i, now - SEC, 0)).collect();
        assert!(
            p.step(now, &flows, &[], &mut e).is_empty(),
            "5 is not above 5"
        );
        let six = vec![flow(2000, now, 0)];
        let d = p.step(now + SEC, &six, &flows, &mut e);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(
            (d[0].rule, d[0].action.name(), d[0].ttl_s),
            ("handshakes_per_10s", "ban", Some(3))
        );
        assert_eq!(d[0].counts.handshakes_10s, 6);
        assert!(d[0].connection.is_some());
        assert_eq!(e.bans.len(), 1);
        assert!(e.bans[0].2.contains("handshakes_per_10s"), "{:?}", e.bans);
        // The same flows again (repeated closes, still live): nothing new.
        assert!(p.step(now + 2 * SEC, &six, &flows, &mut e).is_empty());
        assert_eq!(p.peers()[0].handshakes_10s, 6);
        // The window empties, then a second flood: escalated ×4.
        let later = now + 30 * SEC;
        assert!(p.step(later, &[], &[], &mut e).is_empty());
        let flood: Vec<_> = (0..6).map(|i| flow(3000 + i, later, 0)).collect();
        let d = p.step(later + SEC, &flood, &[], &mut e);
        assert_eq!(d[0].ttl_s, Some(12), "{d:?}");
        assert_eq!(p.peers()[0].bans_24h, 2);
        // A repeat while that ban is in force does not ban again.
        let late = later + 11 * SEC;
        assert!(p.step(late, &[], &[], &mut e).is_empty());
        let flood: Vec<_> = (0..6).map(|i| flow(4000 + i, late, 0)).collect();
        let none = p.step(late + SEC, &flood, &[], &mut e);
        assert!(none.is_empty(), "{none:?}");
    }

    #[test]
    fn a_lowered_threshold_applies_to_what_the_windows_hold() {
        let mut s = settings();
        s.handshakes_per_10s = 100;
        let mut p = Policy::new(s.clone());
        let mut e = Fake::default();
        let now = 100 * SEC;
        let flows: Vec<_> = (0..8).map(|i| flow(1000 + i, now - SEC, 0)).collect();
        assert!(p.step(now, &flows, &[], &mut e).is_empty(), "8 <= 100");
        // Nothing new arrives; only the threshold drops below what is held.
        s.handshakes_per_10s = 5;
        p.set_settings(s);
        let d = p.step(now + SEC, &flows, &[], &mut e);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(
            (d[0].rule, d[0].action.name()),
            ("handshakes_per_10s", "ban")
        );
        assert_eq!(e.bans.len(), 1);
    }

    #[test]
    fn escalation_is_capped() {
        let s = settings();
        assert_eq!(s.escalated_ttl(0), Duration::from_secs(3));
        assert_eq!(s.escalated_ttl(2), Duration::from_secs(48));
        assert_eq!(s.escalated_ttl(100), Duration::from_secs(24 * 3600));
    }

    #[test]
    fn renegotiation_growth_counts_live_and_departed_once() {
        let mut p = Policy::new(settings());
        let mut e = Fake::default();
        let now = 100 * SEC;
        let a = flow(1, now, 2);
        assert!(p.step(now, &[a], &[], &mut e).is_empty());
        assert_eq!(p.peers()[0].renegotiations_1m, 2);
        // It leaves with 3 (one more since the sweep): 3 in total, not above.
        let a3 = flow(1, now, 3);
        assert!(p.step(now + SEC, &[], &[a3], &mut e).is_empty());
        assert!(p.step(now + 2 * SEC, &[], &[a3], &mut e).is_empty());
        assert_eq!(p.peers()[0].renegotiations_1m, 3);
        // One more on another flow: 4 > 3, the rule's default action is ban.
        let b = flow(2, now + 2 * SEC, 1);
        let d = p.step(now + 3 * SEC, &[b], &[], &mut e);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(
            (d[0].rule, d[0].action.name()),
            ("renegotiations_per_minute", "ban")
        );
        assert_eq!(d[0].counts.renegotiations_1m, 4);
    }

    #[test]
    fn alert_fires_once_per_crossing() {
        let mut s = settings();
        s.handshake_action = Action::Alert;
        let mut p = Policy::new(s);
        let mut e = Fake::default();
        let now = 100 * SEC;
        let flood: Vec<_> = (0..6).map(|i| flow(1000 + i, now, 0)).collect();
        let d = p.step(now, &flood, &[], &mut e);
        assert_eq!((d.len(), d[0].action.name()), (1, "alert"));
        assert!(p.step(now + SEC, &flood, &[], &mut e).is_empty());
        assert!(p.step(now + 20 * SEC, &[], &[], &mut e).is_empty());
        let flood: Vec<_> = (0..6).map(|i| flow(2000 + i, now + 21 * SEC, 0)).collect();
        assert_eq!(p.step(now + 21 * SEC, &flood, &[], &mut e).len(), 1);
        assert!(e.bans.is_empty());
    }

    #[test]
    fn dry_run_and_allowlist_change_nothing() {
        let mut s = settings();
        s.dry_run = true;
        let mut p = Policy::new(s);
        let mut e = Fake::default();
        let now = 100 * SEC;
        let flood: Vec<_> = (0..6).map(|i| flow(1000 + i, now, 0)).collect();
        let d = p.step(now, &flood, &[], &mut e);
        assert_eq!(
            (d[0].action.name(), d[0].dry_run, d[0].ttl_s),
            ("would_ban", true, Some(3))
        );
        assert!(e.bans.is_empty());

        let mut p = Policy::new(settings());
        let ip = endpoints(&flood[0].0, &flood[0].1).client.ip();
        e.allow.push(Cidr::host(ip));
        let d = p.step(now, &flood, &[], &mut e);
        assert_eq!(d[0].action.name(), "not_banned_allowlisted");
        assert!(e.bans.is_empty());
        let json = serde_json::to_value(&d[0]).expect("json");
        for key in [
            "time",
            "rule",
            "peer",
            "connection",
            "counts",
            "action",
            "dry_run",
        ] {
            assert!(json.get(key).is_some(), "{key}: {json}");
        }
    }

    #[test]
    fn old_flows_are_not_new_handshakes() {
        let mut p = Policy::new(settings());
        let mut e = Fake::default();
        let flood: Vec<_> = (0..10).map(|i| flow(1000 + i, SEC, 0)).collect();
        assert!(p.step(60 * SEC, &flood, &[], &mut e).is_empty());
    }

    /// A flow of client 10.0.0.`host`:`port` whose first handshake is done.
    fn done_flow(host: u8, port: u16, first_seen: u64) -> (FlowKey, FlowValue) {
        use monitor_common::flow::ipv4_mapped;
        use monitor_common::tracker::FF_FIRST_HS_DONE;
        let (_, mut v) = sample_flow();
        let client = ipv4_mapped([10, 0, 0, host]);
        let server = ipv4_mapped([10, 9, 9, 9]);
        let (k, client_is_a) = FlowKey::from_endpoints(&client, port, &server, 443);
        v.client_is_a = client_is_a as u8;
        v.first_seen_ns = first_seen;
        v.tracker.flags = FF_FIRST_HS_DONE;
        v.tracker.counters.renegotiations_client = 0;
        (k, v)
    }

    fn conn_settings() -> Settings {
        let mut c = Config::default();
        c.limits.handshake_timeout = Duration::from_secs(2);
        c.limits.keyupdates_per_second = 10;
        c.limits.reneg_cap = 3;
        Settings::from_config(&c)
    }

    #[test]
    fn stalled_handshake_is_reset_once_and_a_done_one_never() {
        let mut p = Policy::new(conn_settings());
        let mut e = Fake::default();
        let t0 = 100 * SEC;
        let mut stalled = done_flow(1, 1000, t0);
        stalled.1.tracker.flags = monitor_common::tracker::FF_HS_ACTIVE;
        let done = done_flow(1, 1001, t0);
        let both = [stalled, done];
        assert!(p.step(t0 + SEC, &both, &[], &mut e).is_empty());
        assert!(
            p.step(t0 + 2 * SEC, &both, &[], &mut e).is_empty(),
            "2 s is not above 2 s"
        );
        let d = p.step(t0 + 2 * SEC + 1, &both, &[], &mut e);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(
            (d[0].rule, d[0].action.name()),
            ("handshake_timeout", "reset")
        );
        assert_eq!(d[0].counts.handshake_ms, Some(2000));
        let conn = endpoints(&stalled.0, &stalled.1);
        assert_eq!(e.resets, vec![conn.clone()]);
        assert_eq!(d[0].connection, Some(conn));
        assert!(p.step(t0 + 5 * SEC, &both, &[], &mut e).is_empty(), "once");
        assert_eq!(e.resets.len(), 1);
        let json = serde_json::to_value(&d[0]).expect("json");
        assert_eq!(json["counts"]["handshake_ms"], 2000, "{json}");
        assert!(json["counts"].get("keyupdates_1s").is_none(), "{json}");
        // An unsynced flow (its handshake cannot be seen) is left alone.
        let mut lost = done_flow(2, 1002, t0);
        lost.1.tracker.flags = monitor_common::tracker::FF_UNSYNCED;
        assert!(p.step(t0 + 9 * SEC, &[lost], &[], &mut e).is_empty());
        assert_eq!(p.conns.watched(), 1, "only live flows are watched");
    }

    #[test]
    fn keyupdate_flood_is_reset_a_few_are_not() {
        let mut p = Policy::new(conn_settings());
        let mut e = Fake::default();
        let t0 = 100 * SEC;
        let mut calm = done_flow(1, 1000, t0);
        let mut flood = done_flow(1, 1001, t0);
        assert!(p.step(t0, &[calm, flood], &[], &mut e).is_empty());
        calm.1.tracker.counters.keyupdate_like = 10;
        flood.1.tracker.counters.keyupdate_like = 11;
        let d = p.step(t0 + SEC, &[calm, flood], &[], &mut e);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(
            (d[0].rule, d[0].action.name()),
            ("keyupdates_per_second", "reset")
        );
        assert_eq!(d[0].counts.keyupdates_1s, Some(11));
        assert_eq!(e.resets, vec![endpoints(&flood.0, &flood.1)]);
        // 15 more over 2 s: 7.5/s, under the limit.
        calm.1.tracker.counters.keyupdate_like = 25;
        assert!(p.step(t0 + 3 * SEC, &[calm], &[], &mut e).is_empty());
        // A sweep soon after the last counts as a full second: 10 in 0.1 s
        // is not above 10/s.
        calm.1.tracker.counters.keyupdate_like = 35;
        assert!(p
            .step(t0 + 3 * SEC + SEC / 10, &[calm], &[], &mut e)
            .is_empty());
    }

    #[test]
    fn dry_run_reports_would_reset_and_the_cap() {
        let mut s = conn_settings();
        s.dry_run = true;
        s.renegotiations_per_minute = 0;
        let mut p = Policy::new(s);
        let mut e = Fake::default();
        let t0 = 100 * SEC;
        let mut a = done_flow(1, 1000, t0);
        a.1.tracker.counters.renegotiations_client = 3;
        assert!(p.step(t0, &[a], &[], &mut e).is_empty(), "3 is the cap");
        a.1.tracker.counters.renegotiations_client = 4;
        let d = p.step(t0 + SEC, &[a], &[], &mut e);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(
            (d[0].rule, d[0].action.name(), d[0].dry_run),
            ("reneg_cap", "would_reset", true)
        );
        assert_eq!(d[0].counts.renegotiations_conn, Some(4));
        a.1.tracker.counters.renegotiations_client = 6;
        assert!(p.step(t0 + 2 * SEC, &[a], &[], &mut e).is_empty(), "once");
        assert!(
            p.step(t0 + 3 * SEC, &[], &[a], &mut e).is_empty(),
            "not again when it leaves"
        );
        // One that went over and left between two sweeps.
        let mut b = done_flow(1, 1001, t0);
        b.1.tracker.counters.renegotiations_client = 5;
        let d = p.step(t0 + 4 * SEC, &[], &[b], &mut e);
        assert_eq!((d.len(), d[0].action.name()), (1, "would_reset"), "{d:?}");
        assert!(
            p.step(t0 + 5 * SEC, &[], &[b], &mut e).is_empty(),
            "a repeated close"
        );
        assert!(e.resets.is_empty() && e.bans.is_empty());
        // Enforcing: the kernel resets; the policy says nothing of the cap.
        let mut p = Policy::new(conn_settings());
        let d = p.step(t0, &[a], &[], &mut e);
        assert!(d.iter().all(|d| d.rule != "reneg_cap"), "{d:?}");
    }

    #[test]
    fn connection_rules_take_their_actions() {
        let mut s = conn_settings();
        s.handshake_timeout_action = Action::Ban;
        s.keyupdate_action = Action::Alert;
        let mut p = Policy::new(s);
        let mut e = Fake::default();
        let t0 = 100 * SEC;
        let mut stalled = done_flow(1, 1000, t0);
        stalled.1.tracker.flags = 0;
        let mut ku = done_flow(2, 1001, t0);
        ku.1.tracker.counters.keyupdate_like = 50;
        let mut d = p.step(t0 + 3 * SEC, &[stalled, ku], &[], &mut e);
        d.sort_by_key(|d| d.rule);
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!(
            (d[0].rule, d[0].action.name(), d[0].ttl_s),
            ("handshake_timeout", "ban", Some(600))
        );
        assert_eq!(
            (d[1].rule, d[1].action.name()),
            ("keyupdates_per_second", "alert")
        );
        assert_eq!(e.bans.len(), 1);
        assert_eq!(e.bans[0].0.to_string(), "10.0.0.1/32");
        assert!(e.bans[0].2.contains("handshake_timeout"), "{:?}", e.bans);
        // The banned connection is reset with the ban (its packets are
        // dropped from now on); the alert resets nothing.
        assert_eq!(e.resets, vec![endpoints(&stalled.0, &stalled.1)]);
        // Allowlisted clients are never reset.
        let mut s = conn_settings();
        s.dry_run = false;
        let mut p = Policy::new(s);
        let mut e = Fake::default();
        e.allow.push(Cidr::host("10.0.0.1".parse().expect("ip")));
        let d = p.step(t0 + 3 * SEC, &[stalled], &[], &mut e);
        assert_eq!(d[0].action.name(), "not_reset_allowlisted");
        assert!(e.resets.is_empty());
    }

    #[test]
    fn peer_rule_can_reset_the_offending_connection() {
        let mut s = settings();
        s.handshake_action = Action::Reset;
        let mut p = Policy::new(s);
        let mut e = Fake::default();
        let now = 100 * SEC;
        let flood: Vec<_> = (0..6).map(|i| flow(1000 + i, now, 0)).collect();
        let d = p.step(now, &flood, &[], &mut e);
        assert_eq!((d.len(), d[0].action.name()), (1, "reset"), "{d:?}");
        assert_eq!(e.resets.len(), 1);
        assert_eq!(d[0].connection.as_ref(), e.resets.first());
    }

    fn prefix_settings() -> Settings {
        let mut c = Config::default();
        c.peer.handshakes_per_10s = 0;
        c.prefix.handshakes_per_10s = 5;
        c.action.ban_ttl = Duration::from_secs(3);
        c.limits.handshake_timeout = Duration::ZERO;
        Settings::from_config(&c)
    }

    #[test]
    fn prefix_sums_its_peers_and_bans_the_prefix() {
        let mut p = Policy::new(prefix_settings());
        let mut e = Fake::default();
        let now = 100 * SEC;
        // Three addresses of 10.0.0.0/24, two handshakes each: 6 > 5.
        let flows: Vec<_> = (0..6u16)
            .map(|i| done_flow(1 + (i % 3) as u8, 2000 + i, now))
            .collect();
        let d = p.step(now, &flows, &[], &mut e);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(
            (d[0].rule, d[0].action.name(), d[0].ttl_s),
            ("prefix_handshakes_per_10s", "ban", Some(3))
        );
        assert_eq!(
            d[0].prefix.map(|c| c.to_string()).as_deref(),
            Some("10.0.0.0/24")
        );
        assert_eq!(d[0].counts.handshakes_10s, 6);
        assert_eq!(e.bans.len(), 1);
        assert_eq!(e.bans[0].0.to_string(), "10.0.0.0/24");
        let json = serde_json::to_value(&d[0]).expect("json");
        assert_eq!(json["prefix"], "10.0.0.0/24", "{json}");
        // Fires once; after the window and the ban, a new flood escalates.
        assert!(p.step(now + SEC, &flows, &[], &mut e).is_empty());
        assert!(p.step(now + 30 * SEC, &[], &[], &mut e).is_empty());
        let again: Vec<_> = (0..6u16)
            .map(|i| done_flow(1 + (i % 3) as u8, 3000 + i, now + 31 * SEC))
            .collect();
        let d = p.step(now + 31 * SEC, &again, &[], &mut e);
        assert_eq!(d[0].ttl_s, Some(12), "{d:?}");
    }

    #[test]
    fn ipv6_peers_are_grouped_by_v6_len() {
        use monitor_common::flow::addr_from_bytes;
        let mut p = Policy::new(prefix_settings());
        let mut e = Fake::default();
        let now = 100 * SEC;
        let server: std::net::Ipv6Addr = "2001:db8:ffff::1".parse().expect("ip");
        let flows: Vec<_> = (0..6u16)
            .map(|i| {
                // Three addresses of 2001:db8:0:1::/64 and one of another /64.
                let host: std::net::Ipv6Addr = if i < 5 {
                    format!("2001:db8:0:1::{}", 1 + i % 3)
                } else {
                    "2001:db8:0:2::1".to_owned()
                }
                .parse()
                .expect("ip");
                let (_, mut v) = done_flow(1, 0, now);
                let (k, client_is_a) = FlowKey::from_endpoints(
                    &addr_from_bytes(&host.octets()),
                    3000 + i,
                    &addr_from_bytes(&server.octets()),
                    443,
                );
                v.client_is_a = client_is_a as u8;
                (k, v)
            })
            .collect();
        assert!(p.step(now, &flows, &[], &mut e).is_empty(), "5 in the /64");
        let more = [flows[0], flows[1], flows[2], flows[3], flows[4], {
            let mut f = flows[0];
            f.0.port_a ^= 1;
            f.0.port_b ^= 1;
            f
        }];
        let d = p.step(now + SEC, &more, &[], &mut e);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(
            d[0].prefix.map(|c| c.to_string()).as_deref(),
            Some("2001:db8:0:1::/64")
        );
        assert_eq!(e.bans[0].0.to_string(), "2001:db8:0:1::/64");
    }

    #[test]
    fn prefix_rules_respect_the_allowlist() {
        let now = 100 * SEC;
        let flows: Vec<_> = (0..6u16)
            .map(|i| done_flow(1 + (i % 3) as u8, 2000 + i, now))
            .collect();
        // An allowlisted address inside the prefix: the prefix is never banned.
        let mut p = Policy::new(prefix_settings());
        let mut e = Fake::default();
        e.allow.push(Cidr::host("10.0.0.200".parse().expect("ip")));
        let d = p.step(now, &flows, &[], &mut e);
        assert_eq!(
            (d.len(), d[0].action.name()),
            (1, "not_banned_allowlisted"),
            "{d:?}"
        );
        assert!(e.bans.is_empty());
        // An allowlisted peer's own handshakes do not count: 4 left, not above 5.
        let mut p = Policy::new(prefix_settings());
        let mut e = Fake::default();
        e.allow.push(Cidr::host("10.0.0.1".parse().expect("ip")));
        assert!(p.step(now, &flows, &[], &mut e).is_empty());
        // Off by default.
        let mut p = Policy::new(settings());
        let mut e = Fake::default();
        let d = p.step(now, &flows, &[], &mut e);
        assert!(d.iter().all(|d| d.prefix.is_none()), "{d:?}");
    }

    fn live(f: (FlowKey, FlowValue)) -> FlowUpdate {
        FlowUpdate {
            key: f.0,
            value: f.1,
            departed: false,
        }
    }

    fn closed(f: (FlowKey, FlowValue)) -> FlowUpdate {
        FlowUpdate {
            key: f.0,
            value: f.1,
            departed: true,
        }
    }

    #[test]
    fn an_event_alone_bans_without_a_sweep() {
        let mut p = Policy::new(settings());
        let mut e = Fake::default();
        let t0 = 100 * SEC;
        // Three renegotiations: not above 3.
        let d = p.on_events(t0, &[live(flow(1, t0, 0)), live(flow(1, t0, 3))], &mut e);
        assert!(d.is_empty(), "{d:?}");
        // The segment with the fourth: the ban is made by this event.
        let d = p.on_events(t0 + SEC / 1000, &[live(flow(1, t0, 4))], &mut e);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(
            (d[0].rule, d[0].action.name(), d[0].counts.renegotiations_1m),
            ("renegotiations_per_minute", "ban", 4)
        );
        assert_eq!(e.bans.len(), 1);
        assert_eq!(
            d[0].connection,
            Some(endpoints(&flow(1, t0, 4).0, &flow(1, t0, 4).1))
        );
        // More events of the same flood: banned once.
        let d = p.on_events(t0 + SEC / 500, &[live(flow(1, t0, 9))], &mut e);
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(e.bans.len(), 1);
    }

    #[test]
    fn an_event_and_a_later_sweep_of_the_same_state_count_once() {
        let mut p = Policy::new(settings());
        let mut e = Fake::default();
        let t0 = 100 * SEC;
        let a = flow(1, t0, 2);
        assert!(p.on_events(t0, &[live(a)], &mut e).is_empty());
        // The sweep reads the same state: nothing grows.
        assert!(p.step(t0 + SEC, &[a], &[], &mut e).is_empty());
        assert_eq!(p.peers()[0].renegotiations_1m, 2);
        assert_eq!(p.peers()[0].handshakes_10s, 1);
        // One more seen by an event, then the close event, then the sweep
        // handing the same close over again: 3 in all, one handshake.
        let a3 = flow(1, t0, 3);
        assert!(p.on_events(t0 + 2 * SEC, &[live(a3)], &mut e).is_empty());
        assert!(p.on_events(t0 + 3 * SEC, &[closed(a3)], &mut e).is_empty());
        assert!(p.step(t0 + 4 * SEC, &[a3], &[a3], &mut e).is_empty());
        let peer = &p.peers()[0];
        assert_eq!((peer.renegotiations_1m, peer.handshakes_10s), (3, 1));
        // A sweep whose snapshot predates an event does not forget what
        // the event showed: the next sweep does not count the flow again.
        let b = flow(2, t0 + 5 * SEC, 0);
        assert!(p.on_events(t0 + 6 * SEC, &[live(b)], &mut e).is_empty());
        assert!(p.step(t0 + 6 * SEC - 1, &[], &[], &mut e).is_empty());
        assert!(p.step(t0 + 7 * SEC, &[b], &[], &mut e).is_empty());
        assert_eq!(p.peers()[0].handshakes_10s, 2);
        // The window is still driven by time: 60 s later nothing is left.
        assert!(p.step(t0 + 70 * SEC, &[b], &[], &mut e).is_empty());
        assert_eq!(p.peers().len(), 0, "{:?}", p.peers());
    }

    #[test]
    fn the_event_path_respects_dry_run_and_the_allowlist() {
        let t0 = 100 * SEC;
        let mut s = settings();
        s.dry_run = true;
        let mut p = Policy::new(s);
        let mut e = Fake::default();
        let d = p.on_events(t0, &[live(flow(1, t0, 4))], &mut e);
        let actions: Vec<_> = d.iter().map(|d| (d.rule, d.action.name())).collect();
        assert_eq!(
            actions,
            [
                ("reneg_cap", "would_reset"),
                ("renegotiations_per_minute", "would_ban")
            ]
        );
        assert!(e.bans.is_empty() && e.resets.is_empty());

        let mut p = Policy::new(settings());
        let mut e = Fake::default();
        let f = flow(1, t0, 4);
        e.allow.push(Cidr::host(endpoints(&f.0, &f.1).client.ip()));
        let d = p.on_events(t0, &[live(f)], &mut e);
        assert_eq!(
            (d.len(), d[0].action.name()),
            (1, "not_banned_allowlisted"),
            "{d:?}"
        );
        assert!(e.bans.is_empty());

        // A per-connection rule on the event path: reset, or not when
        // allowlisted.
        let mut p = Policy::new(conn_settings());
        let mut e = Fake::default();
        let mut ku = done_flow(1, 1000, t0);
        assert!(p.on_events(t0, &[live(ku)], &mut e).is_empty());
        ku.1.tracker.counters.keyupdate_like = 16;
        let d = p.on_events(t0 + SEC / 10, &[live(ku)], &mut e);
        assert_eq!(
            (d.len(), d[0].rule, d[0].action.name()),
            (1, "keyupdates_per_second", "reset"),
            "{d:?}"
        );
        assert_eq!(e.resets.len(), 1);
        let mut p = Policy::new(conn_settings());
        let mut e = Fake::default();
        e.allow.push(Cidr::host("10.0.0.1".parse().expect("ip")));
        let ku0 = done_flow(1, 1000, t0);
        assert!(p.on_events(t0, &[live(ku0)], &mut e).is_empty());
        let d = p.on_events(t0 + SEC / 10, &[live(ku)], &mut e);
        assert_eq!(d[0].action.name(), "not_reset_allowlisted", "{d:?}");
        assert!(e.resets.is_empty());
    }

    #[test]
    fn a_peer_over_a_threshold_re_arms_when_its_window_empties() {
        let mut s = settings();
        s.reneg_action = Action::Alert;
        let mut p = Policy::new(s);
        let mut e = Fake::default();
        let t0 = 100 * SEC;
        assert_eq!(p.on_events(t0, &[live(flow(1, t0, 4))], &mut e).len(), 1);
        // No event of this peer for a minute: the sweeps empty its window.
        assert!(p.step(t0 + 61 * SEC, &[], &[], &mut e).is_empty());
        let d = p.on_events(t0 + 62 * SEC, &[live(flow(2, t0 + 62 * SEC, 4))], &mut e);
        assert_eq!((d.len(), d[0].action.name()), (1, "alert"), "{d:?}");
    }

    #[test]
    fn summary_lists_the_rules_that_are_on() {
        let s = Settings::from_config(&Config {
            dry_run: true,
            ..Config::default()
        });
        let sum = s.summary("embedded defaults");
        assert!(sum.dry_run);
        let rules: Vec<&str> = sum.rules.iter().map(|r| r.rule.as_str()).collect();
        assert_eq!(
            rules,
            [
                "reneg_cap",
                "handshake_timeout",
                "keyupdates_per_second",
                "renegotiations_per_minute",
                "handshakes_per_10s"
            ]
        );
        assert_eq!(sum.rules[1].limit, 10_000);
        assert_eq!(sum.rules[1].action, "reset");
    }
}
