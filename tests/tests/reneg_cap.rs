//! The per-connection renegotiation cap, end to end: `hsmon run
//! --reneg-cap 3` in the server namespace, `openssl s_server -tls1_2
//! -client_renegotiation` there, and an `openssl s_client -tls1_2` that
//! renegotiates in a loop (up to 8 `R` lines, each waited for).
//!
//! Expected: the server honours exactly 3 renegotiations (its own `-msg`
//! output shows 4 ClientHellos and 4 Finished sent: the first handshake and 3
//! renegotiations) and never a 4th; TC ingress drops the 4th renegotiation
//! ClientHello (and its retransmissions), the agent resets the server's
//! socket (SOCK_DESTROY) and the client's connection ends within a few
//! seconds; `hsmon conns` shows the 4th attempt (`renegotiations_client` 4);
//! a benign connection from the same client afterwards completes its
//! handshake (the cap is per connection, not a ban); the agent prints a
//! `reneg_cap` decision with action `reset` for the connection.
//!
//! Dry-run (`--dry-run --reneg-cap 3`): the same loop of 5 renegotiations is
//! all honoured (s_server sees 6 ClientHellos), nothing is dropped or reset,
//! and the agent prints one `reneg_cap` decision with action `would_reset`.

use anyhow::{ensure, Context};
use std::time::{Duration, Instant};
use tests::decisions::{decisions, wait_decision};
use tests::openssl::{msg_count, SClientOpts, SServerOpts, TlsVersion};
use tests::scenario::PER_CONN;

const PORT: u16 = 4433;
const CAP: usize = 3;
const MAX_TRIES: usize = 8;
/// How long the attacker's connection may live after its over-cap attempt.
const RESET_WITHIN: Duration = Duration::from_secs(10);

#[test]
fn fourth_client_renegotiation_is_dropped_and_the_connection_reset() {
    let args = vec!["--reneg-cap".to_owned(), CAP.to_string()];
    tests::scenario::with_scenario_agent_args("reneg-cap", &args, |sc| {
        let addr = sc.server_addr(false, PORT);
        let mut srv = sc.s_server(
            &SServerOpts::new(addr)
                .version(TlsVersion::Tls12)
                .client_renegotiation(true),
        )?;
        let opts = SClientOpts::new(addr).version(TlsVersion::Tls12);
        let mut c = sc.s_client(&opts)?;
        c.wait_established(PER_CONN)?;
        c.send_data("hello")?;

        // Renegotiate until the client is gone (or MAX_TRIES).
        let mut taken = 0;
        let mut over_cap_at = None;
        for _ in 0..MAX_TRIES {
            if !c.proc.is_running() {
                break;
            }
            let before = c.handshakes_completed();
            if c.renegotiate().is_err() {
                ensure!(!c.proc.is_running(), "s_client did not take `R`");
                break;
            }
            taken += 1;
            if taken == CAP + 1 {
                over_cap_at = Some(Instant::now());
            }
            c.wait_handshakes_or_exit(before + 1, Duration::from_secs(3));
        }
        let over_cap_at = over_cap_at.context("s_client never tried a 4th renegotiation")?;
        // The connection is reset: s_client exits on its own, in bounded time.
        let left = RESET_WITHIN.saturating_sub(over_cap_at.elapsed());
        let status = c.proc.wait_exit(left);
        eprintln!(
            "s_client ended {:?} after its 4th `R` ({status:?})",
            over_cap_at.elapsed()
        );
        ensure!(
            status.is_some(),
            "s_client still connected {RESET_WITHIN:?} after its 4th renegotiation\n{}",
            c.proc.logs(30)
        );
        ensure!(
            c.handshakes_completed() == CAP + 1,
            "s_client completed {} handshakes, want {}",
            c.handshakes_completed(),
            CAP + 1
        );

        // The server's own account: 1 + CAP ClientHellos received, 1 + CAP
        // Finished sent, never more.
        let out = srv.proc.stdout();
        let hellos = msg_count(&out, "<<<", "ClientHello");
        let finished = msg_count(&out, ">>>", "Finished");
        ensure!(
            hellos == CAP + 1 && finished == CAP + 1,
            "s_server saw {hellos} ClientHellos and sent {finished} Finished, want {} each",
            CAP + 1
        );

        // The agent logged the reset with the 4-tuple.
        let agent_logs = sc.agent().context("agent")?.logs(200);
        ensure!(
            agent_logs.contains("renegotiation cap exceeded: connection reset"),
            "no reset in the agent's log:\n{agent_logs}"
        );
        let agent = sc.agent().context("agent")?;
        let d = wait_decision(agent, "reneg_cap reset", Duration::from_secs(5), |d| {
            d["rule"] == "reneg_cap"
        })?;
        ensure!(d["action"] == "reset", "{d}");
        ensure!(d["counts"]["renegotiations_conn"] == 4, "{d}");
        ensure!(d["connection"]["server"] == addr.to_string(), "{d}");
        ensure!(d["peer"] == sc.net.client_ip(false).to_string(), "{d}");

        // A benign connection from the same client afterwards works.
        let mut benign = sc.s_client(&opts)?;
        benign
            .wait_established(PER_CONN)
            .context("benign connection after the reset")?;
        benign.send_data("still welcome")?;
        srv.wait_stdout_count("still welcome", 1, PER_CONN)?;
        benign.close(PER_CONN)?;
        let out = srv.proc.stdout();
        ensure!(
            msg_count(&out, "<<<", "ClientHello") == CAP + 2,
            "the benign connection's ClientHello reached s_server once"
        );

        let r = sc.finish()?;
        let matched = r.matched()?;
        ensure!(matched.len() == 2, "two TLS connections:\n{}", r.describe());
        let (t, h) = matched
            .iter()
            .find(|(_, h)| h.renegotiations_client > 0)
            .context("hsmon lists the renegotiating connection")?;
        // hsmon saw the 4th attempt, which was dropped before the server,
        // and agrees with the capture on everything.
        tests::scenario::assert_common(t, h);
        ensure!(
            h.renegotiations_client == (CAP + 1) as u64,
            "renegotiations_client {}, want {}: {h:?}",
            h.renegotiations_client,
            CAP + 1
        );
        ensure!(h.handshakes == (CAP + 1) as u64, "{h:?}");
        ensure!(h.state == "closed", "the reset connection is closed: {h:?}");
        // The capture (taken before TC ingress) saw it on the wire too.
        ensure!(
            t.encrypted_client_hellos() as usize > CAP,
            "capture: {}",
            t.summary()
        );
        let (_, b) = matched
            .iter()
            .find(|(_, h)| h.renegotiations_client == 0)
            .context("hsmon lists the benign connection")?;
        ensure!(b.handshakes == 1, "benign: {b:?}");
        Ok(())
    });
}

