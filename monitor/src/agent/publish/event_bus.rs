//! The agent's event stream (`GET /v1/events`, `hsmon events`): policy
//! decisions and notable transitions (bans added, removed or expired, the
//! agent started, reloaded or stopping) as JSON lines.
//!
//! Publishing never blocks and never fails: an event goes into a bounded
//! backlog (the last [`BACKLOG`]) and into a tokio broadcast channel of the
//! same capacity. A follower that reads too slowly falls behind the channel
//! and is told so with a `lagged` line naming how many events it missed; the
//! agent never waits for it.
//!
//! Every line is one JSON object with at least `seq` (a number increasing by
//! one per event since the agent started), `time` (RFC 3339, UTC) and
//! `event` (its kind, [`Kind`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Map, Value};
use tokio::sync::broadcast;

use crate::agent::enforce::bans::BanChange;
use crate::api::bans::BanRecord;
use crate::locks::lock;

/// How many events the backlog keeps, and how far a follower may fall
/// behind before it is told `lagged`.
pub const BACKLOG: usize = 1024;

/// The kinds of event (`event` key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A policy decision (the keys of the README's "Events" table).
    Decision,
    /// A ban entered the ban maps (operator or policy).
    BanAdded,
    /// A ban was removed before its end (`hsmon bans del`).
    BanRemoved,
    /// A ban reached its end and was swept.
    BanExpired,
    /// The agent attached its hooks and serves the control socket.
    AgentStarted,
    /// SIGHUP: the config file was read again and applied.
    ConfigReloaded,
    /// SIGHUP: the config file was bad; the old settings stay.
    ConfigReloadFailed,
    /// The agent is stopping (the last event of a follow stream).
    AgentStopping,
    /// Only in a follow stream: the reader fell behind and `skipped` events
    /// were dropped for it.
    Lagged,
}

impl Kind {
    /// The `event` value.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Decision => "decision",
            Kind::BanAdded => "ban_added",
            Kind::BanRemoved => "ban_removed",
            Kind::BanExpired => "ban_expired",
            Kind::AgentStarted => "agent_started",
            Kind::ConfigReloaded => "config_reloaded",
            Kind::ConfigReloadFailed => "config_reload_failed",
            Kind::AgentStopping => "agent_stopping",
            Kind::Lagged => "lagged",
        }
    }
}

/// One published event: its sequence number and its JSON line (no newline).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Position in the stream, from 1.
    pub seq: u64,
    /// The JSON object, one line.
    pub line: Arc<str>,
    /// The agent is stopping: a follow stream ends after this one.
    pub last: bool,
}

/// The publish side, shared by every task of the agent.
#[derive(Debug)]
pub struct EventBus {
    next: AtomicU64,
    backlog: Mutex<VecDeque<Event>>,
    tx: broadcast::Sender<Event>,
    /// `ban_added` events published, by `added_by` (for the metrics).
    bans_issued: Mutex<BTreeMap<String, u64>>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

/// Now as RFC 3339 UTC with seconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

impl EventBus {
    /// An empty bus.
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(BACKLOG);
        EventBus {
            next: AtomicU64::new(1),
            backlog: Mutex::new(VecDeque::with_capacity(BACKLOG)),
            tx,
            bans_issued: Mutex::new(BTreeMap::new()),
        }
    }

    /// Publishes an event of `kind` with `fields` (an object; other values
    /// go under `data`). `seq`, `time` and `event` are set here.
    pub fn publish(&self, kind: Kind, fields: Value) {
        if kind == Kind::BanAdded {
            let origin = fields
                .get("added_by")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_owned();
            *lock(&self.bans_issued).entry(origin).or_default() += 1;
        }
        let mut obj = Map::new();
        // Under the backlog lock: sequence numbers enter the backlog and the
        // channel in order.
        let mut backlog = lock(&self.backlog);
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        obj.insert("seq".into(), seq.into());
        obj.insert("time".into(), now_rfc3339().into());
        obj.insert("event".into(), kind.name().into());
        match fields {
            Value::Object(m) => {
                for (k, v) in m {
                    if !matches!(k.as_str(), "seq" | "event") {
                        obj.insert(k, v);
                    }
                }
            }
            Value::Null => {}
            other => {
                obj.insert("data".into(), other);
            }
        }
        let line: Arc<str> = Value::Object(obj).to_string().into();
        let ev = Event {
            seq,
            line,
            last: kind == Kind::AgentStopping,
        };
        if backlog.len() >= BACKLOG {
            backlog.pop_front();
        }
        backlog.push_back(ev.clone());
        // No receiver is not an error: nobody follows.
        let _ = self.tx.send(ev);
    }

    /// Publishes a policy decision (its JSON, plus `event: "decision"`).
    pub fn decision(&self, d: &crate::agent::policy::Decision) {
        match serde_json::to_value(d) {
            Ok(v) => self.publish(Kind::Decision, v),
            Err(e) => tracing::warn!("encoding a decision event: {e}"),
        }
    }

