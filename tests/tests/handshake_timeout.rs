//! `[limits] handshake_timeout`, end to end: the agent in the server
//! namespace with a policy of `handshake_timeout = "2s"` (action `reset`),
//! `openssl s_server` there.
//!
//! - A normal TLS 1.3 connection completes its handshake and stays open
//!   past the limit (4 s): it is never reset (data still flows afterwards)
//!   and no decision names it.
//! - A client that sends a real ClientHello (Python's `ssl`, through a memory
//!   BIO) and then stops in the middle of its handshake is reset: its socket
//!   sees ECONNRESET between 2 s and 2 s + 3 s after it connected (the sweep
//!   runs every second), and the agent prints a `handshake_timeout` decision
//!   with action `reset` for exactly that connection (its client port).
//! - Dry-run: the same stalled client is left alone for 5 s (no reset, no
//!   EOF) and the agent prints `would_reset` for its connection.

use anyhow::{ensure, Context, Result};
use std::net::SocketAddr;
use std::time::Duration;
use tests::decisions::{decisions, policy_args, wait_decision};
use tests::openssl::{SClientOpts, SServerOpts, TlsVersion};
use tests::scenario::{with_scenario_agent_args, PER_CONN};
use tests::workdir::WorkDir;
use tests::{cmd, pyssl::python, Scenario};

const PORT: u16 = 4471;
const LIMIT: Duration = Duration::from_secs(2);
/// The limit plus the sweep period and slack.
const RESET_BY: Duration = Duration::from_secs(5);

/// Connects from the client namespace, sends one ClientHello, then reads
/// without ever answering; prints `PORT OUTCOME SECONDS` (`OUTCOME` is `rst`,
/// `eof` or `timeout` after WAIT seconds).
const STALLED_CLIENT: &str = r#"
import socket, ssl, sys, time
host, port, wait = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
obj = ctx.wrap_bio(inc, out, server_hostname="hsmon.test")
try:
    obj.do_handshake()
except ssl.SSLWantReadError:
    pass
hello = out.read()
s = socket.create_connection((host, port), timeout=5)
start = time.monotonic()
s.sendall(hello)
s.settimeout(wait)
outcome = "timeout"
try:
    while time.monotonic() - start < wait:
        if not s.recv(65536):
            outcome = "eof"
            break
except ConnectionResetError:
    outcome = "rst"
except socket.timeout:
    outcome = "timeout"
print(s.getsockname()[1], outcome, round(time.monotonic() - start, 2))
"#;

/// Runs the stalled client (reading for at most `wait`); returns (its port,
/// outcome, seconds).
fn stalled_client(sc: &Scenario, addr: SocketAddr, wait: Duration) -> Result<(u16, String, f64)> {
    let mut c = sc.net.client_cmd(python());
    c.arg("-c")
        .arg(STALLED_CLIENT)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg(wait.as_secs_f64().to_string());
    let out = cmd::run_ok(&mut c, Duration::from_secs(30)).context("the stalled client")?;
    let mut f = out.split_whitespace();
    let (Some(port), Some(outcome), Some(secs)) = (f.next(), f.next(), f.next()) else {
        anyhow::bail!("the stalled client printed {out:?}");
    };
    Ok((
        port.parse().context("port")?,
        outcome.to_owned(),
        secs.parse().context("seconds")?,
    ))
}

#[test]
fn stalled_handshake_is_reset_after_the_limit() {
    let dir = WorkDir::new("hs-timeout-policy").unwrap_or_else(|e| panic!("{e:#}"));
    let args = policy_args(
        dir.path(),
        "hsmon.toml",
        "[limits]\nhandshake_timeout = \"2s\"\n[action]\nhandshake_timeout = \"reset\"\n",
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    with_scenario_agent_args("hs-timeout", &args, |sc| {
        let addr = sc.server_addr(false, PORT);
        let mut srv = sc.s_server(&SServerOpts::new(addr).version(TlsVersion::Tls13))?;
        let agent_client = sc.net.client_ip(false);

        // A normal connection outlives the limit.
        let mut ok = sc.s_client(&SClientOpts::new(addr).version(TlsVersion::Tls13))?;
        ok.wait_established(PER_CONN)?;
        std::thread::sleep(LIMIT * 2);
        ensure!(ok.proc.is_running(), "the completed connection ended");
        ok.send_data("still connected")?;
        srv.wait_stdout_count("still connected", 1, PER_CONN)
            .context("data after the limit on a completed handshake")?;
        let agent = sc.agent().context("agent")?;
        let early = decisions(agent)?;
        ensure!(
            early.iter().all(|d| d["rule"] != "handshake_timeout"),
            "a completed handshake was timed out: {early:?}"
        );
        ok.close(PER_CONN)?;

        // The stalled one is reset.
        let (port, outcome, secs) = stalled_client(sc, addr, Duration::from_secs(12))?;
        eprintln!("stalled client port {port}: {outcome} after {secs} s");
        ensure!(
            outcome == "rst",
            "the stalled client saw {outcome} after {secs} s, not a reset"
        );
        ensure!(
            secs >= LIMIT.as_secs_f64() - 0.05 && secs <= RESET_BY.as_secs_f64(),
            "reset after {secs} s; want between {LIMIT:?} and {RESET_BY:?}"
        );
        let d = wait_decision(
            agent,
            "handshake_timeout reset",
            Duration::from_secs(5),
            |d| d["rule"] == "handshake_timeout",
        )?;
        ensure!(d["action"] == "reset", "{d}");
        ensure!(d["peer"] == agent_client.to_string(), "{d}");
        ensure!(
            d["connection"]["client"] == SocketAddr::new(agent_client, port).to_string(),
            "the decision names another connection: {d}"
        );
        ensure!(d["connection"]["server"] == addr.to_string(), "{d}");
        let ms = d["counts"]["handshake_ms"]
            .as_u64()
            .context("handshake_ms")?;
        ensure!(ms > 2000 && ms < 5000, "{d}");
        ensure!(d["dry_run"] == false, "{d}");
        let all = decisions(agent)?;
        ensure!(
            all.iter()
                .filter(|d| d["rule"] == "handshake_timeout")
                .count()
                == 1,
            "one decision per connection: {all:?}"
        );
        Ok(())
    });
}

#[test]
fn dry_run_reports_would_reset_and_leaves_the_connection() {
    let dir = WorkDir::new("hs-timeout-dry-policy").unwrap_or_else(|e| panic!("{e:#}"));
    let args = policy_args(
        dir.path(),
        "hsmon.toml",
        "dry_run = true\n[limits]\nhandshake_timeout = \"2s\"\n",
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    with_scenario_agent_args("hs-timeout-dry", &args, |sc| {
        let addr = sc.server_addr(false, PORT);
        let _srv = sc.s_server(&SServerOpts::new(addr).version(TlsVersion::Tls13))?;
        let client = sc.net.client_ip(false);
        let (port, outcome, secs) = stalled_client(sc, addr, Duration::from_secs(5))?;
        ensure!(
            outcome == "timeout",
            "dry-run: the stalled client saw {outcome} after {secs} s"
        );
        let agent = sc.agent().context("agent")?;
        let d = wait_decision(agent, "would_reset", Duration::from_secs(5), |d| {
            d["rule"] == "handshake_timeout"
        })?;
        ensure!(d["action"] == "would_reset" && d["dry_run"] == true, "{d}");
        ensure!(
            d["connection"]["client"] == SocketAddr::new(client, port).to_string(),
            "{d}"
        );
        Ok(())
    });
}
