//! The TLS record tracker: one state machine per TCP connection, fed the
//! payload of each segment with its sequence number, in either direction.
//!
//! The same code runs in the TC program (monomorphised over the packet) and in
//! user space (over byte slices), so what the kernel counts is what the unit
//! and property tests check.
//!
//! # What it follows
//!
//! * **Record framing.** Each direction walks the stream record by record: a
//!   5-byte header (collected across segments when split), then the body is
//!   skipped, or parsed when it is a cleartext handshake record. A header that is
//!   not TLS (content type 20..=24, version 3.0..=3.4, length at most
//!   2^14 + 2048) means the stream is not TLS or sync was lost: the direction
//!   stops (`unsynced`), it is counted, and nothing is guessed.
//! * **TCP.** Bytes before the direction's next expected sequence number are a
//!   retransmission and are skipped (never counted twice); a segment that
//!   starts beyond it is a gap (lost or reordered segment): the direction is
//!   marked unsynced and the gap counted.
//! * **Cleartext handshake messages.** Messages can share a record or span
//!   records. ClientHello and ServerHello are recognised; the ServerHello is
//!   parsed for its version (`supported_versions` for TLS 1.3), for
//!   `pre_shared_key` (TLS 1.3 resumption) and for the HelloRetryRequest random.
//!   Certificate, ServerKeyExchange, CertificateRequest and ServerHelloDone from
//!   the server mark a full TLS 1.2 handshake.
//! * **Handshake completion.** TLS <= 1.2: both directions sent
//!   ChangeCipherSpec and then their Finished (the first handshake record after
//!   the CCS). A first handshake in which the server sends its CCS without any
//!   certificate-class message is a resumption. TLS 1.3: the client's first
//!   encrypted record (its Finished flight) after a TLS 1.3 ServerHello; a
//!   ChangeCipherSpec is then only the middlebox-compatibility dummy and
//!   changes nothing.
//! * **Renegotiation (TLS <= 1.2).** After a completed handshake every
//!   handshake record is encrypted and is a renegotiation message: from the
//!   client a ClientHello (`renegotiations_client`), from the server a
//!   HelloRequest (`renegotiations_server`). The peer's next records give the
//!   outcome: handshake records mean honoured, an alert or closing the
//!   connection means refused (`renegotiations_refused`); so does silence:
//!   another ClientHello while the previous one is unanswered refuses the
//!   previous one and counts as a new attempt. A ClientHello that
//!   answers a HelloRequest counts as a ClientHello, not as a client-initiated
//!   renegotiation. Every ClientHello, cleartext or encrypted, counts in
//!   `client_hellos`.
//! * **Cleartext alerts.** The body of an alert record a direction sends
//!   before it encrypts (each 2-byte level/description pair) is read: the
//!   first and the last of each direction are kept in
//!   [`FlowState::alert_first`] and [`FlowState::alert_last`] (why a
//!   handshake failed: `protocol_version`, `unknown_ca`, ...). Encrypted
//!   alerts (TLS <= 1.2 after ChangeCipherSpec, every TLS 1.3 alert after
//!   ServerHello) are only counted.
//! * **TLS 1.3 post-handshake.** Application-data records of exactly the size
//!   of one KeyUpdate ([`KEY_UPDATE_RECORD_LEN`]) after the handshake count as
//!   `keyupdate_like`: the record layer cannot tell them from a 5-byte
//!   application write, hence the name. The client's also extend a
//!   *streak* ([`FlowState::keyupdate_run`]): client KeyUpdate-size
//!   records with no record of another size or type in either direction
//!   between them (the server's KeyUpdate-size records neither extend nor
//!   break it: they are what a KeyUpdate with `update_requested` gets
//!   back). Each client KeyUpdate-size record that makes the streak at
//!   least [`KEYUPDATE_STREAK_MIN`] long counts in `keyupdate_streaked`,
//!   what the policy's KeyUpdate rule reads. See [`KEYUPDATE_STREAK_MIN`]
//!   for why: a flood is a streak, most applications break it.
//!
//! # Renegotiation cap
//!
//! [`FlowState::apply_reneg_cap`] is called by whoever feeds a client segment
//! (the TC ingress program, after the segment's bpf_loop) with the configured
//! cap. Client-initiated renegotiations are counted at the record header of
//! the encrypted ClientHello, so once the segment is parsed
//! `renegotiations_client` already says whether this segment carried the one
//! over the cap: the flow is then marked [`FF_OVER_CAP`] (for good) and the
//! caller drops that segment and every later client segment with payload,
//! retransmissions included. The tracker still parses what the client sends,
//! so the counts say what crossed the wire, not what reached the server.
//!
//! # Bounded work
//!
//! [`FlowState::on_segment`] takes at most `max_steps` steps per segment;
//! each step consumes at least one byte of the segment (a record header or
//! a piece of one, a handshake field or a piece of one, a body skip) or ends
//! the segment with an error. So a segment with `n` new bytes never needs
//! more than [`step_bound`]`(n) = n` steps: the eBPF program gives `bpf_loop`
//! exactly that budget (at most [`MAX_SEGMENT_LEN`], below the kernel's
//! [`BPF_MAX_LOOPS`]), and no input, however many tiny records it packs into
//! one segment or GSO/GRO super-packet, can exhaust it. The verifier checks
//! one step (the `bpf_loop` callback), not this many. A smaller explicit
//! budget (tests) marks the direction unsynced when it runs out
//! (`overflows`): nothing is silently skipped.

