//! The policy: per-connection rules ([`conn`]: handshake timeout, KeyUpdate
//! rate, the renegotiation cap in dry-run), per-peer sliding windows of new
//! handshakes (10 s) and client renegotiation attempts (60 s), and the same
//! windows summed per client prefix (off by default); fed by the flow sweep.
//! A rule that fires takes its action: `alert`, `reset` (the offending
//! connection), `ban` (the peer, or for a prefix rule the prefix, with
//! escalation), or in dry-run `would_reset` / `would_ban`.
//!
//! Pure: bans and resets are reached through [`Enforcer`], so everything here
//! is tested without root.
//!
//! - A flow counts as one handshake of its client, at its `first_seen_ns`,
//!   the first time the policy sees it (live or departed); a departed flow is
//!   remembered (bounded) so a repeated close is not counted again.
//! - Renegotiations are the growth of `renegotiations_client` per flow since
//!   the previous sweep, plus what a flow added before it left the live set.
//! - A window rule fires when the count goes above its threshold, once; it
//!   fires again only after the count fell back to the threshold or below. A
//!   peer (prefix) with a ban in force is never banned again.
//! - The allowlist wins: an allowlisted peer is never banned or reset
//!   (`not_banned_allowlisted`, `not_reset_allowlisted`) and is left out of
//!   its prefix's sums; a prefix that overlaps the allowlist is never banned.

pub mod conn;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use monitor_common::flow::{addr_bytes, FlowKey, FlowValue};
use serde::Serialize;

use crate::cidr::Cidr;
use crate::config::{Action, Config, PolicySummary, RuleSummary};
use crate::record::socket_addr;

const SEC: u64 = 1_000_000_000;
/// The handshake window.
pub const HANDSHAKE_WINDOW_NS: u64 = 10 * SEC;
/// The renegotiation window.
pub const RENEG_WINDOW_NS: u64 = 60 * SEC;
/// Repeat offences escalate within this long.
pub const REPEAT_WINDOW_NS: u64 = 24 * 3600 * SEC;
/// Departed flows remembered to recognise a repeated close.
const DEPARTED_MEMORY: usize = 16_384;

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
    /// From a config; `dry_run` forces dry-run on.
    pub fn from_config(c: &Config, dry_run: bool) -> Self {
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
            dry_run: c.dry_run || dry_run,
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

/// The connection an event is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConnRef {
    /// Client endpoint.
    pub client: SocketAddr,
    /// Server endpoint.
    pub server: SocketAddr,
}

/// The counts behind a decision: the peer's (or prefix's) windows, and for
/// a per-connection rule the connection's own figure.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// New handshakes in the last 10 s.
    pub handshakes_10s: u64,
    /// Client renegotiation attempts in the last 60 s.
    pub renegotiations_1m: u64,
    /// `handshake_timeout`: ms since the connection's first ClientHello.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handshake_ms: Option<u64>,
    /// `keyupdates_per_second`: the connection's `keyupdate_like` rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyupdates_1s: Option<u64>,
    /// `reneg_cap`: the connection's client renegotiations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renegotiations_conn: Option<u64>,
}

/// One decision, printed as a JSON line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// RFC 3339 wall-clock time.
    pub time: String,
    /// The rule's name.
    pub rule: &'static str,
    /// The client address (for a prefix rule: its busiest address).
    pub peer: IpAddr,
    /// The client prefix (prefix rules only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<Cidr>,
    /// The connection that crossed the threshold, if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection: Option<ConnRef>,
    /// The counts.
    pub counts: Counts,
    /// `alert`, `reset`, `would_reset`, `already_closed`, `reset_failed`,
    /// `not_reset_allowlisted`, `ban`, `would_ban`, `not_banned_allowlisted`,
    /// `ban_failed`.
    pub action: &'static str,
    /// The ban's TTL in seconds (ban and would_ban).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<u64>,
    /// Dry-run on.
    pub dry_run: bool,
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
            action: "alert",
            ttl_s: None,
            dry_run,
        }
    }
}

