//! What the tracker target checks on one decoded [`Input`].
//!
//! 1. **Free-form run**: every operation as decoded (arbitrary sequence
//!    numbers: gaps, retransmissions, overlaps, wrap-around), with the
//!    input's step budget and renegotiation cap. Must not panic, and after
//!    every operation: no counter decreased; the sticky flags (`FF_UNSYNCED`,
//!    `FF_CLOSED`, `FF_OVER_CAP`, `FF_FIRST_HS_DONE`) and an unsynced
//!    direction stay set; an unsynced direction sets `FF_UNSYNCED`; a `Gap`
//!    outcome counted a gap and a `BadRecord` a bad record; once the cap
//!    verdict was `Hit` it is `Over` for good.
//! 2. **Segmentation does not matter**: only the in-order sends (and closes)
//!    with an unlimited step budget, fed (a) one segment per send, (b) each
//!    send cut into small segments, (c) each segment re-sent overlapping the
//!    previous one of its direction, and (d) every segment followed by a
//!    whole retransmission of itself. The tracker promises (module doc,
//!    `tracker_props`) that cutting and retransmitting never change what is
//!    counted: the final states must be equal, `retransmits` and the stream
//!    position of a direction that lost sync aside.

use monitor_common::tracker::*;

use crate::tracker_input::{Input, Op};

/// Step budget standing for "unlimited" (every step consumes a byte).
const UNLIMITED: u32 = 1 << 24;

fn counters_vec(c: &FlowCounters) -> [u64; 18] {
    [
        c.client_hellos.into(),
        c.handshakes.into(),
        c.renegotiations_client.into(),
        c.renegotiations_server.into(),
        c.renegotiations_refused.into(),
        c.alerts.into(),
        c.keyupdate_like.into(),
        c.records[0].into(),
        c.records[1].into(),
        c.records[2].into(),
        c.records[3].into(),
        c.records[4].into(),
        c.retransmits.into(),
        c.gaps.into(),
        c.bad_records.into(),
        c.overflows.into(),
        c.malformed.into(),
        c.keyupdate_streaked.into(),
    ]
}

const STICKY: u16 = FF_UNSYNCED | FF_CLOSED | FF_OVER_CAP | FF_FIRST_HS_DONE;

fn check_step(before: &FlowState, after: &FlowState, what: &str) {
    let (b, a) = (
        counters_vec(&before.counters),
        counters_vec(&after.counters),
    );
    for (i, (x, y)) in b.iter().zip(a.iter()).enumerate() {
        assert!(y >= x, "counter #{i} decreased {x} -> {y} after {what}");
    }
    assert_eq!(
        after.flags & before.flags & STICKY,
        before.flags & STICKY,
        "a sticky flag was cleared after {what}"
    );
    for d in 0..2 {
        if before.dirs[d].status == DIR_UNSYNCED {
            assert_eq!(
                after.dirs[d].status, DIR_UNSYNCED,
                "direction {d} re-synced after {what}"
            );
        }
        if after.dirs[d].status == DIR_UNSYNCED {
            assert!(
                after.flags & FF_UNSYNCED != 0,
                "direction {d} unsynced without FF_UNSYNCED after {what}"
            );
        }
    }
}

/// The free-form run (see the module doc).
pub fn free_form(input: &Input) {
    // 0: the eBPF program's budget, `step_bound` of the segment's length
    // (never exhausted: checked below).
    let budget = |len: usize| match input.max_steps {
        0 => step_bound(len as u32),
        n => u32::from(n),
    };
    let mut st = FlowState::new();
    let mut pos = input.isn;
    let mut over = false;
    for op in &input.ops {
        let before = st;
        let (dir, outcome) = match op {
            Op::Send { dir, bytes } => {
                let o = st.on_segment(*dir, pos[*dir], bytes.as_slice(), budget(bytes.len()));
                pos[*dir] = pos[*dir].wrapping_add(bytes.len() as u32);
                (Some(*dir), Some(o))
            }
            Op::At { dir, offset, bytes } => {
                let seq = pos[*dir].wrapping_add(*offset as u32);
                (
                    Some(*dir),
                    Some(st.on_segment(*dir, seq, bytes.as_slice(), budget(bytes.len()))),
                )
            }
            Op::Close { dir } => {
                st.on_close(*dir);
                (None, None)
            }
            Op::Finish => {
                st.finish();
                (None, None)
            }
        };
        if dir == Some(CLIENT) {
            let v = st.apply_reneg_cap(u32::from(input.reneg_cap));
            if over {
                assert_eq!(v, CapVerdict::Over, "the cap verdict left Over");
            }
            if v == CapVerdict::Hit {
                assert!(!over, "the cap was hit twice");
            }
            over |= v != CapVerdict::Pass;
            assert_eq!(over, st.over_cap());
        }
        let what = format!("{op:?} -> {outcome:?}");
        check_step(&before, &st, &what);
        if input.max_steps == 0 {
            assert_ne!(
                outcome,
                Some(SegmentOutcome::Overflow),
                "the eBPF step budget ran out: {what}"
            );
        }
        match outcome {
            Some(SegmentOutcome::Gap) => assert!(
                st.counters.gaps > before.counters.gaps || before.counters.gaps == u16::MAX,
                "a gap not counted: {what}"
            ),
            Some(SegmentOutcome::BadRecord) => assert!(
                st.counters.bad_records > before.counters.bad_records
                    || before.counters.bad_records == u16::MAX,
                "a bad record not counted: {what}"
            ),
            _ => {}
        }
    }
}

