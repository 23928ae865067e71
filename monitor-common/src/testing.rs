//! Test support (feature `testing`, needs `std`): hand-made TLS byte streams, and a driver that feeds them to the tracker as
//! TCP segments.
//!
//! * Builders: [`record`], [`hs`] (a handshake message), [`ClientHello`],
//!   [`ServerHello`] (TLS 1.2, TLS 1.3, HelloRetryRequest), dummy-bodied
//!   Certificate / ServerKeyExchange / ServerHelloDone / ClientKeyExchange /
//!   Finished / NewSessionTicket messages, [`ccs`], alerts, opaque encrypted
//!   handshake records, application data and heartbeat records.
//! * Conversation builders: the end of a TLS 1.2 handshake, full
//!   ([`tls12_finish_full`]) or abbreviated ([`tls12_finish_abbreviated`]);
//!   whole TLS 1.2 handshakes ([`tls12_full`], [`tls12_full_with_flight`],
//!   [`tls12_full_with_hello`], [`tls12_abbreviated`]); renegotiations
//!   honoured or refused ([`tls12_client_reneg`],
//!   [`tls12_client_reneg_abbreviated`], [`tls12_client_reneg_refused`],
//!   [`tls12_server_reneg`], [`tls12_server_reneg_refused`]); TLS 1.3
//!   ([`tls13_server_flight`], [`tls13_finish`], [`tls13_full`]).
//! * [`Conversation`]: an ordered list of sends (direction, bytes) and closes.
//!   A [`Plan`] turns it into TCP segments: one per send, or the bytes of each
//!   run of same-direction sends cut at chosen points.
//! * [`Driver`]: feeds a plan to a [`FlowState`] with per-direction sequence
//!   numbers starting at a chosen ISN (wraparound included).
#![allow(dead_code)]

use std::vec;
use std::vec::Vec;

use crate::tls::*;
use crate::tracker::{CapVerdict, FlowCounters, FlowState, SegmentOutcome, CLIENT, SERVER};

/// The ServerHello random of a HelloRetryRequest (RFC 8446 4.1.3).
pub const HRR_RANDOM: [u8; 32] = [
    0xCF, 0x21, 0xAD, 0x74, 0xE5, 0x9A, 0x61, 0x11, 0xBE, 0x1D, 0x8C, 0x02, 0x1E, 0x65, 0xB8, 0x91,
    0xC2, 0xA2, 0x11, 0x16, 0x7A, 0xBB, 0x8C, 0x5E, 0x07, 0x9E, 0x09, 0xE2, 0xC8, 0xA8, 0x33, 0x9C,
];

/// Extension type: renegotiation_info (RFC 5746).
pub const EXT_RENEGOTIATION_INFO: u16 = 0xff01;
/// Extension type: key_share (RFC 8446).
pub const EXT_KEY_SHARE: u16 = 0x0033;
/// Extension type: server_name.
pub const EXT_SERVER_NAME: u16 = 0x0000;
/// Extension type: ec_point_formats.
pub const EXT_EC_POINT_FORMATS: u16 = 0x000b;

/// Alert level: warning.
pub const ALERT_WARNING: u8 = 1;
/// Alert level: fatal.
pub const ALERT_FATAL: u8 = 2;
/// Alert description: close_notify.
pub const ALERT_CLOSE_NOTIFY: u8 = 0;
/// Alert description: no_renegotiation.
pub const ALERT_NO_RENEGOTIATION: u8 = 100;

/// Body length of an encrypted alert in TLS 1.2 with an AEAD (8 explicit
/// nonce + 2 + 16 tag).
pub const ENCRYPTED_ALERT_LEN: usize = 26;
/// Body length of an encrypted TLS 1.2 Finished (AES-GCM: 8 + 16 + 16).
pub const ENCRYPTED_FINISHED_LEN: usize = 40;

/// `len` deterministic, unremarkable filler bytes (never all zero, and not a
/// record or handshake header by design: the tracker must not care anyway).
pub fn filler(len: usize, seed: u8) -> Vec<u8> {
    let mut x = u32::from(seed).wrapping_mul(0x9E37_79B9) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 7) as u8
        })
        .collect()
}

