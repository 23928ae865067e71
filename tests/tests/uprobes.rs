//! libssl uprobes: each TLS connection is attributed to the server process
//! the test started (pid, comm, library), and its handshake is timed.
//!
//! Client and server run on this host (different namespaces, one kernel), so
//! the uprobes see both; the agent reports the server's process (the one
//! holding the accepted socket), which these tests check against the pid of
//! the server they spawned (`ip netns exec` execs, so that pid is the
//! server's own).
//!
//! `uprobe_cost` measures (and prints, asserting nothing about time) probe
//! hits per server-side handshake and the per-handshake cost with and
//! without the uprobes.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};
use tests::hsmon::Agent;
use tests::openssl::{SClientOpts, SServerOpts};
use tests::scenario::PER_CONN;
use tests::Scenario;

const LIBSSL: &str = "/usr/lib/x86_64-linux-gnu/libssl.so.3";
/// How long attribution may take to show in `hsmon conns`.
const ATTRIBUTION: Duration = Duration::from_secs(5);

/// The port of a record's `server` (`"ip:port"`).
fn server_port(c: &Value) -> Option<u16> {
    c["server"].as_str()?.rsplit(':').next()?.parse().ok()
}

/// The connection to `port` once its process and handshake time are known.
fn attributed(agent: &Agent, port: u16) -> Result<Value> {
    let deadline = Instant::now() + ATTRIBUTION;
    loop {
        let conns = agent.conns_values()?;
        if let Some(c) = conns.iter().find(|c| {
            server_port(c) == Some(port) && !c["pid"].is_null() && !c["handshake_ms_last"].is_null()
        }) {
            return Ok(c.clone());
        }
        if Instant::now() > deadline {
            bail!(
                "no attributed, timed connection to port {port} within {ATTRIBUTION:?}: {conns:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `/proc/PID/comm` without its newline.
fn comm_of(pid: u32) -> Result<String> {
    let c = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .with_context(|| format!("reading /proc/{pid}/comm"))?;
    Ok(c.trim_end().to_owned())
}

/// Checks the process fields against the server process `pid`.
fn assert_server_process(c: &Value, pid: u32) -> Result<()> {
    assert_eq!(c["pid"].as_u64(), Some(u64::from(pid)), "{c}");
    assert_eq!(c["comm"].as_str(), Some(comm_of(pid)?.as_str()), "{c}");
    assert_eq!(c["library"].as_str(), Some(LIBSSL), "{c}");
    assert_eq!(c["process_side"].as_str(), Some("server"), "{c}");
    assert!(c["cgroup_id"].as_u64().is_some(), "{c}");
    assert_eq!(c["handshake_failures"].as_u64(), Some(0), "{c}");
    Ok(())
}

/// One handshake from the client namespace; returns the wall time from
/// starting the client to the handshake being established.
fn one_handshake(sc: &mut Scenario, opts: &SClientOpts) -> Result<Duration> {
    let started = Instant::now();
    let mut c = sc.s_client(opts)?;
    c.wait_established(PER_CONN)?;
    let wall = started.elapsed();
    c.send_data("hello")?;
    c.close(PER_CONN)?;
    Ok(wall)
}

#[test]
fn s_server_connection_attributed_to_its_process() {
    tests::with_scenario("uprobes-s-server", |sc| {
        let addr = sc.server_addr(false, 4433);
        let srv = sc.s_server(&SServerOpts::new(addr))?;
        let pid = srv.proc.pid();
        let wall = one_handshake(sc, &SClientOpts::new(addr))?;
        let agent = sc.agent().context("no agent")?;
        let c = attributed(agent, addr.port())?;
        assert_server_process(&c, pid)?;
        assert_eq!(c["comm"].as_str(), Some("openssl"), "{c}");
        let ms = c["handshake_ms_last"]
            .as_f64()
            .context("handshake_ms_last")?;
        assert!(
            ms > 0.0 && ms <= wall.as_secs_f64() * 1e3,
            "{ms} ms vs wall {wall:?}"
        );
        Ok(())
    });
}

#[test]
fn python_server_attributed_and_timed() {
    tests::with_scenario("uprobes-python", |sc| {
        let addr = sc.server_addr(false, 4434);
        let srv = sc.python_tls_server(addr, None)?;
        let pid = srv.proc.pid();
        let wall = one_handshake(sc, &SClientOpts::new(addr))?;
        let agent = sc.agent().context("no agent")?;
        let c = attributed(agent, addr.port())?;
        assert_server_process(&c, pid)?;
        let last = c["handshake_ms_last"]
            .as_f64()
            .context("handshake_ms_last")?;
        let max = c["handshake_ms_max"].as_f64().context("handshake_ms_max")?;
        let wall_ms = wall.as_secs_f64() * 1e3;
        assert!(last > 0.0 && last <= wall_ms, "{last} ms vs wall {wall:?}");
        assert!(max >= last && max <= wall_ms, "{max} ms vs wall {wall:?}");
        Ok(())
    });
}

#[test]
fn slow_sni_callback_shows_in_handshake_ms() {
    tests::with_scenario("uprobes-python-slow", |sc| {
        let addr = sc.server_addr(false, 4435);
        let srv = sc.python_tls_server_sni_delay(addr, 50)?;
        let pid = srv.proc.pid();
        let mut opts = SClientOpts::new(addr);
        opts.extra_args = vec!["-servername".into(), "hsmon.test".into()];
        let wall = one_handshake(sc, &opts)?;
        let agent = sc.agent().context("no agent")?;
        let c = attributed(agent, addr.port())?;
        assert_server_process(&c, pid)?;
        let max = c["handshake_ms_max"].as_f64().context("handshake_ms_max")?;
        assert!(max >= 50.0, "the SNI callback sleeps 50 ms: {c}");
        assert!(max <= wall.as_secs_f64() * 1e3, "{max} ms vs wall {wall:?}");
        Ok(())
    });
}

/// Handshakes in the cost measurement, per phase.
const COST_HANDSHAKES: usize = 200;

/// `n` sequential `openssl s_client` handshakes from the client namespace,
/// each with the libssl copy in `lib_dir` (a different inode: the client's
/// own calls hit no uprobe, so the counters see the server side only).
/// Returns the wall time of all of them.
fn timed_handshakes(
    sc: &Scenario,
    addr: SocketAddr,
    lib_dir: &std::path::Path,
    n: usize,
) -> Result<Duration> {
    let script = format!(
        "for i in $(seq {n}); do echo | LD_LIBRARY_PATH={} openssl s_client -connect {addr} >/dev/null 2>&1 || exit 1; done",
        lib_dir.display()
    );
    let started = Instant::now();
    let status = Command::new("timeout")
        .args([
            "120",
            "ip",
            "netns",
            "exec",
            &sc.net.client_ns,
            "sh",
            "-c",
            &script,
        ])
        .status()
        .context("running the handshake loop")?;
    if !status.success() {
        bail!("the handshake loop failed: {status}");
    }
    Ok(started.elapsed())
}

/// A counter from `GET /v1/stats`' `kernel` object.
fn kernel_stat(agent: &Agent, name: &str) -> Result<u64> {
    let s = agent.stats_value()?;
    s["kernel"][name]
        .as_u64()
        .with_context(|| format!("no kernel.{name} in {s}"))
}

/// Without uprobes the connections are still counted from the wire and
/// every process field is null.
#[test]
fn without_uprobes_process_fields_are_null() {
    tests::with_scenario_no_agent("uprobes-off", |sc| {
        let addr = sc.server_addr(false, 4438);
        let _srv = sc.s_server(&SServerOpts::new(addr))?;
        let lib_dir = sc.dir.path().join("unprobed-libssl");
        std::fs::create_dir_all(&lib_dir).context("creating the libssl copy's directory")?;
        std::fs::copy(LIBSSL, lib_dir.join("libssl.so.3")).context("copying libssl")?;
        let dir = sc.dir.path().to_owned();
        let agent = Agent::start_with_args(&sc.net, &dir, &["--no-uprobes".to_owned()])?;
        timed_handshakes(sc, addr, &lib_dir, 3)?;
        let conns = agent.conns_values()?;
        assert_eq!(conns.len(), 3, "the handshakes were tracked: {conns:?}");
        for c in &conns {
            assert_eq!(c["handshakes"], 1, "{c}");
            for k in ["pid", "comm", "library", "handshake_ms_max"] {
                assert!(c[k].is_null(), "{k} without uprobes: {c}");
            }
        }
        Ok(())
    });
}

/// A benchmark, not a test: `cargo xtask bench` runs it (ignored in the
/// test suite). Prints the wall time per handshake with and without the
/// uprobes and the server-side probe hits per handshake.
#[test]
#[ignore = "benchmark: run by `cargo xtask bench`"]
fn uprobe_cost() {
    tests::with_scenario_no_agent("uprobes-cost", |sc| {
        let addr = sc.server_addr(false, 4436);
        let _srv = sc.s_server(&SServerOpts::new(addr))?;
        let lib_dir = sc.dir.path().join("unprobed-libssl");
        std::fs::create_dir_all(&lib_dir).context("creating the libssl copy's directory")?;
        std::fs::copy(LIBSSL, lib_dir.join("libssl.so.3")).context("copying libssl")?;
        let dir = sc.dir.path().to_owned();

        let without = {
            let _agent = Agent::start_with_args(&sc.net, &dir, &["--no-uprobes".to_owned()])?;
            timed_handshakes(sc, addr, &lib_dir, COST_HANDSHAKES)?
        };
        let (with, hits) = {
            let agent = Agent::start_with_args(&sc.net, &dir, &[])?;
            let names = ["ssl_probe_entries", "ssl_probe_returns", "ssl_sock_io"];
            let before: Vec<u64> = names
                .iter()
                .map(|n| kernel_stat(&agent, n))
                .collect::<Result<_>>()?;
            let t = timed_handshakes(sc, addr, &lib_dir, COST_HANDSHAKES)?;
            let after: Vec<u64> = names
                .iter()
                .map(|n| kernel_stat(&agent, n))
                .collect::<Result<_>>()?;
            let hits: Vec<(&str, f64)> = names
                .iter()
                .zip(before.iter().zip(&after))
                .map(|(n, (b, a))| (*n, (a - b) as f64 / COST_HANDSHAKES as f64))
                .collect();
            (t, hits)
        };
        let per = |d: Duration| d.as_secs_f64() * 1e6 / COST_HANDSHAKES as f64;
        println!(
            "uprobe cost over {COST_HANDSHAKES} sequential s_client handshakes against s_server:"
        );
        println!("  without uprobes: {:.0} us per handshake", per(without));
        println!("  with uprobes:    {:.0} us per handshake", per(with));
        println!(
            "  difference:      {:+.0} us per handshake (process start-up dominates; rough)",
            per(with) - per(without)
        );
        for (n, h) in &hits {
            println!("  server-side {n} per handshake: {h:.1}");
        }
        let entries = hits.first().map(|h| h.1).unwrap_or(0.0);
        assert!(entries >= 1.0, "the server's probes fired: {hits:?}");
        Ok(())
    });
}

/// A server whose libssl is not probed (a copy: another inode) leaves the
/// connection to the probed client: `process_side` is `"client"`.
#[test]
fn client_attributed_when_the_server_is_not_probed() {
    tests::with_scenario("uprobes-client-side", |sc| {
        let addr = sc.server_addr(false, 4437);
        let lib_dir = sc.dir.path().join("unprobed-libssl");
        std::fs::create_dir_all(&lib_dir).context("creating the libssl copy's directory")?;
        std::fs::copy(LIBSSL, lib_dir.join("libssl.so.3")).context("copying libssl")?;
        let mut c = sc.net.server_cmd("env");
        c.arg(format!("LD_LIBRARY_PATH={}", lib_dir.display()))
            .arg("openssl")
            .arg("s_server")
            .arg("-accept")
            .arg(addr.to_string())
            .arg("-cert")
            .arg(&sc.cert.cert)
            .arg("-key")
            .arg(&sc.cert.key);
        // stdin stays open: on EOF s_server quits.
        let mut srv = tests::process::Proc::spawn("unprobed_s_server", c, sc.dir.path(), true)?;
        srv.wait_listening(&sc.net.server_ns, addr, Duration::from_secs(15))?;
        sc.add_tls_port(addr.port());
        sc.add_logs(&srv);

        let mut client = sc.s_client(&SClientOpts::new(addr))?;
        client.wait_established(PER_CONN)?;
        let client_pid = client.proc.pid();
        let agent = sc.agent().context("no agent")?;
        let deadline = Instant::now() + ATTRIBUTION;
        let conn = loop {
            let conns = agent.conns_values()?;
            if let Some(c) = conns
                .iter()
                .find(|c| server_port(c) == Some(addr.port()) && !c["pid"].is_null())
            {
                break c.clone();
            }
            if Instant::now() > deadline {
                bail!("no attributed connection within {ATTRIBUTION:?}: {conns:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(conn["pid"].as_u64(), Some(u64::from(client_pid)), "{conn}");
        assert_eq!(conn["process_side"].as_str(), Some("client"), "{conn}");
        assert_eq!(conn["comm"].as_str(), Some("openssl"), "{conn}");
        assert_eq!(conn["library"].as_str(), Some(LIBSSL), "{conn}");
        // s_client handshakes inside SSL_read/SSL_write: nothing to time.
        assert!(conn["handshake_ms_last"].is_null(), "{conn}");
        client.close(PER_CONN)?;
        Ok(())
    });
}
