//! One TLS connection as `GET /v1/conns` serves it: [`ConnRecord`].

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Whether a connection is still open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnState {
    /// The connection is live (still in the kernel's flow map).
    Open,
    /// The connection ended; its final counters are kept in the agent.
    Closed,
    /// The kernel's flow map was full and dropped this connection's entry
    /// (LRU) before it ended: the counters are those of the agent's last
    /// sweep (at most a second old), and later traffic is not counted.
    Evicted,
}

impl ConnState {
    /// `"open"` or `"closed"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnState::Open => "open",
            ConnState::Closed => "closed",
            ConnState::Evicted => "evicted",
        }
    }
}

/// Records seen by TLS content type, both directions together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordCounts {
    /// ChangeCipherSpec records (type 20).
    pub change_cipher_spec: u32,
    /// Alert records (type 21).
    pub alert: u32,
    /// Handshake records (type 22).
    pub handshake: u32,
    /// Application data records (type 23).
    pub application_data: u32,
    /// Heartbeat records (type 24).
    pub heartbeat: u32,
}

/// A TLS connection as `GET /v1/conns` serves it and `hsmon conns` prints it.
///
/// Addresses serialize as `"ip:port"` (IPv6 as `"[ip]:port"`; IPv4-mapped IPv6
/// as plain IPv4). The fields after `state` are extras a client may ignore;
/// they default when missing so older or newer agents still parse.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConnRecord {
    /// The endpoint that sent the first ClientHello.
    pub client: SocketAddr,
    /// The other endpoint.
    pub server: SocketAddr,
    /// Negotiated version, `"1.0"` to `"1.3"`; `null` while unknown.
    pub tls_version: Option<String>,
    /// ClientHellos, cleartext and encrypted.
    pub client_hellos: u32,
    /// Completed handshakes (the first one and honoured renegotiations).
    pub handshakes: u32,
    /// The first handshake was a resumption.
    pub resumed: bool,
    /// Client-initiated renegotiations.
    pub renegotiations_client: u32,
    /// Server-initiated renegotiations (HelloRequests).
    pub renegotiations_server: u32,
    /// Renegotiations the peer refused.
    pub renegotiations_refused: u32,
    /// Alert records, both directions.
    pub alerts: u32,
    /// TLS 1.3 post-handshake records of KeyUpdate size.
    pub keyupdate_like: u32,
    /// A direction lost sync; its later records were not parsed.
    pub unsynced: bool,
    /// `"open"`, `"closed"`, or `"evicted"` (dropped from the full flow map).
    pub state: ConnState,
    /// Records by content type.
    #[serde(default)]
    pub records: RecordCounts,
    /// Segments that only repeated bytes already seen.
    #[serde(default)]
    pub retransmits: u32,
    /// Directions that lost sync through a gap.
    #[serde(default)]
    pub gaps: u16,
    /// Directions that lost sync on a header that is not TLS.
    #[serde(default)]
    pub bad_records: u16,
    /// Directions that lost sync on the per-segment step budget.
    #[serde(default)]
    pub overflows: u16,
    /// Handshake messages too malformed to parse.
    #[serde(default)]
    pub malformed: u16,
    /// The server sent a HelloRetryRequest.
    #[serde(default)]
    pub hello_retry: bool,
    /// The client's KeyUpdate-size records in streaks (what the KeyUpdate
    /// rule counts; `keyupdate_streaked` in the tracker).
    #[serde(default)]
    pub keyupdate_streaked: u32,
    /// Milliseconds since the first ClientHello.
    #[serde(default)]
    pub first_seen_ms_ago: u64,
    /// Milliseconds since the last segment with payload.
    #[serde(default)]
    pub last_seen_ms_ago: u64,
    /// Why handshakes failed: the cleartext alerts on the wire (first and
    /// last of each direction) and, from the uprobes, the `SSL_get_error`
    /// results the application saw after failed handshake calls.
    #[serde(default)]
    pub failure_reasons: Vec<FailureReason>,
    /// The server socket's cookie when the socket hooks counted this
    /// connection (`hsmon run --hooks socket`); null for TC-observed ones.
    #[serde(default)]
    pub socket_cookie: Option<u64>,
    /// The cookie of the server socket's network namespace (socket hooks);
    /// null for TC-observed connections.
    #[serde(default)]
    pub netns_cookie: Option<u64>,
    /// The process behind the connection, from the libssl uprobes; every
    /// field null when unknown.
    #[serde(flatten, default)]
    pub process: ProcessFields,
}

/// One entry of [`ConnRecord::failure_reasons`]; JSON
/// `{"source":"alert","sender":"server","level":"fatal","description":"protocol_version"}`
/// or `{"source":"ssl_get_error","error":"SSL_ERROR_SSL"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum FailureReason {
    /// A cleartext alert record seen on the wire.
    Alert {
        /// `"client"` or `"server"`: who sent it.
        sender: String,
        /// `"warning"`, `"fatal"` (or `"level_N"`).
        level: String,
        /// RFC 8446/5246 name, e.g. `"handshake_failure"` (or `"alert_N"`).
        description: String,
    },
    /// What `SSL_get_error` returned after a failed handshake call.
    SslGetError {
        /// `"SSL_ERROR_SSL"`, `"SSL_ERROR_SYSCALL"`, `"SSL_ERROR_ZERO_RETURN"`, ...
        error: String,
    },
}

impl FailureReason {
    /// A short text for tables: `server:protocol_version`, `SSL_ERROR_SSL`.
    pub fn short(&self) -> String {
        match self {
            FailureReason::Alert {
                sender,
                description,
                ..
            } => format!("{sender}:{description}"),
            FailureReason::SslGetError { error } => error.clone(),
        }
    }
}

/// Process attribution and handshake timing from the libssl uprobes (see
/// `monitor_common::ssl`): all `None` (JSON null) when no probed library
/// served the connection. When both ends run on this host, the server's
/// process is reported.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessFields {
    /// Process id.
    #[serde(default)]
    pub pid: Option<u32>,
    /// Command name (at most 15 bytes, the kernel's `comm`).
    #[serde(default)]
    pub comm: Option<String>,
    /// cgroup v2 id of the process.
    #[serde(default)]
    pub cgroup_id: Option<u64>,
    /// Path of the probed libssl the process called.
    #[serde(default)]
    pub library: Option<String>,
    /// `"server"` or `"client"`: which end of the connection `pid` is.
    #[serde(default)]
    pub process_side: Option<String>,
    /// Duration of the last successful handshake, from the first handshake
    /// call (`SSL_do_handshake`, `SSL_accept`, `SSL_connect`) to its
    /// successful return; null when none was timed.
    #[serde(default)]
    pub handshake_ms_last: Option<f64>,
    /// Longest such handshake.
    #[serde(default)]
    pub handshake_ms_max: Option<f64>,
    /// Handshake calls that returned 0 or less with no later success.
    #[serde(default)]
    pub handshake_failures: Option<u32>,
    /// Path of the cgroup `cgroup_id` names (relative to the cgroup v2
    /// root, e.g. `/system.slice/nginx.service`); null when unknown.
    #[serde(default)]
    pub cgroup_path: Option<String>,
    /// `SSL_renegotiate`/`SSL_renegotiate_abbreviated` calls the process
    /// made on this connection.
    #[serde(default)]
    pub local_renegotiate_calls: Option<u32>,
    /// `SSL_key_update` calls the process made on this connection.
    #[serde(default)]
    pub local_key_update_calls: Option<u32>,
}
