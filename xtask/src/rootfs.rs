//! Building blocks shared by the checks that run hsmon in a Debian 12 root
//! of their own (`cargo xtask fresh-check`, `cargo xtask systemd-check`):
//! a `debootstrap`ped base cached under `target/` (with a marker file once
//! complete), an overlay per run on top of it, a private mount namespace,
//! SIGINT/SIGTERM turned into a flag, and children run with their output in
//! log files and with time limits.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::apt::{self, Apt};
use crate::util;

/// The Debian release of the project's machines.
pub const SUITE: &str = "bookworm";
/// Debian mirror when the host's apt sources name none.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// Set by the SIGINT/SIGTERM handler: stop waiting and clean up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether SIGINT/SIGTERM/SIGHUP arrived since [`install_signal_handlers`].
pub fn was_interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Ensures `base` holds a `debootstrap --variant=minbase` root of [`SUITE`]
/// with `include` (comma-separated packages), then runs `finish` on it.
/// A `BASE.ok` marker is written only when all of that succeeded; without
/// it (or with `rebuild`) the base is built again from nothing. Installs
/// `debootstrap` when missing. Returns whether the cached base was used.
pub fn ensure_debootstrap(
    base: &Path,
    include: &str,
    log: &Path,
    rebuild: bool,
    finish: impl FnOnce(&Path) -> Result<()>,
) -> Result<bool> {
    let marker = base.with_extension("ok");
    if marker.is_file() && !rebuild {
        return Ok(true);
    }
    let _ = std::fs::remove_file(&marker);
    if base.exists() {
        std::fs::remove_dir_all(base).with_context(|| format!("removing {}", base.display()))?;
    }
    if apt::installed_version("debootstrap").is_none() {
        Apt::default().install(&["debootstrap"])?;
    }
    let mirror = host_mirror().unwrap_or_else(|| DEFAULT_MIRROR.to_string());
    println!(
        "debootstrap {SUITE} from {mirror} into {} (a few minutes)",
        base.display()
    );
    let mut c = Command::new("debootstrap");
    c.args(["--variant=minbase", &format!("--include={include}"), SUITE])
        .arg(base)
        .arg(&mirror);
    run_logged(&mut c, log, Duration::from_secs(30 * 60))?;
    finish(base)?;
    File::create(&marker).with_context(|| format!("creating {}", marker.display()))?;
    Ok(false)
}

/// The first `URIs:` of the host's deb822 sources, or the mirror of its
/// first `deb` line.
pub fn host_mirror() -> Option<String> {
    let deb822 = std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources").ok();
    if let Some(uri) = deb822.as_deref().and_then(first_uri) {
        return Some(uri);
    }
    let list = std::fs::read_to_string("/etc/apt/sources.list").ok()?;
    list.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("deb "))
        .find_map(|l| l.split_whitespace().find(|w| w.starts_with("http")))
        .map(str::to_string)
}

/// The first `URIs:` value of a deb822 sources file.
pub fn first_uri(deb822: &str) -> Option<String> {
    deb822
        .lines()
        .find_map(|l| l.trim().strip_prefix("URIs:"))
        .and_then(|v| v.split_whitespace().next())
        .map(str::to_string)
}

/// The host's apt sources and settings, so apt inside the root reaches the
/// same Debian archive (and its updates) as this machine.
pub fn copy_apt_config(base: &Path) -> Result<()> {
    let list = base.join("etc/apt/sources.list");
    if Path::new("/etc/apt/sources.list.d/debian.sources").is_file() {
        let _ = std::fs::remove_file(&list);
    }
    for dir in ["etc/apt/sources.list.d", "etc/apt/apt.conf.d"] {
        let host = Path::new("/").join(dir);
        let Ok(entries) = std::fs::read_dir(&host) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name_str = name.to_string_lossy();
            // Only Debian's own sources (others are disabled here) and apt
            // settings files (not the image's docker/packagekit hooks).
            let wanted = if dir.ends_with("sources.list.d") {
                name_str.ends_with(".sources") || name_str.ends_with(".list")
            } else {
                !name_str.starts_with("docker") && !name_str.contains("packagekit")
            };
            if !wanted || !entry.path().is_file() {
                continue;
            }
            let to = base.join(dir).join(&name);
            std::fs::copy(entry.path(), &to).with_context(|| {
                format!("copying {} to {}", entry.path().display(), to.display())
            })?;
        }
    }
    Ok(())
}

