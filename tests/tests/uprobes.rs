//! libssl uprobes: each TLS connection is attributed to the server process
//! the test started (pid, comm, library), and its handshake is timed.
//!
//! Client and server run on this host (different namespaces, one kernel), so
//! the uprobes see both; the agent reports the server's process (the one
//! holding the accepted socket), which these tests check against the pid of
//! the server they spawned (`ip netns exec` execs, so that pid is the
//! server's own).
//!
//! Target discovery: a server started after the agent with its own libssl
//! copy (another inode, found by the periodic rescan) and a server linked
//! statically against `libssl.a` (found through its ELF symbols) are both
//! attributed within 5 s of their start. A libssl copy loaded with
//! `LD_PRELOAD` under a name that is not `libssl*` is never probed: the
//! tests use one to have an OpenSSL process the probes do not see.
//!
//! Probe sets (`hsmon run --uprobes`): the scenario's agent runs the
//! default `handshake` set, so every test here that does not name a set
//! checks that set (nginx, Python `ssl`, s_server, late and static servers
//! attributed with their library and timed). The `SSL_get_error` failure
//! reasons need `--uprobes full`; those tests name it. A server whose
//! libssl is not probed at all is still attributed, from its socket I/O;
//! bulk I/O on an established connection hits no uprobe in the default set
//! (and one per call in `full`); `--uprobes off` leaves every process field
//! null.
//!
//! `uprobe_cost` measures (and prints, asserting nothing about time) probe
//! hits per server-side handshake and the per-handshake cost with and
//! without the uprobes, for the default and the full set.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};
use tests::hsmon::Agent;
use tests::openssl::{SClientOpts, SServerOpts, TlsVersion};
use tests::scenario::PER_CONN;
use tests::Scenario;

const LIBSSL: &str = "/usr/lib/x86_64-linux-gnu/libssl.so.3";
/// The file name of a libssl copy that discovery does not take for a
/// libssl (it is loaded with `LD_PRELOAD`, matched by its SONAME).
const UNPROBED_COPY: &str = "unprobed-ssl-copy.so";
/// How long attribution may take to show in `hsmon conns`.
const ATTRIBUTION: Duration = Duration::from_secs(5);

/// `hsmon run` arguments for the full probe set (per-I/O probes and
/// `SSL_get_error`).
fn full_set() -> Vec<String> {
    vec!["--uprobes".to_owned(), "full".to_owned()]
}

