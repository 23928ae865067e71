//! Shared pieces of the benchmark examples (`tests/examples/tc_cost.rs`,
//! `bench_*.rs`) that `cargo xtask bench` runs: the row each of them prints
//! (one line `BENCH_ROW {json}` per figure, collected by xtask into
//! `target/bench/report.{json,md}`), medians, alternating A/B rounds, and
//! readers of a process's CPU time and resident memory.
//!
//! Benchmarks are not tests: nothing here passes or fails on a number.

use anyhow::{Context, Result};
use serde::Serialize;
use std::time::Duration;

/// The prefix of a row line on stdout; xtask collects these.
pub const ROW_PREFIX: &str = "BENCH_ROW ";

/// How a row's value compares with its target.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub enum Goal {
    /// The value must be at most the target.
    #[serde(rename = "<=")]
    AtMost,
    /// The value must be at least the target.
    #[serde(rename = ">=")]
    AtLeast,
}

/// One figure of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Section (e.g. `"tc_cost"`, `"nginx"`).
    pub section: String,
    /// What was measured.
    pub what: String,
    /// The figure.
    pub value: f64,
    /// Its unit (`"ns"`, `"handshakes/s"`, `"ratio"`, ...).
    pub unit: String,
    /// The issue's target, if it names one.
    pub target: Option<f64>,
    /// How `value` must compare with `target`.
    pub goal: Option<Goal>,
    /// How it was measured (method, samples, the two sides' medians).
    pub note: String,
}

impl Row {
    /// A row without a target.
    pub fn new(section: &str, what: &str, value: f64, unit: &str, note: &str) -> Self {
        Self {
            section: section.into(),
            what: what.into(),
            value,
            unit: unit.into(),
            target: None,
            goal: None,
            note: note.into(),
        }
    }

    /// Adds the target `goal target`.
    pub fn target(mut self, goal: Goal, target: f64) -> Self {
        self.goal = Some(goal);
        self.target = Some(target);
        self
    }

    /// Prints the row (`BENCH_ROW {json}`) on stdout.
    pub fn emit(&self) {
        match serde_json::to_string(self) {
            Ok(json) => println!("{ROW_PREFIX}{json}"),
            Err(e) => eprintln!("bench row {:?} not serialisable: {e}", self.what),
        }
    }
}

/// Prints a row that says a measurement could not be made, and why.
pub fn emit_error(section: &str, what: &str, err: &anyhow::Error) {
    Row::new(section, what, f64::NAN, "error", &format!("{err:#}")).emit();
}

/// Whether `HSMON_BENCH_QUICK` asks for a short smoke run.
pub fn quick() -> bool {
    std::env::var("HSMON_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// `full` normally, `quick` with [`quick`].
pub fn scale<T>(full: T, quick_value: T) -> T {
    if quick() {
        quick_value
    } else {
        full
    }
}

/// The median of `v` (NaN when empty).
pub fn median(v: &[f64]) -> f64 {
    percentile(v, 50.0)
}

/// The `p`-th percentile of `v` (nearest rank; NaN when empty).
pub fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// The two sides of an alternating comparison.
#[derive(Debug, Clone, Default)]
pub struct AbSamples {
    /// Side A's samples, one per round.
    pub a: Vec<f64>,
    /// Side B's samples, one per round.
    pub b: Vec<f64>,
}

impl AbSamples {
    /// Median of A.
    pub fn a_median(&self) -> f64 {
        median(&self.a)
    }

    /// Median of B.
    pub fn b_median(&self) -> f64 {
        median(&self.b)
    }

    /// Median of B over median of A.
    pub fn ratio(&self) -> f64 {
        self.b_median() / self.a_median()
    }

    /// `"A median X, B median Y, n=N rounds"` for a row's note.
    pub fn describe(&self, a: &str, b: &str, unit: &str) -> String {
        format!(
            "{a} median {:.4} {unit}, {b} median {:.4} {unit}; {} alternating rounds (A {:?}, B {:?})",
            self.a_median(),
            self.b_median(),
            self.a.len().min(self.b.len()),
            rounded(&self.a),
            rounded(&self.b),
        )
    }
}

fn rounded(v: &[f64]) -> Vec<f64> {
    v.iter()
        .map(|x| {
            if x.abs() >= 100.0 {
                x.round()
            } else {
                (x * 1000.0).round() / 1000.0
            }
        })
        .collect()
}

/// Runs `rounds` rounds of A and B, alternating which goes first (ABBA...),
/// so a slow drift of the machine hits both sides alike.
pub fn alternate(
    rounds: usize,
    mut a: impl FnMut(usize) -> Result<f64>,
    mut b: impl FnMut(usize) -> Result<f64>,
) -> Result<AbSamples> {
    let mut s = AbSamples::default();
    for r in 0..rounds {
        if r.is_multiple_of(2) {
            s.a.push(a(r).with_context(|| format!("round {r}, side A"))?);
            s.b.push(b(r).with_context(|| format!("round {r}, side B"))?);
        } else {
            s.b.push(b(r).with_context(|| format!("round {r}, side B"))?);
            s.a.push(a(r).with_context(|| format!("round {r}, side A"))?);
        }
    }
    Ok(s)
}

/// User plus system CPU time of process `pid` (fields 14 and 15 of
/// `/proc/PID/stat`, in clock ticks).
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may hold spaces: fields after the last ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("{path}: no ')' in {text:?}"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14 -> index 11.
    let ticks = |i: usize| -> Result<u64> {
        f.get(i)
            .with_context(|| format!("{path}: too few fields"))?
            .parse::<u64>()
            .with_context(|| format!("{path}: field {}", i + 3))
    };
    let total = ticks(11)? + ticks(12)?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|h| *h > 0).unwrap_or(100);
    Ok(Duration::from_secs_f64(total as f64 / hz as f64))
}

/// A `/proc/PID/status` field in kB (e.g. `"VmRSS"`, `"VmHWM"`).
pub fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .with_context(|| format!("{path}: no {field}"))?;
    line.split_whitespace()
        .nth(1)
        .with_context(|| format!("{path}: {line:?}"))?
        .parse()
        .with_context(|| format!("{path}: {line:?}"))
}

/// The `memlock` line of `/proc/PID/fdinfo/FD` (a BPF map's charged bytes).
pub fn fd_memlock(pid: u32, fd: i32) -> Result<u64> {
    let path = format!("/proc/{pid}/fdinfo/{fd}");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .with_context(|| format!("{path}: no memlock line"))?
        .trim()
        .parse()
        .with_context(|| format!("{path}: memlock"))
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(median(&v), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn alternation_interleaves_and_orders_abba() {
        let order = std::cell::RefCell::new(String::new());
        let s = alternate(
            3,
            |_| {
                order.borrow_mut().push('A');
                Ok(1.0)
            },
            |_| {
                order.borrow_mut().push('B');
                Ok(2.0)
            },
        )
        .expect("alternate");
        assert_eq!(order.borrow().as_str(), "ABBAAB");
        assert_eq!(s.ratio(), 2.0);
    }

    #[test]
    fn own_cpu_time_and_rss_are_readable() {
        let pid = std::process::id();
        cpu_time(pid).expect("cpu time");
        assert!(status_kib(pid, "VmRSS").expect("rss") > 0);
    }

    #[test]
    fn row_serialises_with_goal_symbol() {
        let r = Row::new("s", "w", 1.5, "ns", "n").target(Goal::AtMost, 2.0);
        let j = serde_json::to_string(&r).expect("json");
        assert!(j.contains(r#""goal":"<=""#), "{j}");
        assert!(j.contains(r#""target":2.0"#), "{j}");
    }
}
