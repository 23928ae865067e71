//! Prometheus metrics, end to end: the agent serves `/metrics` on
//! `--metrics-addr` inside the server namespace, a real Prometheus
//! (Debian's `prometheus`) scrapes it every second with the shipped alert
//! rules loaded, and after three client renegotiations (TLS 1.2,
//! `s_server -client_renegotiation`) Prometheus's API shows
//! `hsmon_renegotiations_total{initiator="client"}` at 3, and still 3 after
//! the connection closed (a flow leaving the live set is not counted twice).
//! Also: a busy metrics port is a clear start-up error, `off` serves
//! nothing, and the default is 127.0.0.1:9477.

use anyhow::{anyhow, ensure, Context, Result};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;
use tests::hsmon::{agent_cmd, hsmon_bin, Agent};
use tests::netns::{in_netns, NetPair};
use tests::process::is_listening;
use tests::prom::{http_get, Prometheus};
use tests::scenario::{assert_common, PER_CONN};
use tests::workdir::WorkDir;

const PORT: u16 = 4433;
const RENEGS: usize = 3;
/// The agent's metrics address, on loopback inside the server namespace.
const METRICS: &str = "127.0.0.1:9477";
/// Prometheus's web address, on loopback inside the server namespace.
const PROM_WEB: &str = "127.0.0.1:9090";
const CLIENT_RENEGS: &str = "hsmon_renegotiations_total{initiator=\"client\"}";
/// Bound on every wait for Prometheus.
const PROM_WAIT: Duration = Duration::from_secs(30);

/// Every family the exposition must carry, with a HELP line.
const FAMILIES: &[&str] = &[
    "hsmon_handshakes",
    "hsmon_client_hellos",
    "hsmon_renegotiations",
    "hsmon_renegotiations_refused",
    "hsmon_alerts",
    "hsmon_keyupdate_like",
    "hsmon_unsynced_flows",
    "hsmon_flows_tracked",
    "hsmon_flows_recently_closed",
    "hsmon_flows_evicted",
    "hsmon_flow_map_capacity",
    "hsmon_flow_map_fill_ratio",
    "hsmon_events_lost",
    "hsmon_kernel_segments",
    "hsmon_kernel_tls_segments",
    "hsmon_kernel_flows_created",
    "hsmon_kernel_flow_insert_errors",
    "hsmon_kernel_malformed_packets",
    "hsmon_peer_renegotiations",
    "hsmon_drops",
    "hsmon_program_runs",
    "hsmon_bans_issued",
    "hsmon_bans_active",
];

fn addr(s: &str) -> Result<SocketAddr> {
    s.parse().with_context(|| format!("address {s}"))
}

