//! The real TC program under `BPF_PROG_TEST_RUN`: load it, run crafted
//! packets through it, read its maps.

use anyhow::{Context, Result};
use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, HashMap, MapData, PerCpuArray, RingBuf,
    },
    programs::SchedClassifier,
    Ebpf, EbpfLoader, TestRun, TestRunOptions,
};
use monitor_common::ban::{v4_key_data, BanValue};
use monitor_common::flow::{
    addr_from_bytes, ipv4_mapped, Addr, FlowEvent, FlowKey, FlowValue, Stat, TrackerConfig,
};
use std::net::IpAddr;

use crate::packet::{flags, tcp_segment, Endpoint};
use monitor_common::testing::{Driver, Step};

/// `TC_ACT_UNSPEC`: what the program returns for every packet it lets pass.
pub const TC_ACT_UNSPEC: u32 = u32::MAX;

/// `TC_ACT_SHOT`: what ingress returns for a packet from a banned source.
pub const TC_ACT_SHOT: u32 = 2;

/// The name of the program the harness runs.
pub const PROGRAM: &str = "hsmon_tc_ingress";

/// hsmon's eBPF object with its TC ingress program loaded (not attached).
pub struct TcHarness {
    ebpf: Ebpf,
    name: &'static str,
}

impl TcHarness {
    /// Loads the object hsmon ships and the ingress program; fresh, empty maps.
    pub fn load() -> Result<Self> {
        Self::load_program(PROGRAM)
    }

    /// Loads the object hsmon ships and the TC program `name` (e.g.
    /// `hsmon_tc_noop`, the benchmark baseline); fresh, empty maps.
    pub fn load_program(name: &'static str) -> Result<Self> {
        let ebpf = EbpfLoader::new()
            .load(monitor::ebpf_object())
            .context("loading hsmon's eBPF object")?;
        let mut h = TcHarness { ebpf, name };
        h.program()?
            .load()
            .with_context(|| format!("the verifier refused {name}"))?;
        Ok(h)
    }

    fn program(&mut self) -> Result<&mut SchedClassifier> {
        let name = self.name;
        self.ebpf
            .program_mut(name)
            .with_context(|| format!("no program {name} in the object"))?
            .try_into()
            .with_context(|| format!("{name} is not a TC program"))
    }

