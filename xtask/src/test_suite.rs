//! `cargo xtask test`: the whole gate, in order, stopping at the first
//! failure: formatting, clippy, unit and property tests, release build, then
//! the root-only integration tests against the release `hsmon`, and
//! `cargo xtask systemd-check` (the package under a real systemd, about
//! 1.5 minutes cached; `HSMON_SYSTEMD_CHECK=0` skips it and says so).

use std::process::Command;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};

use crate::build;
use crate::setup::{self, Options as SetupOptions};
use crate::util;

/// What `cargo xtask test` was asked for.
#[derive(Debug, Default)]
pub struct Options {
    /// Skip the root integration tests (ignored when `CI` is set).
    pub no_root: bool,
    /// Extra arguments for the root test run (after `--test-threads=1`).
    pub args: Vec<String>,
}

/// Tracks passed steps and prints the final summary line.
struct Progress {
    started: Instant,
    passed: Vec<&'static str>,
}

impl Progress {
    fn summary(&self, outcome: &str) {
        let passed = if self.passed.is_empty() {
            "none".to_string()
        } else {
            self.passed.join(", ")
        };
        println!(
            "xtask test: {outcome} after {:.0}s (passed: {passed})",
            self.started.elapsed().as_secs_f64()
        );
    }

    /// Runs one step; on failure prints the summary and returns why.
    fn step(&mut self, name: &'static str, cmd: &mut Command, hint: &str) -> Result<()> {
        println!("==> {name}");
        match util::run(cmd) {
            Ok(()) => {
                self.passed.push(name);
                Ok(())
            }
            Err(e) => {
                self.summary(&format!("FAILED at {name}"));
                Err(e.context(format!("step `{name}` failed: {hint}")))
            }
        }
    }
}

/// Runs the gate.
pub fn test(opts: Options) -> Result<()> {
    let mut p = Progress {
        started: Instant::now(),
        passed: Vec::new(),
    };
    println!("==> setup --test-deps");
    if let Err(e) = setup::setup(SetupOptions { test_deps: true }) {
        p.summary("FAILED at setup");
        return Err(e.context("step `setup` failed"));
    }
    p.passed.push("setup");

    p.step(
        "fmt",
        build::cargo().args(["fmt", "--all", "--check"]),
        "run `cargo fmt --all` and commit the result",
    )?;
    p.step(
        "clippy",
        // The default members: everything but the eBPF crate, which only
        // builds for the BPF target (monitor's build.rs builds it).
        build::cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]),
        "fix the clippy findings above",
    )?;
    p.step(
        "unit tests",
        build::cargo().args([
            "test",
            "-p",
            "monitor-common",
            "-p",
            "monitor",
            "-p",
            "xtask",
        ]),
        "see the failing unit or property tests above",
    )?;
    // Bounded fuzzing: each cargo-fuzz target for HSMON_FUZZ_SECS (60)
    // seconds; HSMON_FUZZ_SECS=0 skips the step, saying so.
    println!("==> fuzz");
    let fuzzed = crate::fuzz::gate_secs().and_then(|secs| {
        if secs == 0 {
            println!("SKIPPED: fuzz (HSMON_FUZZ_SECS=0)");
            return Ok(false);
        }
        crate::fuzz::fuzz(crate::fuzz::Options { secs, target: None }).map(|()| true)
    });
    match fuzzed {
        Ok(true) => p.passed.push("fuzz"),
        Ok(false) => {}
        Err(e) => {
            p.summary("FAILED at fuzz");
            return Err(e.context("step `fuzz` failed: see the crash above"));
        }
    }
    p.step(
        "release build",
        build::cargo().args(["build", "-p", "monitor", "--release"]),
        "see the compiler output above",
    )?;

    let ci = util::in_ci();
    if ci && opts.no_root {
        println!("note: --no-root is ignored because CI is set: CI always runs the root tests");
    }
    let skip_root_tests = opts.no_root && !ci;
    if !util::is_root() {
        if ci {
            banner("ROOT INTEGRATION TESTS CANNOT RUN: not root (CI is set)");
            p.summary("FAILED at root integration tests");
            bail!("root integration tests cannot run: not root; CI must run `cargo xtask test` as root");
        }
        if !skip_root_tests {
            banner("ROOT INTEGRATION TESTS DID NOT RUN: not root");
            p.summary("FAILED at root integration tests");
            bail!(
                "root integration tests did not run: not root; run `cargo xtask test` as root, \
                 or pass --no-root to skip them"
            );
        }
    }
    if skip_root_tests {
        println!("SKIPPED: root integration tests (--no-root): hsmon was NOT tested in the kernel");
        if !opts.args.is_empty() {
            println!("note: ignoring test arguments {:?}", opts.args);
        }
        p.summary("passed, root integration tests SKIPPED");
        return Ok(());
    }

    let hsmon = build::hsmon_path(true)?;
    if !hsmon.is_file() {
        p.summary("FAILED at root integration tests");
        return Err(anyhow!(
            "the release build finished but {} does not exist",
            hsmon.display()
        ));
    }
    // The Debian package the `deb` root test installs and purges.
    println!("==> deb package");
    let deb = match crate::deb::deb() {
        Ok(d) => d,
        Err(e) => {
            p.summary("FAILED at deb package");
            return Err(e.context("step `deb package` failed (cargo xtask deb)"));
        }
    };
    p.passed.push("deb package");
    p.step(
        "root integration tests",
        build::cargo()
            .env("HSMON_BIN", &hsmon)
            .env("HSMON_DEB", &deb)
            .env("HSMON_REQUIRE_ROOT", "1")
            .args([
                "test",
                "-p",
                "tests",
                "--release",
                "--no-fail-fast",
                "--",
                "--test-threads=1",
            ])
            .args(&opts.args),
        "see the failing integration tests above",
    )?;
    println!("==> systemd-check");
    if std::env::var("HSMON_SYSTEMD_CHECK").is_ok_and(|v| v.trim() == "0") {
        println!("SKIPPED: systemd-check (HSMON_SYSTEMD_CHECK=0): the package was NOT tested under systemd");
    } else {
        // A child process: systemd-check moves itself into a private mount
        // namespace.
        let xtask = std::env::current_exe().context("the path of the running xtask")?;
        p.step(
            "systemd-check",
            Command::new(xtask).arg("systemd-check"),
            "see the FAIL lines above and target/systemd/logs/",
        )?;
    }
    p.summary("all passed");
    Ok(())
}

fn banner(msg: &str) {
    let width = msg.len() + 8;
    let rule = "!".repeat(width);
    eprintln!("\n{rule}\n!!  {msg}  !!\n{rule}\n");
}