    /// Publishes what the ban table just did (`ban_added`, `ban_removed`,
    /// `ban_expired`, with the ban's `cidr`, `reason`, `added_by` and
    /// `expires_in_ms`).
    pub fn ban(&self, change: BanChange, b: &BanRecord) {
        let kind = match change {
            BanChange::Added => Kind::BanAdded,
            BanChange::Removed => Kind::BanRemoved,
            BanChange::Expired => Kind::BanExpired,
        };
        self.publish(
            kind,
            json!({
                "cidr": b.cidr.to_string(),
                "reason": b.reason,
                "added_by": b.added_by,
                "expires_in_ms": b.expires_in_ms,
            }),
        );
    }

    /// Bans issued so far (`ban_added` events), by origin.
    pub fn bans_issued(&self) -> BTreeMap<String, u64> {
        lock(&self.bans_issued).clone()
    }

    /// The backlog now, oldest first.
    pub fn backlog(&self) -> Vec<Event> {
        lock(&self.backlog).iter().cloned().collect()
    }

    /// The backlog and a receiver for what comes after it (no event is
    /// missed or repeated between the two).
    pub fn follow(&self) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let backlog = lock(&self.backlog);
        let rx = self.tx.subscribe();
        (backlog.iter().cloned().collect(), rx)
    }
}

/// The `lagged` line a slow follower gets.
pub fn lagged_line(skipped: u64) -> String {
    json!({"seq": 0, "time": now_rfc3339(), "event": Kind::Lagged.name(), "skipped": skipped})
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban(cidr: &str, ms: u64) -> crate::api::bans::BanRecord {
        serde_json::from_value(json!({
            "cidr": cidr, "reason": "r", "expires_in_ms": ms, "added_by": "manual"
        }))
        .expect("a ban record")
    }

    fn parse(e: &Event) -> Value {
        serde_json::from_str(&e.line).expect("json")
    }

    #[test]
    fn events_carry_seq_time_and_kind() {
        let bus = EventBus::new();
        bus.publish(Kind::AgentStarted, json!({"pid": 7}));
        bus.publish(Kind::BanAdded, json!({"cidr": "10.0.0.1/32", "seq": 99}));
        let b = bus.backlog();
        assert_eq!(b.len(), 2);
        let first = parse(&b[0]);
        assert_eq!(first["seq"], 1);
        assert_eq!(first["event"], "agent_started");
        assert_eq!(first["pid"], 7);
        assert!(first["time"].as_str().is_some_and(|t| t.ends_with('Z')));
        let second = parse(&b[1]);
        assert_eq!(second["seq"], 2, "fields cannot override seq");
        assert_eq!(second["event"], "ban_added");
    }

    #[test]
    fn backlog_is_bounded() {
        let bus = EventBus::new();
        for i in 0..(BACKLOG + 10) {
            bus.publish(Kind::Decision, json!({ "i": i }));
        }
        let b = bus.backlog();
        assert_eq!(b.len(), BACKLOG);
        assert_eq!(b[0].seq, 11);
        assert_eq!(b[BACKLOG - 1].seq, (BACKLOG + 10) as u64);
    }

    #[tokio::test]
    async fn follow_misses_and_repeats_nothing() {
        let bus = EventBus::new();
        bus.publish(Kind::AgentStarted, Value::Null);
        let (backlog, mut rx) = bus.follow();
        bus.publish(Kind::ConfigReloaded, Value::Null);
        assert_eq!(backlog.len(), 1);
        let next = rx.recv().await.expect("the next event");
        assert_eq!(next.seq, 2);
    }

    #[tokio::test]
    async fn a_slow_follower_lags_and_never_blocks_the_publisher() {
        let bus = EventBus::new();
        let (_, mut rx) = bus.follow();
        for _ in 0..(BACKLOG * 3) {
            bus.publish(Kind::Decision, Value::Null);
        }
        match rx.recv().await {
            Err(broadcast::error::RecvError::Lagged(n)) => assert_eq!(n, (BACKLOG * 2) as u64),
            other => panic!("expected a lag, got {other:?}"),
        }
        let v: Value = serde_json::from_str(&lagged_line(5)).expect("json");
        assert_eq!(v["event"], "lagged");
        assert_eq!(v["skipped"], 5);
    }

    #[test]
    fn ban_changes_become_their_events_with_the_ban_fields() {
        let bus = EventBus::new();
        bus.ban(BanChange::Added, &ban("10.0.0.1/32", 60_000));
        bus.ban(BanChange::Removed, &ban("10.0.0.1/32", 59_000));
        bus.ban(BanChange::Expired, &ban("10.0.0.2/32", 0));
        let lines: Vec<Value> = bus.backlog().iter().map(parse).collect();
        let kinds: Vec<&str> = lines.iter().filter_map(|v| v["event"].as_str()).collect();
        assert_eq!(kinds, ["ban_added", "ban_removed", "ban_expired"]);
        assert_eq!(lines[0]["cidr"], "10.0.0.1/32");
        assert_eq!(lines[0]["reason"], "r");
        assert_eq!(lines[0]["added_by"], "manual");
        assert_eq!(lines[0]["expires_in_ms"], 60_000);
        assert_eq!(bus.bans_issued().get("manual"), Some(&1));
    }
}