    /// Runs one packet (an Ethernet frame) through the program `repeat` times;
    /// returns (return value, average run time reported by the kernel).
    pub fn run_repeat(&mut self, frame: &[u8], repeat: u32) -> Result<(u32, std::time::Duration)> {
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        };
        let r = self
            .program()?
            .test_run(opts)
            .context("BPF_PROG_TEST_RUN")?;
        Ok((r.return_value, r.duration))
    }

    /// The instructions the verifier processed when it loaded the program
    /// (`None` on kernels that do not report it).
    pub fn verified_instructions(&mut self) -> Result<Option<u32>> {
        let info = self.program()?.info().context("program info")?;
        Ok(info.verified_instruction_count())
    }

    /// Runs one packet once; returns the program's return value.
    pub fn run(&mut self, frame: &[u8]) -> Result<u32> {
        Ok(self.run_repeat(frame, 1)?.0)
    }

    fn flows(&self) -> Result<HashMap<&MapData, FlowKey, FlowValue>> {
        HashMap::try_from(self.ebpf.map("FLOWS").context("no FLOWS map")?).context("FLOWS map type")
    }

    /// The kernel's state for the flow between `client` and `server`.
    pub fn flow(&self, client: Endpoint, server: Endpoint) -> Result<Option<FlowValue>> {
        let (key, _) = FlowKey::from_endpoints(
            &addr16(client.ip),
            client.port,
            &addr16(server.ip),
            server.port,
        );
        match self.flows()?.get(&key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).context("reading FLOWS"),
        }
    }

    /// Number of flows in `FLOWS`.
    pub fn flow_count(&self) -> Result<usize> {
        let mut n = 0;
        for key in self.flows()?.keys() {
            key.context("iterating FLOWS")?;
            n += 1;
        }
        Ok(n)
    }

    /// Removes a flow (so the next packet starts it afresh).
    pub fn forget_flow(&mut self, client: Endpoint, server: Endpoint) -> Result<()> {
        let (key, _) = FlowKey::from_endpoints(
            &addr16(client.ip),
            client.port,
            &addr16(server.ip),
            server.port,
        );
        let mut flows: HashMap<&mut MapData, FlowKey, FlowValue> =
            HashMap::try_from(self.ebpf.map_mut("FLOWS").context("no FLOWS map")?)
                .context("FLOWS map type")?;
        match flows.remove(&key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(())
            }
            Err(e) => Err(e).context("deleting from FLOWS"),
        }
    }

    /// Puts a ban on `cidr` (an address or prefix) into `BANS_V4`/`BANS_V6`,
    /// ending at `expires_ns` (`CLOCK_MONOTONIC`), with reason code `reason`.
    /// `BAN_COUNT` is not touched: see [`TcHarness::set_ban_count`].
    pub fn ban(&mut self, cidr: &str, expires_ns: u64, reason: u32) -> Result<()> {
        let cidr: monitor::api::cidr::Cidr = cidr.parse().with_context(|| format!("ban {cidr}"))?;
        let value = BanValue::new(expires_ns, reason);
        match cidr.addr() {
            IpAddr::V4(a) => {
                let mut m: LpmTrie<&mut MapData, u32, BanValue> =
                    LpmTrie::try_from(self.ebpf.map_mut("BANS_V4").context("no BANS_V4 map")?)
                        .context("BANS_V4 map type")?;
                m.insert(
                    &Key::new(cidr.prefix_len(), v4_key_data(a.octets())),
                    value,
                    0,
                )
                .context("writing BANS_V4")
            }
            IpAddr::V6(a) => {
                let mut m: LpmTrie<&mut MapData, [u32; 4], BanValue> =
                    LpmTrie::try_from(self.ebpf.map_mut("BANS_V6").context("no BANS_V6 map")?)
                        .context("BANS_V6 map type")?;
                m.insert(
                    &Key::new(cidr.prefix_len(), addr_from_bytes(&a.octets())),
                    value,
                    0,
                )
                .context("writing BANS_V6")
            }
        }
    }

    /// Writes `BAN_COUNT[0]` (0 makes the program skip the ban check).
    pub fn set_ban_count(&mut self, n: u32) -> Result<()> {
        let mut m: Array<&mut MapData, u32> =
            Array::try_from(self.ebpf.map_mut("BAN_COUNT").context("no BAN_COUNT map")?)
                .context("BAN_COUNT map type")?;
        m.set(0, n, 0).context("writing BAN_COUNT")
    }

    /// Writes `CONFIG[0]` (port filter, renegotiation cap).
    pub fn set_config(&mut self, cfg: &TrackerConfig) -> Result<()> {
        let mut m: Array<&mut MapData, TrackerConfig> =
            Array::try_from(self.ebpf.map_mut("CONFIG").context("no CONFIG map")?)
                .context("CONFIG map type")?;
        m.set(0, cfg, 0).context("writing CONFIG")
    }

    /// Takes every event waiting in the `EVENTS` ring buffer.
    pub fn drain_events(&mut self) -> Result<Vec<FlowEvent>> {
        let mut ring = RingBuf::try_from(self.ebpf.map_mut("EVENTS").context("no EVENTS map")?)
            .context("EVENTS map type")?;
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            anyhow::ensure!(
                item.len() >= std::mem::size_of::<FlowEvent>(),
                "short event: {} bytes",
                item.len()
            );
            // SAFETY: FlowEvent is plain integers; the length was checked.
            out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<FlowEvent>()) });
        }
        Ok(out)
    }

    /// A `STATS` counter summed over CPUs.
    pub fn stat(&self, stat: Stat) -> Result<u64> {
        let stats: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map("STATS").context("no STATS map")?)
                .context("STATS map type")?;
        let per_cpu = stats.get(&(stat as u32), 0).context("reading STATS")?;
        Ok(per_cpu.iter().sum())
    }

    /// `STATS[Segments]` summed over CPUs: TCP segments with payload seen.
    pub fn stat_segments(&self) -> Result<u64> {
        let stats: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map("STATS").context("no STATS map")?)
                .context("STATS map type")?;
        let per_cpu = stats
            .get(&(Stat::Segments as u32), 0)
            .context("reading STATS")?;
        Ok(per_cpu.iter().sum())
    }
}

/// An address as the flow key stores it (IPv4-mapped IPv6 for IPv4).
pub fn addr16(ip: IpAddr) -> Addr {
    match ip {
        IpAddr::V4(v4) => ipv4_mapped(v4.octets()),
        IpAddr::V6(v6) => addr_from_bytes(&v6.octets()),
    }
}

/// The Ethernet frame for one step of a plan: the segment's bytes with the
/// sequence number `driver` gives them, or a bare FIN for a close. `ends` is
/// `[client, server]`.
pub fn frame(ends: [Endpoint; 2], driver: &Driver, step: Step) -> Vec<u8> {
    match step {
        Step::Seg { dir, start, end } => tcp_segment(
            ends[dir],
            ends[1 - dir],
            driver.seq(dir, start),
            flags::ACK | flags::PSH,
            &driver.streams[dir][start..end],
        ),
        Step::Close(dir) => tcp_segment(
            ends[dir],
            ends[1 - dir],
            driver.seq(dir, driver.streams[dir].len()),
            flags::ACK | flags::FIN,
            &[],
        ),
    }
}