fn push_u16(v: &mut Vec<u8>, x: u16) {
    v.extend_from_slice(&x.to_be_bytes());
}

fn push_u24(v: &mut Vec<u8>, x: usize) {
    assert!(x < 1 << 24);
    v.extend_from_slice(&(x as u32).to_be_bytes()[1..]);
}

/// A record with an explicit length field (may lie about the body).
pub fn record_raw(typ: u8, version: u16, len_field: u16, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + body.len());
    v.push(typ);
    push_u16(&mut v, version);
    push_u16(&mut v, len_field);
    v.extend_from_slice(body);
    v
}

/// A record of content type `typ` with legacy version `version`.
pub fn record(typ: u8, version: u16, body: &[u8]) -> Vec<u8> {
    let len = u16::try_from(body.len()).expect("record body over 64 KiB");
    record_raw(typ, version, len, body)
}

/// A handshake message: type, 24-bit length, body.
pub fn hs(typ: u8, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + body.len());
    v.push(typ);
    push_u24(&mut v, body.len());
    v.extend_from_slice(body);
    v
}

/// One cleartext handshake record (version 0x0303) holding `msgs` back to back.
pub fn hs_record(msgs: &[&[u8]]) -> Vec<u8> {
    record(CT_HANDSHAKE, VERSION_TLS12, &msgs.concat())
}

/// One handshake record per message.
pub fn hs_records(msgs: &[&[u8]]) -> Vec<u8> {
    msgs.iter().flat_map(|m| hs_record(&[m])).collect()
}

/// The messages back to back, cut into handshake records of at most `frag`
/// bytes (the last one may be shorter).
pub fn hs_fragmented(msgs: &[&[u8]], frag: usize) -> Vec<u8> {
    assert!(frag > 0);
    msgs.concat()
        .chunks(frag)
        .flat_map(|c| record(CT_HANDSHAKE, VERSION_TLS12, c))
        .collect()
}

/// An extension: type, length, data.
pub fn ext(typ: u16, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    push_u16(&mut v, typ);
    push_u16(&mut v, data.len() as u16);
    v.extend_from_slice(data);
    v
}

/// A realistic ClientHello.
#[derive(Clone, Debug)]
pub struct ClientHello {
    /// Legacy session id (0..=32 bytes in real life; any length here).
    pub session_id: Vec<u8>,
    /// Offer TLS 1.3 (supported_versions, key_share, psk modes).
    pub tls13: bool,
    /// Bytes of a padding extension (0: none).
    pub padding: usize,
}

impl Default for ClientHello {
    fn default() -> Self {
        ClientHello {
            session_id: filler(32, 1),
            tls13: false,
            padding: 0,
        }
    }
}

impl ClientHello {
    /// A TLS 1.2-only ClientHello.
    pub fn tls12() -> Self {
        Self::default()
    }

    /// A ClientHello offering TLS 1.3 and 1.2.
    pub fn tls13() -> Self {
        ClientHello {
            tls13: true,
            ..Self::default()
        }
    }

    /// The message body.
    pub fn body(&self) -> Vec<u8> {
        let mut v = Vec::new();
        push_u16(&mut v, VERSION_TLS12);
        v.extend_from_slice(&filler(32, 2));
        v.push(self.session_id.len() as u8);
        v.extend_from_slice(&self.session_id);
        let suites: &[u16] = &[
            0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0x00ff,
        ];
        push_u16(&mut v, (suites.len() * 2) as u16);
        for s in suites {
            push_u16(&mut v, *s);
        }
        v.extend_from_slice(&[1, 0]); // compression: null
        let mut exts = Vec::new();
        let host = b"example.com";
        let mut sni = Vec::new();
        push_u16(&mut sni, (host.len() + 3) as u16);
        sni.push(0);
        push_u16(&mut sni, host.len() as u16);
        sni.extend_from_slice(host);
        exts.extend(ext(EXT_SERVER_NAME, &sni));
        exts.extend(ext(0x000a, &[0, 4, 0, 0x1d, 0, 0x17])); // supported_groups
        exts.extend(ext(0x000d, &[0, 4, 4, 3, 8, 4])); // signature_algorithms
        exts.extend(ext(EXT_RENEGOTIATION_INFO, &[0]));
        if self.tls13 {
            exts.extend(ext(EXT_SUPPORTED_VERSIONS, &[4, 3, 4, 3, 3]));
            let mut ks = Vec::new();
            push_u16(&mut ks, 36);
            push_u16(&mut ks, 0x001d);
            push_u16(&mut ks, 32);
            ks.extend_from_slice(&filler(32, 3));
            exts.extend(ext(EXT_KEY_SHARE, &ks));
            exts.extend(ext(0x002d, &[1, 1])); // psk_key_exchange_modes
        }
        if self.padding > 0 {
            exts.extend(ext(0x0015, &vec![0; self.padding]));
        }
        push_u16(&mut v, exts.len() as u16);
        v.extend(exts);
        v
    }

