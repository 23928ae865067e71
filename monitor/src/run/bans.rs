//! The agent's side of bans: the kernel's `BANS_V4` / `BANS_V6` tries and
//! `BAN_COUNT` (layout: `monitor_common::ban`), the allowlist, the control
//! API routes (`crate::bans` documents them) and the sweep that removes
//! expired bans.
//!
//! The agent owns the maps: [`BanTable`] keeps every ban it put there (with
//! its reason text) and writes `BAN_COUNT` after each change, so the count is
//! the number of entries in both tries. The kernel checks expiry on every
//! packet; the sweep only frees the entries of bans that already ended.

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, MapData, MapError};
use aya::Ebpf;
use monitor_common::ban::{
    v4_key_data, BanAddrV4, BanAddrV6, BanValue, BAN_REASON_MANUAL, MAX_BANS_PER_FAMILY,
};
use monitor_common::flow::addr_from_bytes;

use super::state::{lock, Shared};
use crate::bans::{check_reason, check_ttl, AddBan, BanRecord, ADDED_BY_MANUAL, BANS_PATH};
use crate::cidr::{parse_ban_target, Cidr};
use crate::record::monotonic_now_ns;

/// How often expired bans are removed from the maps.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

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

/// The bans in force, the allowlist, and the maps that enforce them.
pub struct BanTable<M> {
    maps: M,
    allow: Vec<Cidr>,
    bans: BTreeMap<Cidr, BanEntry>,
}

impl<M: BanMaps> BanTable<M> {
    /// An empty table over `maps` (sets `BAN_COUNT` to 0); `allow` is the
    /// allowlist no ban may overlap.
    pub fn new(mut maps: M, allow: Vec<Cidr>) -> Result<Self> {
        maps.set_count(0)?;
        Ok(BanTable {
            maps,
            allow,
            bans: BTreeMap::new(),
        })
    }

    /// The allowlist.
    pub fn allowlist(&self) -> &[Cidr] {
        &self.allow
    }

    /// Number of bans in the maps (expired ones not yet swept included).
    pub fn len(&self) -> usize {
        self.bans.len()
    }

    /// Bans in the maps by family: (IPv4, IPv6).
    pub fn family_counts(&self) -> (usize, usize) {
        let v4 = self.bans.keys().filter(|c| c.is_ipv4()).count();
        (v4, self.bans.len() - v4)
    }

    /// No bans in the maps.
    pub fn is_empty(&self) -> bool {
        self.bans.is_empty()
    }

    /// Bans `cidr` for `ttl` from `now_ns` (`CLOCK_MONOTONIC` ns), or replaces
    /// the TTL and reason of the ban on exactly `cidr`.
    pub fn add(
        &mut self,
        cidr: Cidr,
        ttl: Duration,
        reason: &str,
        now_ns: u64,
    ) -> Result<BanRecord, BanError> {
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
            let same_family = self
                .bans
                .keys()
                .filter(|c| c.is_ipv4() == cidr.is_ipv4())
                .count();
            if same_family >= MAX_BANS_PER_FAMILY as usize {
                return Err(BanError::Full {
                    cidr,
                    family: if cidr.is_ipv4() { "IPv4" } else { "IPv6" },
                    max: MAX_BANS_PER_FAMILY,
                });
            }
        }
        let ttl_ns = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX);
        let value = BanValue::new(now_ns.saturating_add(ttl_ns), BAN_REASON_MANUAL);
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
        tracing::info!(
            %cidr,
            ttl = %humantime::format_duration(ttl),
            reason,
            replaced,
            "ban added"
        );
        Ok(record(&cidr, &entry, now_ns))
    }

    /// Removes the ban on exactly `cidr`; returns it as it was.
    pub fn remove(&mut self, cidr: &Cidr, now_ns: u64) -> Result<BanRecord, BanError> {
        let Some(entry) = self.bans.get(cidr).cloned() else {
            return Err(BanError::NotFound(*cidr));
        };
        self.maps.remove(cidr)?;
        self.bans.remove(cidr);
        self.write_count()?;
        tracing::info!(%cidr, "ban removed");
        Ok(record(cidr, &entry, now_ns))
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
                    self.bans.remove(&cidr);
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
            other => format!("reason_{other}"),
        },
    }
}

/// The allowlist: loopback (`127.0.0.0/8`, `::1`), every address of this
/// host's interfaces now (in the agent's network namespace), and `extra`.
pub fn allowlist(extra: &[Cidr]) -> Result<Vec<Cidr>> {
    let mut out = vec![
        Cidr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8)
            .map_err(|e| anyhow!("loopback prefix: {e}"))?,
        Cidr::host(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ];
    for addr in host_addresses()? {
        out.push(Cidr::host(addr));
    }
    out.extend_from_slice(extra);
    out.sort();
    out.dedup();
    // Drop entries another one covers (127.0.0.1 inside 127.0.0.0/8).
    let all = out.clone();
    out.retain(|c| !all.iter().any(|o| o != c && o.contains(c)));
    Ok(out)
}

