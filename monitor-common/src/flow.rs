//! Flow identity and the records kernel and agent exchange about flows.
//!
//! # Map layout
//!
//! * `FLOWS`: LRU hash, [`FlowKey`] → [`FlowValue`]. Created by the TC program
//!   when a segment's payload starts with a ClientHello; updated on every TLS
//!   segment in either direction; marked closed by the `sock/inet_sock_set_state`
//!   tracepoint; deleted by the agent once it has copied a closed flow.
//! * `EVENTS`: ring buffer of [`FlowEvent`] (flow opened, flow progress, limit
//!   hit, flow closed), each with the flow's state when it was sent: the
//!   agent's policy acts on them at once. Counters in `FLOWS` are the truth;
//!   a lost event costs only latency (the agent's sweep finds the flow) and
//!   is counted in `STATS`.
//! * Socket hooks (`hsmon run --hooks socket`): `SOCK_FLOWS`, an
//!   `SK_STORAGE` map, holds each local server socket's [`FlowKey`] (with
//!   the socket and netns cookies) and [`FlowValue`]. The `cgroup_skb`
//!   programs create it on an established socket whose local port is
//!   watched, at the first segment it receives that could start a
//!   ClientHello, and feed it every segment; it is freed with the socket
//!   (nothing to evict, nothing another socket can reach). Enforcement
//!   (the renegotiation cap) reads it alone. `FLOWS` holds a mirror of it
//!   under the cookie key, written after every segment, for the agent; a
//!   mirror entry the LRU evicts is written again at the socket's next
//!   segment and changes nothing in the kernel. The `sock_ops` program
//!   closes the flow when its own socket reaches `TCP_CLOSE`; the
//!   tracepoint (4-tuple, cookies 0) never matches a cookie key.
//! * `STATS`: per-CPU array of `u64` indexed by [`Stat`].
//! * `CONFIG`: array with one [`TrackerConfig`].
//! * `BANS_V4`, `BANS_V6`, `BAN_COUNT`: the source addresses the ingress
//!   program drops (see [`crate::ban`]).

/// An IPv6 (or IPv4-mapped IPv6) address as four 32-bit words holding the
/// address bytes in network order (`u32::from_ne_bytes` of each 4-byte group).
///
/// Words, not bytes: the BPF target has no unaligned access, so byte arrays
/// are copied and compared one byte at a time; words take a quarter of that.
pub type Addr = [u32; 4];

/// The address bytes, in network order, of an [`Addr`].
#[inline(always)]
pub fn addr_bytes(a: &Addr) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let w = a[i].to_ne_bytes();
        out[i * 4] = w[0];
        out[i * 4 + 1] = w[1];
        out[i * 4 + 2] = w[2];
        out[i * 4 + 3] = w[3];
        i += 1;
    }
    out
}

/// The [`Addr`] of 16 address bytes in network order.
#[inline(always)]
pub fn addr_from_bytes(b: &[u8; 16]) -> Addr {
    [
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
        u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
    ]
}

/// Identity of a TCP connection, the same whichever direction a packet goes.
///
/// Addresses are IPv6 or IPv4-mapped IPv6 (`::ffff:a.b.c.d`) as [`Addr`];
/// ports host order. The endpoint that sorts first (address, then port)
/// is `a`, so both directions of a connection give the same key.
///
/// Flows the TC programs observe are known by their 4-tuple alone
/// (`sock_cookie` and `netns_cookie` 0). Flows the socket hooks count
/// (`hsmon run --hooks socket`, `crate::flow` map layout) also carry the
/// server socket's cookie (`bpf_get_socket_cookie`, unique on the host
/// while it is up) and its network namespace's cookie
/// (`bpf_get_netns_cookie`): two sockets with the same 4-tuple in two
/// namespaces are two keys. The 4-tuple is then the socket's own view
/// (after NAT).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// Address of endpoint a.
    pub addr_a: Addr,
    /// Address of endpoint b.
    pub addr_b: Addr,
    /// Port of endpoint a.
    pub port_a: u16,
    /// Port of endpoint b.
    pub port_b: u16,
    /// Padding, always zero.
    pub _pad: u32,
    /// The server socket's cookie (socket hooks), 0 for TC-observed flows.
    pub sock_cookie: u64,
    /// The server socket's network namespace cookie (socket hooks), 0 for
    /// TC-observed flows.
    pub netns_cookie: u64,
}

