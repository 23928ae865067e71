//! Stream truth for the client direction at the socket hook (`hsmon run
//! --hooks socket`): what the tracker parses must be what TCP accepts.
//!
//! The `cgroup_skb` ingress program runs before TCP queues a segment, so
//! without help it parses segments TCP later puts out of order or throws
//! away (a wrong checksum on a segment longer than 76 bytes is checked after
//! the hook). Two rules, decided here by [`Rewind::admit`] before each
//! client segment with payload is parsed, with TCP's `rcv_nxt` (`R`) and the
//! direction's next expected byte (`N`):
//!
//! * **Drop ahead.** A segment that starts beyond `N` is dropped: TCP never
//!   sees it and the sender retransmits it in order (one retransmission
//!   timeout per loss or reordering in the client direction). The tracker
//!   therefore only ever parses bytes in stream order.
//! * **Rewind to a confirmed copy.** The tracker keeps copies of its state
//!   at segment starts: `conf`, at a position TCP has accepted everything
//!   before (`R` reached it, and every segment that could have replaced the
//!   parsed bytes before it was handled by these rules), and `pend`, at the
//!   latest in-order segment start, promoted to `conf` once `R` reaches it.
//!   A segment that starts before `N` while bytes parsed beyond `R` are not
//!   yet accepted (`R < N`) may carry the bytes TCP will really accept at
//!   those sequence numbers (the parsed ones came in a segment TCP
//!   discarded). When it contains the `conf` position (`s <= C <= R`) the
//!   state goes back to `conf` and the segment is parsed from `C`:
//!   legitimate retransmissions carry the same bytes, so this changes
//!   nothing for them; a forged segment TCP discarded leaves no trace.
//!   A segment that ends before `N` would make the tracker forget the
//!   parsed bytes beyond it, which TCP may still accept (a spurious
//!   retransmission while the original waits in the socket's backlog): it
//!   is dropped once, and the rewind happens if it comes again with the
//!   same start while `rcv_nxt` still has not passed it (TCP really threw
//!   the original away; one more retransmission timeout).
//!   When no copy fits, the tracker cannot tell: a segment starting beyond
//!   `R` is dropped (TCP would only queue it out of order; it comes again),
//!   one starting at or below `R` is parsed as before (bytes up to `N`
//!   skipped) and counted ([`Admit::Unverified`]).
//!
//! A segment entirely below `R` (TCP trims it) and one starting at `N` are
//! parsed as before. All comparisons are on TCP sequence numbers modulo
//! 2^32.
//!
//! What a rewind restores: the whole [`FlowState`] except the server
//! direction's parser state (the server's stream went on), keeping
//! [`FF_OVER_CAP`] and [`FF_CLOSED`] (never cleared). Counters the server
//! direction changed between the copy and the rewind go back with it: in
//! practice the copy is one client segment old and the server silent
//! (the client's bytes were never accepted, so the server had nothing to
//! answer).

use crate::tracker::{FlowState, CLIENT, DIR_SYNCED, FF_CLOSED, FF_OVER_CAP, SERVER};

/// `conf` holds a copy.
const HAVE_CONF: u32 = 1;
/// `pend` holds a copy.
const HAVE_PEND: u32 = 2;
/// A segment at `held_seq` that a rewind would have cut short was dropped
/// once.
const HELD: u32 = 4;

/// Is `a` before `b` in sequence space?
#[inline(always)]
pub fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// Is `a` at or before `b` in sequence space?
#[inline(always)]
pub fn seq_le(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) <= 0
}

/// What to do with a client segment, from [`Rewind::admit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Parse it as usual (in order, a retransmission TCP trims, or nothing
    /// to check).
    Parse,
    /// Drop it: it starts beyond the next expected byte.
    DropAhead,
    /// The state went back to the confirmed copy: parse it.
    Rewound,
    /// It overlaps bytes TCP has not accepted and no copy fits; it starts
    /// beyond `rcv_nxt`: drop it (TCP would only queue it out of order).
    DropUnverified,
    /// It overlaps bytes TCP has not accepted and no copy fits; it starts at
    /// or below `rcv_nxt`: parsed as before (bytes up to the next expected
    /// one skipped). Counted: the one case the tracker cannot check.
    Unverified,
}

