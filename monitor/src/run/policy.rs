//! The per-peer policy: sliding windows of new handshakes (10 s) and client
//! renegotiation attempts (60 s) per client address, fed by the flow sweep;
//! when a rule's threshold is crossed, an alert, a ban (with escalation), a
//! `would_ban` (dry-run) or a `not_banned_allowlisted` decision.
//!
//! Pure: the bans are reached through [`Enforcer`], so everything here is
//! tested without root.
//!
//! - A flow counts as one handshake of its client, at its `first_seen_ns`,
//!   the first time the policy sees it (live or departed); a departed flow is
//!   remembered (bounded) so a repeated close is not counted again.
//! - Renegotiations are the growth of `renegotiations_client` per flow since
//!   the previous sweep, plus what a flow added before it left the live set.
//! - A rule fires when the count goes above its threshold, once; it fires
//!   again only after the count fell back to the threshold or below. A peer
//!   with a ban in force is never banned again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use monitor_common::flow::{addr_bytes, FlowKey, FlowValue};
use serde::Serialize;

use crate::config::{Action, Config};
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

/// The two per-peer rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// `[peer] renegotiations_per_minute`.
    RenegotiationsPerMinute,
    /// `[peer] handshakes_per_10s`.
    HandshakesPer10s,
}

impl Rule {
    /// The rule's name in the config and in events.
    pub fn name(self) -> &'static str {
        match self {
            Rule::RenegotiationsPerMinute => "renegotiations_per_minute",
            Rule::HandshakesPer10s => "handshakes_per_10s",
        }
    }
}

/// What the policy needs of the ban table.
pub trait Enforcer {
    /// `ip` is allowlisted.
    fn allowed(&self, ip: IpAddr) -> bool;
    /// Bans `ip` for `ttl`.
    fn ban(&mut self, ip: IpAddr, ttl: Duration, reason: &str) -> Result<(), String>;
}

/// The policy's settings, from the config file (and `--dry-run`).
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
}

/// The connection an event is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConnRef {
    /// Client endpoint.
    pub client: SocketAddr,
    /// Server endpoint.
    pub server: SocketAddr,
}

/// The peer's counts in the current windows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// New handshakes in the last 10 s.
    pub handshakes_10s: u64,
    /// Client renegotiation attempts in the last 60 s.
    pub renegotiations_1m: u64,
}

/// One decision, printed as a JSON line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// RFC 3339 wall-clock time.
    pub time: String,
    /// The rule's name.
    pub rule: &'static str,
    /// The client address.
    pub peer: IpAddr,
    /// The connection that crossed the threshold, if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection: Option<ConnRef>,
    /// The peer's counts.
    pub counts: Counts,
    /// `alert`, `ban`, `would_ban`, `not_banned_allowlisted`, `ban_failed`.
    pub action: &'static str,
    /// The ban's TTL in seconds (ban and would_ban).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<u64>,
    /// Dry-run on.
    pub dry_run: bool,
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

#[derive(Debug, Default)]
struct Peer {
    /// first_seen_ns of new flows, oldest first.
    handshakes: VecDeque<u64>,
    /// (time, attempts), oldest first.
    renegs: VecDeque<(u64, u64)>,
    /// When bans were issued (or would have been), oldest first.
    bans: VecDeque<u64>,
    /// Ban end (monotonic ns) of the last ban.
    banned_until: u64,
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
        while self
            .bans
            .front()
            .is_some_and(|t| now.saturating_sub(*t) > REPEAT_WINDOW_NS)
        {
            self.bans.pop_front();
        }
    }

    fn counts(&self) -> Counts {
        Counts {
            handshakes_10s: self.handshakes.len() as u64,
            renegotiations_1m: self.renegs.iter().map(|(_, n)| n).sum(),
        }
    }

    fn idle(&self) -> bool {
        self.handshakes.is_empty() && self.renegs.is_empty() && self.bans.is_empty()
    }
}

type FlowId = (FlowKey, u64);

/// The policy's state.
#[derive(Debug)]
pub struct Policy {
    settings: Settings,
    peers: HashMap<IpAddr, Peer>,
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

impl Policy {
    /// A policy with no history.
    pub fn new(settings: Settings) -> Self {
        Policy {
            settings,
            peers: HashMap::new(),
            live: HashMap::new(),
            departed: HashMap::new(),
            departed_order: VecDeque::new(),
        }
    }