use crate::payload::Payload;
use crate::tls::*;

/// Most payload bytes one segment may carry: [`FlowState::begin_segment`]
/// refuses longer ones (far beyond any GSO, GRO or BIG TCP packet).
pub const MAX_SEGMENT_LEN: u32 = u16::MAX as u32 * 16;

/// The largest iteration count the kernel's `bpf_loop` accepts
/// (`BPF_MAX_LOOPS`); more fails with `-E2BIG` and runs nothing.
pub const BPF_MAX_LOOPS: u32 = 1 << 23;

/// The steps that parsing `new_bytes` bytes of a segment can take at most:
/// every step consumes at least one byte or ends the segment (see "Bounded
/// work" above), so this budget is never exhausted by any input of that
/// length. What the eBPF program gives `bpf_loop`.
#[inline(always)]
pub const fn step_bound(new_bytes: u32) -> u32 {
    new_bytes
}

// The budget of the longest segment fits in one `bpf_loop`.
const _: () = assert!(step_bound(MAX_SEGMENT_LEN) <= BPF_MAX_LOOPS);

/// A client KeyUpdate-size record counts in
/// [`FlowCounters::keyupdate_streaked`] when it makes the client's streak
/// (client KeyUpdate-size records with no other record but the server's
/// KeyUpdate-size ones between them, [`FlowState::keyupdate_run`]) at
/// least this long.
///
/// Why a streak, client only, and 4:
/// - A client that floods KeyUpdates sends nothing else: its direction is
///   all 22-byte records, and the server sends back either nothing or
///   (`update_requested`) one 22-byte KeyUpdate each. Its records are all
///   streaked but the first 3.
/// - The server's own KeyUpdates are its choice, and a server pushing
///   5-byte messages sends 22-byte records with no client records at all:
///   the server direction never counts.
/// - An application that mixes sizes in either direction (a 5-byte
///   heartbeat answered with anything but 5 bytes, requests or replies of
///   other sizes) resets the streak with every other record: nothing
///   counts.
/// - An attacker that slips one record of another size in every 3
///   KeyUpdates is not counted at all: it gets at most 3 KeyUpdates past
///   the rule per other record on the connection, so its KeyUpdate work is
///   bounded by a small multiple of the application traffic it must send
///   or make the server send (each of those records is work for the
///   server's application too). A larger minimum would let more through
///   per record; a smaller one would count more small-message patterns of
///   applications.
///
/// What a streak cannot tell apart: an application that exchanges only
/// 5-byte messages one for one (a 5-byte request, a 5-byte reply) looks
/// exactly like a KeyUpdate flood with `update_requested`, and one that
/// sends only 5-byte messages one way like a flood without it (the record
/// layer is encrypted: same sizes, same order). The policy's default action
/// for the rule is therefore `alert`.
pub const KEYUPDATE_STREAK_MIN: u16 = 4;

/// Index of the client-to-server direction in [`FlowState::dirs`].
pub const CLIENT: usize = 0;
/// Index of the server-to-client direction in [`FlowState::dirs`].
pub const SERVER: usize = 1;

/// Direction status: no payload seen yet.
pub const DIR_NEW: u8 = 0;
/// Direction status: following the record stream.
pub const DIR_SYNCED: u8 = 1;
/// Direction status: sync lost (gap, bad header, budget); no longer parsed.
pub const DIR_UNSYNCED: u8 = 2;

/// Direction flag: this direction's records are encrypted (TLS <= 1.2: after its
/// CCS; TLS 1.3: the server after its ServerHello, the client from its Finished
/// flight on).
pub const DF_ENCRYPTED: u8 = 1 << 0;
/// Direction flag: sent ChangeCipherSpec in the current handshake, Finished not yet.
pub const DF_CCS_PENDING: u8 = 1 << 1;
/// Direction flag: sent Finished in the current handshake.
pub const DF_FINISHED: u8 = 1 << 2;
/// Direction flag: the current record is a cleartext handshake record being parsed.
pub const DF_PARSE_RECORD: u8 = 1 << 3;
/// Direction flag: the current record is a cleartext alert record being read.
pub const DF_PARSE_ALERT: u8 = 1 << 4;

/// Flow flag: a handshake is in progress (first one or a renegotiation).
pub const FF_HS_ACTIVE: u16 = 1 << 0;
/// Flow flag: the first handshake completed.
pub const FF_FIRST_HS_DONE: u16 = 1 << 1;
/// Flow flag: the first handshake was a resumption.
pub const FF_RESUMED: u16 = 1 << 2;
/// Flow flag: a client-initiated renegotiation awaits the server's answer.
pub const FF_RENEG_PENDING_CLIENT: u16 = 1 << 3;
/// Flow flag: a server HelloRequest awaits the client's answer.
pub const FF_HELLO_REQUEST_PENDING: u16 = 1 << 4;
/// Flow flag: the server sent a certificate-class message in the first handshake.
pub const FF_SERVER_CERT_SEEN: u16 = 1 << 5;
/// Flow flag: the ServerHello being parsed is a HelloRetryRequest.
pub const FF_SH_HRR: u16 = 1 << 6;
/// Flow flag: the ServerHello being parsed has `pre_shared_key`.
pub const FF_SH_PSK: u16 = 1 << 7;
/// Flow flag: the server sent a HelloRetryRequest in this connection.
pub const FF_HRR_SEEN: u16 = 1 << 8;
/// Flow flag: a direction lost sync.
pub const FF_UNSYNCED: u16 = 1 << 9;
/// Flow flag: the connection is closed (set by whoever saw it end).
pub const FF_CLOSED: u16 = 1 << 10;
/// Flow flag: the client went over the renegotiation cap (set by
/// [`FlowState::apply_reneg_cap`], never cleared): its segments are dropped.
pub const FF_OVER_CAP: u16 = 1 << 11;

