//! A real TLS server (nginx) over veth: handshake rate and bulk throughput
//! with hsmon off and on, in alternating rounds; then bcc's `sslsniff` as a
//! peer on the same handshake run (`cargo xtask bench` runs this as root;
//! prints `BENCH_ROW` lines, see [`tests::bench`]).
//!
//! - handshake rate: `openssl s_time -new` (a new TLS connection and full
//!   handshake each time, nothing fetched) from the client namespace for a
//!   fixed time; connections counted by s_time, divided by the wall time.
//! - throughput: `wrk -t1 -c4` fetching a 1 MiB file over keep-alive HTTPS
//!   connections (`Transfer/sec`).
//! - hsmon on: `hsmon run` on the server's veth (TC programs, tracepoints,
//!   the default libssl probe set `--uprobes handshake`, `--reneg-cap 3`),
//!   started afresh for each "on" round. Its uprobes fire in every process
//!   using libssl, the load tools included. The issue's >= 0.99 targets are
//!   on this arm.
//! - reference arms in the same rounds: hsmon on with `--uprobes full`
//!   (also `SSL_read`/`SSL_write` on every I/O call and `SSL_get_error`),
//!   and hsmon on with `--no-uprobes` (the TC programs and the tracepoint
//!   alone), to tell the costs apart. The arms' order rotates every round.
//! - CPU per unit of work, next to the wall-clock ratios: nginx's
//!   utime+stime (`/proc/PID/stat`) plus the load tool's (`getrusage`
//!   of the finished child) per handshake and per MiB, each arm over off.
//!   The machine is shared with other builds and tests, which moves the
//!   wall-clock rates by tens of percent between rounds; CPU time per unit
//!   of work is what the probes add, and barely depends on that load.

use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tests::bench::{self, AbSamples, Goal, Row};
use tests::cert::TestCert;
use tests::cmd;
use tests::hsmon::Agent;
use tests::netns::NetPair;
use tests::nginx::NginxConfig;
use tests::process::Proc;
use tests::workdir::WorkDir;

const SECTION: &str = "nginx";
const SSLSNIFF: &str = "/usr/sbin/sslsniff-bpfcc";

/// nginx with the benchmark config ([`NginxConfig::bench`]: the 1 MiB
/// file at `/big`, no access log).
fn start_nginx(net: &NetPair, dir: &Path, cert: &TestCert, addr: SocketAddr) -> Result<Proc> {
    let (proc, _conf) = tests::nginx::spawn(net, dir, cert, addr, "nginx", &NginxConfig::bench())?;
    Ok(proc)
}

