//! Ground truth per TCP connection, read from tshark's JSON.
//!
//! Input: `tshark -T json --no-duplicate-keys -J "ip ipv6 tcp tls" -Y tcp`
//! over a capture, with the TLS key log so that encrypted handshake messages
//! (renegotiations in TLS 1.2, everything after ServerHello in TLS 1.3,
//! KeyUpdates) are decrypted. [`parse_tshark_json`] is a pure function of
//! that text; `tests/fixtures/` holds a captured sample it is tested on.
//!
//! What is derived per connection ([`ConnTruth`]):
//! - client and server (the SYN's sender is the client);
//! - per direction: records, handshake messages by type (and how many of
//!   them were encrypted), handshake records tshark could not decrypt,
//!   alerts, ChangeCipherSpec, application data, FIN/RST;
//! - the handshakes in order ([`Handshake`]): who started them, version,
//!   resumed or full, completed or not;
//! - the renegotiation attempts ([`Renegotiation`]): client-initiated (an
//!   encrypted ClientHello not asked for by a HelloRequest) or
//!   server-initiated (a HelloRequest), and what the peer did: accepted
//!   (ServerHello / ClientHello followed), refused by an alert, or no answer.
//!
//! A handshake record counts as encrypted when it comes after its direction's
//! ChangeCipherSpec (TLS 1.2) or inside an opaque type-23 record (TLS 1.3).
//! Retransmitted segments are skipped, so no message is counted twice.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

/// Handshake message type: HelloRequest.
pub const HELLO_REQUEST: u8 = 0;
/// Handshake message type: ClientHello.
pub const CLIENT_HELLO: u8 = 1;
/// Handshake message type: ServerHello.
pub const SERVER_HELLO: u8 = 2;
/// Handshake message type: NewSessionTicket.
pub const NEW_SESSION_TICKET: u8 = 4;
/// Handshake message type: Certificate.
pub const CERTIFICATE: u8 = 11;
/// Handshake message type: Finished.
pub const FINISHED: u8 = 20;
/// Handshake message type: KeyUpdate.
pub const KEY_UPDATE: u8 = 24;

/// Record content type: ChangeCipherSpec.
pub const CT_CCS: u8 = 20;
/// Record content type: alert.
pub const CT_ALERT: u8 = 21;
/// Record content type: handshake.
pub const CT_HANDSHAKE: u8 = 22;
/// Record content type: application data.
pub const CT_APP_DATA: u8 = 23;

/// Alert description: close_notify.
pub const ALERT_CLOSE_NOTIFY: u8 = 0;
/// Alert description: handshake_failure.
pub const ALERT_HANDSHAKE_FAILURE: u8 = 40;
/// Alert description: no_renegotiation.
pub const ALERT_NO_RENEGOTIATION: u8 = 100;

/// Extension: pre_shared_key.
pub const EXT_PRE_SHARED_KEY: u16 = 41;
/// Extension: supported_versions.
pub const EXT_SUPPORTED_VERSIONS: u16 = 43;

/// Direction of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dir {
    /// Client to server.
    ToServer,
    /// Server to client.
    ToClient,
}

/// One handshake message tshark could read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeMsg {
    /// Handshake type (1 ClientHello, 2 ServerHello, …).
    pub msg_type: u8,
    /// Whether it travelled encrypted.
    pub encrypted: bool,
    /// Extension types present (in the order tshark lists them).
    pub extensions: Vec<u16>,
    /// `legacy_version` of a hello.
    pub legacy_version: Option<u16>,
    /// The selected version of a ServerHello's supported_versions.
    pub selected_version: Option<u16>,
}

/// What a record carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordBody {
    /// Handshake messages tshark decoded.
    Handshake(Vec<HandshakeMsg>),
    /// A handshake record tshark could not decrypt.
    UndecryptedHandshake,
    /// An alert; level and description are `None` when undecrypted.
    Alert {
        /// 1 warning, 2 fatal.
        level: Option<u8>,
        /// Description code.
        desc: Option<u8>,
    },
    /// ChangeCipherSpec.
    ChangeCipherSpec,
    /// Application data.
    ApplicationData,
    /// A TLS 1.3 record whose inner type is unknown (not decrypted).
    Opaque,
    /// Any other content type.
    Other(u8),
}

/// One TLS record, in capture order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Index of the packet in tshark's output (0-based).
    pub packet: usize,
    /// Direction.
    pub dir: Dir,
    /// The (inner, when decrypted) content type.
    pub content_type: Option<u8>,
    /// The outer type of a TLS 1.3 encrypted record.
    pub opaque_type: Option<u8>,
    /// Contents.
    pub body: RecordBody,
}

