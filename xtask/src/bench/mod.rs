//! `cargo xtask bench`: set up, build, then run the benchmarks as root and
//! write `target/bench/report.json` and `target/bench/report.md` (also
//! printed as a table). Benchmarks are not tests: nothing here passes or
//! fails on a number; a benchmark that cannot run becomes a `not measured`
//! row saying why, and the others still run.
//!
//! Each benchmark is an example of the `tests` crate (`tests/examples/`)
//! that prints its figures as `BENCH_ROW {json}` lines (`tests::bench`);
//! the uprobes' cost is the ignored root test `uprobe_cost`, whose printed
//! figures are turned into rows here. `--quick` (`HSMON_BENCH_QUICK=1` for
//! the examples) shortens every benchmark for a smoke run.

mod leftovers;
mod report;
mod sslsniff;

use std::io::{BufRead as _, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::apt::{self, Apt};
use crate::build;
use crate::util;
use report::{judge, Row};

/// Debian packages the benchmarks drive: the TLS server and client tools,
/// the load generators and bcc's `sslsniff` (the peer to compare with).
/// Missing ones are installed; a failed install leaves the benchmark that
/// needs it reporting why.
pub const BENCH_PACKAGES: &[&str] = &["openssl", "nginx", "iproute2", "wrk", "bpfcc-tools"];

/// Options of `cargo xtask bench`.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Short smoke run (fewer rounds, shorter loads).
    pub quick: bool,
    /// Only the benchmarks with these names (empty: all).
    pub only: Vec<String>,
}

/// One benchmark: its name and how it runs.
struct Bench {
    name: &'static str,
    kind: Kind,
    /// Killed after this long (full run; quick runs of the examples get a
    /// third).
    timeout: Duration,
}

enum Kind {
    /// `target/release/examples/NAME`.
    Example,
    /// The ignored root test `uprobe_cost` of `tests/tests/uprobes.rs`.
    UprobeCost,
}

const BENCHES: &[Bench] = &[
    Bench {
        name: "tc_cost",
        kind: Kind::Example,
        timeout: Duration::from_secs(120),
    },
    Bench {
        name: "bench_memory",
        kind: Kind::Example,
        timeout: Duration::from_secs(180),
    },
    Bench {
        name: "bench_ingest",
        kind: Kind::Example,
        timeout: Duration::from_secs(120),
    },
    Bench {
        name: "bench_bans",
        kind: Kind::Example,
        timeout: Duration::from_secs(180),
    },
    Bench {
        name: "bench_nginx",
        kind: Kind::Example,
        timeout: Duration::from_secs(480),
    },
    Bench {
        name: "bench_reneg",
        kind: Kind::Example,
        timeout: Duration::from_secs(240),
    },
    Bench {
        name: "uprobe_cost",
        kind: Kind::UprobeCost,
        timeout: Duration::from_secs(180),
    },
];