/// The probe set the agent reports in `hsmon status --json`.
fn status_uprobe_set(agent: &Agent) -> Result<String> {
    let out = agent.cli(&["status", "--json"])?;
    let v: Value = serde_json::from_str(&out).with_context(|| format!("status: {out}"))?;
    v["uprobe_set"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no uprobe_set in {v}"))
}

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

/// The first connection to `port` that `pred` accepts, polling `hsmon
/// conns` for up to `within`.
fn wait_conn(
    agent: &Agent,
    port: u16,
    within: Duration,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let deadline = Instant::now() + within;
    loop {
        let conns = agent.conns_values()?;
        if let Some(c) = conns
            .iter()
            .find(|c| server_port(c) == Some(port) && pred(c))
        {
            return Ok(c.clone());
        }
        if Instant::now() > deadline {
            bail!("no connection to port {port} with {what} within {within:?}: {conns:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether `c["failure_reasons"]` holds `want`.
fn has_reason(c: &Value, want: &Value) -> bool {
    c["failure_reasons"]
        .as_array()
        .is_some_and(|a| a.iter().any(|r| r == want))
}

/// The cgroup v2 path of `pid` (`0::PATH` of `/proc/PID/cgroup`).
fn cgroup_of(pid: u32) -> Result<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .with_context(|| format!("reading /proc/{pid}/cgroup"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
        .with_context(|| format!("no cgroup2 line in /proc/{pid}/cgroup: {text:?}"))
}

/// The parent pid of `pid` (`/proc/PID/stat`, after the command name).
fn ppid_of(pid: u32) -> Result<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(") ").context("no ')' in stat")?.1;
    rest.split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no ppid in {stat:?}"))
}

/// A copy of the system libssl in `dir` under [`UNPROBED_COPY`]: a process
/// started with `LD_PRELOAD=<it>` uses OpenSSL the probes never see.
fn unprobed_libssl(dir: &std::path::Path) -> Result<std::path::PathBuf> {
    let copy = dir.join(UNPROBED_COPY);
    if !copy.exists() {
        std::fs::copy(LIBSSL, &copy).context("copying libssl")?;
    }
    Ok(copy)
}

/// Handshakes with `openssl s_client` (whose own libssl is an unprobed
/// copy) to `addr`, one every 200 ms, until `hsmon conns` shows one
/// attributed to `pid` through its probed library (`library` set: the
/// socket I/O alone names the process but not the library); returns that
/// connection. Gives up at `deadline`.
fn handshake_until_attributed(
    sc: &mut Scenario,
    addr: SocketAddr,
    pid: u32,
    deadline: Instant,
) -> Result<Value> {
    let copy = unprobed_libssl(sc.dir.path())?;
    let script = format!(
        "echo | LD_PRELOAD={} timeout 10 openssl s_client -connect {addr} >/dev/null 2>&1",
        copy.display()
    );
    sc.add_tls_port(addr.port());
    for _ in 0..100 {
        let status = Command::new("ip")
            .args(["netns", "exec", &sc.net.client_ns, "sh", "-c", &script])
            .status()
            .context("running s_client")?;
        if !status.success() {
            bail!("s_client to {addr} failed: {status}");
        }
        let agent = sc.agent().context("no agent")?;
        if let Some(c) = agent.conns_values()?.into_iter().find(|c| {
            server_port(c) == Some(addr.port())
                && c["pid"].as_u64() == Some(u64::from(pid))
                && !c["library"].is_null()
        }) {
            return Ok(c);
        }
        if Instant::now() > deadline {
            bail!(
                "no connection to {addr} attributed to pid {pid} in time: {:?}",
                agent.conns_values()?
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("no connection to {addr} attributed to pid {pid} after 100 handshakes")
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
    assert_eq!(
        c["cgroup_path"].as_str(),
        Some(cgroup_of(pid)?.as_str()),
        "{c}"
    );
    assert_eq!(c["handshake_failures"].as_u64(), Some(0), "{c}");
    assert_eq!(c["local_renegotiate_calls"].as_u64(), Some(0), "{c}");
    assert_eq!(c["local_key_update_calls"].as_u64(), Some(0), "{c}");
    assert_eq!(c["failure_reasons"], serde_json::json!([]), "{c}");
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
        assert_eq!(status_uprobe_set(agent)?, "handshake", "the default set");
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

/// `n` sequential `openssl s_client` handshakes from the client namespace,
/// each with the unprobed libssl copy `copy` preloaded (see
/// [`unprobed_libssl`]: the client's own calls hit no uprobe, so the
/// counters see the server side only). Returns the wall time of all of them.
fn timed_handshakes(
    sc: &Scenario,
    addr: SocketAddr,
    copy: &std::path::Path,
    n: usize,
) -> Result<Duration> {
    let script = format!(
        "for i in $(seq {n}); do echo | LD_PRELOAD={} openssl s_client -connect {addr} >/dev/null 2>&1 || exit 1; done",
        copy.display()
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

/// With `--uprobes off` (and its alias `--no-uprobes`) the connections
/// are still counted from the wire and every process field is null: no
/// uprobes and no attribution tracepoints.
#[test]
fn uprobes_off_process_fields_are_null() {
    tests::with_scenario_no_agent("uprobes-off", |sc| {
        let addr = sc.server_addr(false, 4438);
        let _srv = sc.s_server(&SServerOpts::new(addr))?;
        let lib_dir = unprobed_libssl(sc.dir.path())?;
        let dir = sc.dir.path().to_owned();
        let mut seen = 0;
        for flags in [&["--uprobes", "off"][..], &["--no-uprobes"][..]] {
            let args: Vec<String> = flags.iter().map(|f| (*f).to_owned()).collect();
            let agent = Agent::start_with_args(&sc.net, &dir, &args)?;
            assert_eq!(status_uprobe_set(&agent)?, "off", "{flags:?}");
            let stats = agent.stats_value()?;
            assert!(
                stats["kernel"]["ssl_probe_entries"].is_null(),
                "{flags:?}: no uprobe counters: {stats}"
            );
            timed_handshakes(sc, addr, &lib_dir, 3)?;
            let conns = agent.conns_values()?;
            assert_eq!(
                conns.len(),
                3,
                "{flags:?}: the handshakes were tracked: {conns:?}"
            );
            for c in &conns {
                assert_eq!(c["handshakes"], 1, "{c}");
                for k in [
                    "pid",
                    "comm",
                    "cgroup_id",
                    "library",
                    "process_side",
                    "handshake_ms_max",
                    "handshake_failures",
                ] {
                    assert!(c[k].is_null(), "{k} with {flags:?}: {c}");
                }
            }
            seen += conns.len();
        }
        assert_eq!(seen, 6);
        Ok(())
    });
}

/// The Python TLS echo client: `client HOST PORT N`: one connection, then
/// `N` round trips of 100 bytes (each one `SSL_write_ex` and at least one
/// `SSL_read_ex` on both ends); prints `DONE N`.
const PY_ECHO_CLIENT: &str = r#"import socket, ssl, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
with socket.create_connection((host, port), timeout=30) as raw:
    with ctx.wrap_socket(raw) as tls:
        msg = b"x" * 100
        for _ in range(n):
            tls.sendall(msg)
            got = b""
            while len(got) < len(msg):
                chunk = tls.recv(len(msg) - len(got))
                if not chunk:
                    raise SystemExit("server closed")
                got += chunk
        print("DONE", n, flush=True)
"#;

/// Round trips in [`io_calls_hit_no_uprobe_in_the_default_set`].
const ROUND_TRIPS: u64 = 300;

/// Bulk `SSL_write`/`SSL_read` on an established connection: in the
/// default set the entry-probe counter grows by a handshake's worth of
/// hits, not by the number of I/O calls; with `--uprobes full` (the same
/// run, the check that the counter would show them) it grows by at least
/// two per round trip. Server and client are Python `ssl` with a private
/// libssl copy, the only file the agent probes, so nothing else on the
/// host moves the counter. In the default set the connection still gets
/// the server's pid and comm.
#[test]
fn io_calls_hit_no_uprobe_in_the_default_set() {
    tests::with_scenario_no_agent("uprobes-io-calls", |sc| {
        let addr = sc.server_addr(false, 4448);
        let lib_dir = sc.dir.path().join("io-libssl");
        std::fs::create_dir_all(&lib_dir).context("creating the libssl copy's directory")?;
        let lib = lib_dir.join("libssl.so.3");
        std::fs::copy(LIBSSL, &lib).context("copying libssl")?;
        let script = sc.dir.path().join("tls_echo_server.py");
        std::fs::write(&script, tests::pyssl::SCRIPT).context("writing the server script")?;
        let mut c = sc.net.server_cmd(tests::pyssl::python());
        c.arg(&script)
            .arg(addr.ip().to_string())
            .arg(addr.port().to_string())
            .arg(&sc.cert.cert)
            .arg(&sc.cert.key)
            .arg(sc.dir.path().join("io.keylog"))
            .env("LD_LIBRARY_PATH", &lib_dir);
        let mut srv = tests::process::Proc::spawn("py_echo_server", c, sc.dir.path(), false)?;
        srv.wait_for("READY", Duration::from_secs(15), |out, _| {
            out.contains("READY")
        })?;
        srv.wait_listening(&sc.net.server_ns, addr, Duration::from_secs(15))?;
        sc.add_logs(&srv);
        sc.add_tls_port(addr.port());
        let client_script = sc.dir.path().join("tls_echo_client.py");
        std::fs::write(&client_script, PY_ECHO_CLIENT).context("writing the client script")?;
        let dir = sc.dir.path().to_owned();
        let mut grew = Vec::new();
        for set in ["handshake", "full"] {
            let agent = Agent::start_with_args(
                &sc.net,
                &dir,
                &[
                    "--uprobes".to_owned(),
                    set.to_owned(),
                    "--uprobe-target".to_owned(),
                    lib.display().to_string(),
                ],
            )?;
            assert_eq!(status_uprobe_set(&agent)?, set);
            let before = kernel_stat(&agent, "ssl_probe_entries")?;
            let mut c = sc.net.client_cmd(tests::pyssl::python());
            c.arg(&client_script)
                .arg(addr.ip().to_string())
                .arg(addr.port().to_string())
                .arg(ROUND_TRIPS.to_string())
                .env("LD_LIBRARY_PATH", &lib_dir);
            let out = tests::cmd::run_ok(&mut c, Duration::from_secs(60))?;
            assert!(out.contains(&format!("DONE {ROUND_TRIPS}")), "{out}");
            let hits = kernel_stat(&agent, "ssl_probe_entries")? - before;
            println!("--uprobes {set}: {hits} entry probe hits for {ROUND_TRIPS} round trips");
            let conn = wait_conn(&agent, addr.port(), ATTRIBUTION, "the server's pid", |c| {
                c["pid"].as_u64() == Some(u64::from(srv.pid()))
            })?;
            assert_eq!(
                conn["comm"].as_str(),
                Some(comm_of(srv.pid())?.as_str()),
                "{conn}"
            );
            assert_eq!(conn["process_side"].as_str(), Some("server"), "{conn}");
            assert_eq!(
                conn["library"].as_str(),
                Some(lib.display().to_string().as_str()),
                "{conn}"
            );
            grew.push(hits);
        }
        // A handshake is a few calls on each end (SSL_do_handshake,
        // SSL_free); far below one per round trip.
        assert!(
            grew[0] < ROUND_TRIPS / 10,
            "default set: {} entry hits for {ROUND_TRIPS} round trips",
            grew[0]
        );
        assert!(
            grew[1] >= 2 * ROUND_TRIPS,
            "full set: {} entry hits for {ROUND_TRIPS} round trips (the counter sees I/O probes)",
            grew[1]
        );
        Ok(())
    });
}

/// Full handshakes `openssl s_time -new` (whose libssl is the unprobed
/// copy `copy`) completes against `addr` in `secs` seconds: (connections,
/// wall time).
fn s_time(
    sc: &Scenario,
    addr: SocketAddr,
    copy: &std::path::Path,
    secs: u32,
) -> Result<(u64, Duration)> {
    let started = Instant::now();
    let out = Command::new("timeout")
        .args([
            &(secs + 30).to_string(),
            "ip",
            "netns",
            "exec",
            &sc.net.client_ns,
            "env",
        ])
        .arg(format!("LD_PRELOAD={}", copy.display()))
        .args([
            "openssl",
            "s_time",
            "-connect",
            &addr.to_string(),
            "-new",
            "-time",
        ])
        .arg(secs.to_string())
        .output()
        .context("running openssl s_time")?;
    let wall = started.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    // "1170 connections in 4 real seconds, 0 bytes read per connection"
    let n = text
        .lines()
        .find(|l| l.contains("real seconds"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no connection count in s_time's output: {text}"))?;
    Ok((n, wall))
}

/// Rounds of each phase in [`uprobe_cost`], alternating.
const COST_ROUNDS: usize = 3;
/// Seconds of `s_time` per round.
const COST_SECS: u32 = 5;

/// A benchmark, not a test: `cargo xtask bench` runs it (ignored in the
/// test suite). `openssl s_server` uses its own libssl copy, which is the
/// only file the agent probes (`--uprobe-target`), so the counters see the
/// server's handshakes and nothing else on the host; the client is
/// `openssl s_time -new` (full handshakes in one process) with an unprobed
/// copy. Prints the server-side probe hits per handshake and the time per
/// handshake without the uprobes, with the default (`handshake`) set and
/// with the `full` set, in alternating rounds.
#[test]
#[ignore = "benchmark: run by `cargo xtask bench`"]
fn uprobe_cost() {
    tests::with_scenario_no_agent("uprobes-cost", |sc| {
        let addr = sc.server_addr(false, 4436);
        let lib_dir = sc.dir.path().join("bench-libssl");
        std::fs::create_dir_all(&lib_dir).context("creating the libssl copy's directory")?;
        let lib = lib_dir.join("libssl.so.3");
        std::fs::copy(LIBSSL, &lib).context("copying libssl")?;
        let mut c = sc.net.server_cmd("env");
        c.arg(format!("LD_LIBRARY_PATH={}", lib_dir.display()))
            .args(["openssl", "s_server", "-accept", &addr.to_string(), "-cert"])
            .arg(&sc.cert.cert)
            .arg("-key")
            .arg(&sc.cert.key);
        // stdin stays open: on EOF s_server quits.
        let mut srv = tests::process::Proc::spawn("bench_s_server", c, sc.dir.path(), true)?;
        srv.wait_listening(&sc.net.server_ns, addr, Duration::from_secs(15))?;
        let copy = unprobed_libssl(sc.dir.path())?;
        let dir = sc.dir.path().to_owned();
        let names = [
            "ssl_probe_entries",
            "ssl_probe_returns",
            "ssl_sock_io",
            "ssl_flows_attributed",
            "ssl_flows_attributed_by_socket",
        ];
        // Phases: without uprobes, the default set, the full set.
        let sets = ["handshake", "full"];
        let mut without = (0u64, Duration::ZERO);
        let mut with = [(0u64, Duration::ZERO); 2];
        let mut hits = [[0u64; 5]; 2];
        let rounds = cost_rounds();
        for _ in 0..rounds {
            {
                let _agent = Agent::start_with_args(&sc.net, &dir, &["--no-uprobes".to_owned()])?;
                let (n, t) = s_time(sc, addr, &copy, COST_SECS)?;
                without = (without.0 + n, without.1 + t);
            }
            for (k, set) in sets.iter().enumerate() {
                let agent = Agent::start_with_args(
                    &sc.net,
                    &dir,
                    &[
                        "--uprobes".to_owned(),
                        (*set).to_owned(),
                        "--uprobe-target".to_owned(),
                        lib.display().to_string(),
                    ],
                )?;
                let before: Vec<u64> = names
                    .iter()
                    .map(|n| kernel_stat(&agent, n))
                    .collect::<Result<_>>()?;
                let (n, t) = s_time(sc, addr, &copy, COST_SECS)?;
                with[k] = (with[k].0 + n, with[k].1 + t);
                for (i, name) in names.iter().enumerate() {
                    hits[k][i] += kernel_stat(&agent, name)? - before[i];
                }
            }
        }
        let per = |(n, d): (u64, Duration)| d.as_secs_f64() * 1e6 / n.max(1) as f64;
        println!(
            "uprobe cost, openssl s_time -new against s_server, {rounds} round(s) of {COST_SECS} s each:"
        );
        println!(
            "  without uprobes: {:.0} us per handshake ({} handshakes)",
            per(without),
            without.0
        );
        println!(
            "  with uprobes:    {:.0} us per handshake ({} handshakes; default set)",
            per(with[0]),
            with[0].0
        );
        println!(
            "  with uprobes (full set): {:.0} us per handshake ({} handshakes)",
            per(with[1]),
            with[1].0
        );
        println!(
            "  difference:      {:+.0} us per handshake ({:+.1}%; default set)",
            per(with[0]) - per(without),
            (per(with[0]) / per(without) - 1.0) * 100.0
        );
        for (k, set) in sets.iter().enumerate() {
            let label = if k == 0 {
                String::new()
            } else {
                format!(", {set} set")
            };
            for (n, h) in names.iter().zip(hits[k]) {
                println!(
                    "  server-side {n}{label} per handshake: {:.2}",
                    h as f64 / with[k].0.max(1) as f64
                );
            }
        }
        let (entry, ret) = measure_call_cost(sc, 1)?;
        for (k, set) in sets.iter().enumerate() {
            let h = |i: usize| hits[k][i] as f64 / with[k].0.max(1) as f64;
            println!(
                "  estimated probe CPU per server handshake, {set} set: {:.0} us ({:.2} entry hits x {entry:.0} ns + {:.2} return hits x {ret:.0} ns; tracepoints not included)",
                (h(0) * entry + h(1) * ret) / 1e3,
                h(0),
                h(1)
            );
        }
        assert!(
            with.iter().all(|w| w.0 > 0) && without.0 > 0,
            "handshakes completed"
        );
        for (k, set) in sets.iter().enumerate() {
            assert!(
                hits[k][0] >= with[k].0,
                "the server's probes fired on every handshake ({set}): {hits:?}"
            );
        }
        Ok(())
    });
}

/// A microbenchmark: `n` calls each of `SSL_free(NULL)` (one entry probe),
/// `SSL_get_error` (an entry and a return probe) and `SSL_want` (not
/// probed); prints the process CPU time per call of each.
const CALL_COST_SOURCE: &str = r#"#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double cpu_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 100000;
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL *ssl = SSL_new(ctx);
    volatile long sink = 0;
    double t0 = cpu_ns();
    for (long i = 0; i < n; i++)
        SSL_free(NULL);
    double t1 = cpu_ns();
    for (long i = 0; i < n; i++)
        sink += SSL_get_error(ssl, 1);
    double t2 = cpu_ns();
    for (long i = 0; i < n; i++)
        sink += SSL_want(ssl);
    double t3 = cpu_ns();
    printf("entry_ns %.1f entry_return_ns %.1f unprobed_ns %.1f\n", (t1 - t0) / n, (t2 - t1) / n,
           (t3 - t2) / n);
    return sink < 0;
}
"#;

/// Runs the [`CALL_COST_SOURCE`] program `exe` (with the unprobed libssl
/// copy `copy` preloaded): CPU ns per call of an entry-probed function, of
/// an entry- and return-probed one, and of an unprobed one.
fn call_cost(exe: &std::path::Path, copy: &std::path::Path) -> Result<[f64; 3]> {
    let out = Command::new("env")
        .arg(format!("LD_PRELOAD={}", copy.display()))
        .arg(exe)
        .arg("200000")
        .output()
        .context("running the call-cost program")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<f64> = text
        .split_whitespace()
        .skip(1)
        .step_by(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    match v[..] {
        [a, b, c] => Ok([a, b, c]),
        _ => bail!("unexpected call-cost output: {text:?}"),
    }
}

/// A benchmark: the CPU cost of one probe hit, from a program that calls
/// probed libssl functions in a loop, without and with the uprobes (the
/// agent probes only the program's preloaded libssl copy, which nothing
/// else on the host uses). Load on the machine barely matters: the time
/// is the process's own CPU time, and a uprobe runs on it.
#[test]
#[ignore = "benchmark: run by `cargo xtask bench`"]
fn uprobe_call_cost() {
    tests::with_scenario_no_agent("uprobes-call-cost", |sc| {
        let (entry, ret) = measure_call_cost(sc, cost_rounds())?;
        assert!(
            entry > 0.0,
            "the entry probe costs something: {entry} ns, return {ret} ns"
        );
        Ok(())
    });
}

/// Builds and runs the [`CALL_COST_SOURCE`] program `rounds` times without
/// and with the uprobes; prints the figures and returns the CPU ns of one
/// entry probe hit and of one return probe hit.
fn measure_call_cost(sc: &Scenario, rounds: usize) -> Result<(f64, f64)> {
    let src = sc.dir.path().join("call_cost.c");
    let exe = sc.dir.path().join("call_cost");
    std::fs::write(&src, CALL_COST_SOURCE).context("writing call_cost.c")?;
    let built = Command::new("gcc")
        .arg("-O1")
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .args(["-lssl", "-lcrypto"])
        .output()
        .context("running gcc")?;
    if !built.status.success() {
        bail!("gcc: {}", String::from_utf8_lossy(&built.stderr));
    }
    let copy = unprobed_libssl(sc.dir.path())?;
    let dir = sc.dir.path().to_owned();
    let mut without = [0.0f64; 3];
    let mut with = [0.0f64; 3];
    for _ in 0..rounds {
        let w = call_cost(&exe, &copy)?;
        // `full`: SSL_get_error is probed only in that set.
        let agent = Agent::start_with_args(
            &sc.net,
            &dir,
            &[
                "--uprobes".to_owned(),
                "full".to_owned(),
                "--uprobe-target".to_owned(),
                copy.display().to_string(),
            ],
        )?;
        let p = call_cost(&exe, &copy)?;
        drop(agent);
        for i in 0..3 {
            without[i] += w[i] / rounds as f64;
            with[i] += p[i] / rounds as f64;
        }
    }
    let entry = with[0] - without[0];
    let ret = (with[1] - without[1]) - entry;
    println!("uprobe cost per call (process CPU time, mean of {rounds} round(s) of 200000 calls):");
    println!(
        "  SSL_free(NULL), entry probe:          {:.0} ns -> {:.0} ns",
        without[0], with[0]
    );
    println!(
        "  SSL_get_error, entry + return probe:  {:.0} ns -> {:.0} ns",
        without[1], with[1]
    );
    println!(
        "  SSL_want, not probed:                 {:.0} ns -> {:.0} ns",
        without[2], with[2]
    );
    println!("  one entry probe hit: {entry:.0} ns; one return probe hit: {ret:.0} ns");
    Ok((entry, ret))
}

/// Rounds per phase: [`COST_ROUNDS`], 1 with `HSMON_BENCH_QUICK`.
fn cost_rounds() -> usize {
    if std::env::var_os("HSMON_BENCH_QUICK").is_some() {
        1
    } else {
        COST_ROUNDS
    }
}

/// A server whose libssl is not probed (a preloaded copy under another
/// name) hits no uprobe, yet its socket I/O names it: the connection gets
/// its pid, comm and side, no library and no handshake time (the probed
/// client, `openssl s_client`, is the other end: the server wins).
#[test]
fn unprobed_server_attributed_by_its_socket_io() {
    tests::with_scenario("uprobes-unprobed-server", |sc| {
        unprobed_server_body(sc, 4437)
    });
}

/// [`unprobed_server_attributed_by_its_socket_io`] with the socket hooks:
/// the flow's `FLOWS` mirror is keyed by cookies the uprobes' 4-tuple
/// lookup cannot find, so the socket hook marks the socket for them.
#[test]
fn socket_hooks_unprobed_server_attributed_by_its_socket_io() {
    let args = ["--hooks", "socket", "--ports", "4439"].map(String::from);
    tests::scenario::with_scenario_agent_args("uprobes-unprobed-server-sock", &args, |sc| {
        unprobed_server_body(sc, 4439)
    });
}

/// `openssl s_server` on `addr` in the server's namespace with the
/// certificate of the scenario, started through `env VAR=VALUE` (`env`).
fn s_server_with_env(sc: &Scenario, addr: SocketAddr, env: &str) -> Command {
    let mut c = sc.net.server_cmd("env");
    c.arg(env)
        .arg("openssl")
        .arg("s_server")
        .arg("-accept")
        .arg(addr.to_string())
        .arg("-cert")
        .arg(&sc.cert.cert)
        .arg("-key")
        .arg(&sc.cert.key);
    c
}

/// One connection from a probed `s_client` to an `s_server` on an unprobed
/// libssl copy at `port`: the server is named by its socket I/O alone.
fn unprobed_server_body(sc: &mut Scenario, port: u16) -> Result<()> {
    let addr = sc.server_addr(false, port);
    let copy = unprobed_libssl(sc.dir.path())?;
    let c = s_server_with_env(sc, addr, &format!("LD_PRELOAD={}", copy.display()));
    // stdin stays open: on EOF s_server quits.
    let mut srv = tests::process::Proc::spawn("unprobed_s_server", c, sc.dir.path(), true)?;
    srv.wait_listening(&sc.net.server_ns, addr, Duration::from_secs(15))?;
    sc.add_tls_port(addr.port());
    sc.add_logs(&srv);
    let server_pid = srv.pid();

    let mut client = sc.s_client(&SClientOpts::new(addr))?;
    client.wait_established(PER_CONN)?;
    client.send_data("hello")?;
    let agent = sc.agent().context("no agent")?;
    let conn = wait_conn(agent, addr.port(), ATTRIBUTION, "the server's pid", |c| {
        c["pid"].as_u64() == Some(u64::from(server_pid))
    })?;
    let by_socket = kernel_stat(agent, "ssl_flows_attributed_by_socket")?;
    assert_eq!(conn["process_side"].as_str(), Some("server"), "{conn}");
    assert_eq!(conn["comm"].as_str(), Some("openssl"), "{conn}");
    assert_eq!(
        conn["cgroup_path"].as_str(),
        Some(cgroup_of(server_pid)?.as_str()),
        "{conn}"
    );
    assert!(conn["library"].is_null(), "no probed library: {conn}");
    assert!(conn["handshake_ms_last"].is_null(), "nothing timed: {conn}");
    assert!(
        by_socket >= 1,
        "counted as attributed by socket I/O: {by_socket}"
    );
    client.close(PER_CONN)?;
    Ok(())
}

/// nginx with a master process: the connection belongs to the worker, a
/// child of the master the test started, which maps the system libssl.
#[test]
fn nginx_worker_attributed() {
    tests::with_scenario("uprobes-nginx", |sc| {
        let addr = sc.server_addr(false, 4440);
        let mut ngx = tests::nginx::Nginx::start_with_master(
            &sc.net,
            sc.dir.path(),
            &sc.cert,
            addr,
            "nginx",
        )?;
        sc.add_tls_port(addr.port());
        sc.add_logs(&ngx.proc);
        let master = ngx.proc.pid();
        let wall = one_handshake(sc, &SClientOpts::new(addr))?;
        let agent = sc.agent().context("no agent")?;
        let c = attributed(agent, addr.port())?;
        let pid = c["pid"].as_u64().context("pid")? as u32;
        assert_ne!(pid, master, "the master does not serve connections: {c}");
        assert_eq!(
            ppid_of(pid)?,
            master,
            "pid {pid} is a worker of the master: {c}"
        );
        assert_eq!(c["comm"].as_str(), Some("nginx"), "{c}");
        assert_server_process(&c, pid)?;
        let ms = c["handshake_ms_max"].as_f64().context("handshake_ms_max")?;
        assert!(
            ms > 0.0 && ms <= wall.as_secs_f64() * 1e3,
            "{ms} ms vs wall {wall:?}"
        );
        ngx.stop();
        Ok(())
    });
}

/// `r` on s_server's stdin: `SSL_renegotiate`, counted per connection.
#[test]
fn s_server_renegotiate_calls_counted() {
    tests::with_scenario("uprobes-local-reneg", |sc| {
        let addr = sc.server_addr(false, 4441);
        let mut srv = sc.s_server(&SServerOpts::new(addr).version(TlsVersion::Tls12))?;
        let pid = srv.proc.pid();
        let mut client = sc.s_client(&SClientOpts::new(addr).version(TlsVersion::Tls12))?;
        client.wait_established(PER_CONN)?;
        for _ in 0..2 {
            let n = srv.request_renegotiation(PER_CONN)?;
            assert_eq!(n, 1, "the client renegotiated");
        }
        let agent = sc.agent().context("no agent")?;
        let c = wait_conn(
            agent,
            addr.port(),
            ATTRIBUTION,
            "2 renegotiate calls",
            |c| c["local_renegotiate_calls"].as_u64() == Some(2),
        )?;
        assert_eq!(c["pid"].as_u64(), Some(u64::from(pid)), "{c}");
        assert_eq!(c["local_key_update_calls"].as_u64(), Some(0), "{c}");
        assert_eq!(
            c["renegotiations_server"].as_u64(),
            Some(2),
            "the wire agrees: {c}"
        );
        client.close(PER_CONN)?;
        Ok(())
    });
}

/// `k` on s_server's stdin (TLS 1.3): `SSL_key_update`, counted per
/// connection.
#[test]
fn s_server_key_update_calls_counted() {
    tests::with_scenario("uprobes-local-ku", |sc| {
        let addr = sc.server_addr(false, 4442);
        let mut srv = sc.s_server(&SServerOpts::new(addr).version(TlsVersion::Tls13))?;
        let pid = srv.proc.pid();
        let mut client = sc.s_client(&SClientOpts::new(addr).version(TlsVersion::Tls13))?;
        client.wait_established(PER_CONN)?;
        // `k`: s_server calls SSL_key_update and sends the KeyUpdate (its
        // `SSL_do_handshake -> N` line is stdio-buffered, so the `-msg`
        // line is what to wait for).
        for n in 1..=3 {
            srv.proc.write_line("k")?;
            srv.proc
                .wait_for(&format!("KeyUpdate {n} sent"), PER_CONN, |out, _| {
                    tests::openssl::msg_count(out, ">>>", "KeyUpdate") >= n
                })?;
        }
        let agent = sc.agent().context("no agent")?;
        let c = wait_conn(agent, addr.port(), ATTRIBUTION, "3 key update calls", |c| {
            c["local_key_update_calls"].as_u64() == Some(3)
        })?;
        assert_eq!(c["pid"].as_u64(), Some(u64::from(pid)), "{c}");
        assert_eq!(c["local_renegotiate_calls"].as_u64(), Some(0), "{c}");
        client.close(PER_CONN)?;
        Ok(())
    });
}

/// A client that sends its ClientHello and closes: s_server's `SSL_accept`
/// fails, which counts a `handshake_failures`, and the error s_server
/// reads with `SSL_get_error` is a failure reason (`--uprobes full`).
#[test]
fn client_aborted_handshake_counts_a_failure() {
    tests::scenario::with_scenario_agent_args("uprobes-abort", &full_set(), |sc| {
        let addr = sc.server_addr(false, 4443);
        let srv = sc.s_server(&SServerOpts::new(addr))?;
        let pid = srv.proc.pid();
        let hello = tests::pyssl::client_hello_bytes()?;
        tests::rawpeer::send_writes(&sc.net, addr, vec![hello], Duration::ZERO, PER_CONN)?;
        let agent = sc.agent().context("no agent")?;
        let c = wait_conn(
            agent,
            addr.port(),
            ATTRIBUTION,
            "a handshake failure",
            |c| c["handshake_failures"].as_u64().is_some_and(|n| n >= 1),
        )?;
        assert_eq!(c["pid"].as_u64(), Some(u64::from(pid)), "{c}");
        assert_eq!(c["handshake_failures"].as_u64(), Some(1), "{c}");
        assert_eq!(c["handshakes"].as_u64(), Some(0), "{c}");
        assert!(
            c["handshake_ms_last"].is_null(),
            "no handshake succeeded: {c}"
        );
        let seen: Vec<&Value> = c["failure_reasons"]
            .as_array()
            .context("failure_reasons")?
            .iter()
            .filter(|r| r["source"] == "ssl_get_error")
            .collect();
        assert!(
            seen.iter()
                .any(|r| r["error"] == "SSL_ERROR_SSL" || r["error"] == "SSL_ERROR_SYSCALL"),
            "s_server's SSL_get_error after the failed SSL_accept: {c}"
        );
        Ok(())
    });
}

/// A server started after the agent, with its own libssl copy (an inode
/// nobody mapped at the agent's start): found by the rescan and
/// attributed within 5 s of its start, `library` naming the copy.
#[test]
fn server_started_after_the_agent_attributed_within_5s() {
    tests::with_scenario("uprobes-late", |sc| {
        let addr = sc.server_addr(false, 4444);
        let lib_dir = sc.dir.path().join("late-libssl");
        std::fs::create_dir_all(&lib_dir).context("creating the libssl copy's directory")?;
        let lib = lib_dir.join("libssl.so.3");
        std::fs::copy(LIBSSL, &lib).context("copying libssl")?;
        let c = s_server_with_env(sc, addr, &format!("LD_LIBRARY_PATH={}", lib_dir.display()));
        let started = Instant::now();
        let mut srv = tests::process::Proc::spawn("late_s_server", c, sc.dir.path(), true)?;
        sc.add_logs(&srv);
        srv.wait_listening(&sc.net.server_ns, addr, Duration::from_secs(15))?;
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", srv.pid()))?;
        assert!(
            maps.contains(&lib.display().to_string()),
            "s_server maps the copy"
        );
        let conn = handshake_until_attributed(sc, addr, srv.pid(), started + ATTRIBUTION)?;
        let took = started.elapsed();
        assert_eq!(
            conn["library"].as_str(),
            Some(lib.display().to_string().as_str()),
            "{conn}"
        );
        assert_eq!(conn["process_side"].as_str(), Some("server"), "{conn}");
        println!("late server attributed {took:?} after its start");
        Ok(())
    });
}

/// A server linked statically against `libssl.a` maps no libssl; its own
/// executable carries the `SSL_*` functions. Found through its symbol
/// table and attributed within 5 s of its start.
#[test]
fn static_openssl_binary_attributed_within_5s() {
    tests::with_scenario("uprobes-static", |sc| {
        let addr = sc.server_addr(false, 4445);
        let exe = tests::static_tls::build(sc.dir.path())?;
        let started = Instant::now();
        let srv = tests::static_tls::StaticTlsServer::start(
            &sc.net,
            sc.dir.path(),
            &sc.cert,
            &exe,
            addr,
            "static_tls_server",
        )?;
        sc.add_logs(&srv.proc);
        let pid = srv.proc.pid();
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
        assert!(
            !maps.contains("libssl"),
            "statically linked: no libssl mapped"
        );
        let conn = handshake_until_attributed(sc, addr, pid, started + ATTRIBUTION)?;
        let took = started.elapsed();
        assert_eq!(
            conn["library"].as_str(),
            Some(exe.display().to_string().as_str()),
            "{conn}"
        );
        assert_eq!(
            conn["comm"].as_str(),
            Some(comm_of(pid)?.as_str()),
            "{conn}"
        );
        assert_eq!(conn["process_side"].as_str(), Some("server"), "{conn}");
        let agent = sc.agent().context("no agent")?;
        let timed = wait_conn(agent, addr.port(), ATTRIBUTION, "a timed handshake", |c| {
            c["pid"].as_u64() == Some(u64::from(pid)) && c["handshake_ms_max"].as_f64().is_some()
        })?;
        assert!(
            timed["handshake_ms_max"]
                .as_f64()
                .is_some_and(|ms| ms > 0.0),
            "{timed}"
        );
        println!("static server attributed {took:?} after its start");
        Ok(())
    });
}

/// Runs `openssl s_client` with `opts` to completion (it fails its
/// handshake and exits).
fn failing_client(sc: &mut Scenario, opts: &SClientOpts) -> Result<()> {
    let mut c = sc.s_client(opts)?;
    c.proc.close_stdin();
    if c.proc.wait_exit(PER_CONN).is_none() {
        c.proc.kill();
        bail!("s_client still running after {PER_CONN:?}");
    }
    assert_eq!(c.handshakes_completed(), 0, "the handshake failed");
    Ok(())
}

/// A client offering only TLS 1.2 to a TLS 1.3-only s_server: the server's
/// cleartext `protocol_version` alert, and the `SSL_ERROR_SSL` s_server
/// read after its failed `SSL_accept` (`--uprobes full`).
#[test]
fn refused_version_failure_reasons() {
    tests::scenario::with_scenario_agent_args("uprobes-version", &full_set(), |sc| {
        let addr = sc.server_addr(false, 4446);
        let srv = sc.s_server(&SServerOpts::new(addr).version(TlsVersion::Tls13))?;
        let pid = srv.proc.pid();
        failing_client(sc, &SClientOpts::new(addr).version(TlsVersion::Tls12))?;
        let agent = sc.agent().context("no agent")?;
        let alert = serde_json::json!({"source": "alert", "sender": "server",
            "level": "fatal", "description": "protocol_version"});
        let error = serde_json::json!({"source": "ssl_get_error", "error": "SSL_ERROR_SSL"});
        let c = wait_conn(
            agent,
            addr.port(),
            ATTRIBUTION,
            "both failure reasons",
            |c| has_reason(c, &alert) && has_reason(c, &error),
        )?;
        assert_eq!(c["pid"].as_u64(), Some(u64::from(pid)), "{c}");
        assert_eq!(c["handshake_failures"].as_u64(), Some(1), "{c}");
        assert_eq!(
            c["failure_reasons"].as_array().map(Vec::len),
            Some(2),
            "{c}"
        );
        Ok(())
    });
}

/// A TLS 1.2 client that does not trust the server's (self-signed)
/// certificate: its cleartext `unknown_ca` alert, and the `SSL_ERROR_SSL`
/// s_server read after its failed `SSL_accept` (`--uprobes full`).
#[test]
fn rejected_certificate_failure_reasons() {
    tests::scenario::with_scenario_agent_args("uprobes-cert", &full_set(), |sc| {
        let addr = sc.server_addr(false, 4447);
        let srv = sc.s_server(&SServerOpts::new(addr).version(TlsVersion::Tls12))?;
        let pid = srv.proc.pid();
        let mut opts = SClientOpts::new(addr).version(TlsVersion::Tls12);
        opts.extra_args = vec!["-verify".into(), "1".into(), "-verify_return_error".into()];
        failing_client(sc, &opts)?;
        let agent = sc.agent().context("no agent")?;
        let alert = serde_json::json!({"source": "alert", "sender": "client",
            "level": "fatal", "description": "unknown_ca"});
        let error = serde_json::json!({"source": "ssl_get_error", "error": "SSL_ERROR_SSL"});
        let c = wait_conn(
            agent,
            addr.port(),
            ATTRIBUTION,
            "both failure reasons",
            |c| has_reason(c, &alert) && has_reason(c, &error),
        )?;
        assert_eq!(c["pid"].as_u64(), Some(u64::from(pid)), "{c}");
        assert_eq!(c["handshake_failures"].as_u64(), Some(1), "{c}");
        Ok(())
    });
}
