//! `cargo xtask systemd-check`: the Debian package under a real systemd.
//!
//! PID 1 of this project's machines is not systemd, so the packaged unit
//! is proven in a container whose PID 1 is: `systemd-nspawn --boot` on a
//! minimal Debian 12 root (`debootstrap --variant=minbase` with systemd,
//! dbus, iproute2, openssl, python3, procps and bpftool; cached in
//! `target/systemd/base`, an overlay per run). The container gets its own
//! network namespace (`--private-network`: nothing is added to the host's
//! interfaces; inside it a veth pair to a peer namespace at 10.203.0.0/24),
//! a bpffs of its own at `/sys/fs/bpf`, CAP_BPF/CAP_PERFMON/CAP_NET_ADMIN
//! (and CAP_SYS_RAWIO, so systemd mounts tracefs at boot as on a host) on
//! top of nspawn's defaults, `bpf` and `perf_event_open` added to nspawn's
//! seccomp allow-list, and a cgroup of its own in the host's cgroup2
//! hierarchy. It installs the `.deb` of `cargo xtask deb` and runs
//! the checks of issue 15, one PASS/FAIL line each with its evidence
//! (`target/systemd/logs/summary.txt`; every command run in the container
//! and its output in `commands.log`, the boot console in `console.log`).
//!
//! Everything runs in a private mount namespace; on exit (also on failure
//! and SIGINT/SIGTERM) the container is halted (killed if it does not halt),
//! and the bpffs, the overlay and the cgroups are removed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::apt::{self, Apt};
use crate::rootfs::{self, Overlay};
use crate::{deb, util};

/// Debian packages `systemd-check` needs on the host (also in
/// `setup::TEST_PACKAGES`).
pub const SYSTEMD_CHECK_PACKAGES: &[&str] = &["systemd-container", "debootstrap"];
/// The container's packages on top of Debian's minimal base.
const BASE_PACKAGES: &str = "systemd,systemd-sysv,dbus,iproute2,openssl,python3,procps,bpftool";
/// The container's machine name and cgroup: this prefix and xtask's pid
/// (two checks from two worktrees may run at once).
const MACHINE: &str = "hsmon-sdcheck";
/// PATH inside the container.
const CT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The container's address on its veth, where the TLS server listens.
const SERVER: &str = "10.203.0.1";
/// The peer namespace's address: the TLS client, the banned peer.
const PEER: &str = "10.203.0.2";
/// The TLS server's port.
const PORT: u16 = 4433;
/// The unit's `WatchdogSec`.
const WATCHDOG_SEC: u64 = 30;

/// What `cargo xtask systemd-check` was asked for.
#[derive(Debug, Default, Clone, Copy)]
pub struct Options {
    /// Build the cached Debian root again.
    pub rebuild_base: bool,
}

/// One check's outcome.
struct Outcome {
    name: String,
    secs: f64,
    passed: bool,
    evidence: String,
}

/// Builds the packages, boots the container, runs the checks, prints and
/// writes the summary; fails if a check failed.
pub fn systemd_check(opts: Options) -> Result<()> {
    if !util::is_root() {
        bail!("systemd-check needs root (debootstrap, mounts, systemd-nspawn)");
    }
    let started = Instant::now();
    let dir = util::workspace_root().join("target").join("systemd");
    let logs = dir.join("logs");
    if logs.exists() {
        std::fs::remove_dir_all(&logs).with_context(|| format!("clearing {}", logs.display()))?;
    }
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let missing: Vec<&str> = SYSTEMD_CHECK_PACKAGES
        .iter()
        .copied()
        .filter(|p| apt::installed_version(p).is_none())
        .collect();
    Apt::default().install(&missing)?;
    let debs = packages(&dir)?;
    rootfs::private_mount_namespace()?;
    rootfs::install_signal_handlers();

    let mut out = Vec::new();
    let res = run(&dir, &logs, &debs, opts, &mut out);
    let text = summary(&out, res.as_ref().err(), started.elapsed());
    println!("{text}");
    let path = logs.join("summary.txt");
    std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    res?;
    if out.iter().any(|o| !o.passed) {
        bail!("systemd-check FAILED: see {}", logs.display());
    }
    Ok(())
}

/// The package of `cargo xtask deb` and the same package with a higher
/// Debian revision (the upgrade).
struct Debs {
    first: PathBuf,
    bumped: PathBuf,
}

fn packages(dir: &Path) -> Result<Debs> {
    // cargo-deb deletes target/debian's other packages when it builds one.
    let built = deb::deb()?;
    let first = dir.join("hsmon.deb");
    std::fs::copy(&built, &first).with_context(|| format!("copying {}", built.display()))?;
    let bumped = dir.join("hsmon-bumped.deb");
    let mut c = crate::build::cargo();
    c.args(["deb", "-p", "monitor", "--no-build", "--no-strip"])
        .args(["--deb-revision", "2", "-o"])
        .arg(&bumped);
    util::run(c.stdout(Stdio::null())).context("building the version-bumped package")?;
    Ok(Debs { first, bumped })
}

