//! Ban events come from the ban table at the moment it acts, not from a
//! poller: a ban added and removed again within 100 ms (two requests on the
//! control socket) still produces `ban_added` and then `ban_removed` for
//! its prefix, and a ban with a 300 ms TTL produces `ban_expired` once the
//! agent's ban sweep removes it.

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};
use tests::scenario::with_scenario_agent_args;

/// One HTTP/1.1 request on the control socket; the status code and body.
fn request(socket: &Path, method: &str, path: &str, body: Option<&str>) -> Result<(u16, String)> {
    let mut s = UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .context("setting a read timeout")?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: hsmon\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .with_context(|| format!("sending {method} {path}"))?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)
        .with_context(|| format!("reading the answer to {method} {path}"))?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no HTTP status in {resp:?}"))?;
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((status, body.to_owned()))
}

/// The agent's event backlog (`GET /v1/events`), parsed.
fn backlog(socket: &Path) -> Result<Vec<Value>> {
    let (status, body) = request(socket, "GET", "/v1/events", None)?;
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
        let (status, body) = request(
            &socket,
            "POST",
            "/v1/bans",
            Some(r#"{"cidr":"192.0.2.91","ttl_ms":600000,"reason":"blink"}"#),
        )?;
        ensure!(status == 200, "POST /v1/bans: {status} {body}");
        let (status, body) = request(&socket, "DELETE", "/v1/bans/192.0.2.91/32", None)?;
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
        let (status, body) = request(
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
