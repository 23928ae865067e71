//! libssl uprobes and the socket tracepoints that tie an SSL call to its TCP
//! connection (design and map layout: `monitor_common::ssl`).
//!
//! * `hsmon_ssl_hs_enter` (uprobe on `SSL_do_handshake`, `SSL_accept`,
//!   `SSL_connect`) and `hsmon_ssl_hs_return` (their uretprobe): handshake
//!   start, result and latency.
//! * `hsmon_ssl_io_enter` (uprobe on `SSL_read`, `SSL_read_ex`, `SSL_write`,
//!   `SSL_write_ex`; only in the agent's `full` probe set): the thread is
//!   inside an SSL call (no return probe: the next SSL call of the thread
//!   replaces the note).
//! * `hsmon_ssl_reneg_enter` (uprobe on `SSL_renegotiate`,
//!   `SSL_renegotiate_abbreviated`) and `hsmon_ssl_key_update_enter` (uprobe
//!   on `SSL_key_update`): local renegotiation and key-update calls.
//! * `hsmon_ssl_free_enter` (uprobe on `SSL_free`; `full` set only): forgets
//!   the `SSL*`. In both sets the `SSL*` tied to a socket is also forgotten
//!   when the socket closes (`hsmon_sock_map`).
//! * `hsmon_ssl_get_error_enter` / `hsmon_ssl_get_error_return` (`SSL_get_error`;
//!   `full` set only): the error the application saw after a failed
//!   handshake call.
//! * `hsmon_sock_map` (`sock/inet_sock_set_state`): socket address to flow.
//! * `hsmon_ssl_send` / `hsmon_ssl_recv` (`sock/sock_send_length`,
//!   `sock/sock_recv_length`): a thread inside an SSL call names its socket;
//!   any thread doing I/O on a tracked TLS flow's socket names its process.
//!
//! Every uprobe's attach cookie is the index of its library in the agent's
//! list. The TC programs and `hsmon_sock_state` are not touched.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_cgroup_id, bpf_get_current_comm,
        bpf_get_current_pid_tgid,
    },
    macros::{map, tracepoint, uprobe, uretprobe},
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
    EbpfContext,
};
use monitor_common::{
    flow::{Addr, FlowKey},
    ssl::{
        ProcInfo, SockInfo, SslCall, SslState, CALL_GET_ERROR, CALL_HANDSHAKE, CALL_IO,
        LIBRARY_UNKNOWN, SIDE_CLIENT, SIDE_SERVER, SOCK_UNTRACKED_TRIES, SSL_STAT_ATTRIBUTED,
        SSL_STAT_ATTRIBUTED_BY_SOCKET, SSL_STAT_COUNT, SSL_STAT_ENTRY, SSL_STAT_RETURN,
        SSL_STAT_SOCK_IO,
    },
};

use crate::maps::FLOWS;
use crate::sock_state::{
    IPPROTO_TCP, OFF_DADDR_V6, OFF_DPORT, OFF_NEWSTATE, OFF_OLDSTATE, OFF_PROTOCOL, OFF_SADDR_V6,
    OFF_SKADDR, OFF_SPORT, TCP_CLOSE, TCP_ESTABLISHED, TCP_SYN_RECV, TCP_SYN_SENT,
};

/// Threads inside an SSL call, by `pid_tgid`.
#[map(name = "SSL_CALLS")]
static SSL_CALLS: LruHashMap<u64, SslCall> = LruHashMap::with_max_entries(16384, 0);

/// `SSL*` to handshake state and flow.
#[map(name = "SSL_STATE")]
static SSL_STATE: LruHashMap<u64, SslState> = LruHashMap::with_max_entries(65536, 0);

/// `struct sock` address to flow and side.
#[map(name = "SOCKS")]
pub(crate) static SOCKS: HashMap<u64, SockInfo> = HashMap::with_max_entries(65536, 0);

/// Flow to the process behind it (read by the agent).
#[map(name = "PROCS")]
pub static PROCS: LruHashMap<FlowKey, ProcInfo> = LruHashMap::with_max_entries(65536, 0);

/// Probe counters (`monitor_common::ssl::SSL_STAT_*`), per CPU.
#[map(name = "SSL_STATS")]
static SSL_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(SSL_STAT_COUNT, 0);

