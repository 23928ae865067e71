//! The TC classifiers: find the flow of each TCP segment and feed the tracker.

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{BPF_NOEXIST, TC_ACT_SHOT, TC_ACT_UNSPEC},
    cty::{c_long, c_void},
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::classifier,
    programs::TcContext,
};
use monitor_common::{
    flow::{
        FlowKey, FlowValue, Stat, TrackerConfig, EVENT_FLOW_OPENED, EVENT_LIMIT_HIT, HOOKS_SOCKET,
        MAX_PORTS,
    },
    payload::Payload,
    tls::{could_start_client_hello, CT_HANDSHAKE},
    tracker::{step_bound, CapVerdict, CLIENT, DIR_NEW, SERVER},
};

use crate::{
    maps::{count, send_flow_event, CONFIG, FLOWS, SCRATCH},
    packet::{parse, Segment, Skb, SkbPayload, TCP_FIN, TCP_RST},
};

/// What the `bpf_loop` callback needs, on the caller's stack.
#[repr(C)]
struct StepCtx {
    flow: *mut FlowValue,
    payload: SkbPayload,
    dir: u32,
    off: u32,
    len: u32,
    done: u32,
}

/// One tracker step per `bpf_loop` iteration; returns 1 to stop.
extern "C" fn step_cb(_index: u64, ctx: *mut c_void) -> c_long {
    // SAFETY: `ctx` is the `StepCtx` on `track`'s stack, alive during bpf_loop.
    let sc = unsafe { &mut *(ctx as *mut StepCtx) };
    let flow = unsafe { &mut *sc.flow };
    let mut off = sc.off;
    let r = flow
        .tracker
        .step_segment(sc.dir as usize, &sc.payload, &mut off, sc.len);
    sc.off = off;
    if r.is_some() {
        sc.done = 1;
        1
    } else {
        0
    }
}

/// Ingress hook: segments arriving at this host. Packets from banned
/// sources are dropped first (`crate::ban`; one array lookup when nothing is
/// banned); then client segments of flows over the renegotiation cap
/// (`TrackerConfig::reneg_cap`: this host is the server, the cap protects it).
#[classifier]
pub fn hsmon_tc_ingress(ctx: TcContext) -> i32 {
    count(Stat::TcIngressRuns);
    if crate::ban::any() && crate::ban::banned(&ctx) {
        return TC_ACT_SHOT;
    }
    if track(&ctx, true) {
        return TC_ACT_SHOT;
    }
    TC_ACT_UNSPEC
}

/// Egress hook: segments leaving this host. Never drops.
#[classifier]
pub fn hsmon_tc_egress(ctx: TcContext) -> i32 {
    count(Stat::TcEgressRuns);
    track(&ctx, false);
    TC_ACT_UNSPEC
}

