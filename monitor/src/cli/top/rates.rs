//! Rates for `hsmon top`: two samples of the agent's connections and peers,
//! taken an interval apart, turned into per-peer and per-connection
//! handshake and renegotiation rates, ordered busiest first.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Serialize;

use crate::api::conns::{ConnRecord, ConnState};
use crate::api::peers::PeerRecord;

/// What one poll of the agent returned.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// `GET /v1/conns`.
    pub conns: Vec<ConnRecord>,
    /// `GET /v1/peers`.
    pub peers: Vec<PeerRecord>,
}

/// One connection's line in a frame.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConnRate {
    /// Client `ip:port`.
    pub client: SocketAddr,
    /// Server `ip:port`.
    pub server: SocketAddr,
    /// `"1.2"`, `"1.3"` or null.
    pub tls_version: Option<String>,
    /// Client-initiated renegotiations per second over the interval.
    pub renegotiations_per_s: f64,
    /// Completed handshakes per second over the interval.
    pub handshakes_per_s: f64,
    /// Client-initiated renegotiations in total.
    pub renegotiations_client: u32,
    /// Handshakes in total.
    pub handshakes: u32,
    /// `"open"`, `"closed"` or `"evicted"`.
    pub state: String,
    /// `comm/pid` of the process behind it, if known.
    pub process: Option<String>,
}

/// One peer's line in a frame.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PeerRate {
    /// The client address.
    pub peer: IpAddr,
    /// Client-initiated renegotiations per second over the interval (all
    /// its connections).
    pub renegotiations_per_s: f64,
    /// Handshakes per second over the interval (new connections' first
    /// handshakes and renegotiations).
    pub handshakes_per_s: f64,
    /// The agent's window: renegotiation attempts in the last minute.
    pub renegotiations_1m: u64,
    /// The agent's window: new connections in the last 10 s.
    pub handshakes_10s: u64,
    /// Bans the policy issued in the last 24 h.
    pub bans_24h: u64,
}

/// A connection across samples: its endpoints and when it began.
fn conn_id(c: &ConnRecord) -> (SocketAddr, SocketAddr) {
    (c.client, c.server)
}

fn per_s(delta: u64, dt: Duration) -> f64 {
    let secs = dt.as_secs_f64();
    if secs <= 0.0 {
        0.0
    } else {
        delta as f64 / secs
    }
}

/// Sorts busiest first: renegotiation rate, then handshake rate.
fn by_rates(a: (f64, f64), b: (f64, f64)) -> std::cmp::Ordering {
    b.0.total_cmp(&a.0).then(b.1.total_cmp(&a.1))
}

