//! Load: hsmon's counts must equal the clients' own under many connections.
//!
//! - 10,000 TLS connections held open at once against nginx (a Python
//!   asyncio client, `HSMON_LOAD_CONNS` to change the number): every one is
//!   listed open with one handshake, then closed.
//! - A handshake flood at the highest rate this machine sustains: `h2load`
//!   as a closed loop (`HSMON_FLOOD_CLIENTS` clients, default 16, one
//!   request per connection, each reconnecting at once) against nginx with
//!   an ECDSA certificate. A short calibration run measures the rate; the
//!   flood then makes that rate x `HSMON_FLOOD_SECS` (default 60)
//!   connections. For both runs the growth of the agent's
//!   `hsmon_handshakes_total{kind="full"}` must equal the requests h2load
//!   completed (one full handshake each), and none may fail. A fixed offered
//!   rate is not used: above what the machine sustains, h2load reports
//!   failed connections whose handshakes cannot be compared.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tests::loadgen;
use tests::require_root;
use tests::rig::Rig;

const TLS_PORT: u16 = 28443;
const METRICS: &str = "127.0.0.1:19478";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

#[test]
fn ten_thousand_concurrent_tls_connections_are_all_counted() {
    require_root!();
    let n = env_u64("HSMON_LOAD_CONNS", 10_000) as usize;
    let started = Instant::now();
    let mut rig = Rig::start("load-hold", &[]).expect("set up");
    let addr = rig.server_addr(TLS_PORT);
    let _nginx =
        loadgen::start_nginx(&rig.net, rig.dir.path(), &rig.cert, addr, n).expect("start nginx");
    let mut holder =
        loadgen::start_holder(&rig.net, rig.dir.path(), addr, n, 200).expect("start the client");
    holder
        .wait_for("OPENED", Duration::from_secs(600), |out, _| {
            out.contains("OPENED ")
        })
        .expect("open every connection");
    let opened_in = started.elapsed();
    assert_eq!(
        loadgen::opened_counts(&holder.stdout()),
        Some((n, 0)),
        "the client's own count\n{}",
        holder.logs(20)
    );
    let client_ip = rig.net.client_ip(false);
    let mine = |c: &tests::hsmon::HsmonConn| c.client_addr().is_ok_and(|a| a.ip() == client_ip);
    // Every connection is listed once, with its one handshake; open are
    // exactly those the server's kernel has established (nginx may close a
    // few of them itself: they are listed closed).
    let conns = rig
        .wait_conns("every connection listed", Duration::from_secs(120), |cs| {
            cs.iter().filter(|c| mine(c) && c.handshakes == 1).count() >= n
        })
        .unwrap_or_else(|e| {
            panic!(
                "hsmon's view of the open connections: {e:?}\nthe kernel's view: {}",
                kernel_view(&rig).1
            )
        });
    let listed: Vec<_> = conns.iter().filter(|c| mine(c)).collect();
    assert_eq!(listed.len(), n, "listed once each");
    let ports: HashSet<u16> = listed
        .iter()
        .map(|c| c.client_addr().expect("address").port())
        .collect();
    assert_eq!(ports.len(), n, "distinct connections");
    assert!(listed
        .iter()
        .all(|c| c.handshakes == 1 && c.client_hellos == 1 && !c.unsynced));
    let open = listed.iter().filter(|c| c.state == "open").count();
    let (established, view) = kernel_view(&rig);
    eprintln!("load: hsmon lists {open} of {n} open; kernel: {view}");
    assert_eq!(
        open, established,
        "hsmon's open = the kernel's established ({view})"
    );
    assert!(
        open * 100 >= n * 95,
        "fewer than 95% of the connections stayed open ({view})"
    );
    let status = rig.status().expect("status");
    assert!(
        status["maps"]["flows"]["entries"].as_u64() >= Some(open as u64),
        "{status}"
    );

    holder
        .write_line("close")
        .expect("tell the client to close");
    holder
        .wait_for("CLOSED", Duration::from_secs(300), |out, _| {
            out.contains("CLOSED")
        })
        .expect("close every connection");
    // The agent keeps the 10,000 most recent closed connections.
    let keep = n.min(10_000);
    let conns = rig
        .wait_conns("every connection closed", Duration::from_secs(120), |cs| {
            cs.iter().filter(|c| mine(c) && c.state == "closed").count() >= keep
        })
        .expect("hsmon's view of the closed connections");
    let closed: Vec<_> = conns
        .iter()
        .filter(|c| mine(c) && c.state == "closed")
        .collect();
    assert_eq!(closed.len(), keep);
    assert!(closed.iter().all(|c| c.handshakes == 1 && !c.unsynced));
    eprintln!(
        "load: {n} connections opened in {:.1}s, whole test {:.1}s",
        opened_in.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    rig.assert_agent_healthy();
}

/// Established connections on the server port (`ss` in the server
/// namespace), and that with the namespace's listen-queue counters
/// (`nstat`) and nginx's complaints, as text.
fn kernel_view(rig: &Rig) -> (usize, String) {
    let run = |prog: &str, args: &[&str]| {
        let mut c = rig.net.server_cmd(prog);
        c.args(args);
        tests::cmd::run_ok(&mut c, Duration::from_secs(30)).unwrap_or_else(|e| format!("{e:#}"))
    };
    let est = run(
        "ss",
        &[
            "-Htn",
            "state",
            "established",
            &format!("( sport = :{TLS_PORT} )"),
        ],
    );
    let nstat = run("nstat", &["-az"]);
    let counters: Vec<&str> = nstat
        .lines()
        .filter(|l| l.contains("Listen") || l.contains("ReqQFull") || l.contains("Cookies"))
        .collect();
    let nginx_log = tests::process::read_lossy(&rig.dir.join("nginx-load/error.log"));
    let nginx: Vec<&str> = nginx_log.lines().rev().take(5).collect();
    let n = est.lines().count();
    (
        n,
        format!(
            "{n} established on port {TLS_PORT}; {}; nginx error.log tail: {nginx:?}",
            counters.join("; ")
        ),
    )
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == name).then(|| v.trim().parse().ok())?
    })
}

