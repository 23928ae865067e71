//! Socket hooks (`hsmon run --hooks socket`): the record tracker per local
//! server socket instead of per 4-tuple.
//!
//! * `hsmon_sock_ingress` / `hsmon_sock_egress` (`cgroup_skb`, attached
//!   once at the cgroup v2 root: every local socket of every network
//!   namespace) run the same tracker as TC (`crate::tc::parse_payload`) on
//!   the segments of established TCP sockets whose local port is watched.
//!   The state lives in `SOCK_FLOWS` (`SK_STORAGE`): created for the socket
//!   at the first segment it receives that could start a ClientHello, freed
//!   with the socket. A forged packet belongs to no local socket and never
//!   reaches these programs; a listener, a request socket or a time-wait
//!   socket gets no state. Ingress is client to server (the socket is the
//!   server), egress server to client.
//! * The renegotiation cap is enforced at cgroup ingress with TC's rule
//!   (`crate::tc::reneg_cap_drops`): returning 0 drops the segment before
//!   TCP queues it.
//! * Stream truth for the client direction (`monitor_common::rewind`):
//!   before a client segment is parsed, `Rewind::admit` compares it with the
//!   tracker's next expected byte and TCP's `rcv_nxt` (`bpf_tcp_sock`): a
//!   segment beyond the next expected byte is dropped (TCP sends it again in
//!   order), and one that overlaps bytes TCP never accepted takes the
//!   tracker back to the copy of its state TCP confirmed. The copies live in
//!   the socket's storage ([`SockFlow::rewind`]).
//! * One ingress run at a time per socket (loopback can deliver one
//!   socket's segments on two CPUs at once): a `bpf_spin_lock` in the
//!   storage value guards [`SockFlow::ingress_busy`]; a run that finds it
//!   set drops its segment (`sock_busy_drops`). The lock is held only for
//!   the flag (the parse calls `bpf_loop`, which may not run under it).
//! * `FLOWS` gets a mirror of the state under a key with the socket and
//!   netns cookies (`monitor_common::flow::FlowKey`), for the agent; the
//!   ring-buffer events are TC's.
//! * `hsmon_sock_ops` (`sock_ops`, same cgroup): asks for state callbacks
//!   on every passively established socket of a watched port and, when
//!   such a socket reaches `TCP_CLOSE`, finishes its flow and sends
//!   `EVENT_FLOW_CLOSED`: only a socket's own close closes its entry.

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{
        bpf_sock, bpf_spin_lock, BPF_NOEXIST, BPF_SK_STORAGE_GET_F_CREATE,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
    },
    btf_maps::SkStorage,
    cty::c_void,
    helpers::{
        bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns,
        bpf_sk_fullsock, bpf_sk_storage_get, bpf_spin_lock as spin_lock, bpf_spin_unlock,
        bpf_tcp_sock,
    },
    macros::{btf_map, cgroup_skb, sock_ops},
    programs::{SkBuffContext, SockOpsContext},
};
use monitor_common::{
    flow::{ipv4_word_mapped, Addr, FlowKey, FlowValue, Stat, EVENT_FLOW_CLOSED},
    payload::Payload,
    rewind::{Admit, Rewind},
    tls::{could_start_client_hello, CT_HANDSHAKE},
    tracker::{CLIENT, SERVER},
};

use crate::{
    maps::{count, send_flow_event, CONFIG, FLOWS},
    packet::{parse_ip, Segment, Skb, SkbPayload, TCP_FIN, TCP_RST},
    tc::{either_port_watched, first_six, flow_opened, parse_payload, reneg_cap_drops},
};

/// One server socket's flow: its key (4-tuple as the socket sees it, the
/// socket and netns cookies) and the tracker state. The value of
/// [`SOCK_FLOWS`].
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SockFlow {
    /// The key of the socket's `FLOWS` mirror entry and its events.
    pub key: FlowKey,
    /// The tracker state (the truth the cap reads).
    pub value: FlowValue,
    /// Copies of the tracker state at confirmed client positions.
    pub rewind: Rewind,
    /// Guards `ingress_busy`.
    pub lock: bpf_spin_lock,
    /// 1 while an ingress run parses this socket's client segment.
    pub ingress_busy: u32,
}

