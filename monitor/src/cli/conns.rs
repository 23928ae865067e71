//! `hsmon conns`: lists the TLS connections the agent tracks, as a table or
//! (`--json`) as the JSON array the agent serves.

use crate::cli::output::fetch_and_print;

use anyhow::Result;

use crate::api::conns::ConnRecord;
use crate::api::CONNS_PATH;
use crate::config::SocketArg;

/// Arguments of `hsmon conns`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the JSON array exactly as the agent serves it.
    #[arg(long)]
    pub json: bool,
    /// The agent's control socket.
    #[command(flatten)]
    pub socket: SocketArg,
}

/// Fetches the connection list and prints it.
pub fn run(args: Args) -> Result<()> {
    fetch_and_print(
        &args.socket.socket,
        CONNS_PATH,
        args.json,
        "a connection list",
        |conns: &Vec<ConnRecord>| crate::cli::table::render(conns),
    )
}