    /// The handshake message.
    pub fn message(&self) -> Vec<u8> {
        hs(HS_CLIENT_HELLO, &self.body())
    }

    /// The message in one record with legacy version 0x0301, as clients send it.
    pub fn record(&self) -> Vec<u8> {
        record(CT_HANDSHAKE, VERSION_TLS10, &self.message())
    }
}

/// A ServerHello (or HelloRetryRequest).
#[derive(Clone, Debug)]
pub struct ServerHello {
    /// Legacy version field (0x0303 for TLS 1.2 and 1.3).
    pub legacy_version: u16,
    /// The random (HRR: [`HRR_RANDOM`]).
    pub random: [u8; 32],
    /// Session id echoed (any length up to 255).
    pub session_id: Vec<u8>,
    /// Chosen cipher suite.
    pub cipher: u16,
    /// supported_versions extension with this version.
    pub supported_version: Option<u16>,
    /// pre_shared_key extension (TLS 1.3 resumption).
    pub psk: bool,
    /// key_share extension.
    pub key_share: bool,
    /// Other extensions, placed before the ones above.
    pub extra: Vec<(u16, Vec<u8>)>,
    /// Put pre_shared_key before supported_versions.
    pub psk_first: bool,
    /// Omit the extensions block entirely (legal before TLS 1.3).
    pub no_extensions: bool,
}

impl ServerHello {
    /// A TLS 1.2 ServerHello with renegotiation_info and ec_point_formats.
    pub fn tls12() -> Self {
        ServerHello {
            legacy_version: VERSION_TLS12,
            random: filler(32, 7).try_into().unwrap(),
            session_id: filler(32, 8),
            cipher: 0xc02f,
            supported_version: None,
            psk: false,
            key_share: false,
            extra: vec![
                (EXT_RENEGOTIATION_INFO, vec![0]),
                (EXT_EC_POINT_FORMATS, vec![1, 0]),
            ],
            psk_first: false,
            no_extensions: false,
        }
    }

    /// A TLS 1.3 ServerHello (supported_versions 0x0304, key_share).
    pub fn tls13() -> Self {
        ServerHello {
            legacy_version: VERSION_TLS12,
            random: filler(32, 9).try_into().unwrap(),
            session_id: filler(32, 10),
            cipher: 0x1301,
            supported_version: Some(VERSION_TLS13),
            psk: false,
            key_share: true,
            extra: vec![],
            psk_first: false,
            no_extensions: false,
        }
    }

    /// A TLS 1.3 HelloRetryRequest.
    pub fn hrr() -> Self {
        ServerHello {
            random: HRR_RANDOM,
            ..Self::tls13()
        }
    }

    /// With a legacy version (TLS 1.0/1.1/1.2 ServerHello).
    pub fn version(mut self, v: u16) -> Self {
        self.legacy_version = v;
        self
    }

    /// With pre_shared_key.
    pub fn psk(mut self) -> Self {
        self.psk = true;
        self
    }

    /// With a session id of `n` bytes.
    pub fn session_id(mut self, n: usize) -> Self {
        self.session_id = filler(n, 11);
        self
    }

