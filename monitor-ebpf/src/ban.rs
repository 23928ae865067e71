//! The ban check at the start of TC ingress: drop packets whose source
//! address is banned (layout and semantics: `monitor_common::ban`).

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{lpm_trie::Key, Array, LpmTrie},
    programs::TcContext,
};
use monitor_common::{
    ban::{drop_stat, BanAddrV4, BanAddrV6, BanValue, MAX_BANS_PER_FAMILY, V4_BITS, V6_BITS},
    flow::Stat,
};

use crate::{
    maps::count,
    packet::{read_word, ETH_HLEN, ETH_P_IP, ETH_P_IPV6},
};

/// Banned IPv4 prefixes (`BPF_F_NO_PREALLOC`, which LPM tries require, is
/// added by aya).
#[map(name = "BANS_V4")]
pub static BANS_V4: LpmTrie<BanAddrV4, BanValue> =
    LpmTrie::with_max_entries(MAX_BANS_PER_FAMILY, 0);

/// Banned IPv6 prefixes.
#[map(name = "BANS_V6")]
pub static BANS_V6: LpmTrie<BanAddrV6, BanValue> =
    LpmTrie::with_max_entries(MAX_BANS_PER_FAMILY, 0);

/// Number of entries in `BANS_V4` and `BANS_V6` together, kept by the agent.
#[map(name = "BAN_COUNT")]
pub static BAN_COUNT: Array<u32> = Array::with_max_entries(1, 0);

/// Are there any bans at all? One array lookup (inlined by the verifier):
/// the whole cost of the ban check while nothing is banned.
#[inline(always)]
pub fn any() -> bool {
    matches!(BAN_COUNT.get(0), Some(n) if *n != 0)
}

/// Is the packet's source address banned, with the ban still in force? Counts
/// the drop in `STATS` when it is. Anything that is neither IPv4 nor IPv6, or
/// too short to hold the source address, is not banned.
///
/// Inlined: a call and its return cost about 20 ns here. The key is at most
/// 20 bytes of the program's main frame, which heads the call chain of the
/// tracker (the verifier caps the chain at 512 bytes; the main frame is
/// about 250 bytes).
#[inline(always)]
pub fn banned(ctx: &TcContext) -> bool {
    let Some(proto) = read_word::<u16>(ctx, 12) else {
        return false;
    };
    let value = match u16::from_be(proto) {
        ETH_P_IP => {
            // Source address: bytes 12..16 of the IPv4 header.
            let Some(src) = read_word::<BanAddrV4>(ctx, ETH_HLEN + 12) else {
                return false;
            };
            BANS_V4.get(Key::new(V4_BITS, src))
        }
        ETH_P_IPV6 => {
            // Source address: bytes 8..24 of the IPv6 header.
            let Some(src) = read_word::<BanAddrV6>(ctx, ETH_HLEN + 8) else {
                return false;
            };
            BANS_V6.get(Key::new(V6_BITS, src))
        }
        _ => return false,
    };
    let Some(value) = value else {
        return false;
    };
    // SAFETY: helper call without arguments.
    if !value.active(unsafe { bpf_ktime_get_ns() }) {
        return false;
    }
    count(Stat::BanDrops);
    if let Some(stat) = drop_stat(value.reason) {
        count(stat);
    }
    true
}
