//! The smallest event ring buffer (`--events-ring-size 4096`, one page)
//! forced to overflow: while the agent is stopped (SIGSTOP, so nothing reads
//! the ring) a burst of real TLS connections handshakes and closes, which
//! is far more close events than one page holds. After SIGCONT every
//! connection must still be listed with its exact counts (the flow-map
//! sweep picks up what the lost events carried), and the loss must be
//! reported: `events.lost` in `hsmon status --json` and
//! `hsmon_events_lost_total` in the metrics, both above zero.

use std::collections::HashMap;
use std::time::Duration;

use tests::pyssl::PyTlsServer;
use tests::rig::{Paused, Rig};
use tests::{require_root, tlsclient};

const TLS_PORT: u16 = 24433;
const METRICS: &str = "127.0.0.1:19477";
const CONNS: usize = 120;

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == name).then(|| v.trim().parse().ok())?
    })
}

#[test]
fn overflowing_ring_buffer_keeps_counts_exact_and_reports_lost_events() {
    require_root!();
    let mut rig = Rig::start(
        "ring-overflow",
        &["--events-ring-size", "4096", "--metrics-addr", METRICS],
    )
    .expect("set up");
    let addr = rig.server_addr(TLS_PORT);
    let srv = PyTlsServer::start(&rig.net, rig.dir.path(), &rig.cert, addr, None, "pyserver")
        .expect("start the TLS server");

    let status = rig.status().expect("status");
    let pid = status["pid"].as_i64().expect("status.pid") as i32;
    let lost_before = status["events"]["lost"].as_u64().expect("events.lost");
    assert_eq!(lost_before, 0, "events lost before the burst: {status}");

    let client = {
        let _paused = Paused::stop(pid).expect("SIGSTOP the agent");
        let mut c = tlsclient::start(
            &rig.net,
            rig.dir.path(),
            "burst",
            "burst",
            addr,
            &[CONNS as u64, 8],
        )
        .expect("start the client");
        c.wait_for("DONE", Duration::from_secs(120), |out, _| {
            out.contains("DONE ")
        })
        .expect("the burst");
        c
        // The agent continues here.
    };
    let out = client.stdout();
    assert_eq!(
        tlsclient::done_counts(&out),
        Some((CONNS, 0)),
        "every connection must succeed\n{}",
        client.logs(20)
    );
    let ports = tlsclient::ports(&out, "OK");
    assert_eq!(ports.len(), CONNS);
    assert_eq!(
        tlsclient::server_handshakes(&srv),
        CONNS,
        "the server's own handshake count"
    );

    let conns = rig
        .wait_conns(
            "every burst connection closed",
            Duration::from_secs(30),
            |cs| {
                let closed: usize = cs
                    .iter()
                    .filter(|c| {
                        c.state == "closed"
                            && c.client_addr().is_ok_and(|a| ports.contains(&a.port()))
                    })
                    .count();
                closed >= CONNS
            },
        )
        .expect("hsmon's view");
    let mut by_port: HashMap<u16, usize> = HashMap::new();
    for c in &conns {
        let port = c.client_addr().expect("client address").port();
        if !ports.contains(&port) {
            continue;
        }
        *by_port.entry(port).or_default() += 1;
        assert_eq!(c.handshakes, 1, "{c:?}");
        assert_eq!(c.client_hellos, 1, "{c:?}");
        assert!(!c.unsynced, "{c:?}");
        assert_eq!(c.state, "closed", "{c:?}");
    }
    assert_eq!(by_port.len(), CONNS, "every connection listed");
    assert!(by_port.values().all(|&n| n == 1), "listed once each");
    let handshakes: u64 = conns.iter().map(|c| c.handshakes).sum();
    assert_eq!(handshakes, CONNS as u64, "hsmon's count = the server's");

    let status = rig.status().expect("status");
    let lost = status["events"]["lost"].as_u64().expect("events.lost");
    assert!(lost > 0, "the ring buffer should have overflowed: {status}");
    eprintln!(
        "ring overflow: {CONNS} connections, events read {}, lost {lost}",
        status["events"]["read"]
    );

    let resp = tests::prom::http_get(
        &rig.net.server_ns,
        METRICS.parse().expect("address"),
        "/metrics",
        Duration::from_secs(10),
    )
    .expect("scrape the metrics");
    let body = &resp.body;
    let lost_metric = metric(body, "hsmon_events_lost_total").expect("hsmon_events_lost_total");
    assert!(lost_metric > 0.0, "hsmon_events_lost_total = {lost_metric}");
    assert_eq!(lost_metric as u64, lost, "status and metrics agree");
    let full = metric(body, "hsmon_handshakes_total{kind=\"full\"}").expect("handshakes metric");
    assert_eq!(
        full as u64, CONNS as u64,
        "hsmon_handshakes_total{{kind=\"full\"}}"
    );

    rig.assert_agent_healthy();
}
