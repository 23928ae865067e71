//! The agent's side of bans: the kernel's `BANS_V4` / `BANS_V6` tries and
//! `BAN_COUNT` (layout: `monitor_common::ban`), the allowlist and the sweep
//! that removes expired bans (the control API's ban routes are
//! `crate::agent::publish::routes::bans`; `crate::api::bans` documents them).
//!
//! The agent owns the maps: [`BanTable`] keeps every ban it put there (with
//! its reason text) and writes `BAN_COUNT` after each change, so the count is
//! the number of entries in both tries. The kernel checks expiry on every
//! packet; the sweep only frees the entries of bans that already ended.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use axum::http::StatusCode;
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, MapData, MapError};
use aya::Ebpf;
use monitor_common::ban::{
    v4_key_data, BanAddrV4, BanAddrV6, BanValue, BAN_REASON_MANUAL, MAX_BANS_PER_FAMILY,
};
use monitor_common::flow::addr_from_bytes;

mod allowlist;

use crate::api::bans::{check_reason, check_ttl, BanRecord, ADDED_BY_MANUAL};
use crate::api::cidr::Cidr;
pub use allowlist::allowlist;

/// How often expired bans are removed from the maps (the pipeline's ban timer).
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// One ban as the state file keeps it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedBan {
    /// The banned prefix (`"192.0.2.7/32"`).
    pub cidr: String,
    /// The reason text.
    pub reason: String,
    /// The kernel reason code (`BAN_REASON_*`).
    pub code: u32,
    /// When it ends (`CLOCK_MONOTONIC` ns).
    pub expires_ns: u64,
}

/// Name of the IPv4 ban trie.
pub const MAP_BANS_V4: &str = "BANS_V4";
/// Name of the IPv6 ban trie.
pub const MAP_BANS_V6: &str = "BANS_V6";
/// Name of the ban count array.
pub const MAP_BAN_COUNT: &str = "BAN_COUNT";

/// Why a ban change was refused; each maps to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum BanError {
    /// The prefix overlaps an allowlisted prefix.
    #[error("{cidr} cannot be banned: it overlaps the allowlisted {allowed} (loopback, this host's own addresses and `hsmon run --allow` are never banned)")]
    Allowlisted {
        /// The prefix asked for.
        cidr: Cidr,
        /// The allowlist entry it overlaps.
        allowed: Cidr,
    },
    /// No ban on exactly that prefix.
    #[error("{0} is not banned (`hsmon bans` lists the bans)")]
    NotFound(Cidr),
    /// A bad prefix, TTL or reason.
    #[error("{0}")]
    Invalid(String),
    /// The family's trie is full.
    #[error("cannot ban {cidr}: the {family} ban map is full ({max} entries)")]
    Full {
        /// The prefix asked for.
        cidr: Cidr,
        /// `"IPv4"` or `"IPv6"`.
        family: &'static str,
        /// The map's capacity.
        max: u32,
    },
    /// A map operation failed.
    #[error(transparent)]
    Kernel(#[from] anyhow::Error),
}

impl BanError {
    /// The HTTP status the control API answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            BanError::Allowlisted { .. } => StatusCode::CONFLICT,
            BanError::NotFound(_) => StatusCode::NOT_FOUND,
            BanError::Invalid(_) => StatusCode::BAD_REQUEST,
            BanError::Full { .. } => StatusCode::INSUFFICIENT_STORAGE,
            BanError::Kernel(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Where bans are enforced: the kernel's maps, or a fake in unit tests.
pub trait BanMaps: Send {
    /// Inserts or replaces the entry for `cidr`.
    fn insert(&mut self, cidr: &Cidr, value: &BanValue) -> Result<()>;
    /// Removes the entry for exactly `cidr` (absent is fine).
    fn remove(&mut self, cidr: &Cidr) -> Result<()>;
    /// Writes `BAN_COUNT`.
    fn set_count(&mut self, count: u32) -> Result<()>;
}

/// The kernel's `BANS_V4`, `BANS_V6` and `BAN_COUNT`.
pub struct KernelBans {
    v4: LpmTrie<MapData, BanAddrV4, BanValue>,
    v6: LpmTrie<MapData, BanAddrV6, BanValue>,
    count: Array<MapData, u32>,
}

impl KernelBans {
    /// Takes the three maps out of the loaded object.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow!("the eBPF object has no map {name}"))
        };
        Ok(KernelBans {
            v4: LpmTrie::try_from(take(MAP_BANS_V4)?)
                .with_context(|| format!("{MAP_BANS_V4} is not an LPM trie"))?,
            v6: LpmTrie::try_from(take(MAP_BANS_V6)?)
                .with_context(|| format!("{MAP_BANS_V6} is not an LPM trie"))?,
            count: Array::try_from(take(MAP_BAN_COUNT)?)
                .with_context(|| format!("{MAP_BAN_COUNT} is not an array"))?,
        })
    }
}

