//! The `GET /v1/peers` document.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// One peer in `GET /v1/peers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// The client address.
    pub peer: IpAddr,
    /// New handshakes in the last 10 s.
    pub handshakes_10s: u64,
    /// Client renegotiation attempts in the last 60 s.
    pub renegotiations_1m: u64,
    /// Bans (or would-be bans in dry-run) within the last 24 h.
    pub bans_24h: u64,
}
