//! SIGHUP reloads the policy file without losing state, and rewrites the
//! kernel's renegotiation cap (second test, below).
//!
//! The agent starts with `--config FILE` where `handshakes_per_10s = 1000`
//! (action `ban`). The test opens a long-lived `openssl s_client`
//! connection (to a second `s_server`) and adds a manual ban (192.0.2.99), then:
//!
//! 1. writes a bad file (an unknown key on line 3) and sends SIGHUP: the
//!    agent keeps running, logs the error naming `FILE:3`, publishes
//!    `config_reload_failed`; a flood of 12 handshakes is still not banned
//!    (the old threshold stays);
//! 2. writes a good file with `handshakes_per_10s = 5` and sends SIGHUP:
//!    `config_reloaded`; the client address is then banned by the policy
//!    (the new threshold applies to the windows the agent kept), the manual
//!    ban is still listed, the long-lived connection is still listed, and
//!    the kernel's segment counter did not go back.

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};
use tests::openssl::{SClientOpts, SServerOpts, TlsVersion};
use tests::scenario::{with_scenario_agent_args, Scenario, PER_CONN};

const PORT: u16 = 4472;

fn json(out: &str) -> Result<Value> {
    serde_json::from_str(out).with_context(|| format!("not JSON: {out}"))
}

/// `kill -HUP` the agent (its pid from `hsmon status --json`).
fn sighup(sc: &Scenario) -> Result<()> {
    let agent = sc.agent().context("no agent")?;
    let pid = json(&agent.cli(&["status", "--json"])?)?["pid"]
        .as_u64()
        .context("status has no pid")?;
    let mut c = Command::new("kill");
    c.arg("-HUP").arg(pid.to_string());
    tests::cmd::run_ok(&mut c, Duration::from_secs(5))?;
    Ok(())
}

