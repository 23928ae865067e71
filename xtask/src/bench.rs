//! `cargo xtask bench`: set up, then run the benchmarks as root and print
//! their numbers. Benchmarks are not tests: nothing here passes or fails on
//! a number.

use anyhow::{bail, Result};

use crate::build;
use crate::util;

/// Runs every benchmark: the per-packet cost of the TC program under
/// `BPF_PROG_TEST_RUN` (the `tc_cost` example of the `tests` crate), then the
/// uprobes' cost per handshake (the ignored `uprobe_cost` root test).
pub fn bench() -> Result<()> {
    if !util::is_root() {
        bail!("the benchmarks load eBPF programs and need root: run `cargo xtask bench` as root");
    }
    build::build(true)?;
    util::run(build::cargo().args(["run", "--release", "-p", "tests", "--example", "tc_cost"]))?;
    let hsmon = build::hsmon_path(true)?;
    util::run(
        build::cargo()
            .env("HSMON_BIN", &hsmon)
            .env("HSMON_REQUIRE_ROOT", "1")
            .args([
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
            ]),
    )
}