/// What [`FlowState::apply_reneg_cap`] says about the client segment just fed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapVerdict {
    /// Within the cap (or no cap): let it through.
    Pass,
    /// This segment took the flow over the cap: drop it and report the flow.
    Hit,
    /// The flow was already over the cap: drop it.
    Over,
}

/// Handshake-layer field ids: what the bytes being collected mean.
const F_HS_HEADER: u8 = 0;
const F_SH_VERSION: u8 = 1;
const F_SH_RANDOM: u8 = 2;
const F_SH_SESSION_ID_LEN: u8 = 3;
const F_SH_EXTENSIONS_LEN: u8 = 4;
const F_SH_EXT_HEADER: u8 = 5;
const F_SH_SUPPORTED_VERSION: u8 = 6;

/// Smallest ServerHello body: version, random, session id length, cipher, compression.
const SERVER_HELLO_MIN_LEN: u32 = 2 + 32 + 1 + 2 + 1;

/// Parser state of one direction of a connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirState {
    /// Record header bytes collected so far, big-endian.
    pub hdr_acc: u64,
    /// Handshake field bytes collected so far, big-endian.
    pub hs_acc: u64,
    /// Sequence number of the next stream byte this direction expects.
    pub next_seq: u32,
    /// Handshake-layer bytes to skip before the next field.
    pub hs_skip: u32,
    /// Bytes of the current ServerHello not yet accounted for.
    pub hs_msg_left: u32,
    /// Body bytes left in the current record (0: next comes a header).
    pub rec_left: u16,
    /// Extension bytes left in the current ServerHello.
    pub sh_ext_left: u16,
    /// Record header bytes collected (0..5).
    pub hdr_have: u8,
    /// Content type of the current record.
    pub rec_type: u8,
    /// Handshake field being collected (`F_*`).
    pub hs_field: u8,
    /// Size of that field in bytes (0: the next field is a handshake header).
    pub hs_need: u8,
    /// Bytes of that field collected.
    pub hs_have: u8,
    /// `DIR_NEW`, `DIR_SYNCED` or `DIR_UNSYNCED`.
    pub status: u8,
    /// `DF_*` bits.
    pub flags: u8,
    /// Padding, always zero.
    pub _pad: u8,
}

/// Per-connection counters: what `hsmon conns` reports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCounters {
    /// ClientHellos, cleartext and encrypted (renegotiation).
    pub client_hellos: u32,
    /// Completed handshakes (the first one and honoured renegotiations).
    pub handshakes: u32,
    /// Client-initiated renegotiations (encrypted ClientHellos not answering a HelloRequest).
    pub renegotiations_client: u32,
    /// Server-initiated renegotiations (encrypted HelloRequests).
    pub renegotiations_server: u32,
    /// Renegotiations the peer refused (alert or close instead of a handshake).
    pub renegotiations_refused: u32,
    /// Alert records, both directions.
    pub alerts: u32,
    /// TLS 1.3 post-handshake records of KeyUpdate size.
    pub keyupdate_like: u32,
    /// Client KeyUpdate-size records that made the client's streak at least
    /// [`KEYUPDATE_STREAK_MIN`] long (what the KeyUpdate rule counts).
    pub keyupdate_streaked: u32,
    /// Records by content type: ChangeCipherSpec, alert, handshake, application data, heartbeat.
    pub records: [u32; 5],
    /// Segments that only repeated bytes already seen.
    pub retransmits: u32,
    /// Directions that lost sync through a gap (lost or reordered segment).
    pub gaps: u16,
    /// Directions that lost sync on a record header that is not TLS.
    pub bad_records: u16,
    /// Directions that lost sync because a segment needed more than the step budget.
    pub overflows: u16,
    /// Handshake messages too malformed to parse (ServerHello shorter than its fields).
    pub malformed: u16,
}

/// The tracker's state for one TCP connection: both directions and the counters.
///
/// This is the value of the kernel's flow map, so it is `repr(C)` and plain data.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    /// Parser state: `[CLIENT]` is client to server, `[SERVER]` server to client.
    pub dirs: [DirState; 2],
    /// What was counted.
    pub counters: FlowCounters,
    /// Negotiated wire version (0x0303 TLS 1.2, 0x0304 TLS 1.3; 0 unknown).
    pub version: u16,
    /// `FF_*` bits.
    pub flags: u16,
    /// First cleartext alert of each direction (`[CLIENT]`, `[SERVER]`):
    /// level in the high byte, description in the low byte; 0: none.
    pub alert_first: [u16; 2],
    /// Last cleartext alert of each direction, same encoding.
    pub alert_last: [u16; 2],
    /// The client's current KeyUpdate streak: its KeyUpdate-size records
    /// since the last record (either direction) that was neither one of
    /// them nor a server KeyUpdate-size record; saturates.
    pub keyupdate_run: u16,
    /// Padding, always zero.
    pub _pad: u16,
}