fn summary(out: &[Outcome], aborted: Option<&anyhow::Error>, total: Duration) -> String {
    let mut s = String::from("systemd-check summary\n");
    for o in out {
        let _ = writeln!(
            s,
            "{} {:<22} {:>5.1} s  {}",
            if o.passed { "PASS" } else { "FAIL" },
            o.name,
            o.secs,
            o.evidence
        );
    }
    if let Some(e) = aborted {
        let _ = writeln!(s, "FAIL aborted: {e:#}");
    }
    let all = aborted.is_none() && !out.is_empty() && out.iter().all(|o| o.passed);
    let _ = writeln!(
        s,
        "{} total {:.0} s ({} of {} checks passed)",
        if all { "PASS" } else { "FAIL" },
        total.as_secs_f64(),
        out.iter().filter(|o| o.passed).count(),
        out.len()
    );
    s
}

/// Runs `f` as the check `name`: prints its line at once and records it.
/// After SIGINT/SIGTERM no check runs (and none is recorded).
fn check(out: &mut Vec<Outcome>, name: &str, f: impl FnOnce() -> Result<String>) -> bool {
    if rootfs::was_interrupted() {
        return false;
    }
    let t = Instant::now();
    let r = f();
    let o = Outcome {
        name: name.to_string(),
        secs: t.elapsed().as_secs_f64(),
        passed: r.is_ok(),
        evidence: match r {
            Ok(e) => e,
            Err(e) => format!("{e:#}"),
        },
    };
    println!(
        "{} {:<22} {:>5.1} s  {}",
        if o.passed { "PASS" } else { "FAIL" },
        o.name,
        o.secs,
        o.evidence
    );
    let passed = o.passed;
    out.push(o);
    passed
}

fn run(dir: &Path, logs: &Path, debs: &Debs, opts: Options, out: &mut Vec<Outcome>) -> Result<()> {
    let base = dir.join("base");
    let t = Instant::now();
    let cached = rootfs::ensure_debootstrap(
        &base,
        BASE_PACKAGES,
        &logs.join("debootstrap.log"),
        opts.rebuild_base,
        |_| Ok(()),
    )?;
    let ct = Container::boot(&base, &dir.join("run"), logs)?;
    out.push(Outcome {
        name: "container boot".into(),
        secs: t.elapsed().as_secs_f64(),
        passed: true,
        evidence: format!(
            "{} base; systemd {} is PID 1 ({}), {}",
            if cached { "cached" } else { "new debootstrap" },
            ct.sh_ok("systemctl --version | head -1 | cut -d' ' -f2")?,
            ct.sh_ok("systemctl is-system-running || true")?,
            ct.overlay_kind
        ),
    });
    for (deb, name) in [
        (&debs.first, "hsmon.deb"),
        (&debs.bumped, "hsmon-bumped.deb"),
    ] {
        let to = ct.root().join("root").join(name);
        std::fs::copy(deb, &to).with_context(|| format!("copying {}", deb.display()))?;
    }
    ct.sh_ok(&network_script())
        .context("the container's veth pair and TLS server")?;
    Checks { ct: &ct, out }.all();
    rootfs::interrupted()
}

/// The veth pair (container 10.203.0.1 <-> namespace `peer` 10.203.0.2),
/// a certificate and a TLS 1.2 server that allows client renegotiation
/// (a transient unit, so systemd stops it with the container).
fn network_script() -> String {
    format!(
        "set -e
ip link set lo up
ip netns add peer
ip link add hsv0 type veth peer name hsv1 netns peer
ip addr add {SERVER}/24 dev hsv0
ip link set hsv0 up
ip -n peer addr add {PEER}/24 dev hsv1
ip -n peer link set hsv1 up
ip -n peer link set lo up
openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=sdcheck -days 2 \
  -keyout /root/key.pem -out /root/cert.pem 2>/dev/null
systemd-run --unit=tls-server --quiet /bin/sh -c 'sleep infinity | openssl s_server \
  -accept {PORT} -cert /root/cert.pem -key /root/key.pem -tls1_2 -client_renegotiation >/dev/null'
for i in $(seq 1 50); do ss -Hltn | grep -q ':{PORT} ' && exit 0; sleep 0.1; done
echo 'the TLS server does not listen' >&2; exit 1"
    )
}

/// The booted container; halted and every mount and cgroup it used removed
/// on drop.
struct Container {
    nspawn: Child,
    /// The container's PID 1 (host pid).
    leader: i32,
    bpffs: PathBuf,
    cgroups: Vec<PathBuf>,
    logs: PathBuf,
    /// "overlay" or "copy".
    overlay_kind: &'static str,
    run_dir: PathBuf,
    /// Unmounted last (then `run_dir` is removed).
    overlay: Option<Overlay>,
}

