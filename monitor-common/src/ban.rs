//! Bans: the source addresses the TC ingress program drops, as kernel and
//! agent share them.
//!
//! # Map layout
//!
//! * `BANS_V4`: LPM trie, key `{prefix_len: u32, data: BanAddrV4}` (aya's
//!   `lpm_trie::Key<BanAddrV4>` on both sides) → [`BanValue`].
//! * `BANS_V6`: LPM trie, key `{prefix_len: u32, data: BanAddrV6}` → [`BanValue`].
//! * `BAN_COUNT`: array with one `u32`, the number of entries in both tries
//!   together. The agent keeps it equal to that number; while it is 0 the
//!   program skips the ban check entirely (one array lookup per packet).
//!
//! A packet arriving (TC ingress) from a source address that the longest
//! matching prefix in its family's trie covers is dropped (`TC_ACT_SHOT`) and
//! counted in `STATS` ([`crate::flow::Stat::BanDrops`] and the counter of the
//! ban's reason, [`drop_stat`]) while that entry's expiry lies in the future:
//! the kernel checks the expiry itself, so a ban ends on time even when no
//! agent is running. Expired entries stay harmless until the agent's sweep
//! removes them. Egress is never dropped.
//!
//! Addresses are stored as words holding the address bytes in network order
//! (`u32::from_ne_bytes` of each 4-byte group), like [`crate::flow::Addr`]:
//! the same bytes in memory as `[u8; 4]` / `[u8; 16]` (which is what the LPM
//! trie compares), without byte-at-a-time copies on the BPF target.

use crate::flow::Stat;

/// Data part of an IPv4 ban key: the address's 4 bytes in network order as
/// one word (`u32::from_ne_bytes(ipv4.octets())`).
pub type BanAddrV4 = u32;

/// Data part of an IPv6 ban key: the address's 16 bytes in network order as
/// four words ([`crate::flow::addr_from_bytes`]).
pub type BanAddrV6 = [u32; 4];

/// Longest prefix of an IPv4 ban key.
pub const V4_BITS: u32 = 32;
/// Longest prefix of an IPv6 ban key.
pub const V6_BITS: u32 = 128;

/// Capacity of each of `BANS_V4` and `BANS_V6`.
pub const MAX_BANS_PER_FAMILY: u32 = 65536;

/// Reason code: an operator added the ban through the control API
/// (`hsmon bans add`, `POST /v1/bans`).
pub const BAN_REASON_MANUAL: u32 = 1;

/// Reason code: the agent's policy banned the address or prefix (a rule
/// whose action is `ban`).
pub const BAN_REASON_POLICY: u32 = 2;

/// Value of the `BANS_V4` / `BANS_V6` tries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BanValue {
    /// `CLOCK_MONOTONIC` time (ns, the clock of `bpf_ktime_get_ns`) at which
    /// the ban ends; packets are dropped only while `now < expires_ns`.
    pub expires_ns: u64,
    /// Why the address is banned: `BAN_REASON_*`.
    pub reason: u32,
    /// Padding, always zero.
    pub _pad: u32,
}

impl BanValue {
    /// A ban for `reason` that ends at `expires_ns` (`CLOCK_MONOTONIC` ns).
    #[inline(always)]
    pub fn new(expires_ns: u64, reason: u32) -> Self {
        BanValue {
            expires_ns,
            reason,
            _pad: 0,
        }
    }

    /// Is the ban in force at `now_ns` (`CLOCK_MONOTONIC` ns)?
    #[inline(always)]
    pub fn active(&self, now_ns: u64) -> bool {
        now_ns < self.expires_ns
    }
}

/// The `STATS` counter that counts the drops of a ban with `reason`, besides
/// [`Stat::BanDrops`] which counts all of them; `None` for a reason this build
/// does not know.
#[inline(always)]
pub fn drop_stat(reason: u32) -> Option<Stat> {
    match reason {
        BAN_REASON_MANUAL => Some(Stat::BanDropsManual),
        BAN_REASON_POLICY => Some(Stat::BanDropsPolicy),
        _ => None,
    }
}

/// The IPv4 key data for an address given as its network-order bytes.
#[inline(always)]
pub fn v4_key_data(octets: [u8; 4]) -> BanAddrV4 {
    u32::from_ne_bytes(octets)
}

/// `octets` with every bit after the first `prefix_len` cleared (a prefix
/// longer than the address keeps it whole).
pub fn mask_prefix<const N: usize>(mut octets: [u8; N], prefix_len: u32) -> [u8; N] {
    let mut i = 0;
    while i < N {
        let bit = (i as u32) * 8;
        if bit >= prefix_len {
            octets[i] = 0;
        } else if prefix_len - bit < 8 {
            octets[i] &= 0xffu8 << (8 - (prefix_len - bit));
        }
        i += 1;
    }
    octets
}

// The map types have no implicit padding.
const _: () = assert!(core::mem::size_of::<BanValue>() == 16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_until_expiry() {
        let v = BanValue::new(1_000, BAN_REASON_MANUAL);
        assert!(v.active(0));
        assert!(v.active(999));
        assert!(!v.active(1_000));
        assert!(!v.active(u64::MAX));
    }

    #[test]
    fn masks() {
        assert_eq!(mask_prefix([10, 1, 2, 3], 24), [10, 1, 2, 0]);
        assert_eq!(mask_prefix([10, 1, 2, 3], 32), [10, 1, 2, 3]);
        assert_eq!(mask_prefix([10, 1, 2, 3], 40), [10, 1, 2, 3]);
        assert_eq!(mask_prefix([10, 255, 2, 3], 12), [10, 240, 0, 0]);
        assert_eq!(mask_prefix([0xff; 4], 1), [0x80, 0, 0, 0]);
        assert_eq!(mask_prefix([0xff; 4], 0), [0; 4]);
        let v6 = mask_prefix([0xff; 16], 64);
        assert_eq!(&v6[..8], &[0xff; 8]);
        assert_eq!(&v6[8..], &[0; 8]);
    }

    #[test]
    fn key_data_is_network_order_in_memory() {
        assert_eq!(v4_key_data([10, 1, 2, 3]).to_ne_bytes(), [10, 1, 2, 3]);
    }

    #[test]
    fn reasons_have_counters() {
        assert_eq!(drop_stat(BAN_REASON_MANUAL), Some(Stat::BanDropsManual));
        assert_eq!(drop_stat(BAN_REASON_POLICY), Some(Stat::BanDropsPolicy));
        assert_eq!(drop_stat(0), None);
        assert_eq!(drop_stat(77), None);
    }
}
