//! The shipped Prometheus alert rules (`monitor/dist/hsmon.rules.yml`) are
//! valid (`promtool check rules`) and pass their unit tests
//! (`promtool test rules monitor/dist/hsmon.rules.test.yml`).
//!
//! promtool comes with Debian's `prometheus` package (`cargo xtask setup
//! --test-deps` installs it). Without it these tests skip loudly, except when
//! `CI` or `HSMON_REQUIRE_ROOT` is set (the full test gate): then they fail.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn dist() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dist")
}

/// `promtool`, or `None` (after a loud skip note) when it is missing and
/// missing is allowed.
fn promtool() -> Option<PathBuf> {
    common::required_tool(
        "promtool",
        "Debian's `prometheus` package: `cargo xtask setup --test-deps`",
        "alert rule tests",
    )
}

fn run_promtool(promtool: &Path, args: &[&str]) {
    let out = Command::new(promtool)
        .args(args)
        .current_dir(dist())
        .output()
        .unwrap_or_else(|e| panic!("running {} {args:?}: {e}", promtool.display()));
    assert!(
        out.status.success(),
        "promtool {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_are_valid() {
    let Some(promtool) = promtool() else { return };
    run_promtool(&promtool, &["check", "rules", "hsmon.rules.yml"]);
}

#[test]
fn alert_rules_pass_their_unit_tests() {
    let Some(promtool) = promtool() else { return };
    run_promtool(&promtool, &["test", "rules", "hsmon.rules.test.yml"]);
}

#[test]
fn alert_rules_cover_the_agreed_alerts() {
    let rules = std::fs::read_to_string(dist().join("hsmon.rules.yml")).expect("rules file");
    for alert in [
        "HsmonRenegotiationFlood",
        "HsmonEventsLost",
        "HsmonBanStorm",
        "HsmonAgentDown",
    ] {
        assert!(
            rules.contains(&format!("alert: {alert}")),
            "{alert} missing"
        );
    }
    for metric in [
        "hsmon_renegotiations_total",
        "hsmon_events_lost_total",
        "hsmon_bans_issued_total",
        "up{job=\"hsmon\"}",
    ] {
        assert!(rules.contains(metric), "{metric} not used");
    }
}
