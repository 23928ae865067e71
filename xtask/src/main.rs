//! `cargo xtask`: hsmon's developer commands: `setup`, `build`, `run`, `test`,
//! `bench`.
//!
//! Every command first puts cargo's bin directory (where bpf-linker lives) on
//! PATH, so the cargo builds it spawns find the BPF linker.

mod apt;
mod bench;
mod build;
mod run;
mod setup;
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
        /// Also the Debian packages the root integration tests need (openssl,
        /// nginx, tshark, tcpdump, iproute2, python3, prometheus).
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
    /// Set up, then run the benchmarks as root and print their numbers.
    Bench,
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
        Cmd::Bench => bench::bench(),
    }
}
