//! libssl uprobes: attaching them, and merging the process behind each
//! connection into `GET /v1/conns` (kernel side and design:
//! `monitor-ebpf/src/ssl.rs`, `monitor_common::ssl`).
//!
//! Targets, found once at start-up: the system libssl
//! (`/usr/lib/x86_64-linux-gnu/libssl.so.3`, or what `ldconfig -p` names when
//! that file is missing) and every distinct `libssl*.so*` that a running
//! process maps (`/proc/*/maps`, opened through `/proc/PID/root` so libraries
//! inside containers are found too), deduplicated by (device, inode). The
//! attach cookie of every probe is the library's index in that list, which
//! is how a connection's `library` is known.
//!
//! Nothing here can stop the agent: when no libssl exists or attaching fails,
//! one warning is logged and wire counting goes on without process fields.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _, Result};
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray};
use aya::programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope};
use aya::programs::{TracePoint, UProbe};
use aya::Ebpf;
use monitor_common::flow::{addr_from_bytes, FlowKey};
use monitor_common::ssl::{comm_bytes, ProcInfo, SIDE_CLIENT, SIDE_SERVER, SSL_STAT_COUNT};

use super::loader::program;
use crate::record::{ConnRecord, ProcessFields};
use crate::status::TracepointHook;

/// The system's default libssl on Debian/Ubuntu x86_64.
pub const SYSTEM_LIBSSL: &str = "/usr/lib/x86_64-linux-gnu/libssl.so.3";

/// Entry probe of the handshake calls.
const PROG_HS_ENTER: &str = "hsmon_ssl_hs_enter";
/// Return probe of the handshake calls.
const PROG_HS_RETURN: &str = "hsmon_ssl_hs_return";
/// Entry probe of the read/write calls.
const PROG_IO_ENTER: &str = "hsmon_ssl_io_enter";
/// Tracepoint programs: (program, category, name).
const TRACEPOINTS: [(&str, &str, &str); 3] = [
    ("hsmon_sock_map", "sock", "inet_sock_set_state"),
    ("hsmon_ssl_send", "sock", "sock_send_length"),
    ("hsmon_ssl_recv", "sock", "sock_recv_length"),
];
/// Names of the `SSL_STATS` slots in `GET /v1/stats`.
const STAT_NAMES: [&str; SSL_STAT_COUNT as usize] = [
    "ssl_probe_entries",
    "ssl_probe_returns",
    "ssl_sock_io",
    "ssl_flows_attributed",
];
/// Handshake calls: entry and return probes.
const HANDSHAKE_FNS: [&str; 3] = ["SSL_do_handshake", "SSL_accept", "SSL_connect"];
/// Read/write calls: entry probes only.
const IO_FNS: [&str; 4] = ["SSL_read", "SSL_read_ex", "SSL_write", "SSL_write_ex"];

/// The attached probes' maps and what they were attached to. The links
/// belong to the programs in the `Ebpf` object and go with it.
pub struct Uprobes {
    procs: BpfHashMap<MapData, FlowKey, ProcInfo>,
    stats: PerCpuArray<MapData, u64>,
    /// Library paths, indexed by attach cookie.
    libraries: Vec<PathBuf>,
    tracepoints: Vec<TracepointHook>,
}

impl Uprobes {
    /// Finds the libraries and attaches everything; `None`, after one
    /// warning, when there is nothing to attach to or the kernel refuses.
    pub fn attach_or_warn(ebpf: &mut Ebpf) -> Option<Self> {
        let libraries = discover_libraries();
        if libraries.is_empty() {
            tracing::warn!(
                "no libssl found ({SYSTEM_LIBSSL}, ldconfig -p, /proc/*/maps): connections get no \
                 process attribution; wire counting is unaffected"
            );
            return None;
        }
        match Self::attach(ebpf, libraries) {
            Ok(u) => Some(u),
            Err(e) => {
                tracing::warn!(
                    "libssl uprobes not attached, connections get no process attribution \
                     (wire counting is unaffected): {e:#}"
                );
                None
            }
        }
    }