/// `bpf_ktime_get_ns`.
#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() }
}

#[inline(always)]
fn bump(slot: u32) {
    if let Some(p) = SSL_STATS.get_ptr_mut(slot) {
        // Per-CPU slot: no other writer.
        unsafe { *p += 1 };
    }
}

// `sock/sock_send_length` and `sock/sock_recv_length` format.
const OFF_SK: usize = 8;

/// Entry of `SSL_do_handshake`, `SSL_accept`, `SSL_connect`.
#[uprobe]
pub fn hsmon_ssl_hs_enter(ctx: ProbeContext) -> u32 {
    bump(SSL_STAT_ENTRY);
    let Some(ssl) = ctx.arg::<u64>(0) else {
        return 0;
    };
    let id = bpf_get_current_pid_tgid();
    // SAFETY: helper call with the program's own context.
    let library = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    let mut call = SslCall {
        ssl,
        kind: CALL_HANDSHAKE,
        depth: 1,
        library,
        _pad: 0,
    };
    if let Some(cur) = SSL_CALLS.get_ptr(&id) {
        // SAFETY: a valid pointer into the map.
        let cur = unsafe { &*cur };
        if cur.kind == CALL_HANDSHAKE && cur.ssl == ssl && cur.depth > 0 {
            call.depth = cur.depth.saturating_add(1);
        }
    }
    let _ = SSL_CALLS.insert(&id, &call, 0);
    match SSL_STATE.get_ptr_mut(&ssl) {
        Some(st) => {
            // SAFETY: a valid pointer into the map.
            let st = unsafe { &mut *st };
            if st.start_ns == 0 {
                st.start_ns = now_ns();
            }
        }
        None => {
            let st = SslState {
                start_ns: now_ns(),
                ..SslState::default()
            };
            let _ = SSL_STATE.insert(&ssl, &st, 0);
        }
    }
    0
}

/// Entry of `SSL_read`, `SSL_read_ex`, `SSL_write`, `SSL_write_ex`.
#[uprobe]
pub fn hsmon_ssl_io_enter(ctx: ProbeContext) -> u32 {
    bump(SSL_STAT_ENTRY);
    let Some(ssl) = ctx.arg::<u64>(0) else {
        return 0;
    };
    let id = bpf_get_current_pid_tgid();
    // SAFETY: helper call with the program's own context.
    let library = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    let call = SslCall {
        ssl,
        kind: CALL_IO,
        depth: 0,
        library,
        _pad: 0,
    };
    let _ = SSL_CALLS.insert(&id, &call, 0);
    0
}

/// Return of `SSL_do_handshake`, `SSL_accept`, `SSL_connect`.
#[uretprobe]
pub fn hsmon_ssl_hs_return(ctx: RetProbeContext) -> u32 {
    bump(SSL_STAT_RETURN);
    let _ = on_hs_return(&ctx);
    0
}

#[inline(always)]
fn on_hs_return(ctx: &RetProbeContext) -> Option<()> {
    let ret: i64 = ctx.ret::<i64>() as i32 as i64;
    let id = bpf_get_current_pid_tgid();
    let call = SSL_CALLS.get_ptr_mut(&id)?;
    // SAFETY: a valid pointer into the map.
    let call = unsafe { &mut *call };
    if call.kind != CALL_HANDSHAKE || call.depth == 0 {
        return None;
    }
    call.depth -= 1;
    if call.depth > 0 {
        return None; // an inner SSL_do_handshake of SSL_accept/SSL_connect
    }
    let ssl = call.ssl;
    let _ = SSL_CALLS.remove(&id);
    let st = SSL_STATE.get_ptr_mut(&ssl)?;
    // SAFETY: a valid pointer into the map.
    let st = unsafe { &mut *st };
    let now = now_ns();
    let took = if st.start_ns != 0 {
        now.saturating_sub(st.start_ns)
    } else {
        0
    };
    let pending = st.pending_failures;
    if ret == 1 {
        st.start_ns = 0;
        st.pending_failures = 0;
    } else {
        st.pending_failures = pending.saturating_add(1);
    }
    if st.has_key == 0 {
        return None;
    }
    let key = st.key;
    let p = PROCS.get_ptr_mut(&key)?;
    // SAFETY: a valid pointer into the map.
    let p = unsafe { &mut *p };
    if p.tgid != (id >> 32) as u32 {
        return None; // the entry names the other end's process
    }
    if ret == 1 {
        p.handshake_ns_last = took;
        if took > p.handshake_ns_max {
            p.handshake_ns_max = took;
        }
        p.handshake_calls = p.handshake_calls.saturating_add(1);
        p.handshake_failures = p.handshake_failures.saturating_sub(pending);
    } else {
        p.handshake_failures = p.handshake_failures.saturating_add(1);
    }
    Some(())
}

