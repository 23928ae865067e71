//! `hsmon conns`: lists the TLS connections the agent tracks, as a table or
//! (`--json`) as the JSON array the agent serves.

use crate::output::{json_line, write_stdout};

use anyhow::{Context as _, Result};

use crate::api::CONNS_PATH;
use crate::cli::SocketArg;
use crate::record::ConnRecord;

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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let body = rt.block_on(crate::client::get(&args.socket.socket, CONNS_PATH))?;
    let out = if args.json {
        json_line(&body)
    } else {
        let conns: Vec<ConnRecord> =
            serde_json::from_slice(&body).context("the agent's answer is not a connection list")?;
        crate::table::render(&conns).into_bytes()
    };
    write_stdout(&out)
}