/// The alert level of an [`FlowState::alert_first`]/[`FlowState::alert_last`] value.
#[inline]
pub const fn alert_level(v: u16) -> u8 {
    (v >> 8) as u8
}

/// The alert description of an [`FlowState::alert_first`]/[`FlowState::alert_last`] value.
#[inline]
pub const fn alert_description(v: u16) -> u8 {
    v as u8
}

/// What [`FlowState::on_segment`] did with a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentOutcome {
    /// New bytes were parsed.
    Parsed,
    /// The segment had no payload.
    Empty,
    /// The segment only repeated bytes already parsed.
    Retransmit,
    /// The direction is unsynced; the segment was ignored.
    Ignored,
    /// The segment started beyond the next expected byte: sync lost.
    Gap,
    /// A record header was not TLS: sync lost.
    BadRecord,
    /// The segment needed more than the step budget: sync lost.
    Overflow,
    /// Reading the payload failed: sync lost.
    ReadError,
}

/// Why a step could not go on.
#[derive(Clone, Copy)]
enum StepError {
    BadRecord,
    ReadError,
}

#[inline(always)]
fn min_u32(a: u32, b: u32) -> u32 {
    if a < b {
        a
    } else {
        b
    }
}

#[inline(always)]
fn bump(c: &mut u32) {
    *c = c.wrapping_add(1);
}

#[inline(always)]
fn bump16(c: &mut u16) {
    *c = c.saturating_add(1);
}

impl FlowState {
    /// A fresh flow: nothing seen in either direction.
    pub const fn new() -> Self {
        // Every field is an integer: all-zero is the initial state.
        unsafe { core::mem::zeroed() }
    }

    /// Has either direction lost sync?
    #[inline]
    pub fn unsynced(&self) -> bool {
        self.flags & FF_UNSYNCED != 0
    }

    /// Was the first handshake a resumption?
    #[inline]
    pub fn resumed(&self) -> bool {
        self.flags & FF_RESUMED != 0
    }

    /// Did the client go over the renegotiation cap?
    #[inline]
    pub fn over_cap(&self) -> bool {
        self.flags & FF_OVER_CAP != 0
    }

    /// Applies the renegotiation cap `cap` (0: none) after a client segment
    /// was fed (whatever its outcome, a retransmission included): once
    /// `renegotiations_client` exceeds `cap` the flow is marked
    /// [`FF_OVER_CAP`], and from then on every call says [`CapVerdict::Over`]
    /// whatever the cap. No loop: one comparison.
    #[inline(always)]
    pub fn apply_reneg_cap(&mut self, cap: u32) -> CapVerdict {
        if self.flags & FF_OVER_CAP != 0 {
            return CapVerdict::Over;
        }
        if cap == 0 || self.counters.renegotiations_client <= cap {
            return CapVerdict::Pass;
        }
        self.flags |= FF_OVER_CAP;
        CapVerdict::Hit
    }

    /// Feeds one segment's payload, sent in direction `dir` (`CLIENT` or
    /// `SERVER`) with TCP sequence number `seq`. At most `max_steps` parsing
    /// steps are taken; more marks the direction unsynced. A budget of
    /// [`step_bound`] of the payload length (what the eBPF program uses) or
    /// more never runs out.
    ///
    /// This is [`begin_segment`](Self::begin_segment), then
    /// [`app_data_steps`](Self::app_data_steps), then
    /// [`step_segment`](Self::step_segment) until it returns an outcome, then
    /// [`overflow`](Self::overflow) if the budget ran out. The eBPF program
    /// makes the same calls, with the steps inside `bpf_loop`.
    #[inline(always)]
    pub fn on_segment<P: Payload + ?Sized>(
        &mut self,
        dir: usize,
        seq: u32,
        payload: &P,
        max_steps: u32,
    ) -> SegmentOutcome {
        let (mut off, len) = match self.begin_segment(dir, seq, payload.payload_len()) {
            Ok(range) => range,
            Err(outcome) => return outcome,
        };
        let used = self.app_data_steps(dir, payload, &mut off, len, max_steps);
        if used > 0 && off >= len {
            return SegmentOutcome::Parsed;
        }
        for _ in used..max_steps {
            if let Some(outcome) = self.step_segment(dir, payload, &mut off, len) {
                return outcome;
            }
        }
        self.overflow(dir, off, len)
    }

    /// Checks a segment of `len` payload bytes at `seq` against the
    /// direction's stream position. `Ok((off, len))`: parse from `off`;
    /// `Err`: nothing to parse (empty, retransmitted, unsynced, or a gap).
    #[inline(always)]
    pub fn begin_segment(
        &mut self,
        dir: usize,
        seq: u32,
        len: usize,
    ) -> Result<(u32, u32), SegmentOutcome> {
        let dir = dir & 1;
        if len == 0 {
            return Err(SegmentOutcome::Empty);
        }
        if len > MAX_SEGMENT_LEN as usize {
            // Far beyond any GSO packet: do not guess.
            self.lose_sync(dir);
            return Err(SegmentOutcome::ReadError);
        }
        let len = len as u32;
        let ds = &mut self.dirs[dir];
        match ds.status {
            DIR_NEW => {
                ds.next_seq = seq;
                ds.status = DIR_SYNCED;
            }
            DIR_SYNCED => {}
            _ => return Err(SegmentOutcome::Ignored),
        }
        let rel = seq.wrapping_sub(ds.next_seq) as i32;
        if rel > 0 {
            bump16(&mut self.counters.gaps);
            self.lose_sync(dir);
            return Err(SegmentOutcome::Gap);
        }
        let already_seen = rel.unsigned_abs();
        if already_seen >= len {
            bump(&mut self.counters.retransmits);
            return Err(SegmentOutcome::Retransmit);
        }
        ds.next_seq = seq.wrapping_add(len);
        Ok((already_seen, len))
    }

