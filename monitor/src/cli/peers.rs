//! `hsmon peers`: the client addresses the policy watches, with their
//! handshakes and renegotiations in the current windows and their bans in the
//! last 24 h, as a table or (`--json`) as the JSON array the agent serves.

use anyhow::Result;

use crate::api::peers::PeerRecord;
use crate::api::PEERS_PATH;
use crate::cli::output::{aligned_table, fetch_and_print};
use crate::config::SocketArg;

/// Arguments of `hsmon peers`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the JSON array exactly as the agent serves it.
    #[arg(long)]
    pub json: bool,
    /// The agent's control socket.
    #[command(flatten)]
    pub socket: SocketArg,
}

/// The table `hsmon peers` prints.
pub fn render(peers: &[PeerRecord]) -> String {
    let rows: Vec<[String; 4]> = peers
        .iter()
        .map(|p| {
            [
                p.peer.to_string(),
                p.handshakes_10s.to_string(),
                p.renegotiations_1m.to_string(),
                p.bans_24h.to_string(),
            ]
        })
        .collect();
    aligned_table(
        ["PEER", "HANDSHAKES/10S", "RENEGOTIATIONS/1M", "BANS/24H"],
        &rows,
        [false, true, true, true],
        "",
    )
}

/// Fetches the peer list and prints it.
pub fn run(args: Args) -> Result<()> {
    fetch_and_print(
        &args.socket.socket,
        PEERS_PATH,
        args.json,
        "a peer list",
        |peers: &Vec<PeerRecord>| render(peers),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let p = PeerRecord {
            peer: "10.0.0.1".parse().expect("ip"),
            handshakes_10s: 120,
            renegotiations_1m: 0,
            bans_24h: 1,
        };
        assert_eq!(
            render(&[p]),
            "PEER      HANDSHAKES/10S  RENEGOTIATIONS/1M  BANS/24H\n10.0.0.1             120                  0         1\n"
        );
    }
}