    /// The settings in use.
    pub fn settings(&self) -> &Settings {
        &self.settings
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
    /// Returns the decisions taken (bans already made through `enforcer`).
    pub fn step(
        &mut self,
        now: u64,
        live: &[(FlowKey, FlowValue)],
        departed: &[(FlowKey, FlowValue)],
        enforcer: &mut impl Enforcer,
    ) -> Vec<Decision> {
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
        let rules = [
            (
                Rule::HandshakesPer10s,
                self.settings.handshakes_per_10s,
                self.settings.handshake_action,
            ),
            (
                Rule::RenegotiationsPerMinute,
                self.settings.renegotiations_per_minute,
                self.settings.reneg_action,
            ),
        ];
        let settings = self.settings.clone();
        for (ip, peer) in &mut self.peers {
            peer.prune(now);
            let counts = peer.counts();
            for (rule, threshold, action) in rules {
                let n = match rule {
                    Rule::HandshakesPer10s => counts.handshakes_10s,
                    Rule::RenegotiationsPerMinute => counts.renegotiations_1m,
                };
                if threshold == 0 || n <= u64::from(threshold) {
                    peer.over.remove(&rule);
                    continue;
                }
                if !peer.over.insert(rule) {
                    continue;
                }
                let mut d = Decision {
                    time: humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                        .to_string(),
                    rule: rule.name(),
                    peer: *ip,
                    connection: peer.last_conn.get(&rule).cloned(),
                    counts,
                    action: "alert",
                    ttl_s: None,
                    dry_run: settings.dry_run,
                };
                if action == Action::Ban {
                    if peer.banned_until > now {
                        continue;
                    }
                    if enforcer.allowed(*ip) {
                        d.action = "not_banned_allowlisted";
                    } else {
                        let ttl = settings.escalated_ttl(peer.bans.len());
                        d.ttl_s = Some(ttl.as_secs());
                        let reason = format!(
                            "policy: {} > {threshold} (n={n}, offence {})",
                            rule.name(),
                            peer.bans.len() + 1
                        );
                        if settings.dry_run {
                            d.action = "would_ban";
                        } else {
                            match enforcer.ban(*ip, ttl, &reason) {
                                Ok(()) => d.action = "ban",
                                Err(e) => {
                                    tracing::warn!(peer = %ip, "policy ban failed: {e}");
                                    d.action = "ban_failed";
                                }
                            }
                        }
                        if d.action != "ban_failed" {
                            peer.bans.push_back(now);
                            let ttl_ns = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX);
                            peer.banned_until = now.saturating_add(ttl_ns);
                        }
                    }
                }
                out.push(d);
            }
        }
        self.peers
            .retain(|_, p| !p.idle() || p.banned_until > now || !p.over.is_empty());
        out
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
                    bans_24h: p.bans.len() as u64,
                }
            })
            .collect();
        out.sort_by_key(|p| p.peer);
        out
    }
}

impl<M: super::bans::BanMaps> Enforcer for super::bans::BanTable<M> {
    fn allowed(&self, ip: IpAddr) -> bool {
        let host = crate::cidr::Cidr::host(ip);
        self.allowlist().iter().any(|a| a.overlaps(&host))
    }

    fn ban(&mut self, ip: IpAddr, ttl: Duration, reason: &str) -> Result<(), String> {
        self.add(
            crate::cidr::Cidr::host(ip),
            ttl,
            reason,
            crate::record::monotonic_now_ns(),
        )
        .map(drop)
        .map_err(|e| e.to_string())
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::sample_flow;

    #[derive(Default)]
    struct Fake {
        allow: Vec<IpAddr>,
        bans: Vec<(IpAddr, Duration, String)>,
    }

    impl Enforcer for Fake {
        fn allowed(&self, ip: IpAddr) -> bool {
            self.allow.contains(&ip)
        }
        fn ban(&mut self, ip: IpAddr, ttl: Duration, reason: &str) -> Result<(), String> {
            self.bans.push((ip, ttl, reason.to_owned()));
            Ok(())
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
        e.allow.push(ip);
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
}
