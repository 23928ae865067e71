//! Maps of the libssl uprobes: which process is behind a TLS connection, and
//! how long its handshakes take.
//!
//! The agent attaches one of two probe sets (`hsmon run --uprobes`):
//! `handshake` (the default: only functions called O(1) times per
//! connection) or `full` (adds the per-I/O functions). The eBPF programs
//! are the same in both; a set is only which functions get probes.
//!
//! How a connection gets its process (all in `monitor-ebpf/src/ssl.rs`):
//!
//! 1. Entry uprobes on `SSL_do_handshake`, `SSL_accept`, `SSL_connect`
//!    (both sets) and `SSL_read`, `SSL_read_ex`, `SSL_write`,
//!    `SSL_write_ex` (`full` only) note, per thread (`SSL_CALLS`, key
//!    `pid_tgid`), "inside an SSL call on `SSL*` X", with the library it
//!    came from (the attach cookie, an index into the agent's list of
//!    libraries). The handshake calls' return probes remove the note.
//! 2. `sock/inet_sock_set_state` maps each TCP socket entering
//!    `TCP_ESTABLISHED` to its [`FlowKey`] and to whether the local end is
//!    the server (`SOCKS`, key: the `struct sock` address): from `SYN_RECV`
//!    it is an accepted socket (server), from `SYN_SENT` a connected one
//!    (client). `TCP_CLOSE` removes the entry.
//! 3. `sock/sock_send_length` and `sock/sock_recv_length` run in the thread
//!    that sends or receives (a tracepoint: no trap, a few map lookups).
//!    When the socket is known (2):
//!    * the thread is inside an SSL call (1): the connection's
//!      [`ProcInfo`] is written to `PROCS` (key: the same canonical
//!      [`FlowKey`] as `FLOWS`) with its library, and the `SSL*` is tied to
//!      the flow (`SSL_STATE`);
//!    * it is not, but the flow is a tracked TLS flow (`FLOWS` has it, or,
//!      with the socket hooks, the hook marked the socket
//!      [`SockInfo::socket_tracked`]): the
//!      [`ProcInfo`] is written without a library ([`LIBRARY_UNKNOWN`]).
//!      This is how a process that handshakes inside `SSL_read`/`SSL_write`
//!      (no handshake call to probe) still gets its connections in the
//!      default set, and how any process doing TLS over a socket it owns is
//!      named even when its library is not probed. A socket whose flow is
//!      not tracked after [`SOCK_UNTRACKED_TRIES`] send/recv calls is not
//!      looked up in `FLOWS` again (plain TCP costs one lookup per call).
//!
//!    The socket's [`SockInfo`] remembers which process it attributed and
//!    whether that named the library, so later calls of the same process
//!    on it cost one lookup.
//! 4. Return uprobes on the three handshake calls time the handshake: from
//!    the first handshake call on an `SSL*` to the call that returns 1; a call
//!    returning 0 or less counts as a failure until a later call on the same
//!    `SSL*` succeeds (a non-blocking server's `WANT_READ` retry shows as a
//!    failure only while its handshake is still under way).
//!
//! 5. Entry uprobes on `SSL_renegotiate`, `SSL_renegotiate_abbreviated` and
//!    `SSL_key_update` (both sets) count local calls on the connection of
//!    their `SSL*` (`local_renegotiate_calls`, `local_key_update_calls`).
//!    The `SSL*` is forgotten (`SSL_STATE`) when the socket it was tied to
//!    closes (`inet_sock_set_state` to `TCP_CLOSE`, via
//!    [`SockInfo::ssl`]) and, in `full`, by the `SSL_free` probe: one trap
//!    per connection less in the default set.
//! 6. `SSL_get_error` after a failed handshake call (`full` only): its entry
//!    probe notes the call (`SSL_CALLS`, [`CALL_GET_ERROR`]) only when the
//!    `SSL*` has a failed handshake call pending, and its return probe sets
//!    bit `code` of [`ProcInfo::ssl_errors`] (codes 0..31; the agent names
//!    them).
//!
//! **Which process when both ends are on this host.** Both processes write
//! the same flow; the server side wins: a client-side writer never replaces
//! a server-side entry, a server-side writer replaces a client-side one.
//! A client-side writer creates an entry only with `BPF_NOEXIST`, so when
//! both ends write a fresh connection's entry at the same moment on two
//! CPUs the server's survives whichever lands last. Handshake times and failures are only added by the process the entry
//! names.

use crate::flow::FlowKey;

/// `ProcInfo::side`: the process holds the accepted (server) socket.
pub const SIDE_SERVER: u32 = 1;
/// `ProcInfo::side`: the process holds the connecting (client) socket.
pub const SIDE_CLIENT: u32 = 2;

/// `SslCall::kind`: `SSL_do_handshake`, `SSL_accept` or `SSL_connect`.
pub const CALL_HANDSHAKE: u32 = 1;
/// `SslCall::kind`: `SSL_read*` or `SSL_write*`.
pub const CALL_IO: u32 = 2;
/// `SslCall::kind`: `SSL_get_error` after a failed handshake call.
pub const CALL_GET_ERROR: u32 = 3;