    fn attach(ebpf: &mut Ebpf, libraries: Vec<PathBuf>) -> Result<Self> {
        for name in [PROG_HS_ENTER, PROG_HS_RETURN, PROG_IO_ENTER] {
            let p: &mut UProbe = program(ebpf, name)?
                .try_into()
                .with_context(|| format!("{name} is not a uprobe"))?;
            p.load().with_context(|| format!("loading {name}"))?;
        }
        for (name, _, _) in TRACEPOINTS {
            let p: &mut TracePoint = program(ebpf, name)?
                .try_into()
                .with_context(|| format!("{name} is not a tracepoint program"))?;
            p.load().with_context(|| format!("loading {name}"))?;
        }
        let mut attached = Vec::new();
        for (idx, lib) in libraries.iter().enumerate() {
            match attach_library(ebpf, lib, idx as u64) {
                Ok(n) => {
                    tracing::info!(library = %lib.display(), probes = n, "attached libssl uprobes");
                    attached.push(lib.clone());
                }
                Err(e) => tracing::warn!("libssl uprobes on {}: {e:#}", lib.display()),
            }
        }
        if attached.is_empty() {
            return Err(anyhow!(
                "no library could be probed (tried {})",
                libraries
                    .iter()
                    .map(|l| l.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let mut tracepoints = Vec::new();
        for (name, category, tp) in TRACEPOINTS {
            let p: &mut TracePoint = program(ebpf, name)?
                .try_into()
                .with_context(|| format!("{name} is not a tracepoint program"))?;
            p.attach(category, tp)
                .with_context(|| format!("attaching {name} to {category}/{tp}"))?;
            tracepoints.push(TracepointHook {
                program: name.to_owned(),
                tracepoint: format!("{category}/{tp}"),
            });
        }
        let procs = ebpf
            .take_map("PROCS")
            .ok_or_else(|| anyhow!("the eBPF object has no PROCS map"))?;
        let procs = BpfHashMap::try_from(procs).context("PROCS is not a hash map")?;
        let stats = ebpf
            .take_map("SSL_STATS")
            .ok_or_else(|| anyhow!("the eBPF object has no SSL_STATS map"))?;
        let stats = PerCpuArray::try_from(stats).context("SSL_STATS is not a per-CPU array")?;
        Ok(Uprobes {
            procs,
            stats,
            libraries,
            tracepoints,
        })
    }

    /// The tracepoints these probes added, as `hsmon status` lists them.
    pub fn tracepoints(&self) -> &[TracepointHook] {
        &self.tracepoints
    }

    /// Probe counters summed over CPUs: entry uprobe hits, return uprobe
    /// hits, send/recv tracepoint hits inside an SSL call, flows attributed.
    pub fn stats(&self) -> Result<[u64; SSL_STAT_COUNT as usize]> {
        let mut out = [0u64; SSL_STAT_COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let values = self
                .stats
                .get(&(i as u32), 0)
                .with_context(|| format!("reading SSL_STATS[{i}]"))?;
            *slot = values.iter().sum();
        }
        Ok(out)
    }

    /// [`Uprobes::stats`] by the names `GET /v1/stats` lists them under
    /// `kernel`: `ssl_probe_entries`, `ssl_probe_returns`, `ssl_sock_io`,
    /// `ssl_flows_attributed`.
    pub fn stats_by_name(&self) -> Result<Vec<(String, u64)>> {
        let s = self.stats()?;
        Ok(STAT_NAMES
            .iter()
            .zip(s)
            .map(|(n, v)| ((*n).to_owned(), v))
            .collect())
    }

    /// Fills the process fields of every record whose flow has an entry in
    /// `PROCS`.
    pub fn annotate(&self, records: &mut [ConnRecord]) {
        for rec in records {
            let key = flow_key(rec);
            if let Ok(info) = self.procs.get(&key, 0) {
                rec.process = process_fields(&info, &self.libraries);
            }
        }
    }
}

/// Attaches every probe to one library; the number of probes attached.
fn attach_library(ebpf: &mut Ebpf, lib: &Path, cookie: u64) -> Result<usize> {
    let mut n = 0;
    let plan: [(&str, &[&str]); 3] = [
        (PROG_HS_ENTER, &HANDSHAKE_FNS),
        (PROG_HS_RETURN, &HANDSHAKE_FNS),
        (PROG_IO_ENTER, &IO_FNS),
    ];
    for (name, fns) in plan {
        let p: &mut UProbe = program(ebpf, name)?
            .try_into()
            .with_context(|| format!("{name} is not a uprobe"))?;
        for f in fns {
            let point = UProbeAttachPoint {
                location: UProbeAttachLocation::Symbol(f),
                cookie: Some(cookie),
            };
            p.attach(point, lib, UProbeScope::AllProcesses)
                .with_context(|| format!("attaching {name} to {f}"))?;
            n += 1;
        }
    }
    Ok(n)
}

/// The canonical flow key of a record (the one `FLOWS` and `PROCS` use).
fn flow_key(rec: &ConnRecord) -> FlowKey {
    let bytes = |a: std::net::SocketAddr| match a.ip() {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(v6) => v6.octets(),
    };
    let (key, _) = FlowKey::from_endpoints(
        &addr_from_bytes(&bytes(rec.client)),
        rec.client.port(),
        &addr_from_bytes(&bytes(rec.server)),
        rec.server.port(),
    );
    key
}

/// The record fields for one `PROCS` entry.
fn process_fields(info: &ProcInfo, libraries: &[PathBuf]) -> ProcessFields {
    let timed = info.handshake_calls > 0;
    ProcessFields {
        pid: Some(info.tgid),
        comm: Some(String::from_utf8_lossy(comm_bytes(&info.comm)).into_owned()),
        cgroup_id: Some(info.cgroup_id),
        library: libraries
            .get(info.library as usize)
            .map(|p| p.display().to_string()),
        process_side: match info.side {
            SIDE_SERVER => Some("server".to_owned()),
            SIDE_CLIENT => Some("client".to_owned()),
            _ => None,
        },
        handshake_ms_last: timed.then(|| info.handshake_ns_last as f64 / 1e6),
        handshake_ms_max: timed.then(|| info.handshake_ns_max as f64 / 1e6),
        handshake_failures: Some(info.handshake_failures),
    }
}

/// The libraries to probe, deduplicated by (device, inode), the system's
/// default first.
pub fn discover_libraries() -> Vec<PathBuf> {
    let mut candidates = Vec::new();
    if Path::new(SYSTEM_LIBSSL).exists() {
        candidates.push(PathBuf::from(SYSTEM_LIBSSL));
    } else {
        candidates.extend(ldconfig_libssl());
    }
    candidates.extend(mapped_libssl());
    dedup_by_inode(candidates)
}

/// Keeps the first path of every (device, inode); drops paths that cannot
/// be stat'ed.
fn dedup_by_inode(paths: Vec<PathBuf>) -> Vec<PathBuf> {
    let mut seen = HashSet::new();
    paths
        .into_iter()
        .filter(|p| match std::fs::metadata(p) {
            Ok(m) => seen.insert((m.dev(), m.ino())),
            Err(e) => {
                tracing::debug!("skipping {}: {e}", p.display());
                false
            }
        })
        .collect()
}

/// `libssl.so*` entries of `ldconfig -p` (empty when it cannot run).
fn ldconfig_libssl() -> Vec<PathBuf> {
    match std::process::Command::new("ldconfig").arg("-p").output() {
        Ok(out) => parse_ldconfig(&String::from_utf8_lossy(&out.stdout)),
        Err(e) => {
            tracing::debug!("ldconfig -p: {e}");
            Vec::new()
        }
    }
}

/// Paths of the `libssl.so*` lines of `ldconfig -p` output.
fn parse_ldconfig(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if !l.starts_with("libssl.so") {
                return None;
            }
            l.rsplit_once("=> ").map(|(_, p)| PathBuf::from(p.trim()))
        })
        .collect()
}

/// Every `libssl*.so*` mapped by a running process, as seen through that
/// process's root (`/proc/PID/root/...`).
fn mapped_libssl() -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut names = HashSet::new();
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            continue;
        };
        for path in libssl_paths_in_maps(&maps) {
            if names.insert((pid.to_owned(), path.clone())) {
                out.push(PathBuf::from(format!("/proc/{pid}/root{path}")));
            }
        }
    }
    out
}