    /// The first one or two steps of a segment at once when they are the
    /// header and the body of an application-data record: what the eBPF
    /// program runs in line before `bpf_loop` (a segment of encrypted
    /// records then needs no call at all). Returns the steps taken (0: the
    /// next bytes are not a complete application-data record header between
    /// records; nothing changed). The state afterwards is exactly what that
    /// many [`step_segment`](Self::step_segment) calls leave: the header is
    /// checked and counted by the same code, the body skipped the same way.
    /// Takes at most `budget` steps (none below 2).
    #[inline(always)]
    pub fn app_data_steps<P: Payload + ?Sized>(
        &mut self,
        dir: usize,
        payload: &P,
        off: &mut u32,
        len: u32,
        budget: u32,
    ) -> u32 {
        let dir = dir & 1;
        let ds = &self.dirs[dir];
        if budget < 2
            || ds.rec_left != 0
            || ds.hdr_have != 0
            || *off >= len
            || len - *off < RECORD_HEADER_LEN as u32
        {
            return 0;
        }
        let Some(h) = payload.load_be(*off as usize, RECORD_HEADER_LEN) else {
            return 0;
        };
        let typ = (h >> 32) as u8;
        let major = (h >> 24) as u8;
        let minor = (h >> 16) as u8;
        let rlen = h as u16;
        if typ != CT_APPLICATION_DATA || major != 3 || minor > 4 || rlen > MAX_RECORD_LEN {
            return 0;
        }
        // Step one: the header (as `step` leaves it once all 5 bytes are in).
        self.dirs[dir].hdr_acc = 0;
        self.on_record(dir, CT_APPLICATION_DATA, rlen);
        *off += RECORD_HEADER_LEN as u32;
        if *off >= len || rlen == 0 {
            return 1;
        }
        // Step two: the body, skipped (`on_record` cleared the parse flags).
        let ds = &mut self.dirs[dir];
        let n = min_u32(u32::from(ds.rec_left), len - *off);
        ds.rec_left = ds.rec_left.saturating_sub(n as u16);
        *off += n;
        2
    }

    /// One parsing step at `*off` of a segment of `len` bytes. `None`: call
    /// again; `Some(outcome)`: the segment is done (parsed, or sync lost).
    #[inline(always)]
    pub fn step_segment<P: Payload + ?Sized>(
        &mut self,
        dir: usize,
        payload: &P,
        off: &mut u32,
        len: u32,
    ) -> Option<SegmentOutcome> {
        let dir = dir & 1;
        if *off >= len {
            return Some(SegmentOutcome::Parsed);
        }
        match self.step(dir, payload, *off, len - *off) {
            Ok(n) => {
                *off += n;
                if *off >= len {
                    Some(SegmentOutcome::Parsed)
                } else {
                    None
                }
            }
            Err(StepError::BadRecord) => {
                bump16(&mut self.counters.bad_records);
                self.lose_sync(dir);
                Some(SegmentOutcome::BadRecord)
            }
            Err(StepError::ReadError) => {
                self.lose_sync(dir);
                Some(SegmentOutcome::ReadError)
            }
        }
    }

    /// The step budget ran out at `off` of `len` bytes: unless the segment
    /// was fully parsed, the direction loses sync (`overflows`).
    #[inline(always)]
    pub fn overflow(&mut self, dir: usize, off: u32, len: u32) -> SegmentOutcome {
        if off >= len {
            return SegmentOutcome::Parsed;
        }
        bump16(&mut self.counters.overflows);
        self.lose_sync(dir & 1);
        SegmentOutcome::Overflow
    }

    /// The sender of direction `dir` closed (FIN or RST): a renegotiation it
    /// was asked to answer is refused.
    #[inline(always)]
    pub fn on_close(&mut self, dir: usize) {
        if dir & 1 == SERVER {
            if self.flags & FF_RENEG_PENDING_CLIENT != 0 {
                self.flags &= !(FF_RENEG_PENDING_CLIENT | FF_HS_ACTIVE);
                bump(&mut self.counters.renegotiations_refused);
            }
        } else if self.flags & FF_HELLO_REQUEST_PENDING != 0 {
            self.flags &= !FF_HELLO_REQUEST_PENDING;
            bump(&mut self.counters.renegotiations_refused);
        }
    }

    /// The connection ended: every renegotiation still awaiting an answer was
    /// refused, and the flow is marked closed.
    #[inline(always)]
    pub fn finish(&mut self) {
        self.on_close(SERVER);
        self.on_close(CLIENT);
        self.flags |= FF_CLOSED;
    }

    #[inline(always)]
    fn lose_sync(&mut self, dir: usize) {
        self.dirs[dir & 1].status = DIR_UNSYNCED;
        self.flags |= FF_UNSYNCED;
    }