/// Every IPv4 and IPv6 address of this host's interfaces (`getifaddrs`).
fn host_addresses() -> Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error())
            .context("listing this host's addresses (getifaddrs)");
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, alive
        // until freeifaddrs; `ifa_addr` is null or points at a sockaddr of
        // the family it names.
        unsafe {
            let ifa = &*cur;
            let sa = ifa.ifa_addr;
            if !sa.is_null() {
                match i32::from((*sa).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(sa as *const libc::sockaddr_in);
                        out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                            sin.sin_addr.s_addr,
                        ))));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(sa as *const libc::sockaddr_in6);
                        out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
            if !ifa.ifa_name.is_null() {
                tracing::trace!(
                    iface = %CStr::from_ptr(ifa.ifa_name).to_string_lossy(),
                    "host address"
                );
            }
            cur = ifa.ifa_next;
        }
    }
    // SAFETY: the list getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// The routes `GET/POST /v1/bans` and `DELETE /v1/bans/{cidr}`.
pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route(BANS_PATH, get(list).post(add))
        .route(&format!("{BANS_PATH}/{{*cidr}}"), delete(remove))
}

/// `GET /v1/bans`.
async fn list(State(shared): State<Arc<Shared>>) -> Response {
    blocking(move || Ok(lock(&shared.bans).list(monotonic_now_ns()))).await
}

/// `POST /v1/bans`.
async fn add(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<AddBan>, JsonRejection>,
) -> Response {
    let req = match body {
        Ok(Json(req)) => req,
        Err(e) => return refusal(BanError::Invalid(format!("bad request body: {e}"))),
    };
    let cidr = match parse_ban_target(&req.cidr) {
        Ok(c) => c,
        Err(e) => return refusal(BanError::Invalid(e)),
    };
    let ttl = Duration::from_millis(req.ttl_ms);
    blocking(move || lock(&shared.bans).add(cidr, ttl, &req.reason, monotonic_now_ns())).await
}

/// `DELETE /v1/bans/{cidr}`.
async fn remove(State(shared): State<Arc<Shared>>, Path(cidr): Path<String>) -> Response {
    let cidr = match cidr.trim_start_matches('/').parse::<Cidr>() {
        Ok(c) => c,
        Err(e) => return refusal(BanError::Invalid(e.to_string())),
    };
    blocking(move || lock(&shared.bans).remove(&cidr, monotonic_now_ns())).await
}

/// Runs a map-changing closure off the async threads; answers its JSON or
/// the error's status with `{"error": ...}`.
async fn blocking<T, F>(f: F) -> Response
where
    T: serde::Serialize + Send + 'static,
    F: FnOnce() -> Result<T, BanError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => refusal(e),
        Err(e) => refusal(BanError::Kernel(anyhow!("the request's task failed: {e}"))),
    }
}

fn refusal(e: BanError) -> Response {
    let status = e.status();
    let msg = format!("{:#}", anyhow::Error::new(e));
    if status.is_server_error() {
        tracing::warn!("control API: {msg}");
    } else {
        tracing::info!("control API refused: {msg}");
    }
    (status, Json(serde_json::json!({ "error": msg }))).into_response()
}