impl Container {
    fn boot(base: &Path, run_dir: &Path, logs: &Path) -> Result<Self> {
        let bpffs = run_dir.with_extension("bpffs");
        if bpffs.exists() {
            let _ = Command::new("umount").arg("-l").arg(&bpffs).status();
            let _ = std::fs::remove_dir(&bpffs);
        }
        let overlay = Overlay::create(base, run_dir)?;
        std::fs::create_dir_all(&bpffs).with_context(|| format!("creating {}", bpffs.display()))?;
        util::run(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&bpffs))
            .context("mounting a bpffs for the container")?;
        // nspawn keeps its locks and mount propagation directory here: a
        // tmpfs of this mount namespace, gone with it.
        let nspawn_run = Path::new("/run/systemd/nspawn");
        std::fs::create_dir_all(nspawn_run)
            .with_context(|| format!("creating {}", nspawn_run.display()))?;
        util::run(
            Command::new("mount")
                .args(["-t", "tmpfs", "tmpfs"])
                .arg(nspawn_run),
        )?;
        let unified = cgroup2_mount().context("no cgroup2 hierarchy is mounted")?;
        let machine = format!("{MACHINE}-{}", std::process::id());
        let cg = unified.join(&machine);
        // nspawn mirrors the cgroup into the named `systemd` v1 hierarchy
        // of a hybrid host.
        let mut cgroups = vec![cg.clone()];
        let v1 = Path::new("/sys/fs/cgroup/systemd");
        if v1 != unified && v1.is_dir() {
            cgroups.push(v1.join(&machine));
        }
        // Cgroups of earlier runs that were killed before cleaning up (a
        // cgroup with processes in it, a running check's, stays).
        for parent in [unified.as_path(), v1] {
            for stale in std::fs::read_dir(parent).into_iter().flatten().flatten() {
                let name = stale.file_name();
                if name.to_string_lossy().starts_with(MACHINE) {
                    remove_cgroup(&stale.path(), true);
                }
            }
        }
        std::fs::create_dir_all(&cg).with_context(|| format!("creating {}", cg.display()))?;
        let console = logs.join("console.log");
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec \"$@\"",
                cg.display()
            ))
            .arg("sh")
            .arg("systemd-nspawn")
            .args(["--boot", "--directory"])
            .arg(overlay.path())
            .args([
                &format!("--machine={machine}"),
                "--register=no",
                "--keep-unit",
                "--private-network",
                // CAP_SYS_RAWIO: as on a host, systemd's
                // sys-kernel-tracing.mount (ConditionCapability=) mounts
                // tracefs at boot.
                "--capability=CAP_BPF,CAP_PERFMON,CAP_NET_ADMIN,CAP_SYS_RAWIO",
                // nspawn's seccomp allow-list lacks these two (a host has
                // no such filter): without them map creation and the
                // tracepoint attach fail with EPERM.
                "--system-call-filter=bpf perf_event_open",
                "--resolv-conf=off",
                "--timezone=off",
                "--link-journal=no",
                "--console=pipe",
            ])
            .arg(format!("--bind={}:/sys/fs/bpf", bpffs.display()))
            .env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")
            .stdin(Stdio::null());
        let nspawn = rootfs::spawn_logged(&mut c, &console)?;
        let mut ct = Self {
            nspawn,
            leader: 0,
            bpffs,
            cgroups,
            logs: logs.to_path_buf(),
            overlay_kind: overlay.kind,
            run_dir: run_dir.to_path_buf(),
            overlay: Some(overlay),
        };
        let nspawn_pid = i32::try_from(ct.nspawn.id()).context("pid")?;
        ct.leader = rootfs::poll(Duration::from_secs(30), Duration::from_millis(200), || {
            container_init(nspawn_pid)
        })
        .with_context(|| format!("systemd-nspawn started no PID 1; see {}", console.display()))?;
        let state = rootfs::poll(Duration::from_secs(90), Duration::from_millis(500), || {
            let s = ct
                .sh("systemctl is-system-running", Duration::from_secs(10))
                .ok()?;
            let s = s.stdout.trim().to_string();
            matches!(s.as_str(), "running" | "degraded").then_some(s)
        });
        if state.is_none() {
            bail!(
                "the container's systemd did not finish booting within 90 s; see {}",
                console.display()
            );
        }
        Ok(ct)
    }

    fn root(&self) -> &Path {
        // Only `Drop` takes the overlay.
        self.overlay.as_ref().map_or(&self.run_dir, Overlay::path)
    }

    /// Runs `script` with bash inside the container (all its namespaces,
    /// a clean environment); logs it and its output in `commands.log`.
    fn sh(&self, script: &str, timeout: Duration) -> Result<Out> {
        let out_file = self.logs.join("last.out");
        let err_file = self.logs.join("last.err");
        let mut c = Command::new("nsenter");
        c.arg(format!("--target={}", self.leader))
            .args(["-m", "-u", "-i", "-n", "-p", "-C", "-r", "-w", "--"])
            .args(["env", "-i", &format!("PATH={CT_PATH}"), "HOME=/root"])
            .args(["LANG=C.UTF-8", "/bin/bash", "-c"])
            .arg(script)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_file).context("stdout file")?)
            .stderr(std::fs::File::create(&err_file).context("stderr file")?);
        let t = Instant::now();
        let mut child = c.spawn().context("starting nsenter")?;
        let status = rootfs::wait_child(&mut child, timeout)?;
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let out = Out {
            code: status.and_then(|s| s.code()),
            stdout: std::fs::read_to_string(&out_file).unwrap_or_default(),
            stderr: std::fs::read_to_string(&err_file).unwrap_or_default(),
        };
        let mut log = format!(
            "$ {script}\n# exit {:?} after {:.1} s\n{}{}",
            out.code,
            t.elapsed().as_secs_f64(),
            out.stdout,
            out.stderr
        );
        if !log.ends_with('\n') {
            log.push('\n');
        }
        append(&self.logs.join("commands.log"), &log);
        Ok(out)
    }

    /// [`Self::sh`] that must exit 0 within 60 s; returns trimmed stdout.
    fn sh_ok(&self, script: &str) -> Result<String> {
        let o = self.sh(script, Duration::from_secs(60))?;
        if o.code != Some(0) {
            bail!(
                "`{}` exited {:?}: {}",
                first_line(script),
                o.code,
                last_lines(&format!("{}{}", o.stdout, o.stderr), 3)
            );
        }
        Ok(o.stdout.trim().to_string())
    }

    /// The agent's main pid as systemd sees it (0 when none).
    fn main_pid(&self) -> Result<u32> {
        let s = self.sh_ok("systemctl show -p MainPID --value hsmon")?;
        s.parse().with_context(|| format!("MainPID {s:?}"))
    }

    /// Whether a TCP connect from the peer namespace to the TLS server
    /// succeeds within `secs`.
    fn peer_connects(&self, secs: f64) -> Result<bool> {
        let o = self.sh(
            &format!(
                "ip netns exec peer timeout {secs} bash -c 'exec 3<>/dev/tcp/{SERVER}/{PORT}'"
            ),
            Duration::from_secs(30),
        )?;
        Ok(o.code == Some(0))
    }

    fn halt(&mut self) {
        if self.nspawn.try_wait().ok().flatten().is_some() {
            return;
        }
        // SAFETY: kill(2) on our own child (systemd-nspawn): SIGTERM asks it
        // to halt the container.
        unsafe {
            libc::kill(self.nspawn.id() as i32, libc::SIGTERM);
        }
        if wait_quiet(&mut self.nspawn, Duration::from_secs(30)) {
            return;
        }
        eprintln!("systemd-check: the container did not halt within 30 s; killing it");
        if self.leader > 0 {
            // SAFETY: the container's PID 1, found as our child's child;
            // killing it ends every process of its pid namespace.
            unsafe {
                libc::kill(self.leader, libc::SIGKILL);
            }
        }
        if !wait_quiet(&mut self.nspawn, Duration::from_secs(10)) {
            let _ = self.nspawn.kill();
            let _ = self.nspawn.wait();
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.halt();
        let st = Command::new("umount").arg(&self.bpffs).status();
        if !st.is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.bpffs).status();
        }
        let _ = std::fs::remove_dir(&self.bpffs);
        for c in &self.cgroups {
            remove_cgroup(c, false);
        }
        drop(self.overlay.take());
        if let Err(e) = std::fs::remove_dir_all(&self.run_dir) {
            eprintln!(
                "systemd-check: could not remove {}: {e}",
                self.run_dir.display()
            );
        }
    }
}