/// One peer in `GET /v1/peers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PeerRecord {
    /// The client address.
    pub peer: IpAddr,
    /// New handshakes in the last 10 s.
    pub handshakes_10s: u64,
    /// Client renegotiation attempts in the last 60 s.
    pub renegotiations_1m: u64,
    /// Bans (or would-be bans in dry-run) within the last 24 h.
    pub bans_24h: u64,
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

#[derive(Debug, Default)]
struct Peer {
    /// first_seen_ns of new flows, oldest first.
    handshakes: VecDeque<u64>,
    /// (time, attempts), oldest first.
    renegs: VecDeque<(u64, u64)>,
    /// Bans issued (or that would have been).
    history: History,
    /// Rules currently above their threshold (fired already).
    over: HashSet<Rule>,
    /// The newest connection seen per rule.
    last_conn: HashMap<Rule, ConnRef>,
}

impl Peer {
    fn prune(&mut self, now: u64) {
        while self
            .handshakes
            .front()
            .is_some_and(|t| now.saturating_sub(*t) > HANDSHAKE_WINDOW_NS)
        {
            self.handshakes.pop_front();
        }
        while self
            .renegs
            .front()
            .is_some_and(|(t, _)| now.saturating_sub(*t) > RENEG_WINDOW_NS)
        {
            self.renegs.pop_front();
        }
        self.history.prune(now);
    }

