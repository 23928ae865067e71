//! `cargo xtask deb`: the Debian package, built with cargo-deb from
//! `monitor/Cargo.toml`'s `[package.metadata.deb]`.
//!
//! Steps: setup (and cargo-deb, installed with `cargo install` when
//! missing), the release build, then the generated assets under
//! `target/release/hsmon-deb/` (the default config from `hsmon config
//! default`, shell completions from `hsmon completions`, the man pages from
//! `hsmon man`), then `cargo deb -p monitor --no-build`. Prints and returns
//! the `.deb`'s path (`target/debian/hsmon_VERSION-1_ARCH.deb`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{build, setup, util};

/// The cargo-deb release this project is packaged with.
pub const CARGO_DEB_VERSION: &str = "3.8.0";

/// Setup, release build, generated assets, `cargo deb`; returns the `.deb`.
pub fn deb() -> Result<PathBuf> {
    setup::setup(setup::Options { test_deps: false })?;
    setup::cargo_deb()?;
    build::build_monitor(true)?;
    let hsmon = build::hsmon_path(true)?;
    let out = hsmon
        .parent()
        .context("the release directory")?
        .join("hsmon-deb");
    generate_assets(&hsmon, &out)?;
    let mut c = build::cargo();
    c.args(["deb", "-p", "monitor", "--no-build", "--no-strip"]);
    eprintln!("+ {}", util::describe(&c));
    let run = c
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("could not start `cargo deb` (cargo-deb)")?;
    if !run.status.success() {
        bail!("`cargo deb` failed ({})", run.status);
    }
    let printed = String::from_utf8_lossy(&run.stdout).into_owned();
    let path = printed
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .with_context(|| format!("cargo deb printed no .deb path: {printed}"))?;
    if !path.is_file() {
        bail!(
            "cargo deb reported {} but it does not exist",
            path.display()
        );
    }
    println!("{}", path.display());
    Ok(path)
}

/// Runs `hsmon ARGS` and returns its stdout.
fn hsmon_output(hsmon: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new(hsmon)
        .args(args)
        .output()
        .with_context(|| format!("running {} {}", hsmon.display(), args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`hsmon {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// Runs `hsmon ARGS` and writes its stdout to `to`.
fn write_output(hsmon: &Path, args: &[&str], to: &Path) -> Result<()> {
    let out = hsmon_output(hsmon, args)?;
    std::fs::write(to, out).with_context(|| format!("writing {}", to.display()))
}

/// The files the package's metadata expects under `out`.
fn generate_assets(hsmon: &Path, out: &Path) -> Result<()> {
    let man = out.join("man");
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("clearing {}", out.display()))?;
    }
    std::fs::create_dir_all(&man).with_context(|| format!("creating {}", man.display()))?;
    write_output(hsmon, &["config", "default"], &out.join("hsmon.toml"))?;
    write_output(hsmon, &["completions", "bash"], &out.join("hsmon.bash"))?;
    write_output(hsmon, &["completions", "zsh"], &out.join("_hsmon"))?;
    write_output(hsmon, &["completions", "fish"], &out.join("hsmon.fish"))?;
    write_output(hsmon, &["man"], &man.join("hsmon.1"))?;
    // Every verb gets a page of its own (`hsmon-VERB(1)`); the binary lists them.
    let list = hsmon_output(hsmon, &["man", "--list"])?;
    for verb in String::from_utf8_lossy(&list)
        .lines()
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        write_output(hsmon, &["man", verb], &man.join(format!("hsmon-{verb}.1")))?;
    }
    Ok(())
}
