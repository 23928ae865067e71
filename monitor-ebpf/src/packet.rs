//! Reading a TCP segment out of a socket buffer: headers and payload.

use aya_ebpf::programs::TcContext;
use monitor_common::{
    flow::{ipv4_word_mapped, Addr, Stat},
    payload::Payload,
};

use crate::maps::count;

pub(crate) const ETH_HLEN: usize = 14;
pub(crate) const ETH_P_IP: u16 = 0x0800;
pub(crate) const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_TCP: u8 = 6;

/// TCP flag FIN.
pub const TCP_FIN: u8 = 0x01;
/// TCP flag RST.
pub const TCP_RST: u8 = 0x04;

/// The parts of a TCP segment the tracker needs.
pub struct Segment {
    /// Source address (IPv6 or IPv4-mapped).
    pub src: Addr,
    /// Destination address (IPv6 or IPv4-mapped).
    pub dst: Addr,
    /// Source port, host order.
    pub src_port: u16,
    /// Destination port, host order.
    pub dst_port: u16,
    /// Sequence number of the first payload byte.
    pub seq: u32,
    /// TCP flags byte.
    pub flags: u8,
    /// Offset of the payload in the packet.
    pub payload_off: u32,
    /// Payload length.
    pub payload_len: u32,
}

/// Parses Ethernet + IPv4/IPv6 + TCP into `out`. `false` for anything else
/// (not TCP, a non-first fragment, IPv6 extension headers, truncated headers)
/// and for segments with neither payload nor FIN/RST.
///
/// Not inlined, and writing straight into `out`: its header buffers then live
/// in a small frame of their own, not in the caller's, which also holds the
/// `bpf_loop` callback's context (the verifier caps the whole call chain at
/// 512 bytes of stack).
#[inline(never)]
pub fn parse(ctx: &TcContext, out: *mut Segment) -> bool {
    // SAFETY: `out` points at the caller's (uninitialised) `Segment`; fields
    // are only written, never read, and all of them on success.
    parse_into(ctx, unsafe { &mut *out }).is_some()
}

/// Reads a header `T` at `off`: straight from the packet's linear data when it
/// lies there (no helper call: the common case for headers), else with
/// `bpf_skb_load_bytes`. Only for header offsets, which the verifier can
/// bound; payload reads (any offset up to 64 KiB) use `bpf_skb_load_bytes`.
#[inline(always)]
pub(crate) fn read<T: Copy>(ctx: &TcContext, off: usize) -> Option<T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() <= end {
        // SAFETY: the bounds check above is the one the verifier requires.
        Some(unsafe { core::ptr::read_unaligned((start + off) as *const T) })
    } else {
        ctx.load(off).ok()
    }
}

#[inline(always)]
fn parse_into(ctx: &TcContext, out: &mut Segment) -> Option<()> {
    let proto = u16::from_be(read::<u16>(ctx, 12)?);
    let (l4, l4_end) = match proto {
        ETH_P_IP => {
            let h: [u8; 20] = read(ctx, ETH_HLEN)?;
            if h[0] >> 4 != 4 || h[9] != IPPROTO_TCP {
                return None;
            }
            // A non-first fragment has no TCP header.
            if u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
                return None;
            }
            let ihl = ((h[0] & 0x0f) as u32) * 4;
            let tot_len = u16::from_be_bytes([h[2], h[3]]) as u32;
            out.src = ipv4_word_mapped(u32::from_ne_bytes([h[12], h[13], h[14], h[15]]));
            out.dst = ipv4_word_mapped(u32::from_ne_bytes([h[16], h[17], h[18], h[19]]));
            // Big TCP sets tot_len to 0; then the packet length is the bound.
            let end = if tot_len == 0 {
                ctx.len()
            } else {
                ETH_HLEN as u32 + tot_len
            };
            (ETH_HLEN as u32 + ihl, end)
        }
        ETH_P_IPV6 => {
            let h: [u8; 8] = read(ctx, ETH_HLEN)?;
            if h[0] >> 4 != 6 || h[6] != IPPROTO_TCP {
                return None;
            }
            let plen = u16::from_be_bytes([h[4], h[5]]) as u32;
            out.src = read(ctx, ETH_HLEN + 8)?;
            out.dst = read(ctx, ETH_HLEN + 24)?;
            let end = if plen == 0 {
                ctx.len()
            } else {
                ETH_HLEN as u32 + 40 + plen
            };
            (ETH_HLEN as u32 + 40, end)
        }
        _ => return None,
    };
    if l4_end > ctx.len() {
        // The IP header claims more bytes than the packet has: truncated.
        // Nothing of it is parsed (the IP layer drops it anyway).
        count(Stat::MalformedPackets);
        return None;
    }
    let Some(t) = read::<[u8; 14]>(ctx, l4 as usize) else {
        count(Stat::MalformedPackets);
        return None;
    };
    let doff = ((t[12] >> 4) as u32) * 4;
    let payload_len = l4_end.saturating_sub(l4 + doff);
    if payload_len == 0 && t[13] & (TCP_FIN | TCP_RST) == 0 {
        // A bare ACK: nothing for the tracker.
        return None;
    }
    out.payload_off = l4 + doff;
    out.payload_len = payload_len;
    out.src_port = u16::from_be_bytes([t[0], t[1]]);
    out.dst_port = u16::from_be_bytes([t[2], t[3]]);
    out.seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
    out.flags = t[13];
    Some(())
}

/// A segment's payload inside the socket buffer, read with `bpf_skb_load_bytes`.
pub struct SkbPayload<'a> {
    /// The packet.
    pub ctx: &'a TcContext,
    /// Offset of the payload in the packet.
    pub off: u32,
    /// Payload length.
    pub len: u32,
}

macro_rules! load_n {
    ($ctx:expr, $off:expr, $n:literal) => {{
        let b: [u8; $n] = $ctx.load($off).ok()?;
        let mut v = 0u64;
        let mut i = 0;
        while i < $n {
            v = (v << 8) | b[i] as u64;
            i += 1;
        }
        Some(v)
    }};
}

impl Payload for SkbPayload<'_> {
    #[inline(always)]
    fn payload_len(&self) -> usize {
        self.len as usize
    }

    #[inline(always)]
    fn load_be(&self, off: usize, n: usize) -> Option<u64> {
        let at = self.off as usize + off;
        match n {
            1 => Some(self.ctx.load::<u8>(at).ok()? as u64),
            2 => load_n!(self.ctx, at, 2),
            3 => load_n!(self.ctx, at, 3),
            4 => load_n!(self.ctx, at, 4),
            5 => load_n!(self.ctx, at, 5),
            6 => load_n!(self.ctx, at, 6),
            7 => load_n!(self.ctx, at, 7),
            8 => load_n!(self.ctx, at, 8),
            _ => None,
        }
    }
}
