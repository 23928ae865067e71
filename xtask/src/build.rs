//! `cargo xtask build`: set up the toolchain, then build the `hsmon` binary
//! (its build script compiles the eBPF object with nightly and bpf-linker).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};

use crate::setup::{self, Options, Report};
use crate::util;

/// Runs setup (without test dependencies), then builds `monitor`.
pub fn build(release: bool) -> Result<Report> {
    let report = setup::setup(Options { test_deps: false })?;
    build_monitor(release)?;
    Ok(report)
}

/// `cargo build -p monitor [--release]` in the workspace root.
pub fn build_monitor(release: bool) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["build", "-p", "monitor"]);
    if release {
        cmd.arg("--release");
    }
    util::run(&mut cmd).context(
        "building hsmon failed: see the compiler output above \
         (eBPF build errors come from monitor's build script)",
    )
}

/// A `cargo` command run from the workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(util::workspace_root());
    cmd
}

/// Absolute path of the `hsmon` binary of the given profile, honouring
/// CARGO_TARGET_DIR and `build.target-dir`.
pub fn hsmon_path(release: bool) -> Result<PathBuf> {
    let root = util::workspace_root();
    let metadata = cargo_metadata::MetadataCommand::new()
        .manifest_path(root.join("Cargo.toml"))
        .no_deps()
        .exec()
        .context("`cargo metadata` failed: cannot find the target directory")?;
    let profile = if release { "release" } else { "debug" };
    Ok(metadata
        .target_directory
        .into_std_path_buf()
        .join(profile)
        .join("hsmon"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hsmon_path_is_absolute_in_the_target_dir() {
        let path = hsmon_path(true).expect("cargo metadata works in the workspace");
        assert!(path.is_absolute(), "{}", path.display());
        assert!(path.ends_with("release/hsmon"), "{}", path.display());
    }
}