/// Per-socket flow state: freed with the socket, nothing to evict.
#[btf_map]
static SOCK_FLOWS: SkStorage<SockFlow> = SkStorage::new();

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const IPPROTO_TCP: u32 = 6;
const TCP_ESTABLISHED: u32 = 1;
const TCP_CLOSE: u32 = 7;

/// Client to server: drops the segments of a socket over the
/// renegotiation cap (0), lets everything else through (1).
#[cgroup_skb(ingress)]
pub fn hsmon_sock_ingress(ctx: SkBuffContext) -> i32 {
    count(Stat::SockIngressRuns);
    if on_segment(&ctx, true) {
        return 0;
    }
    1
}

/// Server to client: never drops.
#[cgroup_skb(egress)]
pub fn hsmon_sock_egress(ctx: SkBuffContext) -> i32 {
    count(Stat::SockEgressRuns);
    on_segment(&ctx, false);
    1
}

/// The socket's storage, creating it when `create`.
#[inline(always)]
fn storage(sk: *mut bpf_sock, create: bool) -> *mut SockFlow {
    let flags = if create {
        BPF_SK_STORAGE_GET_F_CREATE as u64
    } else {
        0
    };
    // SAFETY: the map and a full socket; the helper returns null or the value.
    unsafe {
        bpf_sk_storage_get(
            &SOCK_FLOWS as *const _ as *mut c_void,
            sk as *mut c_void,
            core::ptr::null_mut(),
            flags,
        ) as *mut SockFlow
    }
}

/// Feeds one segment of a local socket to its flow; `true` to drop it
/// (ingress only: a client segment with payload over the cap).
#[inline(always)]
fn on_segment(ctx: &SkBuffContext, ingress: bool) -> bool {
    // SAFETY: the context the kernel passed.
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return false;
    }
    // SAFETY: helper call on the skb's socket.
    let sk = unsafe { bpf_sk_fullsock(sk) };
    if sk.is_null() {
        return false;
    }
    // SAFETY: a full socket the helper returned.
    let (family, protocol, local_port) = unsafe { ((*sk).family, (*sk).protocol, (*sk).src_port) };
    if protocol != IPPROTO_TCP || (family != AF_INET && family != AF_INET6) {
        return false;
    }
    let cfg = CONFIG.get(0);
    if !either_port_watched(cfg, local_port as u16, local_port as u16) {
        return false;
    }
    let skb = Skb::cgroup(ctx);
    let mut seg = MaybeUninit::<Segment>::uninit();
    if !parse_ip(skb, seg.as_mut_ptr()) {
        return false;
    }
    // SAFETY: `parse_ip` writes every field when it returns true.
    let seg = unsafe { seg.assume_init() };
    let has_payload = seg.payload_len > 0;
    let payload = SkbPayload {
        skb,
        off: seg.payload_off,
        len: seg.payload_len,
    };
    let mut st = storage(sk, false);
    let mut created = false;
    if st.is_null() {
        // Only a server socket's first ClientHello-like segment creates
        // state: received, established, payload that could start one.
        if !ingress
            || !has_payload
            || payload.load_be(0, 1) != Some(CT_HANDSHAKE as u64)
            || unsafe { (*sk).state } != TCP_ESTABLISHED
        {
            return false;
        }
        st = new_sock_flow(ctx, sk, &seg, &payload);
        if st.is_null() {
            return false;
        }
        created = true;
    }
    // SAFETY: a valid pointer into the socket's storage.
    let sf = unsafe { &mut *st };
    let dir = if ingress { CLIENT } else { SERVER };
    let closing = seg.flags & (TCP_FIN | TCP_RST) != 0;
    let mut drop = false;
    if has_payload {
        count(Stat::Segments);
        count(Stat::TlsSegments);
        if !created {
            let now = unsafe { bpf_ktime_get_coarse_ns() };
            if now > sf.value.last_seen_ns {
                sf.value.last_seen_ns = now;
            }
        }
        if ingress && !created {
            // One ingress run at a time per socket: a second one (another
            // CPU, e.g. loopback delivering from two CPUs' backlogs) would
            // parse on state the first is changing. It drops its segment;
            // TCP sends it again.
            if !claim_ingress(sf) {
                count(Stat::SockBusyDrops);
                return true;
            }
            let verdict = admit(sk, sf, &seg);
            let drop_now = match verdict {
                Admit::DropAhead => {
                    count(Stat::SockDropAhead);
                    true
                }
                Admit::DropUnverified => {
                    count(Stat::SockUnverifiedDrops);
                    true
                }
                Admit::Rewound => {
                    count(Stat::SockRewinds);
                    false
                }
                Admit::Unverified => {
                    count(Stat::SockUnverified);
                    false
                }
                Admit::Parse => false,
            };
            if drop_now {
                release_ingress(sf);
                return true;
            }
            let before = crate::progress::snapshot(&sf.value);
            parse_payload(&mut sf.value, dir, seg.seq, payload);
            crate::progress::send_if_changed(&before, &sf.value, &sf.key);
            let drop = reneg_cap_drops(&mut sf.value, &sf.key, cfg);
            if closing {
                sf.value.tracker.on_close(dir);
            }
            mirror(sf);
            release_ingress(sf);
            return drop;
        }
        let before = crate::progress::snapshot(&sf.value);
        parse_payload(&mut sf.value, dir, seg.seq, payload);
        if created {
            flow_opened(&sf.value, &sf.key);
        } else {
            crate::progress::send_if_changed(&before, &sf.value, &sf.key);
        }
        if ingress {
            drop = reneg_cap_drops(&mut sf.value, &sf.key, cfg);
        }
    }
    if closing {
        sf.value.tracker.on_close(dir);
    }
    if has_payload || closing {
        mirror(sf);
    }
    drop
}

