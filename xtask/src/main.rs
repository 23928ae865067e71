//! `cargo xtask`: hsmon's developer commands: `setup`, `build`, `run`, `test`,
//! `bench`, `fuzz`.
//!
//! Every command first puts cargo's bin directory (where bpf-linker lives) on
//! PATH, so the cargo builds it spawns find the BPF linker.

mod apt;
mod bench;
mod build;
mod deb;
mod fresh_check;
mod fuzz;
mod procs;
mod quickstart;
mod rootfs;
mod run;
mod setup;
#[cfg(test)]
mod spawn_guard;
mod systemd_check;
mod test_suite;
mod util;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "hsmon's build, set-up, run and test helpers"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check and install the build prerequisites (nightly + rust-src, LLVM 22,
    /// bpf-linker, tracefs); quick when everything is present.
    Setup {
        /// Also the Debian packages the root integration tests, the
        /// benchmarks and xtask's checks spawn (setup::TEST_PACKAGES).
        #[arg(long)]
        test_deps: bool,
    },
    /// Set up, then build the `hsmon` binary (and its eBPF object).
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Set up, build release, then run `hsmon run [ARGS...]` as root.
    Run {
        /// Arguments for `hsmon run`, after `--` (e.g. `-- --iface lo`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up with test dependencies, then fmt, clippy, unit tests, release
    /// build and the root integration tests.
    Test {
        /// Skip the root integration tests (say so instead of failing when
        /// not root); ignored when the CI environment variable is set.
        #[arg(long)]
        no_root: bool,
        /// Arguments for the root integration test run, after `--` (e.g. a
        /// test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, then run the benchmarks as root; prints a table and writes
    /// target/bench/report.json and report.md.
    Bench {
        /// A short smoke run (fewer rounds, shorter loads).
        #[arg(long)]
        quick: bool,
        /// Only these benchmarks (tc_cost, bench_memory, bench_ingest,
        /// bench_bans, bench_nginx, bench_reneg, uprobe_cost).
        #[arg(long)]
        only: Vec<String>,
    },
    /// Build the Debian package (cargo-deb, installed when missing): the
    /// binary, systemd unit, default config, alert rules, completions and
    /// man pages; prints the .deb's path.
    Deb,
    /// Build the cargo-fuzz targets (tracker, config, api) and run each for a
    /// while from its checked-in seeds; a crash fails with the saved input.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = fuzz::DEFAULT_SECS)]
        secs: u64,
        /// Only this target (tracker, config or api).
        #[arg(long)]
        target: Option<String>,
    },
    /// Drive the README's quick start in tmux as a person would (its lines
    /// read from README.md): renegotiations counted in `hsmon top`, the 4th
    /// cut, the `reneg_cap` decision in `hsmon events`; needs root.
    QuickstartCheck,
    /// Rehearse the README's two commands (`cargo xtask run`, `CI=true bash
    /// .ci/run`) in a fresh clone of HEAD inside a clean Debian 12 root
    /// (debootstrap, cached under target/fresh/); needs root, ~40 minutes.
    FreshCheck {
        /// Build the cached Debian root again.
        #[arg(long)]
        rebuild_base: bool,
        /// Only `cargo xtask run`, not `.ci/run`.
        #[arg(long)]
        skip_ci: bool,
    },
    /// The Debian package under a real systemd: boots a Debian 12 container
    /// (systemd-nspawn --boot; root cached under target/systemd/) and checks
    /// install, start, traffic, reload, crash, watchdog, stop/restart,
    /// capabilities, upgrade and purge; needs root.
    SystemdCheck {
        /// Build the cached Debian root again.
        #[arg(long)]
        rebuild_base: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cmd: Cmd) -> Result<()> {
    util::ensure_cargo_bin_on_path()?;
    match cmd {
        Cmd::Setup { test_deps } => setup::setup(setup::Options { test_deps }).map(drop),
        Cmd::Build { release } => build::build(release).map(drop),
        Cmd::Run { args } => run::run(&args),
        Cmd::Test { no_root, args } => test_suite::test(test_suite::Options { no_root, args }),
        Cmd::Bench { quick, only } => bench::bench(bench::Options { quick, only }),
        Cmd::Deb => deb::deb().map(drop),
        Cmd::Fuzz { secs, target } => fuzz::fuzz(fuzz::Options { secs, target }),
        Cmd::QuickstartCheck => quickstart::quickstart_check(),
        Cmd::FreshCheck {
            rebuild_base,
            skip_ci,
        } => fresh_check::fresh_check(fresh_check::Options {
            rebuild_base,
            skip_ci,
        }),
        Cmd::SystemdCheck { rebuild_base } => {
            systemd_check::systemd_check(systemd_check::Options { rebuild_base })
        }
    }
}