    /// The extensions block's content.
    pub fn extensions(&self) -> Vec<u8> {
        let mut exts = Vec::new();
        for (t, d) in &self.extra {
            exts.extend(ext(*t, d));
        }
        let psk = ext(EXT_PRE_SHARED_KEY, &[0, 0]);
        if self.psk && self.psk_first {
            exts.extend_from_slice(&psk);
        }
        if let Some(sv) = self.supported_version {
            exts.extend(ext(EXT_SUPPORTED_VERSIONS, &sv.to_be_bytes()));
        }
        if self.key_share {
            let mut ks = Vec::new();
            push_u16(&mut ks, 0x001d);
            push_u16(&mut ks, 32);
            ks.extend_from_slice(&filler(32, 12));
            exts.extend(ext(EXT_KEY_SHARE, &ks));
        }
        if self.psk && !self.psk_first {
            exts.extend_from_slice(&psk);
        }
        exts
    }

    /// The message body.
    pub fn body(&self) -> Vec<u8> {
        let mut v = Vec::new();
        push_u16(&mut v, self.legacy_version);
        v.extend_from_slice(&self.random);
        v.push(self.session_id.len() as u8);
        v.extend_from_slice(&self.session_id);
        push_u16(&mut v, self.cipher);
        v.push(0);
        if !self.no_extensions {
            let exts = self.extensions();
            push_u16(&mut v, exts.len() as u16);
            v.extend(exts);
        }
        v
    }

    /// The handshake message.
    pub fn message(&self) -> Vec<u8> {
        hs(HS_SERVER_HELLO, &self.body())
    }
}

/// Certificate message with a dummy body of `len` bytes.
pub fn certificate(len: usize) -> Vec<u8> {
    hs(HS_CERTIFICATE, &filler(len, 20))
}

/// ServerKeyExchange message with a dummy body.
pub fn server_key_exchange(len: usize) -> Vec<u8> {
    hs(HS_SERVER_KEY_EXCHANGE, &filler(len, 21))
}

/// CertificateRequest message with a dummy body.
pub fn certificate_request(len: usize) -> Vec<u8> {
    hs(HS_CERTIFICATE_REQUEST, &filler(len, 22))
}

/// ServerHelloDone (empty body).
pub fn server_hello_done() -> Vec<u8> {
    hs(HS_SERVER_HELLO_DONE, &[])
}

/// ClientKeyExchange message with a dummy body.
pub fn client_key_exchange(len: usize) -> Vec<u8> {
    hs(HS_CLIENT_KEY_EXCHANGE, &filler(len, 23))
}

/// Finished message (12-byte verify_data).
pub fn finished() -> Vec<u8> {
    hs(HS_FINISHED, &filler(12, 24))
}

/// NewSessionTicket message with a dummy body.
pub fn new_session_ticket(len: usize) -> Vec<u8> {
    hs(HS_NEW_SESSION_TICKET, &filler(len, 25))
}

/// HelloRequest (empty body).
pub fn hello_request() -> Vec<u8> {
    hs(HS_HELLO_REQUEST, &[])
}

/// ChangeCipherSpec record.
pub fn ccs() -> Vec<u8> {
    record(CT_CHANGE_CIPHER_SPEC, VERSION_TLS12, &[1])
}

/// Cleartext alert record.
pub fn alert(level: u8, desc: u8) -> Vec<u8> {
    record(CT_ALERT, VERSION_TLS12, &[level, desc])
}

/// Encrypted alert record (opaque body).
pub fn encrypted_alert() -> Vec<u8> {
    record(CT_ALERT, VERSION_TLS12, &filler(ENCRYPTED_ALERT_LEN, 30))
}

/// Encrypted handshake record with an opaque body of `len` bytes.
pub fn encrypted_handshake(len: usize) -> Vec<u8> {
    record(CT_HANDSHAKE, VERSION_TLS12, &filler(len, 31))
}

/// Encrypted TLS 1.2 Finished record.
pub fn encrypted_finished() -> Vec<u8> {
    encrypted_handshake(ENCRYPTED_FINISHED_LEN)
}

/// A ChangeCipherSpec record then an encrypted Finished: how each side ends
/// its flight in a TLS <= 1.2 handshake.
pub fn ccs_finished() -> Vec<u8> {
    [ccs(), encrypted_finished()].concat()
}

/// Application data record of `len` bytes.
pub fn app_data(len: usize) -> Vec<u8> {
    record(CT_APPLICATION_DATA, VERSION_TLS12, &filler(len, 32))
}

