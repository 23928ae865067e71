//! libssl uprobes: attaching them to every file that carries OpenSSL,
//! keeping that set current, and merging the process behind each
//! connection into `GET /v1/conns` (kernel side and design:
//! `monitor-ebpf/src/ssl.rs`, `monitor_common::ssl`).
//!
//! Targets ([`discover`]): the system libssl, every `libssl*.so*` a running
//! process maps, every running executable with OpenSSL linked in
//! statically; one set of probes per (device, inode). The pipeline
//! repeats the discovery every [`RESCAN_EVERY`]: new files get probes,
//! files no running process maps any more lose them (the system libssl
//! keeps its probes). The attach cookie of every probe is the file's index
//! in a list that only grows, which is how a connection's `library` is
//! known.
//!
//! Which functions get probes is the [`UprobeSet`] (`hsmon run --uprobes`):
//! `handshake` by default (functions called O(1) times per connection),
//! `full` adds the per-read/write functions and `SSL_get_error`. In both,
//! the `sock/sock_send_length`/`sock_recv_length` tracepoints name the
//! process of every tracked TLS flow from its socket I/O (no trap), so
//! `pid`/`comm`/`cgroup` do not need the per-I/O probes (the README's
//! "Probe sets" matrix lists the fields each set provides).
//!
//! Nothing here can stop the agent: when the probes cannot be loaded, one
//! warning is logged and wire counting goes on without process fields.

mod cgroup;
mod discover;
mod probes;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray};
use aya::programs::TracePoint;
use aya::Ebpf;
use monitor_common::flow::{addr_from_bytes, FlowKey};
use monitor_common::ssl::{comm_bytes, ProcInfo, SIDE_CLIENT, SIDE_SERVER, SSL_STAT_COUNT};

use crate::agent::kernel::loader::program;
use crate::api::conns::{ConnRecord, FailureReason, ProcessFields};
use crate::api::status::TracepointHook;
use crate::locks::lock;
use discover::{FileId, Target, SYSTEM_LIBSSL};

/// How often the targets are looked for again (new processes are probed
/// within this, plus the scan's own time).
pub const RESCAN_EVERY: Duration = Duration::from_secs(2);

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
    "ssl_flows_attributed_by_socket",
];

pub use crate::config::flags::UprobeSet;

/// The attached probes' maps and what they are attached to.
pub struct Uprobes {
    set: UprobeSet,
    procs: BpfHashMap<MapData, FlowKey, ProcInfo>,
    stats: PerCpuArray<MapData, u64>,
    tracepoints: Vec<TracepointHook>,
    targets: Mutex<Targets>,
    cgroups: Mutex<cgroup::CgroupNames>,
}

/// The probed files.
#[derive(Default)]
struct Targets {
    /// Shown names, indexed by attach cookie; only grows.
    names: Vec<String>,
    /// Cookie of every file ever probed.
    cookies: HashMap<FileId, u32>,
    /// Files probed now.
    attached: HashMap<FileId, probes::Attached>,
    /// Files that could not be probed (not tried again).
    failed: HashSet<FileId>,
    /// The system libssl: never released.
    system: Option<FileId>,
    /// What earlier scans found out about executables.
    verdicts: discover::ExeVerdicts,
    /// `--uprobe-target`: probe only these files (no discovery).
    only: Vec<PathBuf>,
    /// The functions probed.
    set: UprobeSet,
}

impl Uprobes {
    /// Whether the targets are discovered (and so worth a rescan every
    /// [`RESCAN_EVERY`]), not fixed by `--uprobe-target`.
    pub fn discovers(&self) -> bool {
        lock(&self.targets).only.is_empty()
    }

    /// Loads the probes, attaches the tracepoints and probes every target
    /// found now (only the files in `only` when it is not empty) with the
    /// functions of `set` (not [`UprobeSet::Off`]); `None`, after one
    /// warning, when the kernel refuses.
    pub fn attach_or_warn(ebpf: &mut Ebpf, only: &[PathBuf], set: UprobeSet) -> Option<Self> {
        match Self::attach(ebpf, only, set) {
            Ok(u) => {
                let n = lock(&u.targets).attached.len();
                if n == 0 {
                    tracing::warn!(
                        "no libssl or OpenSSL executable found ({SYSTEM_LIBSSL}, ldconfig -p, \
                         /proc/*/maps, /proc/*/exe): connections get no process attribution until \
                         one appears (looked for every {RESCAN_EVERY:?}); wire counting is unaffected"
                    );
                }
                Some(u)
            }
            Err(e) => {
                tracing::warn!(
                    "libssl uprobes not attached, connections get no process attribution \
                     (wire counting is unaffected): {e:#}"
                );
                None
            }
        }
    }

