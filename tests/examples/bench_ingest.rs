//! Agent ingest: events per second through the decoding of ring-buffer
//! records and the aggregator (`monitor::agent::policy::Policy`, which keeps
//! the per-peer and per-prefix windows), in-process with synthetic events
//! (`cargo xtask bench` runs this; prints `BENCH_ROW` lines, see
//! [`tests::bench`]).
//!
//! Two rows per peer count:
//! - the event path, as the agent's reader runs it: batches of up to 4096
//!   decoded records handed to `Policy::on_events` (each event's peer and
//!   connection evaluated at once), simulated time advancing 1 µs per event
//!   (1,000,000 events/s) and a sweep (`Policy::step`, nothing left for it:
//!   the reader already told the policy of every close) once per simulated
//!   second;
//! - the sweep path: the same records handed to `Policy::step` as departed
//!   flows in sweeps of 4096, each sweep one simulated second after the
//!   previous (what the agent did before the event path).
//!
//! Why synthetic and in-process: no kernel producer on this machine comes
//! near 1,000,000 events per second. hsmon's programs emit an event per
//! closed TLS connection (the `sock/inet_sock_set_state` tracepoint) and
//! per connection over the renegotiation cap, so the kernel rate is the
//! rate of real TLS connections (a few thousand per second here, see the
//! nginx rows). So this measures the user-space side on one thread: each
//! record is decoded from its bytes as the agent's reader does (`FlowEvent`
//! read unaligned from the ring buffer's bytes, as `run::events::
//! parse_event` does; that module is private to the agent) and the closed
//! flows are handed to `Policy::step` in batches, as the agent's sweep does
//! with the flows that left since the previous sweep. The flow table's
//! per-close map lookup (one `bpf()` syscall in the agent, `run::flows`,
//! private) is not in this figure.

use anyhow::Result;
use monitor::agent::policy::{ConnRef, Enforcer, FlowUpdate, Policy, Settings};
use monitor::api::cidr::Cidr;
use monitor::config::Config;
use monitor_common::flow::{ipv4_mapped, FlowEvent, FlowKey, FlowValue, EVENT_FLOW_CLOSED};
use monitor_common::tracker::FF_FIRST_HS_DONE;
use std::time::{Duration, Instant};
use tests::bench::{self, Goal, Row};

const SECTION: &str = "ingest";

/// Takes every decision and does nothing.
struct NoEnforcer;

impl Enforcer for NoEnforcer {
    fn allowed(&self, _: &Cidr) -> bool {
        false
    }
    fn ban(&mut self, _: Cidr, _: Duration, _: &str) -> Result<(), String> {
        Ok(())
    }
    fn reset(&mut self, _: &ConnRef) -> Result<bool, String> {
        Ok(true)
    }
}

/// `n` closed-flow events as the ring buffer holds them (raw bytes), from
/// `peers` client addresses.
fn events(n: u32, peers: u32, now: u64) -> Vec<Vec<u8>> {
    let server = ipv4_mapped([10, 85, 0, 1]);
    (0..n)
        .map(|i| {
            let c = 0x0a56_0000u32 + (i % peers);
            let client = ipv4_mapped(c.to_be_bytes());
            let port = 1024 + (i / peers) as u16;
            let (key, client_is_a) = FlowKey::from_endpoints(&client, port, &server, 443);
            let mut value = FlowValue {
                first_seen_ns: now + u64::from(i),
                last_seen_ns: now + u64::from(i) + 1000,
                client_is_a: u8::from(client_is_a),
                ..FlowValue::default()
            };
            value.tracker.flags |= FF_FIRST_HS_DONE;
            value.tracker.counters.renegotiations_client = i % 2;
            let ev = FlowEvent {
                kind: EVENT_FLOW_CLOSED,
                key,
                value,
                ..FlowEvent::default()
            };
            // SAFETY: FlowEvent is plain integers (repr(C)); its bytes.
            unsafe {
                std::slice::from_raw_parts(
                    (&ev as *const FlowEvent).cast::<u8>(),
                    std::mem::size_of::<FlowEvent>(),
                )
            }
            .to_vec()
        })
        .collect()
}

