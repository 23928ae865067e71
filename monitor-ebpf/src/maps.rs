//! The maps the programs share with the agent (layout: `monitor_common::flow`).

use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
};
use monitor_common::flow::{FlowEvent, FlowKey, FlowValue, Stat, TrackerConfig, STAT_COUNT};

/// Default number of tracked flows; the agent sets the real size at load time.
const DEFAULT_FLOWS: u32 = 65536;

/// Per-connection tracker state.
#[map(name = "FLOWS")]
pub static FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(DEFAULT_FLOWS, 0);

/// Flow transitions for the agent (flow closed, with its final state).
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Program counters, summed over CPUs by the agent.
#[map(name = "STATS")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

/// Settings written by the agent before attaching.
#[map(name = "CONFIG")]
pub static CONFIG: Array<TrackerConfig> = Array::with_max_entries(1, 0);

/// Per-CPU scratch space to build a new flow's value off the 512-byte stack.
#[map(name = "SCRATCH")]
pub static SCRATCH: PerCpuArray<FlowValue> = PerCpuArray::with_max_entries(1, 0);

/// Adds one to a `STATS` counter.
#[inline(always)]
pub fn count(stat: Stat) {
    if let Some(slot) = STATS.get_ptr_mut(stat as u32) {
        // Per-CPU slot: no other writer.
        unsafe { *slot += 1 };
    }
}

/// Writes one [`FlowEvent`] of `kind` with the flow's state to `EVENTS`; a
/// full ring buffer counts `EventsLost`. Inlined into each event kind's own
/// non-inlined sender (one per kind: see `tc.rs`'s `flow_opened`).
#[inline(always)]
pub fn send_flow_event(kind: u32, flow: &FlowValue, key: &FlowKey) {
    match EVENTS.reserve::<FlowEvent>(0) {
        Some(mut entry) => {
            let ev = entry.as_mut_ptr();
            // SAFETY: `ev` points at reserved ring-buffer memory of the right size.
            unsafe {
                (*ev).kind = kind;
                (*ev)._pad = 0;
                (*ev).value = *flow;
                (*ev).key = *key;
                (*ev)._tail = 0;
            }
            entry.submit(0);
        }
        None => count(Stat::EventsLost),
    }
}
