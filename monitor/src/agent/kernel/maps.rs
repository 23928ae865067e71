//! The kernel's maps as the agent uses them: `FLOWS` as a [`FlowStore`],
//! `STATS` summed per name, `CONFIG` written once, `EVENTS` handed to the
//! reader.

use std::collections::{BTreeMap, HashSet};

use anyhow::{anyhow, Context as _, Result};
use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray, RingBuf};
use aya::Ebpf;
use monitor_common::flow::{FlowKey, FlowValue, Stat, TrackerConfig, MAX_PORTS};

/// The name of `STATS` slot `index` (`stat_N` for slots this build does not know).
pub fn stat_name(index: u32) -> String {
    match Stat::ALL.get(index as usize) {
        Some(stat) => stat.name().to_owned(),
        None => format!("stat_{index}"),
    }
}

/// Where live flows are kept: the kernel's `FLOWS` map, or a test double.
pub trait FlowStore {
    /// Every entry at this moment. Entries the kernel deletes while this runs
    /// are skipped, not errors.
    fn entries(&self) -> Result<Vec<(FlowKey, FlowValue)>>;
    /// The entry for `key`, if any.
    fn lookup(&self, key: &FlowKey) -> Result<Option<FlowValue>>;
    /// Deletes `key`; deleting a missing key is not an error.
    fn delete(&mut self, key: &FlowKey) -> Result<()>;
}

/// The `FLOWS` LRU hash.
pub struct KernelFlows {
    map: HashMap<MapData, FlowKey, FlowValue>,
    max_entries: u32,
}

impl FlowStore for KernelFlows {
    fn entries(&self) -> Result<Vec<(FlowKey, FlowValue)>> {
        // Keys can vanish (LRU eviction, the kernel's own deletes) while we
        // walk; the kernel then restarts the walk, so bound it and dedupe.
        let limit = (self.max_entries as usize).saturating_mul(2).max(64);
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for key in self.map.keys().take(limit) {
            let key = match key {
                Ok(k) => k,
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(e).context("walking the FLOWS map"),
            };
            if !seen.insert(key) {
                continue;
            }
            if let Some(value) = self.lookup(&key)? {
                out.push((key, value));
            }
        }
        Ok(out)
    }

    fn lookup(&self, key: &FlowKey) -> Result<Option<FlowValue>> {
        match self.map.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).context("reading the FLOWS map"),
        }
    }

    fn delete(&mut self, key: &FlowKey) -> Result<()> {
        match self.map.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e).context("deleting from the FLOWS map"),
        }
    }
}

/// The `STATS` per-CPU counters.
pub struct KernelStats(PerCpuArray<MapData, u64>);

impl KernelStats {
    /// Every slot summed over CPUs, by name.
    pub fn read(&self) -> Result<BTreeMap<String, u64>> {
        let mut out = BTreeMap::new();
        for index in 0..self.0.len() {
            let per_cpu = self.0.get(&index, 0).context("reading the STATS map")?;
            let sum = per_cpu.iter().fold(0u64, |acc, v| acc.wrapping_add(*v));
            out.insert(stat_name(index), sum);
        }
        Ok(out)
    }
}

/// The maps the agent keeps once the object is loaded.
pub struct Maps {
    /// `FLOWS`.
    pub flows: KernelFlows,
    /// `EVENTS`.
    pub events: RingBuf<MapData>,
    /// `STATS`.
    pub stats: KernelStats,
}

/// Takes `FLOWS`, `EVENTS` and `STATS` out of the object.
pub fn take(ebpf: &mut Ebpf, flow_map_size: u32) -> Result<Maps> {
    let mut take = |name: &str| {
        ebpf.take_map(name)
            .ok_or_else(|| anyhow!("the eBPF object has no map {name}"))
    };
    let flows = HashMap::try_from(take("FLOWS")?).context("FLOWS is not a hash map")?;
    let events = RingBuf::try_from(take("EVENTS")?).context("EVENTS is not a ring buffer")?;
    let stats = PerCpuArray::try_from(take("STATS")?).context("STATS is not a per-CPU array")?;
    Ok(Maps {
        flows: KernelFlows {
            map: flows,
            max_entries: flow_map_size,
        },
        events,
        stats: KernelStats(stats),
    })
}

/// The tracker settings for a port filter (empty: every port).
pub fn tracker_config(ports: &[u16]) -> TrackerConfig {
    let mut cfg = TrackerConfig::default();
    let n = ports.len().min(MAX_PORTS);
    cfg.ports[..n].copy_from_slice(&ports[..n]);
    cfg.port_count = n as u32;
    cfg
}

/// Writes `CONFIG[0]`.
pub fn write_config(ebpf: &mut Ebpf, cfg: &TrackerConfig) -> Result<()> {
    let map = ebpf
        .map_mut("CONFIG")
        .ok_or_else(|| anyhow!("the eBPF object has no map CONFIG"))?;
    let mut config: Array<&mut MapData, TrackerConfig> =
        Array::try_from(map).context("CONFIG is not an array")?;
    config.set(0, cfg, 0).context("writing the CONFIG map")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use monitor_common::flow::STAT_COUNT;

    #[test]
    fn every_stat_has_a_name() {
        for i in 0..STAT_COUNT {
            assert!(
                !stat_name(i).starts_with("stat_"),
                "STATS slot {i} has no name"
            );
        }
        assert_eq!(stat_name(Stat::EventsLost as u32), "events_lost");
        assert_eq!(stat_name(99), "stat_99");
    }

    #[test]
    fn config_from_ports() {
        assert_eq!(tracker_config(&[]).port_count, 0);
        let cfg = tracker_config(&[443, 8443]);
        assert_eq!(cfg.port_count, 2);
        assert_eq!(&cfg.ports[..3], &[443, 8443, 0]);
        let many: Vec<u16> = (1..=40).collect();
        assert_eq!(tracker_config(&many).port_count, MAX_PORTS as u32);
    }
}
