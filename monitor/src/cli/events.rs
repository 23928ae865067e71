//! `hsmon events [--follow] [--json]`: the agent's event stream
//! (`GET /v1/events`): policy decisions, bans added, removed and expired,
//! the agent started, reloaded or stopping. Without `--follow` the recent
//! backlog (at most 1024 events), then exit; with it, the backlog and then
//! every new event until the agent stops or the reader is interrupted.
//! `--json` prints the JSON lines as served; otherwise one readable line each.

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::api::EVENTS_PATH;
use crate::config::SocketArg;

/// Arguments of `hsmon events`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keep reading: print new events as the agent publishes them.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Print the JSON lines exactly as the agent serves them.
    #[arg(long)]
    pub json: bool,
    /// The agent's control socket.
    #[command(flatten)]
    pub socket: SocketArg,
}

/// A value for the readable line: strings bare, the rest as compact JSON.
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One readable line: `TIME  EVENT  key=value ...` (`seq` left out); the
/// line as received when it is not a JSON object.
pub fn render(line: &str) -> String {
    let Ok(Value::Object(m)) = serde_json::from_str::<Value>(line) else {
        return line.to_owned();
    };
    let time = m.get("time").map(plain).unwrap_or_default();
    let event = m.get("event").map(plain).unwrap_or_default();
    let rest: Vec<String> = m
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "seq" | "time" | "event"))
        .map(|(k, v)| format!("{k}={}", plain(v)))
        .collect();
    format!("{time}  {event:<20}  {}", rest.join(" "))
        .trim_end()
        .to_owned()
}

/// Fetches (or follows) the event stream and prints it.
pub fn run(args: Args) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let path = if args.follow {
        format!("{EVENTS_PATH}?follow=1")
    } else {
        EVENTS_PATH.to_owned()
    };
    let json = args.json;
    rt.block_on(crate::cli::client::stream_lines(
        &args.socket.socket,
        &path,
        |line| {
            if line.trim().is_empty() {
                return Ok(true);
            }
            let mut out = if json { line.to_owned() } else { render(line) };
            out.push('\n');
            crate::cli::output::write_stdout(out.as_bytes())?;
            Ok(true)
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readable_lines() {
        let line = r#"{"seq":3,"time":"2026-11-29T05:00:00Z","event":"ban_added","cidr":"10.0.0.2/32","expires_in_ms":3000,"reason":"policy"}"#;
        assert_eq!(
            render(line),
            "2026-11-29T05:00:00Z  ban_added             cidr=10.0.0.2/32 expires_in_ms=3000 reason=policy"
        );
        assert_eq!(render("not json"), "not json");
        let lagged = r#"{"seq":0,"time":"t","event":"lagged","skipped":12}"#;
        assert_eq!(render(lagged), "t  lagged                skipped=12");
    }
}
