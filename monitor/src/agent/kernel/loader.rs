//! Loading the eBPF object: map sizes, the eBPF log forwarder, the programs.

use anyhow::{anyhow, Context as _, Result};
use aya::programs::{ProgramError, SchedClassifier, TracePoint};
use aya::{Ebpf, EbpfLoader};

/// Name of the TC ingress program.
pub const PROG_TC_INGRESS: &str = "hsmon_tc_ingress";
/// Name of the TC egress program.
pub const PROG_TC_EGRESS: &str = "hsmon_tc_egress";
/// Name of the `sock/inet_sock_set_state` tracepoint program.
pub const PROG_SOCK_STATE: &str = "hsmon_sock_state";
/// Name of the flow map, whose size `--flow-map-size` sets.
pub const MAP_FLOWS: &str = "FLOWS";
/// Name of the event ring buffer, whose size `--events-ring-size` sets.
pub const MAP_EVENTS: &str = "EVENTS";
/// The event ring buffer's default size in bytes (the object's own).
pub use crate::config::flags::DEFAULT_EVENTS_RING_SIZE;

/// The eBPF object `build.rs` built, embedded in the binary (empty when built
/// with `AYA_BUILD_SKIP=1`).
pub fn ebpf_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hsmon-ebpf"))
}

/// Creates the object's maps (with `FLOWS` sized to `flow_map_size` entries
/// and `EVENTS` to `events_ring_size` bytes) and prepares its programs;
/// nothing is attached yet.
pub fn load(flow_map_size: u32, events_ring_size: u32) -> Result<Ebpf> {
    load_pinned(flow_map_size, events_ring_size, &[])
}

/// Like [`load`], with the maps named in `pins` reused from (or created and
/// pinned at) their paths: an existing pin is taken as it is, so the caller
/// checks beforehand that it fits (`pins::PinDir::prepare_maps`).
pub fn load_pinned(
    flow_map_size: u32,
    events_ring_size: u32,
    pins: &[(&'static str, std::path::PathBuf)],
) -> Result<Ebpf> {
    if ebpf_object().is_empty() {
        anyhow::bail!(
            "this hsmon was built with AYA_BUILD_SKIP=1 and carries no eBPF object: rebuild without it"
        );
    }
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(MAP_FLOWS, flow_map_size)
        .map_max_entries(MAP_EVENTS, events_ring_size);
    for (name, path) in pins {
        loader.map_pin_path(name, path.as_path());
    }
    loader.load(ebpf_object()).context(
        "loading the eBPF object (hsmon run needs root: CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON)",
    )
}

/// Starts forwarding the programs' `aya-log` messages to our log; `None`
/// (with a warning) when the object has no log map.
pub fn ebpf_logger(ebpf: &mut Ebpf) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
    match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => Some(logger),
        Err(e) => {
            tracing::warn!("eBPF log messages will not be shown: {e}");
            None
        }
    }
}

/// Verifies and loads the three programs into the kernel.
pub fn load_programs(ebpf: &mut Ebpf) -> Result<()> {
    let started = std::time::Instant::now();
    for name in [PROG_TC_INGRESS, PROG_TC_EGRESS] {
        let prog: &mut SchedClassifier = program(ebpf, name)?
            .try_into()
            .with_context(|| format!("{name} is not a TC classifier"))?;
        prog.load().map_err(|e| load_error(name, e))?;
    }
    let prog: &mut TracePoint = program(ebpf, PROG_SOCK_STATE)?
        .try_into()
        .with_context(|| format!("{PROG_SOCK_STATE} is not a tracepoint program"))?;
    prog.load().map_err(|e| load_error(PROG_SOCK_STATE, e))?;
    tracing::info!(
        "eBPF programs verified and loaded in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The program called `name`, or an error naming it.
pub fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))
}

/// Lines of the verifier's log an error message carries (its end says why).
const VERIFIER_TAIL_LINES: usize = 12;

/// The error for a program the kernel refused: the errno and the end of the
/// verifier's log; the whole log goes to the debug log (`HSMON_LOG=debug`).
fn load_error(name: &str, e: ProgramError) -> anyhow::Error {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            tracing::debug!("verifier log of {name}:\n{log}");
            anyhow::Error::new(io_error).context(format!(
                "the kernel refused program {name}; the verifier's log ends with \
                 (HSMON_LOG=debug shows all of it):\n{}",
                log_tail(&log, VERIFIER_TAIL_LINES)
            ))
        }
        other => {
            anyhow::Error::new(other).context(format!("loading program {name} into the kernel"))
        }
    }
}

/// The last `n` non-empty lines of `log`, each cut to 300 characters.
fn log_tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(n);
    lines[start..]
        .iter()
        .map(|l| match l.char_indices().nth(300) {
            Some((i, _)) => format!("    {}...", &l[..i]),
            None => format!("    {l}"),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_of_a_log() {
        let log = "a\n\nb\nc\n";
        assert_eq!(log_tail(log, 2), "    b\n    c");
        assert_eq!(log_tail(log, 10), "    a\n    b\n    c");
        assert_eq!(log_tail("", 3), "");
        let long = "x".repeat(400);
        assert_eq!(log_tail(&long, 1).len(), 4 + 300 + 3);
    }
}