/// Waits up to `timeout` for `child` without failing on an interrupt
/// (used while cleaning up); true when it exited.
fn wait_quiet(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// A command's result inside the container.
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(text.as_bytes());
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// Where the cgroup2 hierarchy is mounted (`/sys/fs/cgroup/unified` on a
/// hybrid host, `/sys/fs/cgroup` on a unified one).
fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, target, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(target))
    })
}

/// Removes a cgroup directory and the ones below it, deepest first (a
/// cgroup with processes stays, and is reported unless `quiet`).
fn remove_cgroup(dir: &Path, quiet: bool) {
    if !dir.is_dir() {
        return;
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path(), quiet);
            }
        }
    }
    if let Err(e) = std::fs::remove_dir(dir) {
        if !quiet {
            eprintln!(
                "systemd-check: could not remove cgroup {}: {e}",
                dir.display()
            );
        }
    }
}

/// The child of `nspawn` that is PID 1 of its own pid namespace.
fn container_init(nspawn: i32) -> Option<i32> {
    let entries = std::fs::read_dir("/proc").ok()?;
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                return false;
            };
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(str::trim)
                    .map(str::to_string)
            };
            field("PPid:").is_some_and(|p| p == nspawn.to_string())
                && field("NSpid:").is_some_and(|n| n.split_whitespace().last() == Some("1"))
        })
}

/// The checks, in the issue's order; each needs the state the ones before
/// it left.
struct Checks<'a> {
    ct: &'a Container,
    out: &'a mut Vec<Outcome>,
}

impl Checks<'_> {
    fn all(&mut self) {
        let ct = self.ct;
        if !check(self.out, "dpkg -i", || install(ct)) {
            return;
        }
        if !check(self.out, "systemctl start", || start(ct)) {
            return;
        }
        check(self.out, "TLS counted + cap", || traffic(ct));
        check(self.out, "journalctl -u hsmon", || journal(ct));
        check(self.out, "systemctl reload", || reload(ct));
        check(self.out, "kill -9 with a ban", || kill9(ct));
        check(self.out, "watchdog (SIGSTOP)", || watchdog(ct));
        check(self.out, "stop / restart", || stop_restart(ct));
        check(self.out, "systemd-analyze security", || security(ct));
        let caps = match unit_caps(ct) {
            Ok(caps) => caps,
            Err(e) => {
                check(self.out, "unit capabilities", || Err(e));
                Vec::new()
            }
        };
        for cap in &caps {
            check(self.out, &format!("without {cap}"), || {
                without_cap(ct, cap, &caps)
            });
        }
        check(self.out, "upgrade keeps bans", || upgrade(ct));
        check(self.out, "dpkg --purge", || purge(ct));
    }
}

/// The capabilities the installed unit grants (its `CapabilityBoundingSet=`).
fn unit_caps(ct: &Container) -> Result<Vec<String>> {
    let line = ct.sh_ok("grep '^CapabilityBoundingSet=' /lib/systemd/system/hsmon.service")?;
    let caps: Vec<String> = line
        .trim_start_matches("CapabilityBoundingSet=")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    ensure!(!caps.is_empty(), "the unit lists no capabilities: {line}");
    Ok(caps)
}