/// In-order sends and closes only.
#[derive(Clone, Copy)]
enum Feed {
    /// One segment per send.
    Whole,
    /// Each send cut into segments of 1..=`n` bytes (sizes from a counter).
    Cut(usize),
    /// Like `Cut`, each segment starting `back` bytes before the stream
    /// position (bytes already seen, then new ones).
    Overlap(usize, u32),
    /// Like `Cut`, each segment then sent again whole.
    Retransmit(usize),
}

fn feed(input: &Input, how: Feed) -> FlowState {
    let mut st = FlowState::new();
    let mut pos = input.isn;
    let mut sent = [0u32; 2];
    let mut k = 0usize;
    for op in &input.ops {
        match op {
            Op::Send { dir, bytes } => {
                let dir = *dir;
                let max = match how {
                    Feed::Whole => usize::MAX,
                    Feed::Cut(n) | Feed::Overlap(n, _) | Feed::Retransmit(n) => n.max(1),
                };
                let mut i = 0;
                while i < bytes.len() {
                    k = k.wrapping_add(7);
                    let size = if max == usize::MAX {
                        bytes.len()
                    } else {
                        1 + k % max
                    };
                    let end = (i + size).min(bytes.len());
                    let seq = pos[dir].wrapping_add(i as u32);
                    match how {
                        Feed::Overlap(_, back) => {
                            // Re-send up to `back` bytes before `i` (only bytes
                            // this direction really sent), then the new ones.
                            let back = back.min(sent[dir]).min(i as u32) as usize;
                            let start = i - back;
                            st.on_segment(
                                dir,
                                pos[dir].wrapping_add(start as u32),
                                &bytes[start..end],
                                UNLIMITED,
                            );
                        }
                        Feed::Retransmit(_) => {
                            st.on_segment(dir, seq, &bytes[i..end], UNLIMITED);
                            st.on_segment(dir, seq, &bytes[i..end], UNLIMITED);
                        }
                        _ => {
                            st.on_segment(dir, seq, &bytes[i..end], UNLIMITED);
                        }
                    }
                    sent[dir] = sent[dir].saturating_add((end - i) as u32);
                    i = end;
                }
                pos[dir] = pos[dir].wrapping_add(bytes.len() as u32);
            }
            Op::At { .. } => {}
            Op::Close { dir } => st.on_close(*dir),
            Op::Finish => st.finish(),
        }
    }
    st
}

/// The state without what segmentation may change: `retransmits`, and the
/// stream position of an unsynced direction (a whole segment moves it to the
/// segment's end even when sync was lost in its middle; later segments of an
/// unsynced direction are ignored and never move it).
fn normalised(mut st: FlowState) -> FlowState {
    st.counters.retransmits = 0;
    for d in st.dirs.iter_mut() {
        if d.status == DIR_UNSYNCED {
            d.next_seq = 0;
        }
    }
    st
}

/// The segmentation and retransmission comparison (see the module doc).
pub fn segmentation(input: &Input) {
    let whole = normalised(feed(input, Feed::Whole));
    let n = usize::from(input.max_steps % 16) + 1;
    for how in [
        Feed::Cut(n),
        Feed::Cut(1),
        Feed::Overlap(n, u32::from(input.reneg_cap) + 1),
        Feed::Retransmit(n),
    ] {
        let other = normalised(feed(input, how));
        assert_eq!(
            whole,
            other,
            "segmentation changed the result ({})",
            match how {
                Feed::Whole => "whole".to_owned(),
                Feed::Cut(n) => format!("cut {n}"),
                Feed::Overlap(n, b) => format!("overlap {n}/{b}"),
                Feed::Retransmit(n) => format!("retransmit {n}"),
            }
        );
    }
}
