//! Resets of connections that went over the renegotiation cap: the kernel
//! stopped them (`EVENT_LIMIT_HIT`, or the over-cap sweep when that event
//! was lost); here their server-side sockets are destroyed and each becomes
//! a `reneg_cap` decision for the publisher.

use std::net::{IpAddr, SocketAddr};

use monitor_common::flow::{FlowKey, FlowValue};

use crate::agent::enforce::sock_destroy::{self, Conn};
use crate::agent::ingest::record::client_server_addrs;
use crate::agent::policy::{ConnRef, Counts, Decision, Outcome, Rule};
use crate::api::decisions::SocketCookies;

/// A connection whose client went over the renegotiation cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitHit {
    /// The client (the peer of the socket to reset).
    pub client: SocketAddr,
    /// The server (this host: its socket is reset).
    pub server: SocketAddr,
    /// Client-initiated renegotiations counted when the cap was hit.
    pub renegotiations_client: u32,
    /// The server socket and its network namespace (socket hooks), `None`
    /// for a TC-observed flow.
    pub socket: Option<SocketCookies>,
}

impl LimitHit {
    /// The client and server of a flow.
    pub fn of_flow(key: &FlowKey, value: &FlowValue) -> Self {
        let (client, server) = client_server_addrs(key, value);
        LimitHit {
            client,
            server,
            renegotiations_client: value.tracker.counters.renegotiations_client,
            socket: SocketCookies::of_key(key),
        }
    }
}

/// Resets (`SOCK_DESTROY`, blocking) the server-side socket of each
/// connection in the network namespace that owns it
/// ([`sock_destroy::destroy`]), logging each with its 4-tuple, and returns
/// each as a `reneg_cap` decision (`peer_counts` gives the peer's windows):
/// `reset`, `already_closed` (no such socket in its namespace) or
/// `reset_failed` (after the retries).
pub fn reset_all(hits: &[LimitHit], peer_counts: impl Fn(IpAddr) -> Counts) -> Vec<Decision> {
    let mut decisions = Vec::with_capacity(hits.len());
    for hit in hits {
        let conn = Conn {
            local: hit.server,
            remote: hit.client,
        };
        let (client, server, renegs) = (hit.client, hit.server, hit.renegotiations_client);
        let action = match sock_destroy::destroy(&conn, hit.socket) {
            Ok(sock_destroy::Outcome::Destroyed) => {
                tracing::warn!(
                    %client, %server, renegotiations_client = renegs,
                    "renegotiation cap exceeded: connection reset"
                );
                Outcome::Reset
            }
            Ok(sock_destroy::Outcome::Gone) => {
                tracing::info!(
                    %client, %server, renegotiations_client = renegs,
                    "renegotiation cap exceeded: connection already closed, nothing to reset"
                );
                Outcome::AlreadyClosed
            }
            Err(e) => {
                tracing::warn!(
                    %client, %server, renegotiations_client = renegs,
                    "renegotiation cap exceeded: resetting the connection failed: {e:#}"
                );
                Outcome::ResetFailed
            }
        };
        decisions.push(cap_decision(hit, action, peer_counts(client.ip())));
    }
    decisions
}

/// The `reneg_cap` decision for a connection the kernel stopped.
fn cap_decision(hit: &LimitHit, action: Outcome, peer: Counts) -> Decision {
    let mut d = Decision::new(Rule::RenegCap, hit.client.ip(), false);
    d.connection = Some(ConnRef {
        client: hit.client,
        server: hit.server,
        socket: hit.socket,
    });
    d.counts = Counts {
        renegotiations_conn: Some(u64::from(hit.renegotiations_client)),
        ..peer
    };
    d.action = action;
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::ingest::record::tests::sample_flow;

    #[test]
    fn limit_hit_names_client_and_server() {
        use crate::agent::ingest::record::socket_addr;
        use monitor_common::flow::addr_bytes;
        let (key, mut value) = sample_flow();
        value.tracker.counters.renegotiations_client = 4;
        let hit = LimitHit::of_flow(&key, &value);
        let a = socket_addr(&addr_bytes(&key.addr_a), key.port_a);
        let b = socket_addr(&addr_bytes(&key.addr_b), key.port_b);
        let want = if value.client_is_a != 0 {
            (a, b)
        } else {
            (b, a)
        };
        assert_eq!((hit.client, hit.server), want);
        assert_eq!(hit.renegotiations_client, 4);
        let mut flipped = value;
        flipped.client_is_a ^= 1;
        let hit2 = LimitHit::of_flow(&key, &flipped);
        assert_eq!((hit2.client, hit2.server), (hit.server, hit.client));
    }

    #[test]
    fn cap_resets_are_decisions() {
        let (key, mut value) = sample_flow();
        value.tracker.counters.renegotiations_client = 4;
        let hit = LimitHit::of_flow(&key, &value);
        let peer = Counts {
            renegotiations_1m: 4,
            ..Counts::default()
        };
        let d = cap_decision(&hit, Outcome::Reset, peer);
        let v = serde_json::to_value(&d).expect("json");
        assert_eq!(v["rule"], "reneg_cap");
        assert_eq!(v["action"], "reset");
        assert_eq!(v["peer"], hit.client.ip().to_string());
        assert_eq!(v["connection"]["server"], hit.server.to_string());
        assert_eq!(v["counts"]["renegotiations_conn"], 4);
        assert_eq!(v["counts"]["renegotiations_1m"], 4);
        assert_eq!(v["dry_run"], false);
    }
}