/// The `PROCS` entry of the connection `ssl` is tied to, when it names the
/// calling process.
#[inline(always)]
fn own_proc(ssl: u64) -> Option<*mut ProcInfo> {
    let st = SSL_STATE.get_ptr(&ssl)?;
    // SAFETY: a valid pointer into the map.
    let st = unsafe { &*st };
    if st.has_key == 0 {
        return None;
    }
    let key = st.key;
    let p = PROCS.get_ptr_mut(&key)?;
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: a valid pointer into the map.
    if unsafe { (*p).tgid } != tgid {
        return None; // the entry names the other end's process
    }
    Some(p)
}

/// Entry of `SSL_renegotiate` and `SSL_renegotiate_abbreviated`.
#[uprobe]
pub fn hsmon_ssl_reneg_enter(ctx: ProbeContext) -> u32 {
    bump(SSL_STAT_ENTRY);
    if let Some(p) = ctx.arg::<u64>(0).and_then(own_proc) {
        // SAFETY: a valid pointer into the map.
        let p = unsafe { &mut *p };
        p.local_renegotiate_calls = p.local_renegotiate_calls.saturating_add(1);
    }
    0
}

/// Entry of `SSL_key_update`.
#[uprobe]
pub fn hsmon_ssl_key_update_enter(ctx: ProbeContext) -> u32 {
    bump(SSL_STAT_ENTRY);
    if let Some(p) = ctx.arg::<u64>(0).and_then(own_proc) {
        // SAFETY: a valid pointer into the map.
        let p = unsafe { &mut *p };
        p.local_key_update_calls = p.local_key_update_calls.saturating_add(1);
    }
    0
}

/// Entry of `SSL_free`: the `SSL*` is gone (its address may be reused).
#[uprobe]
pub fn hsmon_ssl_free_enter(ctx: ProbeContext) -> u32 {
    bump(SSL_STAT_ENTRY);
    if let Some(ssl) = ctx.arg::<u64>(0) {
        let _ = SSL_STATE.remove(&ssl);
    }
    0
}

/// Entry of `SSL_get_error`: noted only after a failed handshake call on
/// the `SSL*` (so the return probe's common case is one lookup, a miss).
#[uprobe]
pub fn hsmon_ssl_get_error_enter(ctx: ProbeContext) -> u32 {
    bump(SSL_STAT_ENTRY);
    let Some(ssl) = ctx.arg::<u64>(0) else {
        return 0;
    };
    let Some(st) = SSL_STATE.get_ptr(&ssl) else {
        return 0;
    };
    // SAFETY: a valid pointer into the map.
    if unsafe { (*st).pending_failures } == 0 {
        return 0;
    }
    let call = SslCall {
        ssl,
        kind: CALL_GET_ERROR,
        depth: 0,
        // SAFETY: helper call with the program's own context.
        library: unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32,
        _pad: 0,
    };
    let _ = SSL_CALLS.insert(&bpf_get_current_pid_tgid(), &call, 0);
    0
}

/// Return of `SSL_get_error`.
#[uretprobe]
pub fn hsmon_ssl_get_error_return(ctx: RetProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(call) = SSL_CALLS.get_ptr(&id) else {
        return 0;
    };
    // SAFETY: a valid pointer into the map.
    let call = unsafe { *call };
    if call.kind != CALL_GET_ERROR {
        return 0;
    }
    bump(SSL_STAT_RETURN);
    let _ = SSL_CALLS.remove(&id);
    let code = ctx.ret::<i64>() as i32;
    if !(0..32).contains(&code) {
        return 0;
    }
    if let Some(p) = own_proc(call.ssl) {
        // SAFETY: a valid pointer into the map.
        let p = unsafe { &mut *p };
        p.ssl_errors |= 1u32 << (code as u32);
    }
    0
}