impl KernelBans {
    /// Every entry of both tries, as the kernel holds them (a restarted
    /// agent's starting point). Bounded: at most the tries' capacity, twice.
    pub fn entries(&self) -> Result<Vec<(Cidr, BanValue)>> {
        let limit = 2 * MAX_BANS_PER_FAMILY as usize;
        let mut out = Vec::new();
        for item in self.v4.iter().take(limit) {
            let (key, value) = match item {
                Ok(kv) => kv,
                Err(e) if not_found(&e) => continue,
                Err(e) => return Err(e).with_context(|| format!("reading {MAP_BANS_V4}")),
            };
            let addr = IpAddr::V4(Ipv4Addr::from(key.data().to_ne_bytes()));
            if let Ok(c) = Cidr::new(addr, key.prefix_len()) {
                out.push((c, value));
            }
        }
        for item in self.v6.iter().take(limit) {
            let (key, value) = match item {
                Ok(kv) => kv,
                Err(e) if not_found(&e) => continue,
                Err(e) => return Err(e).with_context(|| format!("reading {MAP_BANS_V6}")),
            };
            let addr = IpAddr::V6(Ipv6Addr::from(monitor_common::flow::addr_bytes(
                &key.data(),
            )));
            if let Ok(c) = Cidr::new(addr, key.prefix_len()) {
                out.push((c, value));
            }
        }
        out.sort_by_key(|(c, _)| *c);
        out.dedup_by_key(|(c, _)| *c);
        Ok(out)
    }
}

/// The reason text of a ban found in the kernel maps that the state file
/// does not describe.
pub const RESTORED_REASON: &str = "restored";

/// Whether a map error means "no such key".
fn not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(s) => s.io_error.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}

impl BanMaps for KernelBans {
    fn insert(&mut self, cidr: &Cidr, value: &BanValue) -> Result<()> {
        match cidr.addr() {
            IpAddr::V4(a) => self
                .v4
                .insert(
                    &Key::new(cidr.prefix_len(), v4_key_data(a.octets())),
                    value,
                    0,
                )
                .with_context(|| format!("writing {cidr} to {MAP_BANS_V4}")),
            IpAddr::V6(a) => self
                .v6
                .insert(
                    &Key::new(cidr.prefix_len(), addr_from_bytes(&a.octets())),
                    value,
                    0,
                )
                .with_context(|| format!("writing {cidr} to {MAP_BANS_V6}")),
        }
    }

    fn remove(&mut self, cidr: &Cidr) -> Result<()> {
        let r = match cidr.addr() {
            IpAddr::V4(a) => self
                .v4
                .remove(&Key::new(cidr.prefix_len(), v4_key_data(a.octets()))),
            IpAddr::V6(a) => self
                .v6
                .remove(&Key::new(cidr.prefix_len(), addr_from_bytes(&a.octets()))),
        };
        match r {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {cidr} from the ban maps")),
        }
    }

    fn set_count(&mut self, count: u32) -> Result<()> {
        self.count
            .set(0, count, 0)
            .with_context(|| format!("writing {MAP_BAN_COUNT}"))
    }
}

/// One ban the agent put into the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
struct BanEntry {
    value: BanValue,
    reason: String,
}

/// What a [`BanTable`] just did to a ban.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BanChange {
    /// The ban entered the maps, or an existing one got a new TTL/reason.
    Added,
    /// The ban was removed before its end.
    Removed,
    /// The ban reached its end and was removed from the maps.
    Expired,
}

/// Told of every change at the moment the table makes it (the maps already
/// changed), with the ban as it was then.
pub type BanSink = Box<dyn Fn(BanChange, &BanRecord) + Send + Sync>;