/// Does nothing: the baseline `cargo xtask bench` measures the others against.
/// The agent never attaches it.
#[classifier]
pub fn hsmon_tc_noop(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

/// Feeds the segment to its flow's tracker. Returns `true` when the segment
/// must be dropped: only on ingress (`ingress`), only a client segment with
/// payload of a flow over the renegotiation cap.
///
/// Inlined into each classifier, like `parse` and a leading
/// application-data record's steps: a BPF call and its return (through the
/// kernel's return thunk where the CPU needs one) cost about 20 ns here,
/// more than the work of most steps. What is left per segment of a known
/// flow: the `FLOWS` lookup, one clock read, and `bpf_loop` only for a
/// segment that is not one whole application-data record.
#[inline(always)]
fn track(ctx: &TcContext, ingress: bool) -> bool {
    let cfg = CONFIG.get(0);
    if let Some(c) = cfg {
        if c.hooks == HOOKS_SOCKET {
            // Socket mode: the `cgroup_skb` programs count local sockets
            // (`crate::sock`); TC keeps only the bans.
            return false;
        }
    }
    let mut seg = MaybeUninit::<Segment>::uninit();
    if !parse(ctx, seg.as_mut_ptr()) {
        return false;
    }
    // SAFETY: `parse` writes every field when it returns true.
    let seg = unsafe { seg.assume_init() };
    let has_payload = seg.payload_len > 0;
    let closing = seg.flags & (TCP_FIN | TCP_RST) != 0;
    if !has_payload && !closing {
        return false;
    }
    if has_payload {
        count(Stat::Segments);
    }
    if !either_port_watched(cfg, seg.src_port, seg.dst_port) {
        // Flows are only created for a watched server port: neither end's
        // port is watched, so this cannot be a tracked flow's segment.
        return false;
    }
    let (key, sender_is_a) =
        FlowKey::from_endpoints(&seg.src, seg.src_port, &seg.dst, seg.dst_port);
    let payload = SkbPayload {
        skb: Skb::tc(ctx),
        off: seg.payload_off,
        len: seg.payload_len,
    };
    let (flow, created) = match FLOWS.get_ptr_mut(&key) {
        Some(flow) => (flow, false),
        None => {
            // Only a segment whose first byte could begin a ClientHello's
            // record header may create a flow: one load settles most
            // segments of untracked connections before the call.
            if !has_payload || payload.load_be(0, 1) != Some(CT_HANDSHAKE as u64) {
                return false;
            }
            let flow = new_flow(&seg, &payload, &key, sender_is_a);
            if flow.is_null() {
                return false;
            }
            // No segment parsed yet in either direction: this is the flow's
            // first (if both hooks race to create it, both say so; the agent
            // dedupes). Checked only here, off the path of segments of known
            // flows.
            // SAFETY: a valid pointer into the map.
            (flow, unsafe { just_created(&*flow) })
        }
    };
    // SAFETY: a valid pointer into the map; the tracker only touches plain integers.
    let flow = unsafe { &mut *flow };
    let dir = if monitor_common::orient::sender_is_client(sender_is_a, flow) {
        CLIENT
    } else {
        SERVER
    };
    let mut drop = false;
    if has_payload {
        count(Stat::TlsSegments);
        if !created {
            // The coarse clock (last tick): half the cost of
            // `bpf_ktime_get_ns`. It can lag the precise clock that set
            // `first_seen_ns` by a tick, so it only ever moves
            // `last_seen_ns` forward. (A flow just created has it set.)
            let now = unsafe { bpf_ktime_get_coarse_ns() };
            if now > flow.last_seen_ns {
                flow.last_seen_ns = now;
            }
        }
        let before = crate::progress::snapshot(flow);
        parse_payload(flow, dir, seg.seq, payload);
        if created {
            // After the first segment is parsed, so the event carries its
            // ClientHello: a flow the LRU evicts before the agent's next
            // sweep is still accounted (reported `evicted`).
            flow_opened(flow, &key);
        } else {
            crate::progress::send_if_changed(&before, flow, &key);
        }
        if ingress && dir == CLIENT {
            // After the whole segment is parsed: the tracker counted the
            // renegotiation ClientHello at its record header.
            drop = reneg_cap_drops(flow, &key, cfg);
        }
    }
    if closing {
        flow.tracker.on_close(dir);
    }
    drop
}

/// Has no segment of `flow` been parsed yet, in either direction?
#[inline(always)]
fn just_created(flow: &FlowValue) -> bool {
    flow.tracker.dirs[CLIENT].status == DIR_NEW && flow.tracker.dirs[SERVER].status == DIR_NEW
}

/// Applies the renegotiation cap after a client segment with payload:
/// `true` to drop it (counted in `STATS`); the first time, an
/// `EVENT_LIMIT_HIT` tells the agent to reset the connection.
#[inline(always)]
pub(crate) fn reneg_cap_drops(
    flow: &mut FlowValue,
    key: &FlowKey,
    cfg: Option<&TrackerConfig>,
) -> bool {
    let cap = match cfg {
        Some(cfg) => cfg.reneg_cap,
        None => 0,
    };
    match flow.tracker.apply_reneg_cap(cap) {
        CapVerdict::Pass => false,
        CapVerdict::Hit => {
            count(Stat::RenegCapDrops);
            limit_hit(flow, key);
            true
        }
        CapVerdict::Over => {
            count(Stat::RenegCapDrops);
            true
        }
    }
}

/// Sends `EVENT_FLOW_OPENED` for a flow just created. Not inlined: once per
/// flow, and kept out of `track`'s frame (the verifier caps the call chain
/// at 512 bytes). One function per event kind: a shared function with the
/// kind as an argument gets specialised by LLVM into clones that carry no
/// BTF func info, which the verifier refuses ("missing btf func_info").
#[inline(never)]
pub(crate) fn flow_opened(flow: &FlowValue, key: &FlowKey) {
    send_flow_event(EVENT_FLOW_OPENED, flow, key);
}

/// Sends `EVENT_LIMIT_HIT` for the flow (see [`flow_opened`]).
#[inline(never)]
fn limit_hit(flow: &FlowValue, key: &FlowKey) {
    send_flow_event(EVENT_LIMIT_HIT, flow, key);
}

/// Feeds the payload to the tracker, as `FlowState::on_segment` does: a
/// leading application-data record in line (`FlowState::app_data_steps`: a
/// segment of one encrypted record needs no call; inlining the general step
/// instead multiplies the verifier's work several times), the rest one step
/// per `bpf_loop` iteration. The budget is `step_bound` of the bytes left:
/// every step consumes at least one byte, so no segment can exhaust it.
#[inline(always)]
pub(crate) fn parse_payload(flow: &mut FlowValue, dir: usize, seq: u32, payload: SkbPayload) {
    let Ok((mut off, len)) = flow.tracker.begin_segment(dir, seq, payload.len as usize) else {
        return;
    };
    let budget = step_bound(len.saturating_sub(off));
    let used = flow
        .tracker
        .app_data_steps(dir, &payload, &mut off, len, budget);
    if used > 0 && off >= len {
        return;
    }
    let budget = step_bound(len.saturating_sub(off));
    let mut sc = StepCtx {
        flow: flow as *mut FlowValue,
        payload,
        dir: dir as u32,
        off,
        len,
        done: 0,
    };
    crate::loops::run(
        budget,
        step_cb as *mut c_void,
        &mut sc as *mut StepCtx as *mut c_void,
    );
    if sc.done == 0 {
        flow.tracker.overflow(dir, sc.off, sc.len);
    }
}

/// Creates the flow when the payload starts with a ClientHello on a watched
/// port, or, for a segment shorter than a ClientHello's first 6 bytes, with
/// bytes that could begin one (a client sending its ClientHello in pieces
/// must not escape tracking; if the rest is not TLS the tracker marks the
/// direction unsynced). Returns the flow (the other hook's, if it won the
/// race), or null. Keep the signature plain: BPF calls take at most 5
/// arguments; the BTF bpf-linker emits for an `Option` of a tuple has a
/// union member the kernel refuses ("Invalid member bits_offset"; without the
/// object's BTF `bpf_loop` is refused too); and an `Option` of a pointer is
/// returned through the caller's stack, leaving whatever LLVM had in `r0`,
/// which the verifier refuses when it is a stack pointer ("cannot return
/// stack pointer to the caller").
#[inline(never)]
fn new_flow(
    seg: &Segment,
    payload: &SkbPayload,
    key: &FlowKey,
    sender_is_a: bool,
) -> *mut FlowValue {
    match create_flow(seg, payload, key, sender_is_a) {
        Some(flow) => flow,
        None => core::ptr::null_mut(),
    }
}

/// [`new_flow`]'s body.
#[inline(always)]
fn create_flow(
    seg: &Segment,
    payload: &SkbPayload,
    key: &FlowKey,
    sender_is_a: bool,
) -> Option<*mut FlowValue> {
    let head = first_six(payload)?;
    let n = if seg.payload_len < 6 {
        seg.payload_len as usize
    } else {
        6
    };
    if !could_start_client_hello(&head, n) || !port_watched(seg.dst_port) {
        return None;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let value = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch slot; nothing else uses it during this program run.
    let value = unsafe {
        zero_flow_value(value);
        (*value).first_seen_ns = now;
        (*value).last_seen_ns = now;
        (*value).client_is_a = sender_is_a as u8;
        &*value
    };
    if FLOWS.insert(key, value, BPF_NOEXIST as u64).is_err() {
        // Lost a race with the other hook, or the map refused: use what is there.
        if FLOWS.get_ptr_mut(key).is_none() {
            count(Stat::FlowInsertErrors);
        }
    } else {
        count(Stat::FlowsCreated);
    }
    FLOWS.get_ptr_mut(key)
}

/// The payload's first 6 bytes; bytes past a shorter payload are zero.
#[inline(always)]
pub(crate) fn first_six(payload: &SkbPayload) -> Option<[u8; 6]> {
    if payload.len >= 6 {
        let v = payload.load_be(0, 6)?;
        let b = v.to_be_bytes();
        return Some([b[2], b[3], b[4], b[5], b[6], b[7]]);
    }
    let mut head = [0u8; 6];
    let mut i = 0;
    while i < 5 {
        if (i as u32) < payload.len {
            head[i] = payload.load_be(i, 1)? as u8;
        }
        i += 1;
    }
    Some(head)
}

/// Zeroes a `FlowValue` eight bytes at a time. (`write_bytes` becomes a call
/// to the BPF target's byte-at-a-time `memset`: 176 iterations per new flow.)
#[inline(always)]
unsafe fn zero_flow_value(value: *mut FlowValue) {
    const WORDS: usize = core::mem::size_of::<FlowValue>() / 8;
    const _: () = assert!(core::mem::size_of::<FlowValue>() % 8 == 0);
    let words = value as *mut u64;
    let mut i = 0;
    while i < WORDS {
        // Volatile, so LLVM does not turn the loop back into a memset call.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
        i += 1;
    }
}

/// Is `server_port` in the configured port list (or is the list empty)?
#[inline(always)]
fn port_watched(server_port: u16) -> bool {
    either_port_watched(CONFIG.get(0), server_port, server_port)
}

/// Could a segment between these ports belong to a tracked flow: is either
/// port in the configured port list (or is the list empty, or is there no
/// configuration)? Checked before the `FLOWS` lookup. Flows are only
/// created for a watched server port and the list is only written when the
/// agent starts (a reload changes the renegotiation cap only), so every
/// segment of a tracked flow passes this. (An agent restarted with a
/// different list over pinned maps stops feeding the flows of ports it no
/// longer watches, as it stops creating them.)
#[inline(always)]
pub(crate) fn either_port_watched(cfg: Option<&TrackerConfig>, a: u16, b: u16) -> bool {
    let Some(cfg) = cfg else {
        return true;
    };
    let n = cfg.port_count as usize;
    if n == 0 {
        return true;
    }
    let mut i = 0;
    while i < MAX_PORTS {
        if i >= n {
            break;
        }
        let p = cfg.ports[i];
        if p == a || p == b {
            return true;
        }
        i += 1;
    }
    false
}