/// CPU time (user + system) of this process's waited-for children so far.
fn children_cpu() -> Duration {
    // SAFETY: getrusage writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Handshakes per second of `openssl s_time -new` for `secs` seconds.
fn handshake_rate(net: &NetPair, addr: SocketAddr, secs: u64) -> Result<f64> {
    let mut c = net.client_cmd("openssl");
    c.args(["s_time", "-connect", &addr.to_string(), "-new", "-time"])
        .arg(secs.to_string());
    let out = cmd::run_ok(&mut c, Duration::from_secs(secs + 30))?;
    // "1234 connections in 4.50s; 274.22 connections/user sec, ..."
    let n: f64 = out
        .lines()
        .find_map(|l| {
            let (n, rest) = l.split_once(' ')?;
            rest.starts_with("connections in").then(|| n.parse().ok())?
        })
        .with_context(|| format!("no connection count in s_time's output: {out}"))?;
    if n < 1.0 {
        bail!("s_time made no connection: {out}");
    }
    // s_time starts connections for `secs` seconds of wall-clock time.
    Ok(n / secs as f64)
}

/// MiB/s of `wrk` fetching the 1 MiB file for `secs` seconds.
fn throughput(net: &NetPair, addr: SocketAddr, secs: u64) -> Result<f64> {
    let mut c = net.client_cmd("wrk");
    c.args(["-t1", "-c4", "-d"])
        .arg(format!("{secs}s"))
        .arg(format!("https://{addr}/big"));
    let out = cmd::run_ok(&mut c, Duration::from_secs(secs + 30))?;
    let line = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Transfer/sec:"))
        .with_context(|| format!("no Transfer/sec in wrk's output: {out}"))?
        .trim();
    let (num, unit) = line.split_at(
        line.find(|c: char| c.is_ascii_alphabetic())
            .unwrap_or(line.len()),
    );
    let v: f64 = num
        .trim()
        .parse()
        .with_context(|| format!("wrk: {line:?}"))?;
    let mib = match unit.trim() {
        "B" => v / 1_048_576.0,
        "KB" => v / 1024.0,
        "MB" => v,
        "GB" => v * 1024.0,
        u => bail!("wrk: unknown unit {u:?} in {line:?}"),
    };
    if out.contains("Non-2xx") || out.contains("Socket errors") {
        eprintln!("wrk reported errors:\n{out}");
    }
    Ok(mib)
}

fn agent_args() -> Vec<String> {
    ["--reneg-cap", "3", "--metrics-addr", "off"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// A running `sslsniff-bpfcc` (uprobes on every process's libssl): the copy
/// `cargo xtask bench` prepared (`HSMON_SSLSNIFF`, run with python3; see
/// xtask's `bench::sslsniff`), else the installed script.
fn start_sslsniff(dir: &Path) -> Result<Proc> {
    if let Ok(why) = std::env::var("HSMON_SSLSNIFF_ERROR") {
        bail!("sslsniff could not be prepared: {why}");
    }
    let mut c = match std::env::var_os("HSMON_SSLSNIFF") {
        Some(script) => {
            let mut c = std::process::Command::new("/usr/bin/python3");
            c.arg(script);
            c
        }
        None if Path::new(SSLSNIFF).exists() => std::process::Command::new(SSLSNIFF),
        None => bail!("{SSLSNIFF} is missing (Debian package bpfcc-tools)"),
    };
    // Only the first 16 bytes of each buffer, to keep its output small.
    c.args(["--max-buffer-size", "16"]);
    let mut p = Proc::spawn("sslsniff", c, dir, false)?;
    p.wait_for(
        "sslsniff's header line",
        Duration::from_secs(60),
        |out, _| out.contains("FUNC"),
    )
    .map_err(|e| {
        let err = p.stderr();
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        let first = lines.first().copied().unwrap_or("");
        let last = lines.last().copied().unwrap_or("");
        if lines.is_empty() {
            e
        } else {
            anyhow::anyhow!("sslsniff-bpfcc cannot run on this kernel: {first} ... {last}")
        }
    })?;
    Ok(p)
}

fn main() -> Result<()> {
    let rounds: u32 = bench::scale(5, 2);
    let secs = bench::scale(4, 2);
    let dir = WorkDir::new("bench-nginx")?;
    let net = NetPair::create()?;
    let cert = TestCert::generate(dir.path())?;
    let addr = net.server_addr(false, 8443);
    let nginx = start_nginx(&net, dir.path(), &cert, addr)?;
    let nginx_pid = nginx.pid();
    // Warm up (first connections pay for page-ins).
    handshake_rate(&net, addr, 1)?;

    // Arms: 0 hsmon off, 1 hsmon on (default probe set), 2 hsmon on with
    // `--uprobes full`, 3 hsmon on without uprobes (TC programs and
    // tracepoints only); the order rotates every round.
    const ARMS: usize = 4;
    let arm_args = |arm: usize| -> Option<Vec<String>> {
        let mut a = agent_args();
        match arm {
            0 => return None,
            2 => a.extend(["--uprobes".to_owned(), "full".to_owned()]),
            3 => a.push("--no-uprobes".to_owned()),
            _ => {}
        }
        Some(a)
    };
    let mut h_arm: [Vec<f64>; ARMS] = Default::default();
    let mut t_arm: [Vec<f64>; ARMS] = Default::default();
    // The agent's own CPU (share of one core) during the handshake runs.
    let mut cpu_arm: [Vec<f64>; ARMS] = Default::default();
    // CPU (nginx + load tool) per handshake (us) and per MiB (ms), and
    // nginx's share alone.
    let mut hs_cpu: [Vec<f64>; ARMS] = Default::default();
    let mut hs_cpu_nginx: [Vec<f64>; ARMS] = Default::default();
    let mut mib_cpu: [Vec<f64>; ARMS] = Default::default();
    let mut mib_cpu_nginx: [Vec<f64>; ARMS] = Default::default();
    let mut bulk_err: Option<anyhow::Error> = None;
    for r in 0..rounds {
        for k in 0..ARMS {
            let arm = (r as usize + k) % ARMS;
            let agent = match arm_args(arm) {
                None => None,
                Some(a) => Some(Agent::start_with_args(&net, dir.path(), &a)?),
            };
            let cpu0 = match &agent {
                Some(a) => Some(bench::cpu_time(a.pid())?),
                None => None,
            };
            let (ngx0, kids0) = (bench::cpu_time(nginx_pid)?, children_cpu());
            let rate = handshake_rate(&net, addr, secs)?;
            h_arm[arm].push(rate);
            let ngx = (bench::cpu_time(nginx_pid)? - ngx0).as_secs_f64();
            let kids = (children_cpu() - kids0).as_secs_f64();
            let n = rate * secs as f64;
            hs_cpu[arm].push((ngx + kids) * 1e6 / n);
            hs_cpu_nginx[arm].push(ngx * 1e6 / n);
            if let (Some(a), Some(c0)) = (&agent, cpu0) {
                let used = (bench::cpu_time(a.pid())? - c0).as_secs_f64();
                cpu_arm[arm].push(used / secs as f64 * 100.0);
            }
            if bulk_err.is_none() {
                let (ngx0, kids0) = (bench::cpu_time(nginx_pid)?, children_cpu());
                match throughput(&net, addr, secs) {
                    Ok(t) => {
                        t_arm[arm].push(t);
                        let ngx = (bench::cpu_time(nginx_pid)? - ngx0).as_secs_f64();
                        let kids = (children_cpu() - kids0).as_secs_f64();
                        let mib = t * secs as f64;
                        mib_cpu[arm].push((ngx + kids) * 1e3 / mib);
                        mib_cpu_nginx[arm].push(ngx * 1e3 / mib);
                    }
                    Err(e) => bulk_err = Some(e),
                }
            }
            drop(agent);
        }
    }
    let pair = |v: &[Vec<f64>; ARMS], b: usize| AbSamples {
        a: v[0].clone(),
        b: v[b].clone(),
    };
    let names = [
        "",
        "hsmon on",
        "hsmon on --uprobes full",
        "hsmon on without uprobes",
    ];
    for (arm, what) in names.iter().enumerate().skip(1) {
        Row::new(
            SECTION,
            &format!("agent CPU during the handshake run, {what}"),
            bench::median(&cpu_arm[arm]),
            "% of a core",
            &format!(
                "utime+stime of hsmon run over each {secs}s s_time run (2 cores in all); rounds {:?}",
                cpu_arm[arm].iter().map(|x| x.round()).collect::<Vec<_>>()
            ),
        )
        .emit();
    }
    // Reference arms first, then the target rows (default set).
    for (arm, what, how) in [
        (
            3,
            "hsmon without uprobes",
            "hsmon run --no-uprobes (TC programs + tracepoint only)",
        ),
        (
            2,
            "hsmon --uprobes full",
            "hsmon run --uprobes full (read/write and SSL_get_error probes too)",
        ),
    ] {
        let hs_ref = pair(&h_arm, arm);
        Row::new(
            SECTION,
            &format!("handshake rate, {what} / off"),
            hs_ref.ratio(),
            "ratio",
            &format!(
                "{how}, same rounds; {}",
                hs_ref.describe("off", names[arm], "handshakes/s")
            ),
        )
        .emit();
        if bulk_err.is_none() {
            let bulk_ref = pair(&t_arm, arm);
            Row::new(
                SECTION,
                &format!("bulk throughput, {what} / off"),
                bulk_ref.ratio(),
                "ratio",
                &format!(
                    "{how}, same rounds; {}",
                    bulk_ref.describe("off", names[arm], "MiB/s")
                ),
            )
            .emit();
        }
    }
    // CPU per unit of work, each arm over off (> 1: the arm costs more).
    for (arm, what) in names.iter().enumerate().skip(1) {
        let c = pair(&hs_cpu, arm);
        let cn = pair(&hs_cpu_nginx, arm);
        Row::new(
            SECTION,
            &format!("CPU per handshake (nginx + s_time), {what} / off"),
            c.ratio(),
            "ratio",
            &format!(
                "utime+stime per handshake, same rounds; {}; nginx alone {:.4} ({:.0} vs {:.0} us)",
                c.describe("off", what, "us"),
                cn.ratio(),
                cn.a_median(),
                cn.b_median()
            ),
        )
        .emit();
        if bulk_err.is_none() {
            let c = pair(&mib_cpu, arm);
            let cn = pair(&mib_cpu_nginx, arm);
            Row::new(
                SECTION,
                &format!("CPU per MiB (nginx + wrk), {what} / off"),
                c.ratio(),
                "ratio",
                &format!(
                    "utime+stime per MiB transferred, same rounds; {}; nginx alone {:.4} ({:.2} vs {:.2} ms)",
                    c.describe("off", what, "ms"),
                    cn.ratio(),
                    cn.a_median(),
                    cn.b_median()
                ),
            )
            .emit();
        }
    }
    let hs = pair(&h_arm, 1);
    let bulk = pair(&t_arm, 1);
    Row::new(
        SECTION,
        "handshake rate, hsmon on / off",
        hs.ratio(),
        "ratio",
        &format!(
            "default probe set (--uprobes handshake); openssl s_time -new for {secs}s per round, TLS 1.3, nginx 1 worker, arms rotated (off, on, on --uprobes full, on without uprobes); {}",
            hs.describe("off", "on", "handshakes/s")
        ),
    )
    .target(Goal::AtLeast, 0.99)
    .emit();
    Row::new(
        SECTION,
        "handshake rate, hsmon off",
        hs.a_median(),
        "handshakes/s",
        "median",
    )
    .emit();
    Row::new(
        SECTION,
        "handshake rate, hsmon on",
        hs.b_median(),
        "handshakes/s",
        "median",
    )
    .emit();
    match bulk_err {
        Some(e) => bench::emit_error(SECTION, "bulk throughput (wrk)", &e),
        None => {
            Row::new(
                SECTION,
                "bulk throughput, hsmon on / off",
                bulk.ratio(),
                "ratio",
                &format!(
                    "default probe set (--uprobes handshake); wrk -t1 -c4 for {secs}s per round, GET of a 1 MiB file over keep-alive HTTPS; {}",
                    bulk.describe("off", "on", "MiB/s")
                ),
            )
            .target(Goal::AtLeast, 0.99)
            .emit();
            Row::new(
                SECTION,
                "bulk throughput, hsmon off",
                bulk.a_median(),
                "MiB/s",
                "median",
            )
            .emit();
            Row::new(
                SECTION,
                "bulk throughput, hsmon on",
                bulk.b_median(),
                "MiB/s",
                "median",
            )
            .emit();
        }
    }

    // bcc's sslsniff on the same handshake run, next to hsmon's uprobes.
    let sniff_rounds: u32 = bench::scale(3, 1);
    let mut sniff = AbSamples::default();
    let mut sniff_err = None;
    for r in 0..sniff_rounds {
        let order = if r.is_multiple_of(2) {
            [false, true]
        } else {
            [true, false]
        };
        for on in order {
            if on {
                match start_sslsniff(dir.path()) {
                    Ok(mut p) => {
                        sniff.b.push(handshake_rate(&net, addr, secs)?);
                        p.stop(libc::SIGINT, Duration::from_secs(5));
                    }
                    Err(e) => {
                        sniff_err = Some(e);
                        break;
                    }
                }
            } else {
                sniff.a.push(handshake_rate(&net, addr, secs)?);
            }
        }
        if sniff_err.is_some() {
            break;
        }
    }
    match sniff_err {
        Some(e) => bench::emit_error(SECTION, "bcc sslsniff: handshake rate on / off", &e),
        None => Row::new(
            SECTION,
            "bcc sslsniff: handshake rate on / off",
            sniff.ratio(),
            "ratio",
            &format!(
                "sslsniff-bpfcc --max-buffer-size 16 running, same s_time run ({}); {}",
                std::env::var("HSMON_SSLSNIFF_HOW").unwrap_or_else(|_| "stock sslsniff".to_owned()),
                sniff.describe("off", "sslsniff", "handshakes/s")
            ),
        )
        .emit(),
    }
    Ok(())
}