/// The bans in force, the allowlist, and the maps that enforce them.
pub struct BanTable<M> {
    maps: M,
    allow: Vec<Cidr>,
    bans: BanEntries,
    sink: Option<BanSink>,
}

/// The agent's ban records by prefix, with the number of IPv4 ones kept up
/// to date so the per-family limit costs no scan per ban (bulk loads of
/// 100,000 bans stay linear). Reads go through `Deref`; only `insert` and
/// `remove` change it.
#[derive(Default)]
struct BanEntries {
    by_prefix: BTreeMap<Cidr, BanEntry>,
    v4: usize,
}

impl std::ops::Deref for BanEntries {
    type Target = BTreeMap<Cidr, BanEntry>;

    fn deref(&self) -> &Self::Target {
        &self.by_prefix
    }
}

impl BanEntries {
    /// Adds or replaces the ban on `cidr`; returns the one it replaced.
    fn insert(&mut self, cidr: Cidr, entry: BanEntry) -> Option<BanEntry> {
        let previous = self.by_prefix.insert(cidr, entry);
        if previous.is_none() && cidr.is_ipv4() {
            self.v4 += 1;
        }
        previous
    }

    /// Removes the ban on `cidr`; returns it.
    fn remove(&mut self, cidr: &Cidr) -> Option<BanEntry> {
        let removed = self.by_prefix.remove(cidr);
        if removed.is_some() && cidr.is_ipv4() {
            self.v4 -= 1;
        }
        removed
    }

    /// Bans of the family of `cidr`.
    fn family_len(&self, ipv4: bool) -> usize {
        if ipv4 {
            self.v4
        } else {
            self.by_prefix.len() - self.v4
        }
    }
}

impl<M: BanMaps> BanTable<M> {
    /// An empty table over `maps` (sets `BAN_COUNT` to 0); `allow` is the
    /// allowlist no ban may overlap.
    pub fn new(mut maps: M, allow: Vec<Cidr>) -> Result<Self> {
        maps.set_count(0)?;
        Ok(BanTable {
            maps,
            allow,
            bans: BanEntries::default(),
            sink: None,
        })
    }

    /// A table over maps a previous agent left (pinned): `kernel` are their
    /// entries, `saved` the previous agent's records of them (state file).
    /// Active entries are kept with the saved reason (or
    /// [`RESTORED_REASON`]); ended ones and any that overlap the allowlist
    /// are removed. With `readd`, saved bans missing from the maps (they were
    /// recreated) are put back. `BAN_COUNT` is written last, so the kernel
    /// never stops checking bans in between.
    pub fn restore(
        mut maps: M,
        allow: Vec<Cidr>,
        kernel: Vec<(Cidr, BanValue)>,
        saved: &[SavedBan],
        readd: bool,
        now_ns: u64,
    ) -> Result<Self> {
        let mut bans = BanEntries::default();
        let saved_by_cidr: BTreeMap<Cidr, &SavedBan> = saved
            .iter()
            .filter_map(|b| b.cidr.parse::<Cidr>().ok().map(|c| (c, b)))
            .collect();
        let mut candidates: Vec<(Cidr, BanValue, bool)> =
            kernel.into_iter().map(|(c, v)| (c, v, true)).collect();
        if readd {
            let in_kernel: std::collections::HashSet<Cidr> =
                candidates.iter().map(|(c, _, _)| *c).collect();
            for (c, b) in &saved_by_cidr {
                if !in_kernel.contains(c) {
                    candidates.push((*c, BanValue::new(b.expires_ns, b.code), false));
                }
            }
        }
        for (cidr, value, in_kernel) in candidates {
            let allowed = allow.iter().find(|a| a.overlaps(&cidr));
            if !value.active(now_ns) || allowed.is_some() {
                if let Some(a) = allowed {
                    tracing::warn!(%cidr, allowed = %a, "a restored ban overlaps the allowlist: removed");
                }
                if in_kernel {
                    maps.remove(&cidr)?;
                }
                continue;
            }
            if !in_kernel {
                maps.insert(&cidr, &value)?;
            }
            let reason = match saved_by_cidr.get(&cidr) {
                Some(b) => b.reason.clone(),
                None => RESTORED_REASON.to_owned(),
            };
            tracing::info!(%cidr, reason, "ban restored");
            bans.insert(cidr, BanEntry { value, reason });
        }
        let mut table = BanTable {
            maps,
            allow,
            bans,
            sink: None,
        };
        table.write_count()?;
        Ok(table)
    }