/// Marks the socket's ingress as busy; `false` if another run has it.
#[inline(always)]
fn claim_ingress(sf: &mut SockFlow) -> bool {
    // SAFETY: the lock inside this socket's storage value; nothing but
    // plain loads and stores while it is held.
    unsafe { spin_lock(&mut sf.lock) };
    let free = sf.ingress_busy == 0;
    if free {
        sf.ingress_busy = 1;
    }
    unsafe { bpf_spin_unlock(&mut sf.lock) };
    free
}

/// Ends what [`claim_ingress`] started.
#[inline(always)]
fn release_ingress(sf: &mut SockFlow) {
    // SAFETY: as in `claim_ingress`.
    unsafe { spin_lock(&mut sf.lock) };
    sf.ingress_busy = 0;
    unsafe { bpf_spin_unlock(&mut sf.lock) };
}

/// `Rewind::admit` for a client segment with TCP's `rcv_nxt` (`Parse` when
/// the socket gives no TCP view).
#[inline(always)]
fn admit(sk: *mut bpf_sock, sf: &mut SockFlow, seg: &Segment) -> Admit {
    // SAFETY: a full socket (checked by the caller); the helper returns null
    // or the socket's TCP view.
    let tp = unsafe { bpf_tcp_sock(sk) };
    if tp.is_null() {
        return Admit::Parse;
    }
    // SAFETY: the pointer the helper returned.
    let rcv_nxt = unsafe { (*tp).rcv_nxt };
    sf.rewind
        .admit(&mut sf.value.tracker, seg.seq, seg.payload_len, rcv_nxt)
}

/// Writes the socket's state into its `FLOWS` mirror entry (again, if the
/// LRU evicted it).
#[inline(always)]
fn mirror(sf: &SockFlow) {
    match FLOWS.get_ptr_mut(&sf.key) {
        // SAFETY: a valid pointer into the map.
        Some(m) => unsafe { *m = sf.value },
        None => {
            if FLOWS.insert(&sf.key, &sf.value, 0).is_err() {
                count(Stat::FlowInsertErrors);
            }
        }
    }
}

/// Creates the socket's state when the payload could start a ClientHello;
/// null otherwise. Not inlined: once per socket (see `tc.rs`'s `new_flow`
/// for the signature rules).
#[inline(never)]
fn new_sock_flow(
    ctx: &SkBuffContext,
    sk: *mut bpf_sock,
    seg: &Segment,
    payload: &SkbPayload,
) -> *mut SockFlow {
    match create_sock_flow(ctx, sk, seg, payload) {
        Some(st) => st,
        None => core::ptr::null_mut(),
    }
}