fn install(ct: &Container) -> Result<String> {
    ct.sh_ok("dpkg -i /root/hsmon.deb")?;
    let unit = ct.sh_ok("systemctl cat hsmon | head -1")?;
    let enabled = ct
        .sh("systemctl is-enabled hsmon", Duration::from_secs(20))?
        .stdout
        .trim()
        .to_string();
    let active = ct
        .sh("systemctl is-active hsmon", Duration::from_secs(20))?
        .stdout
        .trim()
        .to_string();
    // Documented: the package neither enables nor starts the service.
    ensure!(
        enabled == "disabled" && active == "inactive",
        "after dpkg -i: is-enabled {enabled}, is-active {active} (the README says the package \
         neither enables nor starts it)"
    );
    ct.sh_ok("systemctl enable hsmon 2>&1")?;
    let now = ct.sh_ok("systemctl is-enabled hsmon")?;
    Ok(format!(
        "{unit}; after dpkg -i: {enabled}/{active} as documented; systemctl enable -> {now}"
    ))
}

fn start(ct: &Container) -> Result<String> {
    let t = Instant::now();
    let o = ct.sh(
        "systemctl start hsmon && hsmon status --json",
        Duration::from_secs(120),
    )?;
    let took = t.elapsed().as_secs_f64();
    if o.code != Some(0) {
        let log = ct
            .sh(
                "journalctl -u hsmon --no-pager | tail -5",
                Duration::from_secs(20),
            )?
            .stdout;
        bail!(
            "systemctl start / hsmon status exited {:?}: {} | journal: {}",
            o.code,
            last_lines(&o.stderr, 2),
            last_lines(&log, 5)
        );
    }
    let status: serde_json::Value =
        serde_json::from_str(o.stdout.trim()).context("hsmon status --json is not JSON")?;
    let active = ct.sh_ok("systemctl is-active hsmon")?;
    ensure!(active == "active", "is-active says {active}");
    let hooks = status["hooks"].as_array().map_or(0, Vec::len);
    ensure!(hooks > 0, "no hooks attached: {status}");
    Ok(format!(
        "start returned after {took:.1} s and the first `hsmon status` on /run/hsmon/hsmon.sock \
         answered (Type=notify: READY=1 only once it listens): pid {}, {hooks} hooks, \
         {} tracepoint(s); is-active {active}",
        status["pid"],
        status["tracepoints"].as_array().map_or(0, Vec::len)
    ))
}

/// A TLS 1.2 client in the peer namespace that asks for `n` renegotiations
/// a second apart; returns its output.
fn renegotiate(ct: &Container, n: usize) -> Result<Out> {
    ct.sh(
        &format!(
            "(sleep 1; for i in $(seq 1 {n}); do echo R; sleep 1; done; sleep 1) | \
             ip netns exec peer timeout 30 openssl s_client -connect {SERVER}:{PORT} -tls1_2 2>&1"
        ),
        Duration::from_secs(60),
    )
}

fn events(ct: &Container) -> Result<Vec<serde_json::Value>> {
    let text = ct.sh_ok("hsmon events --json")?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

fn traffic(ct: &Container) -> Result<String> {
    let o = renegotiate(ct, 5)?;
    let renegs = o.stdout.matches("RENEGOTIATING").count();
    let conns = ct.sh_ok("hsmon conns --json")?;
    let conns: serde_json::Value = serde_json::from_str(&conns).context("conns --json")?;
    let ours = conns
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c.to_string().contains(PEER))
        .cloned()
        .with_context(|| format!("hsmon conns lists no connection from {PEER}: {conns}"))?;
    let cut = events(ct)?
        .into_iter()
        .find(|e| e["event"] == "decision" && e["rule"] == "reneg_cap")
        .with_context(|| {
            format!("no reneg_cap decision in hsmon events; s_client typed R {renegs} times")
        })?;
    Ok(format!(
        "s_client asked for 5 renegotiations ({renegs} RENEGOTIATING); hsmon conns: {}; \
         event: {}",
        short(&ours.to_string(), 220),
        short(&cut.to_string(), 200)
    ))
}

fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}...", s.chars().take(n).collect::<String>())
    }
}

fn journal(ct: &Container) -> Result<String> {
    let text = ct.sh_ok("journalctl -u hsmon --no-pager -o cat")?;
    let lines: Vec<&str> = text.lines().collect();
    let agent = lines.iter().filter(|l| l.contains("hsmon")).count();
    ensure!(
        lines.len() > 3,
        "journalctl -u hsmon has {} lines",
        lines.len()
    );
    let sample = lines
        .iter()
        .find(|l| l.contains("attached") || l.contains("listen"))
        .or(lines.first())
        .copied()
        .unwrap_or_default();
    Ok(format!(
        "{} lines ({agent} mention hsmon), e.g. {:?}",
        lines.len(),
        short(sample, 160)
    ))
}