    fn attach(ebpf: &mut Ebpf, only: &[PathBuf], set: UprobeSet) -> Result<Self> {
        probes::load(ebpf)?;
        let mut tracepoints = Vec::new();
        for (name, category, tp) in TRACEPOINTS {
            let p: &mut TracePoint = program(ebpf, name)?
                .try_into()
                .with_context(|| format!("{name} is not a tracepoint program"))?;
            p.load().with_context(|| format!("loading {name}"))?;
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
        let u = Uprobes {
            set,
            procs,
            stats,
            tracepoints,
            targets: Mutex::new(Targets {
                only: only.to_vec(),
                set,
                ..Targets::default()
            }),
            cgroups: Mutex::new(cgroup::CgroupNames::default()),
        };
        u.rescan(ebpf);
        Ok(u)
    }

    /// Looks for targets again: probes new files, releases files no
    /// process maps any more.
    pub fn rescan(&self, ebpf: &mut Ebpf) {
        let started = Instant::now();
        // Scan without the lock (`annotate` needs it); only this task scans.
        let (mut verdicts, only) = {
            let mut t = lock(&self.targets);
            (std::mem::take(&mut t.verdicts), t.only.clone())
        };
        let found = if only.is_empty() {
            discover::scan(&mut verdicts)
        } else {
            discover::named(&only)
        };
        let scanned = started.elapsed();
        let mut t = lock(&self.targets);
        t.verdicts = verdicts;
        if t.system.is_none() {
            t.system = found.first().filter(|f| f.library).map(|f| f.id);
        }
        let live: HashSet<FileId> = found.iter().map(|f| f.id).collect();
        for target in &found {
            if !t.attached.contains_key(&target.id) && !t.failed.contains(&target.id) {
                t.add(ebpf, target);
            }
        }
        let gone: Vec<FileId> = t
            .attached
            .keys()
            .filter(|id| !live.contains(id) && Some(**id) != t.system && t.only.is_empty())
            .copied()
            .collect();
        for id in gone {
            if let Some(a) = t.attached.remove(&id) {
                let name = t
                    .cookies
                    .get(&id)
                    .and_then(|c| t.names.get(*c as usize))
                    .cloned()
                    .unwrap_or_default();
                tracing::info!(target = %name, "no process maps it any more: uprobes released");
                probes::detach(ebpf, a);
            }
        }
        tracing::debug!(
            scan = ?scanned,
            took = ?started.elapsed(),
            files = found.len(),
            probed = t.attached.len(),
            executables_inspected = t.verdicts.len(),
            "uprobe target scan"
        );
    }

    /// The files probed now and how many probes each has, as `hsmon status`
    /// lists them.
    pub fn libraries(&self) -> Vec<crate::api::status::Library> {
        let t = lock(&self.targets);
        let mut out: Vec<crate::api::status::Library> = t
            .attached
            .iter()
            .map(|(id, a)| crate::api::status::Library {
                path: t
                    .cookies
                    .get(id)
                    .and_then(|c| t.names.get(*c as usize))
                    .cloned()
                    .unwrap_or_default(),
                probes: a.len() as u64,
            })
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }

    /// The probe set attached.
    pub fn set(&self) -> UprobeSet {
        self.set
    }

    /// The tracepoints these probes added, as `hsmon status` lists them.
    pub fn tracepoints(&self) -> &[TracepointHook] {
        &self.tracepoints
    }

    /// Probe counters summed over CPUs: entry uprobe hits, return uprobe
    /// hits, send/recv tracepoint hits inside an SSL call, flows attributed
    /// (inside an SSL call), flows attributed by a send/recv outside one.
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
    /// `ssl_flows_attributed`, `ssl_flows_attributed_by_socket`.
    pub fn stats_by_name(&self) -> Result<Vec<(String, u64)>> {
        let s = self.stats()?;
        let out: Vec<(String, u64)> = STAT_NAMES
            .iter()
            .zip(s)
            .map(|(n, v)| ((*n).to_owned(), v))
            .collect();
        Ok(out)
    }

    /// Fills the process fields (and the `SSL_get_error` failure reasons)
    /// of every record whose flow has an entry in `PROCS`.
    pub fn annotate(&self, records: &mut [ConnRecord]) {
        let names = lock(&self.targets).names.clone();
        let mut cgroups = lock(&self.cgroups);
        for rec in records {
            let key = flow_key(rec);
            if let Ok(info) = self.procs.get(&key, 0) {
                rec.process = process_fields(&info, &names);
                rec.process.cgroup_path = cgroups.path(info.cgroup_id, info.tgid);
                rec.failure_reasons
                    .extend(ssl_error_reasons(info.ssl_errors));
            }
        }
    }
}

impl Targets {
    /// Probes one new file.
    fn add(&mut self, ebpf: &mut Ebpf, target: &Target) {
        let next = self.names.len() as u32;
        let cookie = *self.cookies.entry(target.id).or_insert(next);
        if cookie == next {
            self.names.push(target.display.clone());
        }
        match probes::attach(ebpf, &target.attach_path, u64::from(cookie), self.set) {
            Ok(a) => {
                tracing::info!(
                    target = %target.display,
                    kind = if target.library { "library" } else { "executable" },
                    probes = a.len(),
                    of = probes::probes_per_target(self.set),
                    set = self.set.name(),
                    "attached OpenSSL uprobes"
                );
                self.attached.insert(target.id, a);
            }
            Err(e) => {
                tracing::warn!("OpenSSL uprobes on {}: {e:#}", target.display);
                self.failed.insert(target.id);
            }
        }
    }
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

/// The record fields for one `PROCS` entry (`library` by attach cookie in
/// `libraries`; `cgroup_path` is filled by the caller).
fn process_fields(info: &ProcInfo, libraries: &[String]) -> ProcessFields {
    let timed = info.handshake_calls > 0;
    ProcessFields {
        pid: Some(info.tgid),
        comm: Some(String::from_utf8_lossy(comm_bytes(&info.comm)).into_owned()),
        cgroup_id: Some(info.cgroup_id),
        library: libraries.get(info.library as usize).cloned(),
        process_side: match info.side {
            SIDE_SERVER => Some("server".to_owned()),
            SIDE_CLIENT => Some("client".to_owned()),
            _ => None,
        },
        handshake_ms_last: timed.then(|| info.handshake_ns_last as f64 / 1e6),
        handshake_ms_max: timed.then(|| info.handshake_ns_max as f64 / 1e6),
        handshake_failures: Some(info.handshake_failures),
        cgroup_path: None,
        local_renegotiate_calls: Some(info.local_renegotiate_calls),
        local_key_update_calls: Some(info.local_key_update_calls),
    }
}

/// `SSL_get_error` results that say why a handshake call failed, by name;
/// the `SSL_ERROR_WANT_*` retries (and `SSL_ERROR_NONE`) are left out:
/// they are not failures. Bit `n` of `mask` is result `n`.
pub fn ssl_error_reasons(mask: u32) -> Vec<FailureReason> {
    (0..32u32)
        .filter(|n| mask & (1 << n) != 0)
        .filter_map(|n| {
            let name = match n {
                1 => "SSL_ERROR_SSL".to_owned(),
                5 => "SSL_ERROR_SYSCALL".to_owned(),
                6 => "SSL_ERROR_ZERO_RETURN".to_owned(),
                0 | 2 | 3 | 4 | 7..=12 => return None,
                n => format!("SSL_ERROR_{n}"),
            };
            Some(FailureReason::SslGetError { error: name })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_key_matches_the_kernel_key() {
        let (key, value) = crate::agent::ingest::record::tests::sample_flow();
        let rec = ConnRecord::from_flow(
            &key,
            &value,
            crate::agent::ingest::record::ConnState::Open,
            0,
        );
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
            local_renegotiate_calls: 2,
            local_key_update_calls: 3,
            ..ProcInfo::default()
        };
        info.comm[..7].copy_from_slice(b"python3");
        let f = process_fields(&info, &[SYSTEM_LIBSSL.to_owned()]);
        assert_eq!(f.pid, Some(77));
        assert_eq!(f.comm.as_deref(), Some("python3"));
        assert_eq!(f.library.as_deref(), Some(SYSTEM_LIBSSL));
        assert_eq!(f.process_side.as_deref(), Some("server"));
        assert_eq!(f.handshake_ms_last, Some(1.5));
        assert_eq!(f.handshake_ms_max, Some(52.0));
        assert_eq!(f.local_renegotiate_calls, Some(2));
        assert_eq!(f.local_key_update_calls, Some(3));
        info.handshake_calls = 0;
        let f = process_fields(&info, &[]);
        assert_eq!(f.handshake_ms_max, None);
        assert_eq!(f.library, None);
    }

    #[test]
    fn every_probe_counted() {
        // 3 + 3 handshake, 2 renegotiate, key update.
        assert_eq!(probes::probes_per_target(UprobeSet::Handshake), 9);
        // ... plus 4 read/write, SSL_get_error entry and return, free.
        assert_eq!(probes::probes_per_target(UprobeSet::Full), 16);
        assert_eq!(probes::probes_per_target(UprobeSet::Off), 0);
    }
}