/// The rates between `before` and `now`, `dt` apart (`before` `None`: the
/// first sample, every rate 0).
pub fn rates(
    before: Option<&Sample>,
    now: &Sample,
    dt: Duration,
) -> (Vec<PeerRate>, Vec<ConnRate>) {
    let prev: HashMap<(SocketAddr, SocketAddr), (u32, u32)> = before
        .map(|b| {
            b.conns
                .iter()
                .map(|c| (conn_id(c), (c.renegotiations_client, c.handshakes)))
                .collect()
        })
        .unwrap_or_default();
    let mut conns = Vec::with_capacity(now.conns.len());
    let mut per_peer: HashMap<IpAddr, (u64, u64)> = HashMap::new();
    for c in &now.conns {
        let (r0, h0) = match (before, prev.get(&conn_id(c))) {
            (None, _) => (c.renegotiations_client, c.handshakes),
            (Some(_), Some(p)) => *p,
            // New since the last sample: everything it did is new.
            (Some(_), None) => (0, 0),
        };
        let dr = u64::from(c.renegotiations_client.saturating_sub(r0));
        let dh = u64::from(c.handshakes.saturating_sub(h0));
        let e = per_peer.entry(c.client.ip()).or_default();
        e.0 += dr;
        e.1 += dh;
        conns.push(ConnRate {
            client: c.client,
            server: c.server,
            tls_version: c.tls_version.clone(),
            renegotiations_per_s: per_s(dr, dt),
            handshakes_per_s: per_s(dh, dt),
            renegotiations_client: c.renegotiations_client,
            handshakes: c.handshakes,
            state: c.state.as_str().to_owned(),
            process: match (&c.process.comm, c.process.pid) {
                (Some(comm), Some(pid)) => Some(format!("{comm}/{pid}")),
                (None, Some(pid)) => Some(pid.to_string()),
                _ => None,
            },
        });
    }
    conns.sort_by(|a, b| {
        by_rates(
            (a.renegotiations_per_s, a.handshakes_per_s),
            (b.renegotiations_per_s, b.handshakes_per_s),
        )
        .then((a.state != ConnState::Open.as_str()).cmp(&(b.state != ConnState::Open.as_str())))
        .then(b.renegotiations_client.cmp(&a.renegotiations_client))
        .then(a.client.cmp(&b.client))
    });
    let mut peers: Vec<PeerRate> = now
        .peers
        .iter()
        .map(|p| {
            let (dr, dh) = per_peer.get(&p.peer).copied().unwrap_or_default();
            PeerRate {
                peer: p.peer,
                renegotiations_per_s: per_s(dr, dt),
                handshakes_per_s: per_s(dh, dt),
                renegotiations_1m: p.renegotiations_1m,
                handshakes_10s: p.handshakes_10s,
                bans_24h: p.bans_24h,
            }
        })
        .collect();
    // Clients with connections the policy has not listed (yet).
    for (ip, (dr, dh)) in &per_peer {
        if !peers.iter().any(|p| p.peer == *ip) && (*dr > 0 || *dh > 0) {
            peers.push(PeerRate {
                peer: *ip,
                renegotiations_per_s: per_s(*dr, dt),
                handshakes_per_s: per_s(*dh, dt),
                renegotiations_1m: 0,
                handshakes_10s: 0,
                bans_24h: 0,
            });
        }
    }
    peers.sort_by(|a, b| {
        by_rates(
            (a.renegotiations_per_s, a.handshakes_per_s),
            (b.renegotiations_per_s, b.handshakes_per_s),
        )
        .then(b.renegotiations_1m.cmp(&a.renegotiations_1m))
        .then(b.handshakes_10s.cmp(&a.handshakes_10s))
        .then(a.peer.cmp(&b.peer))
    });
    (peers, conns)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(client: &str, renegs: u32, hs: u32) -> ConnRecord {
        let mut c: ConnRecord = serde_json::from_value(serde_json::json!({
            "client": client, "server": "10.0.0.1:443", "tls_version": "1.2",
            "client_hellos": 1, "handshakes": hs, "resumed": false,
            "renegotiations_client": renegs, "renegotiations_server": 0,
            "renegotiations_refused": 0, "alerts": 0, "keyupdate_like": 0,
            "unsynced": false, "state": "open"
        }))
        .expect("a conn record");
        c.handshakes = hs;
        c
    }

    fn peer(ip: &str, r1m: u64) -> PeerRecord {
        PeerRecord {
            peer: ip.parse().expect("ip"),
            handshakes_10s: 1,
            renegotiations_1m: r1m,
            bans_24h: 0,
        }
    }

    #[test]
    fn rates_over_an_interval_busiest_first() {
        let before = Sample {
            conns: vec![conn("10.0.0.2:1000", 2, 3), conn("10.0.0.3:1000", 0, 1)],
            peers: vec![peer("10.0.0.2", 2), peer("10.0.0.3", 0)],
        };
        let now = Sample {
            conns: vec![
                conn("10.0.0.2:1000", 6, 7),
                conn("10.0.0.3:1000", 0, 1),
                conn("10.0.0.3:1001", 0, 1),
            ],
            peers: vec![peer("10.0.0.3", 0), peer("10.0.0.2", 6)],
        };
        let (peers, conns) = rates(Some(&before), &now, Duration::from_secs(2));
        assert_eq!(peers[0].peer, "10.0.0.2".parse::<IpAddr>().expect("ip"));
        assert!((peers[0].renegotiations_per_s - 2.0).abs() < 1e-9);
        assert!((peers[0].handshakes_per_s - 2.0).abs() < 1e-9);
        assert!(
            (peers[1].handshakes_per_s - 0.5).abs() < 1e-9,
            "the new connection's handshake"
        );
        assert_eq!(
            conns[0].client,
            "10.0.0.2:1000".parse::<SocketAddr>().expect("addr")
        );
        assert!((conns[0].renegotiations_per_s - 2.0).abs() < 1e-9);
    }

    #[test]
    fn first_sample_has_no_rates() {
        let now = Sample {
            conns: vec![conn("10.0.0.2:1000", 5, 6)],
            peers: vec![],
        };
        let (peers, conns) = rates(None, &now, Duration::from_secs(1));
        assert_eq!(conns[0].renegotiations_per_s, 0.0);
        assert!(
            peers.is_empty(),
            "no activity, no policy entry: nothing to list"
        );
    }
}
