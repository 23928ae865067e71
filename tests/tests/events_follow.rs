//! `hsmon events`: the agent's event stream over the control socket.
//!
//! A follower (`hsmon events --follow --json`) runs while the test adds a
//! ban that expires (2 s), adds and deletes another, and floods handshakes
//! past a policy threshold (`handshakes_per_10s = 5`, action `alert`) with
//! real `openssl s_client` connections. The follower must print, in order of
//! `seq`, `agent_started`, `ban_added` and `ban_expired` for the first,
//! `ban_added` and `ban_removed` for the second, and a `decision` for the
//! client address; `hsmon events --json` (no follow) must print the same
//! backlog and exit; stopping the agent ends the follow stream with
//! `agent_stopping` and the follower exits 0 by itself. A client that
//! connects with `?follow=1` and never reads does not slow the agent down.

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use std::io::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};
use tests::hsmon::hsmon_bin;
use tests::openssl::{SClientOpts, SServerOpts, TlsVersion};
use tests::process::Proc;
use tests::scenario::with_scenario_agent_args;

const PORT: u16 = 4471;

/// The lines of `text` parsed, each required to have `seq`, `time`, `event`.
fn parse_lines(text: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value =
            serde_json::from_str(line).with_context(|| format!("event line {line:?}"))?;
        ensure!(v["seq"].is_u64(), "no seq in {line}");
        ensure!(v["time"].is_string(), "no time in {line}");
        ensure!(v["event"].is_string(), "no event in {line}");
        out.push(v);
    }
    Ok(out)
}

