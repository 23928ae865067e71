//! `hsmon`: the eBPF TLS handshake monitor's agent (`hsmon run`) and its CLI
//! verbs (`hsmon conns`, `hsmon bans`, `hsmon status`, `hsmon completions`,
//! `hsmon man`).
//!
//! Exit codes: 0 success, 1 an error (printed as `hsmon: error: ...` with its
//! causes), 2 wrong arguments (clap's usage error).

use std::process::ExitCode;

use monitor::{agent, cli, logging};

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    logging::init();
    let outcome = match cli.verb {
        cli::Verb::Run(args) => agent::run(args),
        verb => verb.execute(),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{}", cli::format_error(&err));
            ExitCode::FAILURE
        }
    }
}
