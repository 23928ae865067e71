//! Builds the eBPF object (`monitor-ebpf`, binary `hsmon-ebpf`) for the BPF
//! target with `aya-build`, so `hsmon` can embed it from `OUT_DIR`.
//!
//! With `AYA_BUILD_SKIP=1` the eBPF build is skipped and an empty object is
//! embedded instead (enough for unit tests and lints; `hsmon run` then says
//! the binary carries no eBPF object).

use std::path::PathBuf;

use anyhow::{anyhow, Context as _};

/// Name of the eBPF binary inside `OUT_DIR`.
const OBJECT: &str = "hsmon-ebpf";

fn main() -> anyhow::Result<()> {
    let skip = std::env::var("AYA_BUILD_SKIP")
        .map(|v| v == "1" || v.eq_ignore_ascii_case("true"))
        .unwrap_or(false);
    if skip {
        let out =
            PathBuf::from(std::env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
        let object = out.join(OBJECT);
        if !object.exists() {
            std::fs::write(&object, b"")
                .with_context(|| format!("writing a placeholder {}", object.display()))?;
        }
    }
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata failed")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name == "monitor-ebpf")
        .ok_or_else(|| anyhow!("the workspace has no monitor-ebpf package"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("monitor-ebpf's manifest path has no parent"))?;
    // aya-build watches only monitor-ebpf's directory; the programs also
    // compile monitor-common (the tracker, the map layouts), so a change
    // there must rebuild the object too, or the agent and the embedded
    // programs disagree on a map's value size.
    let common = metadata
        .packages
        .iter()
        .find(|p| p.name == "monitor-common")
        .ok_or_else(|| anyhow!("the workspace has no monitor-common package"))?;
    if let Some(dir) = common.manifest_path.parent() {
        println!("cargo:rerun-if-changed={dir}");
    }
    // aya-build prints the skip warning itself and returns early.
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "monitor-ebpf",
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