/// Heartbeat record of `len` bytes.
pub fn heartbeat(len: usize) -> Vec<u8> {
    record(CT_HEARTBEAT, VERSION_TLS12, &filler(len, 33))
}

/// Something that happens in a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Bytes written by one side.
    Send(usize, Vec<u8>),
    /// One side closed (FIN or RST): the tracker's `on_close`.
    Close(usize),
}

/// An ordered list of sends and closes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conversation {
    /// The events, in order.
    pub events: Vec<Event>,
}

/// One step of a plan: a segment (a byte range of one direction's stream) or a close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Bytes `start..end` of direction `dir`'s stream.
    Seg {
        /// Direction.
        dir: usize,
        /// First byte (offset in the direction's stream).
        start: usize,
        /// One past the last byte.
        end: usize,
    },
    /// `on_close(dir)`.
    Close(usize),
}

/// How a conversation is cut into segments.
pub type Plan = Vec<Step>;

impl Conversation {
    /// An empty conversation.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a send.
    pub fn send(&mut self, dir: usize, bytes: impl AsRef<[u8]>) -> &mut Self {
        self.events.push(Event::Send(dir, bytes.as_ref().to_vec()));
        self
    }

    /// Appends a send from the client.
    pub fn client(&mut self, bytes: impl AsRef<[u8]>) -> &mut Self {
        self.send(CLIENT, bytes)
    }

    /// Appends a send from the server.
    pub fn server(&mut self, bytes: impl AsRef<[u8]>) -> &mut Self {
        self.send(SERVER, bytes)
    }

    /// Appends a close by `dir`.
    pub fn close(&mut self, dir: usize) -> &mut Self {
        self.events.push(Event::Close(dir));
        self
    }

    /// All bytes one direction sends, in order.
    pub fn stream(&self, dir: usize) -> Vec<u8> {
        let mut v = Vec::new();
        for e in &self.events {
            if let Event::Send(d, b) = e {
                if *d == dir {
                    v.extend_from_slice(b);
                }
            }
        }
        v
    }

    /// Byte ranges of the runs: maximal sequences of same-direction sends with
    /// nothing from the other side (and no close) in between; closes as is.
    fn runs(&self) -> Plan {
        let mut plan: Plan = Vec::new();
        let mut off = [0usize; 2];
        for e in &self.events {
            match e {
                Event::Send(dir, b) => {
                    let (start, end) = (off[*dir], off[*dir] + b.len());
                    off[*dir] = end;
                    if let Some(Step::Seg { dir: d, end: e, .. }) = plan.last_mut() {
                        if *d == *dir {
                            *e = end;
                            continue;
                        }
                    }
                    plan.push(Step::Seg {
                        dir: *dir,
                        start,
                        end,
                    });
                }
                Event::Close(dir) => plan.push(Step::Close(*dir)),
            }
        }
        plan
    }

    /// One segment per send.
    pub fn plan_sends(&self) -> Plan {
        let mut plan = Vec::new();
        let mut off = [0usize; 2];
        for e in &self.events {
            match e {
                Event::Send(dir, b) => {
                    plan.push(Step::Seg {
                        dir: *dir,
                        start: off[*dir],
                        end: off[*dir] + b.len(),
                    });
                    off[*dir] += b.len();
                }
                Event::Close(dir) => plan.push(Step::Close(*dir)),
            }
        }
        plan
    }

    /// One segment per run of same-direction sends (several records per segment).
    pub fn plan_runs(&self) -> Plan {
        self.runs()
    }

    /// Each run cut at the given offsets of its direction's stream.
    pub fn plan_cuts(&self, cuts: [&[usize]; 2]) -> Plan {
        let mut plan = Vec::new();
        for s in self.runs() {
            match s {
                Step::Seg { dir, start, end } => {
                    let mut a = start;
                    let mut inner: Vec<usize> = cuts[dir]
                        .iter()
                        .copied()
                        .filter(|c| *c > start && *c < end)
                        .collect();
                    inner.sort_unstable();
                    inner.dedup();
                    for c in inner {
                        plan.push(Step::Seg {
                            dir,
                            start: a,
                            end: c,
                        });
                        a = c;
                    }
                    plan.push(Step::Seg { dir, start: a, end });
                }
                close => plan.push(close),
            }
        }
        plan
    }

