//! `[limits] keyupdates_per_second`, end to end, against real peers in
//! namespaces this test creates.
//!
//! The rule counts the client's KeyUpdate-size records in streaks (no
//! record of another size in either direction between them; the server's
//! KeyUpdate-size answers neither count nor break one), and its default
//! action is `alert`: a 5-byte request/5-byte reply exchange is the same
//! records as a KeyUpdate flood with `update_requested`.
//!
//! - `keyupdate_flood_is_reset_a_single_update_is_not`: the agent with
//!   `keyupdates_per_second = 10` (action `reset`), `openssl s_server
//!   -tls1_3`. One KeyUpdate (`k`) and 3 s of talk: no decision. A flood:
//!   `openssl s_client` fed a `k` line every 20 ms (up to 100): reset
//!   before all lines went through.
//! - The Python/OpenSSL attacker ([`tests::attack`]) sending a KeyUpdate
//!   with `update_requested` every 20 ms: under the default policy an
//!   `alert` within a second and nothing reset; with `reset` configured,
//!   reset within a second (the server's own `-msg` count). The same
//!   attacker breaking its streak with a 23-byte record every 8
//!   KeyUpdates is still reset; every 3, it is not counted (the bound the
//!   README documents).
//! - Legitimate small-message workloads under the default policy, none
//!   reset or banned: 5-byte ping-pong at over 100 a second each way
//!   (alerts: the one pattern the rule cannot tell from a flood), server
//!   push of 5-byte messages at about 100 a second, 5-byte heartbeats at 50
//!   a second answered with 9 bytes (no decision at all).

use anyhow::{ensure, Context, Result};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tests::attack::{ok_count, step_count, Client};
use tests::decisions::{decisions, policy_args, wait_decision};
use tests::hsmon::Agent;
use tests::openssl::{SClientOpts, SServer, SServerOpts, TlsVersion};
use tests::pyssl::PyTlsServer;
use tests::require_root;
use tests::rig::Rig;
use tests::scenario::{with_scenario_agent_args, PER_CONN};
use tests::workdir::WorkDir;

const PORT: u16 = 4472;
const FLOOD: usize = 100;
const EVERY: Duration = Duration::from_millis(20);
/// The attacker and workload tests' server port.
const RIG_PORT: u16 = 4473;
const CLIENT_WAIT: Duration = Duration::from_secs(60);