/// [`new_sock_flow`]'s body.
#[inline(always)]
fn create_sock_flow(
    ctx: &SkBuffContext,
    sk: *mut bpf_sock,
    seg: &Segment,
    payload: &SkbPayload,
) -> Option<*mut SockFlow> {
    let head = first_six(payload)?;
    let n = if seg.payload_len < 6 {
        seg.payload_len as usize
    } else {
        6
    };
    if !could_start_client_hello(&head, n) {
        return None;
    }
    let st = storage(sk, true);
    if st.is_null() {
        count(Stat::FlowInsertErrors);
        return None;
    }
    // SAFETY: a full socket (checked by the caller).
    let (local, remote, lport, rport) = unsafe {
        let s = &*sk;
        if s.family == AF_INET {
            (
                ipv4_word_mapped(s.src_ip4),
                ipv4_word_mapped(s.dst_ip4),
                s.src_port as u16,
                u16::from_be(s.dst_port),
            )
        } else {
            (
                s.src_ip6 as Addr,
                s.dst_ip6 as Addr,
                s.src_port as u16,
                u16::from_be(s.dst_port),
            )
        }
    };
    // The remote end sent the ClientHello: it is the client.
    let (key, client_is_a) = FlowKey::from_endpoints(&remote, rport, &local, lport);
    let ctx_ptr = ctx.skb.skb as *mut c_void;
    // SAFETY: helper calls on this program's context.
    let (cookie, netns) = unsafe {
        (
            bpf_get_socket_cookie(ctx_ptr),
            bpf_get_netns_cookie(ctx_ptr),
        )
    };
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a valid pointer into the socket's storage (zeroed at creation).
    let sf = unsafe { &mut *st };
    sf.key = key.with_socket(cookie, netns);
    sf.value.first_seen_ns = now;
    sf.value.last_seen_ns = now;
    sf.value.client_is_a = client_is_a as u8;
    count(Stat::SockFlowsCreated);
    count(Stat::FlowsCreated);
    mark_for_attribution(sk);
    if FLOWS
        .insert(&sf.key, &sf.value, BPF_NOEXIST as u64)
        .is_err()
    {
        count(Stat::FlowInsertErrors);
    }
    Some(st)
}

/// Tells the uprobes' socket table (`SOCKS`, keyed by the `struct sock`
/// address; present when the uprobes run) that this socket's TLS state is
/// kept here, so a process reading or writing it outside an SSL call is
/// still named (`monitor_common::ssl`, step 3): the `FLOWS` mirror's key
/// carries cookies the uprobes' 4-tuple lookup cannot know.
#[inline(always)]
fn mark_for_attribution(sk: *mut bpf_sock) {
    let addr = sk as u64;
    if let Some(info) = crate::ssl::SOCKS.get_ptr_mut(&addr) {
        // SAFETY: a valid pointer into the map.
        unsafe { (*info).socket_tracked = 1 };
    }
}

/// Socket operations: state callbacks for watched server sockets, and the
/// close of their flows.
#[sock_ops]
pub fn hsmon_sock_ops(ctx: SockOpsContext) -> u32 {
    let _ = on_sock_op(&ctx);
    1
}

#[inline(always)]
fn on_sock_op(ctx: &SockOpsContext) -> Option<()> {
    let op = ctx.op();
    if op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
        let port = ctx.local_port() as u16;
        if either_port_watched(CONFIG.get(0), port, port) {
            // Keep the flags another sock_ops program may have set.
            let flags = ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG;
            let _ = ctx.set_cb_flags(flags as i32);
        }
        return Some(());
    }
    if op != BPF_SOCK_OPS_STATE_CB || ctx.arg(1) != TCP_CLOSE {
        return None;
    }
    // SAFETY: the context the kernel passed; `sk` may be null.
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return None;
    }
    let st = storage(sk, false);
    if st.is_null() {
        return None;
    }
    // SAFETY: a valid pointer into the socket's storage.
    let sf = unsafe { &mut *st };
    if sf.value.tracker.flags & monitor_common::tracker::FF_CLOSED != 0 {
        return None;
    }
    sf.value.tracker.finish();
    count(Stat::SockFlowsClosed);
    count(Stat::FlowsClosed);
    mirror(sf);
    send_flow_event(EVENT_FLOW_CLOSED, &sf.value, &sf.key);
    Some(())
}