/// Waits until `proc`'s stdout has an event matching `pred`.
fn wait_event(proc: &Proc, what: &str, pred: impl Fn(&Value) -> bool) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let events = parse_lines(&proc.stdout())?;
        if let Some(v) = events.iter().find(|v| pred(v)) {
            return Ok(v.clone());
        }
        if Instant::now() >= deadline {
            bail!("no {what} event; the follower printed:\n{}", proc.stdout());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn is(v: &Value, event: &str, cidr: &str) -> bool {
    v["event"] == event && v["cidr"] == cidr
}

#[test]
fn follow_streams_bans_decisions_and_the_end() {
    let dir = match tests::workdir::WorkDir::new("events-policy") {
        Ok(d) => d,
        Err(e) => panic!("{e:#}"),
    };
    let config = dir.join("hsmon.toml");
    if let Err(e) = std::fs::write(
        &config,
        "[peer]\nhandshakes_per_10s = 5\n[action]\nhandshakes_per_10s = \"alert\"\n",
    ) {
        panic!("writing {}: {e}", config.display());
    }
    let events_file = dir.join("decisions.jsonl");
    let args = vec![
        "--config".to_owned(),
        config.display().to_string(),
        "--events-file".to_owned(),
        events_file.display().to_string(),
    ];
    with_scenario_agent_args("events-follow", &args, |sc| {
        let socket = sc.agent().context("no agent")?.socket.clone();
        let mut c = Command::new(hsmon_bin());
        c.args(["events", "--follow", "--json", "--socket"])
            .arg(&socket);
        let mut follower = Proc::spawn("events-follow", c, sc.dir.path(), false)?;
        let started = wait_event(&follower, "agent_started", |v| {
            v["event"] == "agent_started"
        })?;
        ensure!(
            started["pid"].is_u64() && started["version"].is_string(),
            "{started}"
        );

        // A reader that never reads: the agent must not wait for it.
        let mut stuck = std::os::unix::net::UnixStream::connect(&socket)
            .with_context(|| format!("connecting to {}", socket.display()))?;
        stuck
            .write_all(b"GET /v1/events?follow=1 HTTP/1.1\r\nHost: hsmon\r\n\r\n")
            .context("sending the stuck follower's request")?;

        let agent = sc.agent().context("no agent")?;
        agent.cli(&[
            "bans",
            "add",
            "192.0.2.77",
            "--ttl",
            "2s",
            "--reason",
            "events test",
        ])?;
        agent.cli(&["bans", "add", "192.0.2.78", "--ttl", "10m"])?;
        wait_event(&follower, "ban_added 192.0.2.78", |v| {
            is(v, "ban_added", "192.0.2.78/32")
        })?;
        agent.cli(&["bans", "del", "192.0.2.78"])?;
        let added = wait_event(&follower, "ban_added", |v| {
            is(v, "ban_added", "192.0.2.77/32")
        })?;
        ensure!(
            added["reason"] == "events test" && added["added_by"] == "manual",
            "{added}"
        );
        wait_event(&follower, "ban_removed", |v| {
            is(v, "ban_removed", "192.0.2.78/32")
        })?;
        wait_event(&follower, "ban_expired", |v| {
            is(v, "ban_expired", "192.0.2.77/32")
        })?;

        // A handshake flood over the threshold: a decision event.
        let addr = sc.server_addr(false, PORT);
        let _srv = sc.s_server(&SServerOpts::new(addr).version(TlsVersion::Tls12))?;
        let done =
            sc.sequential_handshakes(&SClientOpts::new(addr).version(TlsVersion::Tls12), 8)?;
        ensure!(done == 8, "only {done} of 8 handshakes completed");
        let client = sc.net.client_ip(false).to_string();
        let decision = wait_event(&follower, "decision", |v| {
            v["event"] == "decision" && v["peer"] == client.as_str()
        })?;
        ensure!(
            decision["rule"] == "handshakes_per_10s" && decision["action"] == "alert",
            "{decision}"
        );
        // --events-file: the same decision, as the stdout line.
        let written = std::fs::read_to_string(&events_file)
            .with_context(|| format!("reading {}", events_file.display()))?;
        let lines: Vec<Value> = written
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()
            .with_context(|| format!("the events file is not JSON lines:\n{written}"))?;
        ensure!(
            lines.iter().any(|v| v["rule"] == "handshakes_per_10s"
                && v["peer"] == client.as_str()
                && v["action"] == "alert"
                && v["dry_run"] == false),
            "no decision in the events file:\n{written}"
        );

        // The backlog without --follow: the same events, then exit.
        let agent = sc.agent().context("no agent")?;
        let backlog = parse_lines(&agent.cli(&["events", "--json"])?)?;
        let kinds: Vec<&str> = backlog.iter().filter_map(|v| v["event"].as_str()).collect();
        for k in [
            "agent_started",
            "ban_added",
            "ban_removed",
            "ban_expired",
            "decision",
        ] {
            ensure!(kinds.contains(&k), "{k} missing from the backlog {kinds:?}");
        }
        let seqs: Vec<u64> = backlog.iter().filter_map(|v| v["seq"].as_u64()).collect();
        ensure!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "seq not consecutive: {seqs:?}"
        );
        // The readable form has one line per event.
        let plain = agent.cli(&["events"])?;
        ensure!(plain.lines().count() == backlog.len(), "plain:\n{plain}");
        ensure!(
            plain.contains("ban_expired") && plain.contains("cidr=192.0.2.77/32"),
            "{plain}"
        );

        // Stopping the agent ends the stream: the follower exits by itself.
        let agent = sc.agent().context("no agent")?;
        let t = Instant::now();
        drop(stuck);
        let mut c = Command::new("kill");
        c.arg("-TERM").arg(
            serde_json::from_str::<Value>(&agent.cli(&["status", "--json"])?)?["pid"]
                .as_u64()
                .context("status pid")?
                .to_string(),
        );
        tests::cmd::run_ok(&mut c, Duration::from_secs(5))?;
        let status = follower
            .wait_exit(Duration::from_secs(10))
            .context("the follower did not exit after the agent stopped")?;
        ensure!(status.success(), "follower exited with {status}");
        let last = parse_lines(&follower.stdout())?;
        ensure!(
            last.last().is_some_and(|v| v["event"] == "agent_stopping"),
            "the stream did not end with agent_stopping:\n{}",
            follower.stdout()
        );
        eprintln!("follower ended {:?} after SIGTERM", t.elapsed());
        Ok(())
    });
}
