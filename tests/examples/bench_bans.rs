//! Bulk ban loading (`cargo xtask bench` runs this as root; prints
//! `BENCH_ROW` lines, see [`tests::bench`]), two arms on fresh agents:
//!
//! * 100,000 bans from a file with `hsmon bans load` (one `POST
//!   /v1/bans/bulk`), timed end to end (the CLI reading the file, the
//!   request, the agent's map updates); the issue's target is 1 s.
//! * 10,000 bans one `POST /v1/bans` each on one keep-alive connection, for
//!   the per-request rate (the agent serialises ban changes on one lock, so
//!   more connections do not help); the time at each tenth is in the note.
//!
//! Afterwards `hsmon bans --json` must list every ban. The kernel's ban
//! tries hold 65,536 prefixes per family, so half the bans are IPv4 and
//! half IPv6 addresses.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};
use tests::bench::{self, Goal, Row};
use tests::hsmon::Agent;
use tests::netns::NetPair;
use tests::workdir::WorkDir;

const SECTION: &str = "bans";

/// The i-th ban target: 10.90.0.0/15 for the first half, fd90::/32 after.
fn target(i: u32, half: u32) -> String {
    if i < half {
        let ip = 0x0a5a_0000u32 + i;
        std::net::Ipv4Addr::from(ip).to_string()
    } else {
        format!("fd90::{:x}:{:x}", (i >> 16) & 0xffff, i & 0xffff)
    }
}

