//! `cargo xtask setup`: checks every build and test prerequisite and installs
//! what is missing, one line per item. Idempotent and quick when all is there.
//!
//! Build: nightly toolchain + rust-src (for `-Z build-std=core`), LLVM 22
//! (`llvm-22-dev`, for bpf-linker), bpf-linker 0.13.0, tracefs mounted.
//! With `--test-deps`: the Debian packages the root integration tests drive,
//! and no packaged nginx left listening (the tests start their own).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::apt::{self, Apt};
use crate::util;

/// `llvm-config` of the LLVM that bpf-linker is built against.
pub const LLVM_CONFIG: &str = "/usr/lib/llvm-22/bin/llvm-config";
/// `LLVM_PREFIX` for bpf-linker's build (without it, it finds LLVM 14 and fails).
pub const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// The Debian package that provides [`LLVM_CONFIG`] and libLLVM.
pub const LLVM_PACKAGE: &str = "llvm-22-dev";
/// The bpf-linker release known to work with aya 0.14 here.
pub const BPF_LINKER_VERSION: &str = "0.13.0";
/// Where hsmon expects tracefs (for its `TracePoint` programs).
pub const TRACEFS: &str = "/sys/kernel/tracing";
/// Debian packages the root integration tests use as real peers and tools.
pub const TEST_PACKAGES: &[&str] = &[
    "openssl",
    "nginx",
    "tshark",
    "tcpdump",
    "iproute2",
    "python3",
    "prometheus",
    "nghttp2-client",
    "bpftool",
    "nftables",
    "tmux",
    "libssl-dev",
    "procps",
    "systemd",
    "systemd-container",
    "debootstrap",
];
/// Pid file of the nginx started by Debian's package (its default config).
const PACKAGED_NGINX_PID: &str = "/run/nginx.pid";

/// What to check and install.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Also the Debian packages the integration tests need.
    pub test_deps: bool,
}

/// What setup found that later steps need to know.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// tracefs is mounted at [`TRACEFS`].
    pub tracefs_mounted: bool,
}

/// Runs every check, installing what is missing when allowed to.
pub fn setup(opts: Options) -> Result<Report> {
    let started = Instant::now();
    let mut s = Setup {
        apt: Apt::default(),
        root: util::is_root(),
        manual: Vec::new(),
    };
    s.nightly()?;
    let llvm = s.llvm()?;
    s.bpf_linker(llvm)?;
    let tracefs_mounted = s.tracefs()?;
    if opts.test_deps {
        s.test_packages()?;
        s.packaged_nginx()?;
        cargo_fuzz()?;
    }
    if !s.manual.is_empty() {
        bail!(
            "setup is incomplete; run these, then `cargo xtask setup{}` again:\n  {}",
            if opts.test_deps { " --test-deps" } else { "" },
            s.manual.join("\n  ")
        );
    }
    println!("setup: done in {:.1}s", started.elapsed().as_secs_f64());
    Ok(Report { tracefs_mounted })
}

struct Setup {
    apt: Apt,
    root: bool,
    /// Commands the user must run because we may not (not root).
    manual: Vec<String>,
}

impl Setup {
    /// Nightly toolchain and its rust-src component.
    fn nightly(&mut self) -> Result<()> {
        if util::find_in_path("rustup").is_none() {
            bail!("rustup is not on PATH: install it from https://rustup.rs, then run this again");
        }
        let components = match installed_components("nightly") {
            Some(list) => {
                println!("ok: nightly toolchain ({})", nightly_version());
                list
            }
            None => {
                println!("installing: nightly toolchain");
                util::run(Command::new("rustup").args([
                    "toolchain",
                    "install",
                    "nightly",
                    "--profile",
                    "minimal",
                ]))
                .context("could not install the nightly toolchain")?;
                installed_components("nightly").context(
                    "the nightly toolchain is still missing after `rustup toolchain install nightly`",
                )?
            }
        };
        if has_component(&components, "rust-src") {
            println!("ok: rust-src (nightly)");
        } else {
            println!("installing: rust-src (nightly)");
            util::run(Command::new("rustup").args([
                "component",
                "add",
                "rust-src",
                "--toolchain",
                "nightly",
            ]))
            .context("could not add rust-src to the nightly toolchain")?;
        }
        Ok(())
    }