    fn counts(&self) -> Counts {
        Counts {
            handshakes_10s: self.handshakes.len() as u64,
            renegotiations_1m: self.renegs.iter().map(|(_, n)| n).sum(),
            ..Counts::default()
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
    over: HashSet<Rule>,
}

/// One prefix's sums in a sweep: counts, and per rule the busiest peer with
/// its newest connection.
#[derive(Default)]
struct Sum {
    counts: Counts,
    busiest: HashMap<Rule, (u64, IpAddr, Option<ConnRef>)>,
}

type FlowId = (FlowKey, u64);

/// The policy's state.
#[derive(Debug)]
pub struct Policy {
    settings: Settings,
    peers: HashMap<IpAddr, Peer>,
    prefixes: HashMap<Cidr, Group>,
    conns: conn::Conns,
    /// Live flows' `renegotiations_client` at the last sweep.
    live: HashMap<FlowId, u32>,
    /// Departed flows already taken in, with their last count.
    departed: HashMap<FlowId, u32>,
    departed_order: VecDeque<FlowId>,
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
        Action::Alert => d.action = "alert",
        Action::Reset => {
            let Some(conn) = d.connection.clone() else {
                d.action = "alert";
                return true;
            };
            if enforcer.allowed(&Cidr::host(conn.client.ip())) {
                d.action = "not_reset_allowlisted";
            } else if s.dry_run {
                d.action = "would_reset";
            } else {
                d.action = match enforcer.reset(&conn) {
                    Ok(true) => "reset",
                    Ok(false) => "already_closed",
                    Err(e) => {
                        tracing::warn!(client = %conn.client, server = %conn.server, rule = d.rule, "policy reset failed: {e}");
                        "reset_failed"
                    }
                };
            }
        }
        Action::Ban => {
            if history.banned_until > now {
                return false;
            }
            if enforcer.allowed(&target) {
                d.action = "not_banned_allowlisted";
                return true;
            }
            let ttl = s.escalated_ttl(history.bans.len());
            d.ttl_s = Some(ttl.as_secs());
            if s.dry_run {
                d.action = "would_ban";
            } else {
                let reason = format!("{reason}, offence {}", history.bans.len() + 1);
                match enforcer.ban(target, ttl, &reason) {
                    Ok(()) => d.action = "ban",
                    Err(e) => {
                        tracing::warn!(%target, "policy ban failed: {e}");
                        d.action = "ban_failed";
                    }
                }
            }
            if d.action != "ban_failed" {
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
            peers: HashMap::new(),
            prefixes: HashMap::new(),
            conns: conn::Conns::default(),
            live: HashMap::new(),
            departed: HashMap::new(),
            departed_order: VecDeque::new(),
        }
    }

    /// The settings in use.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Replaces the settings (SIGHUP reload); the windows, the ban history
    /// and the per-connection watch state stay.
    pub fn set_settings(&mut self, settings: Settings) {
        self.settings = settings;
    }

    /// Takes in one flow (live or departed) at `now`: counts a new flow's
    /// handshake and its renegotiation growth.
    fn observe(&mut self, now: u64, key: &FlowKey, value: &FlowValue, departed: bool) {
        let id = (*key, value.first_seen_ns);
        let renegs = value.tracker.counters.renegotiations_client;
        let previous = match self.live.get(&id) {
            Some(n) => Some(*n),
            None => self.departed.get(&id).copied(),
        };
        let conn = endpoints(key, value);
        let peer = self.peers.entry(conn.client.ip()).or_default();
        if previous.is_none() && now.saturating_sub(value.first_seen_ns) <= HANDSHAKE_WINDOW_NS {
            peer.handshakes.push_back(value.first_seen_ns.min(now));
            peer.last_conn.insert(Rule::HandshakesPer10s, conn.clone());
        }
        let grown = renegs.saturating_sub(previous.unwrap_or(0));
        if grown > 0 {
            peer.renegs.push_back((now, u64::from(grown)));
            peer.last_conn.insert(Rule::RenegotiationsPerMinute, conn);
        }
        let seen = previous.unwrap_or(0).max(renegs);
        if departed {
            self.live.remove(&id);
            if self.departed.insert(id, seen).is_none() {
                self.departed_order.push_back(id);
                while self.departed_order.len() > DEPARTED_MEMORY {
                    if let Some(old) = self.departed_order.pop_front() {
                        self.departed.remove(&old);
                    }
                }
            }
        } else {
            self.live.insert(id, seen);
        }
    }

    /// One sweep: `live` are the flows live now, `departed` those that left
    /// the live set since the last sweep; `now` is `CLOCK_MONOTONIC` ns.
    /// Returns the decisions taken (bans and resets already made through
    /// `enforcer`).
    pub fn step(
        &mut self,
        now: u64,
        live: &[(FlowKey, FlowValue)],
        departed: &[(FlowKey, FlowValue)],
        enforcer: &mut impl Enforcer,
    ) -> Vec<Decision> {
        let newly_departed: Vec<&(FlowKey, FlowValue)> = departed
            .iter()
            .filter(|(k, v)| !self.departed.contains_key(&(*k, v.first_seen_ns)))
            .collect();
        let hits = self.conns.check(now, live, &newly_departed, &self.settings);
        for (k, v) in departed {
            self.observe(now, k, v, true);
        }
        let live_ids: HashSet<FlowId> = live.iter().map(|(k, v)| (*k, v.first_seen_ns)).collect();
        for (k, v) in live {
            self.observe(now, k, v, false);
        }
        // Live flows that vanished without being reported departed.
        self.live.retain(|id, _| live_ids.contains(id));

        let mut out = Vec::new();
        let settings = self.settings.clone();
        let s = &settings;
        for hit in hits {
            let ip = hit.conn.client.ip();
            let peer = self.peers.entry(ip).or_default();
            let mut d = Decision::new(hit.rule, ip, s.dry_run);
            d.counts = Counts {
                handshake_ms: hit.counts.handshake_ms,
                keyupdates_1s: hit.counts.keyupdates_1s,
                renegotiations_conn: hit.counts.renegotiations_conn,
                ..peer.counts()
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

        let rules = [
            (Rule::HandshakesPer10s, s.handshakes_per_10s),
            (Rule::RenegotiationsPerMinute, s.renegotiations_per_minute),
        ];
        for (ip, peer) in &mut self.peers {
            peer.prune(now);
            let counts = peer.counts();
            for (rule, threshold) in rules {
                let n = match rule {
                    Rule::HandshakesPer10s => counts.handshakes_10s,
                    _ => counts.renegotiations_1m,
                };
                if threshold == 0 || n <= u64::from(threshold) {
                    peer.over.remove(&rule);
                    continue;
                }
                if !peer.over.insert(rule) {
                    continue;
                }
                let mut d = Decision::new(rule, *ip, s.dry_run);
                d.connection = peer.last_conn.get(&rule).cloned();
                d.counts = counts;
                let reason = format!("policy: {} > {threshold} (n={n})", rule.name());
                let target = Target {
                    cidr: Cidr::host(*ip),
                    history: &mut peer.history,
                    reason,
                };
                if act(s, now, s.action(rule), target, &mut d, enforcer) {
                    out.push(d);
                }
            }
        }
        self.prefix_step(now, enforcer, &mut out);
        self.peers
            .retain(|_, p| !p.idle() || p.history.banned_until > now || !p.over.is_empty());
        out
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
        let mut sums: HashMap<Cidr, Sum> = HashMap::new();
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
            let c = peer.counts();
            let sum = sums.entry(prefix).or_default();
            sum.counts.handshakes_10s += c.handshakes_10s;
            sum.counts.renegotiations_1m += c.renegotiations_1m;
            for (rule, n, own) in [
                (
                    Rule::PrefixHandshakesPer10s,
                    c.handshakes_10s,
                    Rule::HandshakesPer10s,
                ),
                (
                    Rule::PrefixRenegotiationsPerMinute,
                    c.renegotiations_1m,
                    Rule::RenegotiationsPerMinute,
                ),
            ] {
                let best = sum.busiest.entry(rule).or_insert((0, *ip, None));
                if n > best.0 || best.2.is_none() {
                    *best = (n, *ip, peer.last_conn.get(&own).cloned());
                }
            }
        }
        for (prefix, sum) in &sums {
            let group = self.prefixes.entry(*prefix).or_default();
            group.history.prune(now);
            for (rule, threshold) in rules {
                let n = match rule {
                    Rule::PrefixHandshakesPer10s => sum.counts.handshakes_10s,
                    _ => sum.counts.renegotiations_1m,
                };
                if threshold == 0 || n <= u64::from(threshold) {
                    group.over.remove(&rule);
                    continue;
                }
                if !group.over.insert(rule) {
                    continue;
                }
                let (peer, conn) = match sum.busiest.get(&rule) {
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
                group.over.clear();
                group.history.prune(now);
            }
        }
        self.prefixes
            .retain(|p, g| sums.contains_key(p) || !g.history.bans.is_empty());
    }

    /// The ban history of every peer and prefix, sorted (for the state
    /// file, so a restarted agent keeps escalating).
    pub fn export_history(&self) -> Vec<super::state_file::SavedHistory> {
        let saved = |kind: &str, target: Cidr, h: &History| super::state_file::SavedHistory {
            kind: kind.to_owned(),
            target: target.to_string(),
            bans_ns: h.bans.iter().copied().collect(),
            banned_until_ns: h.banned_until,
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
    pub fn import_history(&mut self, saved: &[super::state_file::SavedHistory]) {
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

    /// A peer's window counts now (zero for an unknown peer).
    pub fn peer_counts(&self, ip: IpAddr) -> Counts {
        self.peers.get(&ip).map(Peer::counts).unwrap_or_default()
    }

    /// Every peer with something in its windows or ban history, by address.
    pub fn peers(&self) -> Vec<PeerRecord> {
        let mut out: Vec<PeerRecord> = self
            .peers
            .iter()
            .map(|(ip, p)| {
                let c = p.counts();
                PeerRecord {
                    peer: *ip,
                    handshakes_10s: c.handshakes_10s,
                    renegotiations_1m: c.renegotiations_1m,
                    bans_24h: p.history.bans.len() as u64,
                }
            })
            .collect();
        out.sort_by_key(|p| p.peer);
        out
    }
}

/// The agent's enforcement: bans in the kernel's ban maps (reason
/// [`monitor_common::ban::BAN_REASON_POLICY`]), resets by `SOCK_DESTROY` of
/// the server's socket.
pub struct AgentEnforcer<'a, M: super::bans::BanMaps> {
    /// The ban table.
    pub bans: &'a mut super::bans::BanTable<M>,
}

impl<M: super::bans::BanMaps> Enforcer for AgentEnforcer<'_, M> {
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
                crate::record::monotonic_now_ns(),
            )
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn reset(&mut self, conn: &ConnRef) -> Result<bool, String> {
        let c = super::sock_destroy::Conn {
            local: conn.server,
            remote: conn.client,
        };
        match super::sock_destroy::destroy(&c) {
            Ok(super::sock_destroy::Outcome::Destroyed) => Ok(true),
            Ok(super::sock_destroy::Outcome::Gone) => Ok(false),
            Err(e) => Err(format!("{e:#}")),
        }
    }
}

/// Prints each decision as one JSON line on stdout (and logs it).
pub fn print_decisions(decisions: &[Decision]) {
    if decisions.is_empty() {
        return;
    }
    let mut out = String::new();
    for d in decisions {
        tracing::warn!(rule = d.rule, peer = %d.peer, action = d.action, "policy decision");
        match serde_json::to_string(d) {
            Ok(line) => {
                out.push_str(&line);
                out.push('\n');
            }
            Err(e) => tracing::warn!("encoding a decision: {e}"),
        }
    }
    if let Err(e) = crate::output::write_stdout(out.as_bytes()) {
        tracing::warn!("writing decisions: {e:#}");
    }
    super::decision_log::append(out.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::sample_flow;

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
        Settings::from_config(&c, false)
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
            (d[0].rule, d[0].action, d[0].ttl_s),
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
            (d[0].rule, d[0].action),
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
        assert_eq!((d.len(), d[0].action), (1, "alert"));
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
            (d[0].action, d[0].dry_run, d[0].ttl_s),
            ("would_ban", true, Some(3))
        );
        assert!(e.bans.is_empty());

        let mut p = Policy::new(settings());
        let ip = endpoints(&flood[0].0, &flood[0].1).client.ip();
        e.allow.push(Cidr::host(ip));
        let d = p.step(now, &flood, &[], &mut e);
        assert_eq!(d[0].action, "not_banned_allowlisted");
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
        Settings::from_config(&c, false)
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
        assert_eq!((d[0].rule, d[0].action), ("handshake_timeout", "reset"));
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
        assert_eq!((d[0].rule, d[0].action), ("keyupdates_per_second", "reset"));
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
            (d[0].rule, d[0].action, d[0].dry_run),
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
        assert_eq!((d.len(), d[0].action), (1, "would_reset"), "{d:?}");
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
            (d[0].rule, d[0].action, d[0].ttl_s),
            ("handshake_timeout", "ban", Some(600))
        );
        assert_eq!((d[1].rule, d[1].action), ("keyupdates_per_second", "alert"));
        assert_eq!(e.bans.len(), 1);
        assert_eq!(e.bans[0].0.to_string(), "10.0.0.1/32");
        assert!(e.bans[0].2.contains("handshake_timeout"), "{:?}", e.bans);
        assert!(e.resets.is_empty());
        // Allowlisted clients are never reset.
        let mut s = conn_settings();
        s.dry_run = false;
        let mut p = Policy::new(s);
        let mut e = Fake::default();
        e.allow.push(Cidr::host("10.0.0.1".parse().expect("ip")));
        let d = p.step(t0 + 3 * SEC, &[stalled], &[], &mut e);
        assert_eq!(d[0].action, "not_reset_allowlisted");
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
        assert_eq!((d.len(), d[0].action), (1, "reset"), "{d:?}");
        assert_eq!(e.resets.len(), 1);
        assert_eq!(d[0].connection.as_ref(), e.resets.first());
    }

    fn prefix_settings() -> Settings {
        let mut c = Config::default();
        c.peer.handshakes_per_10s = 0;
        c.prefix.handshakes_per_10s = 5;
        c.action.ban_ttl = Duration::from_secs(3);
        c.limits.handshake_timeout = Duration::ZERO;
        Settings::from_config(&c, false)
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
            (d[0].rule, d[0].action, d[0].ttl_s),
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
            (d.len(), d[0].action),
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

    #[test]
    fn summary_lists_the_rules_that_are_on() {
        let s = Settings::from_config(&Config::default(), true);
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