/// Decodes a record like the agent's reader.
fn decode(bytes: &[u8]) -> Option<FlowEvent> {
    if bytes.len() < std::mem::size_of::<FlowEvent>() {
        return None;
    }
    // SAFETY: length checked; FlowEvent is plain integers.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<FlowEvent>()) })
}

/// Events per second through decode + `Policy::step` in sweeps of `batch`.
fn run_sweeps(evs: &[Vec<u8>], batch: usize, now: u64) -> Result<f64> {
    let config = Config::parse("", "bench")?;
    let mut policy = Policy::new(Settings::from_config(&config));
    let mut enf = NoEnforcer;
    let t0 = Instant::now();
    let mut departed = Vec::with_capacity(batch);
    let mut sweep = 0u64;
    for chunk in evs.chunks(batch) {
        departed.clear();
        for b in chunk {
            if let Some(ev) = decode(b) {
                if ev.kind == EVENT_FLOW_CLOSED {
                    departed.push((ev.key, ev.value));
                }
            }
        }
        sweep += 1;
        let d = policy.step(now + sweep * 1_000_000_000, &[], &departed, &mut enf);
        std::hint::black_box(d);
    }
    Ok(evs.len() as f64 / t0.elapsed().as_secs_f64())
}

/// Events per second through decode + `Policy::on_events` in reader
/// batches of `batch`, with a sweep per simulated second.
fn run_events(evs: &[Vec<u8>], batch: usize, now: u64) -> Result<f64> {
    let config = Config::parse("", "bench")?;
    let mut policy = Policy::new(Settings::from_config(&config));
    let mut enf = NoEnforcer;
    let t0 = Instant::now();
    let mut updates = Vec::with_capacity(batch);
    let mut done = 0u64;
    let mut next_sweep = now + 1_000_000_000;
    for chunk in evs.chunks(batch) {
        updates.clear();
        for b in chunk {
            if let Some(ev) = decode(b) {
                updates.push(FlowUpdate {
                    key: ev.key,
                    value: ev.value,
                    departed: ev.kind == EVENT_FLOW_CLOSED,
                });
            }
        }
        done += chunk.len() as u64;
        let t = now + done * 1_000;
        std::hint::black_box(policy.on_events(t, &updates, &mut enf));
        if t >= next_sweep {
            next_sweep += 1_000_000_000;
            std::hint::black_box(policy.step(t, &[], &[], &mut enf));
        }
    }
    Ok(evs.len() as f64 / t0.elapsed().as_secs_f64())
}

fn main() -> Result<()> {
    let n: u32 = bench::scale(1_000_000, 200_000);
    let rounds = bench::scale(3, 2);
    let now = monitor::agent::kernel::clock::monotonic_now_ns();
    for (peers, batch) in [(1_000u32, 4096usize), (100_000, 4096)] {
        let evs = events(n, peers, now);
        for (path, what) in [
            ("events", "event path (Policy::on_events per reader batch)"),
            ("sweeps", "sweep path (Policy::step)"),
        ] {
            let mut rates = Vec::new();
            for _ in 0..rounds {
                rates.push(match path {
                    "events" => run_events(&evs, batch, now)?,
                    _ => run_sweeps(&evs, batch, now)?,
                });
            }
            Row::new(
                SECTION,
                &format!("events/s: decode + policy aggregation, {peers} peers, {path}"),
                bench::median(&rates),
                "events/s",
                &format!(
                    "in-process, one thread, synthetic EVENT_FLOW_CLOSED records ({n} per round, batches of {batch}), \
                     {what}; median of {rounds} rounds {:?}; not the kernel ring buffer (no producer here reaches this rate) \
                     and without the flow table's per-close map lookup",
                    rates.iter().map(|r| r.round()).collect::<Vec<_>>()
                ),
            )
            .target(Goal::AtLeast, 1_000_000.0)
            .emit();
        }
    }
    Ok(())
}
