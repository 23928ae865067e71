//! Process and environment helpers shared by every xtask command: who we run
//! as, where the workspace and cargo's bin directory are, and running child
//! processes with errors that say what failed.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// True when the effective user is root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// True when the `CI` environment variable is set to something non-empty.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// The workspace root: the parent of this crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Cargo's bin directory (`$CARGO_HOME/bin`, else `~/.cargo/bin`), where
/// `cargo install` puts bpf-linker.
pub fn cargo_bin_dir() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("CARGO_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(home).join("bin"));
    }
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(|home| PathBuf::from(home).join(".cargo").join("bin"))
}

/// Returns `path` with `dir` in front unless it is already one of its entries.
pub fn path_with_dir_first(path: Option<OsString>, dir: &Path) -> Result<OsString> {
    let mut entries: Vec<PathBuf> = path
        .as_deref()
        .map(|p| std::env::split_paths(p).collect())
        .unwrap_or_default();
    if !entries.iter().any(|e| e == dir) {
        entries.insert(0, dir.to_path_buf());
    }
    std::env::join_paths(entries).with_context(|| {
        format!(
            "cannot put {} on PATH (does it contain a ':'?)",
            dir.display()
        )
    })
}

/// Puts cargo's bin directory on this process's PATH, so that every child
/// (cargo builds, aya-build's nightly cargo, our own probes) finds bpf-linker.
/// Must run before any thread is spawned.
pub fn ensure_cargo_bin_on_path() -> Result<()> {
    let Some(dir) = cargo_bin_dir() else {
        eprintln!("warn: neither CARGO_HOME nor HOME is set; not adding ~/.cargo/bin to PATH");
        return Ok(());
    };
    let path = path_with_dir_first(std::env::var_os("PATH"), &dir)?;
    std::env::set_var("PATH", path);
    Ok(())
}

/// Looks `name` up in PATH like a shell would; returns the first executable
/// match.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// A command line as a human would type it: env overrides, program, arguments.
pub fn describe(cmd: &Command) -> String {
    let mut parts: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| v.map(|v| format!("{}={}", k.to_string_lossy(), v.to_string_lossy())))
        .collect();
    parts.push(cmd.get_program().to_string_lossy().into_owned());
    parts.extend(cmd.get_args().map(|a| {
        let a = a.to_string_lossy();
        if a.is_empty() || a.contains(char::is_whitespace) {
            format!("'{a}'")
        } else {
            a.into_owned()
        }
    }));
    parts.join(" ")
}

/// Runs `cmd` with inherited stdio, echoing it first; fails if it cannot be
/// started or exits non-zero.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = describe(cmd);
    eprintln!("+ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}` (is it installed and on PATH?)"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its trimmed stdout if it started and exited
/// with status 0; `None` otherwise. For "is this present?" checks.
pub fn probe(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Runs `cmd` quietly and returns whether it started and exited with status 0.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_gets_dir_in_front_once() {
        let dir = Path::new("/opt/cargo/bin");
        let p = path_with_dir_first(Some("/usr/bin:/bin".into()), dir).expect("join");
        assert_eq!(p, OsString::from("/opt/cargo/bin:/usr/bin:/bin"));
        let again = path_with_dir_first(Some(p.clone()), dir).expect("join");
        assert_eq!(again, p);
        let empty = path_with_dir_first(None, dir).expect("join");
        assert_eq!(empty, OsString::from("/opt/cargo/bin"));
    }

    #[test]
    fn probe_of_missing_program_is_none() {
        assert!(probe(&mut Command::new("/nonexistent/hsmon-xtask-probe")).is_none());
        assert!(!succeeds(&mut Command::new(
            "/nonexistent/hsmon-xtask-probe"
        )));
    }

    #[test]
    fn run_of_failing_program_says_what_failed() {
        let err = run(Command::new("false").arg("x y")).expect_err("false fails");
        assert!(err.to_string().contains("`false 'x y'` failed"), "{err}");
    }

    #[test]
    fn describe_shows_env_overrides() {
        let mut cmd = Command::new("cargo");
        cmd.env("LLVM_PREFIX", "/usr/lib/llvm-22")
            .args(["install", "bpf-linker"]);
        assert_eq!(
            describe(&cmd),
            "LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker"
        );
    }
}
