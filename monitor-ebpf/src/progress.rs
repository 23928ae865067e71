//! `EVENT_FLOW_PROGRESS`: tells the agent when a segment of a known flow
//! changed what its policy reads, so it decides on that segment rather than
//! at its next one-second sweep.
//!
//! The cost on the per-packet path is two `u32` loads before the segment is
//! parsed ([`snapshot`]) and two compares after ([`send_if_changed`]); the
//! event itself is sent by one non-inlined function, off the common path
//! (renegotiations are rare and expensive for the sender; `keyupdate_like`
//! records are reported once per [`KEYUPDATE_EVENT_EVERY`]).

use monitor_common::flow::{FlowKey, FlowValue, EVENT_FLOW_PROGRESS, KEYUPDATE_EVENT_EVERY};

use crate::maps::send_flow_event;

const _: () = assert!(KEYUPDATE_EVENT_EVERY.is_power_of_two());
/// `keyupdate_like >> KEYUPDATE_SHIFT` changes once per `KEYUPDATE_EVENT_EVERY`.
const KEYUPDATE_SHIFT: u32 = KEYUPDATE_EVENT_EVERY.trailing_zeros();

/// The counters the policy reads, before a segment is parsed.
#[derive(Clone, Copy)]
pub struct Snapshot {
    renegs: u32,
    keyupdates: u32,
}

/// What [`send_if_changed`] compares against.
#[inline(always)]
pub fn snapshot(flow: &FlowValue) -> Snapshot {
    let c = &flow.tracker.counters;
    Snapshot {
        renegs: c.renegotiations_client,
        keyupdates: c.keyupdate_like >> KEYUPDATE_SHIFT,
    }
}

/// After a segment of a known flow was parsed: sends `EVENT_FLOW_PROGRESS`
/// when it changed a counter the policy reads.
#[inline(always)]
pub fn send_if_changed(before: &Snapshot, flow: &FlowValue, key: &FlowKey) {
    let c = &flow.tracker.counters;
    if c.renegotiations_client != before.renegs
        || c.keyupdate_like >> KEYUPDATE_SHIFT != before.keyupdates
    {
        flow_progress(flow, key);
    }
}

/// Sends `EVENT_FLOW_PROGRESS` with the flow's state; a full ring buffer
/// counts `EventsLost`. Not inlined, one function for this kind only (see
/// `tc.rs`'s `flow_opened` for why).
#[inline(never)]
fn flow_progress(flow: &FlowValue, key: &FlowKey) {
    send_flow_event(EVENT_FLOW_PROGRESS, flow, key);
}
