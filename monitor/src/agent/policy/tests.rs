//! Unit tests of the policy, built from plain values: a config, flow
//! states and a recording enforcer.

use super::*;
use crate::agent::ingest::record::tests::sample_flow;
use crate::config::Config;

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
    // The server answered.
    v.tracker.dirs[monitor_common::tracker::SERVER].status = monitor_common::tracker::DIR_SYNCED;
    (k, v)
}

#[test]
fn handshake_timeout_skips_adopted_forged_and_mid_stream_flows() {
    use monitor_common::tracker::{DIR_NEW, FF_HS_ACTIVE, SERVER};
    let mut p = Policy::new(conn_settings());
    let mut e = Fake::default();
    let t0 = 100 * SEC;
    p.adopt_flows_before(t0);
    let stalled = |port: u16, first_seen: u64| {
        let mut f = done_flow(1, port, first_seen);
        f.1.tracker.flags = FF_HS_ACTIVE;
        f
    };
    // Opened before the agent started (or restarted): adopted.
    let old = stalled(1000, t0 - 1);
    // A forged "ClientHello" from a spoofed source: the server never
    // answered.
    let mut forged = stalled(1001, t0);
    forged.1.tracker.dirs[SERVER].status = DIR_NEW;
    // First seen mid-stream: no ClientHello, its start is unknown.
    let mut mid = stalled(1002, t0);
    mid.1.tracker.counters.client_hellos = 0;
    // Seen from its ClientHello, answered, stalled: timed.
    let real = stalled(1003, t0);
    let flows = [old, forged, mid, real];
    let d = p.step(t0 + 30 * SEC, &flows, &[], &mut e);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].rule, "handshake_timeout");
    assert_eq!(d[0].connection, Some(endpoints(&real.0, &real.1)));
    assert_eq!(e.resets, vec![endpoints(&real.0, &real.1)]);
    // Events take the same view.
    let mut p = Policy::new(conn_settings());
    p.adopt_flows_before(t0);
    let ups: Vec<_> = flows[..3].iter().map(|f| live(*f)).collect();
    assert!(p.on_events(t0 + 30 * SEC, &ups, &mut e).is_empty());
}

/// One TLS 1.3 connection's records after its handshake: `(ms, dir, len)`
/// (`dir` 0 client, 1 server; `len` the record's body length).
type Timeline = Vec<(u64, usize, usize)>;

/// `n` records from `dir` of `len` bytes every `every_ms` from `from_ms`,
/// each answered (same time) by one of `answer` bytes from the other side
/// when given.
fn every(n: u64, every_ms: u64, dir: usize, len: usize, answer: Option<usize>) -> Timeline {
    let mut t = Vec::new();
    for i in 0..n {
        t.push((i * every_ms, dir, len));
        if let Some(a) = answer {
            t.push((i * every_ms, 1 - dir, a));
        }
    }
    t
}

