//! The shipped unit, `monitor/dist/hsmon.service`: `systemd-analyze verify`
//! runs clean on it (no output, exit 0), with `ExecStart` pointed at the
//! `hsmon` binary this build made (`/usr/bin/hsmon` does not exist here),
//! and it keeps the settings the README promises.
//!
//! Without `systemd-analyze` the verification skips loudly, except when `CI`
//! or `HSMON_REQUIRE_ROOT` is set (the full test gate): then it fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/hsmon.service")
}

fn unit_text() -> String {
    let p = unit_path();
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// `systemd-analyze`, or `None` (after a loud skip note) when it is missing
/// and missing is allowed.
fn systemd_analyze() -> Option<PathBuf> {
    common::required_tool(
        "systemd-analyze",
        "Debian's `systemd` package",
        "systemd unit verification",
    )
}

/// A directory of this test's, removed on drop (also on a failed assertion).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let p = std::env::temp_dir().join(format!("hsmon-unit-verify-{}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("creating {}: {e}", p.display()));
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn systemd_analyze_verify_is_clean() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let text = unit_text();
    let exec = "ExecStart=/usr/bin/hsmon run";
    assert_eq!(
        text.lines().filter(|l| *l == exec).count(),
        1,
        "the unit must have exactly one `{exec}` line"
    );
    let bin = env!("CARGO_BIN_EXE_hsmon");
    let dir = TempDir::new();
    let copy = dir.0.join("hsmon.service");
    std::fs::write(&copy, text.replace(exec, &format!("ExecStart={bin} run")))
        .expect("writing the unit copy");
    let out = Command::new(&analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap_or_else(|e| panic!("running {} verify: {e}", analyze.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim().is_empty() && stderr.trim().is_empty(),
        "systemd-analyze verify {} is not clean ({}):\n{stdout}\n{stderr}",
        copy.display(),
        out.status
    );

    // The check is real: an unknown key is reported.
    std::fs::write(
        &copy,
        text.replace(exec, &format!("ExecStart={bin} run\nWatchdogSecs=1s")),
    )
    .expect("writing the broken unit copy");
    let out = Command::new(&analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap_or_else(|e| panic!("running {} verify: {e}", analyze.display()));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("WatchdogSecs"),
        "systemd-analyze verify did not notice an unknown key: {out:?}"
    );
}

/// `Key=value` lines of the unit (comments and sections left out).
fn settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

#[test]
fn unit_keeps_the_promised_settings() {
    let s = settings(&unit_text());
    let get = |key: &str| -> Vec<&str> {
        s.iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    for (key, want) in [
        ("Type", "notify"),
        ("ExecStart", "/usr/bin/hsmon run"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Restart", "on-failure"),
        ("WatchdogSec", "30s"),
        ("RuntimeDirectory", "hsmon"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("ReadWritePaths", "-/sys/fs/bpf /run/hsmon"),
        (
            "RestrictAddressFamilies",
            "AF_UNIX AF_NETLINK AF_INET AF_INET6",
        ),
    ] {
        assert_eq!(get(key), [want], "{key}");
    }
    let caps = "CAP_BPF CAP_PERFMON CAP_NET_ADMIN";
    assert_eq!(get("CapabilityBoundingSet"), [caps]);
    assert_eq!(get("AmbientCapabilities"), [caps]);
}