fn reload(ct: &Container) -> Result<String> {
    let pid = ct.main_pid()?;
    ct.sh_ok("cp /etc/hsmon/hsmon.toml /root/hsmon.toml.orig")?;
    ct.sh_ok(
        "sed -i 's/^reneg_cap = .*/reneg_cap = 5/' /etc/hsmon/hsmon.toml && systemctl reload hsmon",
    )?;
    let ok = rootfs::poll(Duration::from_secs(10), Duration::from_millis(300), || {
        events(ct)
            .ok()?
            .into_iter()
            .find(|e| e["event"] == "config_reloaded")
    })
    .context("no config_reloaded event within 10 s of systemctl reload")?;
    ct.sh_ok("echo 'this is [[ not toml' >> /etc/hsmon/hsmon.toml && systemctl reload hsmon")?;
    let failed = rootfs::poll(Duration::from_secs(10), Duration::from_millis(300), || {
        events(ct)
            .ok()?
            .into_iter()
            .find(|e| e["event"] == "config_reload_failed")
    })
    .context("no config_reload_failed event within 10 s of reloading a broken file")?;
    std::thread::sleep(Duration::from_secs(1));
    let active = ct.sh_ok("systemctl is-active hsmon")?;
    let after = ct.main_pid()?;
    ct.sh_ok("cp /root/hsmon.toml.orig /etc/hsmon/hsmon.toml && systemctl reload hsmon")?;
    ensure!(
        active == "active" && after == pid,
        "after the broken reload: {active}, pid {pid} -> {after}"
    );
    Ok(format!(
        "{}; broken file: {}; still {active}, same pid {pid}",
        short(&ok.to_string(), 120),
        short(&failed.to_string(), 160)
    ))
}

/// `hsmon bans add PEER`, and proof that it drops.
fn ban_peer(ct: &Container) -> Result<()> {
    ct.sh_ok(&format!(
        "hsmon bans add {PEER} --ttl 30m --reason systemd-check"
    ))?;
    ensure!(
        !ct.peer_connects(2.0)?,
        "{PEER} still connects after hsmon bans add"
    );
    Ok(())
}

fn bans_list(ct: &Container) -> Result<bool> {
    Ok(ct.sh_ok("hsmon bans --json")?.contains(PEER))
}

/// TCX, cgroup (socket hooks) and sock_state tracepoint links in the
/// kernel whose program uses the pinned FLOWS map, against the hooks
/// `hsmon status` reports.
fn one_program_per_hook(ct: &Container) -> Result<String> {
    let status: serde_json::Value = serde_json::from_str(&ct.sh_ok("hsmon status --json")?)?;
    let hooks = status["hooks"].as_array().map_or(0, Vec::len);
    let map: serde_json::Value = serde_json::from_str(
        &ct.sh_ok("bpftool -j map show pinned /sys/fs/bpf/hsmon/maps-v1/FLOWS")?,
    )?;
    let map_id = map["id"].as_u64().context("FLOWS map id")?;
    let links: serde_json::Value = serde_json::from_str(&ct.sh_ok("bpftool -j link show")?)?;
    let progs: serde_json::Value = serde_json::from_str(&ct.sh_ok("bpftool -j prog show")?)?;
    let uses_map = |prog_id: u64| -> Option<String> {
        progs.as_array()?.iter().find_map(|p| {
            (p["id"].as_u64() == Some(prog_id)
                && p["map_ids"]
                    .as_array()
                    .is_some_and(|m| m.iter().any(|i| i.as_u64() == Some(map_id))))
            .then(|| p["name"].as_str().unwrap_or_default().to_string())
        })
    };
    let (mut tcx, mut cgroup, mut tp) = (0, 0, 0);
    for l in links.as_array().map(Vec::as_slice).unwrap_or_default() {
        let Some(name) = l["prog_id"].as_u64().and_then(uses_map) else {
            continue;
        };
        if l["type"] == "tcx" || l["type"] == 11 {
            tcx += 1;
        } else if l["type"] == "cgroup" || l["type"] == 3 {
            cgroup += 1;
        } else if l["type"] == "perf_event" && name.starts_with("hsmon_sock_stat") {
            tp += 1;
        }
    }
    ensure!(
        tcx + cgroup == hooks && tp == 1,
        "kernel links using FLOWS: {tcx} TCX + {cgroup} cgroup (status lists {hooks} hooks), \
         {tp} sock_state"
    );
    Ok(format!(
        "{tcx} TCX + {cgroup} cgroup links for {hooks} hooks, {tp} sock_state link"
    ))
}

fn kill9(ct: &Container) -> Result<String> {
    ban_peer(ct)?;
    let pid = ct.main_pid()?;
    ct.sh_ok(&format!("kill -9 {pid}"))?;
    // Probe once systemd has seen the death (RestartSec=2s: auto-restart).
    let state = rootfs::poll(Duration::from_secs(3), Duration::from_millis(50), || {
        let s = ct
            .sh_ok("systemctl show -p ActiveState,SubState --value hsmon | paste -sd/")
            .ok()?;
        (s != "active/running").then_some(s)
    })
    .unwrap_or_else(|| "still active/running 3 s after kill -9".into());
    let through = ct.peer_connects(1.0)?;
    ensure!(
        !through,
        "{PEER} connected while the agent was down ({state})"
    );
    let restarted = rootfs::poll(Duration::from_secs(30), Duration::from_millis(300), || {
        let now = ct.main_pid().ok()?;
        let active = ct.sh_ok("systemctl is-active hsmon").ok()?;
        (now != 0 && now != pid && active == "active").then_some(now)
    })
    .context("systemd did not restart the agent within 30 s of kill -9")?;
    let restarts = ct.sh_ok("systemctl show -p NRestarts --value hsmon")?;
    ensure!(bans_list(ct)?, "the restarted agent does not list the ban");
    ensure!(!ct.peer_connects(2.0)?, "{PEER} connects after the restart");
    let links = one_program_per_hook(ct)?;
    Ok(format!(
        "ban on {PEER}: connect refused while down ({state}); restarted as pid {restarted} \
         (NRestarts {restarts}); ban listed and dropping; {links}"
    ))
}

