//! `cargo xtask fresh-check`: the README's two commands, rehearsed on a
//! clean Debian 12 root instead of this (reused) machine.
//!
//! 1. A `debootstrap --variant=minbase` bookworm root with only what a fresh
//!    machine of this project's kind has: `ca-certificates`, `git`,
//!    `build-essential`, `python3`, and rustup with this machine's stable and
//!    nightly toolchains (`/root/.rustup` and the rustup proxies of
//!    `~/.cargo/bin`; no `cargo install`ed tools such as bpf-linker). It is
//!    cached under `target/fresh/base`; each run gets a fresh copy (an
//!    overlay on the cached base, or a full copy where overlayfs fails).
//! 2. The run's root gets `/proc`, `/sys` (with a new bpffs, tracefs and the
//!    cgroup hierarchies), `/dev` (with `/dev/pts`), a tmpfs `/run` (for
//!    `ip netns`) and the host's `resolv.conf` and apt sources.
//! 3. A fresh clone of this checkout's `HEAD` inside it, where it runs
//!    `cargo xtask run` (until `hsmon status` answers, then SIGINT and
//!    `hsmon cleanup`) and `CI=true bash .ci/run`.
//!
//! Everything runs in a private mount namespace. Each command enters the
//! root with `pivot_root` in a mount namespace of its own, not `chroot`:
//! the kernel refuses new user namespaces to a chrooted process, and the
//! tests' unprivileged `unshare -rn` peer needs one. xtask is the
//! processes' subreaper, and a guard kills every process it started
//! (daemons included) and unmounts the root on exit, also on failure and on
//! SIGINT/SIGTERM. Logs: `target/fresh/logs/`; summary:
//! `target/fresh/logs/summary.txt`.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::rootfs::{
    self, install_signal_handlers, interrupted, last_line_matching, private_mount_namespace,
    run_logged, spawn_logged, wait_child, Overlay,
};
use crate::util;

/// What a fresh machine of this project's kind has besides Debian's minimal
/// base (rustup and its toolchains are copied in separately).
const BASE_PACKAGES: &str = "ca-certificates,git,build-essential,python3";
/// PATH inside the root: rustup's proxies first, as on the real machine.
const ROOT_PATH: &str =
    "/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Local CA certificates of the machine (`update-ca-certificates` input).
const LOCAL_CAS: &str = "/usr/local/share/ca-certificates";
/// Where the clone lives inside the root.
const CLONE_IN_ROOT: &str = "/root/hsmon";
/// How long `cargo xtask run` may take until `hsmon status` answers.
const RUN_READY_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// CI's limit for one run of `.ci/run`.
const CI_TIMEOUT: Duration = Duration::from_secs(90 * 60);

/// What `cargo xtask fresh-check` was asked for.
#[derive(Debug, Default, Clone, Copy)]
pub struct Options {
    /// Build the cached base again even if one exists.
    pub rebuild_base: bool,
    /// Only `cargo xtask run`, not `.ci/run`.
    pub skip_ci: bool,
}

/// One step's outcome for the summary.
struct StepResult {
    name: &'static str,
    secs: f64,
    passed: bool,
    note: String,
}

/// Runs the rehearsal and prints the summary; fails if a step failed.
pub fn fresh_check(opts: Options) -> Result<()> {
    if !util::is_root() {
        bail!("fresh-check needs root (debootstrap, mount namespaces, pivot_root)");
    }
    let fresh = util::workspace_root().join("target").join("fresh");
    let logs = fresh.join("logs");
    if logs.exists() {
        std::fs::remove_dir_all(&logs).with_context(|| format!("clearing {}", logs.display()))?;
    }
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    private_mount_namespace()?;
    become_subreaper()?;
    install_signal_handlers();

    let mut results = Vec::new();
    let outcome = steps(&fresh, &logs, opts, &mut results);
    let summary = summary_text(&results, outcome.as_ref().err());
    println!("{summary}");
    let path = logs.join("summary.txt");
    std::fs::write(&path, &summary).with_context(|| format!("writing {}", path.display()))?;
    outcome?;
    if results.iter().any(|r| !r.passed) {
        bail!("fresh-check FAILED: see {}", logs.display());
    }
    Ok(())
}