    /// The bans in the table, as the state file keeps them.
    pub fn saved(&self) -> Vec<SavedBan> {
        self.bans
            .iter()
            .map(|(c, e)| SavedBan {
                cidr: c.to_string(),
                reason: e.reason.clone(),
                code: e.value.reason,
                expires_ns: e.value.expires_ns,
            })
            .collect()
    }

    /// The allowlist.
    pub fn allowlist(&self) -> &[Cidr] {
        &self.allow
    }

    /// Replaces the allowlist (SIGHUP reload). Bans already in force stay;
    /// only later `add`s are checked against the new list.
    pub fn set_allowlist(&mut self, allow: Vec<Cidr>) {
        self.allow = allow;
    }

    /// Where every later add, removal and expiry is reported (bans restored
    /// from a previous agent are not: they were already in the maps).
    pub fn set_sink(&mut self, sink: BanSink) {
        self.sink = Some(sink);
    }

    fn tell(&self, change: BanChange, record: &BanRecord) {
        if let Some(sink) = &self.sink {
            sink(change, record);
        }
    }

    /// Number of bans in the maps (expired ones not yet swept included).
    pub fn len(&self) -> usize {
        self.bans.len()
    }

    /// Bans in the maps by family: (IPv4, IPv6).
    pub fn family_counts(&self) -> (usize, usize) {
        (self.bans.family_len(true), self.bans.family_len(false))
    }

    /// No bans in the maps.
    pub fn is_empty(&self) -> bool {
        self.bans.is_empty()
    }

    /// Bans `cidr` for `ttl` from `now_ns` (`CLOCK_MONOTONIC` ns), or replaces
    /// the TTL and reason of the ban on exactly `cidr`; an operator's ban
    /// (reason code `BAN_REASON_MANUAL`).
    pub fn add(
        &mut self,
        cidr: Cidr,
        ttl: Duration,
        reason: &str,
        now_ns: u64,
    ) -> Result<BanRecord, BanError> {
        self.add_coded(cidr, ttl, reason, BAN_REASON_MANUAL, now_ns)
    }

    /// Like [`BanTable::add`], with the kernel's reason code `code`
    /// (`BAN_REASON_*`: which drop counter counts the ban's drops).
    pub fn add_coded(
        &mut self,
        cidr: Cidr,
        ttl: Duration,
        reason: &str,
        code: u32,
        now_ns: u64,
    ) -> Result<BanRecord, BanError> {
        let (record, replaced) = self.insert(cidr, ttl, reason, code, now_ns)?;
        tracing::info!(
            %cidr,
            ttl = %humantime::format_duration(ttl),
            reason,
            replaced,
            "ban added"
        );
        Ok(record)
    }

    /// [`BanTable::add`] of many manual bans at `now_ns`, logged once (not
    /// once per ban); each refusal is returned with its ban's index.
    pub fn add_many(
        &mut self,
        bans: impl IntoIterator<Item = (Cidr, Duration, String)>,
        now_ns: u64,
    ) -> (u64, Vec<(usize, BanError)>) {
        let started = std::time::Instant::now();
        let mut added = 0u64;
        let mut refused = Vec::new();
        for (i, (cidr, ttl, reason)) in bans.into_iter().enumerate() {
            match self.insert(cidr, ttl, &reason, BAN_REASON_MANUAL, now_ns) {
                Ok(_) => added += 1,
                Err(e) => refused.push((i, e)),
            }
        }
        tracing::info!(added, refused = refused.len(), took = ?started.elapsed(), "bans added in bulk");
        (added, refused)
    }