/// Runs the benchmarks and writes the report.
pub fn bench(opts: Options) -> Result<()> {
    if !util::is_root() {
        bail!("the benchmarks load eBPF programs and need root: run `cargo xtask bench` as root");
    }
    for name in &opts.only {
        if !BENCHES.iter().any(|b| b.name == name) {
            bail!(
                "no benchmark {name:?}; there are: {}",
                BENCHES
                    .iter()
                    .map(|b| b.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let started = Instant::now();
    build::build(true)?;
    install_packages();
    util::run(build::cargo().args(["build", "--release", "-p", "tests", "--examples"]))
        .context("building the benchmark examples")?;
    // The uprobes test binary too, so its build is not timed as the benchmark.
    util::run(build::cargo().args([
        "test",
        "--release",
        "-p",
        "tests",
        "--test",
        "uprobes",
        "--no-run",
    ]))
    .context("building the uprobes test")?;
    let hsmon = build::hsmon_path(true)?;
    let target_dir = hsmon
        .parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .context("the target directory")?;
    let examples = target_dir.join("release/examples");

    // bcc's sslsniff for bench_nginx (kept until the benchmarks are done:
    // dropping it removes the header links it made).
    let wants_sniff = opts.only.is_empty() || opts.only.iter().any(|n| n == "bench_nginx");
    let sniff = if wants_sniff {
        Some(
            sslsniff::prepare(&target_dir.join("bench/sslsniff"))
                .and_then(|p| sslsniff::check(&p).map(|()| p)),
        )
    } else {
        None
    };

    let mut rows: Vec<Row> = Vec::new();
    let benches_started = Instant::now();
    for b in BENCHES {
        if !opts.only.is_empty() && !opts.only.iter().any(|n| n == b.name) {
            continue;
        }
        let timeout = match std::env::var("HSMON_BENCH_TIMEOUT_S")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            // For checking the clean-up after a timeout.
            Some(s) => Duration::from_secs(s),
            // uprobe_cost has no quick mode.
            None if opts.quick && matches!(b.kind, Kind::Example) => b.timeout / 3,
            None => b.timeout,
        };
        println!(
            "\n=== bench {} (at most {}s) ===",
            b.name,
            timeout.as_secs()
        );
        let t0 = Instant::now();
        let mut cmd = match b.kind {
            Kind::Example => Command::new(examples.join(b.name)),
            Kind::UprobeCost => {
                let mut c = build::cargo();
                c.args([
                    "test",
                    "--release",
                    "-p",
                    "tests",
                    "--test",
                    "uprobes",
                    "uprobe_cost",
                    "--",
                    "--ignored",
                    "--nocapture",
                    "--exact",
                ]);
                c
            }
        };
        cmd.env("HSMON_BIN", &hsmon).env("HSMON_REQUIRE_ROOT", "1");
        match &sniff {
            Some(Ok(p)) => {
                cmd.env("HSMON_SSLSNIFF", &p.script)
                    .env("HSMON_SSLSNIFF_HOW", &p.how);
            }
            Some(Err(e)) => {
                cmd.env("HSMON_SSLSNIFF_ERROR", format!("{e:#}"));
            }
            None => {}
        }
        if opts.quick {
            cmd.env("HSMON_BENCH_QUICK", "1");
        }
        let got = run_collecting(&mut cmd, timeout);
        let secs = t0.elapsed().as_secs_f64();
        match got {
            Ok((mut found, lines)) => {
                if matches!(b.kind, Kind::UprobeCost) {
                    found.extend(uprobe_rows(&lines));
                }
                if found.is_empty() {
                    rows.push(error_row(b.name, "no figures printed"));
                }
                rows.extend(found);
            }
            Err(e) => rows.push(error_row(b.name, &format!("{e:#}"))),
        }
        println!("=== bench {} took {secs:.0}s ===", b.name);
    }

    let elapsed = started.elapsed().as_secs_f64();
    let benches_s = benches_started.elapsed().as_secs_f64();
    let judged: Vec<_> = rows.into_iter().map(judge).collect();
    let header = format!(
        "`cargo xtask bench{}`: {} rows, {:.0} s in all ({:.0} s of benchmarks, the rest setup and build); \
         {} on {} CPUs, kernel {}.",
        if opts.quick { " --quick" } else { "" },
        judged.len(),
        elapsed,
        benches_s,
        host_name(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel_release(),
    );
    let dir = target_dir.join("bench");
    report::write(&dir, &judged, &header, elapsed)?;
    println!("\n{header}\n");
    print!("{}", report::table(&judged));
    println!(
        "\nreport: {} and {}",
        dir.join("report.md").display(),
        dir.join("report.json").display()
    );
    Ok(())
}

/// Installs the missing [`BENCH_PACKAGES`]; a failure is only printed (the
/// benchmark that needs the package reports it).
fn install_packages() {
    let missing: Vec<&str> = BENCH_PACKAGES
        .iter()
        .copied()
        .filter(|p| apt::installed_version(p).is_none())
        .collect();
    if missing.is_empty() {
        println!("ok: bench packages ({})", BENCH_PACKAGES.join(", "));
        return;
    }
    println!("installing: {}", missing.join(" "));
    if let Err(e) = Apt::default().install(&missing) {
        eprintln!("warning: {e:#}");
    }
}

/// A row saying a benchmark could not run.
fn error_row(section: &str, why: &str) -> Row {
    Row {
        section: section.to_owned(),
        what: format!("{section} did not run"),
        value: None,
        unit: "error".to_owned(),
        target: None,
        goal: None,
        note: why.to_owned(),
    }
}

/// Runs `cmd`, echoing its stdout except the row lines, and returns the
/// rows and every stdout line. Killed (and an error) after `timeout`; a
/// non-zero exit is an error unless it printed rows.
fn run_collecting(cmd: &mut Command, timeout: Duration) -> Result<(Vec<Row>, Vec<String>)> {
    let desc = util::describe(cmd);
    // A process group of its own, so a timeout kills everything it started.
    let mut child = cmd
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting `{desc}`"))?;
    let pid = child.id();
    let done = Arc::new(AtomicBool::new(false));
    let timed_out = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        let timed_out = timed_out.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + timeout;
            while !done.load(Ordering::SeqCst) {
                if Instant::now() >= deadline {
                    timed_out.store(true, Ordering::SeqCst);
                    let owners = leftovers::descendants(pid);
                    // SAFETY: kill(2) on the process group of our own child
                    // (it leads the group: process_group(0)).
                    unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
                    std::thread::sleep(Duration::from_millis(500));
                    // Its guards did not run: remove what it created.
                    leftovers::remove(&owners);
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let mut rows = Vec::new();
    let mut lines = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading the benchmark's output")?;
        match report::parse_line(&line) {
            Some(Ok(row)) => rows.push(row),
            Some(Err(e)) => eprintln!("warning: {e:#}"),
            None => println!("{line}"),
        }
        lines.push(line);
    }
    let status = child.wait().context("waiting for the benchmark")?;
    done.store(true, Ordering::SeqCst);
    let _ = watchdog.join();
    if timed_out.load(Ordering::SeqCst) {
        bail!(
            "`{desc}` took longer than {}s and was stopped",
            timeout.as_secs()
        );
    }
    if !status.success() && rows.is_empty() {
        bail!("`{desc}` failed ({status}); its error is above");
    }
    if !status.success() {
        rows.push(error_row(
            rows[0].section.as_str(),
            &format!("the benchmark ended with {status} after printing the rows above"),
        ));
    }
    Ok((rows, lines))
}

/// The rows of `uprobe_cost`'s printed figures (`without uprobes: N us per
/// handshake`, `with uprobes: N us per handshake`, `server-side NAME per
/// handshake: X`).
fn uprobe_rows(lines: &[String]) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut with = None;
    let mut with_full = None;
    let mut without = None;
    for l in lines {
        let l = l.trim();
        let num = |s: &str| {
            s.split_whitespace()
                .next()
                .and_then(|n| n.parse::<f64>().ok())
        };
        if let Some(rest) = l.strip_prefix("without uprobes:") {
            without = num(rest);
        } else if let Some(rest) = l.strip_prefix("with uprobes:") {
            with = num(rest);
        } else if let Some(rest) = l.strip_prefix("with uprobes (full set):") {
            with_full = num(rest);
        } else if let Some(rest) = l.strip_prefix("server-side ") {
            if let Some((name, v)) = rest.split_once(" per handshake:") {
                if let Ok(v) = v.trim().parse::<f64>() {
                    rows.push(uprobe_row(
                        &format!("{name} per server handshake"),
                        v,
                        "count",
                        "",
                    ));
                }
            }
        }
    }
    let note = "openssl s_time -new against openssl s_server (its own libssl copy, the only \
                file probed), hsmon with --no-uprobes, with the default probe set \
                (--uprobes handshake) and with --uprobes full, rounds alternating (the \
                ignored test uprobe_cost); wall time per handshake on a loaded 2-core VM";
    if let Some(v) = without {
        rows.insert(
            0,
            uprobe_row("handshake time, hsmon without uprobes", v, "us", note),
        );
    }
    if let Some(v) = with {
        rows.insert(
            1.min(rows.len()),
            uprobe_row("handshake time, hsmon with uprobes", v, "us", note),
        );
    }
    if let (Some(a), Some(b)) = (without, with) {
        rows.insert(
            2.min(rows.len()),
            uprobe_row("uprobes' cost per handshake", b - a, "us", note),
        );
    }
    if let Some(v) = with_full {
        let at = 3.min(rows.len());
        rows.insert(
            at,
            uprobe_row(
                "handshake time, hsmon with uprobes (full set)",
                v,
                "us",
                note,
            ),
        );
        if let Some(a) = without {
            rows.insert(
                at + 1,
                uprobe_row("uprobes' cost per handshake (full set)", v - a, "us", note),
            );
        }
    }
    rows
}

fn uprobe_row(what: &str, value: f64, unit: &str, note: &str) -> Row {
    Row {
        section: "uprobes".to_owned(),
        what: what.to_owned(),
        value: Some(value),
        unit: unit.to_owned(),
        target: None,
        goal: None,
        note: note.to_owned(),
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "this host".to_owned())
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uprobe_cost_output_becomes_rows() {
        let out = "uprobe cost over 40 sequential s_client handshakes against s_server:\n  \
                   without uprobes: 5200 us per handshake\n  with uprobes:    5300 us per handshake\n  \
                   with uprobes (full set): 5450 us per handshake (3 handshakes)\n  \
                   difference:      +100 us per handshake (rough)\n  \
                   server-side ssl_probe_entries per handshake: 4.0\n  \
                   server-side ssl_probe_entries, full set per handshake: 8.5\n";
        let lines: Vec<String> = out.lines().map(str::to_owned).collect();
        let rows = uprobe_rows(&lines);
        let whats: Vec<&str> = rows.iter().map(|r| r.what.as_str()).collect();
        assert_eq!(
            whats,
            [
                "handshake time, hsmon without uprobes",
                "handshake time, hsmon with uprobes",
                "uprobes' cost per handshake",
                "handshake time, hsmon with uprobes (full set)",
                "uprobes' cost per handshake (full set)",
                "ssl_probe_entries per server handshake",
                "ssl_probe_entries, full set per server handshake"
            ]
        );
        assert_eq!(rows[2].value, Some(100.0));
        assert_eq!(rows[4].value, Some(250.0));
    }

    #[test]
    fn every_bench_name_is_unique() {
        let mut names: Vec<&str> = BENCHES.iter().map(|b| b.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), BENCHES.len());
    }
}