/// Every second: remove the bans that ended from the maps.
pub async fn sweep(shared: Arc<Shared>) -> Result<()> {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let s = shared.clone();
        match tokio::task::spawn_blocking(move || lock(&s.bans).sweep(monotonic_now_ns())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("ban sweep: {e:#}"),
            Err(e) => tracing::warn!("ban sweep task: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// The maps as a plain table, with an optional failure.
    #[derive(Default)]
    struct FakeMaps {
        entries: BTreeMap<Cidr, BanValue>,
        count: u32,
        fail_remove: bool,
    }

    impl BanMaps for FakeMaps {
        fn insert(&mut self, cidr: &Cidr, value: &BanValue) -> Result<()> {
            self.entries.insert(*cidr, *value);
            Ok(())
        }
        fn remove(&mut self, cidr: &Cidr) -> Result<()> {
            if self.fail_remove {
                return Err(anyhow!("EPERM"));
            }
            self.entries.remove(cidr);
            Ok(())
        }
        fn set_count(&mut self, count: u32) -> Result<()> {
            self.count = count;
            Ok(())
        }
    }

    fn c(s: &str) -> Cidr {
        s.parse().expect(s)
    }

    const S: u64 = 1_000_000_000;

    fn table() -> BanTable<FakeMaps> {
        let allow = vec![c("127.0.0.0/8"), c("::1"), c("10.200.0.1"), c("fd00::/16")];
        BanTable::new(FakeMaps::default(), allow).expect("table")
    }

    #[test]
    fn add_list_remove_keeps_the_count() {
        let mut t = table();
        let r = t
            .add(c("10.200.0.2"), Duration::from_secs(3), "test", 100 * S)
            .expect("add");
        assert_eq!(r.cidr, c("10.200.0.2"));
        assert_eq!(r.expires_in_ms, 3000);
        assert_eq!(r.added_by, "manual");
        t.add(c("2001:db8::/32"), Duration::from_secs(60), "", 100 * S)
            .expect("add v6");
        assert_eq!(t.maps.count, 2);
        assert_eq!(t.maps.entries[&c("10.200.0.2")].expires_ns, 103 * S);
        assert_eq!(t.maps.entries[&c("10.200.0.2")].reason, BAN_REASON_MANUAL);
        // Replacing keeps one entry.
        t.add(c("10.200.0.2"), Duration::from_secs(10), "again", 101 * S)
            .expect("replace");
        assert_eq!(t.maps.count, 2);
        let l = t.list(102 * S);
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].reason, "again");
        assert_eq!(l[0].expires_in_ms, 9000);
        let gone = t.remove(&c("2001:db8::/32"), 102 * S).expect("remove");
        assert_eq!(gone.cidr, c("2001:db8::/32"));
        assert_eq!(t.maps.count, 1);
        assert_eq!(t.maps.entries.len(), 1);
        assert!(matches!(
            t.remove(&c("2001:db8::/32"), 102 * S),
            Err(BanError::NotFound(_))
        ));
    }

    #[test]
    fn allowlist_wins() {
        let mut t = table();
        for bad in [
            "127.0.0.1",
            "127.0.0.0/24",
            "10.0.0.0/8",
            "10.200.0.1",
            "::1",
            "fd00:200::2",
            "fc00::/7",
        ] {
            let e = t
                .add(c(bad), Duration::from_secs(3), "x", S)
                .expect_err(bad);
            assert!(matches!(e, BanError::Allowlisted { .. }), "{bad}: {e}");
            assert_eq!(e.status(), StatusCode::CONFLICT);
            assert!(e.to_string().contains("allowlisted"), "{e}");
        }
        assert!(t.is_empty());
        assert_eq!(t.maps.count, 0);
        assert!(t.maps.entries.is_empty());
        // Next to the allowlist is fine.
        t.add(c("10.200.0.2"), Duration::from_secs(3), "x", S)
            .expect("neighbour");
    }

    #[test]
    fn bad_requests() {
        let mut t = table();
        for (cidr, ttl, reason) in [
            ("8.0.0.0/0", Duration::from_secs(1), ""),
            ("8.8.8.8", Duration::ZERO, ""),
            ("8.8.8.8", Duration::from_secs(24 * 3600 + 1), ""),
            ("8.8.8.8", Duration::from_secs(1), "line\nbreak"),
        ] {
            let e = t.add(c(cidr), ttl, reason, S).expect_err(cidr);
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{e}");
        }
        assert_eq!(t.maps.count, 0);
    }

    #[test]
    fn sweep_removes_only_expired() {
        let mut t = table();
        t.add(c("8.8.8.8"), Duration::from_secs(3), "", 10 * S)
            .expect("add");
        t.add(c("9.9.9.0/24"), Duration::from_secs(5), "", 10 * S)
            .expect("add");
        assert_eq!(t.sweep(12 * S).expect("sweep"), 0);
        assert_eq!(t.maps.count, 2);
        // Expired but not yet swept: not listed, still counted.
        assert_eq!(t.list(13 * S).len(), 1);
        assert_eq!(t.sweep(13 * S).expect("sweep"), 1);
        assert_eq!(t.maps.count, 1);
        assert_eq!(t.len(), 1);
        t.maps.fail_remove = true;
        assert!(t.sweep(20 * S).is_err());
        assert_eq!(t.maps.count, 1);
        t.maps.fail_remove = false;
        assert_eq!(t.sweep(20 * S).expect("sweep"), 1);
        assert_eq!(t.maps.count, 0);
        assert!(t.maps.entries.is_empty());
    }

    #[test]
    fn default_allowlist_has_loopback_and_extras() {
        let a = allowlist(&[c("192.0.2.0/24")]).expect("allowlist");
        assert!(a.contains(&c("127.0.0.0/8")));
        assert!(a.contains(&c("::1")));
        assert!(a.contains(&c("192.0.2.0/24")));
        // lo's 127.0.0.1 is inside 127.0.0.0/8, so not listed again.
        assert!(!a.contains(&c("127.0.0.1")));
        let b = allowlist(&[c("127.0.0.0/7"), c("192.0.2.1")]).expect("allowlist");
        assert!(b.contains(&c("127.0.0.0/7")));
        assert!(!b.contains(&c("127.0.0.0/8")));
        assert!(b.contains(&c("192.0.2.1")));
    }
}