#[test]
fn keyupdate_flood_is_reset_a_single_update_is_not() {
    let dir = WorkDir::new("ku-flood-policy").unwrap_or_else(|e| panic!("{e:#}"));
    let args = policy_args(
        dir.path(),
        "hsmon.toml",
        "[limits]\nkeyupdates_per_second = 10\n[action]\nkeyupdates_per_second = \"reset\"\n",
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    with_scenario_agent_args("ku-flood", &args, |sc| -> Result<()> {
        let addr = sc.server_addr(false, PORT);
        let mut srv = sc.s_server(&SServerOpts::new(addr).version(TlsVersion::Tls13))?;
        let opts = SClientOpts::new(addr).version(TlsVersion::Tls13);
        let client_ip = sc.net.client_ip(false);

        // One key update: fine.
        let mut calm = sc.s_client(&opts)?;
        calm.wait_established(PER_CONN)?;
        calm.key_update(false)?;
        calm.wait_key_updates_sent(1, PER_CONN)?;
        srv.wait_key_updates_received(1, PER_CONN)?;
        std::thread::sleep(Duration::from_secs(3));
        calm.send_data("after one update")?;
        srv.wait_stdout_count("after one update", 1, PER_CONN)?;
        let early = decisions(sc.agent().context("agent")?)?;
        ensure!(early.is_empty(), "decisions for one key update: {early:?}");
        calm.close(PER_CONN)?;
        let before = srv.key_updates_received();

        // The flood.
        let mut flood = sc.s_client(&opts)?;
        flood.wait_established(PER_CONN)?;
        flood.send_data("hello")?;
        srv.wait_stdout_count("hello", 1, PER_CONN)?;
        let start = Instant::now();
        let mut written = 0;
        while written < FLOOD && flood.proc.is_running() {
            if flood.proc.write_line("k").is_err() {
                break;
            }
            written += 1;
            std::thread::sleep(EVERY);
        }
        let status = flood.proc.wait_exit(Duration::from_secs(5));
        eprintln!(
            "flood: {written} `k` lines; s_client exited {:?} after the start ({status:?}), sent {} KeyUpdates",
            start.elapsed(),
            flood.key_updates_sent()
        );
        ensure!(
            status.is_some(),
            "the flooding connection was not reset\n{}",
            flood.proc.logs(20)
        );
        let agent = sc.agent().context("agent")?;
        let d = wait_decision(
            agent,
            "keyupdates_per_second",
            Duration::from_secs(5),
            |d| d["rule"] == "keyupdates_per_second",
        )?;
        ensure!(d["action"] == "reset", "{d}");
        ensure!(d["peer"] == client_ip.to_string(), "{d}");
        ensure!(d["connection"]["server"] == addr.to_string(), "{d}");
        let rate = d["counts"]["keyupdates_1s"]
            .as_u64()
            .context("keyupdates_1s")?;
        ensure!(rate > 10, "{d}");
        // Cut short: the reset ended the connection before the flood's end
        // (a reset drops nothing: what was sent before it arrived).
        ensure!(written < FLOOD, "all {FLOOD} `k` lines went through");
        let received = srv.key_updates_received() - before;
        eprintln!("the server processed {received} KeyUpdates");
        ensure!(received <= written, "{received} > {written}");
        // The flood's connection in hsmon's table: more than 10 key updates.
        let conns = agent.conns()?;
        let c = conns
            .iter()
            .find(|c| c.keyupdate_like > 10)
            .context("hsmon lists the flooding connection")?;
        ensure!(c.state == "closed", "{c:?}");
        let all = decisions(agent)?;
        ensure!(all.len() == 1, "one decision: {all:?}");
        Ok(())
    });
}

fn fail(e: anyhow::Error) -> ! {
    panic!("{e:#}")
}

fn steps(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

/// The veth pair, the agent with the renegotiation cap of 3 and the
/// embedded default policy, or with `policy` (a TOML file's text) when
/// given. Returns the rig and the directory holding the policy file.
fn rig(name: &str, policy: Option<&str>) -> (Rig, Option<WorkDir>) {
    let mut args = vec!["--reneg-cap".to_owned(), "3".to_owned()];
    let cfg = policy.map(|text| {
        let dir = WorkDir::new(&format!("{name}-cfg")).unwrap_or_else(|e| fail(e));
        args.extend(policy_args(dir.path(), "hsmon.toml", text).unwrap_or_else(|e| fail(e)));
        dir
    });
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (Rig::start(name, &args).unwrap_or_else(|e| fail(e)), cfg)
}

/// A TLS 1.3 `s_server` on the rig's port, in the server's namespace.
fn tls13_server(r: &Rig) -> (std::net::SocketAddr, SServer) {
    let addr = r.server_addr(RIG_PORT);
    let srv = SServer::start(
        &r.net,
        r.dir.path(),
        &r.cert,
        &SServerOpts::new(addr).version(TlsVersion::Tls13),
        "s_server",
    )
    .unwrap_or_else(|e| fail(e));
    (addr, srv)
}

/// Runs the attack client `name` to its end: its output, its local port
/// and how long it took from the connection on.
fn timed_run(
    r: &Rig,
    name: &str,
    addr: std::net::SocketAddr,
    steps: &[String],
) -> (String, u16, Duration) {
    let mut c = rig_client(r, name, addr, steps);
    let port = c.wait_connected(CLIENT_WAIT).unwrap_or_else(|e| fail(e));
    let start = Instant::now();
    let out = c.finish(CLIENT_WAIT);
    (out, port, start.elapsed())
}

/// The attack client `name` from the rig's client namespace to `addr`.
fn rig_client(r: &Rig, name: &str, addr: std::net::SocketAddr, steps: &[String]) -> Client {
    Client::start(&r.net.client_ns, r.dir.path(), name, addr, steps).unwrap_or_else(|e| fail(e))
}

/// The agent's decisions so far, counted by `rule:action:client port`.
fn decision_counts(agent: &Agent) -> Result<BTreeMap<String, usize>> {
    let mut m = BTreeMap::new();
    for d in decisions(agent)? {
        let port = d["connection"]["client"]
            .as_str()
            .and_then(|c| c.rsplit(':').next())
            .unwrap_or("-")
            .to_owned();
        let key = format!(
            "{}:{}:{port}",
            d["rule"].as_str().unwrap_or("?"),
            d["action"].as_str().unwrap_or("?")
        );
        *m.entry(key).or_default() += 1;
    }
    Ok(m)
}

/// The attacker's KeyUpdates (`update_requested`, one every 20 ms, 100 in
/// all: 2 s) under the default policy: a `keyupdates_per_second` alert
/// while the client has sent at most 50 (one second of flood), and nothing
/// reset: the client sends all 100, the server reads all 100.
#[test]
fn default_policy_alerts_on_a_keyupdate_flood_within_a_second_and_resets_nothing() {
    require_root!();
    let (r, _cfg) = rig("ku-default-flood", None);
    let (addr, srv) = tls13_server(&r);
    let mut c = rig_client(
        &r,
        "flooder",
        addr,
        &steps(&["tls=1.3", "kuflood=100,20,0", "awaitclose=1"]),
    );
    let port = c.wait_connected(CLIENT_WAIT).unwrap_or_else(|e| fail(e));
    // Poll for the decision while the flood runs; note how many
    // KeyUpdates the client had sent by then.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sent_at_decision = None;
    while Instant::now() < deadline {
        let sent = step_count(&c.proc.stdout(), "KEYUPDATE");
        let found = decisions(&r.agent)
            .unwrap_or_else(|e| fail(e))
            .into_iter()
            .find(|d| d["rule"] == "keyupdates_per_second");
        if let Some(d) = found {
            assert_eq!(d["action"], "alert", "{d}");
            assert!(
                d["connection"]["client"]
                    .as_str()
                    .is_some_and(|cl| cl.ends_with(&format!(":{port}"))),
                "{d}"
            );
            sent_at_decision = Some(sent);
            break;
        }
        if !c.proc.is_running() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = c.finish(CLIENT_WAIT);
    let received = srv.key_updates_received();
    let ds = decision_counts(&r.agent).unwrap_or_else(|e| fail(e));
    let closed = out.lines().find(|l| l.starts_with("CLOSED")).unwrap_or("-");
    eprintln!(
        "alert after {sent_at_decision:?} client KeyUpdates; client sent {}, server read {received}; \
         client: {closed}; decisions {ds:?}",
        step_count(&out, "KEYUPDATE")
    );
    let sent = sent_at_decision.unwrap_or_else(|| panic!("no alert; decisions {ds:?}\n{out}"));
    assert!(sent <= 50, "the alert came after {sent} KeyUpdates (> 1 s)");
    assert_eq!(step_count(&out, "KEYUPDATE"), 100, "{out}");
    assert_eq!(received, 100, "the server's own count");
    assert_eq!(closed, "CLOSED open", "{out}");
    assert_eq!(ds.len(), 1, "{ds:?}");
}

/// The attacker with `[action] keyupdates_per_second = "reset"`: reset
/// within a second; the server (its `-msg` lines) reads at most 55 of the
/// 150 KeyUpdates (one every 20 ms: 55 is 1.1 s).
#[test]
fn configured_reset_stops_a_keyupdate_flood_within_a_second() {
    require_root!();
    let (r, _cfg) = rig(
        "ku-reset-flood",
        Some("[action]\nkeyupdates_per_second = \"reset\"\n"),
    );
    let (addr, srv) = tls13_server(&r);
    let mut c = rig_client(
        &r,
        "flooder",
        addr,
        &steps(&["tls=1.3", "kuflood=150,20,0", "awaitclose=5"]),
    );
    let out = c.finish(CLIENT_WAIT);
    let received = srv.key_updates_received();
    let ds = decision_counts(&r.agent).unwrap_or_else(|e| fail(e));
    let closed = out.lines().find(|l| l.starts_with("CLOSED")).unwrap_or("-");
    eprintln!(
        "server read {received} KeyUpdates; client sent {}; client: {closed}; decisions {ds:?}",
        step_count(&out, "KEYUPDATE")
    );
    assert!(
        ds.keys()
            .any(|k| k.starts_with("keyupdates_per_second:reset:")),
        "{ds:?}"
    );
    assert!(received <= 55, "the server read {received} KeyUpdates");
    assert!(
        step_count(&out, "KEYUPDATE") < 150,
        "the flood went through\n{out}"
    );
}

/// The attacker's counter-move with `reset` configured: a 23-byte record
/// after every 8 KeyUpdates (one every 10 ms) still leaves streaks of 8
/// (5 counted of each 9 records): reset, the server reads fewer than all.
/// After every 3 nothing is counted: all 240 go through, no decision. That
/// is the documented bound (at most 3 KeyUpdates per record of another
/// size), measured here as the rate the attacker reaches.
#[test]
fn streak_breaks_every_8_keyupdates_are_still_reset_every_3_get_through() {
    require_root!();
    let (r, _cfg) = rig(
        "ku-streak-breaks",
        Some("[action]\nkeyupdates_per_second = \"reset\"\n"),
    );
    let (addr, srv) = tls13_server(&r);
    let run = |name: &str, brk: usize| {
        let flood = format!("kuflood=240,10,{brk}");
        timed_run(&r, name, addr, &steps(&["tls=1.3", &flood, "awaitclose=3"]))
    };
    let before = srv.key_updates_received();
    let (out3, port3, took3) = run("break3", 3);
    let got3 = srv.key_updates_received() - before;
    let ds3 = decision_counts(&r.agent).unwrap_or_else(|e| fail(e));
    let sent3 = step_count(&out3, "KEYUPDATE");
    eprintln!(
        "break every 3: sent {sent3} KeyUpdates and {} breaks in {took3:?} ({:.0}/s), server read \
         {got3}; decisions {ds3:?}",
        step_count(&out3, "BREAK"),
        sent3 as f64 / took3.as_secs_f64()
    );
    assert_eq!((sent3, got3), (240, 240), "{out3}");
    assert!(ds3.is_empty(), "{ds3:?}");
    let before = srv.key_updates_received();
    let (out8, port8, took8) = run("break8", 8);
    let got8 = srv.key_updates_received() - before;
    let ds8 = decision_counts(&r.agent).unwrap_or_else(|e| fail(e));
    eprintln!(
        "break every 8: sent {} KeyUpdates and {} breaks in {took8:?}, server read {got8}; \
         decisions {ds8:?}",
        step_count(&out8, "KEYUPDATE"),
        step_count(&out8, "BREAK"),
    );
    assert_ne!(port3, port8);
    assert_eq!(
        ds8.get(&format!("keyupdates_per_second:reset:{port8}")),
        Some(&1),
        "{ds8:?}"
    );
    assert!(got8 < 240, "the server read all {got8}\n{out8}");
}

/// Legitimate small-message workloads under the default policy, one
/// connection each to the Python echo server: none is reset or banned.
/// (1) 5-byte ping-pong (1,000 requests and replies, 3 ms apart: over 100
/// a second each way for over 3 s): every reply arrives; at most an
/// `alert` (the same records as a flood with `update_requested`).
/// (2) The server pushes 340 5-byte messages 9 ms apart (about 100 a
/// second, over 3 s) while the client sends nothing: all arrive, no
/// decision. (3) 150 5-byte heartbeats 20 ms apart (50 a second) answered
/// with 9 bytes: all answered, no decision.
#[test]
fn small_message_workloads_are_never_reset_under_the_default_policy() {
    require_root!();
    let (r, _cfg) = rig("ku-small-messages", None);
    let addr = r.server_addr(RIG_PORT);
    let _srv = PyTlsServer::start(
        &r.net,
        r.dir.path(),
        &r.cert,
        addr,
        Some(TlsVersion::Tls13),
        "pyserver",
    )
    .unwrap_or_else(|e| fail(e));
    let run = |name: &str, step: &str| timed_run(&r, name, addr, &steps(&["tls=1.3", step]));
    let (ping, ping_port, ping_took) = run("pingpong", "ping=1000,3,+OK\\r\\n");
    let pings = ok_count(&ping, "PING");
    let ping_rate = pings as f64 / ping_took.as_secs_f64();
    let (push, push_port, push_took) = run("push", "push=340,9");
    let pushed: usize = push
        .lines()
        .find_map(|l| l.strip_prefix("PUSHED "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    let (beat, beat_port, beat_took) = run("heartbeats", "beat=150,20");
    let beats = ok_count(&beat, "BEAT");
    std::thread::sleep(Duration::from_secs(2));
    let ds = decision_counts(&r.agent).unwrap_or_else(|e| fail(e));
    eprintln!(
        "ping-pong: {pings} in {ping_took:?} ({ping_rate:.0}/s each way), port {ping_port}; \
         push: {pushed} in {push_took:?} ({:.0}/s), port {push_port}; heartbeats: {beats} in \
         {beat_took:?} ({:.0}/s), port {beat_port}; decisions {ds:?}",
        pushed as f64 / push_took.as_secs_f64(),
        beats as f64 / beat_took.as_secs_f64(),
    );
    assert_eq!(pings, 1000, "ping-pong replies\n{ping}");
    assert!(ping_took >= Duration::from_secs(3), "{ping_took:?}");
    assert!(ping_rate >= 100.0, "{ping_rate:.0}/s");
    assert_eq!(pushed, 340, "pushed messages\n{push}");
    assert!(push_took >= Duration::from_secs(3), "{push_took:?}");
    assert_eq!(beats, 150, "heartbeats answered\n{beat}");
    let ping_alert = format!("keyupdates_per_second:alert:{ping_port}");
    for (k, n) in &ds {
        assert!(*k == ping_alert && *n == 1, "decision {k} x{n}: {ds:?}");
    }
    // hsmon's own counts: every 5-byte message is KeyUpdate-like, only the
    // ping-pong's client records make streaks: all but the first 3 of its
    // streak, and a few more when the server's session tickets (records of
    // another size) arrive after the first pings.
    let conns = r.agent.conns().unwrap_or_else(|e| fail(e));
    let conn = |port: u16| {
        conns
            .iter()
            .find(|c| c.client.ends_with(&format!(":{port}")))
            .unwrap_or_else(|| panic!("hsmon lists port {port}: {conns:?}"))
    };
    let (p, s, b) = (conn(ping_port), conn(push_port), conn(beat_port));
    eprintln!(
        "hsmon: ping-pong {}/{}, push {}/{}, heartbeats {}/{} (keyupdate_like/keyupdate_streaked)",
        p.keyupdate_like,
        p.keyupdate_streaked,
        s.keyupdate_like,
        s.keyupdate_streaked,
        b.keyupdate_like,
        b.keyupdate_streaked
    );
    assert!(
        !p.unsynced && !s.unsynced && !b.unsynced,
        "{p:?} {s:?} {b:?}"
    );
    assert_eq!(p.keyupdate_like, 2000, "{p:?}");
    assert!((990..=997).contains(&p.keyupdate_streaked), "{p:?}");
    assert_eq!((s.keyupdate_like, s.keyupdate_streaked), (340, 0), "{s:?}");
    assert_eq!((b.keyupdate_like, b.keyupdate_streaked), (150, 0), "{b:?}");
}