/// `sock/inet_sock_set_state`: established TCP sockets to flows.
#[tracepoint]
pub fn hsmon_sock_map(ctx: TracePointContext) -> u32 {
    let _ = on_sock_state(&ctx);
    0
}

#[inline(always)]
fn on_sock_state(ctx: &TracePointContext) -> Option<()> {
    // SAFETY: offsets inside the tracepoint record (see the format file).
    let protocol: u16 = unsafe { ctx.read_at(OFF_PROTOCOL) }.ok()?;
    if protocol != IPPROTO_TCP {
        return None;
    }
    let sk: u64 = unsafe { ctx.read_at(OFF_SKADDR) }.ok()?;
    let newstate: i32 = unsafe { ctx.read_at(OFF_NEWSTATE) }.ok()?;
    if newstate == TCP_CLOSE {
        forget_ssl_of(sk);
        let _ = SOCKS.remove(&sk);
        return None;
    }
    if newstate != TCP_ESTABLISHED {
        return None;
    }
    let oldstate: i32 = unsafe { ctx.read_at(OFF_OLDSTATE) }.ok()?;
    let side = match oldstate {
        TCP_SYN_RECV => SIDE_SERVER,
        TCP_SYN_SENT => SIDE_CLIENT,
        _ => return None,
    };
    let sport: u16 = unsafe { ctx.read_at(OFF_SPORT) }.ok()?;
    let dport: u16 = unsafe { ctx.read_at(OFF_DPORT) }.ok()?;
    // IPv4 sockets carry IPv4-mapped addresses here too.
    let saddr: Addr = unsafe { ctx.read_at(OFF_SADDR_V6) }.ok()?;
    let daddr: Addr = unsafe { ctx.read_at(OFF_DADDR_V6) }.ok()?;
    let (key, _) = FlowKey::from_endpoints(&saddr, sport, &daddr, dport);
    let info = SockInfo {
        key,
        side,
        owner: 0,
        owner_library: 0,
        untracked: 0,
        socket_tracked: 0,
        _pad2: 0,
        ssl: 0,
    };
    let _ = SOCKS.insert(&sk, &info, 0);
    Some(())
}

/// A socket closes: forgets the state of the `SSL*` tied to it (what
/// `SSL_free`'s probe does in the `full` set), unless that `SSL*` has been
/// tied to another connection since (its address reused: compared by
/// ports, no byte-wise compare in BPF).
#[inline(always)]
fn forget_ssl_of(sk: u64) {
    let Some(sock) = SOCKS.get_ptr(&sk) else {
        return;
    };
    // SAFETY: a valid pointer into the map.
    let sock = unsafe { &*sock };
    if sock.ssl == 0 {
        return;
    }
    let ssl = sock.ssl;
    if let Some(st) = SSL_STATE.get_ptr(&ssl) {
        // SAFETY: a valid pointer into the map.
        let st = unsafe { &*st };
        if st.has_key != 0 && st.key.port_a == sock.key.port_a && st.key.port_b == sock.key.port_b {
            let _ = SSL_STATE.remove(&ssl);
        }
    }
}

/// `sock/sock_send_length`.
#[tracepoint]
pub fn hsmon_ssl_send(ctx: TracePointContext) -> u32 {
    let _ = on_sock_io(&ctx);
    0
}

/// `sock/sock_recv_length`.
#[tracepoint]
pub fn hsmon_ssl_recv(ctx: TracePointContext) -> u32 {
    let _ = on_sock_io(&ctx);
    0
}

/// A send or receive on a socket: names the flow's process (see
/// `monitor_common::ssl`, step 3). Costs, per call: one `SOCKS` lookup (a
/// miss for anything but an established TCP socket); on a socket already
/// attributed to the caller with its library, nothing more.
#[inline(always)]
fn on_sock_io(ctx: &TracePointContext) -> Option<()> {
    // SAFETY: offset inside the tracepoint record (see the format file).
    let sk: u64 = unsafe { ctx.read_at(OFF_SK) }.ok()?;
    let sock = SOCKS.get_ptr_mut(&sk)?;
    // SAFETY: a valid pointer into the map.
    let sock = unsafe { &mut *sock };
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if sock.owner == tgid && sock.owner_library != 0 {
        return None; // attributed to this process, library known
    }
    match SSL_CALLS.get_ptr(&id) {
        // SAFETY: a valid pointer into the map.
        Some(call) => on_ssl_io(sock, id, unsafe { *call }),
        None => on_plain_io(sock, id),
    }
}