/// Counters for one direction of a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirStats {
    /// TLS records.
    pub records: u32,
    /// Handshake messages by type (decrypted ones included).
    pub handshake_msgs: BTreeMap<u8, u32>,
    /// Of those, the ones that travelled encrypted.
    pub encrypted_handshake_msgs: BTreeMap<u8, u32>,
    /// Handshake records tshark could not decrypt.
    pub undecrypted_handshake_records: u32,
    /// TLS 1.3 records tshark could not decrypt.
    pub opaque_records: u32,
    /// Alerts as (level, description).
    pub alerts: Vec<(Option<u8>, Option<u8>)>,
    /// ChangeCipherSpec records.
    pub ccs: u32,
    /// Application data records.
    pub app_data_records: u32,
    /// TCP payload bytes (retransmissions excluded).
    pub payload_bytes: u64,
    /// Segments with FIN.
    pub fin: u32,
    /// Segments with RST.
    pub rst: u32,
}

impl DirStats {
    /// Handshake messages of `msg_type`.
    pub fn msgs(&self, msg_type: u8) -> u32 {
        self.handshake_msgs.get(&msg_type).copied().unwrap_or(0)
    }

    /// Encrypted handshake messages of `msg_type`.
    pub fn encrypted_msgs(&self, msg_type: u8) -> u32 {
        self.encrypted_handshake_msgs
            .get(&msg_type)
            .copied()
            .unwrap_or(0)
    }
}

/// Who started a handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initiator {
    /// The connection's first handshake.
    Initial,
    /// A client-initiated renegotiation.
    Client,
    /// A server-initiated renegotiation (after a HelloRequest).
    Server,
}

/// One handshake on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// Who started it.
    pub initiator: Initiator,
    /// Negotiated version from the ServerHello: 0x0303 TLS 1.2, 0x0304 TLS 1.3.
    pub version: Option<u16>,
    /// Resumed (TLS 1.3: pre_shared_key in ServerHello; TLS 1.2: no
    /// Certificate from the server before its Finished); `None` if unknown.
    pub resumed: Option<bool>,
    /// The server's ServerHello was seen.
    pub server_hello: bool,
    /// The client's Finished was seen.
    pub client_finished: bool,
    /// The server's Finished was seen.
    pub server_finished: bool,
}

impl Handshake {
    fn new(initiator: Initiator) -> Self {
        Self {
            initiator,
            version: None,
            resumed: None,
            server_hello: false,
            client_finished: false,
            server_finished: false,
        }
    }

    /// Both Finished messages seen.
    pub fn completed(&self) -> bool {
        self.client_finished && self.server_finished
    }
}

/// What became of a renegotiation attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenegOutcome {
    /// The peer went on with the handshake.
    Accepted,
    /// The peer answered with an alert (its description, if decrypted).
    Refused {
        /// Alert description.
        alert: Option<u8>,
    },
    /// No answer before the connection ended (or the capture did).
    Unanswered,
}

/// A renegotiation attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renegotiation {
    /// [`Initiator::Client`] or [`Initiator::Server`].
    pub initiator: Initiator,
    /// Outcome.
    pub outcome: RenegOutcome,
    /// Packet index of the ClientHello / HelloRequest.
    pub packet: usize,
}

/// Ground truth for one TCP connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnTruth {
    /// tshark's `tcp.stream` index.
    pub stream: u64,
    /// Client address and port.
    pub client: SocketAddr,
    /// Server address and port.
    pub server: SocketAddr,
    /// The client's SYN was captured.
    pub saw_syn: bool,
    /// Client-to-server counters.
    pub to_server: DirStats,
    /// Server-to-client counters.
    pub to_client: DirStats,
    /// Every TLS record in order.
    pub records: Vec<Record>,
    /// Handshakes in order.
    pub handshakes: Vec<Handshake>,
    /// Renegotiation attempts in order.
    pub renegotiations: Vec<Renegotiation>,
}

impl ConnTruth {
    /// The counters of one direction.
    pub fn dir(&self, d: Dir) -> &DirStats {
        match d {
            Dir::ToServer => &self.to_server,
            Dir::ToClient => &self.to_client,
        }
    }

    /// The connection speaks TLS: its first client record is a cleartext
    /// ClientHello.
    pub fn is_tls(&self) -> bool {
        self.records
            .iter()
            .find(|r| r.dir == Dir::ToServer)
            .is_some_and(|r| match &r.body {
                RecordBody::Handshake(msgs) => msgs
                    .first()
                    .is_some_and(|m| m.msg_type == CLIENT_HELLO && !m.encrypted),
                _ => false,
            })
    }

    /// The first handshake's version as hsmon prints it: `"1.2"`, `"1.3"`
    /// (other versions as `"0xVVVV"`).
    pub fn version(&self) -> Option<String> {
        let v = self.handshakes.first()?.version?;
        Some(match v {
            0x0303 => "1.2".to_owned(),
            0x0304 => "1.3".to_owned(),
            0x0302 => "1.1".to_owned(),
            0x0301 => "1.0".to_owned(),
            v => format!("0x{v:04x}"),
        })
    }

    /// Whether the first handshake was resumed (`None` if unknown).
    pub fn first_resumed(&self) -> Option<bool> {
        self.handshakes.first()?.resumed
    }

    /// ClientHello messages (cleartext and decrypted).
    pub fn client_hellos(&self) -> u32 {
        self.to_server.msgs(CLIENT_HELLO)
    }

