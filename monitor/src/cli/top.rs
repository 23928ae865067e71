//! `hsmon top`: a live view of the peers and connections with the highest
//! renegotiation and handshake rates, refreshed every `--interval` like
//! `top` (q to quit), built on the control API (`/v1/conns`, `/v1/peers`,
//! `/v1/status`). Rates are the growth between two polls divided by the
//! time between them; the peers' one-minute and ten-second windows are the
//! policy's own.
//!
//! On a terminal it redraws one screen; with `--once`, `--iterations N`,
//! `--json`, or when stdout is not a terminal it prints plain frames one
//! after the other (`--json`: one JSON object per frame), for scripts and
//! tests.

mod rates;
mod term;

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::api::{CONNS_PATH, PEERS_PATH, STATUS_PATH};
use crate::cli::output::aligned_table;
use crate::config::SocketArg;
pub use rates::{rates, ConnRate, PeerRate, Sample};

/// Arguments of `hsmon top`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Milliseconds between refreshes (and between the two polls of the
    /// first frame's rates).
    #[arg(long, value_name = "MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub interval: u64,
    /// Print this many frames, then exit (plain output).
    #[arg(long, short = 'n', value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub iterations: Option<u64>,
    /// Print one frame (rates over one interval), then exit: `--iterations 1`.
    #[arg(long, conflicts_with = "iterations")]
    pub once: bool,
    /// Print each frame as one JSON object (plain output).
    #[arg(long)]
    pub json: bool,
    /// Most peers and most connections listed per frame (plain output; on a
    /// terminal, what fits).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub limit: usize,
    /// The agent's control socket.
    #[command(flatten)]
    pub socket: SocketArg,
}

/// One frame, as `--json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct Frame {
    /// RFC 3339 UTC.
    pub time: String,
    /// Milliseconds the rates are measured over.
    pub interval_ms: u64,
    /// The agent's uptime.
    pub uptime_ms: u64,
    /// Bans in force.
    pub bans_active: u64,
    /// Connections the agent lists that are open.
    pub conns_open: usize,
    /// Connections the agent lists in all.
    pub conns_total: usize,
    /// Peers, busiest first.
    pub peers: Vec<PeerRate>,
    /// Connections, busiest first.
    pub conns: Vec<ConnRate>,
}

/// `x.yz`, or `-` for zero.
fn rate(r: f64) -> String {
    if r == 0.0 {
        "0".to_owned()
    } else {
        format!("{r:.2}")
    }
}

