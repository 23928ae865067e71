//! Memory: kernel bytes per tracked flow and per ban, total map memory at
//! the default sizes, and the agent's resident memory with 100,000 tracked
//! connections (`cargo xtask bench` runs this as root; prints `BENCH_ROW`
//! lines, see [`tests::bench`]).
//!
//! Kernel figures: key and value sizes from `monitor-common`'s types, and
//! the `memlock` the kernel charges each map (`/proc/self/fdinfo/FD`) of the
//! object loaded exactly as the agent loads it (`monitor::agent::kernel::loader`).
//! `FLOWS` is a preallocated LRU hash (its memlock is the full capacity);
//! the ban tries allocate per entry, so their per-entry cost is the growth
//! of memlock after inserting bans.
//!
//! Agent figure: a real `hsmon run` (on a veth in namespaces this creates)
//! with `--flow-map-size 131072`; 100,000 flows are written into its pinned
//! `FLOWS` map (distinct client addresses, handshake done), then its
//! `VmRSS` is read every 250 ms over several 1-second sweeps.

use anyhow::{bail, Context, Result};
use aya::maps::{lpm_trie::Key, HashMap, LpmTrie, Map, MapData, MapInfo};
use monitor::agent::kernel::loader;
use monitor_common::ban::{v4_key_data, BanValue, BAN_REASON_MANUAL, MAX_BANS_PER_FAMILY};
use monitor_common::flow::{ipv4_mapped, FlowKey, FlowValue};
use monitor_common::ssl::ProcInfo;
use monitor_common::tracker::FF_FIRST_HS_DONE;
use std::time::{Duration, Instant};
use tests::bench::{self, status_kib, Goal, Row};
use tests::hsmon::Agent;
use tests::netns::NetPair;
use tests::workdir::WorkDir;

const SECTION: &str = "memory";
const DEFAULT_FLOWS: u32 = 65536;
const TRACKED: u32 = 100_000;

/// One map of this process: name, capacity, memlock.
struct MapMem {
    name: String,
    max_entries: u32,
    key_size: u32,
    value_size: u32,
    memlock: u64,
}

/// Every BPF map this process holds an fd of.
fn own_maps() -> Result<Vec<MapMem>> {
    let pid = std::process::id();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc/self/fd").context("listing /proc/self/fd")? {
        let e = e.context("reading /proc/self/fd")?;
        let Ok(link) = std::fs::read_link(e.path()) else {
            continue;
        };
        if link.to_string_lossy() != "anon_inode:bpf-map" {
            continue;
        }
        let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
            .with_context(|| format!("fdinfo of fd {fd}"))?;
        let field = |k: &str| -> Option<u64> {
            info.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}:")))
                .and_then(|v| v.trim().parse().ok())
        };
        let id = field("map_id").context("map_id")? as u32;
        let name = MapInfo::from_id(id)
            .ok()
            .and_then(|i| i.name_as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("map {id}"));
        out.push(MapMem {
            name,
            max_entries: field("max_entries").unwrap_or(0) as u32,
            key_size: field("key_size").unwrap_or(0) as u32,
            value_size: field("value_size").unwrap_or(0) as u32,
            memlock: field("memlock").context("memlock")?,
        });
    }
    Ok(out)
}

fn find<'a>(maps: &'a [MapMem], name: &str) -> Result<&'a MapMem> {
    maps.iter()
        .find(|m| m.name == name)
        .with_context(|| format!("no map {name} among this process's maps"))
}