#[test]
fn prometheus_scrapes_client_renegotiations() {
    let args = vec!["--metrics-addr".to_owned(), METRICS.to_owned()];
    tests::scenario::with_scenario_agent_args("metrics-prometheus", &args, |sc| {
        let metrics = addr(METRICS)?;
        let mut prom = Prometheus::start(&sc.net, sc.dir.path(), metrics, addr(PROM_WEB)?)?;
        sc.add_logs(&prom.proc);
        prom.wait_value("up{job=\"hsmon\"}", 1.0, PROM_WAIT)?;
        prom.wait_value(CLIENT_RENEGS, 0.0, PROM_WAIT)?;

        let (_srv, mut c) = sc.renegotiating_pair(PORT, PER_CONN)?;
        c.send_data("hello")?;
        for i in 0..RENEGS {
            c.renegotiate()?;
            c.wait_handshakes(i + 2, PER_CONN)?;
        }
        // Live flow: Prometheus sees the renegotiations rise to 3.
        prom.wait_value(CLIENT_RENEGS, RENEGS as f64, PROM_WAIT)?;

        // Closed flow: counted once, also after several more scrapes.
        c.send_data("bye")?;
        c.close(PER_CONN)?;
        prom.wait_value("hsmon_flows_recently_closed", 1.0, PROM_WAIT)?;
        prom.wait_value("hsmon_flows_tracked", 0.0, PROM_WAIT)?;
        std::thread::sleep(Duration::from_secs(3));
        for (q, want) in [
            (CLIENT_RENEGS, RENEGS as f64),
            ("hsmon_renegotiations_total{initiator=\"server\"}", 0.0),
            ("hsmon_handshakes_total{kind=\"full\"}", 1.0),
            ("hsmon_handshakes_total{kind=\"resumed\"}", 0.0),
            (
                "hsmon_handshakes_total{kind=\"renegotiation\"}",
                RENEGS as f64,
            ),
            ("hsmon_client_hellos_total", (RENEGS + 1) as f64),
            ("hsmon_renegotiations_refused_total", 0.0),
            ("hsmon_unsynced_flows_total", 0.0),
            ("hsmon_events_lost_total", 0.0),
            // Never more than 3 at any scrape since the flow appeared.
            (
                "max_over_time(hsmon_renegotiations_total{initiator=\"client\"}[5m])",
                RENEGS as f64,
            ),
        ] {
            let got = prom.value(q)?;
            ensure!(got == Some(want), "Prometheus {q}: {got:?}, want {want}");
        }

        // The shipped rules loaded and evaluate cleanly.
        let rules = prom.api("/api/v1/rules")?;
        let loaded: Vec<(String, String)> = rules["groups"]
            .as_array()
            .ok_or_else(|| anyhow!("no rule groups: {rules}"))?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .map(|r| {
                (
                    r["name"].as_str().unwrap_or("").to_owned(),
                    r["health"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        for alert in [
            "HsmonRenegotiationFlood",
            "HsmonEventsLost",
            "HsmonBanStorm",
            "HsmonAgentDown",
        ] {
            ensure!(
                loaded.iter().any(|(n, h)| n == alert && h == "ok"),
                "rule {alert} not loaded with health ok: {loaded:?}"
            );
        }

        // Drops by reason: a manual ban of the client, whose SYNs to a port
        // nothing listens on are then dropped at TC ingress.
        let peer = sc.net.client_ip(false);
        let agent = sc.agent().ok_or_else(|| anyhow!("no agent"))?;
        agent.cli(&["bans", "add", &peer.to_string(), "--ttl", "1m"])?;
        let mut knock = sc.net.client_cmd("bash");
        knock.arg("-c").arg(format!(
            "timeout 2 bash -c '</dev/tcp/{}/4499' 2>/dev/null; exit 0",
            sc.server_addr(false, PORT).ip()
        ));
        tests::cmd::run_ok(&mut knock, Duration::from_secs(10))?;
        std::thread::sleep(Duration::from_millis(600)); // the ban watch: 250 ms

        // The exposition itself.
        let r = http_get(
            &sc.net.server_ns,
            metrics,
            "/metrics",
            Duration::from_secs(5),
        )?;
        ensure!(r.status == 200, "GET /metrics: {} {}", r.status, r.body);
        let ct = r.header("content-type").unwrap_or("");
        ensure!(
            ct.starts_with("application/openmetrics-text"),
            "content type {ct:?}"
        );
        let text = &r.body;
        for family in FAMILIES {
            let help = format!("# HELP {family} ");
            ensure!(
                text.lines().any(|l| l.starts_with(&help)),
                "no HELP for {family}:\n{text}"
            );
        }
        for line in [
            "hsmon_bans_issued_total{added_by=\"manual\"} 1".to_owned(),
            "hsmon_bans_issued_total{added_by=\"policy\"} 0".to_owned(),
            "hsmon_bans_active 1".to_owned(),
            "hsmon_drops_total{reason=\"reneg_cap\"} 0".to_owned(),
            format!("{CLIENT_RENEGS} {RENEGS}"),
            format!("hsmon_handshakes_total{{kind=\"renegotiation\"}} {RENEGS}"),
            format!("hsmon_peer_renegotiations{{peer=\"{peer}\"}} {RENEGS}"),
            "hsmon_flows_tracked 0".to_owned(),
            "hsmon_flow_map_capacity 65536".to_owned(),
        ] {
            ensure!(
                text.lines().any(|l| l == line),
                "no line {line:?} in:\n{text}"
            );
        }
        let ban_drops: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("hsmon_drops_total{reason=\"ban_manual\"} "))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| anyhow!("no ban_manual drops line in:\n{text}"))?;
        ensure!(
            ban_drops >= 1.0,
            "the banned client's SYNs were not counted: {ban_drops}"
        );
        // Every packet crossed the ingress program (the server's veth has
        // both hooks), and the socket-state tracepoint ran for each connection.
        for program in ["hsmon_tc_ingress", "hsmon_tc_egress", "hsmon_sock_state"] {
            let prefix = format!("hsmon_program_runs_total{{program=\"{program}\"}} ");
            let runs: f64 = text
                .lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| anyhow!("no {prefix:?} line in:\n{text}"))?;
            ensure!(runs >= RENEGS as f64, "{program} ran only {runs} times");
        }
        let other_peer_labels: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("peer=\"") && !l.starts_with("hsmon_peer_renegotiations{"))
            .collect();
        ensure!(
            other_peer_labels.is_empty(),
            "per-peer labels outside the top-K family: {other_peer_labels:?}"
        );
        let r = http_get(&sc.net.server_ns, metrics, "/nope", Duration::from_secs(5))?;
        ensure!(r.status == 404, "GET /nope: {}", r.status);

        // hsmon's own connection list agrees.
        let report = sc.finish()?;
        let (t, h) = report.only_tls()?;
        assert_common(t, h);
        assert_eq!(h.renegotiations_client, RENEGS as u64, "{h:?}");
        prom.stop();
        Ok(())
    });
}