    /// LLVM 22 development files; returns whether they are present now.
    fn llvm(&mut self) -> Result<bool> {
        if let Some(version) = llvm_version(Path::new(LLVM_CONFIG)) {
            println!("ok: {LLVM_PACKAGE} (llvm-config {version})");
            return Ok(true);
        }
        if !self.root {
            println!("missing: {LLVM_PACKAGE} ({LLVM_CONFIG} not found)");
            self.manual.push(format!(
                "as root: {}",
                apt::manual_install_hint(&[LLVM_PACKAGE])
            ));
            return Ok(false);
        }
        println!("installing: {LLVM_PACKAGE}");
        self.apt.install(&[LLVM_PACKAGE])?;
        let version = llvm_version(Path::new(LLVM_CONFIG)).with_context(|| {
            format!("{LLVM_PACKAGE} is installed but {LLVM_CONFIG} --version does not run")
        })?;
        println!("ok: {LLVM_PACKAGE} (llvm-config {version})");
        Ok(true)
    }

    /// bpf-linker, built against LLVM 22 with `cargo install`.
    fn bpf_linker(&mut self, llvm_present: bool) -> Result<()> {
        if let Some(version) = bpf_linker_version() {
            report_bpf_linker(&version);
            return Ok(());
        }
        let install = bpf_linker_install_command();
        if !llvm_present {
            println!("missing: bpf-linker (needs {LLVM_PACKAGE} first)");
            self.manual.push(format!(
                "after {LLVM_PACKAGE} is installed: {}",
                util::describe(&install)
            ));
            return Ok(());
        }
        println!("installing: bpf-linker {BPF_LINKER_VERSION} (cargo install, about a minute)");
        let mut install = install;
        util::run(&mut install).context("could not build bpf-linker")?;
        let version = bpf_linker_version().with_context(|| {
            format!(
                "bpf-linker was installed but `bpf-linker --version` fails: is {} on PATH?",
                util::cargo_bin_dir()
                    .map(|d| d.display().to_string())
                    .unwrap_or_else(|| "~/.cargo/bin".into())
            )
        })?;
        report_bpf_linker(&version);
        Ok(())
    }

    /// tracefs at [`TRACEFS`]; returns whether it is mounted now. Not being
    /// able to mount it (not root) is a warning: only `hsmon run` needs it.
    fn tracefs(&mut self) -> Result<bool> {
        if is_mountpoint(Path::new(TRACEFS)) {
            println!("ok: tracefs mounted at {TRACEFS}");
            return Ok(true);
        }
        let mut mount = Command::new("mount");
        mount.args(["-t", "tracefs", "tracefs", TRACEFS]);
        if !self.root {
            println!(
                "warn: tracefs is not mounted at {TRACEFS} (hsmon run needs it); as root run: {}",
                util::describe(&mount)
            );
            return Ok(false);
        }
        println!("mounting: tracefs at {TRACEFS}");
        util::run(&mut mount).with_context(|| {
            format!("could not mount tracefs at {TRACEFS}: does this kernel have CONFIG_TRACING?")
        })?;
        Ok(true)
    }