fn watchdog(ct: &Container) -> Result<String> {
    let pid = ct.main_pid()?;
    ct.sh_ok(&format!("kill -STOP {pid}"))?;
    let t = Instant::now();
    let limit = Duration::from_secs(WATCHDOG_SEC + 10);
    let restarted = rootfs::poll(limit, Duration::from_millis(500), || {
        let now = ct.main_pid().ok()?;
        let active = ct.sh_ok("systemctl is-active hsmon").ok()?;
        (now != 0 && now != pid && active == "active").then_some(now)
    });
    let took = t.elapsed().as_secs_f64();
    let why = ct
        .sh(
            "journalctl -u hsmon --no-pager -o cat | grep -i watchdog | tail -1",
            Duration::from_secs(20),
        )?
        .stdout
        .trim()
        .to_string();
    let Some(now) = restarted else {
        let _ = ct.sh(&format!("kill -CONT {pid}"), Duration::from_secs(10));
        bail!(
            "not restarted within WatchdogSec + 10 s = {} s ({why})",
            limit.as_secs()
        );
    };
    ensure!(bans_list(ct)?, "the ban is gone after the watchdog restart");
    Ok(format!(
        "stopped pid {pid}; active again as pid {now} after {took:.0} s (limit {} s): {why:?}",
        limit.as_secs()
    ))
}

fn stop_restart(ct: &Container) -> Result<String> {
    ct.sh_ok("systemctl stop hsmon")?;
    let result = ct.sh_ok("systemctl show -p Result,ActiveState --value hsmon | paste -sd/")?;
    ensure!(result == "success/inactive", "after stop: {result}");
    let kept = ct.sh_ok(
        "ls /sys/fs/bpf/hsmon/maps-v1 | wc -l; test -f /run/hsmon/state.json && echo state.json",
    )?;
    ensure!(
        kept.contains("state.json"),
        "state file gone after stop: {kept}"
    );
    ensure!(!ct.peer_connects(1.0)?, "{PEER} connects while stopped");
    ct.sh_ok("systemctl start hsmon")?;
    // Connection attempts from the banned peer every 0.1 s during a restart.
    let probe = format!(
        "ip netns exec peer python3 -c '
import socket, time
ok = 0
for i in range(60):
    s = socket.socket(); s.settimeout(0.1)
    try:
        s.connect((\"{SERVER}\", {PORT})); ok += 1
    except OSError:
        pass
    s.close(); time.sleep(0.05)
print(ok)' & sleep 0.5; systemctl restart hsmon; wait"
    );
    let t = Instant::now();
    let through = ct.sh_ok(&probe)?;
    let took = t.elapsed().as_secs_f64();
    ensure!(
        through == "0",
        "{through} of 60 connects from the banned peer got through during systemctl restart"
    );
    let active = ct.sh_ok("systemctl is-active hsmon")?;
    ensure!(bans_list(ct)?, "ban not listed after restart");
    Ok(format!(
        "stop: {result}, pins + /run/hsmon/state.json kept ({} maps), ban dropping while \
         stopped; restart: 0 of 60 banned connects in {took:.1} s, {active}, ban listed",
        first_line(&kept)
    ))
}

fn security(ct: &Container) -> Result<String> {
    let o = ct.sh(
        "systemd-analyze security hsmon --no-pager",
        Duration::from_secs(60),
    )?;
    let line = o
        .stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .with_context(|| format!("no overall exposure level: {}", last_lines(&o.stderr, 2)))?;
    Ok(line.trim().replace("→ ", ""))
}

fn without_cap(ct: &Container, cap: &str, all: &[String]) -> Result<String> {
    let others: Vec<&str> = all
        .iter()
        .map(String::as_str)
        .filter(|c| c != &cap)
        .collect();
    let dropin = format!(
        "[Service]\nCapabilityBoundingSet=\nCapabilityBoundingSet={0}\nAmbientCapabilities=\n\
         AmbientCapabilities={0}\n",
        others.join(" ")
    );
    ct.sh_ok(&format!(
        "systemctl stop hsmon; mkdir -p /run/systemd/system/hsmon.service.d && \
         printf '%s' '{dropin}' > /run/systemd/system/hsmon.service.d/sdcheck-caps.conf && \
         systemctl daemon-reload && systemctl reset-failed hsmon; journalctl --rotate -q; true"
    ))?;
    let since = ct.sh_ok("date +%s")?;
    let o = ct.sh("systemctl start hsmon", Duration::from_secs(120))?;
    std::thread::sleep(Duration::from_secs(1));
    let log = ct
        .sh(
            &format!("journalctl -u hsmon --since @{since} --no-pager -o cat"),
            Duration::from_secs(20),
        )?
        .stdout;
    let restore = ct.sh_ok(
        "systemctl stop hsmon; rm -rf /run/systemd/system/hsmon.service.d; \
         systemctl daemon-reload; systemctl reset-failed hsmon; systemctl start hsmon",
    );
    let err = log
        .lines()
        .find(|l| l.contains("error") || l.contains("Error"))
        .unwrap_or_default()
        .trim()
        .to_string();
    restore.context("restoring the unit")?;
    if o.code == Some(0) {
        bail!("the agent starts without {cap}: not needed on this kernel");
    }
    let short_cap = cap.trim_start_matches("CAP_");
    ensure!(
        err.contains(cap) || err.contains(short_cap),
        "start failed but the message does not name {cap}: {:?}",
        short(&err, 300)
    );
    Ok(format!("start fails: {:?}", short(&err, 300)))
}

fn upgrade(ct: &Container) -> Result<String> {
    if !bans_list(ct)? {
        ban_peer(ct)?;
    }
    let pid = ct.main_pid()?;
    ct.sh_ok("dpkg -i /root/hsmon-bumped.deb")?;
    let version = ct.sh_ok("dpkg-query -W -f='${Version}' hsmon")?;
    let now = rootfs::poll(Duration::from_secs(30), Duration::from_millis(300), || {
        let now = ct.main_pid().ok()?;
        let active = ct.sh_ok("systemctl is-active hsmon").ok()?;
        (now != 0 && active == "active").then_some(now)
    })
    .context("hsmon is not active after the upgrade")?;
    ensure!(
        now != pid,
        "the agent was not restarted by the upgrade (pid {pid})"
    );
    ensure!(bans_list(ct)?, "the ban is gone after the upgrade");
    ensure!(!ct.peer_connects(2.0)?, "{PEER} connects after the upgrade");
    Ok(format!(
        "upgraded to {version}: restarted (pid {pid} -> {now}), ban listed and dropping"
    ))
}

/// Ids of the programs in the kernel that use this agent's pinned FLOWS
/// map (other agents on the host have programs of the same names).
fn our_programs(ct: &Container) -> Result<Vec<u64>> {
    let map: serde_json::Value = serde_json::from_str(
        &ct.sh_ok("bpftool -j map show pinned /sys/fs/bpf/hsmon/maps-v1/FLOWS")?,
    )?;
    let map_id = map["id"].as_u64().context("FLOWS map id")?;
    let progs: serde_json::Value = serde_json::from_str(&ct.sh_ok("bpftool -j prog show")?)?;
    Ok(progs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["map_ids"]
                .as_array()
                .is_some_and(|m| m.iter().any(|i| i.as_u64() == Some(map_id)))
        })
        .filter_map(|p| p["id"].as_u64())
        .collect())
}