/// `SSL_STATS` slot: entry uprobe hits.
pub const SSL_STAT_ENTRY: u32 = 0;
/// `SSL_STATS` slot: return uprobe hits.
pub const SSL_STAT_RETURN: u32 = 1;
/// `SSL_STATS` slot: send/recv tracepoint hits inside an SSL call.
pub const SSL_STAT_SOCK_IO: u32 = 2;
/// `SSL_STATS` slot: `PROCS` writes (a flow got or changed its process).
pub const SSL_STAT_ATTRIBUTED: u32 = 3;
/// `SSL_STATS` slot: `PROCS` writes by a send/recv outside any SSL call
/// (the flow's process, library unknown).
pub const SSL_STAT_ATTRIBUTED_BY_SOCKET: u32 = 4;
/// Number of `SSL_STATS` slots.
pub const SSL_STAT_COUNT: u32 = 5;

/// `ProcInfo::library` when no SSL call named it (attributed by the
/// socket's send/recv alone).
pub const LIBRARY_UNKNOWN: u32 = u32::MAX;

/// Send/recv calls on a socket whose flow `FLOWS` does not track before
/// the socket is no longer checked (a STARTTLS exchange fits well within).
pub const SOCK_UNTRACKED_TRIES: u32 = 64;

/// The process behind one TLS connection (`PROCS` value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcInfo {
    /// Process id (the kernel's tgid).
    pub tgid: u32,
    /// Thread id of the thread that last wrote the entry.
    pub tid: u32,
    /// `bpf_get_current_cgroup_id`: the cgroup v2 id.
    pub cgroup_id: u64,
    /// Duration of the last successful handshake, nanoseconds (0: none yet).
    pub handshake_ns_last: u64,
    /// Longest successful handshake, nanoseconds.
    pub handshake_ns_max: u64,
    /// Successful handshakes timed.
    pub handshake_calls: u32,
    /// Handshake calls that returned 0 or less with no later success.
    pub handshake_failures: u32,
    /// [`SIDE_SERVER`] or [`SIDE_CLIENT`].
    pub side: u32,
    /// Index of the library in the agent's list (the uprobe's attach
    /// cookie), or [`LIBRARY_UNKNOWN`].
    pub library: u32,
    /// `SSL_renegotiate` and `SSL_renegotiate_abbreviated` calls.
    pub local_renegotiate_calls: u32,
    /// `SSL_key_update` calls.
    pub local_key_update_calls: u32,
    /// Bit `n` set: `SSL_get_error` returned `n` after a failed handshake call.
    pub ssl_errors: u32,
    /// Padding.
    pub _pad: u32,
    /// The thread's command name, NUL-padded.
    pub comm: [u8; 16],
}

/// A thread inside an SSL call (`SSL_CALLS` value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SslCall {
    /// The `SSL*`.
    pub ssl: u64,
    /// [`CALL_HANDSHAKE`] or [`CALL_IO`].
    pub kind: u32,
    /// Nesting depth of handshake calls (`SSL_accept` calls `SSL_do_handshake`).
    pub depth: u32,
    /// Library index (attach cookie).
    pub library: u32,
    /// Padding.
    pub _pad: u32,
}

/// One `SSL*` (`SSL_STATE` value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SslState {
    /// Start of the handshake under way (first handshake call), 0 if none.
    pub start_ns: u64,
    /// The connection, once a send/recv inside a call on this `SSL*` named it.
    pub key: FlowKey,
    /// `key` is set.
    pub has_key: u32,
    /// Failed handshake calls since the last success.
    pub pending_failures: u32,
    /// Padding (keeps the size a multiple of 8 with no hidden bytes).
    pub _pad: u32,
    /// Padding, always zero.
    pub _pad2: u32,
}

/// A TCP socket (`SOCKS` value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockInfo {
    /// Its connection.
    pub key: FlowKey,
    /// [`SIDE_SERVER`] or [`SIDE_CLIENT`].
    pub side: u32,
    /// tgid of the process whose send/recv on this socket last wrote (or
    /// tried to write) `PROCS`; 0: none yet.
    pub owner: u32,
    /// 1 when that write named the library (inside an SSL call).
    pub owner_library: u32,
    /// Send/recv calls seen while `FLOWS` did not track the flow.
    pub untracked: u32,
    /// 1 when the socket hooks (`--hooks socket`) keep this socket's TLS
    /// state: its `FLOWS` mirror is keyed by socket and netns cookie, which
    /// a 4-tuple lookup cannot find, so the socket hook sets this instead.
    pub socket_tracked: u32,
    /// Padding, always zero.
    pub _pad2: u32,
    /// The `SSL*` last tied to this socket by an SSL call (0: none); its
    /// `SSL_STATE` entry is removed when the socket closes.
    pub ssl: u64,
}

/// The command name in `comm`, up to the first NUL.
pub fn comm_bytes(comm: &[u8; 16]) -> &[u8] {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    &comm[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_stops_at_nul() {
        let mut c = [0u8; 16];
        c[..7].copy_from_slice(b"openssl");
        assert_eq!(comm_bytes(&c), b"openssl");
        assert_eq!(comm_bytes(&[b'x'; 16]), &[b'x'; 16][..]);
        assert_eq!(comm_bytes(&[0; 16]), b"");
    }

    #[test]
    fn sizes_have_no_hidden_padding() {
        assert_eq!(core::mem::size_of::<ProcInfo>(), 80);
        assert_eq!(core::mem::size_of::<SslCall>(), 24);
        assert_eq!(core::mem::size_of::<SslState>(), 80);
        assert_eq!(core::mem::size_of::<SockInfo>(), 88);
    }
}