/// The copies of the tracker state [`Rewind::admit`] keeps (see the module
/// docs). Part of the socket hook's per-socket storage.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rewind {
    /// The state at `conf_pos`, everything before which TCP accepted.
    pub conf: FlowState,
    /// The state at `pend_pos`, the latest in-order segment start.
    pub pend: FlowState,
    /// Client sequence number of `conf`.
    pub conf_pos: u32,
    /// Client sequence number of `pend`.
    pub pend_pos: u32,
    /// `HAVE_*` and `HELD` bits.
    pub have: u32,
    /// Sequence number of the segment dropped once instead of a rewind that
    /// would cut the parsed range short (`HELD`).
    pub held_seq: u32,
}

// Two copies and four words: the agent's `SockFlowLayout` (pins.rs) adds
// this size to the socket storage value it expects.
const _: () = assert!(core::mem::size_of::<Rewind>() == 2 * core::mem::size_of::<FlowState>() + 16);

impl Rewind {
    /// Decides what to do with a client segment of `len` (> 0) payload
    /// bytes at `seq`, TCP's `rcv_nxt` being `rcv_nxt`, and does it to
    /// `flow` and the copies (a rewind, a new copy). The caller then parses
    /// the segment unless told to drop it. Does nothing (`Parse`) unless the
    /// client direction is in sync.
    #[inline(always)]
    pub fn admit(&mut self, flow: &mut FlowState, seq: u32, len: u32, rcv_nxt: u32) -> Admit {
        let ds = &flow.dirs[CLIENT];
        if ds.status != DIR_SYNCED {
            return Admit::Parse;
        }
        let next = ds.next_seq;
        let end = seq.wrapping_add(len);
        let r = rcv_nxt;
        // Promote the pending copy once TCP accepted everything before it.
        if self.have & HAVE_PEND != 0 && seq_le(self.pend_pos, r) {
            self.conf = self.pend;
            self.conf_pos = self.pend_pos;
            self.have = (self.have & !HAVE_PEND) | HAVE_CONF;
        }
        if seq_lt(next, seq) {
            return Admit::DropAhead;
        }
        if seq == next {
            if seq_le(next, r) {
                // Everything parsed was accepted: the state is confirmed.
                self.conf = *flow;
                self.conf_pos = next;
                self.have = (self.have & !HAVE_PEND) | HAVE_CONF;
            } else {
                self.pend = *flow;
                self.pend_pos = next;
                self.have |= HAVE_PEND;
            }
            return Admit::Parse;
        }
        // Starts before `next`: overlaps parsed bytes.
        if seq_le(end, r) || seq_le(next, r) {
            // TCP trims it whole, or every parsed byte was accepted.
            return Admit::Parse;
        }
        if self.have & HAVE_CONF != 0 && seq_le(seq, self.conf_pos) && seq_le(self.conf_pos, r) {
            if seq_lt(end, next) && (self.have & HELD == 0 || self.held_seq != seq) {
                // Going back would forget the parsed bytes beyond `end`,
                // which TCP may still accept from its backlog (a spurious
                // retransmission while the original waits there): drop it
                // once. If TCP really threw the original away, it comes
                // again with `rcv_nxt` still here and is parsed then.
                self.have |= HELD;
                self.held_seq = seq;
                return Admit::DropUnverified;
            }
            self.have &= !HELD;
            self.restore(flow);
            return Admit::Rewound;
        }
        // No copy fits: whatever is decided, the pending copy may hold
        // bytes TCP will not accept.
        self.have &= !HAVE_PEND;
        if seq_lt(r, seq) {
            Admit::DropUnverified
        } else {
            Admit::Unverified
        }
    }