/// The text of a frame: a header, the peers and the connections, at most
/// `limit` of each.
pub fn render(f: &Frame, limit: usize) -> String {
    let mut out = format!(
        "hsmon top  {}  agent up {}  rates over {:.1}s\nconnections: {} open, {} listed   bans active: {}   peers: {}\n\n",
        f.time,
        humantime::format_duration(Duration::from_secs(f.uptime_ms / 1000)),
        f.interval_ms as f64 / 1000.0,
        f.conns_open,
        f.conns_total,
        f.bans_active,
        f.peers.len(),
    );
    let peers: Vec<[String; 6]> = f
        .peers
        .iter()
        .take(limit)
        .map(|p| {
            [
                p.peer.to_string(),
                rate(p.renegotiations_per_s),
                p.renegotiations_1m.to_string(),
                rate(p.handshakes_per_s),
                p.handshakes_10s.to_string(),
                p.bans_24h.to_string(),
            ]
        })
        .collect();
    out.push_str(&aligned_table(
        ["PEER", "RENEG/S", "RENEG/1M", "HS/S", "HS/10S", "BANS/24H"],
        &peers,
        [false, true, true, true, true, true],
        "",
    ));
    out.push('\n');
    let conns: Vec<[String; 9]> = f
        .conns
        .iter()
        .take(limit)
        .map(|c| {
            [
                c.client.to_string(),
                c.server.to_string(),
                c.tls_version.clone().unwrap_or_else(|| "-".into()),
                rate(c.renegotiations_per_s),
                c.renegotiations_client.to_string(),
                rate(c.handshakes_per_s),
                c.handshakes.to_string(),
                c.state.clone(),
                c.process.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    out.push_str(&aligned_table(
        [
            "CLIENT", "SERVER", "VER", "RENEG/S", "RENEG", "HS/S", "HS", "STATE", "PROCESS",
        ],
        &conns,
        [false, false, false, true, true, true, true, false, false],
        "",
    ));
    out
}

/// Polls the agent: connections, peers and status.
struct Poller {
    rt: tokio::runtime::Runtime,
    socket: std::path::PathBuf,
}

impl Poller {
    fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let body = self
            .rt
            .block_on(crate::cli::client::get(&self.socket, path))?;
        serde_json::from_slice(&body).with_context(|| format!("the agent's answer to {path}"))
    }

    fn sample(&self) -> Result<(Sample, crate::api::status::Status)> {
        let status: crate::api::status::Status = self.get(STATUS_PATH)?;
        let conns = self.get(CONNS_PATH)?;
        let peers = self.get(PEERS_PATH)?;
        Ok((Sample { conns, peers }, status))
    }
}

/// A frame from two samples `dt` apart.
fn frame(
    before: Option<&Sample>,
    now: &Sample,
    status: &crate::api::status::Status,
    dt: Duration,
) -> Frame {
    let (peers, conns) = rates(before, now, dt);
    Frame {
        time: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        interval_ms: u64::try_from(dt.as_millis()).unwrap_or(u64::MAX),
        uptime_ms: status.uptime_ms,
        bans_active: status.bans_active,
        conns_open: now
            .conns
            .iter()
            .filter(|c| c.state.as_str() == "open")
            .count(),
        conns_total: now.conns.len(),
        peers,
        conns,
    }
}

/// Runs `hsmon top`.
pub fn run(args: Args) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let poller = Poller {
        rt,
        socket: args.socket.socket.clone(),
    };
    let interval = Duration::from_millis(args.interval);
    let iterations = if args.once { Some(1) } else { args.iterations };
    let interactive = iterations.is_none()
        && !args.json
        && term::is_tty(libc::STDOUT_FILENO)
        && term::is_tty(libc::STDIN_FILENO);
    // The first poll fails here, before the screen changes, if the agent is
    // not reachable.
    let (mut last, _) = poller.sample()?;
    let mut last_at = Instant::now();
    if interactive {
        return interactive_loop(&poller, interval, last, last_at);
    }
    let mut n = 0u64;
    loop {
        std::thread::sleep(interval);
        let (now, status) = poller.sample()?;
        let at = Instant::now();
        let f = frame(Some(&last), &now, &status, at - last_at);
        let mut text = if args.json {
            serde_json::to_string(&f).context("encoding a frame")?
        } else {
            render(&f, args.limit)
        };
        text.push('\n');
        crate::cli::output::write_stdout(text.as_bytes())?;
        (last, last_at) = (now, at);
        n += 1;
        if iterations.is_some_and(|max| n >= max) {
            return Ok(());
        }
    }
}

/// The full-screen view: redraw every `interval`, `q`, Esc or Ctrl-C quits.
fn interactive_loop(
    poller: &Poller,
    interval: Duration,
    mut last: Sample,
    mut last_at: Instant,
) -> Result<()> {
    let screen = term::RawTerminal::enter()?;
    screen.draw("hsmon top: measuring the first interval... (q quits)\n")?;
    loop {
        let deadline = last_at + interval;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if let Some(k) = screen.key(left) {
                if matches!(k, b'q' | b'Q' | 0x1b | 0x03) {
                    return Ok(());
                }
            }
        }
        let (now, status) = poller.sample()?;
        let at = Instant::now();
        let f = frame(Some(&last), &now, &status, at - last_at);
        let (cols, rows) = term::size();
        // Rows: header (3) + two tables with their titles, split evenly.
        let per_table = rows.saturating_sub(7) / 2;
        let text = render(&f, per_table.max(1));
        let clipped: Vec<String> = text
            .lines()
            .take(rows.saturating_sub(1))
            .map(|l| l.chars().take(cols).collect())
            .collect();
        screen.draw(&format!("{}\n(q quits)", clipped.join("\n")))?;
        (last, last_at) = (now, at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_lists_peers_then_connections() {
        let f = Frame {
            time: "2026-11-29T05:00:00Z".into(),
            interval_ms: 1000,
            uptime_ms: 61_000,
            bans_active: 0,
            conns_open: 1,
            conns_total: 1,
            peers: vec![PeerRate {
                peer: "10.0.0.2".parse().expect("ip"),
                renegotiations_per_s: 2.5,
                handshakes_per_s: 2.5,
                renegotiations_1m: 30,
                handshakes_10s: 1,
                bans_24h: 0,
            }],
            conns: vec![],
        };
        let text = render(&f, 10);
        assert!(
            text.starts_with("hsmon top  2026-11-29T05:00:00Z  agent up 1m 1s"),
            "{text}"
        );
        let peer_line = text
            .lines()
            .find(|l| l.starts_with("10.0.0.2"))
            .expect("the peer's line");
        assert_eq!(
            peer_line.split_whitespace().collect::<Vec<_>>(),
            ["10.0.0.2", "2.50", "30", "2.50", "1", "0"]
        );
        assert!(text.contains("CLIENT  SERVER"), "{text}");
    }
}
