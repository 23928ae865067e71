//! Ban events come from the ban table at the moment it acts, not from a
//! poller: a ban added and removed again within 100 ms (two requests on the
//! control socket) still produces `ban_added` and then `ban_removed` for
//! its prefix, and a ban with a 300 ms TTL produces `ban_expired` once the
//! agent's ban sweep removes it.

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};
use tests::hsmon::control_request;
use tests::scenario::with_scenario_agent_args;

/// The agent's event backlog (`GET /v1/events`), parsed.
fn backlog(socket: &Path) -> Result<Vec<Value>> {
    let (status, body) = control_request(socket, "GET", "/v1/events", None)?;
    ensure!(status == 200, "GET /v1/events: {status} {body}");
    body.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("event line {l:?}")))
        .collect()
}

/// The `event` kinds of the backlog for `cidr`, in order.
fn kinds_for(events: &[Value], cidr: &str) -> Vec<String> {
    events
        .iter()
        .filter(|v| v["cidr"] == cidr)
        .filter_map(|v| v["event"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn a_ban_added_and_removed_within_100ms_and_an_expiry_are_all_told() {
    with_scenario_agent_args("ban-events", &[], |sc| {
        let socket = sc.agent().context("no agent")?.socket.clone();

        let t = Instant::now();
        let (status, body) = control_request(
            &socket,
            "POST",
            "/v1/bans",
            Some(r#"{"cidr":"192.0.2.91","ttl_ms":600000,"reason":"blink"}"#),
        )?;
        ensure!(status == 200, "POST /v1/bans: {status} {body}");
        let (status, body) = control_request(&socket, "DELETE", "/v1/bans/192.0.2.91/32", None)?;
        let took = t.elapsed();
        ensure!(status == 200, "DELETE /v1/bans: {status} {body}");
        ensure!(
            took < Duration::from_millis(100),
            "the add and the removal took {took:?}: not within 100 ms, the test proves nothing"
        );
        // No waiting: both events are in the backlog once the removal answered.
        let events = backlog(&socket)?;
        let kinds = kinds_for(&events, "192.0.2.91/32");
        ensure!(
            kinds == ["ban_added", "ban_removed"],
            "events for 192.0.2.91/32 after add+del in {took:?}: {kinds:?}"
        );
        let added = events
            .iter()
            .find(|v| v["event"] == "ban_added" && v["cidr"] == "192.0.2.91/32")
            .context("no ban_added")?;
        ensure!(
            added["reason"] == "blink" && added["added_by"] == "manual",
            "{added}"
        );
        eprintln!("ban-events: add + del took {took:?}, both events told");

        // Expiry: told by the sweep that removes it (every second).
        let (status, body) = control_request(
            &socket,
            "POST",
            "/v1/bans",
            Some(r#"{"cidr":"192.0.2.92","ttl_ms":300}"#),
        )?;
        ensure!(status == 200, "POST /v1/bans: {status} {body}");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let kinds = kinds_for(&backlog(&socket)?, "192.0.2.92/32");
            if kinds == ["ban_added", "ban_expired"] {
                break;
            }
            if Instant::now() >= deadline {
                bail!("no ban_expired for 192.0.2.92/32 within 5 s: {kinds:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    });
}