    /// One parsing step at `off` with `avail` bytes left in the segment;
    /// returns the bytes consumed (at least one).
    #[inline(always)]
    fn step<P: Payload + ?Sized>(
        &mut self,
        dir: usize,
        payload: &P,
        off: u32,
        avail: u32,
    ) -> Result<u32, StepError> {
        let ds = &mut self.dirs[dir & 1];
        if ds.rec_left == 0 {
            // Between records: collect the header.
            let want = RECORD_HEADER_LEN as u32 - u32::from(ds.hdr_have & 7);
            let n = if avail >= want { want } else { 1 };
            let v = payload
                .load_be(off as usize, n as usize)
                .ok_or(StepError::ReadError)?;
            ds.hdr_acc = (ds.hdr_acc << (8 * n)) | v;
            ds.hdr_have += n as u8;
            if ds.hdr_have as usize >= RECORD_HEADER_LEN {
                let h = ds.hdr_acc;
                ds.hdr_acc = 0;
                ds.hdr_have = 0;
                let typ = (h >> 32) as u8;
                let major = (h >> 24) as u8;
                let minor = (h >> 16) as u8;
                let rlen = h as u16;
                if !(CT_CHANGE_CIPHER_SPEC..=CT_HEARTBEAT).contains(&typ)
                    || major != 3
                    || minor > 4
                    || rlen > MAX_RECORD_LEN
                {
                    return Err(StepError::BadRecord);
                }
                self.on_record(dir, typ, rlen);
            }
            return Ok(n);
        }
        let n = min_u32(u32::from(ds.rec_left), avail);
        let used = if ds.flags & DF_PARSE_RECORD != 0 {
            self.handshake_step(dir, payload, off, n)?
        } else if ds.flags & DF_PARSE_ALERT != 0 {
            self.alert_step(dir, payload, off, n)?
        } else {
            n
        };
        let ds = &mut self.dirs[dir & 1];
        ds.rec_left = ds.rec_left.saturating_sub(used as u16);
        Ok(used)
    }

