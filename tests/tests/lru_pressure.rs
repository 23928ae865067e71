//! Flow-map pressure: `--flow-map-size 16` and 40 real TLS connections held
//! open at once, so the kernel's LRU map must evict live flows. Evictions
//! must be reported, never silent: every connection the client made is
//! listed exactly once in `hsmon conns` (live, closed or `evicted`), the
//! number in state `evicted` equals `flows_evicted` in `GET /v1/stats` and
//! `hsmon_flows_evicted_total`, and the map never holds more than its size.
//!
//! The agent notices an eviction by comparing two sweeps of the map (one a
//! second) with what it knew live: from the previous sweep, or from the
//! flow's `EVENT_FLOW_OPENED` when the flow was created after it. One test
//! opens the connections in batches of 8 (less than the map) with a pause
//! longer than a sweep between batches, so every flow is seen live by a
//! sweep before a later batch pushes it out; the other opens all 40 at
//! once, so most flows are created and evicted between two sweeps and only
//! their open events tell the agent about them.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tests::pyssl::PyTlsServer;
use tests::rig::Rig;
use tests::{require_root, tlsclient};

const TLS_PORT: u16 = 24434;
const MAP_SIZE: usize = 16;
const CONNS: usize = 40;
const BATCH: u64 = 8;
const PAUSE_MS: u64 = 2500;

#[test]
fn evicted_flows_are_reported_and_every_connection_accounted() {
    require_root!();
    pressure("lru-pressure", BATCH, PAUSE_MS);
}

/// All 40 connections opened at once, faster than the agent's sweeps: the
/// flows created and evicted between two sweeps are accounted from their
/// open events (with the counts of their first segment: one ClientHello).
#[test]
fn evicted_flows_are_accounted_when_opened_faster_than_the_sweep() {
    require_root!();
    pressure("lru-burst", CONNS as u64, 0);
}

fn pressure(name: &str, batch: u64, pause_ms: u64) {
    // TC flows live in the LRU map this test fills; socket-hook state is
    // per socket and never evicted.
    let mut rig = Rig::start(
        name,
        &["--hooks", "tc", "--flow-map-size", &MAP_SIZE.to_string()],
    )
    .expect("set up");
    let addr = rig.server_addr(TLS_PORT);
    let srv = PyTlsServer::start(&rig.net, rig.dir.path(), &rig.cert, addr, None, "pyserver")
        .expect("start the TLS server");
    let mut client = tlsclient::start(
        &rig.net,
        rig.dir.path(),
        "hold",
        "hold",
        addr,
        &[CONNS as u64, batch, pause_ms],
    )
    .expect("start the client");
    client
        .wait_for("ALLOPEN", Duration::from_secs(90), |out, _| {
            out.contains("ALLOPEN")
        })
        .expect("all connections open");
    let opened: HashSet<u16> = tlsclient::ports(&client.stdout(), "OPEN")
        .into_iter()
        .collect();
    assert_eq!(opened.len(), CONNS);
    assert_eq!(
        tlsclient::server_handshakes(&srv),
        CONNS,
        "the server's own handshake count"
    );
    // Let a sweep see the last batch, then check the map's fill.
    std::thread::sleep(Duration::from_millis(2500));
    let status = rig.status().expect("status");
    let entries = status["maps"]["flows"]["entries"]
        .as_u64()
        .expect("entries");
    let capacity = status["maps"]["flows"]["capacity"]
        .as_u64()
        .expect("capacity");
    assert_eq!(capacity, MAP_SIZE as u64, "{status}");
    assert!(entries <= capacity, "{status}");

    client
        .write_line("close")
        .expect("tell the client to close");
    client
        .wait_for("CLOSED", Duration::from_secs(30), |out, _| {
            out.contains("CLOSED")
        })
        .expect("all connections closed");

    let conns = rig
        .wait_conns(
            "every connection closed or evicted",
            Duration::from_secs(20),
            |cs| {
                let done = cs
                    .iter()
                    .filter(|c| {
                        c.state != "open"
                            && c.client_addr().is_ok_and(|a| opened.contains(&a.port()))
                    })
                    .count();
                done >= CONNS
            },
        )
        .expect("hsmon's view");
    let mut states: HashMap<String, usize> = HashMap::new();
    let mut seen: HashMap<u16, usize> = HashMap::new();
    for c in &conns {
        let port = c.client_addr().expect("client address").port();
        if !opened.contains(&port) {
            continue;
        }
        *seen.entry(port).or_default() += 1;
        *states.entry(c.state.clone()).or_default() += 1;
        assert_eq!(c.client_hellos, 1, "{c:?}");
        // A flow evicted before any sweep saw it carries the state of its
        // first segment (its ClientHello): the rest of its handshake came
        // after the eviction and had no flow to count in.
        if batch < MAP_SIZE as u64 || c.state != "evicted" {
            assert_eq!(c.handshakes, 1, "{c:?}");
        } else {
            assert!(c.handshakes <= 1, "{c:?}");
        }
    }
    assert_eq!(
        seen.len(),
        CONNS,
        "every connection accounted (states {states:?})"
    );
    assert!(seen.values().all(|&n| n == 1), "each listed once: {seen:?}");
    let evicted = states.get("evicted").copied().unwrap_or(0);
    assert!(
        evicted >= CONNS - MAP_SIZE,
        "at least {} of {CONNS} must have been evicted: {states:?}",
        CONNS - MAP_SIZE
    );
    assert_eq!(
        evicted + states.get("closed").copied().unwrap_or(0),
        CONNS,
        "{states:?}"
    );
    let stats = rig.agent.stats_value().expect("stats");
    assert_eq!(
        stats["flows_evicted"].as_u64(),
        Some(evicted as u64),
        "flows_evicted in /v1/stats: {stats}"
    );
    eprintln!("flow-map pressure: {CONNS} connections, map {MAP_SIZE}: {states:?}");
    rig.assert_agent_healthy();
}