fn purge(ct: &Container) -> Result<String> {
    let ours = our_programs(ct)?;
    ensure!(
        !ours.is_empty(),
        "no program uses the agent's FLOWS map before the purge"
    );
    ct.sh_ok("dpkg --purge hsmon")?;
    let active = ct
        .sh("systemctl is-active hsmon", Duration::from_secs(20))?
        .stdout
        .trim()
        .to_string();
    let left = ct.sh_ok(
        "find / -xdev \\( -name '*hsmon*' -o -name 'hsmon' \\) -not -path '/root/*' \
         -not -path '/proc/*' 2>/dev/null; ls -d /sys/fs/bpf/hsmon /run/hsmon 2>/dev/null; true",
    )?;
    // Programs are freed asynchronously once their last link and fd go.
    let left_progs = rootfs::poll(Duration::from_secs(10), Duration::from_millis(300), || {
        let listed = ct.sh_ok("bpftool -j prog show").ok()?;
        let progs: serde_json::Value = serde_json::from_str(&listed).ok()?;
        let ids: Vec<u64> = progs
            .as_array()?
            .iter()
            .filter_map(|p| p["id"].as_u64())
            .collect();
        let n = ours.iter().filter(|id| ids.contains(id)).count();
        (n == 0).then_some(0)
    });
    let progs = match left_progs {
        Some(n) => n,
        None => ours.len(),
    };
    let connects = ct.peer_connects(2.0)?;
    ensure!(
        active != "active" && left.is_empty() && progs == 0 && connects,
        "after purge: is-active {active}; left: {}; {progs} of the agent's {} programs still \
         in the kernel; banned peer connects: {connects}",
        left.lines().collect::<Vec<_>>().join(" "),
        ours.len()
    );
    Ok(format!(
        "unit {active}; none of the agent's {} programs, no file, pin or state of hsmon left; \
         {PEER} connects again",
        ours.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_fails_on_a_failed_check() {
        let out = vec![
            Outcome {
                name: "a".into(),
                secs: 1.0,
                passed: true,
                evidence: "fine".into(),
            },
            Outcome {
                name: "b".into(),
                secs: 2.0,
                passed: false,
                evidence: "boom".into(),
            },
        ];
        let s = summary(&out, None, Duration::from_secs(3));
        assert!(s.contains("FAIL b") && s.contains("boom"), "{s}");
        assert!(s
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("FAIL total")));
        let ok = summary(&out[..1], None, Duration::from_secs(1));
        assert!(ok
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("PASS total")));
    }

    #[test]
    fn last_lines_skips_blank_lines() {
        assert_eq!(last_lines("a\n\nb\nc\n", 2), "b | c");
        assert_eq!(last_lines("", 2), "");
    }
}