/// Runs each workload's records through the tracker (from a real TLS 1.3
/// handshake) and the policy `s`, observing every connection every 100 ms
/// for `secs` seconds (the event path); returns `(workload, rule, action,
/// ms after the start)` per decision and the enforcer.
fn run_workloads(
    s: Settings,
    workloads: &[(&'static str, Timeline)],
    secs: u64,
) -> (Vec<(&'static str, &'static str, &'static str, u64)>, Fake) {
    use monitor_common::testing::{app_data, run_sends, tls13_full, Conversation};
    let mut p = Policy::new(s);
    let mut e = Fake::default();
    let t0 = 100 * SEC;
    let mut out = Vec::new();
    let flows: Vec<_> = (0..workloads.len())
        .map(|i| done_flow(1 + i as u8, 1000 + i as u16, t0))
        .collect();
    for step in 0..=secs * 10 {
        let ms = step * 100;
        let mut updates = Vec::new();
        for ((_, records), f) in workloads.iter().zip(&flows) {
            let mut c = Conversation::new();
            tls13_full(&mut c);
            for &(_, dir, len) in records.iter().filter(|r| r.0 <= ms) {
                c.send(dir, app_data(len));
            }
            let mut f = *f;
            f.1.tracker = run_sends(&c, [1000, 5000]);
            updates.push(live(f));
        }
        for d in p.on_events(t0 + ms * SEC / 1000, &updates, &mut e) {
            let i = flows
                .iter()
                .position(|f| Some(endpoints(&f.0, &f.1)) == d.connection)
                .expect("a decision names one of the connections");
            out.push((workloads[i].0, d.rule, d.action.name(), ms));
        }
    }
    (out, e)
}

/// What the default policy does with KeyUpdate floods and with the
/// small-message workloads that look like them (the tracker and the rule
/// together, on real record sequences): the flood is caught within a
/// second, nothing is reset or banned, and only the 5-byte ping-pong (the
/// same records as a flood with `update_requested`) alerts.
#[test]
fn keyupdate_rule_under_the_default_policy_never_resets() {
    let s = Settings::from_config(&Config::default());
    assert_eq!(
        (s.keyupdates_per_second, s.keyupdate_action),
        (30, Action::Alert)
    );
    let ku = usize::from(monitor_common::tls::KEY_UPDATE_RECORD_LEN);
    let workloads = vec![
        // OpenSSL sending a KeyUpdate with update_requested every 20 ms.
        ("flood", every(150, 20, 0, ku, Some(ku))),
        // The same without update_requested: nothing comes back.
        ("flood_one_way", every(150, 20, 0, ku, None)),
        // 5-byte request, 5-byte reply, 100 a second each way.
        ("ping_pong", every(300, 10, 0, ku, Some(ku))),
        // The server pushes 5-byte messages 100 times a second.
        ("server_push", every(300, 10, 1, ku, None)),
        // 5-byte heartbeats 50 times a second, answered with 9 bytes.
        ("heartbeats", every(150, 20, 0, ku, Some(ku + 4))),
        // Redis-like: 20 requests a second, `+OK\r\n` replies.
        ("redis_like", every(60, 50, 0, ku, Some(ku))),
    ];
    let (d, e) = run_workloads(s, &workloads, 3);
    assert!(e.resets.is_empty() && e.bans.is_empty(), "{d:?}");
    let mut fired: Vec<_> = d.iter().map(|d| (d.0, d.1, d.2)).collect();
    fired.sort();
    assert_eq!(
        fired,
        [
            ("flood", "keyupdates_per_second", "alert"),
            ("flood_one_way", "keyupdates_per_second", "alert"),
            ("ping_pong", "keyupdates_per_second", "alert"),
        ],
        "{d:?}"
    );
    for (name, _, _, ms) in &d {
        assert!(*ms <= 1000, "{name} decided after {ms} ms: {d:?}");
    }
}

/// With `reset` configured, the flood is reset within a second; an
/// attacker that breaks its streak with a 23-byte record every 3
/// KeyUpdates is not caught (it gets 3 KeyUpdates per record of another
/// size), one that breaks it every 8 is.
#[test]
fn keyupdate_rule_reset_and_the_attackers_streak_breaks() {
    let mut c = Config::default();
    c.action.keyupdates_per_second = Action::Reset;
    let ku = usize::from(monitor_common::tls::KEY_UPDATE_RECORD_LEN);
    // KeyUpdates with answers every 10 ms, one 23-byte record after every
    // `n`.
    let broken = |n: u64| -> Timeline {
        let mut t = Vec::new();
        for i in 0..300u64 {
            t.push((i * 10, 0, ku));
            t.push((i * 10, 1, ku));
            if (i + 1) % n == 0 {
                t.push((i * 10 + 5, 0, ku + 1));
            }
        }
        t
    };
    let workloads = vec![
        ("flood", every(150, 20, 0, ku, Some(ku))),
        ("break_every_3", broken(3)),
        ("break_every_8", broken(8)),
        ("heartbeats", every(150, 20, 0, ku, Some(ku + 4))),
    ];
    let (d, e) = run_workloads(Settings::from_config(&c), &workloads, 3);
    let mut fired: Vec<_> = d.iter().map(|d| (d.0, d.2)).collect();
    fired.sort();
    assert_eq!(
        fired,
        [("break_every_8", "reset"), ("flood", "reset")],
        "{d:?}"
    );
    assert_eq!(e.resets.len(), 2);
    for (name, _, _, ms) in &d {
        assert!(*ms <= 1000, "{name} decided after {ms} ms: {d:?}");
    }
}

fn conn_settings() -> Settings {
    let mut c = Config::default();
    c.limits.handshake_timeout = Duration::from_secs(2);
    c.limits.keyupdates_per_second = 10;
    c.action.keyupdates_per_second = Action::Reset;
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
    calm.1.tracker.counters.keyupdate_streaked = 10;
    flood.1.tracker.counters.keyupdate_streaked = 11;
    let d = p.step(t0 + SEC, &[calm, flood], &[], &mut e);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(
        (d[0].rule, d[0].action.name()),
        ("keyupdates_per_second", "reset")
    );
    assert_eq!(d[0].counts.keyupdates_1s, Some(11));
    assert_eq!(e.resets, vec![endpoints(&flood.0, &flood.1)]);
    // 15 more over 2 s: 7.5/s, under the limit.
    calm.1.tracker.counters.keyupdate_streaked = 25;
    assert!(p.step(t0 + 3 * SEC, &[calm], &[], &mut e).is_empty());
    // A sweep soon after the last counts as a full second: 10 in 0.1 s
    // is not above 10/s.
    calm.1.tracker.counters.keyupdate_streaked = 35;
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
    ku.1.tracker.counters.keyupdate_streaked = 50;
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
    ku.1.tracker.counters.keyupdate_streaked = 16;
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