    /// A complete record header was read.
    #[inline(always)]
    fn on_record(&mut self, dir: usize, typ: u8, len: u16) {
        let dir = dir & 1;
        let idx = (typ - CT_CHANGE_CIPHER_SPEC) as usize;
        if idx < 5 {
            bump(&mut self.counters.records[idx]);
        }
        let tls13 = self.version == VERSION_TLS13;
        if typ != CT_APPLICATION_DATA || len != KEY_UPDATE_RECORD_LEN {
            // Any other record, either direction, ends a KeyUpdate streak.
            self.keyupdate_run = 0;
        }
        let ds = &mut self.dirs[dir];
        ds.rec_type = typ;
        ds.rec_left = len;
        ds.flags &= !(DF_PARSE_RECORD | DF_PARSE_ALERT);
        let encrypted = ds.flags & DF_ENCRYPTED != 0;
        match typ {
            CT_CHANGE_CIPHER_SPEC => {
                // A half-parsed cleartext handshake message ends here.
                ds.hs_skip = 0;
                ds.hs_need = 0;
                ds.hs_have = 0;
                ds.hs_acc = 0;
                // In TLS 1.3 a CCS is the middlebox-compatibility dummy
                // (RFC 8446 D.4): it may precede a cleartext second ClientHello
                // or follow a HelloRetryRequest, and encrypts nothing.
                if !tls13 {
                    ds.flags |= DF_ENCRYPTED | DF_CCS_PENDING;
                    if dir == SERVER && self.flags & (FF_FIRST_HS_DONE | FF_SERVER_CERT_SEEN) == 0 {
                        self.flags |= FF_RESUMED;
                    }
                }
            }
            CT_ALERT => {
                if !encrypted {
                    ds.flags |= DF_PARSE_ALERT;
                }
                bump(&mut self.counters.alerts);
                if dir == SERVER && self.flags & FF_RENEG_PENDING_CLIENT != 0 {
                    self.flags &= !(FF_RENEG_PENDING_CLIENT | FF_HS_ACTIVE);
                    bump(&mut self.counters.renegotiations_refused);
                } else if dir == CLIENT && self.flags & FF_HELLO_REQUEST_PENDING != 0 {
                    self.flags &= !FF_HELLO_REQUEST_PENDING;
                    bump(&mut self.counters.renegotiations_refused);
                }
            }
            CT_HANDSHAKE => {
                if !encrypted {
                    ds.flags |= DF_PARSE_RECORD;
                } else if !tls13 {
                    self.on_encrypted_handshake(dir);
                }
            }
            CT_APPLICATION_DATA if tls13 => {
                if dir == CLIENT
                    && self.flags & FF_HS_ACTIVE != 0
                    && self.dirs[SERVER].flags & DF_ENCRYPTED != 0
                {
                    // The client's first encrypted flight ends the handshake.
                    self.dirs[CLIENT].flags |= DF_ENCRYPTED;
                    self.handshake_complete();
                } else if self.flags & (FF_HS_ACTIVE | FF_FIRST_HS_DONE) == FF_FIRST_HS_DONE
                    && len == KEY_UPDATE_RECORD_LEN
                {
                    bump(&mut self.counters.keyupdate_like);
                    if dir == CLIENT {
                        self.keyupdate_run = self.keyupdate_run.saturating_add(1);
                        if self.keyupdate_run >= KEYUPDATE_STREAK_MIN {
                            bump(&mut self.counters.keyupdate_streaked);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// An encrypted handshake record in TLS <= 1.2.
    #[inline(always)]
    fn on_encrypted_handshake(&mut self, dir: usize) {
        let dir = dir & 1;
        let ds = &mut self.dirs[dir];
        if ds.flags & DF_CCS_PENDING != 0 {
            // The first handshake record after a CCS is that side's Finished.
            ds.flags = (ds.flags & !DF_CCS_PENDING) | DF_FINISHED;
            if self.dirs[CLIENT].flags & self.dirs[SERVER].flags & DF_FINISHED != 0 {
                self.handshake_complete();
            }
            return;
        }
        if self.flags & FF_HS_ACTIVE == 0 {
            if self.flags & FF_FIRST_HS_DONE == 0 {
                // Encrypted before any handshake completed: nothing to say.
                return;
            }
            if dir == CLIENT {
                // A new handshake starts with an encrypted ClientHello.
                bump(&mut self.counters.client_hellos);
                if self.flags & FF_HELLO_REQUEST_PENDING != 0 {
                    self.flags &= !FF_HELLO_REQUEST_PENDING;
                } else {
                    bump(&mut self.counters.renegotiations_client);
                    self.flags |= FF_RENEG_PENDING_CLIENT;
                }
                self.flags |= FF_HS_ACTIVE;
                self.dirs[CLIENT].flags &= !DF_FINISHED;
                self.dirs[SERVER].flags &= !DF_FINISHED;
            } else {
                bump(&mut self.counters.renegotiations_server);
                self.flags |= FF_HELLO_REQUEST_PENDING;
            }
        } else if self.flags & FF_RENEG_PENDING_CLIENT != 0 {
            if dir == SERVER {
                // The server answers the renegotiation ClientHello with a handshake.
                self.flags &= !FF_RENEG_PENDING_CLIENT;
            } else {
                // The server has not answered, so the client can only be sending
                // another ClientHello (a flood into a silent server): the
                // unanswered attempt was not honoured, the new one is pending.
                bump(&mut self.counters.renegotiations_refused);
                bump(&mut self.counters.client_hellos);
                bump(&mut self.counters.renegotiations_client);
            }
        }
    }

    #[inline(always)]
    fn handshake_complete(&mut self) {
        bump(&mut self.counters.handshakes);
        self.flags = (self.flags & !(FF_HS_ACTIVE | FF_RENEG_PENDING_CLIENT)) | FF_FIRST_HS_DONE;
        self.dirs[CLIENT].flags &= !DF_FINISHED;
        self.dirs[SERVER].flags &= !DF_FINISHED;
    }

    /// One step inside a cleartext alert record: collects at most the 2
    /// bytes of the next level/description pair (`hdr_acc`/`hdr_have` are
    /// free inside a record body) out of the `n` bytes of the record in
    /// this segment; returns bytes used.
    #[inline(always)]
    fn alert_step<P: Payload + ?Sized>(
        &mut self,
        dir: usize,
        payload: &P,
        off: u32,
        n: u32,
    ) -> Result<u32, StepError> {
        let dir = dir & 1;
        let ds = &mut self.dirs[dir];
        let want = 2 - u32::from(ds.hdr_have & 1);
        let k = if n >= want { want } else { 1 };
        let v = payload
            .load_be(off as usize, k as usize)
            .ok_or(StepError::ReadError)?;
        ds.hdr_acc = (ds.hdr_acc << (8 * k)) | v;
        ds.hdr_have += k as u8;
        if ds.hdr_have >= 2 {
            let alert = ds.hdr_acc as u16;
            ds.hdr_acc = 0;
            ds.hdr_have = 0;
            if self.alert_first[dir] == 0 {
                self.alert_first[dir] = alert;
            }
            self.alert_last[dir] = alert;
        }
        let ds = &mut self.dirs[dir];
        if k >= u32::from(ds.rec_left) {
            // The record ends: an odd last byte is dropped.
            ds.hdr_acc = 0;
            ds.hdr_have = 0;
        }
        Ok(k)
    }

    /// One step inside a cleartext handshake record: skip or collect at most
    /// `n` bytes (the rest of the record in this segment); returns bytes used.
    #[inline(always)]
    fn handshake_step<P: Payload + ?Sized>(
        &mut self,
        dir: usize,
        payload: &P,
        off: u32,
        n: u32,
    ) -> Result<u32, StepError> {
        let ds = &mut self.dirs[dir & 1];
        if ds.hs_skip > 0 {
            let k = min_u32(ds.hs_skip, n);
            ds.hs_skip -= k;
            return Ok(k);
        }
        if ds.hs_need == 0 {
            ds.hs_field = F_HS_HEADER;
            ds.hs_need = HANDSHAKE_HEADER_LEN as u8;
        }
        let want = u32::from(ds.hs_need.saturating_sub(ds.hs_have) & 15);
        let k = if n >= want { want } else { 1 };
        let v = payload
            .load_be(off as usize, k as usize)
            .ok_or(StepError::ReadError)?;
        // An 8-byte field (the random) shifts by 64: that overflows a u64.
        ds.hs_acc = ds.hs_acc.checked_shl(8 * k).unwrap_or(0) | v;
        ds.hs_have += k as u8;
        if ds.hs_have >= ds.hs_need {
            let field = ds.hs_field;
            let value = ds.hs_acc;
            ds.hs_acc = 0;
            ds.hs_have = 0;
            ds.hs_need = 0;
            self.on_handshake_field(dir, field, value);
        }
        Ok(k)
    }

    /// Sets the next handshake field to collect, `size` bytes of the ServerHello.
    #[inline(always)]
    fn expect_sh_field(&mut self, dir: usize, field: u8, size: u8) {
        let ds = &mut self.dirs[dir & 1];
        ds.hs_field = field;
        ds.hs_need = size;
        ds.hs_msg_left = ds.hs_msg_left.saturating_sub(u32::from(size));
    }

    /// Skips `n` bytes of the ServerHello (clamped to what is left of it).
    #[inline(always)]
    fn skip_sh(&mut self, dir: usize, n: u32) {
        let ds = &mut self.dirs[dir & 1];
        let n = min_u32(n, ds.hs_msg_left);
        ds.hs_skip += n;
        ds.hs_msg_left -= n;
    }

    /// A handshake field is complete.
    #[inline(always)]
    fn on_handshake_field(&mut self, dir: usize, field: u8, v: u64) {
        let dir = dir & 1;
        match field {
            F_HS_HEADER => {
                let typ = (v >> 24) as u8;
                let len = (v & 0x00FF_FFFF) as u32;
                self.on_handshake_message(dir, typ);
                if typ == HS_SERVER_HELLO && dir == SERVER {
                    if len < SERVER_HELLO_MIN_LEN {
                        bump16(&mut self.counters.malformed);
                        self.dirs[dir].hs_skip = len;
                        return;
                    }
                    self.flags &= !(FF_SH_HRR | FF_SH_PSK);
                    self.dirs[dir].hs_msg_left = len;
                    self.expect_sh_field(dir, F_SH_VERSION, 2);
                } else {
                    self.dirs[dir].hs_skip = len;
                }
            }
            F_SH_VERSION => {
                self.version = v as u16;
                self.expect_sh_field(dir, F_SH_RANDOM, 8);
            }
            F_SH_RANDOM => {
                if v == HRR_RANDOM_PREFIX {
                    self.flags |= FF_SH_HRR;
                }
                self.skip_sh(dir, 24);
                self.expect_sh_field(dir, F_SH_SESSION_ID_LEN, 1);
            }
            F_SH_SESSION_ID_LEN => {
                // Session id, cipher suite (2), compression method (1).
                self.skip_sh(dir, v as u32 + 3);
                if self.dirs[dir].hs_msg_left >= 2 {
                    self.expect_sh_field(dir, F_SH_EXTENSIONS_LEN, 2);
                } else {
                    self.server_hello_done(dir);
                }
            }
            F_SH_EXTENSIONS_LEN => {
                let ds = &mut self.dirs[dir];
                ds.sh_ext_left = min_u32(v as u32, ds.hs_msg_left) as u16;
                self.next_extension(dir);
            }
            F_SH_EXT_HEADER => {
                let ext = (v >> 16) as u16;
                let ds = &mut self.dirs[dir];
                let len = min_u32(v as u32 & 0xFFFF, u32::from(ds.sh_ext_left)) as u16;
                ds.sh_ext_left -= len;
                if ext == EXT_PRE_SHARED_KEY {
                    self.flags |= FF_SH_PSK;
                }
                if ext == EXT_SUPPORTED_VERSIONS && len == 2 {
                    self.expect_sh_field(dir, F_SH_SUPPORTED_VERSION, 2);
                } else {
                    self.skip_sh(dir, u32::from(len));
                    self.next_extension(dir);
                }
            }
            F_SH_SUPPORTED_VERSION => {
                self.version = v as u16;
                self.next_extension(dir);
            }
            _ => {}
        }
    }

    /// Collects the next ServerHello extension header, or ends the ServerHello.
    #[inline(always)]
    fn next_extension(&mut self, dir: usize) {
        let ds = &mut self.dirs[dir & 1];
        if ds.sh_ext_left >= 4 && ds.hs_msg_left >= 4 {
            ds.sh_ext_left -= 4;
            self.expect_sh_field(dir, F_SH_EXT_HEADER, 4);
        } else {
            self.server_hello_done(dir);
        }
    }

    /// The ServerHello's interesting fields are parsed: apply what they say.
    #[inline(always)]
    fn server_hello_done(&mut self, dir: usize) {
        let dir = dir & 1;
        let rest = self.dirs[dir].hs_msg_left;
        self.skip_sh(dir, rest);
        if self.flags & FF_SH_HRR != 0 {
            // A HelloRetryRequest: the client sends a second cleartext
            // ClientHello, even after a compatibility CCS sent before it knew
            // the version (with 0-RTT data).
            self.flags |= FF_HRR_SEEN;
            self.dirs[CLIENT].flags &= !(DF_ENCRYPTED | DF_CCS_PENDING);
            return;
        }
        if self.version == VERSION_TLS13 {
            self.dirs[SERVER].flags |= DF_ENCRYPTED;
            if self.flags & (FF_SH_PSK | FF_FIRST_HS_DONE) == FF_SH_PSK {
                self.flags |= FF_RESUMED;
            }
        }
    }

    /// A cleartext handshake message header of type `typ` was read.
    #[inline(always)]
    fn on_handshake_message(&mut self, dir: usize, typ: u8) {
        if dir & 1 == CLIENT {
            if typ == HS_CLIENT_HELLO {
                bump(&mut self.counters.client_hellos);
                self.flags |= FF_HS_ACTIVE;
            }
        } else if matches!(
            typ,
            HS_CERTIFICATE | HS_SERVER_KEY_EXCHANGE | HS_CERTIFICATE_REQUEST | HS_SERVER_HELLO_DONE
        ) {
            self.flags |= FF_SERVER_CERT_SEEN;
        }
    }
}
