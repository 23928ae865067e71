//! `cargo xtask run`: set up, build release, then exec `hsmon run` as root
//! (through `sudo -E` when not root and sudo exists).

use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::build;
use crate::setup::TRACEFS;
use crate::util;

/// Builds and runs the agent with `args` after `hsmon run`; only returns on
/// error.
pub fn run(args: &[String]) -> Result<()> {
    let root = util::is_root();
    let sudo = util::find_in_path("sudo");
    if !root && sudo.is_none() {
        bail!("hsmon run needs root (CAP_BPF, CAP_NET_ADMIN): run `cargo xtask run` as root");
    }
    let report = build::build(true)?;
    let hsmon = build::hsmon_path(true)?;
    if !hsmon.is_file() {
        bail!("the build finished but {} does not exist", hsmon.display());
    }

    let mut cmd = match &sudo {
        Some(sudo) if !root => {
            if !report.tracefs_mounted {
                util::run(Command::new(sudo).args(["mount", "-t", "tracefs", "tracefs", TRACEFS]))
                    .context("could not mount tracefs through sudo")?;
            }
            let mut c = Command::new(sudo);
            c.arg("-E").arg(&hsmon);
            c
        }
        _ => Command::new(&hsmon),
    };
    cmd.arg("run").args(args);
    let line = util::describe(&cmd);
    if !args.iter().any(|a| a == "--no-persist") {
        eprintln!(
            "note: when hsmon stops, its programs stay attached and its maps (bans, counters) \
             stay pinned under /sys/fs/bpf/hsmon (state: /run/hsmon/state.json) so protection \
             continues; `target/release/hsmon cleanup` removes them, `-- --no-persist` leaves nothing"
        );
    }
    eprintln!("+ {line}");
    let err = cmd.exec();
    Err(err).with_context(|| format!("could not exec `{line}`"))
}