    /// Checks and inserts one ban; returns its record and whether it
    /// replaced a ban in force. Logs nothing.
    fn insert(
        &mut self,
        cidr: Cidr,
        ttl: Duration,
        reason: &str,
        code: u32,
        now_ns: u64,
    ) -> Result<(BanRecord, bool), BanError> {
        if cidr.prefix_len() == 0 {
            return Err(BanError::Invalid(format!(
                "{cidr}: a /0 prefix would ban a whole address family"
            )));
        }
        check_ttl(ttl).map_err(BanError::Invalid)?;
        check_reason(reason).map_err(BanError::Invalid)?;
        if let Some(allowed) = self.allow.iter().find(|a| a.overlaps(&cidr)) {
            return Err(BanError::Allowlisted {
                cidr,
                allowed: *allowed,
            });
        }
        let existing = self.bans.contains_key(&cidr);
        let replaced = self.bans.get(&cidr).is_some_and(|e| e.value.active(now_ns));
        if !existing {
            let same_family = self.bans.family_len(cidr.is_ipv4());
            if same_family >= MAX_BANS_PER_FAMILY as usize {
                return Err(BanError::Full {
                    cidr,
                    family: if cidr.is_ipv4() { "IPv4" } else { "IPv6" },
                    max: MAX_BANS_PER_FAMILY,
                });
            }
        }
        let ttl_ns = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX);
        let value = BanValue::new(now_ns.saturating_add(ttl_ns), code);
        self.maps.insert(&cidr, &value)?;
        let entry = BanEntry {
            value,
            reason: reason.to_owned(),
        };
        let previous = self.bans.insert(cidr, entry.clone());
        if let Err(e) = self.write_count() {
            // Put things back as they were; the error says what failed.
            match previous {
                Some(old) => {
                    let _ = self.maps.insert(&cidr, &old.value);
                    self.bans.insert(cidr, old);
                }
                None => {
                    let _ = self.maps.remove(&cidr);
                    self.bans.remove(&cidr);
                }
            }
            return Err(e.into());
        }
        let record = record(&cidr, &entry, now_ns);
        self.tell(BanChange::Added, &record);
        Ok((record, replaced))
    }

    /// Removes the ban on exactly `cidr`; returns it as it was.
    pub fn remove(&mut self, cidr: &Cidr, now_ns: u64) -> Result<BanRecord, BanError> {
        let Some(entry) = self.bans.get(cidr).cloned() else {
            return Err(BanError::NotFound(*cidr));
        };
        self.maps.remove(cidr)?;
        self.bans.remove(cidr);
        let record = record(cidr, &entry, now_ns);
        self.tell(BanChange::Removed, &record);
        self.write_count()?;
        tracing::info!(%cidr, "ban removed");
        Ok(record)
    }

    /// The bans in force at `now_ns`, ordered by prefix.
    pub fn list(&self, now_ns: u64) -> Vec<BanRecord> {
        self.bans
            .iter()
            .filter(|(_, e)| e.value.active(now_ns))
            .map(|(c, e)| record(c, e, now_ns))
            .collect()
    }

    /// Removes the bans that ended by `now_ns` from the maps; returns how
    /// many. One that cannot be removed stays (and is retried next time).
    pub fn sweep(&mut self, now_ns: u64) -> Result<usize> {
        let expired: Vec<Cidr> = self
            .bans
            .iter()
            .filter(|(_, e)| !e.value.active(now_ns))
            .map(|(c, _)| *c)
            .collect();
        let mut removed = 0;
        let mut first_error = None;
        for cidr in expired {
            match self.maps.remove(&cidr) {
                Ok(()) => {
                    if let Some(entry) = self.bans.remove(&cidr) {
                        self.tell(BanChange::Expired, &record(&cidr, &entry, now_ns));
                    }
                    removed += 1;
                    tracing::info!(%cidr, "ban expired");
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if removed > 0 {
            self.write_count()?;
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(removed),
        }
    }

    fn write_count(&mut self) -> Result<()> {
        // At most 2 x MAX_BANS_PER_FAMILY entries.
        let n = u32::try_from(self.bans.len()).unwrap_or(u32::MAX);
        self.maps.set_count(n)
    }
}

fn record(cidr: &Cidr, e: &BanEntry, now_ns: u64) -> BanRecord {
    BanRecord {
        cidr: *cidr,
        reason: e.reason.clone(),
        expires_in_ms: e
            .value
            .expires_ns
            .saturating_sub(now_ns)
            .div_ceil(1_000_000),
        added_by: match e.value.reason {
            BAN_REASON_MANUAL => ADDED_BY_MANUAL.to_owned(),
            monitor_common::ban::BAN_REASON_POLICY => "policy".to_owned(),
            other => format!("reason_{other}"),
        },
    }
}

#[cfg(test)]
mod tests;
