//! `hsmon top` in its non-interactive modes, against a live renegotiation:
//! `openssl s_server -tls1_2 -client_renegotiation` and an `openssl
//! s_client` that renegotiates (`R`) every few hundred milliseconds while
//! `hsmon top --once --json --interval 2000` measures. The frame must list
//! the client address as a peer and its connection with a renegotiation
//! rate above 0; the plain frame (`--iterations 1`, stdout not a terminal)
//! shows the peer's line with its one-minute renegotiation count.

use anyhow::{ensure, Context};
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};
use tests::hsmon::hsmon_bin;
use tests::process::Proc;
use tests::scenario::{with_scenario, PER_CONN};

const PORT: u16 = 4473;

#[test]
fn top_shows_a_renegotiating_peer_with_a_rate() {
    with_scenario("top", |sc| {
        let (_srv, mut c) = sc.renegotiating_pair(PORT, PER_CONN)?;
        let socket = sc.agent().context("no agent")?.socket.clone();

        let mut cmd = Command::new(hsmon_bin());
        cmd.args(["top", "--once", "--json", "--interval", "2000", "--socket"])
            .arg(&socket);
        let mut top = Proc::spawn("hsmon-top", cmd, sc.dir.path(), false)?;
        // Renegotiate while top measures (its interval starts right away);
        // at most 8 times: the embedded policy bans a client after 10 a
        // minute.
        let t = Instant::now();
        let mut done = 0;
        while t.elapsed() < Duration::from_millis(2500) && done < 8 {
            let before = c.handshakes_completed();
            c.renegotiate()?;
            c.wait_handshakes(before + 1, Duration::from_secs(3))?;
            done += 1;
            std::thread::sleep(Duration::from_millis(250));
        }
        let status = top
            .wait_exit(Duration::from_secs(15))
            .context("hsmon top --once did not exit")?;
        ensure!(status.success(), "hsmon top failed: {}", top.logs(20));
        let out = top.stdout();
        let frame: Value =
            serde_json::from_str(out.trim()).with_context(|| format!("top --json: {out}"))?;
        for k in [
            "time",
            "interval_ms",
            "uptime_ms",
            "bans_active",
            "conns_open",
            "conns_total",
            "peers",
            "conns",
        ] {
            ensure!(frame.get(k).is_some(), "{k} missing in {frame}");
        }
        let client = sc.net.client_ip(false).to_string();
        let peer = frame["peers"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["peer"] == client.as_str()))
            .with_context(|| format!("peer {client} not in {frame}"))?;
        let rate = peer["renegotiations_per_s"].as_f64().unwrap_or(0.0);
        ensure!(
            rate > 0.0,
            "peer renegotiation rate {rate} after {done} renegotiations: {peer}"
        );
        let conn = frame["conns"]
            .as_array()
            .and_then(|cs| cs.first())
            .with_context(|| format!("no connection in {frame}"))?;
        ensure!(
            conn["client"]
                .as_str()
                .is_some_and(|a| a.starts_with(&format!("{client}:"))),
            "the busiest connection is not the renegotiating one: {conn}"
        );
        ensure!(
            conn["renegotiations_per_s"].as_f64().unwrap_or(0.0) > 0.0,
            "{conn}"
        );
        eprintln!("{done} renegotiations; top saw {rate:.2}/s for {client}");

        // The plain frame: the peer's line with RENEG/1M = what the policy
        // counted (its sweep runs every second: a few tries).
        let agent = sc.agent().context("no agent")?;
        let mut last = String::new();
        for _ in 0..6 {
            let text = agent.cli(&["top", "--iterations", "1", "--interval", "200"])?;
            ensure!(text.starts_with("hsmon top  "), "{text}");
            let line = text
                .lines()
                .find(|l| l.split_whitespace().next() == Some(client.as_str()))
                .with_context(|| format!("no line for {client} in\n{text}"))?;
            let cols: Vec<&str> = line.split_whitespace().collect();
            let reneg_1m: u64 = cols
                .get(2)
                .and_then(|c| c.parse().ok())
                .context("RENEG/1M column")?;
            if reneg_1m >= done as u64 {
                return Ok(());
            }
            last = text;
            std::thread::sleep(Duration::from_millis(500));
        }
        anyhow::bail!("RENEG/1M stayed below {done}:\n{last}")
    });
}