/// The steps in order; each appends its result. Stops at the first step
/// that cannot be followed by the next.
fn steps(fresh: &Path, logs: &Path, opts: Options, results: &mut Vec<StepResult>) -> Result<()> {
    let base = fresh.join("base");
    let t = Instant::now();
    let cached = ensure_base(&base, logs, opts.rebuild_base);
    let ok = cached.is_ok();
    results.push(StepResult {
        name: "base root",
        secs: t.elapsed().as_secs_f64(),
        passed: ok,
        note: match &cached {
            Ok(true) => "cached".into(),
            Ok(false) => "debootstrap + toolchains".into(),
            Err(e) => format!("{e:#}"),
        },
    });
    cached?;

    let t = Instant::now();
    let run_dir = fresh.join("run");
    let root = FreshRoot::create(&base, &run_dir)?;
    let sha = clone_head(root.path(), logs)?;
    results.push(StepResult {
        name: "fresh root + clone",
        secs: t.elapsed().as_secs_f64(),
        passed: true,
        note: format!("{} ({}), HEAD {sha}", root.path().display(), root.kind),
    });

    let t = Instant::now();
    let run = run_agent(&root, logs);
    results.push(StepResult {
        name: "cargo xtask run",
        secs: t.elapsed().as_secs_f64(),
        passed: run.is_ok(),
        note: match &run {
            Ok(note) => note.clone(),
            Err(e) => format!("{e:#}"),
        },
    });
    if opts.skip_ci {
        return Ok(());
    }
    interrupted()?;

    let t = Instant::now();
    let ci = run_ci(&root, logs);
    results.push(StepResult {
        name: "CI=true bash .ci/run",
        secs: t.elapsed().as_secs_f64(),
        passed: ci.is_ok(),
        note: match &ci {
            Ok(note) => note.clone(),
            Err(e) => format!("{e:#}"),
        },
    });
    Ok(())
}

fn summary_text(results: &[StepResult], aborted: Option<&anyhow::Error>) -> String {
    let mut s = String::from("fresh-check summary\n");
    let mut total = 0.0;
    for r in results {
        total += r.secs;
        s.push_str(&format!(
            "  {:<22} {:>7.0} s  {}  {}\n",
            r.name,
            r.secs,
            if r.passed { "PASS" } else { "FAIL" },
            r.note
        ));
    }
    if let Some(e) = aborted {
        s.push_str(&format!("  aborted: {e:#}\n"));
    }
    let all = aborted.is_none() && results.iter().all(|r| r.passed);
    s.push_str(&format!(
        "  {:<22} {:>7.0} s  {}\n",
        "total",
        total,
        if all { "PASS" } else { "FAIL" }
    ));
    s
}

/// Builds the cached base unless it exists; returns whether it was cached.
fn ensure_base(base: &Path, logs: &Path, rebuild: bool) -> Result<bool> {
    rootfs::ensure_debootstrap(
        base,
        BASE_PACKAGES,
        &logs.join("debootstrap.log"),
        rebuild,
        |base| {
            rootfs::copy_apt_config(base)?;
            copy_rustup(base)
        },
    )
}