/// Waits for an event of kind `event` with `seq` above `after`.
fn wait_event(sc: &Scenario, event: &str, after: u64) -> Result<Value> {
    let agent = sc.agent().context("no agent")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = agent.cli(&["events", "--json"])?;
        for line in out.lines() {
            let v = json(line)?;
            if v["event"] == event && v["seq"].as_u64().is_some_and(|s| s > after) {
                return Ok(v);
            }
        }
        if Instant::now() >= deadline {
            bail!("no {event} event after seq {after}:\n{out}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The last `seq` in the backlog.
fn last_seq(sc: &Scenario) -> Result<u64> {
    let agent = sc.agent().context("no agent")?;
    let out = agent.cli(&["events", "--json"])?;
    Ok(out
        .lines()
        .filter_map(|l| json(l).ok()?["seq"].as_u64())
        .max()
        .unwrap_or(0))
}

fn bans(sc: &Scenario) -> Result<Vec<Value>> {
    let agent = sc.agent().context("no agent")?;
    let v = json(&agent.cli(&["bans", "--json"])?)?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

fn banned(sc: &Scenario, cidr: &str) -> Result<Option<Value>> {
    Ok(bans(sc)?.into_iter().find(|b| b["cidr"] == cidr))
}

fn segments(sc: &Scenario) -> Result<u64> {
    let agent = sc.agent().context("no agent")?;
    agent.stats_value()?["kernel"]["segments"]
        .as_u64()
        .context("no kernel.segments in /v1/stats")
}

fn policy(handshakes: u32) -> String {
    format!(
        "# reload test\n[peer]\nhandshakes_per_10s = {handshakes}\n[action]\nhandshakes_per_10s = \"ban\"\nban_ttl = \"30s\"\n"
    )
}

#[test]
fn sighup_applies_a_good_file_and_keeps_state_and_refuses_a_bad_one() {
    let dir = match tests::workdir::WorkDir::new("reload-policy") {
        Ok(d) => d,
        Err(e) => panic!("{e:#}"),
    };
    let config = dir.join("hsmon.toml");
    if let Err(e) = std::fs::write(&config, policy(1000)) {
        panic!("writing {}: {e}", config.display());
    }
    let args = vec!["--config".to_owned(), config.display().to_string()];
    with_scenario_agent_args("reload", &args, |sc| {
        let addr = sc.server_addr(false, PORT);
        let _srv = sc.s_server(&SServerOpts::new(addr).version(TlsVersion::Tls12))?;
        let opts = SClientOpts::new(addr).version(TlsVersion::Tls12);
        // s_server serves one connection at a time: the long-lived one gets
        // its own.
        let long_addr = sc.server_addr(false, PORT + 1);
        let _long_srv = sc.s_server(&SServerOpts::new(long_addr).version(TlsVersion::Tls12))?;
        let mut long = sc.s_client(&SClientOpts::new(long_addr).version(TlsVersion::Tls12))?;
        long.wait_established(PER_CONN)?;
        let agent = sc.agent().context("no agent")?;
        agent.cli(&[
            "bans",
            "add",
            "192.0.2.99",
            "--ttl",
            "10m",
            "--reason",
            "kept",
        ])?;
        let client = sc.net.client_ip(false);
        let client_cidr = format!("{client}/32");
        let conns_before = agent.conns()?.len();
        ensure!(conns_before >= 1, "the long-lived connection is not listed");
        let segments_before = segments(sc)?;

        // 1. A bad file: refused, old settings kept.
        std::fs::write(
            &config,
            "[peer]\nhandshakes_per_10s = 5\nhandshakez_per_10s = 1\n",
        )
        .context("writing the bad file")?;
        let seq = last_seq(sc)?;
        sighup(sc)?;
        let failed = wait_event(sc, "config_reload_failed", seq)?;
        let err = failed["error"].as_str().unwrap_or("");
        let want = format!("{}:3", config.display());
        ensure!(
            err.contains(&want) && err.contains("handshakez_per_10s"),
            "{failed}"
        );
        let agent = sc.agent().context("no agent")?;
        let logs = agent.logs(200);
        ensure!(
            logs.contains(&want),
            "the agent's log does not name {want}:\n{logs}"
        );
        let done = sc.sequential_handshakes(&opts, 12)?;
        ensure!(done == 12, "{done} of 12 handshakes completed");
        std::thread::sleep(Duration::from_millis(2500)); // two sweeps
        ensure!(
            banned(sc, &client_cidr)?.is_none(),
            "banned under the old threshold 1000: {:?}",
            bans(sc)?
        );
        let agent = sc.agent().context("no agent")?;
        ensure!(agent.conns()?.len() >= conns_before, "connections lost");

        // 2. A good file: applied, state kept.
        std::fs::write(&config, policy(5)).context("writing the good file")?;
        let seq = last_seq(sc)?;
        sighup(sc)?;
        let reloaded = wait_event(sc, "config_reloaded", seq)?;
        ensure!(
            reloaded["source"] == config.display().to_string(),
            "{reloaded}"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        let ban = loop {
            if let Some(b) = banned(sc, &client_cidr)? {
                break b;
            }
            if Instant::now() >= deadline {
                bail!(
                    "the client was not banned under the new threshold: {:?}",
                    bans(sc)?
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        ensure!(ban["added_by"] == "policy", "{ban}");
        ensure!(
            banned(sc, "192.0.2.99/32")?.is_some(),
            "the manual ban was lost"
        );
        let agent = sc.agent().context("no agent")?;
        ensure!(agent.conns()?.len() >= conns_before, "connections lost");
        ensure!(
            segments(sc)? >= segments_before,
            "kernel counters went back"
        );
        Ok(())
    });
}

/// The kernel's renegotiation cap follows a reload: `--reneg-cap 1` with
/// `dry_run = true` in the file (dry-run switches the kernel cap off), so a
/// client renegotiates 3 times undisturbed; after the file says
/// `dry_run = false` and SIGHUP, the cap (1) is written into `CONFIG` and the
/// same connection's next renegotiation is dropped and the connection
/// reset: s_client exits on its own.
#[test]
fn sighup_rewrites_the_kernel_renegotiation_cap() {
    let dir = match tests::workdir::WorkDir::new("reload-cap") {
        Ok(d) => d,
        Err(e) => panic!("{e:#}"),
    };
    let config = dir.join("hsmon.toml");
    if let Err(e) = std::fs::write(&config, "dry_run = true\n") {
        panic!("writing {}: {e}", config.display());
    }
    let args = vec![
        "--config".to_owned(),
        config.display().to_string(),
        "--reneg-cap".to_owned(),
        "1".to_owned(),
    ];
    with_scenario_agent_args("reload-cap", &args, |sc| {
        let (_srv, mut c) = sc.renegotiating_pair(PORT, PER_CONN)?;
        for i in 0..3 {
            c.renegotiate()?;
            c.wait_handshakes(i + 2, Duration::from_secs(5))
                .context("a renegotiation under dry-run (no kernel cap)")?;
        }

        std::fs::write(&config, "dry_run = false\n").context("writing the file")?;
        let seq = last_seq(sc)?;
        sighup(sc)?;
        let reloaded = wait_event(sc, "config_reloaded", seq)?;
        ensure!(
            reloaded["reneg_cap"] == 1 && reloaded["dry_run"] == false,
            "{reloaded}"
        );
        // The next renegotiation is over the cap: dropped, connection reset.
        let t = Instant::now();
        if c.renegotiate().is_ok() {
            c.wait_handshakes_or_exit(5, Duration::from_secs(3));
        }
        let status = c.proc.wait_exit(Duration::from_secs(10));
        ensure!(
            status.is_some(),
            "s_client still connected {:?} after renegotiating over the reloaded cap\n{}",
            t.elapsed(),
            c.proc.logs(20)
        );
        ensure!(
            c.handshakes_completed() == 4,
            "s_client completed {} handshakes, want 4 (the 5th was dropped)",
            c.handshakes_completed()
        );
        let stats = sc.agent().context("no agent")?.stats_value()?;
        let drops = stats["kernel"]["reneg_cap_drops"].as_u64().unwrap_or(0);
        ensure!(drops >= 1, "no reneg_cap_drops after the reload: {stats}");
        Ok(())
    });
}