    /// Encrypted ClientHellos: renegotiation ClientHellos of TLS 1.2.
    pub fn encrypted_client_hellos(&self) -> u32 {
        self.to_server.encrypted_msgs(CLIENT_HELLO)
    }

    /// HelloRequest messages from the server.
    pub fn hello_requests(&self) -> u32 {
        self.to_client.msgs(HELLO_REQUEST)
    }

    /// KeyUpdate messages in both directions.
    pub fn key_updates(&self) -> u32 {
        self.to_server.msgs(KEY_UPDATE) + self.to_client.msgs(KEY_UPDATE)
    }

    /// Handshakes with both Finished messages seen.
    pub fn completed_handshakes(&self) -> usize {
        self.handshakes.iter().filter(|h| h.completed()).count()
    }

    /// Renegotiation attempts by `who`.
    pub fn renegotiations_by(&self, who: Initiator) -> usize {
        self.renegotiations
            .iter()
            .filter(|r| r.initiator == who)
            .count()
    }

    /// Client-initiated renegotiation attempts.
    pub fn client_renegotiations(&self) -> usize {
        self.renegotiations_by(Initiator::Client)
    }

    /// Server-initiated renegotiation attempts (HelloRequests).
    pub fn server_renegotiations(&self) -> usize {
        self.renegotiations_by(Initiator::Server)
    }

    /// Attempts the peer did not go on with (refused by alert or unanswered).
    pub fn refused_renegotiations(&self) -> usize {
        self.renegotiations
            .iter()
            .filter(|r| r.outcome != RenegOutcome::Accepted)
            .count()
    }

    /// Alert records in both directions.
    pub fn alert_records(&self) -> usize {
        self.to_server.alerts.len() + self.to_client.alerts.len()
    }

    /// Handshake records tshark could not decrypt, both directions (should
    /// be 0 when the key log is complete).
    pub fn undecrypted(&self) -> u32 {
        self.to_server.undecrypted_handshake_records
            + self.to_client.undecrypted_handshake_records
            + self.to_server.opaque_records
            + self.to_client.opaque_records
    }

    /// A FIN or RST was seen (the connection ended in the capture).
    pub fn closed(&self) -> bool {
        self.to_server.fin + self.to_server.rst + self.to_client.fin + self.to_client.rst > 0
    }

    /// A one-line summary for messages.
    pub fn summary(&self) -> String {
        format!(
            "{} -> {} tls={} v={:?} resumed={:?} ch={} (enc {}) hs_done={} hello_req={} \
             reneg c/s/refused={}/{}/{} alerts={} keyupdates={} undecrypted={} closed={}",
            self.client,
            self.server,
            self.is_tls(),
            self.version(),
            self.first_resumed(),
            self.client_hellos(),
            self.encrypted_client_hellos(),
            self.completed_handshakes(),
            self.hello_requests(),
            self.client_renegotiations(),
            self.server_renegotiations(),
            self.refused_renegotiations(),
            self.alert_records(),
            self.key_updates(),
            self.undecrypted(),
            self.closed()
        )
    }
}

/// Parses tshark's JSON into one [`ConnTruth`] per TCP connection, in order
/// of first appearance. `tls_ports` decide which end is the server when a
/// connection's SYN was not captured.
pub fn parse_tshark_json(json: &str, tls_ports: &[u16]) -> Result<Vec<ConnTruth>> {
    let packets: Vec<Value> = if json.trim().is_empty() {
        Vec::new()
    } else {
        serde_json::from_str(json).context("tshark output is not a JSON array")?
    };
    let mut conns: BTreeMap<u64, Builder> = BTreeMap::new();
    let mut order: Vec<u64> = Vec::new();
    for (i, p) in packets.iter().enumerate() {
        let layers = p
            .pointer("/_source/layers")
            .ok_or_else(|| anyhow!("packet {i}: no _source.layers"))?;
        let Some(tcp) = first(layers.get("tcp")) else {
            continue;
        };
        let pkt = parse_tcp(layers, tcp).with_context(|| format!("packet {i}"))?;
        let b = conns.entry(pkt.stream).or_insert_with(|| {
            order.push(pkt.stream);
            Builder::new(&pkt, tls_ports)
        });
        let dir = if pkt.src == b.client {
            Dir::ToServer
        } else if pkt.src == b.server {
            Dir::ToClient
        } else {
            bail!(
                "packet {i}: {} -> {} does not belong to stream {} ({} <-> {})",
                pkt.src,
                pkt.dst,
                pkt.stream,
                b.client,
                b.server
            );
        };
        if pkt.syn && !pkt.ack && dir == Dir::ToServer {
            b.saw_syn = true;
        }
        let st = b.stats_mut(dir);
        st.fin += u32::from(pkt.fin);
        st.rst += u32::from(pkt.rst);
        if pkt.retransmission {
            continue;
        }
        st.payload_bytes += pkt.len;
        for tls in all(layers.get("tls")) {
            for rec in all(tls.get("tls.record")) {
                b.record(i, dir, rec);
            }
        }
    }
    Ok(order
        .into_iter()
        .filter_map(|s| conns.remove(&s))
        .map(Builder::finish)
        .collect())
}

