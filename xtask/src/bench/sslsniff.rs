//! Makes bcc's `sslsniff` (Debian `bpfcc-tools`) runnable for the
//! side-by-side nginx benchmark on a kernel without its own headers.
//!
//! bcc compiles its BPF C text at start-up against the running kernel's
//! headers: `/lib/modules/$(uname -r)/{build,source}` or the `kheaders`
//! module. This machine's kernel (a Firecracker build) has neither, and no
//! Debian package carries its headers. What works, and what this module does
//! when `sslsniff` cannot find headers:
//!
//! 1. install Debian's `linux-headers-amd64` (the distribution kernel's
//!    headers: a different version, but sslsniff only uses helper calls and
//!    `pt_regs`, whose layout is the same);
//! 2. link them as `/lib/modules/$(uname -r)/build` and `source` for the
//!    benchmark's duration (removed afterwards, also when it fails: only
//!    links this module created are removed);
//! 3. write a copy of the `sslsniff` script with one change to its BPF text:
//!    `min((size_t)MAX_BUF_SIZE, (size_t)len)` becomes a conditional, because
//!    the newer headers' `min()` carries a compile-time type check that
//!    bcc's clang refuses ("cannot call non-static helper function").
//!
//! The benchmark then runs that copy (`HSMON_SSLSNIFF`), and its row says so.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::apt::{self, Apt};

/// The script Debian installs.
const SCRIPT: &str = "/usr/sbin/sslsniff-bpfcc";
/// The headers metapackage of Debian's kernel.
const HEADERS_PACKAGE: &str = "linux-headers-amd64";
/// The expression the newer headers' `min()` refuses, and its replacement.
const MIN_CALL: &str = "min((size_t)MAX_BUF_SIZE, (size_t)len)";
const MIN_REPLACEMENT: &str =
    "((size_t)len < (size_t)MAX_BUF_SIZE ? (size_t)len : (size_t)MAX_BUF_SIZE)";

/// What the benchmark needs to run `sslsniff`, and the links to remove when
/// it is dropped.
pub struct Prepared {
    /// The script to run with `/usr/bin/python3`.
    pub script: PathBuf,
    /// What was done to make it run (for the report's note).
    pub how: String,
    created_links: Vec<PathBuf>,
}

impl Drop for Prepared {
    fn drop(&mut self) {
        for link in self.created_links.drain(..) {
            if let Err(e) = std::fs::remove_file(&link) {
                eprintln!("warning: removing {}: {e}", link.display());
            }
        }
        let dir = modules_dir();
        // Only if it is now empty (it was created for the links).
        let _ = std::fs::remove_dir(&dir);
    }
}

/// `/lib/modules/$(uname -r)`.
fn modules_dir() -> PathBuf {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    Path::new("/lib/modules").join(release)
}

/// Prepares `sslsniff` in `work_dir`: the stock script when the kernel has
/// headers, otherwise Debian's headers linked in and the patched copy.
pub fn prepare(work_dir: &Path) -> Result<Prepared> {
    if !Path::new(SCRIPT).exists() {
        bail!("{SCRIPT} is not installed (package bpfcc-tools)");
    }
    let modules = modules_dir();
    let mut created_links = Vec::new();
    let mut how = Vec::new();
    if !modules.join("build").exists() {
        if apt::installed_version(HEADERS_PACKAGE).is_none() {
            println!("installing: {HEADERS_PACKAGE} (headers for bcc's sslsniff)");
            Apt::default()
                .install(&[HEADERS_PACKAGE])
                .with_context(|| format!("installing {HEADERS_PACKAGE}"))?;
        }
        let (build, source) = debian_headers()?;
        std::fs::create_dir_all(&modules)
            .with_context(|| format!("creating {}", modules.display()))?;
        for (name, target) in [("build", &build), ("source", &source)] {
            let link = modules.join(name);
            if link.symlink_metadata().is_ok() {
                continue;
            }
            std::os::unix::fs::symlink(target, &link)
                .with_context(|| format!("linking {} -> {}", link.display(), target.display()))?;
            created_links.push(link);
        }
        how.push(format!(
            "the running kernel has no headers: Debian's {} linked as {}/build for the run",
            build
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            modules.display()
        ));
    }
    let text = std::fs::read_to_string(SCRIPT).with_context(|| format!("reading {SCRIPT}"))?;
    let script = work_dir.join("sslsniff-bpfcc.py");
    let patched = if text.contains(MIN_CALL) {
        how.push(format!(
            "script copied with `{MIN_CALL}` written as a conditional (the headers' min() does not compile under bcc)"
        ));
        text.replace(MIN_CALL, MIN_REPLACEMENT)
    } else {
        text
    };
    std::fs::create_dir_all(work_dir)
        .with_context(|| format!("creating {}", work_dir.display()))?;
    std::fs::write(&script, patched).with_context(|| format!("writing {}", script.display()))?;
    Ok(Prepared {
        script,
        how: if how.is_empty() {
            "stock sslsniff".to_owned()
        } else {
            how.join("; ")
        },
        created_links,
    })
}

/// The newest `/usr/src/linux-headers-*-amd64` and its `-common` sibling.
fn debian_headers() -> Result<(PathBuf, PathBuf)> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/src")
        .context("listing /usr/src")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("linux-headers-") && n.ends_with("-amd64"))
        })
        .collect();
    found.sort_by_key(|p| version_key(p));
    let build = found
        .pop()
        .context("no /usr/src/linux-headers-*-amd64 after installing linux-headers-amd64")?;
    let name = build
        .file_name()
        .and_then(|n| n.to_str())
        .context("headers directory name")?;
    let common = build.with_file_name(format!("{}-common", name.trim_end_matches("-amd64")));
    if !common.is_dir() {
        bail!("{} has no {}", build.display(), common.display());
    }
    Ok((build, common))
}

/// Sort key of `linux-headers-6.1.0-50-amd64`: its numbers in order.
fn version_key(p: &Path) -> Vec<u64> {
    p.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// `python3 SCRIPT --help` exits 0: the script and bcc import.
pub fn check(prepared: &Prepared) -> Result<()> {
    let out = Command::new("/usr/bin/python3")
        .arg(&prepared.script)
        .arg("--help")
        .output()
        .context("running sslsniff --help")?;
    if !out.status.success() {
        bail!(
            "sslsniff --help failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn newest_headers_sort_last() {
        let mut v = [
            PathBuf::from("/usr/src/linux-headers-6.1.0-9-amd64"),
            PathBuf::from("/usr/src/linux-headers-6.1.0-50-amd64"),
            PathBuf::from("/usr/src/linux-headers-6.1.0-47-amd64"),
        ];
        v.sort_by_key(|p| version_key(p));
        assert_eq!(v[2], PathBuf::from("/usr/src/linux-headers-6.1.0-50-amd64"));
    }
}
