//! Policy decisions as the agent prints them (stdout, `--events-file`) and
//! publishes them (`decision` events): what a rule asked for ([`Action`])
//! and what came of it ([`Outcome`], the `action` key).

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::cidr::Cidr;

/// What crossing a threshold does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Report a decision event only.
    Alert,
    /// Reset the offending connection (`SOCK_DESTROY`).
    Reset,
    /// Ban the peer's address (for a prefix rule: the prefix) for the
    /// (escalated) TTL.
    Ban,
}

impl Action {
    /// The action's name in the config file.
    pub fn name(self) -> &'static str {
        match self {
            Action::Alert => "alert",
            Action::Reset => "reset",
            Action::Ban => "ban",
        }
    }
}

/// What came of a decision: the `action` key of its JSON line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Reported only.
    Alert,
    /// The connection was reset.
    Reset,
    /// Dry-run: the connection would have been reset.
    WouldReset,
    /// The connection was gone before the reset.
    AlreadyClosed,
    /// The reset failed.
    ResetFailed,
    /// The client is allowlisted: not reset.
    NotResetAllowlisted,
    /// The peer (or prefix) was banned.
    Ban,
    /// Dry-run: the peer would have been banned.
    WouldBan,
    /// The target overlaps the allowlist: not banned.
    NotBannedAllowlisted,
    /// The ban failed.
    BanFailed,
}

impl Outcome {
    /// The `action` value.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Alert => "alert",
            Outcome::Reset => "reset",
            Outcome::WouldReset => "would_reset",
            Outcome::AlreadyClosed => "already_closed",
            Outcome::ResetFailed => "reset_failed",
            Outcome::NotResetAllowlisted => "not_reset_allowlisted",
            Outcome::Ban => "ban",
            Outcome::WouldBan => "would_ban",
            Outcome::NotBannedAllowlisted => "not_banned_allowlisted",
            Outcome::BanFailed => "ban_failed",
        }
    }
}

/// The connection an event is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConnRef {
    /// Client endpoint.
    pub client: SocketAddr,
    /// Server endpoint.
    pub server: SocketAddr,
    /// The server socket's identity when the socket hooks counted the
    /// connection (not serialized: the decision's JSON is unchanged).
    #[serde(skip)]
    pub socket: Option<SocketCookies>,
}

/// A server socket as the socket hooks name it (`hsmon conns`'
/// `socket_cookie` and `netns_cookie`): enough to find that one socket in
/// that one network namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SocketCookies {
    /// `bpf_get_socket_cookie` (sock_diag's `idiag_cookie`).
    pub socket: u64,
    /// `bpf_get_netns_cookie` (`SO_NETNS_COOKIE` in that namespace).
    pub netns: u64,
}

impl SocketCookies {
    /// The cookies of a flow key, `None` for a TC-observed flow (cookie 0).
    pub fn of_key(key: &monitor_common::flow::FlowKey) -> Option<Self> {
        (key.sock_cookie != 0).then_some(SocketCookies {
            socket: key.sock_cookie,
            netns: key.netns_cookie,
        })
    }
}

/// The counts behind a decision: the peer's (or prefix's) windows, and for
/// a per-connection rule the connection's own figure.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// New handshakes in the last 10 s.
    pub handshakes_10s: u64,
    /// Client renegotiation attempts in the last 60 s.
    pub renegotiations_1m: u64,
    /// `handshake_timeout`: ms since the connection's first ClientHello.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handshake_ms: Option<u64>,
    /// `keyupdates_per_second`: the connection's `keyupdate_streaked` rate
    /// (per second, over the rule's span).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyupdates_1s: Option<u64>,
    /// `reneg_cap`: the connection's client renegotiations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renegotiations_conn: Option<u64>,
}

/// One decision, printed as a JSON line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// RFC 3339 wall-clock time.
    pub time: String,
    /// The rule's name.
    pub rule: &'static str,
    /// The client address (for a prefix rule: its busiest address).
    pub peer: IpAddr,
    /// The client prefix (prefix rules only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<Cidr>,
    /// The connection that crossed the threshold, if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection: Option<ConnRef>,
    /// The counts.
    pub counts: Counts,
    /// What came of the rule's [`Action`].
    pub action: Outcome,
    /// The ban's TTL in seconds (ban and would_ban).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<u64>,
    /// Dry-run on.
    pub dry_run: bool,
}
