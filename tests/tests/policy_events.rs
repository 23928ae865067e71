//! The policy acts on ring-buffer events, not on its sweep: `hsmon run
//! --sweep-interval 60s` (the hidden flag: the flow map is re-read at start
//! and then only a minute later), `[peer] renegotiations_per_minute = 3`
//! with action `ban`, the kernel's renegotiation cap off. An `openssl
//! s_client -tls1_2` renegotiates (`R` lines, each waited for) against
//! `openssl s_server -tls1_2 -client_renegotiation` in the server namespace.
//!
//! Expected: the 4th renegotiation (one above the threshold) gets the client
//! banned within [`BAN_WITHIN`] of s_client taking its `R` (a `ban` decision
//! for the client, counting 4 renegotiations, naming the connection), long
//! before any sweep could have run; `hsmon bans` lists the ban as the
//! policy's; the connection is reset with the ban (s_client exits), and a
//! new connect from the client times out: the kernel drops its SYN
//! (`ban_drops_policy` counts). The whole scenario stays well inside the
//! sweep interval, so no sweep ran between the traffic and the ban.

use anyhow::{ensure, Context, Result};
use std::time::{Duration, Instant};
use tests::{
    cmd,
    decisions::{policy_args, wait_decision},
    openssl::{SClientOpts, SServerOpts, TlsVersion},
    scenario::{with_scenario_agent_args, PER_CONN},
    workdir::WorkDir,
    Scenario,
};

const PORT: u16 = 4471;
/// The policy's `renegotiations_per_minute`.
const THRESHOLD: usize = 3;
/// The agent's sweep interval.
const SWEEP: Duration = Duration::from_secs(60);
/// How soon after the renegotiation over the threshold the ban must come.
const BAN_WITHIN: Duration = Duration::from_secs(3);

const POLICY: &str = "[limits]\nreneg_cap = 0\nhandshake_timeout = \"0s\"\n[peer]\nrenegotiations_per_minute = 3\nhandshakes_per_10s = 0\n[action]\nrenegotiations_per_minute = \"ban\"\nban_ttl = \"60s\"\n";

fn kernel_stat(sc: &Scenario, name: &str) -> Result<u64> {
    let v = sc.agent().context("no agent")?.stats_value()?;
    v["kernel"][name]
        .as_u64()
        .with_context(|| format!("no kernel.{name} in {v}"))
}

#[test]
fn renegotiation_flood_is_banned_by_the_event_path_without_a_sweep() {
    let dir = WorkDir::new("policy-events").unwrap_or_else(|e| panic!("{e:#}"));
    let mut args =
        policy_args(dir.path(), "hsmon.toml", POLICY).unwrap_or_else(|e| panic!("{e:#}"));
    args.extend([
        "--sweep-interval".to_owned(),
        format!("{}s", SWEEP.as_secs()),
    ]);
    // The agent's first sweep runs as it starts; the next one SWEEP later.
    let agent_started = Instant::now();
    with_scenario_agent_args("policy-events", &args, |sc| {
        let addr = sc.server_addr(false, PORT);
        let client = sc.net.client_ip(false);
        let _srv = sc.s_server(
            &SServerOpts::new(addr)
                .version(TlsVersion::Tls12)
                .client_renegotiation(true),
        )?;
        let mut c = sc.s_client(&SClientOpts::new(addr).version(TlsVersion::Tls12))?;
        c.wait_established(PER_CONN)?;
        for i in 1..=THRESHOLD {
            let before = c.handshakes_completed();
            c.renegotiate()?;
            c.wait_handshakes(before + 1, PER_CONN)
                .with_context(|| format!("renegotiation {i}"))?;
        }
        let agent = sc.agent().context("no agent")?;
        ensure!(
            !agent.stdout().contains("renegotiations_per_minute"),
            "a decision at the threshold, not above it:\n{}",
            agent.stdout()
        );
        // One above the threshold.
        c.renegotiate()?;
        let over_at = Instant::now();
        let d = wait_decision(agent, "renegotiations_per_minute ban", BAN_WITHIN, |d| {
            d["rule"] == "renegotiations_per_minute"
        })?;
        let took = over_at.elapsed();
        eprintln!("ban decision {took:?} after the renegotiation over the threshold");
        ensure!(d["action"] == "ban", "{d}");
        ensure!(d["peer"] == client.to_string(), "{d}");
        ensure!(
            d["counts"]["renegotiations_1m"] == (THRESHOLD + 1) as u64,
            "{d}"
        );
        ensure!(d["connection"]["server"] == addr.to_string(), "{d}");
        // Everything happened before the second sweep could run.
        ensure!(
            agent_started.elapsed() < SWEEP - Duration::from_secs(10),
            "the scenario took {:?}: a sweep may have run",
            agent_started.elapsed()
        );
        let bans = agent.cli(&["bans", "--json"])?;
        let bans: Vec<serde_json::Value> =
            serde_json::from_str(&bans).with_context(|| format!("hsmon bans --json: {bans:?}"))?;
        ensure!(
            bans.iter()
                .any(|b| b["added_by"] == "policy" && b["cidr"] == format!("{client}/32")),
            "hsmon bans: {bans:?}"
        );
        // The connection that crossed the threshold is reset with the ban.
        let status = c.proc.wait_exit(Duration::from_secs(5));
        ensure!(
            status.is_some(),
            "s_client still connected 5 s after its ban\n{}",
            c.proc.logs(20)
        );
        // A new connection's SYN is dropped in the kernel.
        let mut probe = sc.net.client_cmd("bash");
        probe.arg("-c").arg(format!(
            "if timeout 2 bash -c '</dev/tcp/{}/{}'; then echo connected; else echo blocked; fi",
            addr.ip(),
            addr.port()
        ));
        let out = cmd::run_ok(&mut probe, Duration::from_secs(10))?;
        ensure!(
            out.trim() == "blocked",
            "a banned client's connect: {out:?}"
        );
        ensure!(
            kernel_stat(sc, "ban_drops_policy")? > 0,
            "no packet of the banned client was dropped"
        );
        Ok(())
    });
}