#[test]
fn handshake_flood_counts_equal_h2loads() {
    require_root!();
    let secs = env_u64("HSMON_FLOOD_SECS", 60).max(1);
    let clients = env_u64("HSMON_FLOOD_CLIENTS", 16).max(1);
    let mut rig = Rig::start("load-flood", &["--metrics-addr", METRICS]).expect("set up");
    let addr = rig.server_addr(TLS_PORT);
    let cert = tests::cert::TestCert::generate_ec(rig.dir.path()).expect("ECDSA certificate");
    let _nginx =
        loadgen::start_nginx(&rig.net, rig.dir.path(), &cert, addr, 4096).expect("start nginx");
    let mut counted = full_handshakes(&rig, 0);
    assert_eq!(counted, 0, "no handshake before the flood");

    // Calibration: the rate this machine sustains right now.
    let cal = 1500;
    let (r, out) = loadgen::h2load_closed_loop(
        &rig.net,
        rig.dir.path(),
        addr,
        cal,
        clients,
        Duration::from_secs(300),
    )
    .expect("h2load calibration run");
    assert_eq!(
        (r.succeeded, r.failed, r.errored),
        (cal, 0, 0),
        "calibration: every request must succeed\n{out}"
    );
    counted = expect_growth(&rig, counted, cal, "calibration");
    let rate = (cal as f64 / r.secs.max(0.001)).clamp(50.0, 5000.0);

    let conns = (rate * secs as f64) as u64;
    let t0 = Instant::now();
    let (r, out) = loadgen::h2load_closed_loop(
        &rig.net,
        rig.dir.path(),
        addr,
        conns,
        clients,
        Duration::from_secs(secs * 4 + 120),
    )
    .expect("h2load flood");
    let took = t0.elapsed();
    assert_eq!(
        (r.succeeded, r.failed, r.errored),
        (conns, 0, 0),
        "h2load: every connection's request must succeed\n{out}"
    );
    expect_growth(&rig, counted, conns, "flood");
    eprintln!(
        "flood: calibrated {rate:.0}/s; {conns} handshakes in {:.1}s ({:.0}/s) with {clients} clients, \
         hsmon counted each",
        took.as_secs_f64(),
        conns as f64 / took.as_secs_f64()
    );
    rig.assert_agent_healthy();
}

/// The agent's `hsmon_handshakes_total{kind="full"}` (`0` when absent).
fn full_handshakes(rig: &Rig, attempt: u32) -> u64 {
    let resp = tests::prom::http_get(
        &rig.net.server_ns,
        METRICS.parse().expect("address"),
        "/metrics",
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("scrape the metrics (attempt {attempt}): {e:#}"));
    metric(&resp.body, "hsmon_handshakes_total{kind=\"full\"}").unwrap_or(0.0) as u64
}

/// Waits (at most 30 s) until the full-handshake count is `before + n`
/// and asserts it is exactly that; returns the new count.
fn expect_growth(rig: &Rig, before: u64, n: u64, what: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut attempt = 0;
    loop {
        let now = full_handshakes(rig, attempt);
        if now >= before + n || Instant::now() >= deadline {
            assert_eq!(
                now.saturating_sub(before),
                n,
                "{what}: hsmon's full handshakes = h2load's connections"
            );
            return now;
        }
        attempt += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
}
