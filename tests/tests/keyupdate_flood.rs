//! `[limits] keyupdates_per_second`, end to end: the agent in the server
//! namespace with `keyupdates_per_second = 10` (action `reset`),
//! `openssl s_server -tls1_3` there.
//!
//! - A normal TLS 1.3 connection sends one KeyUpdate (`k`) and keeps
//!   talking for 3 s: no decision, data still flows.
//! - A flood: `openssl s_client` is fed a `k` line every 20 ms (up to 100,
//!   about 50 KeyUpdates per second). The agent prints a
//!   `keyupdates_per_second` decision with action `reset` for that
//!   connection, and the connection is reset: s_client exits by itself
//!   within a few seconds of the flood's start, before all 100 lines were
//!   fed to it.

use anyhow::{ensure, Context, Result};
use std::time::{Duration, Instant};
use tests::decisions::{decisions, policy_args, wait_decision};
use tests::openssl::{SClientOpts, SServerOpts, TlsVersion};
use tests::scenario::{with_scenario_agent_args, PER_CONN};
use tests::workdir::WorkDir;

const PORT: u16 = 4472;
const FLOOD: usize = 100;
const EVERY: Duration = Duration::from_millis(20);

#[test]
fn keyupdate_flood_is_reset_a_single_update_is_not() {
    let dir = WorkDir::new("ku-flood-policy").unwrap_or_else(|e| panic!("{e:#}"));
    let args = policy_args(
        dir.path(),
        "hsmon.toml",
        "[limits]\nkeyupdates_per_second = 10\n[action]\nkeyupdates_per_second = \"reset\"\n",
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    with_scenario_agent_args("ku-flood", &args, |sc| -> Result<()> {
        let addr = sc.server_addr(false, PORT);
        let mut srv = sc.s_server(&SServerOpts::new(addr).version(TlsVersion::Tls13))?;
        let opts = SClientOpts::new(addr).version(TlsVersion::Tls13);
        let client_ip = sc.net.client_ip(false);

        // One key update: fine.
        let mut calm = sc.s_client(&opts)?;
        calm.wait_established(PER_CONN)?;
        calm.key_update(false)?;
        calm.wait_key_updates_sent(1, PER_CONN)?;
        srv.wait_key_updates_received(1, PER_CONN)?;
        std::thread::sleep(Duration::from_secs(3));
        calm.send_data("after one update")?;
        srv.wait_stdout_count("after one update", 1, PER_CONN)?;
        let early = decisions(sc.agent().context("agent")?)?;
        ensure!(early.is_empty(), "decisions for one key update: {early:?}");
        calm.close(PER_CONN)?;
        let before = srv.key_updates_received();

        // The flood.
        let mut flood = sc.s_client(&opts)?;
        flood.wait_established(PER_CONN)?;
        flood.send_data("hello")?;
        srv.wait_stdout_count("hello", 1, PER_CONN)?;
        let start = Instant::now();
        let mut written = 0;
        while written < FLOOD && flood.proc.is_running() {
            if flood.proc.write_line("k").is_err() {
                break;
            }
            written += 1;
            std::thread::sleep(EVERY);
        }
        let status = flood.proc.wait_exit(Duration::from_secs(5));
        eprintln!(
            "flood: {written} `k` lines; s_client exited {:?} after the start ({status:?}), sent {} KeyUpdates",
            start.elapsed(),
            flood.key_updates_sent()
        );
        ensure!(
            status.is_some(),
            "the flooding connection was not reset\n{}",
            flood.proc.logs(20)
        );
        let agent = sc.agent().context("agent")?;
        let d = wait_decision(
            agent,
            "keyupdates_per_second",
            Duration::from_secs(5),
            |d| d["rule"] == "keyupdates_per_second",
        )?;
        ensure!(d["action"] == "reset", "{d}");
        ensure!(d["peer"] == client_ip.to_string(), "{d}");
        ensure!(d["connection"]["server"] == addr.to_string(), "{d}");
        let rate = d["counts"]["keyupdates_1s"]
            .as_u64()
            .context("keyupdates_1s")?;
        ensure!(rate > 10, "{d}");
        // Cut short: the reset ended the connection before the flood's end
        // (a reset drops nothing: what was sent before it arrived).
        ensure!(written < FLOOD, "all {FLOOD} `k` lines went through");
        let received = srv.key_updates_received() - before;
        eprintln!("the server processed {received} KeyUpdates");
        ensure!(received <= written, "{received} > {written}");
        // The flood's connection in hsmon's table: more than 10 key updates.
        let conns = agent.conns()?;
        let c = conns
            .iter()
            .find(|c| c.keyupdate_like > 10)
            .context("hsmon lists the flooding connection")?;
        ensure!(c.state == "closed", "{c:?}");
        let all = decisions(agent)?;
        ensure!(all.len() == 1, "one decision: {all:?}");
        Ok(())
    });
}