impl FlowKey {
    /// This key with the socket identity of the socket hooks (see the type's docs).
    #[inline(always)]
    pub fn with_socket(mut self, sock_cookie: u64, netns_cookie: u64) -> Self {
        self.sock_cookie = sock_cookie;
        self.netns_cookie = netns_cookie;
        self
    }

    /// The key for a segment from `src` to `dst`, and whether the sender is endpoint a.
    #[inline(always)]
    pub fn from_endpoints(src: &Addr, src_port: u16, dst: &Addr, dst_port: u16) -> (Self, bool) {
        let src_first = match cmp_addr(src, dst) {
            core::cmp::Ordering::Less => true,
            core::cmp::Ordering::Greater => false,
            core::cmp::Ordering::Equal => src_port <= dst_port,
        };
        if src_first {
            (
                FlowKey {
                    addr_a: *src,
                    addr_b: *dst,
                    port_a: src_port,
                    port_b: dst_port,
                    _pad: 0,
                    sock_cookie: 0,
                    netns_cookie: 0,
                },
                true,
            )
        } else {
            (
                FlowKey {
                    addr_a: *dst,
                    addr_b: *src,
                    port_a: dst_port,
                    port_b: src_port,
                    _pad: 0,
                    sock_cookie: 0,
                    netns_cookie: 0,
                },
                false,
            )
        }
    }
}

/// Orders addresses as their bytes would sort (a fixed, unrolled loop).
#[inline(always)]
fn cmp_addr(x: &Addr, y: &Addr) -> core::cmp::Ordering {
    let mut i = 0;
    while i < 4 {
        let (a, b) = (u32::from_be(x[i]), u32::from_be(y[i]));
        if a != b {
            return if a < b {
                core::cmp::Ordering::Less
            } else {
                core::cmp::Ordering::Greater
            };
        }
        i += 1;
    }
    core::cmp::Ordering::Equal
}

/// Maps an IPv4 address (network byte order bytes) to IPv4-mapped IPv6.
#[inline(always)]
pub fn ipv4_mapped(v4: [u8; 4]) -> Addr {
    ipv4_word_mapped(u32::from_ne_bytes(v4))
}

/// Maps an IPv4 address read from a packet as one word (`u32::from_ne_bytes`
/// of its network-order bytes) to IPv4-mapped IPv6.
#[inline(always)]
pub fn ipv4_word_mapped(v4: u32) -> Addr {
    [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), v4]
}

/// Value of the `FLOWS` map: the tracker state plus who is the client.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    /// The TLS record tracker for this connection.
    pub tracker: crate::tracker::FlowState,
    /// Monotonic time (ns, `bpf_ktime_get_ns`) of the first ClientHello.
    pub first_seen_ns: u64,
    /// Monotonic time (ns) of the last segment with payload, at tick
    /// resolution: the TC programs read the coarse clock
    /// (`bpf_ktime_get_coarse_ns`, half the cost of the precise one) and
    /// only ever move this forward, so it is never before `first_seen_ns`
    /// and never goes back.
    pub last_seen_ns: u64,
    /// 1 when endpoint a of the key is the client (sent the first ClientHello).
    pub client_is_a: u8,
    /// Padding, always zero.
    pub _pad: [u8; 7],
}

/// Event kind: a TLS flow was first seen; sent by the TC program that
/// created it, with the state after its first segment (so the agent knows
/// of flows the LRU map evicts before its next sweep).
pub const EVENT_FLOW_OPENED: u32 = 1;
/// Event kind: a TLS flow was closed; the event carries its final state.
pub const EVENT_FLOW_CLOSED: u32 = 2;
/// Event kind: the client of a flow went over the renegotiation cap
/// ([`TrackerConfig::reneg_cap`]); sent once per flow, by TC ingress, with
/// the flow's state just after the segment that was dropped. The agent resets
/// the connection.
pub const EVENT_LIMIT_HIT: u32 = 3;

/// Event kind: a segment of a known flow changed a counter the agent's
/// policy reads: `renegotiations_client` (any change), or `keyupdate_like`
/// crossing a multiple of [`KEYUPDATE_EVENT_EVERY`]. Sent by the TC
/// program after the segment is parsed, with the flow's state then, so the
/// agent decides on the segment that crossed a threshold instead of at its
/// next sweep. A flow's first segment sends [`EVENT_FLOW_OPENED`] instead.
pub const EVENT_FLOW_PROGRESS: u32 = 4;