fn kernel_rows() -> Result<()> {
    let flow_kv = std::mem::size_of::<FlowKey>() + std::mem::size_of::<FlowValue>();
    Row::new(
        SECTION,
        "FLOWS entry: key + value (FlowKey + FlowValue)",
        flow_kv as f64,
        "bytes",
        &format!(
            "size_of FlowKey {} + FlowValue {}",
            std::mem::size_of::<FlowKey>(),
            std::mem::size_of::<FlowValue>()
        ),
    )
    .emit();

    let ebpf = loader::load(DEFAULT_FLOWS, loader::DEFAULT_EVENTS_RING_SIZE)?;
    let maps = own_maps()?;
    let flows = find(&maps, "FLOWS")?;
    Row::new(
        SECTION,
        "kernel bytes per tracked flow (FLOWS memlock / capacity)",
        flows.memlock as f64 / f64::from(flows.max_entries),
        "bytes",
        &format!(
            "FLOWS: LRU hash, key {} + value {} bytes, {} entries preallocated, memlock {} bytes \
             (the kernel's element header and per-CPU LRU lists included)",
            flows.key_size, flows.value_size, flows.max_entries, flows.memlock
        ),
    )
    .target(Goal::AtMost, 128.0)
    .emit();
    let procs = find(&maps, "PROCS")?;
    Row::new(
        SECTION,
        "kernel bytes per attributed flow (PROCS, uprobes on)",
        procs.memlock as f64 / f64::from(procs.max_entries),
        "bytes",
        &format!(
            "PROCS: LRU hash FlowKey -> ProcInfo ({} bytes), {} entries, memlock {} bytes",
            std::mem::size_of::<ProcInfo>(),
            procs.max_entries,
            procs.memlock
        ),
    )
    .emit();
    let total: u64 = maps.iter().map(|m| m.memlock).sum();
    let listing = maps
        .iter()
        .map(|m| format!("{} {} B ({} entries)", m.name, m.memlock, m.max_entries))
        .collect::<Vec<_>>()
        .join(", ");
    Row::new(
        SECTION,
        "total kernel map memory at the default sizes",
        total as f64 / (1024.0 * 1024.0),
        "MiB",
        &format!("memlock of every map of the object as the agent loads it: {listing}"),
    )
    .emit();
    Row::new(
        SECTION,
        "default FLOWS capacity (tracked flows)",
        f64::from(flows.max_entries),
        "flows",
        "--flow-map-size default; the issue asks the default maps to hold 1,000,000 flows",
    )
    .target(Goal::AtLeast, 1_000_000.0)
    .emit();
    drop(ebpf);

    // What 1,000,000 flows would take.
    let big = loader::load(1_000_000, loader::DEFAULT_EVENTS_RING_SIZE)?;
    let maps = own_maps()?;
    let flows = find(&maps, "FLOWS")?;
    Row::new(
        SECTION,
        "FLOWS memory at 1,000,000 flows (--flow-map-size 1000000)",
        flows.memlock as f64 / (1024.0 * 1024.0),
        "MiB",
        &format!("memlock {} bytes", flows.memlock),
    )
    .emit();
    drop(big);

    // Bans: memlock growth of BANS_V4 per inserted ban.
    let mut ebpf = loader::load(DEFAULT_FLOWS, loader::DEFAULT_EVENTS_RING_SIZE)?;
    let before = find(&own_maps()?, "BANS_V4")?.memlock;
    let n: u32 = 10_000;
    {
        let mut trie: LpmTrie<&mut MapData, u32, BanValue> =
            LpmTrie::try_from(ebpf.map_mut("BANS_V4").context("no BANS_V4")?)?;
        let value = BanValue::new(u64::MAX, BAN_REASON_MANUAL);
        for i in 0..n {
            let ip = 0x0a50_0000u32 + i; // 10.80.x.y
            trie.insert(&Key::new(32, v4_key_data(ip.to_be_bytes())), value, 0)
                .context("inserting a ban")?;
        }
    }
    let after = find(&own_maps()?, "BANS_V4")?.memlock;
    Row::new(
        SECTION,
        "kernel bytes per ban (BANS_V4 LPM trie entry)",
        (after - before) as f64 / f64::from(n),
        "bytes",
        &format!(
            "memlock growth after {n} /32 bans ({before} -> {after} bytes); key {} + value {} bytes; \
             capacity {MAX_BANS_PER_FAMILY} per family",
            std::mem::size_of::<u32>() * 2,
            std::mem::size_of::<BanValue>()
        ),
    )
    .emit();
    Row::new(
        SECTION,
        "kernel bytes per tracked peer (rate windows)",
        0.0,
        "bytes",
        "per-peer handshake and renegotiation windows live in the agent, not in the kernel; \
         a peer costs kernel memory only when banned (row above)",
    )
    .emit();
    Ok(())
}