/// One HTTP/1.1 keep-alive connection to the control socket.
struct Conn {
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl Conn {
    fn open(socket: &Path) -> Result<Self> {
        let w = UnixStream::connect(socket)
            .with_context(|| format!("connecting to {}", socket.display()))?;
        w.set_read_timeout(Some(Duration::from_secs(10)))?;
        let r = BufReader::new(w.try_clone()?);
        Ok(Self { w, r })
    }

    /// POSTs one ban; fails unless the answer is 2xx.
    fn ban(&mut self, cidr: &str) -> Result<()> {
        let body = format!(r#"{{"cidr":"{cidr}","ttl_ms":3600000,"reason":"bench"}}"#);
        write!(
            self.w,
            "POST /v1/bans HTTP/1.1\r\nHost: hsmon\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let mut status = String::new();
        self.r.read_line(&mut status)?;
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if self.r.read_line(&mut h)? == 0 {
                bail!("the agent closed the connection");
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().context("content-length")?;
                }
            }
        }
        let mut b = vec![0; len];
        self.r.read_exact(&mut b)?;
        if !status
            .split_whitespace()
            .nth(1)
            .is_some_and(|c| c.starts_with('2'))
        {
            bail!(
                "ban {cidr}: {} {}",
                status.trim(),
                String::from_utf8_lossy(&b)
            );
        }
        Ok(())
    }
}

/// Loads up to `total` bans on one connection, stopping at `deadline`;
/// returns the elapsed seconds at each checkpoint `(bans, s)`, the last
/// being where it stopped, and how many `hsmon bans --json` lists.
fn load(
    net: &NetPair,
    dir: &Path,
    total: u32,
    deadline: Duration,
) -> Result<(Vec<(u32, f64)>, usize)> {
    let agent = Agent::start_with_args(net, dir, &["--metrics-addr".into(), "off".into()])?;
    let half = total / 2;
    let mut conn = Conn::open(&agent.socket)?;
    let step = (total / 10).max(1);
    let mut marks = Vec::new();
    let t0 = Instant::now();
    for i in 0..total {
        conn.ban(&target(i, half))?;
        let done = i + 1;
        if done % step == 0 || done == total {
            marks.push((done, t0.elapsed().as_secs_f64()));
        }
        if t0.elapsed() > deadline {
            marks.push((done, t0.elapsed().as_secs_f64()));
            break;
        }
    }
    Ok((marks, listed(&agent)?))
}

/// Lists the agent's bans (`hsmon bans --json`); returns how many.
fn listed(agent: &Agent) -> Result<usize> {
    let mut c = std::process::Command::new(tests::hsmon::hsmon_bin());
    c.args(["bans", "--json", "--socket"]).arg(&agent.socket);
    let listed = tests::cmd::run_ok(&mut c, Duration::from_secs(120))?;
    let listed: serde_json::Value = serde_json::from_str(&listed).context("hsmon bans --json")?;
    Ok(listed.as_array().map_or(0, Vec::len))
}

/// Loads `total` bans from a file with `hsmon bans load`; returns the
/// seconds it took and how many are listed afterwards.
fn load_file(net: &NetPair, dir: &Path, total: u32) -> Result<(f64, usize)> {
    let agent = Agent::start_with_args(net, dir, &["--metrics-addr".into(), "off".into()])?;
    let half = total / 2;
    let text: String = (0..total).map(|i| target(i, half) + "\n").collect();
    let file = dir.join("bench-bans.txt");
    std::fs::write(&file, text).context("writing the ban list")?;
    let mut c = std::process::Command::new(tests::hsmon::hsmon_bin());
    c.args([
        "bans", "load", "--ttl", "1h", "--reason", "bench", "--socket",
    ])
    .arg(&agent.socket)
    .arg(&file);
    let t0 = Instant::now();
    tests::cmd::run_ok(&mut c, Duration::from_secs(120))?;
    let secs = t0.elapsed().as_secs_f64();
    Ok((secs, listed(&agent)?))
}

fn main() -> Result<()> {
    let dir = WorkDir::new("bench-bans")?;
    let net = NetPair::create()?;
    let bulk: u32 = bench::scale(100_000, 20_000);
    let what = format!("{bulk} bans from a file (`hsmon bans load`)");
    match load_file(&net, dir.path(), bulk) {
        Ok((secs, listed)) => {
            let mut row = Row::new(
                SECTION,
                &what,
                secs,
                "s",
                &format!(
                    "one POST /v1/bans/bulk ({} IPv4 /32 + {} IPv6 /128), timed from the CLI's start \
                     to its exit; `hsmon bans --json` then listed {listed}",
                    bulk / 2,
                    bulk - bulk / 2
                ),
            );
            if bulk == 100_000 {
                row = row.target(Goal::AtMost, 1.0);
            }
            row.emit();
            if listed != bulk as usize {
                bench::emit_error(
                    SECTION,
                    &format!("{what}: listed"),
                    &anyhow::anyhow!("hsmon bans lists {listed}, not the {bulk} loaded"),
                );
            }
        }
        Err(e) => bench::emit_error(SECTION, &what, &e),
    }

    let total: u32 = bench::scale(10_000, 2_000);
    let deadline = Duration::from_secs(bench::scale(60, 30));
    let what = format!("{total} bans, one POST /v1/bans each");
    match load(&net, dir.path(), total, deadline) {
        Ok((marks, listed)) => {
            let (done, secs) = marks.last().copied().unwrap_or((0, f64::NAN));
            let mut prev = (0u32, 0.0f64);
            let rates: Vec<String> = marks
                .iter()
                .map(|&(n, t)| {
                    let r = f64::from(n - prev.0) / (t - prev.1);
                    prev = (n, t);
                    format!("{n}: {t:.1}s ({r:.0}/s)")
                })
                .collect();
            let stopped = if done < total {
                format!(
                    "STOPPED at the {}s deadline after {done} bans (the figure is a lower bound); ",
                    deadline.as_secs()
                )
            } else {
                String::new()
            };
            let row = Row::new(
                SECTION,
                &what,
                secs,
                "s",
                &format!(
                    "{stopped}POST /v1/bans, one ban per request, one keep-alive connection ({} IPv4 /32 + {} IPv6 /128: \
                     the tries hold 65,536 per family); elapsed at each tenth: {}; `hsmon bans --json` then listed {listed}",
                    total / 2,
                    total - total / 2,
                    rates.join(", ")
                ),
            );
            row.emit();
            if listed != done as usize {
                bench::emit_error(
                    SECTION,
                    &format!("{what}: listed"),
                    &anyhow::anyhow!("hsmon bans lists {listed}, not the {done} loaded"),
                );
            }
        }
        Err(e) => bench::emit_error(SECTION, &what, &e),
    }
    Ok(())
}