#[test]
fn dry_run_reports_would_reset_and_drops_nothing() {
    const TRIES: usize = 5;
    let args = vec![
        "--reneg-cap".to_owned(),
        CAP.to_string(),
        "--dry-run".to_owned(),
    ];
    tests::scenario::with_scenario_agent_args("reneg-cap-dry", &args, |sc| {
        let (mut srv, mut c) = sc.renegotiating_pair(PORT, PER_CONN)?;
        for i in 0..TRIES {
            c.renegotiate()?;
            c.wait_handshakes(i + 2, PER_CONN)
                .with_context(|| format!("renegotiation {}", i + 1))?;
        }
        c.send_data("still here")?;
        srv.wait_stdout_count("still here", 1, PER_CONN)?;
        ensure!(c.proc.is_running(), "dry-run: the connection was reset");
        let out = srv.proc.stdout();
        let hellos = msg_count(&out, "<<<", "ClientHello");
        ensure!(
            hellos == TRIES + 1,
            "s_server saw {hellos} ClientHellos, want {}",
            TRIES + 1
        );
        let agent = sc.agent().context("agent")?;
        let d = wait_decision(
            agent,
            "reneg_cap would_reset",
            Duration::from_secs(5),
            |d| d["rule"] == "reneg_cap",
        )?;
        ensure!(d["action"] == "would_reset" && d["dry_run"] == true, "{d}");
        let n = d["counts"]["renegotiations_conn"]
            .as_u64()
            .context("count")?;
        ensure!(n > CAP as u64, "{d}");
        // Once per connection, however far past the cap it goes.
        std::thread::sleep(Duration::from_secs(2));
        let all = decisions(agent)?;
        ensure!(
            all.iter().filter(|d| d["rule"] == "reneg_cap").count() == 1,
            "{all:?}"
        );
        let stats = agent.stats_value()?;
        ensure!(
            stats["kernel"]["reneg_cap_drops"] == 0,
            "dry-run dropped: {stats}"
        );
        c.close(PER_CONN)?;
        Ok(())
    });
}
