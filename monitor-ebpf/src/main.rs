//! hsmon's eBPF programs: thin glue between the kernel's hooks and
//! `monitor_common`'s TLS record tracker.
//!
//! * `hsmon_tc_ingress` / `hsmon_tc_egress` (TC classifiers): parse Ethernet,
//!   IPv4/IPv6 and TCP, find the flow, feed the payload to the tracker. They
//!   never change a packet; ingress drops (`TC_ACT_SHOT`) packets from banned
//!   source addresses (see `ban`), everything else passes (`TC_ACT_UNSPEC`).
//! * `hsmon_sock_state` (tracepoint `sock/inet_sock_set_state`): a TCP socket
//!   entering `TCP_CLOSE` finishes its flow and sends the final state to user
//!   space.
//!
//! * `hsmon_sock_ingress` / `hsmon_sock_egress` (`cgroup_skb`) and
//!   `hsmon_sock_ops` (`sock_ops`): the same tracker per local server socket
//!   (`hsmon run --hooks socket`; see `sock`).
//!
//! * `hsmon_ssl_*` uprobes on libssl and `hsmon_sock_map`, `hsmon_ssl_send`,
//!   `hsmon_ssl_recv` tracepoints: which process is behind a connection and
//!   how long its handshakes take (see `ssl` and `monitor_common::ssl`).
//!
//! Map layout and event format: see `monitor_common::flow`.
#![no_std]
#![no_main]

mod ban;
mod loops;
mod maps;
mod packet;
mod progress;
mod sock;
mod sock_state;
mod ssl;
mod tc;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path; this is never called.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