#[test]
fn metrics_addr_busy_off_and_default() {
    tests::require_root!("metrics_addr_busy_off_and_default");
    let run = || -> Result<()> {
        let dir = WorkDir::new("metrics-addr")?;
        let net = NetPair::create()?;
        let metrics = addr(METRICS)?;

        // A port in use: the agent stops at once, naming address and option.
        let busy = in_netns(&net.server_ns, move || TcpListener::bind(metrics))?
            .context("binding the metrics port in the server namespace")?;
        let mut c = agent_cmd(&net, &hsmon_bin());
        c.arg("run")
            .args(["--iface", &net.server_if])
            .arg("--socket")
            .arg(dir.join("busy.sock"))
            .arg("--no-persist")
            .arg("--state-file")
            .arg(dir.join("busy.state.json"))
            .args(["--metrics-addr", METRICS]);
        let out = tests::cmd::output_within(&mut c, Duration::from_secs(30))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.code() == Some(1),
            "exit {:?}: {stderr}",
            out.status
        );
        ensure!(
            stderr.contains(METRICS) && stderr.contains("--metrics-addr"),
            "the error does not name the address and option: {stderr}"
        );
        drop(busy);

        // A bad address is a usage error.
        let mut c = agent_cmd(&net, &hsmon_bin());
        c.args(["run", "--metrics-addr", "localhost"]);
        let out = tests::cmd::output_within(&mut c, Duration::from_secs(30))?;
        ensure!(
            out.status.code() == Some(2),
            "exit {:?}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );

        // off: no listener at all.
        let mut agent =
            Agent::start_with_args(&net, dir.path(), &["--metrics-addr".into(), "off".into()])?;
        ensure!(!is_listening(&net.server_ns, metrics)?, "off still listens");
        agent.stop();
        drop(agent);

        // Default: 127.0.0.1:9477.
        let agent = Agent::start(&net, dir.path())?;
        ensure!(
            is_listening(&net.server_ns, metrics)?,
            "not listening on {METRICS} by default\n{}",
            agent.logs(40)
        );
        let r = http_get(&net.server_ns, metrics, "/metrics", Duration::from_secs(5))?;
        ensure!(
            r.status == 200 && r.body.contains("# HELP hsmon_renegotiations "),
            "{r:?}"
        );
        drop(agent);
        Ok(())
    };
    if let Err(e) = run() {
        panic!("metrics_addr_busy_off_and_default: {e:?}");
    }
}