    /// Debian packages for the integration tests, installed in one apt call.
    fn test_packages(&mut self) -> Result<()> {
        let mut missing = Vec::new();
        for pkg in TEST_PACKAGES {
            match apt::installed_version(pkg) {
                Some(version) => println!("ok: {pkg} {version}"),
                None => missing.push(*pkg),
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        if !self.root {
            println!("missing: {}", missing.join(", "));
            self.manual
                .push(format!("as root: {}", apt::manual_install_hint(&missing)));
            return Ok(());
        }
        println!("installing: {}", missing.join(" "));
        self.apt.install(&missing)?;
        for pkg in missing {
            let version = apt::installed_version(pkg)
                .with_context(|| format!("apt-get install succeeded but {pkg} is not installed"))?;
            println!("ok: {pkg} {version}");
        }
        Ok(())
    }

    /// Stops the nginx that Debian's package starts, if it is running: the
    /// tests start their own. Any other nginx is left alone. Never fails for
    /// lack of systemd; a failed stop is a warning.
    fn packaged_nginx(&mut self) -> Result<()> {
        let systemd =
            Path::new("/run/systemd/system").is_dir() && util::find_in_path("systemctl").is_some();
        let unit_active = systemd
            && util::succeeds(Command::new("systemctl").args(["is-active", "--quiet", "nginx"]));
        let master = std::fs::read_to_string(PACKAGED_NGINX_PID)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        let listening: Vec<String> = nginx_listeners()
            .into_iter()
            .filter(|l| master.is_some_and(|m| l.pids.contains(&m)))
            .map(|l| l.addr)
            .collect();
        if !unit_active && listening.is_empty() {
            println!("ok: no packaged nginx running");
            return Ok(());
        }
        let mut stop = if unit_active {
            let mut c = Command::new("systemctl");
            c.args(["disable", "--now", "nginx"]);
            c
        } else {
            let mut c = Command::new("nginx");
            c.args(["-s", "quit"]);
            c
        };
        if !self.root {
            println!("missing: packaged nginx is running; tests start their own");
            self.manual
                .push(format!("as root: {}", util::describe(&stop)));
            return Ok(());
        }
        println!(
            "stopping: packaged nginx{} (tests start their own)",
            if listening.is_empty() {
                String::new()
            } else {
                format!(" listening on {}", listening.join(" "))
            }
        );
        if let Err(e) = util::run(&mut stop) {
            println!("warn: could not stop nginx: {e:#}");
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let still = nginx_listeners()
                .iter()
                .any(|l| master.is_some_and(|m| l.pids.contains(&m)));
            if !still {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        println!(
            "warn: packaged nginx is still listening 5 s after `{}`",
            util::describe(&stop)
        );
        Ok(())
    }
}

fn report_bpf_linker(version: &str) {
    if version.contains(BPF_LINKER_VERSION) {
        println!("ok: {version}");
    } else {
        println!("ok: {version} (hsmon is tested with bpf-linker {BPF_LINKER_VERSION})");
    }
}

/// The cargo-fuzz release `cargo xtask fuzz` and the test gate's fuzz step use.
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// cargo-fuzz (the fuzz targets' runner, `cargo fuzz`), installed with
/// `cargo install` when missing (about a minute).
pub fn cargo_fuzz() -> Result<()> {
    if let Some(v) =
        util::probe(Command::new("cargo-fuzz").arg("--version")).filter(|v| !v.is_empty())
    {
        println!("ok: {v}");
        return Ok(());
    }
    println!("installing: cargo-fuzz {CARGO_FUZZ_VERSION} (cargo install, about a minute)");
    let mut c = Command::new("cargo");
    c.args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
    ]);
    // Outside the workspace, so its .cargo/config.toml plays no part.
    if let Some(home) = std::env::var_os("HOME") {
        c.current_dir(home);
    }
    util::run(&mut c).context("could not install cargo-fuzz")?;
    Ok(())
}

/// cargo-deb (`cargo xtask deb`), installed with `cargo install` when
/// missing (about 4 minutes on this project's 2-core machine).
pub fn cargo_deb() -> Result<()> {
    if let Some(v) =
        util::probe(Command::new("cargo-deb").arg("--version")).filter(|v| !v.is_empty())
    {
        println!("ok: {v}");
        return Ok(());
    }
    let version = crate::deb::CARGO_DEB_VERSION;
    println!("installing: cargo-deb {version} (cargo install, a few minutes)");
    let mut c = Command::new("cargo");
    c.args(["install", "cargo-deb", "--version", version, "--locked"]);
    // Outside the workspace, so its .cargo/config.toml plays no part.
    if let Some(home) = std::env::var_os("HOME") {
        c.current_dir(home);
    }
    util::run(&mut c).context("could not install cargo-deb")?;
    Ok(())
}

/// `cargo install bpf-linker` against LLVM 22.
fn bpf_linker_install_command() -> Command {
    let mut c = Command::new("cargo");
    c.env("LLVM_PREFIX", LLVM_PREFIX).args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--locked",
        "--no-default-features",
        "--features",
        "llvm-22",
    ]);
    // Outside the workspace, so its .cargo/config.toml plays no part.
    if let Some(home) = std::env::var_os("HOME") {
        c.current_dir(home);
    }
    c
}

/// Installed components of `toolchain`, or `None` if it is not installed.
fn installed_components(toolchain: &str) -> Option<String> {
    util::probe(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        toolchain,
        "--installed",
    ]))
}

/// `rustc --version` of the nightly toolchain, for the report line.
fn nightly_version() -> String {
    util::probe(Command::new("rustup").args(["run", "nightly", "rustc", "--version"]))
        .unwrap_or_else(|| "rustc version unknown".into())
}