/// Makes this process's mounts private to it: nothing mounted for the
/// fresh root is seen on the host, and all of it disappears with the last
/// process of the namespace.
pub fn private_mount_namespace() -> Result<()> {
    // SAFETY: unshare(2) with CLONE_NEWNS; xtask has not started threads.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(std::io::Error::last_os_error()).context("unshare(CLONE_NEWNS)");
    }
    util::run(Command::new("mount").args(["--make-rprivate", "/"]))
}

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT/SIGTERM set [`INTERRUPTED`] (children still get the default
/// action: handlers are reset by exec).
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

pub fn interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// The last line of `path` that contains `needle`.
pub fn last_line_matching(path: &Path, needle: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .rev()
        .find(|l| l.contains(needle))
        .map(|l| l.trim().to_string())
}

/// Waits up to `timeout` for `child`; `None` if it still runs (or on an
/// interrupt, after which it is killed).
pub fn wait_child(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().context("waiting for a child")? {
            return Ok(Some(s));
        }
        if INTERRUPTED.load(Ordering::SeqCst) {
            let _ = child.kill();
            let _ = child.wait();
            bail!("interrupted");
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Spawns `cmd` with stdout and stderr appended to `log`.
pub fn spawn_logged(cmd: &mut Command, log: &Path) -> Result<Child> {
    let line = util::describe(cmd);
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let err = out.try_clone().context("duplicating the log file")?;
    eprintln!("+ {line}  (log: {})", log.display());
    cmd.stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("could not start `{line}`"))
}

/// Runs `cmd` to completion with its output in `log`; fails on a non-zero
/// exit or after `timeout`.
pub fn run_logged(cmd: &mut Command, log: &Path, timeout: Duration) -> Result<()> {
    let line = util::describe(cmd);
    let mut child = spawn_logged(cmd, log)?;
    match wait_child(&mut child, timeout)? {
        Some(s) if s.success() => Ok(()),
        Some(s) => bail!("`{line}` failed ({s}); see {}", log.display()),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{line}` did not finish within {} s", timeout.as_secs())
        }
    }
}

/// An overlay (or, where overlayfs fails, a full copy) of a cached base at
/// `RUN_DIR/root`; unmounted on drop (after its user killed what runs in it).
pub struct Overlay {
    root: PathBuf,
    /// "overlay" or "copy".
    pub kind: &'static str,
}

impl Overlay {
    /// Removes the last run's `run_dir` (unmounting what is left of it) and
    /// creates a fresh root there.
    pub fn create(base: &Path, run_dir: &Path) -> Result<Self> {
        if run_dir.exists() {
            let _ = Command::new("umount")
                .arg("-R")
                .arg(run_dir.join("root"))
                .status();
            std::fs::remove_dir_all(run_dir)
                .with_context(|| format!("removing the last run's {}", run_dir.display()))?;
        }
        let root = run_dir.join("root");
        let upper = run_dir.join("upper");
        let work = run_dir.join("work");
        for d in [&root, &upper, &work] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let overlay = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!(
                "lowerdir={},upperdir={},workdir={}",
                base.display(),
                upper.display(),
                work.display()
            ))
            .arg(&root)
            .status();
        let kind = if overlay.is_ok_and(|s| s.success()) {
            "overlay"
        } else {
            println!("overlayfs failed; copying the base instead");
            util::run(
                Command::new("cp")
                    .arg("-a")
                    .arg(format!("{}/.", base.display()))
                    .arg(&root),
            )?;
            "copy"
        };
        Ok(Self { root, kind })
    }

    /// The root directory.
    pub fn path(&self) -> &Path {
        &self.root
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let status = Command::new("umount").arg("-R").arg(&self.root).status();
        if !status.is_ok_and(|s| s.success()) {
            let _ = Command::new("umount")
                .arg("-R")
                .arg("-l")
                .arg(&self.root)
                .status();
        }
    }
}

/// Waits until `f` returns `Some`, polling every `every`, at most `timeout`
/// (and not after an interrupt).
pub fn poll<T>(timeout: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline || was_interrupted() {
            return None;
        }
        std::thread::sleep(every);
    }
}