    /// Each run cut into segments whose sizes `size(dir)` chooses (at least 1).
    pub fn plan_sizes(&self, mut size: impl FnMut(usize) -> usize) -> Plan {
        let mut plan = Vec::new();
        for s in self.runs() {
            match s {
                Step::Seg { dir, start, end } => {
                    let mut a = start;
                    while a < end {
                        let b = (a + size(dir).max(1)).min(end);
                        plan.push(Step::Seg {
                            dir,
                            start: a,
                            end: b,
                        });
                        a = b;
                    }
                }
                close => plan.push(close),
            }
        }
        plan
    }

    /// Every send split into 1-byte segments.
    pub fn plan_bytes(&self) -> Plan {
        self.plan_sizes(|_| 1)
    }
}

// ---------------------------------------------------------------------------
// Conversation builders: whole handshakes and renegotiations. Each appends to
// `c` and returns it for chaining; each send is one event, as written.

/// The end of a full TLS <= 1.2 handshake, once the server's first flight is
/// sent: the client's handshake records `client_hs` (its ClientKeyExchange
/// and the like) then CCS + Finished in one send, and the server's handshake
/// records `server_hs` (a NewSessionTicket, or nothing) then CCS + Finished in
/// one send.
pub fn tls12_finish_full<'a>(
    c: &'a mut Conversation,
    client_hs: &[u8],
    server_hs: &[u8],
) -> &'a mut Conversation {
    c.client([client_hs, &ccs_finished()].concat())
        .server([server_hs, &ccs_finished()].concat())
}

/// The end of an abbreviated (resumed) TLS <= 1.2 handshake, once the
/// client's ClientHello is sent: the server's handshake records `server_hs`
/// (its ServerHello and the like) then CCS + Finished in one send, and the
/// client's CCS + Finished.
pub fn tls12_finish_abbreviated<'a>(
    c: &'a mut Conversation,
    server_hs: &[u8],
) -> &'a mut Conversation {
    c.server([server_hs, &ccs_finished()].concat())
        .client(ccs_finished())
}

/// A TLS 1.2 full handshake whose server first flight (ServerHello ..
/// ServerHelloDone, already in records) is `server_flight`: a TLS 1.2-only
/// ClientHello, that flight, the client's ClientKeyExchange + CCS + Finished,
/// the server's CCS + Finished. Records: 4 handshake and 2 CCS, plus the
/// flight's.
pub fn tls12_full_with_flight<'a>(
    c: &'a mut Conversation,
    server_flight: &[u8],
) -> &'a mut Conversation {
    c.client(ClientHello::tls12().record())
        .server(server_flight);
    tls12_finish_full(c, &hs_record(&[&client_key_exchange(66)]), &[])
}

/// A TLS 1.2 full handshake given the ServerHello message `server_hello`
/// (any bytes): [`tls12_full_with_flight`] with that ServerHello, a
/// Certificate of `cert_len` bytes and a ServerHelloDone in one record.
/// Records: 5 handshake, 2 CCS.
pub fn tls12_full_with_hello<'a>(
    c: &'a mut Conversation,
    server_hello: &[u8],
    cert_len: usize,
) -> &'a mut Conversation {
    let flight = hs_record(&[server_hello, &certificate(cert_len), &server_hello_done()]);
    tls12_full_with_flight(c, &flight)
}

/// TLS 1.2 full handshake, one record per message (ServerHello, Certificate,
/// ServerKeyExchange, ServerHelloDone). Records: 8 handshake, 2 CCS.
pub fn tls12_full(c: &mut Conversation) -> &mut Conversation {
    let flight = hs_records(&[
        &ServerHello::tls12().message(),
        &certificate(800),
        &server_key_exchange(300),
        &server_hello_done(),
    ]);
    tls12_full_with_flight(c, &flight)
}