struct TcpPkt {
    stream: u64,
    src: SocketAddr,
    dst: SocketAddr,
    syn: bool,
    ack: bool,
    fin: bool,
    rst: bool,
    retransmission: bool,
    len: u64,
}

fn parse_tcp(layers: &Value, tcp: &Value) -> Result<TcpPkt> {
    let (src_ip, dst_ip) = if let Some(ip) = first(layers.get("ip")) {
        (
            field::<IpAddr>(ip, "ip.src")?,
            field::<IpAddr>(ip, "ip.dst")?,
        )
    } else if let Some(ip) = first(layers.get("ipv6")) {
        (
            field::<IpAddr>(ip, "ipv6.src")?,
            field::<IpAddr>(ip, "ipv6.dst")?,
        )
    } else {
        bail!("TCP packet without ip/ipv6 layer");
    };
    let flag = |name: &str| find_str(tcp, name).is_some_and(|v| v == "1" || v == "True");
    Ok(TcpPkt {
        stream: field(tcp, "tcp.stream")?,
        src: SocketAddr::new(src_ip, field(tcp, "tcp.srcport")?),
        dst: SocketAddr::new(dst_ip, field(tcp, "tcp.dstport")?),
        syn: flag("tcp.flags.syn"),
        ack: flag("tcp.flags.ack"),
        fin: flag("tcp.flags.fin"),
        rst: flag("tcp.flags.reset"),
        retransmission: has_key(tcp, "tcp.analysis.retransmission")
            || has_key(tcp, "tcp.analysis.fast_retransmission")
            || has_key(tcp, "tcp.analysis.spurious_retransmission"),
        len: find_str(tcp, "tcp.len")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    })
}

struct Builder {
    stream: u64,
    client: SocketAddr,
    server: SocketAddr,
    saw_syn: bool,
    to_server: DirStats,
    to_client: DirStats,
    records: Vec<Record>,
    ccs_seen: [bool; 2],
    handshakes: Vec<Handshake>,
    renegotiations: Vec<Renegotiation>,
    /// Index into `renegotiations` awaiting the peer's answer.
    pending: Option<usize>,
}

fn dir_index(d: Dir) -> usize {
    match d {
        Dir::ToServer => 0,
        Dir::ToClient => 1,
    }
}

impl Builder {
    fn new(first: &TcpPkt, tls_ports: &[u16]) -> Self {
        let src_is_client = if first.syn {
            !first.ack
        } else if tls_ports.contains(&first.dst.port()) {
            true
        } else if tls_ports.contains(&first.src.port()) {
            false
        } else {
            first.src.port() > first.dst.port()
        };
        let (client, server) = if src_is_client {
            (first.src, first.dst)
        } else {
            (first.dst, first.src)
        };
        Self {
            stream: first.stream,
            client,
            server,
            saw_syn: false,
            to_server: DirStats::default(),
            to_client: DirStats::default(),
            records: Vec::new(),
            ccs_seen: [false; 2],
            handshakes: Vec::new(),
            renegotiations: Vec::new(),
            pending: None,
        }
    }

    fn stats_mut(&mut self, d: Dir) -> &mut DirStats {
        match d {
            Dir::ToServer => &mut self.to_server,
            Dir::ToClient => &mut self.to_client,
        }
    }

    fn record(&mut self, packet: usize, dir: Dir, rec: &Value) {
        let content_type = num::<u8>(rec.get("tls.record.content_type"));
        let opaque_type = num::<u8>(rec.get("tls.record.opaque_type"));
        let encrypted = opaque_type.is_some() || self.ccs_seen[dir_index(dir)];
        let body = match content_type {
            Some(CT_HANDSHAKE) => {
                let hs: Vec<&Value> = all(rec.get("tls.handshake"));
                let msgs: Vec<HandshakeMsg> =
                    hs.iter().filter_map(|m| parse_msg(m, encrypted)).collect();
                if msgs.is_empty() {
                    RecordBody::UndecryptedHandshake
                } else {
                    RecordBody::Handshake(msgs)
                }
            }
            Some(CT_ALERT) => {
                let a = rec.get("tls.alert_message").filter(|v| v.is_object());
                RecordBody::Alert {
                    level: a.and_then(|a| num(a.get("tls.alert_message.level"))),
                    desc: a.and_then(|a| num(a.get("tls.alert_message.desc"))),
                }
            }
            Some(CT_CCS) => RecordBody::ChangeCipherSpec,
            Some(CT_APP_DATA) => RecordBody::ApplicationData,
            Some(t) => RecordBody::Other(t),
            None if opaque_type.is_some() => RecordBody::Opaque,
            None => return, // not a record (e.g. tshark's "Ignored Unknown Record")
        };
        {
            let st = self.stats_mut(dir);
            st.records += 1;
            match &body {
                RecordBody::Handshake(msgs) => {
                    for m in msgs {
                        *st.handshake_msgs.entry(m.msg_type).or_default() += 1;
                        if m.encrypted {
                            *st.encrypted_handshake_msgs.entry(m.msg_type).or_default() += 1;
                        }
                    }
                }
                RecordBody::UndecryptedHandshake => st.undecrypted_handshake_records += 1,
                RecordBody::Alert { level, desc } => st.alerts.push((*level, *desc)),
                RecordBody::ChangeCipherSpec => st.ccs += 1,
                RecordBody::ApplicationData => st.app_data_records += 1,
                RecordBody::Opaque => st.opaque_records += 1,
                RecordBody::Other(_) => {}
            }
        }
        self.track(packet, dir, &body);
        if body == RecordBody::ChangeCipherSpec {
            self.ccs_seen[dir_index(dir)] = true;
        }
        self.records.push(Record {
            packet,
            dir,
            content_type,
            opaque_type,
            body,
        });
    }