    /// Puts `flow` back to `conf` (see the module docs for what is kept).
    #[inline(always)]
    fn restore(&mut self, flow: &mut FlowState) {
        let server = flow.dirs[SERVER];
        let keep = flow.flags & (FF_OVER_CAP | FF_CLOSED);
        *flow = self.conf;
        flow.dirs[SERVER] = server;
        flow.flags |= keep;
        self.have &= !HAVE_PEND;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker::{step_bound, SegmentOutcome, DIR_UNSYNCED};

    /// A client sending `stream` (from sequence number `base`), a TCP that
    /// accepts in order and throws away the segments a test marks bad, and
    /// the hook: [`Rewind::admit`] then the tracker.
    struct Link {
        flow: FlowState,
        rw: Rewind,
        base: u32,
        rcv_nxt: u32,
        accepted: std::vec::Vec<u8>,
        /// TCP accepts nothing for now (the segments wait in its backlog).
        frozen: bool,
    }

    extern crate std;

    impl Link {
        fn new(base: u32) -> Self {
            Link {
                flow: FlowState::new(),
                rw: Rewind::default(),
                base,
                rcv_nxt: base,
                accepted: std::vec::Vec::new(),
                frozen: false,
            }
        }

        /// The hook sees `bytes` at stream offset `off`; TCP accepts them
        /// unless `bad` (or out of order). Returns the hook's verdict.
        fn send(&mut self, off: u32, bytes: &[u8], bad: bool) -> Admit {
            let seq = self.base.wrapping_add(off);
            let a = if self.flow.dirs[CLIENT].status == DIR_SYNCED {
                self.rw
                    .admit(&mut self.flow, seq, bytes.len() as u32, self.rcv_nxt)
            } else {
                Admit::Parse
            };
            if matches!(a, Admit::DropAhead | Admit::DropUnverified) {
                return a;
            }
            let o = self
                .flow
                .on_segment(CLIENT, seq, bytes, step_bound(bytes.len() as u32));
            assert_ne!(o, SegmentOutcome::Gap, "the hook let a gap through");
            let have = self.rcv_nxt.wrapping_sub(self.base);
            if !bad && !self.frozen && off <= have && off + bytes.len() as u32 > have {
                self.accepted
                    .extend_from_slice(&bytes[(have - off) as usize..]);
                self.rcv_nxt = self.base.wrapping_add(self.accepted.len() as u32);
            }
            a
        }
    }

    /// Handshake record of `n` body bytes (an encrypted renegotiation).
    fn hs(n: usize) -> std::vec::Vec<u8> {
        let mut v = std::vec![0x16, 3, 3, (n >> 8) as u8, n as u8];
        v.resize(5 + n, 0xab);
        v
    }

    fn appdata(n: usize) -> std::vec::Vec<u8> {
        let mut v = std::vec![0x17, 3, 3, (n >> 8) as u8, n as u8];
        v.resize(5 + n, 0xcd);
        v
    }

    #[test]
    fn seq_compares_wrap() {
        assert!(seq_lt(u32::MAX - 5, 3));
        assert!(!seq_lt(3, u32::MAX - 5));
        assert!(seq_le(7, 7));
        assert!(seq_lt(0x7fff_ffff, 0x8000_0000));
    }

    /// The bad-checksum attack at every base (around the wrap too): the
    /// record the tracker parses is the real one.
    #[test]
    fn discarded_segment_is_rewound() {
        for base in [1000u32, u32::MAX - 40, u32::MAX - 3] {
            let mut l = Link::new(base);
            let first = appdata(30);
            assert_eq!(l.send(0, &first, false), Admit::Parse);
            let at = first.len() as u32;
            // 100 bytes TCP discards: a 16 KiB application-data header.
            let mut junk = appdata(16384);
            junk.truncate(100);
            assert_eq!(l.send(at, &junk, true), Admit::Parse);
            let real = hs(300);
            assert_eq!(l.send(at, &real, false), Admit::Rewound, "base {base}");
            assert_eq!(l.flow.counters.records[2], 1, "base {base}");
            assert_eq!(l.flow.dirs[CLIENT].next_seq, l.rcv_nxt);
            // Longer junk than the real segment, twice in a row.
            let at = at + real.len() as u32;
            let mut junk = appdata(16384);
            junk.truncate(1400);
            l.send(at, &junk, true);
            l.send(at + 1400, &junk, true);
            // Shorter than what was parsed: dropped once, then rewound.
            assert_eq!(l.send(at, &hs(40), false), Admit::DropUnverified);
            assert_eq!(l.send(at, &hs(40), false), Admit::Rewound);
            assert_eq!(l.flow.counters.records[2], 2);
            assert_eq!(l.flow.dirs[CLIENT].status, DIR_SYNCED);
        }
    }

    /// Out of order: dropped at the hook, parsed when it comes in order.
    #[test]
    fn segment_ahead_is_dropped() {
        let mut l = Link::new(u32::MAX - 10);
        let a = appdata(50);
        let b = hs(60);
        l.send(0, &a[..20], false);
        assert_eq!(l.send(20 + 200, &[0x17], false), Admit::DropAhead);
        assert_eq!(l.send(40, &a[40..], false), Admit::DropAhead);
        assert_eq!(l.send(20, &a[20..], false), Admit::Parse);
        assert_eq!(l.send(a.len() as u32, &b, false), Admit::Parse);
        assert_eq!(l.flow.counters.records[2], 1);
        assert_eq!(l.flow.counters.gaps, 0);
    }

    /// Retransmissions of accepted bytes and of bytes TCP threw away after
    /// the hook change nothing.
    #[test]
    fn retransmissions_change_nothing() {
        let stream: std::vec::Vec<u8> = [appdata(100), hs(80), appdata(20)].concat();
        let mut l = Link::new(7);
        l.send(0, &stream[..60], false);
        l.send(60, &stream[60..130], false);
        // TCP dropped the second segment after the hook: its retransmission.
        let mut lag = Link::new(7);
        lag.send(0, &stream[..60], false);
        lag.send(60, &stream[60..130], true);
        assert_eq!(lag.send(60, &stream[60..130], false), Admit::Rewound);
        assert_eq!(lag.flow, l.flow);
        for k in [&mut l, &mut lag] {
            assert_eq!(k.send(0, &stream[..60], false), Admit::Parse);
            k.send(130, &stream[130..], false);
        }
        assert_eq!(l.flow, lag.flow);
        assert_eq!(l.flow.counters.records, [0, 0, 1, 2, 0]);
        assert_eq!(l.flow.counters.retransmits, 1);
    }

    /// A spurious retransmission shorter than what was parsed while TCP
    /// still holds the original (backlog): dropped, nothing forgotten.
    #[test]
    fn short_retransmission_of_unaccepted_bytes_is_dropped_once() {
        let stream: std::vec::Vec<u8> = [appdata(100), hs(80), appdata(20)].concat();
        let mut l = Link::new(40);
        l.send(0, &stream[..60], false);
        // Two segments the hook passed, TCP not yet (rcv_nxt stays at 60).
        l.frozen = true;
        l.send(60, &stream[60..130], false);
        l.send(130, &stream[130..], false);
        let before = l.flow;
        assert_eq!(l.send(60, &stream[60..130], false), Admit::DropUnverified);
        assert_eq!(l.flow, before);
    }

    /// A copy is never taken of a state built on bytes TCP discarded.
    #[test]
    fn chained_junk_cannot_become_the_copy() {
        let mut l = Link::new(500);
        let a = appdata(10);
        l.send(0, &a, false);
        let at = a.len() as u32;
        let mut junk = appdata(16384);
        junk.truncate(200);
        l.send(at, &junk[..100], true);
        l.send(at + 100, &junk[100..], true);
        // A real segment beyond the copy while TCP waits at `at`: dropped.
        let real = hs(400);
        assert_eq!(
            l.send(at + 100, &real[100..300], false),
            Admit::DropUnverified
        );
        assert_eq!(l.send(at, &real, false), Admit::Rewound);
        assert_eq!(l.flow.dirs[CLIENT].next_seq, l.rcv_nxt);
        assert_eq!(l.flow.counters.records[2], 1);
        assert_ne!(l.flow.dirs[CLIENT].status, DIR_UNSYNCED);
    }

    #[test]
    fn rewind_keeps_the_cap_flag_and_the_server_direction() {
        let mut l = Link::new(1);
        l.flow.dirs[SERVER].next_seq = 99;
        l.send(0, &appdata(10), false);
        let mut junk = appdata(500);
        junk.truncate(100);
        l.send(15, &junk, true);
        l.flow.flags |= FF_OVER_CAP;
        l.flow.dirs[SERVER].next_seq = 1234;
        assert_eq!(l.send(15, &hs(10), false), Admit::DropUnverified);
        assert_eq!(l.send(15, &hs(10), false), Admit::Rewound);
        assert!(l.flow.over_cap());
        assert_eq!(l.flow.dirs[SERVER].next_seq, 1234);
    }
}