/// Whether `rustup component list --installed` output names `component`
/// (listed either bare, like `rust-src`, or with a target suffix).
fn has_component(list: &str, component: &str) -> bool {
    let prefix = format!("{component}-");
    list.lines().map(str::trim).any(|line| {
        line == component
            || line
                .strip_prefix(&prefix)
                .is_some_and(|target| target.contains("-unknown-") || target.contains("-linux-"))
    })
}

/// `llvm-config --version` if `llvm_config` exists and runs.
fn llvm_version(llvm_config: &Path) -> Option<String> {
    if !llvm_config.is_file() {
        return None;
    }
    util::probe(Command::new(llvm_config).arg("--version"))
}

/// `bpf-linker --version` (PATH includes cargo's bin directory).
fn bpf_linker_version() -> Option<String> {
    util::probe(Command::new("bpf-linker").arg("--version")).filter(|v| !v.is_empty())
}

fn is_mountpoint(path: &Path) -> bool {
    util::succeeds(Command::new("mountpoint").arg("-q").arg(path))
}

/// A TCP socket that an nginx process listens on.
#[derive(Debug, PartialEq)]
struct Listener {
    addr: String,
    pids: Vec<u32>,
}

/// nginx's listening TCP sockets, from `ss -Hltnp` (empty if ss is missing).
fn nginx_listeners() -> Vec<Listener> {
    util::probe(Command::new("ss").arg("-Hltnp"))
        .map(|out| parse_nginx_listeners(&out))
        .unwrap_or_default()
}

/// Parses `ss -Hltnp` lines such as
/// `LISTEN 0 511 0.0.0.0:80 0.0.0.0:* users:(("nginx",pid=12,fd=6),("nginx",pid=11,fd=6))`.
fn parse_nginx_listeners(ss: &str) -> Vec<Listener> {
    ss.lines()
        .filter(|line| line.contains("((\"nginx\","))
        .filter_map(|line| {
            let addr = line.split_whitespace().nth(3)?.to_string();
            let pids = line
                .split("pid=")
                .skip(1)
                .filter_map(|rest| {
                    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    digits.parse().ok()
                })
                .collect();
            Some(Listener { addr, pids })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_missing_when_llvm_config_absent() {
        assert_eq!(
            llvm_version(Path::new("/nonexistent/llvm-22/bin/llvm-config")),
            None
        );
    }

    #[test]
    fn nonexistent_path_is_not_a_mountpoint() {
        assert!(!is_mountpoint(Path::new("/nonexistent/hsmon/tracing")));
    }

    #[test]
    fn nightly_of_unknown_toolchain_is_missing() {
        assert_eq!(installed_components("hsmon-no-such-toolchain"), None);
    }

    #[test]
    fn component_matching() {
        let list = "cargo-x86_64-unknown-linux-gnu\nrust-src\nrust-std-x86_64-unknown-linux-gnu\n";
        assert!(has_component(list, "rust-src"));
        assert!(has_component(list, "rust-std"));
        assert!(has_component(list, "cargo"));
        assert!(!has_component(list, "clippy"));
        assert!(!has_component("rust-src-preview-extra\n", "rust-src"));
        assert!(!has_component("", "rust-src"));
    }

    #[test]
    fn bpf_linker_install_uses_llvm_22() {
        let line = util::describe(&bpf_linker_install_command());
        assert_eq!(
            line,
            "LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --version 0.13.0 --locked \
             --no-default-features --features llvm-22"
        );
    }

    #[test]
    fn ss_output_parsing() {
        let ss = "LISTEN 0 511 0.0.0.0:80 0.0.0.0:* users:((\"nginx\",pid=12,fd=6),(\"nginx\",pid=11,fd=6))\n\
                  LISTEN 0 128 0.0.0.0:22 0.0.0.0:* users:((\"sshd\",pid=5,fd=3))\n\
                  LISTEN 0 511 [::]:443 [::]:* users:((\"nginx\",pid=11,fd=7))\n";
        assert_eq!(
            parse_nginx_listeners(ss),
            vec![
                Listener {
                    addr: "0.0.0.0:80".into(),
                    pids: vec![12, 11]
                },
                Listener {
                    addr: "[::]:443".into(),
                    pids: vec![11]
                },
            ]
        );
        assert!(parse_nginx_listeners("").is_empty());
    }
}