fn agent_rows() -> Result<()> {
    let dir = WorkDir::new("bench-memory")?;
    let net = NetPair::create()?;
    let config = dir.join("policy.toml");
    // No handshake timeout (the synthetic flows never finish a handshake on
    // the wire) and no handshake alerts: the agent only tracks.
    std::fs::write(&config, "[limits]\nhandshake_timeout = \"0s\"\n")?;
    let agent = Agent::start_with_args(
        &net,
        dir.path(),
        &[
            "--flow-map-size".into(),
            "131072".into(),
            "--config".into(),
            config.display().to_string(),
            "--metrics-addr".into(),
            "off".into(),
        ],
    )?;
    let pid = agent.pid();
    std::thread::sleep(Duration::from_secs(2));
    let rss_idle = status_kib(pid, "VmRSS")?;
    let flows_pin = pinned_flows(&agent)?;
    let data = MapData::from_pin(&flows_pin)
        .with_context(|| format!("opening {}", flows_pin.display()))?;
    let mut flows: HashMap<MapData, FlowKey, FlowValue> =
        HashMap::try_from(Map::from_map_data(data)?).context("FLOWS type")?;
    let now = monitor::agent::kernel::clock::monotonic_now_ns();
    let server = ipv4_mapped([10, 81, 0, 1]);
    let t0 = Instant::now();
    for i in 0..TRACKED {
        let c = 0x0a52_0000u32 + i; // 10.82.0.0/15: one address per flow
        let client = ipv4_mapped(c.to_be_bytes());
        let (key, client_is_a) = FlowKey::from_endpoints(&client, 40000, &server, 443);
        let mut v = FlowValue {
            first_seen_ns: now,
            last_seen_ns: now,
            client_is_a: u8::from(client_is_a),
            ..FlowValue::default()
        };
        v.tracker.flags |= FF_FIRST_HS_DONE;
        flows.insert(key, v, 0).context("writing FLOWS")?;
    }
    let fill_s = t0.elapsed().as_secs_f64();
    let mut peak = rss_idle;
    let mut samples = Vec::new();
    let watch = Duration::from_secs(bench::scale(8, 4));
    let t1 = Instant::now();
    while t1.elapsed() < watch {
        std::thread::sleep(Duration::from_millis(250));
        let rss = status_kib(pid, "VmRSS")?;
        peak = peak.max(rss);
        samples.push(rss as f64);
    }
    let status = agent.cli(&["status", "--json"])?;
    let status: serde_json::Value = serde_json::from_str(&status)?;
    let entries = status["maps"]["flows"]["entries"].as_u64().unwrap_or(0);
    if entries < u64::from(TRACKED) {
        bail!("hsmon status counts {entries} flows, not {TRACKED}");
    }
    let steady = bench::median(&samples);
    Row::new(
        SECTION,
        "agent RSS, idle (no flows)",
        rss_idle as f64 / 1024.0,
        "MiB",
        "VmRSS of hsmon run 2 s after start",
    )
    .emit();
    Row::new(
        SECTION,
        "agent RSS with 100,000 tracked connections",
        steady / 1024.0,
        "MiB",
        &format!(
            "median VmRSS over {}s of 1-s sweeps after writing {TRACKED} flows into the pinned FLOWS \
             ({fill_s:.2}s to write); peak {:.1} MiB; hsmon status saw {entries} flows",
            watch.as_secs(),
            peak as f64 / 1024.0
        ),
    )
    .emit();
    Row::new(
        SECTION,
        "agent memory per tracked connection",
        (steady - rss_idle as f64) * 1024.0 / f64::from(TRACKED),
        "bytes",
        "(median RSS with the flows - idle RSS) / 100,000; each flow has its own client address, so \
         this includes the policy's state for 100,000 peers",
    )
    .emit();
    Ok(())
}

/// The agent's pinned FLOWS map (`PIN_DIR/maps-v*/FLOWS`).
fn pinned_flows(agent: &Agent) -> Result<std::path::PathBuf> {
    let pin_dir = &agent.state().pin_dir;
    for e in std::fs::read_dir(pin_dir).with_context(|| format!("listing {}", pin_dir.display()))? {
        let p = e?.path().join("FLOWS");
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("no pinned FLOWS under {}", pin_dir.display())
}

fn main() -> Result<()> {
    if let Err(e) = kernel_rows() {
        bench::emit_error(SECTION, "kernel map memory", &e);
    }
    if let Err(e) = agent_rows() {
        bench::emit_error(SECTION, "agent RSS with 100,000 tracked connections", &e);
    }
    Ok(())
}
