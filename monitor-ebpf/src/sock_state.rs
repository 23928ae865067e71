//! The `sock/inet_sock_set_state` tracepoint: a TCP socket that closes
//! finishes its flow and reports the final state.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use monitor_common::flow::{Addr, FlowKey, Stat, EVENT_FLOW_CLOSED};

use crate::maps::{count, send_flow_event, FLOWS};

// Field offsets from /sys/kernel/tracing/events/sock/inet_sock_set_state/format
// (stable tracepoint ABI); `crate::ssl` reads the same record.
pub(crate) const OFF_SKADDR: usize = 8;
pub(crate) const OFF_OLDSTATE: usize = 16;
pub(crate) const OFF_NEWSTATE: usize = 20;
pub(crate) const OFF_SPORT: usize = 24;
pub(crate) const OFF_DPORT: usize = 26;
pub(crate) const OFF_PROTOCOL: usize = 30;
pub(crate) const OFF_SADDR_V6: usize = 40;
pub(crate) const OFF_DADDR_V6: usize = 56;

/// TCP states (`include/net/tcp_states.h`).
pub(crate) const TCP_ESTABLISHED: i32 = 1;
pub(crate) const TCP_SYN_SENT: i32 = 2;
pub(crate) const TCP_SYN_RECV: i32 = 3;
pub(crate) const TCP_CLOSE: i32 = 7;
pub(crate) const IPPROTO_TCP: u16 = 6;

/// Finishes the flow of a TCP socket entering `TCP_CLOSE`.
#[tracepoint]
pub fn hsmon_sock_state(ctx: TracePointContext) -> u32 {
    count(Stat::SockStateRuns);
    let _ = on_state(&ctx);
    0
}

#[inline(always)]
fn on_state(ctx: &TracePointContext) -> Option<()> {
    // SAFETY: offsets inside the tracepoint record (see the format file).
    let newstate: i32 = unsafe { ctx.read_at(OFF_NEWSTATE) }.ok()?;
    if newstate != TCP_CLOSE {
        return None;
    }
    let protocol: u16 = unsafe { ctx.read_at(OFF_PROTOCOL) }.ok()?;
    if protocol != IPPROTO_TCP {
        return None;
    }
    let sport: u16 = unsafe { ctx.read_at(OFF_SPORT) }.ok()?;
    let dport: u16 = unsafe { ctx.read_at(OFF_DPORT) }.ok()?;
    // IPv4 sockets carry IPv4-mapped addresses here too.
    let saddr: Addr = unsafe { ctx.read_at(OFF_SADDR_V6) }.ok()?;
    let daddr: Addr = unsafe { ctx.read_at(OFF_DADDR_V6) }.ok()?;
    let (key, _) = FlowKey::from_endpoints(&saddr, sport, &daddr, dport);
    let flow = FLOWS.get_ptr_mut(&key)?;
    // SAFETY: a valid pointer into the map.
    let flow = unsafe { &mut *flow };
    flow.tracker.finish();
    count(Stat::FlowsClosed);
    send_flow_event(EVENT_FLOW_CLOSED, flow, &key);
    Some(())
}