/// `keyupdate_like` progress is sent once per this many records (a power of
/// two): KeyUpdate-sized records cost the sender almost nothing, so one event
/// each would let a flood fill the ring buffer; the agent's rate rule still
/// sees the count within this many records of the crossing (and the sweep
/// sees the exact count).
pub const KEYUPDATE_EVENT_EVERY: u32 = 8;

/// A ring-buffer event about a flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    /// `EVENT_*`.
    pub kind: u32,
    /// Padding, always zero.
    pub _pad: u32,
    /// The flow's state when the event was sent.
    pub value: FlowValue,
    /// The flow.
    pub key: FlowKey,
    /// Padding, always zero.
    pub _tail: u64,
}

/// Indexes of the `STATS` per-CPU counters.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// TCP segments with payload the TC programs looked at.
    Segments = 0,
    /// Segments of TLS flows fed to the tracker.
    TlsSegments = 1,
    /// TLS flows created.
    FlowsCreated = 2,
    /// Flow creations that failed (map update error).
    FlowInsertErrors = 3,
    /// Events dropped because the ring buffer was full.
    EventsLost = 4,
    /// Flows marked closed by the tracepoint.
    FlowsClosed = 5,
    /// Packets the TC program could not parse (truncated headers).
    MalformedPackets = 6,
    /// Packets the TC ingress program dropped because their source address
    /// is banned (every reason; see `crate::ban`).
    BanDrops = 7,
    /// Of those, the packets of bans added by an operator
    /// (`crate::ban::BAN_REASON_MANUAL`).
    BanDropsManual = 8,
    /// Client-to-server segments the TC ingress program dropped because their
    /// flow went over the renegotiation cap ([`TrackerConfig::reneg_cap`]).
    RenegCapDrops = 9,
    /// Of the ban drops, the packets of bans the policy added
    /// (`crate::ban::BAN_REASON_POLICY`).
    BanDropsPolicy = 10,
    /// Runs of the TC ingress program (every packet it saw).
    TcIngressRuns = 11,
    /// Runs of the TC egress program.
    TcEgressRuns = 12,
    /// Runs of the `sock/inet_sock_set_state` tracepoint program.
    SockStateRuns = 13,
    /// Runs of the `cgroup_skb` ingress program (socket hooks; every
    /// packet of every local socket).
    SockIngressRuns = 14,
    /// Runs of the `cgroup_skb` egress program (socket hooks).
    SockEgressRuns = 15,
    /// Server sockets that got per-socket tracker state (socket hooks).
    SockFlowsCreated = 16,
    /// Of those, closed (`sock_ops` state callback: the socket reached
    /// `TCP_CLOSE`).
    SockFlowsClosed = 17,
    /// Client segments the socket ingress program dropped because they
    /// start beyond the next expected byte (`crate::rewind`: TCP sends them
    /// again in order).
    SockDropAhead = 18,
    /// Client segments after which the socket ingress program went back to
    /// the state TCP confirmed (`crate::rewind`: the bytes parsed beyond
    /// `rcv_nxt` were never accepted, or are being sent again).
    SockRewinds = 19,
    /// Client segments the socket ingress program dropped because they
    /// overlap bytes TCP has not accepted, start beyond `rcv_nxt` and no
    /// confirmed copy fits (`crate::rewind`).
    SockUnverifiedDrops = 20,
    /// Client segments that overlap bytes TCP has not accepted, start at or
    /// below `rcv_nxt`, and no confirmed copy fits: parsed without a check
    /// (`crate::rewind`).
    SockUnverified = 21,
    /// Client segments the socket ingress program dropped because another
    /// run (another CPU) was parsing a segment of the same socket.
    SockBusyDrops = 22,
}

/// Number of `STATS` slots.
pub const STAT_COUNT: u32 = 23;

impl Stat {
    /// Every slot, in index order.
    pub const ALL: [Stat; STAT_COUNT as usize] = [
        Stat::Segments,
        Stat::TlsSegments,
        Stat::FlowsCreated,
        Stat::FlowInsertErrors,
        Stat::EventsLost,
        Stat::FlowsClosed,
        Stat::MalformedPackets,
        Stat::BanDrops,
        Stat::BanDropsManual,
        Stat::RenegCapDrops,
        Stat::BanDropsPolicy,
        Stat::TcIngressRuns,
        Stat::TcEgressRuns,
        Stat::SockStateRuns,
        Stat::SockIngressRuns,
        Stat::SockEgressRuns,
        Stat::SockFlowsCreated,
        Stat::SockFlowsClosed,
        Stat::SockDropAhead,
        Stat::SockRewinds,
        Stat::SockUnverifiedDrops,
        Stat::SockUnverified,
        Stat::SockBusyDrops,
    ];