/// rustup's toolchains (`/root/.rustup`) and its proxies (the entries of
/// `~/.cargo/bin` that are rustup itself or links to it), nothing that
/// `cargo install` put there.
fn copy_rustup(base: &Path) -> Result<()> {
    let home = PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?);
    let rustup_home = std::env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".rustup"));
    let cargo_bin = util::cargo_bin_dir().context("no cargo bin directory")?;
    let root_home = base.join("root");
    println!(
        "fresh-check: copying {} (toolchains)",
        rustup_home.display()
    );
    util::run(
        Command::new("cp")
            .arg("-a")
            .arg(&rustup_home)
            .arg(root_home.join(".rustup")),
    )?;
    let bin = root_home.join(".cargo/bin");
    std::fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    let rustup = cargo_bin.join("rustup");
    std::fs::copy(&rustup, bin.join("rustup"))
        .with_context(|| format!("copying {}", rustup.display()))?;
    let mut proxies = Vec::new();
    for entry in std::fs::read_dir(&cargo_bin)
        .with_context(|| format!("listing {}", cargo_bin.display()))?
        .flatten()
    {
        let name = entry.file_name();
        if name == "rustup" {
            continue;
        }
        if is_rustup_proxy(&entry.path(), &rustup) {
            symlink("rustup", bin.join(&name))
                .with_context(|| format!("linking {}", name.to_string_lossy()))?;
            proxies.push(name.to_string_lossy().into_owned());
        }
    }
    proxies.sort();
    println!("fresh-check: rustup proxies: {}", proxies.join(" "));
    Ok(())
}