/// A TLS 1.2 abbreviated (resumed) handshake: a TLS 1.2-only ClientHello,
/// then [`tls12_finish_abbreviated`] with the server's cleartext handshake
/// records `server_hs` (its ServerHello, maybe a NewSessionTicket). Records:
/// 3 handshake and 2 CCS, plus `server_hs`'s.
pub fn tls12_abbreviated<'a>(c: &'a mut Conversation, server_hs: &[u8]) -> &'a mut Conversation {
    c.client(ClientHello::tls12().record());
    tls12_finish_abbreviated(c, server_hs)
}

/// A client-initiated TLS 1.2 renegotiation the server honours with a full
/// handshake (all records encrypted). Records: 8 handshake, 2 CCS.
pub fn tls12_client_reneg(c: &mut Conversation) -> &mut Conversation {
    c.client(encrypted_handshake(250)).server(
        [
            encrypted_handshake(120),
            encrypted_handshake(850),
            encrypted_handshake(330),
            encrypted_handshake(28),
        ]
        .concat(),
    );
    tls12_finish_full(c, &encrypted_handshake(100), &[])
}

/// A client-initiated TLS 1.2 renegotiation the server honours with an
/// abbreviated handshake (it resumes the session). Records: 4 handshake, 2 CCS.
pub fn tls12_client_reneg_abbreviated(c: &mut Conversation) -> &mut Conversation {
    c.client(encrypted_handshake(200));
    tls12_finish_abbreviated(c, &encrypted_handshake(100))
}

/// A client-initiated TLS 1.2 renegotiation the server refuses with an
/// (encrypted) alert. Records: 1 handshake, 1 alert.
pub fn tls12_client_reneg_refused(c: &mut Conversation) -> &mut Conversation {
    c.client(encrypted_handshake(250)).server(encrypted_alert())
}

/// A server-initiated TLS 1.2 renegotiation: a HelloRequest, the client's
/// ClientHello, and a full handshake (all records encrypted). Records: 8
/// handshake (HelloRequest and ClientHello, 6 more), 2 CCS.
pub fn tls12_server_reneg(c: &mut Conversation) -> &mut Conversation {
    c.server(encrypted_handshake(32))
        .client(encrypted_handshake(250))
        .server(
            [
                encrypted_handshake(120),
                encrypted_handshake(850),
                encrypted_handshake(40),
            ]
            .concat(),
        );
    tls12_finish_full(c, &encrypted_handshake(100), &[])
}

/// A server-initiated TLS 1.2 renegotiation the client refuses: a
/// HelloRequest answered with an (encrypted) alert. Records: 1 handshake, 1
/// alert.
pub fn tls12_server_reneg_refused(c: &mut Conversation) -> &mut Conversation {
    c.server(encrypted_handshake(32)).client(encrypted_alert())
}

/// The server's TLS 1.3 flight after the ClientHello: the ServerHello message
/// `server_hello` in a cleartext record, then encrypted records (application
/// data typed) of the lengths `encrypted`, back to back.
pub fn tls13_server_flight(server_hello: &[u8], encrypted: &[usize]) -> Vec<u8> {
    let mut v = hs_record(&[server_hello]);
    for len in encrypted {
        v.extend(app_data(*len));
    }
    v
}

/// The end of a TLS 1.3 handshake, once the client's (last) ClientHello is
/// sent: the server's [`tls13_server_flight`] in one send, then the client's
/// encrypted Finished (53 bytes). Records: 1 handshake, `encrypted.len() + 1`
/// application data.
pub fn tls13_finish<'a>(
    c: &'a mut Conversation,
    server_hello: &[u8],
    encrypted: &[usize],
) -> &'a mut Conversation {
    c.server(tls13_server_flight(server_hello, encrypted))
        .client(app_data(53))
}

/// TLS 1.3 full handshake without compatibility CCS, with two tickets after
/// it. Records: 2 handshake, 7 application data.
pub fn tls13_full(c: &mut Conversation) -> &mut Conversation {
    c.client(ClientHello::tls13().record());
    tls13_finish(c, &ServerHello::tls13().message(), &[40, 900, 280, 53])
        .server([app_data(200), app_data(200)].concat())
}

/// ISN pairs (client, server) the tests run with: zero, arbitrary, and near
/// `u32::MAX` so that sequence numbers wrap inside the handshake.
pub const ISNS: [[u32; 2]; 4] = [
    [0, 0],
    [0x1234_5678, 0x9abc_def0],
    [u32::MAX - 3, u32::MAX - 700],
    [u32::MAX, 0x7fff_ffff],
];