    /// The slot's name in `/v1/stats` and in metric names (`hsmon_kernel_<name>_total`).
    pub const fn name(self) -> &'static str {
        match self {
            Stat::Segments => "segments",
            Stat::TlsSegments => "tls_segments",
            Stat::FlowsCreated => "flows_created",
            Stat::FlowInsertErrors => "flow_insert_errors",
            Stat::EventsLost => "events_lost",
            Stat::FlowsClosed => "flows_closed",
            Stat::MalformedPackets => "malformed_packets",
            Stat::BanDrops => "ban_drops",
            Stat::BanDropsManual => "ban_drops_manual",
            Stat::RenegCapDrops => "reneg_cap_drops",
            Stat::BanDropsPolicy => "ban_drops_policy",
            Stat::TcIngressRuns => "tc_ingress_runs",
            Stat::TcEgressRuns => "tc_egress_runs",
            Stat::SockStateRuns => "sock_state_runs",
            Stat::SockIngressRuns => "sock_ingress_runs",
            Stat::SockEgressRuns => "sock_egress_runs",
            Stat::SockFlowsCreated => "sock_flows_created",
            Stat::SockFlowsClosed => "sock_flows_closed",
            Stat::SockDropAhead => "sock_drop_ahead",
            Stat::SockRewinds => "sock_rewinds",
            Stat::SockUnverifiedDrops => "sock_unverified_drops",
            Stat::SockUnverified => "sock_unverified",
            Stat::SockBusyDrops => "sock_busy_drops",
        }
    }

    /// One line saying what the slot counts (the metric's HELP text).
    pub const fn help(self) -> &'static str {
        match self {
            Stat::Segments => "TCP segments with payload the TC programs looked at",
            Stat::TlsSegments => "Segments of tracked TLS flows fed to the tracker",
            Stat::FlowsCreated => "TLS flows created in the kernel's flow map",
            Stat::FlowInsertErrors => "TLS flow creations that failed (map update error)",
            Stat::EventsLost => "Ring-buffer events dropped because the buffer was full",
            Stat::FlowsClosed => "Flows marked closed by the TCP state tracepoint",
            Stat::MalformedPackets => "Packets the TC program could not parse (truncated headers)",
            Stat::BanDrops => "Packets dropped at TC ingress because their source is banned",
            Stat::BanDropsManual => "Packets dropped by bans an operator added (hsmon bans add)",
            Stat::RenegCapDrops => {
                "Client segments dropped at TC ingress because their connection went over the renegotiation cap"
            }
            Stat::BanDropsPolicy => "Packets dropped by bans the policy added (a rule with action ban)",
            Stat::TcIngressRuns => "Runs of the TC ingress program (every packet it saw)",
            Stat::TcEgressRuns => "Runs of the TC egress program (every packet it saw)",
            Stat::SockStateRuns => "Runs of the sock/inet_sock_set_state tracepoint program",
            Stat::SockIngressRuns => {
                "Runs of the cgroup_skb ingress program (socket hooks: every packet of every local socket)"
            }
            Stat::SockEgressRuns => "Runs of the cgroup_skb egress program (socket hooks)",
            Stat::SockFlowsCreated => {
                "Server sockets that got per-socket tracker state (socket hooks)"
            }
            Stat::SockFlowsClosed => {
                "Per-socket flows closed with their socket (socket hooks, sock_ops state callback)"
            }
            Stat::SockDropAhead => {
                "Client segments dropped at socket ingress because they start beyond the next expected byte"
            }
            Stat::SockRewinds => {
                "Client segments at socket ingress after which the tracker went back to the state TCP confirmed"
            }
            Stat::SockUnverifiedDrops => {
                "Client segments dropped at socket ingress: overlap unaccepted bytes, beyond rcv_nxt, no copy fits"
            }
            Stat::SockUnverified => {
                "Client segments parsed unchecked at socket ingress: overlap unaccepted bytes, no copy fits"
            }
            Stat::SockBusyDrops => {
                "Client segments dropped at socket ingress while another CPU parsed the same socket's"
            }
        }
    }
}