    /// The handshake / renegotiation state machine.
    fn track(&mut self, packet: usize, dir: Dir, body: &RecordBody) {
        match (dir, body) {
            (Dir::ToServer, RecordBody::Handshake(msgs)) => {
                for m in msgs {
                    match m.msg_type {
                        CLIENT_HELLO => self.client_hello(packet, m),
                        FINISHED => {
                            if let Some(h) = self.handshakes.last_mut() {
                                h.client_finished = true;
                            }
                        }
                        _ => {}
                    }
                }
            }
            (Dir::ToClient, RecordBody::Handshake(msgs)) => {
                for m in msgs {
                    match m.msg_type {
                        HELLO_REQUEST => {
                            self.renegotiations.push(Renegotiation {
                                initiator: Initiator::Server,
                                outcome: RenegOutcome::Unanswered,
                                packet,
                            });
                            self.pending = Some(self.renegotiations.len() - 1);
                        }
                        SERVER_HELLO => self.server_hello(m),
                        CERTIFICATE => {
                            if let Some(h) = self.handshakes.last_mut() {
                                if h.version != Some(0x0304) {
                                    h.resumed = Some(false);
                                }
                            }
                        }
                        FINISHED => {
                            if let Some(h) = self.handshakes.last_mut() {
                                h.server_finished = true;
                                if h.resumed.is_none()
                                    && h.server_hello
                                    && h.version != Some(0x0304)
                                {
                                    // TLS 1.2: Finished before any Certificate.
                                    h.resumed = Some(true);
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            (_, RecordBody::Alert { desc, .. }) => {
                // The peer of the pending attempt's initiator answers with
                // an alert: refused.
                if let Some(i) = self.pending {
                    let refuser = match self.renegotiations[i].initiator {
                        Initiator::Server => Dir::ToServer,
                        _ => Dir::ToClient,
                    };
                    if dir == refuser {
                        self.renegotiations[i].outcome = RenegOutcome::Refused { alert: *desc };
                        self.pending = None;
                    }
                }
            }
            _ => {}
        }
    }

    fn client_hello(&mut self, packet: usize, m: &HandshakeMsg) {
        if !m.encrypted {
            // The first ClientHello; a later cleartext one answers a TLS 1.3
            // HelloRetryRequest and belongs to the same handshake.
            if self.handshakes.is_empty() {
                self.handshakes.push(Handshake::new(Initiator::Initial));
            }
            return;
        }
        // A ClientHello answering a pending HelloRequest belongs to the
        // server's attempt; any other later ClientHello is the client's.
        let answers_hello_request = self
            .pending
            .is_some_and(|i| self.renegotiations[i].initiator == Initiator::Server);
        if answers_hello_request {
            if let Some(i) = self.pending.take() {
                self.renegotiations[i].outcome = RenegOutcome::Accepted;
            }
            self.handshakes.push(Handshake::new(Initiator::Server));
        } else {
            self.renegotiations.push(Renegotiation {
                initiator: Initiator::Client,
                outcome: RenegOutcome::Unanswered,
                packet,
            });
            self.pending = Some(self.renegotiations.len() - 1);
            self.handshakes.push(Handshake::new(Initiator::Client));
        }
    }

    fn server_hello(&mut self, m: &HandshakeMsg) {
        if let Some(i) = self.pending {
            if self.renegotiations[i].initiator == Initiator::Client {
                self.renegotiations[i].outcome = RenegOutcome::Accepted;
                self.pending = None;
            }
        }
        let Some(h) = self.handshakes.last_mut() else {
            return;
        };
        h.server_hello = true;
        h.version = m.selected_version.or(m.legacy_version);
        if h.version == Some(0x0304) {
            h.resumed = Some(m.extensions.contains(&EXT_PRE_SHARED_KEY));
        }
    }

    fn finish(self) -> ConnTruth {
        ConnTruth {
            stream: self.stream,
            client: self.client,
            server: self.server,
            saw_syn: self.saw_syn,
            to_server: self.to_server,
            to_client: self.to_client,
            records: self.records,
            handshakes: self.handshakes,
            renegotiations: self.renegotiations,
        }
    }
}

fn parse_msg(m: &Value, encrypted: bool) -> Option<HandshakeMsg> {
    let msg_type = num::<u8>(m.get("tls.handshake.type"))?;
    let mut extensions = Vec::new();
    collect_u16(m, "tls.handshake.extension.type", &mut extensions);
    let selected_version = if msg_type == SERVER_HELLO {
        find_str(m, "tls.handshake.extensions.supported_version").and_then(parse_u16)
    } else {
        None
    };
    Some(HandshakeMsg {
        msg_type,
        encrypted,
        extensions,
        legacy_version: m
            .get("tls.handshake.version")
            .and_then(Value::as_str)
            .and_then(parse_u16),
        selected_version,
    })
}

/// The object itself, or the first element if tshark made it an array.
fn first(v: Option<&Value>) -> Option<&Value> {
    match v? {
        Value::Array(a) => a.first(),
        v => Some(v),
    }
}

/// The value, or every element if it is an array.
fn all(v: Option<&Value>) -> Vec<&Value> {
    match v {
        None => Vec::new(),
        Some(Value::Array(a)) => a.iter().collect(),
        Some(v) => vec![v],
    }
}

/// A number from a string like "22" or "0x0303".
fn num<T: TryFrom<u64>>(v: Option<&Value>) -> Option<T> {
    let s = first(v)?.as_str()?;
    let n = if let Some(hex) = s.strip_prefix("0x") {
        u64::from_str_radix(hex, 16).ok()?
    } else {
        s.parse::<u64>().ok()?
    };
    T::try_from(n).ok()
}

fn parse_u16(s: &str) -> Option<u16> {
    match s.strip_prefix("0x") {
        Some(hex) => u16::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn field<T: std::str::FromStr>(obj: &Value, key: &str) -> Result<T> {
    let s = first(obj.get(key))
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("missing {key}"))?;
    s.parse::<T>().map_err(|_| anyhow!("bad {key}: {s:?}"))
}

/// Depth-first search for the first string value under `key`.
fn find_str<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    match v {
        Value::Object(map) => {
            if let Some(found) = map.get(key) {
                if let Some(s) = first(Some(found)).and_then(Value::as_str) {
                    return Some(s);
                }
            }
            map.values().find_map(|c| find_str(c, key))
        }
        Value::Array(a) => a.iter().find_map(|c| find_str(c, key)),
        _ => None,
    }
}

fn has_key(v: &Value, key: &str) -> bool {
    match v {
        Value::Object(map) => map.contains_key(key) || map.values().any(|c| has_key(c, key)),
        Value::Array(a) => a.iter().any(|c| has_key(c, key)),
        _ => false,
    }
}

/// Collects every value under `key` (anywhere below `v`) as u16.
fn collect_u16(v: &Value, key: &str, out: &mut Vec<u16>) {
    match v {
        Value::Object(map) => {
            for (k, c) in map {
                if k == key {
                    for s in all(Some(c)).into_iter().filter_map(Value::as_str) {
                        if let Some(n) = parse_u16(s) {
                            out.push(n);
                        }
                    }
                } else {
                    collect_u16(c, key, out);
                }
            }
        }
        Value::Array(a) => {
            for c in a {
                collect_u16(c, key, out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    fn pkt(src: &str, dst: &str, stream: u64, flags: (u8, u8, u8), tls: Option<Value>) -> Value {
        let (sip, sport) = src.rsplit_once(':').expect("src");
        let (dip, dport) = dst.rsplit_once(':').expect("dst");
        let mut layers = serde_json::json!({
            "ip": {"ip.src": sip, "ip.dst": dip},
            "tcp": {
                "tcp.srcport": sport, "tcp.dstport": dport, "tcp.stream": stream.to_string(),
                "tcp.len": "10",
                "tcp.flags_tree": {
                    "tcp.flags.syn": flags.0.to_string(),
                    "tcp.flags.ack": flags.1.to_string(),
                    "tcp.flags.fin": flags.2.to_string(),
                    "tcp.flags.reset": "0"
                }
            }
        });
        if let Some(t) = tls {
            layers["tls"] = t;
        }
        serde_json::json!({"_source": {"layers": layers}})
    }

    fn hs(ty: u8) -> Value {
        serde_json::json!({"tls.record.content_type": "22", "tls.handshake": {"tls.handshake.type": ty.to_string()}})
    }

    const C: &str = "10.200.0.2:40000";
    const S: &str = "10.200.0.1:4433";

    #[test]
    fn tls12_refused_renegotiation() {
        let server_hello = serde_json::json!({"tls.record.content_type": "22", "tls.handshake": {
            "tls.handshake.type": "2", "tls.handshake.version": "0x0303",
            "Extension: renegotiation_info (len=1)": {"tls.handshake.extension.type": "65281"}}});
        let ccs =
            serde_json::json!({"tls.record.content_type": "20", "tls.change_cipher_spec": ""});
        let packets = vec![
            pkt(C, S, 0, (1, 0, 0), None),
            pkt(S, C, 0, (1, 1, 0), None),
            pkt(C, S, 0, (0, 1, 0), Some(serde_json::json!({"tls.record": hs(1)}))),
            pkt(
                S,
                C,
                0,
                (0, 1, 0),
                Some(serde_json::json!({"tls.record": [server_hello, hs(11), hs(14)]})),
            ),
            pkt(
                C,
                S,
                0,
                (0, 1, 0),
                Some(serde_json::json!({"tls.record": [hs(16), ccs.clone(), hs(20)]})),
            ),
            pkt(S, C, 0, (0, 1, 0), Some(serde_json::json!({"tls.record": [ccs, hs(20)]}))),
            // Renegotiation ClientHello, decrypted, then the refusal.
            pkt(C, S, 0, (0, 1, 0), Some(serde_json::json!({"tls.record": hs(1)}))),
            pkt(
                S,
                C,
                0,
                (0, 1, 0),
                Some(serde_json::json!({"tls.record": {"tls.record.content_type": "21",
                    "tls.alert_message": {"tls.alert_message.level": "1", "tls.alert_message.desc": "100"}}})),
            ),
            // An undecrypted handshake record.
            pkt(
                C,
                S,
                0,
                (0, 1, 1),
                Some(serde_json::json!({"tls": {"tls.record": {"tls.record.content_type": "22", "tls.handshake": ""}}})["tls"].clone()),
            ),
        ];
        let json = serde_json::to_string(&packets).expect("json");
        let conns = parse_tshark_json(&json, &[4433]).expect("parse");
        assert_eq!(conns.len(), 1);
        let c = &conns[0];
        assert!(c.saw_syn);
        assert_eq!(c.client.to_string(), C);
        assert_eq!(c.server.to_string(), S);
        assert!(c.is_tls());
        assert_eq!(c.version().as_deref(), Some("1.2"));
        assert_eq!(c.first_resumed(), Some(false));
        assert_eq!(c.client_hellos(), 2);
        assert_eq!(c.encrypted_client_hellos(), 1);
        assert_eq!(c.completed_handshakes(), 1);
        assert_eq!(c.client_renegotiations(), 1);
        assert_eq!(c.refused_renegotiations(), 1);
        assert_eq!(
            c.renegotiations[0].outcome,
            RenegOutcome::Refused {
                alert: Some(ALERT_NO_RENEGOTIATION)
            }
        );
        assert_eq!(c.to_server.undecrypted_handshake_records, 1);
        assert!(c.closed());
    }

    #[test]
    fn tls12_resumed_without_certificate() {
        let sh = serde_json::json!({"tls.record.content_type": "22", "tls.handshake": [
            {"tls.handshake.type": "2", "tls.handshake.version": "0x0303"},
            {"tls.handshake.type": "4"}]});
        let ccs = serde_json::json!({"tls.record.content_type": "20"});
        let packets = vec![
            pkt(C, S, 3, (1, 0, 0), None),
            pkt(
                C,
                S,
                3,
                (0, 1, 0),
                Some(serde_json::json!({"tls.record": hs(1)})),
            ),
            pkt(
                S,
                C,
                3,
                (0, 1, 0),
                Some(serde_json::json!({"tls.record": [sh, ccs.clone(), hs(20)]})),
            ),
            pkt(
                C,
                S,
                3,
                (0, 1, 0),
                Some(serde_json::json!({"tls.record": [ccs, hs(20)]})),
            ),
        ];
        let conns =
            parse_tshark_json(&serde_json::to_string(&packets).expect("json"), &[]).expect("parse");
        let c = &conns[0];
        assert_eq!(c.first_resumed(), Some(true));
        assert_eq!(c.completed_handshakes(), 1);
        assert_eq!(c.to_client.msgs(NEW_SESSION_TICKET), 1);
        assert!(!c.closed());
    }

    #[test]
    fn non_tls_and_empty_input() {
        assert!(parse_tshark_json("", &[]).expect("empty").is_empty());
        let packets = vec![pkt(C, "10.200.0.1:7000", 1, (1, 0, 0), None)];
        let conns =
            parse_tshark_json(&serde_json::to_string(&packets).expect("json"), &[]).expect("parse");
        assert_eq!(conns.len(), 1);
        assert!(!conns[0].is_tls());
    }

    #[test]
    fn helpers() {
        assert_eq!(num::<u8>(Some(&Value::String("0x16".into()))), Some(22));
        assert_eq!(num::<u8>(Some(&Value::String("300".into()))), None);
        assert_eq!(parse_u16("0x0304"), Some(0x0304));
        let v = serde_json::json!({"a": {"x.type": ["43", "51"]}, "b": [{"x.type": "41"}]});
        let mut out = Vec::new();
        collect_u16(&v, "x.type", &mut out);
        out.sort_unstable();
        assert_eq!(out, vec![41, 43, 51]);
    }

    fn fixture(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(name)
    }

    /// The pruned tshark JSON of a capture under tests/fixtures.
    fn load(name: &str) -> Vec<ConnTruth> {
        let path = fixture(&format!("{name}.json"));
        let text = std::fs::read_to_string(&path).expect("fixture readable");
        parse_tshark_json(&text, &[4433]).expect("fixture parses")
    }

    const SAMPLES: [&str; 5] = [
        "tls12_reneg_accepted",
        "tls12_reneg_refused",
        "tls12_server_reneg",
        "tls13_keyupdate",
        "tls13_resumed",
    ];

    #[test]
    fn fixture_tls12_renegotiation_accepted() {
        let c = load("tls12_reneg_accepted");
        assert_eq!(c.len(), 2);
        let (a, b) = (&c[0], &c[1]);
        assert!(a.is_tls() && b.is_tls());
        assert_eq!(a.client_hellos(), 2);
        assert_eq!(a.encrypted_client_hellos(), 1);
        assert_eq!(a.completed_handshakes(), 2);
        assert_eq!(
            a.renegotiations
                .iter()
                .map(|r| (r.initiator, r.outcome))
                .collect::<Vec<_>>(),
            vec![(Initiator::Client, RenegOutcome::Accepted)]
        );
        assert_eq!(a.handshakes[1].resumed, Some(false));
        assert_eq!(b.client_hellos(), 1);
        assert!(b.renegotiations.is_empty());
        for t in [a, b] {
            assert_eq!(t.version().as_deref(), Some("1.2"));
            assert_eq!(t.undecrypted(), 0);
            assert!(t.closed());
        }
    }

    #[test]
    fn fixture_tls12_renegotiation_refused() {
        let c = load("tls12_reneg_refused");
        assert_eq!(c.len(), 1);
        let t = &c[0];
        assert_eq!(t.encrypted_client_hellos(), 1);
        assert_eq!(t.completed_handshakes(), 1);
        assert_eq!(
            t.renegotiations[0].outcome,
            RenegOutcome::Refused {
                alert: Some(ALERT_NO_RENEGOTIATION)
            }
        );
        // The server's warning, then the client's fatal handshake_failure.
        assert_eq!(
            t.to_client.alerts,
            vec![(Some(1), Some(ALERT_NO_RENEGOTIATION))]
        );
        assert_eq!(
            t.to_server.alerts,
            vec![(Some(2), Some(ALERT_HANDSHAKE_FAILURE))]
        );
    }

    #[test]
    fn fixture_tls12_server_initiated_renegotiation() {
        let c = load("tls12_server_reneg");
        assert_eq!(c.len(), 1);
        let t = &c[0];
        assert_eq!(t.hello_requests(), 2);
        assert_eq!(t.server_renegotiations(), 2);
        assert_eq!(t.client_renegotiations(), 0);
        assert_eq!(t.refused_renegotiations(), 0);
        assert_eq!(t.client_hellos(), 3);
        assert_eq!(t.completed_handshakes(), 3);
        assert!(t.handshakes[1..]
            .iter()
            .all(|h| h.initiator == Initiator::Server));
        // OpenSSL's client offers its session when a HelloRequest asks it
        // to renegotiate: the server-initiated handshakes are abbreviated.
        assert!(t.handshakes[1..].iter().all(|h| h.resumed == Some(true)));
        assert_eq!(t.first_resumed(), Some(false));
    }

    #[test]
    fn fixture_tls13_key_update_both_ways() {
        let c = load("tls13_keyupdate");
        assert_eq!(c.len(), 1);
        let t = &c[0];
        assert_eq!(t.version().as_deref(), Some("1.3"));
        assert_eq!(t.to_server.msgs(KEY_UPDATE), 1);
        assert_eq!(t.to_client.msgs(KEY_UPDATE), 1);
        assert_eq!(t.to_server.encrypted_msgs(KEY_UPDATE), 1);
        assert_eq!(t.first_resumed(), Some(false));
        assert_eq!(t.undecrypted(), 0);
        assert!(t.to_client.msgs(NEW_SESSION_TICKET) >= 1);
    }

    #[test]
    fn fixture_tls13_resumption() {
        let c = load("tls13_resumed");
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].first_resumed(), Some(false));
        assert_eq!(c[1].first_resumed(), Some(true));
        assert_eq!(c[1].to_client.msgs(CERTIFICATE), 0);
        assert!(c.iter().all(|t| t.version().as_deref() == Some("1.3")));
    }

    /// The pruned fixtures say what tshark says about the committed
    /// captures (skipped where tshark is not installed).
    #[test]
    fn fixtures_match_a_fresh_tshark_run() {
        if std::process::Command::new("tshark")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("SKIPPED (tshark not installed): fixtures_match_a_fresh_tshark_run");
            return;
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        for name in SAMPLES {
            let json = crate::capture::tshark_json(
                &fixture(&format!("{name}.pcap")),
                Some(&fixture(&format!("{name}.keylog"))),
                &[4433],
                &tmp.path().join(format!("{name}.json")),
            )
            .expect("tshark runs");
            let fresh = parse_tshark_json(&json, &[4433]).expect("parses");
            assert_eq!(fresh, load(name), "{name}");
        }
    }
}