/// The distinct `libssl*.so*` paths in one `/proc/PID/maps` text.
fn libssl_paths_in_maps(maps: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in maps.lines() {
        // address perms offset dev inode path
        let Some(path) = line.split_whitespace().nth(5) else {
            continue;
        };
        let file = path.rsplit('/').next().unwrap_or(path);
        if path.starts_with('/')
            && file.starts_with("libssl")
            && file.contains(".so")
            && !out.iter().any(|p| p == path)
        {
            out.push(path.to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldconfig_lines() {
        let text = "3 libs found in cache `/etc/ld.so.cache'\n\
            \tlibssl.so.3 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libssl.so.3\n\
            \tlibssl3.so (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libssl3.so\n\
            \tlibcrypto.so.3 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcrypto.so.3\n";
        assert_eq!(
            parse_ldconfig(text),
            vec![PathBuf::from("/usr/lib/x86_64-linux-gnu/libssl.so.3")]
        );
    }

    #[test]
    fn maps_lines() {
        let maps = "\
7f00-7f01 r--p 00000000 fe:01 123 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f01-7f02 r-xp 00001000 fe:01 123 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f02-7f03 r--p 00000000 fe:01 124 /usr/lib/x86_64-linux-gnu/libcrypto.so.3
7f03-7f04 rw-p 00000000 00:00 0
7f04-7f05 r--p 00000000 fe:01 125 /opt/app/lib/libssl.so.1.1 (deleted)
";
        assert_eq!(
            libssl_paths_in_maps(maps),
            vec![
                "/usr/lib/x86_64-linux-gnu/libssl.so.3".to_owned(),
                "/opt/app/lib/libssl.so.1.1".to_owned()
            ]
        );
    }

    #[test]
    fn record_key_matches_the_kernel_key() {
        let (key, value) = crate::record::tests::sample_flow();
        let rec = ConnRecord::from_flow(&key, &value, crate::record::ConnState::Open, 0);
        assert_eq!(flow_key(&rec), key);
    }

    #[test]
    fn fields_of_an_entry() {
        let mut info = ProcInfo {
            tgid: 77,
            side: SIDE_SERVER,
            library: 0,
            handshake_calls: 1,
            handshake_ns_last: 1_500_000,
            handshake_ns_max: 52_000_000,
            ..ProcInfo::default()
        };
        info.comm[..7].copy_from_slice(b"python3");
        let f = process_fields(&info, &[PathBuf::from(SYSTEM_LIBSSL)]);
        assert_eq!(f.pid, Some(77));
        assert_eq!(f.comm.as_deref(), Some("python3"));
        assert_eq!(f.library.as_deref(), Some(SYSTEM_LIBSSL));
        assert_eq!(f.process_side.as_deref(), Some("server"));
        assert_eq!(f.handshake_ms_last, Some(1.5));
        assert_eq!(f.handshake_ms_max, Some(52.0));
        info.handshake_calls = 0;
        let f = process_fields(&info, &[]);
        assert_eq!(f.handshake_ms_max, None);
        assert_eq!(f.library, None);
    }
}