/// Settings the agent writes into the `CONFIG` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackerConfig {
    /// Number of valid entries in `ports` (0: every TCP port).
    pub port_count: u32,
    /// Only flows with one of these server ports are tracked (host order).
    pub ports: [u16; MAX_PORTS],
    /// Most client-initiated renegotiations a connection may make (0: no cap).
    /// TC ingress drops the client segment that carries the one over the cap
    /// and every later client segment with payload of that connection
    /// ([`crate::tracker::FF_OVER_CAP`]), and tells the agent
    /// ([`EVENT_LIMIT_HIT`]), which resets it.
    pub reneg_cap: u32,
    /// Which hooks count: [`HOOKS_TC`] (the TC programs, by 4-tuple) or
    /// [`HOOKS_SOCKET`] (the `cgroup_skb` programs, per socket; the TC
    /// programs then only drop banned sources).
    pub hooks: u32,
}

/// [`TrackerConfig::hooks`]: the TC programs track flows by 4-tuple.
pub const HOOKS_TC: u32 = 0;
/// [`TrackerConfig::hooks`]: the socket hooks track local server sockets
/// (`SK_STORAGE`), TC does not track.
pub const HOOKS_SOCKET: u32 = 1;

/// Most ports a port filter can hold.
pub const MAX_PORTS: usize = 16;

// The map types have no implicit padding: what the kernel writes is what user
// space reads, byte for byte.
const _: () = assert!(core::mem::size_of::<crate::tracker::DirState>() == 40);
const _: () = assert!(core::mem::size_of::<crate::tracker::FlowState>() == 160);
const _: () = assert!(core::mem::size_of::<FlowValue>() == 184);
const _: () = assert!(core::mem::size_of::<FlowKey>() == 56);
const _: () = assert!(core::mem::size_of::<FlowEvent>() == 256);
const _: () = assert!(core::mem::size_of::<TrackerConfig>() == 44);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_table_is_in_index_order() {
        for (i, stat) in Stat::ALL.iter().enumerate() {
            assert_eq!(*stat as usize, i);
            assert!(!stat.name().is_empty() && !stat.help().is_empty());
        }
    }

    #[test]
    fn key_is_the_same_for_both_directions() {
        let a = ipv4_mapped([10, 0, 0, 1]);
        let b = ipv4_mapped([10, 0, 0, 2]);
        let (k1, a_sends) = FlowKey::from_endpoints(&a, 40000, &b, 443);
        let (k2, b_sends) = FlowKey::from_endpoints(&b, 443, &a, 40000);
        assert_eq!(k1, k2);
        assert!(a_sends);
        assert!(!b_sends);
        // Same address: the port decides.
        let (k3, first) = FlowKey::from_endpoints(&a, 443, &a, 40000);
        let (k4, second) = FlowKey::from_endpoints(&a, 40000, &a, 443);
        assert_eq!(k3, k4);
        assert!(first);
        assert!(!second);
    }

    #[test]
    fn socket_identity_separates_equal_four_tuples() {
        let a = ipv4_mapped([127, 0, 0, 1]);
        let (k, _) = FlowKey::from_endpoints(&a, 40000, &a, 4433);
        assert_eq!((k.sock_cookie, k.netns_cookie, k._pad), (0, 0, 0));
        let in_a = k.with_socket(7, 1);
        let in_b = k.with_socket(9, 2);
        assert_ne!(in_a, in_b);
        assert_ne!(in_a, k);
        assert_eq!((in_a.addr_a, in_a.port_b), (k.addr_a, k.port_b));
    }

    #[test]
    fn address_words_round_trip_and_sort_like_bytes() {
        let lo: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01];
        let hi: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00];
        assert_eq!(addr_bytes(&addr_from_bytes(&lo)), lo);
        let (k, lo_first) =
            FlowKey::from_endpoints(&addr_from_bytes(&hi), 1, &addr_from_bytes(&lo), 1);
        assert!(!lo_first);
        assert_eq!(addr_bytes(&k.addr_a), lo);
        let m = addr_bytes(&ipv4_mapped([10, 1, 2, 3]));
        assert_eq!(&m[10..], &[0xff, 0xff, 10, 1, 2, 3]);
        assert!(m[..10].iter().all(|b| *b == 0));
    }
}