/// Feeds a conversation's bytes to a [`FlowState`].
#[derive(Clone, Debug)]
pub struct Driver {
    /// The tracker.
    pub state: FlowState,
    /// Each direction's whole stream.
    pub streams: [Vec<u8>; 2],
    /// Each direction's initial sequence number (of its first payload byte).
    pub isn: [u32; 2],
    /// Step budget passed to `on_segment` (default `u32::MAX`: like the eBPF
    /// program's `step_bound` budget, never exhausted).
    pub max_steps: u32,
    /// What each `on_segment` call returned, in order.
    pub outcomes: Vec<SegmentOutcome>,
    /// Renegotiation cap applied after every client segment, as TC ingress
    /// does (0: none; then `apply_reneg_cap` is not called).
    pub reneg_cap: u32,
    /// What `apply_reneg_cap` said after each client segment (with a cap).
    pub verdicts: Vec<CapVerdict>,
}

impl Driver {
    /// A driver over `conv`'s streams, with unlimited steps.
    pub fn new(conv: &Conversation, isn: [u32; 2]) -> Self {
        Driver {
            state: FlowState::new(),
            streams: [conv.stream(CLIENT), conv.stream(SERVER)],
            isn,
            max_steps: u32::MAX,
            outcomes: Vec::new(),
            reneg_cap: 0,
            verdicts: Vec::new(),
        }
    }

    /// Sequence number of byte `off` of direction `dir`.
    pub fn seq(&self, dir: usize, off: usize) -> u32 {
        self.isn[dir].wrapping_add(off as u32)
    }

    /// Feeds bytes `start..end` of direction `dir`.
    pub fn seg(&mut self, dir: usize, start: usize, end: usize) -> SegmentOutcome {
        let bytes = self.streams[dir][start..end].to_vec();
        self.raw(dir, start, &bytes)
    }

    /// Feeds arbitrary bytes as if they were at offset `off` of direction `dir`.
    pub fn raw(&mut self, dir: usize, off: usize, bytes: &[u8]) -> SegmentOutcome {
        let seq = self.seq(dir, off);
        let out = self.state.on_segment(dir, seq, bytes, self.max_steps);
        self.outcomes.push(out);
        if dir == CLIENT && self.reneg_cap != 0 {
            self.verdicts
                .push(self.state.apply_reneg_cap(self.reneg_cap));
        }
        out
    }

    /// Runs one step.
    pub fn step(&mut self, s: Step) {
        match s {
            Step::Seg { dir, start, end } => {
                self.seg(dir, start, end);
            }
            Step::Close(dir) => self.state.on_close(dir),
        }
    }

    /// Runs a plan.
    pub fn run(&mut self, plan: &[Step]) -> &mut Self {
        for s in plan {
            self.step(*s);
        }
        self
    }
}

/// Runs `conv` with one segment per send, ISNs `isn`, unlimited steps.
pub fn run_sends(conv: &Conversation, isn: [u32; 2]) -> FlowState {
    let mut d = Driver::new(conv, isn);
    d.run(&conv.plan_sends());
    d.state
}

/// What must not depend on how the bytes were cut into segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observed {
    /// Counters.
    pub counters: FlowCounters,
    /// Version.
    pub version: u16,
    /// Flow flags.
    pub flags: u16,
    /// Direction statuses.
    pub status: [u8; 2],
    /// Direction flags.
    pub dir_flags: [u8; 2],
    /// First cleartext alert per direction.
    pub alert_first: [u16; 2],
    /// Last cleartext alert per direction.
    pub alert_last: [u16; 2],
}

impl Observed {
    /// The observable part of `s`.
    pub fn of(s: &FlowState) -> Self {
        Observed {
            counters: s.counters,
            version: s.version,
            flags: s.flags,
            status: [s.dirs[CLIENT].status, s.dirs[SERVER].status],
            dir_flags: [s.dirs[CLIENT].flags, s.dirs[SERVER].flags],
            alert_first: s.alert_first,
            alert_last: s.alert_last,
        }
    }
}