/// Whether `path` is rustup's proxy: a link to rustup or the same file.
fn is_rustup_proxy(path: &Path, rustup: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if let Ok(target) = std::fs::read_link(path) {
        return target.file_name().is_some_and(|n| n == "rustup");
    }
    match (std::fs::metadata(path), std::fs::metadata(rustup)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// In a forked child: a new mount namespace whose root is `root`
/// (`pivot_root(".", ".")` on a recursive bind of `root` onto itself, then
/// the old root detached). Unlike `chroot`, the process is then not
/// "chrooted" in the kernel's sense, so it may create user namespaces.
fn enter_root(root: &std::ffi::CStr) -> std::io::Result<()> {
    fn check(r: libc::c_long) -> std::io::Result<()> {
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
    let none = std::ptr::null::<libc::c_char>();
    // SAFETY: plain system calls on NUL-terminated strings that outlive them.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS).into())?;
        check(
            libc::mount(
                none,
                c"/".as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )
            .into(),
        )?;
        check(
            libc::mount(
                root.as_ptr(),
                root.as_ptr(),
                none,
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            )
            .into(),
        )?;
        check(libc::chdir(root.as_ptr()).into())?;
        check(libc::syscall(
            libc::SYS_pivot_root,
            c".".as_ptr(),
            c".".as_ptr(),
        ))?;
        check(libc::umount2(c".".as_ptr(), libc::MNT_DETACH).into())?;
        check(libc::chdir(c"/".as_ptr()).into())
    }
}

/// Makes xtask the subreaper of everything it starts: a daemon whose
/// parent exits (the agent behind `cargo xtask run`, a test's background
/// server) becomes xtask's child, so the guard can find and kill it.
fn become_subreaper() -> Result<()> {
    // SAFETY: prctl(2) with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error()).context("prctl(PR_SET_CHILD_SUBREAPER)");
    }
    Ok(())
}

/// Live (not zombie) descendants of `pid` ([`crate::procs::tree`]
/// without `pid` itself).
fn descendants_of(pid: u32) -> Vec<i32> {
    crate::procs::tree(pid)
        .into_iter()
        .skip(1)
        .filter(|(_, state)| *state != 'Z')
        .filter_map(|(p, _)| i32::try_from(p).ok())
        .collect()
}

/// The run's root: an overlay (or copy) of the base with the kernel
/// facilities mounted. On drop, every process inside is killed and the
/// mounts are removed.
struct FreshRoot {
    root: PathBuf,
    kind: &'static str,
    /// Unmounted (with everything mounted below it) after `Drop` killed
    /// every process inside.
    _overlay: Overlay,
}

impl FreshRoot {
    fn create(base: &Path, run_dir: &Path) -> Result<Self> {
        let overlay = Overlay::create(base, run_dir)?;
        let fresh = Self {
            root: overlay.path().to_path_buf(),
            kind: overlay.kind,
            _overlay: overlay,
        };
        fresh.mount_facilities()?;
        fresh.check_user_namespaces()?;
        Ok(fresh)
    }

    /// An unprivileged user inside the root can make a user and network
    /// namespace (`unshare -rn`), as on a real machine: the tests' ghost
    /// peer needs it, and a `chroot`ed process could not.
    fn check_user_namespaces(&self) -> Result<()> {
        let mut c = self.enter_cmd("/usr/bin/unshare");
        c.args(["-rn", "true"]);
        util::run(&mut c).context(
            "`unshare -rn true` inside the fresh root failed: user namespaces are not available there",
        )
    }

    fn path(&self) -> &Path {
        &self.root
    }

    fn mount_facilities(&self) -> Result<()> {
        let r = &self.root;
        let mount = |args: &[&str], target: &Path| -> Result<()> {
            std::fs::create_dir_all(target)
                .with_context(|| format!("creating {}", target.display()))?;
            util::run(Command::new("mount").args(args).arg(target))
        };
        mount(&["-t", "proc", "proc"], &r.join("proc"))?;
        mount(&["--bind", "/sys"], &r.join("sys"))?;
        mount(&["-t", "bpf", "bpf"], &r.join("sys/fs/bpf"))?;
        mount(&["-t", "tracefs", "tracefs"], &r.join("sys/kernel/tracing"))?;
        mount(&["--rbind", "/sys/fs/cgroup"], &r.join("sys/fs/cgroup"))?;
        mount(&["--rbind", "/dev"], &r.join("dev"))?;
        mount(&["-t", "tmpfs", "tmpfs"], &r.join("run"))?;
        let resolv = std::fs::read("/etc/resolv.conf").unwrap_or_default();
        let target = r.join("etc/resolv.conf");
        let _ = std::fs::remove_file(&target);
        std::fs::write(&target, resolv).with_context(|| format!("writing {}", target.display()))?;
        self.trust_local_cas()
    }

    /// The machine's local CA certificates (this workplace's egress proxy
    /// signs the registries' TLS with them; a fresh machine of this kind
    /// has them too), added to the root's trust store.
    fn trust_local_cas(&self) -> Result<()> {
        let Ok(entries) = std::fs::read_dir(LOCAL_CAS) else {
            return Ok(());
        };
        let dir = self.root.join(LOCAL_CAS.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut any = false;
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "crt") {
                std::fs::copy(e.path(), dir.join(e.file_name()))
                    .with_context(|| format!("copying {}", e.path().display()))?;
                any = true;
            }
        }
        if any {
            let mut c = self.enter_cmd("/usr/sbin/update-ca-certificates");
            c.stdout(Stdio::null());
            util::run(&mut c).context("update-ca-certificates in the fresh root")?;
        }
        Ok(())
    }

    /// A command that runs `program` (a path inside the root) in the root:
    /// in a mount namespace of its own whose root directory is the fresh
    /// root (see [`enter_root`]), with the clean environment of a root
    /// login shell.
    fn enter_cmd(&self, program: &str) -> Command {
        use std::os::unix::process::CommandExt;
        let mut c = Command::new(program);
        c.env_clear()
            .env("HOME", "/root")
            .env("USER", "root")
            .env("LOGNAME", "root")
            .env("SHELL", "/bin/bash")
            .env("LANG", "C.UTF-8")
            .env("PATH", ROOT_PATH)
            .current_dir("/")
            .stdin(Stdio::null());
        let root = std::ffi::CString::new(self.root.as_os_str().as_encoded_bytes());
        // SAFETY: `enter_root` only makes system calls (async-signal-safe)
        // on a string allocated before the fork.
        unsafe {
            c.pre_exec(move || match &root {
                Ok(root) => enter_root(root),
                Err(_) => Err(std::io::Error::from_raw_os_error(libc::EINVAL)),
            });
        }
        c
    }

    /// Pids of the processes this check started (its descendants; orphans
    /// are re-parented to xtask, the subreaper), zombies left out.
    fn pids(&self) -> Vec<i32> {
        descendants_of(std::process::id())
    }

    /// Pids of the processes inside the root whose command name is `comm`.
    fn pids_named(&self, comm: &str) -> Vec<i32> {
        self.pids()
            .into_iter()
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
            })
            .collect()
    }

    /// Kills every process this check started: SIGTERM, then SIGKILL.
    fn kill_all(&self) {
        for (signal, wait) in [(libc::SIGTERM, 3), (libc::SIGKILL, 2)] {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            eprintln!(
                "fresh-check: sending signal {signal} to {} processes in the root",
                pids.len()
            );
            for pid in pids {
                // SAFETY: kill(2) on a pid just read from /proc: a live
                // descendant of xtask, i.e. a process this check started.
                unsafe {
                    libc::kill(pid, signal);
                }
            }
            for _ in 0..wait * 10 {
                if self.pids().is_empty() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

impl Drop for FreshRoot {
    fn drop(&mut self) {
        // `_overlay` is dropped (unmounted) after this.
        self.kill_all();
    }
}

/// Clones this checkout's repository into the root and checks out HEAD;
/// returns HEAD's short hash. Uncommitted changes are not in the clone.
fn clone_head(root: &Path, logs: &Path) -> Result<String> {
    let ws = util::workspace_root();
    let git = |args: &[&str]| -> Result<String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(&ws)
            .args(args)
            .output()
            .with_context(|| format!("running git {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "git {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let sha = git(&["rev-parse", "HEAD"])?;
    let common = PathBuf::from(git(&[
        "rev-parse",
        "--path-format=absolute",
        "--git-common-dir",
    ])?);
    if !git(&["status", "--porcelain", "--untracked-files=no"])?.is_empty() {
        println!("fresh-check: note: uncommitted changes are not part of the clone (HEAD {sha})");
    }
    let dest = root.join(CLONE_IN_ROOT.trim_start_matches('/'));
    let log = logs.join("clone.log");
    run_logged(
        Command::new("git")
            .args(["clone", "--quiet", "--no-checkout"])
            .arg(&common)
            .arg(&dest),
        &log,
        Duration::from_secs(300),
    )?;
    run_logged(
        Command::new("git")
            .arg("-C")
            .arg(&dest)
            .args(["checkout", "--quiet", "--detach", &sha]),
        &log,
        Duration::from_secs(300),
    )?;
    Ok(sha.chars().take(7).collect())
}

/// `cargo xtask run` in the clone until `hsmon status` answers; then
/// SIGINT (a clean stop) and `hsmon cleanup` (its pins and links).
fn run_agent(root: &FreshRoot, logs: &Path) -> Result<String> {
    let log = logs.join("xtask-run.log");
    let mut c = root.enter_cmd("/bin/bash");
    c.args(["-c", &format!("cd {CLONE_IN_ROOT} && exec cargo xtask run")]);
    let mut child = spawn_logged(&mut c, &log)?;
    let started = Instant::now();
    let hsmon = format!("{CLONE_IN_ROOT}/target/release/hsmon");
    let ready = loop {
        if let Some(status) = child.try_wait().context("waiting for cargo xtask run")? {
            bail!(
                "cargo xtask run exited ({status}) before the agent answered; see {}",
                log.display()
            );
        }
        if rootfs::was_interrupted() || started.elapsed() > RUN_READY_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "no answer from `hsmon status` after {:.0} s",
                started.elapsed().as_secs_f64()
            );
        }
        if root.path().join(hsmon.trim_start_matches('/')).is_file() {
            let status_log = logs.join("hsmon-status.log");
            let mut s = root.enter_cmd(&hsmon);
            s.arg("status");
            if run_logged(&mut s, &status_log, Duration::from_secs(10)).is_ok() {
                break started.elapsed();
            }
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    // bash, cargo (`cargo run` execs) and xtask exec'd: the child is hsmon
    // itself; signal every hsmon in the root in case one of them forked.
    let mut agents = root.pids_named("hsmon");
    let own = i32::try_from(child.id()).context("pid")?;
    if !agents.contains(&own) {
        agents.push(own);
    }
    for pid in agents {
        // SAFETY: kill(2) on our child or a process inside our fresh root.
        unsafe {
            libc::kill(pid, libc::SIGINT);
        }
    }
    let stopped = wait_child(&mut child, Duration::from_secs(30))?;
    let mut cleanup = root.enter_cmd(&hsmon);
    cleanup.arg("cleanup");
    let cleaned = run_logged(
        &mut cleanup,
        &logs.join("hsmon-cleanup.log"),
        Duration::from_secs(30),
    );
    let Some(stopped) = stopped else {
        bail!(
            "the agent answered after {:.0} s but did not stop within 30 s of SIGINT",
            ready.as_secs_f64()
        );
    };
    if !stopped.success() {
        bail!(
            "the agent answered after {:.0} s but exited {stopped} on SIGINT",
            ready.as_secs_f64()
        );
    }
    cleaned.context("hsmon cleanup after the agent stopped")?;
    Ok(format!(
        "agent answered `hsmon status` after {:.0} s; stopped cleanly",
        ready.as_secs_f64()
    ))
}

/// `CI=true bash .ci/run` in the clone, with CI's time limit.
fn run_ci(root: &FreshRoot, logs: &Path) -> Result<String> {
    let log = logs.join("ci-run.log");
    let mut c = root.enter_cmd("/bin/bash");
    c.env("CI", "true").arg(format!("{CLONE_IN_ROOT}/.ci/run"));
    let mut child = spawn_logged(&mut c, &log)?;
    let status = wait_child(&mut child, CI_TIMEOUT)?;
    let last = last_line_matching(&log, "xtask test:").unwrap_or_default();
    match status {
        Some(s) if s.success() => Ok(last),
        Some(s) => bail!("exited {s}: {last} (see {})", log.display()),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("did not finish within {} s: {last}", CI_TIMEOUT.as_secs())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_first_uri() {
        use crate::rootfs::first_uri;
        let text = "Types: deb\n# comment\nURIs: http://mirror.example/debian http://b\nSuites: bookworm\n";
        assert_eq!(first_uri(text), Some("http://mirror.example/debian".into()));
        assert_eq!(first_uri("Types: deb\n"), None);
    }

    #[test]
    fn a_grandchild_is_a_descendant() {
        let mut sh = Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .expect("spawning sh");
        let sh_pid = i32::try_from(sh.id()).expect("pid");
        let child_of_sh = |pid: &i32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| crate::procs::state_and_ppid(&s))
                .is_some_and(|(_, ppid)| i32::try_from(ppid) == Ok(sh_pid))
        };
        let mut found = Vec::new();
        for _ in 0..100 {
            found = descendants_of(std::process::id());
            if found.iter().any(child_of_sh) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let sleep = found.iter().copied().find(child_of_sh);
        for pid in sleep.into_iter().chain([sh_pid]) {
            // SAFETY: kill(2) on this test's own child and grandchild.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        let _ = sh.wait();
        assert!(found.contains(&sh_pid), "{found:?}");
        assert!(sleep.is_some(), "sh's sleep among {found:?}");
    }

    #[test]
    fn summary_says_fail_when_a_step_failed() {
        let results = vec![
            StepResult {
                name: "a",
                secs: 1.0,
                passed: true,
                note: String::new(),
            },
            StepResult {
                name: "b",
                secs: 2.0,
                passed: false,
                note: "boom".into(),
            },
        ];
        let s = summary_text(&results, None);
        assert!(s.contains("b") && s.contains("FAIL  boom"), "{s}");
        assert!(
            s.lines()
                .last()
                .is_some_and(|l| l.contains("total") && l.contains("FAIL")),
            "{s}"
        );
        let ok = summary_text(&results[..1], None);
        assert!(
            ok.lines().last().is_some_and(|l| l.ends_with("PASS")),
            "{ok}"
        );
    }
}
