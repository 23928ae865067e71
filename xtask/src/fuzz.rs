//! `cargo xtask fuzz [--secs N] [--target NAME]`: builds the cargo-fuzz
//! targets in `fuzz/` (libFuzzer, nightly, AddressSanitizer) and runs each
//! for N seconds, starting from its checked-in seeds (`fuzz/corpus/TARGET`,
//! read only) plus what earlier runs found (`fuzz/target/corpus/TARGET`,
//! where new inputs go). A crash stops the run with the path of the input
//! libFuzzer saved under `fuzz/artifacts/TARGET/` and the command that
//! replays it.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::setup;
use crate::util;

/// The fuzz targets (`fuzz/fuzz_targets/NAME.rs`).
pub const TARGETS: &[&str] = &["tracker", "config", "api"];

/// Seconds per target of `cargo xtask fuzz` without `--secs`.
pub const DEFAULT_SECS: u64 = 900;

/// Seconds per target of the test gate's bounded run, unless
/// `HSMON_FUZZ_SECS` says otherwise.
pub const GATE_SECS: u64 = 60;

/// What to fuzz, for how long.
#[derive(Debug)]
pub struct Options {
    /// Seconds per target.
    pub secs: u64,
    /// Only this target (all when `None`).
    pub target: Option<String>,
}

/// The gate's seconds per target: `HSMON_FUZZ_SECS`, else [`GATE_SECS`].
pub fn gate_secs() -> Result<u64> {
    match std::env::var("HSMON_FUZZ_SECS") {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("HSMON_FUZZ_SECS={v:?} is not a number of seconds")),
        Err(_) => Ok(GATE_SECS),
    }
}

/// `cargo +nightly fuzz SUBCOMMAND` for the workspace's `fuzz/` directory.
/// `AYA_BUILD_SKIP=1`: the targets use monitor's parsers, not its eBPF
/// object, so its build script need not build one.
fn cargo_fuzz(sub: &str) -> Command {
    let mut c = Command::new("cargo");
    // `cargo xtask` runs under the stable toolchain's cargo, which exports
    // its own RUSTC/CARGO: cargo-fuzz must see nightly's.
    c.current_dir(util::workspace_root())
        .env_remove("RUSTC")
        .env_remove("CARGO")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env("AYA_BUILD_SKIP", "1")
        .args(["+nightly", "fuzz", sub, "--fuzz-dir", "fuzz"]);
    c
}

/// Builds every target, then runs the chosen ones.
pub fn fuzz(opts: Options) -> Result<()> {
    let targets: Vec<&str> = match &opts.target {
        Some(t) if TARGETS.contains(&t.as_str()) => vec![t.as_str()],
        Some(t) => bail!(
            "no fuzz target {t:?}; the targets are {}",
            TARGETS.join(", ")
        ),
        None => TARGETS.to_vec(),
    };
    if opts.secs == 0 {
        bail!("--secs must be at least 1");
    }
    setup::cargo_fuzz()?;
    let root = util::workspace_root();
    let started = Instant::now();
    util::run(&mut cargo_fuzz("build")).context("building the fuzz targets failed")?;
    println!(
        "fuzz: targets built in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    for t in targets {
        let seeds = root.join("fuzz/corpus").join(t);
        let work = root.join("fuzz/target/corpus").join(t);
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        println!("==> fuzz {t} for {}s", opts.secs);
        let mut c = cargo_fuzz("run");
        c.arg(t).arg(&work);
        if seeds.is_dir() {
            c.arg(&seeds);
        }
        c.arg("--")
            .arg(format!("-max_total_time={}", opts.secs))
            .arg("-timeout=10")
            .arg("-rss_limit_mb=2048")
            .arg("-print_final_stats=1");
        let t0 = Instant::now();
        if let Err(e) = util::run(&mut c) {
            let artifacts = root.join("fuzz/artifacts").join(t);
            bail!(
                "fuzz target {t} failed: {e:#}\n{}\nreplay one with `cargo +nightly fuzz run \
                 --fuzz-dir fuzz {t} ARTIFACT`, then add it as a regression test",
                list_artifacts(&artifacts)
            );
        }
        println!("fuzz: {t} ran {:.0}s, no crash", t0.elapsed().as_secs_f64());
    }
    println!("fuzz: done in {:.0}s", started.elapsed().as_secs_f64());
    Ok(())
}

fn list_artifacts(dir: &Path) -> String {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            let names: Vec<String> = entries
                .filter_map(|e| e.ok())
                .map(|e| e.path().display().to_string())
                .collect();
            if names.is_empty() {
                format!("no input saved in {}", dir.display())
            } else {
                format!("inputs saved: {}", names.join(", "))
            }
        }
        Err(_) => format!("no input saved in {}", dir.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_has_a_source_file() {
        let root = util::workspace_root();
        for t in TARGETS {
            let p = root.join("fuzz/fuzz_targets").join(format!("{t}.rs"));
            assert!(p.is_file(), "{} missing", p.display());
        }
    }

    #[test]
    fn fuzz_command_skips_the_ebpf_build() {
        let c = cargo_fuzz("build");
        let d = util::describe(&c);
        assert!(d.contains("+nightly fuzz build --fuzz-dir fuzz"), "{d}");
        assert!(
            c.get_envs()
                .any(|(k, v)| k == "AYA_BUILD_SKIP" && v == Some("1".as_ref())),
            "{d}"
        );
    }
}
