//! The Debian package (`cargo xtask deb`) installed on this machine with
//! `dpkg -i`: `hsmon --version` and `hsmon config check` (the packaged
//! default config, a conffile) work, every packaged file is where the README
//! says, and `dpkg --purge` leaves nothing behind (the binary, /etc/hsmon,
//! the unit, the rules, completions and man pages). The purge also runs when
//! the test fails. The test refuses to touch a host where an `hsmon` package,
//! /usr/bin/hsmon or /etc/hsmon already exists.
//!
//! The package is `$HSMON_DEB` (the test gate sets it), else the newest
//! `target/debian/hsmon_*.deb`.

use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tests::cmd::{output_within, run_ok};

/// Files the package installs.
const FILES: &[&str] = &[
    "/usr/bin/hsmon",
    "/lib/systemd/system/hsmon.service",
    "/etc/hsmon/hsmon.toml",
    "/usr/share/hsmon/hsmon.rules.yml",
    "/usr/share/bash-completion/completions/hsmon",
    "/usr/share/zsh/vendor-completions/_hsmon",
    "/usr/share/fish/vendor_completions.d/hsmon.fish",
    "/usr/share/man/man1/hsmon.1",
    "/usr/share/man/man1/hsmon-top.1",
];

/// The .deb to test.
fn package() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("HSMON_DEB").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debian");
    let newest = std::fs::read_dir(&dir)
        .with_context(|| format!("no {} (run `cargo xtask deb`)", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("hsmon_") && n.ends_with(".deb"))
        })
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    newest.with_context(|| {
        format!(
            "no hsmon_*.deb in {} (run `cargo xtask deb`)",
            dir.display()
        )
    })
}

fn installed() -> Result<bool> {
    let mut c = Command::new("dpkg-query");
    c.args(["-W", "-f=${Status}", "hsmon"]);
    let out = output_within(&mut c, Duration::from_secs(30))?;
    Ok(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("installed"))
}

/// Purges the package when dropped (the test installed it).
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let mut c = Command::new("dpkg");
        c.args(["--purge", "hsmon"]);
        if let Err(e) = run_ok(&mut c, Duration::from_secs(120)) {
            eprintln!("dpkg --purge hsmon: {e:#}");
        }
    }
}

fn check_installed() -> Result<()> {
    for f in FILES {
        ensure!(Path::new(f).is_file(), "{f} not installed");
    }
    let version = run_ok(
        Command::new("/usr/bin/hsmon").arg("--version"),
        Duration::from_secs(10),
    )?;
    ensure!(
        version.trim() == format!("hsmon {}", env!("CARGO_PKG_VERSION")),
        "hsmon --version: {version:?}"
    );
    let check = run_ok(
        Command::new("/usr/bin/hsmon").args(["config", "check"]),
        Duration::from_secs(10),
    )?;
    ensure!(check.trim() == "ok", "hsmon config check: {check:?}");
    let conffiles = run_ok(
        Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "hsmon"]),
        Duration::from_secs(30),
    )?;
    ensure!(
        conffiles.contains("/etc/hsmon/hsmon.toml"),
        "the config is not a conffile: {conffiles:?}"
    );
    // The packaged config is the embedded default.
    let default = run_ok(
        Command::new("/usr/bin/hsmon").args(["config", "default"]),
        Duration::from_secs(10),
    )?;
    let file = std::fs::read_to_string("/etc/hsmon/hsmon.toml")?;
    ensure!(
        file == default,
        "/etc/hsmon/hsmon.toml is not `hsmon config default`"
    );
    let unit = std::fs::read_to_string("/lib/systemd/system/hsmon.service")?;
    ensure!(unit.contains("ExecStart=/usr/bin/hsmon run"), "{unit}");
    Ok(())
}

#[test]
fn installs_runs_and_purges_cleanly() {
    if !tests::root::root_or_skip("deb") {
        return;
    }
    let result = (|| -> Result<()> {
        let deb = package()?;
        if installed()? || Path::new("/usr/bin/hsmon").exists() || Path::new("/etc/hsmon").exists()
        {
            bail!("an hsmon package, /usr/bin/hsmon or /etc/hsmon is already on this host: not touching it");
        }
        let guard = Installed;
        run_ok(
            Command::new("dpkg").arg("-i").arg(&deb),
            Duration::from_secs(120),
        )
        .context("dpkg -i")?;
        check_installed()?;
        drop(guard); // dpkg --purge
        ensure!(!installed()?, "still installed after the purge");
        for f in FILES {
            ensure!(!Path::new(f).exists(), "{f} left after the purge");
        }
        ensure!(
            !Path::new("/etc/hsmon").exists(),
            "/etc/hsmon left after the purge"
        );
        ensure!(
            !Path::new("/usr/share/hsmon").exists(),
            "/usr/share/hsmon left after the purge"
        );
        Ok(())
    })();
    if let Err(e) = result {
        panic!("{e:#}");
    }
}