/// Socket I/O inside an SSL call: ties the `SSL*` to the flow and writes
/// the flow's process with the call's library.
#[inline(always)]
fn on_ssl_io(sock: &mut SockInfo, id: u64, call: SslCall) -> Option<()> {
    bump(SSL_STAT_SOCK_IO);
    let key = sock.key;
    if let Some(st) = SSL_STATE.get_ptr_mut(&call.ssl) {
        // SAFETY: a valid pointer into the map.
        let st = unsafe { &mut *st };
        st.key = key;
        st.has_key = 1;
    } else if call.kind == CALL_IO {
        let st = SslState {
            key,
            has_key: 1,
            ..SslState::default()
        };
        let _ = SSL_STATE.insert(&call.ssl, &st, 0);
    }
    let tgid = (id >> 32) as u32;
    sock.owner = tgid;
    sock.owner_library = 1;
    sock.ssl = call.ssl;
    let existed = match PROCS.get_ptr_mut(&key) {
        Some(p) => {
            // SAFETY: a valid pointer into the map.
            let p = unsafe { &mut *p };
            if p.tgid == tgid {
                if p.library == LIBRARY_UNKNOWN {
                    p.library = call.library; // named by an earlier plain send/recv
                }
                return None;
            }
            if p.side == SIDE_SERVER && sock.side == SIDE_CLIENT {
                return None; // the server's (which wins)
            }
            true
        }
        None => false,
    };
    write_proc(&key, id, sock.side, call.library, existed);
    bump(SSL_STAT_ATTRIBUTED);
    Some(())
}

/// Socket I/O outside any SSL call: the flow's process, library unknown,
/// when `FLOWS` tracks the flow (checked for the first
/// [`SOCK_UNTRACKED_TRIES`] calls on the socket only).
#[inline(always)]
fn on_plain_io(sock: &mut SockInfo, id: u64) -> Option<()> {
    let tgid = (id >> 32) as u32;
    if sock.owner == tgid || sock.untracked >= SOCK_UNTRACKED_TRIES {
        return None;
    }
    let key = sock.key;
    if sock.socket_tracked == 0 && FLOWS.get_ptr(&key).is_none() {
        sock.untracked += 1;
        return None;
    }
    sock.owner = tgid;
    sock.owner_library = 0;
    let existed = match PROCS.get_ptr(&key) {
        Some(p) => {
            // SAFETY: a valid pointer into the map.
            let p = unsafe { &*p };
            if p.tgid == tgid || (p.side == SIDE_SERVER && sock.side == SIDE_CLIENT) {
                return None; // already ours, or the server's (which wins)
            }
            true
        }
        None => false,
    };
    write_proc(&key, id, sock.side, LIBRARY_UNKNOWN, existed);
    bump(SSL_STAT_ATTRIBUTED_BY_SOCKET);
    Some(())
}

/// Writes a fresh `PROCS` entry for `key`: the calling thread's process.
///
/// A client-side writer only creates an entry (`BPF_NOEXIST`) or replaces
/// another client's: when both ends of a local connection see no entry and
/// write at the same moment on two CPUs, the server's write must survive
/// even if the client's lands second (the server's socket is then marked
/// attributed and never checks again). Replacing a stale client entry of
/// another process keeps that narrow race; a fresh connection does not.
#[inline(always)]
fn write_proc(key: &FlowKey, id: u64, side: u32, library: u32, existed: bool) {
    let info = ProcInfo {
        tgid: (id >> 32) as u32,
        tid: id as u32,
        // SAFETY: helper without arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        handshake_ns_last: 0,
        handshake_ns_max: 0,
        handshake_calls: 0,
        handshake_failures: 0,
        side,
        library,
        local_renegotiate_calls: 0,
        local_key_update_calls: 0,
        ssl_errors: 0,
        _pad: 0,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    let flags = if side == SIDE_CLIENT && !existed {
        BPF_NOEXIST as u64
    } else {
        0
    };
    let _ = PROCS.insert(key, &info, flags);
}
