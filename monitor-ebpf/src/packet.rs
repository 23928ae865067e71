//! Reading a TCP segment out of a socket buffer: headers and payload.

use aya_ebpf::{
    bindings::__sk_buff,
    cty::{c_long, c_void},
    helpers::bpf_skb_load_bytes,
    programs::{SkBuffContext, TcContext},
};
use core::mem::MaybeUninit;

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

/// A socket buffer as every hook sees it (`__sk_buff`): the TC classifiers'
/// (data from the Ethernet header) and the `cgroup_skb` programs' (data
/// from the IP header). One pointer, so the parser, [`SkbPayload`] and the
/// tracker's `bpf_loop` callback serve both hooks unchanged.
#[derive(Clone, Copy)]
pub struct Skb(*mut __sk_buff);

impl Skb {
    /// The buffer of a TC classifier's context.
    #[inline(always)]
    pub fn tc(ctx: &TcContext) -> Self {
        Skb(ctx.skb.skb)
    }

    /// The buffer of a `cgroup_skb` program's context.
    #[inline(always)]
    pub fn cgroup(ctx: &SkBuffContext) -> Self {
        Skb(ctx.skb.skb)
    }

    /// Start of the linear data.
    #[inline(always)]
    pub fn data(self) -> usize {
        // SAFETY: the context pointer the kernel passed.
        unsafe { (*self.0).data as usize }
    }

    /// End of the linear data.
    #[inline(always)]
    pub fn data_end(self) -> usize {
        // SAFETY: as in `data`.
        unsafe { (*self.0).data_end as usize }
    }

    /// Length of the whole packet (linear and paged).
    #[inline(always)]
    pub fn len(self) -> u32 {
        // SAFETY: as in `data`.
        unsafe { (*self.0).len }
    }

    /// `T` at `offset`, through `bpf_skb_load_bytes` (any part of the packet).
    #[inline(always)]
    pub fn load<T>(self, offset: usize) -> Result<T, c_long> {
        let mut data = MaybeUninit::<T>::uninit();
        // SAFETY: the helper writes at most size_of::<T>() bytes into `data`.
        let ret = unsafe {
            bpf_skb_load_bytes(
                self.0 as *const c_void,
                offset as u32,
                data.as_mut_ptr() as *mut c_void,
                core::mem::size_of::<T>() as u32,
            )
        };
        if ret == 0 {
            // SAFETY: the helper filled it.
            Ok(unsafe { data.assume_init() })
        } else {
            Err(ret)
        }
    }
}

/// Parses Ethernet + IPv4/IPv6 + TCP into `out`. `false` for anything else
/// (not TCP, a non-first fragment, IPv6 extension headers, truncated headers)
/// and for segments with neither payload nor FIN/RST.
///
/// Inlined (a call and its return cost more than the parsing here), and
/// writing straight into `out`. Header fields are read in words straight
/// from the packet, so the function needs almost no stack of its own: the
/// caller's frame also holds the `bpf_loop` callback's context (the verifier
/// caps the whole call chain at 512 bytes of stack).
#[inline(always)]
pub fn parse(ctx: &TcContext, out: *mut Segment) -> bool {
    // SAFETY: `out` points at the caller's (uninitialised) `Segment`; fields
    // are only written, never read, and all of them on success.
    parse_into(Skb::tc(ctx), unsafe { &mut *out }).is_some()
}

/// Like [`parse`] for a buffer whose data starts at the IP header (a
/// `cgroup_skb` program's).
#[inline(always)]
pub fn parse_ip(skb: Skb, out: *mut Segment) -> bool {
    // SAFETY: as in `parse`.
    let out = unsafe { &mut *out };
    let Some(w) = read_skb_word::<u32>(skb, 0) else {
        return false;
    };
    parse_l3::<0>(skb, (u32::from_be(w) >> 28) as u8, out).is_some()
}

/// Reads a header `T` at `off`: straight from the packet's linear data when it
/// lies there (no helper call: the common case for headers), else with
/// `bpf_skb_load_bytes`. Only for header offsets, which the verifier can
/// bound, and for `T` made of 2-, 4- or 8-byte integers (`u16`, `u32`,
/// `[u32; N]`), in network order as they lie in the packet: one load per
/// integer instead of one per byte.
///
/// The BPF backend turns an unaligned read (`read_unaligned`) into byte loads
/// and shifts (BPF has no unaligned-load instruction in LLVM's model), so this
/// reads through a `T`-aligned pointer although packet fields are usually
/// not aligned: the BPF instruction set's loads take any address, and the
/// verifier accepts unaligned packet access on the architectures with
/// efficient unaligned access (x86-64, arm64: the ones hsmon ships for;
/// elsewhere the verifier refuses the program at load time, it never
/// misreads). The same idiom as C eBPF code reading `struct iphdr *`.
#[inline(always)]
pub(crate) fn read_word<T: Copy>(ctx: &TcContext, off: usize) -> Option<T> {
    read_skb_word(Skb::tc(ctx), off)
}

/// [`read_word`] on any [`Skb`].
#[inline(always)]
pub(crate) fn read_skb_word<T: Copy>(ctx: Skb, off: usize) -> Option<T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() <= end {
        // SAFETY: in bounds (the verifier's check); see above for alignment.
        Some(unsafe { core::ptr::read((start + off) as *const T) })
    } else {
        ctx.load(off).ok()
    }
}

#[inline(always)]
fn parse_into(ctx: Skb, out: &mut Segment) -> Option<()> {
    let proto = u16::from_be(read_skb_word::<u16>(ctx, 12)?);
    let l3 = match proto {
        ETH_P_IP => 4,
        ETH_P_IPV6 => 6,
        _ => return None,
    };
    parse_l3::<ETH_HLEN>(ctx, l3, out)
}

/// The IP (`version` 4 or 6) and TCP headers of a buffer whose IP header
/// starts at `BASE`: after an Ethernet header (TC) or at 0 (`cgroup_skb`).
#[inline(always)]
fn parse_l3<const BASE: usize>(ctx: Skb, version: u8, out: &mut Segment) -> Option<()> {
    let base = BASE;
    let (l4, l4_end) = match version {
        4 => {
            // Five words: version/ihl/tos/tot_len, id/fragment, ttl/proto/
            // checksum, source, destination.
            let h: [u32; 5] = read_skb_word(ctx, base)?;
            let w0 = u32::from_be(h[0]);
            let w1 = u32::from_be(h[1]);
            let w2 = u32::from_be(h[2]);
            if w0 >> 28 != 4 || (w2 >> 16) as u8 != IPPROTO_TCP {
                return None;
            }
            // A non-first fragment has no TCP header.
            if w1 & 0x1fff != 0 {
                return None;
            }
            let ihl = ((w0 >> 24) & 0x0f) * 4;
            let tot_len = w0 & 0xffff;
            out.src = ipv4_word_mapped(h[3]);
            out.dst = ipv4_word_mapped(h[4]);
            // Big TCP sets tot_len to 0; then the packet length is the bound.
            let end = if tot_len == 0 {
                ctx.len()
            } else {
                base as u32 + tot_len
            };
            (base as u32 + ihl, end)
        }
        6 => {
            // Version/class/label, then payload length/next header/hop limit.
            let h: [u32; 2] = read_skb_word(ctx, base)?;
            let w1 = u32::from_be(h[1]);
            if u32::from_be(h[0]) >> 28 != 6 || (w1 >> 8) as u8 != IPPROTO_TCP {
                return None;
            }
            let plen = w1 >> 16;
            out.src = read_skb_word(ctx, base + 8)?;
            out.dst = read_skb_word(ctx, base + 24)?;
            let end = if plen == 0 {
                ctx.len()
            } else {
                base as u32 + 40 + plen
            };
            (base as u32 + 40, end)
        }
        _ => return None,
    };
    if l4_end > ctx.len() {
        // The IP header claims more bytes than the packet has: truncated.
        // Nothing of it is parsed (the IP layer drops it anyway).
        count(Stat::MalformedPackets);
        return None;
    }
    // Ports, sequence number, acknowledgment number, then data offset and
    // flags: the first 14 bytes of the TCP header.
    // One after the other: evaluated together, LLVM carries the first
    // read's undefined value past the second's helper call and the
    // verifier refuses the spill ("R4 !read_ok").
    let Some(t) = read_skb_word::<[u32; 3]>(ctx, l4 as usize) else {
        count(Stat::MalformedPackets);
        return None;
    };
    let Some(off_flags) = read_skb_word::<u16>(ctx, l4 as usize + 12) else {
        count(Stat::MalformedPackets);
        return None;
    };
    let off_flags = u16::from_be(off_flags);
    let flags = off_flags as u8;
    let doff = ((off_flags >> 12) as u32) * 4;
    let payload_len = l4_end.saturating_sub(l4 + doff);
    if payload_len == 0 && flags & (TCP_FIN | TCP_RST) == 0 {
        // A bare ACK: nothing for the tracker.
        return None;
    }
    let ports = u32::from_be(t[0]);
    out.payload_off = l4 + doff;
    out.payload_len = payload_len;
    out.src_port = (ports >> 16) as u16;
    out.dst_port = ports as u16;
    out.seq = u32::from_be(t[1]);
    out.flags = flags;
    Some(())
}

/// A segment's payload inside the socket buffer. Read straight from the
/// packet's linear data when the bytes lie there (no helper call: always on
/// loopback and veth, and for the first bytes of most received segments),
/// else with `bpf_skb_load_bytes` (paged data: GRO, large sends).
pub struct SkbPayload {
    /// The packet.
    pub skb: Skb,
    /// Offset of the payload in the packet.
    pub off: u32,
    /// Payload length.
    pub len: u32,
}

/// Largest packet offset read directly: the verifier bounds a variable
/// packet offset by `MAX_PACKET_OFF` (0xffff).
const MAX_DIRECT_OFF: usize = 0xfff0;

/// `$n` bytes at packet offset `$at` as a big-endian number: directly when
/// they are in the linear data, else through `bpf_skb_load_bytes`. `$read`
/// assembles the number from the pointer `p` to the first byte.
macro_rules! load_n {
    ($ctx:expr, $at:expr, $n:literal, |$p:ident| $read:expr) => {{
        let start = $ctx.data();
        let end = $ctx.data_end();
        // At least 2 bytes must be in bounds, also for a 1-byte read: LLVM
        // turns `p + 1 <= end` into `p < end`, from which the verifier
        // derives no range for a pointer at constant offset 0. The last
        // byte of a packet, read alone, goes through the helper.
        if $at < MAX_DIRECT_OFF && start + $at + if $n < 2 { 2 } else { $n } <= end {
            let $p = start + $at;
            // SAFETY: `$n` bytes at `p` are inside the packet (the check the
            // verifier requires); see `read_word` for unaligned loads.
            Some(unsafe { $read })
        } else {
            let b: [u8; $n] = $ctx.load($at).ok()?;
            let mut v = 0u64;
            let mut i = 0;
            while i < $n {
                v = (v << 8) | b[i] as u64;
                i += 1;
            }
            Some(v)
        }
    }};
}

/// Big-endian integer loads from a packet address (any alignment, see
/// [`read_word`]).
#[inline(always)]
unsafe fn be8(p: usize) -> u64 {
    unsafe { *(p as *const u8) as u64 }
}

#[inline(always)]
unsafe fn be16(p: usize) -> u64 {
    unsafe { u16::from_be(core::ptr::read(p as *const u16)) as u64 }
}

#[inline(always)]
unsafe fn be32(p: usize) -> u64 {
    unsafe { u32::from_be(core::ptr::read(p as *const u32)) as u64 }
}

impl Payload for SkbPayload {
    #[inline(always)]
    fn payload_len(&self) -> usize {
        self.len as usize
    }

    #[inline(always)]
    fn load_be(&self, off: usize, n: usize) -> Option<u64> {
        let at = self.off as usize + off;
        let ctx = self.skb;
        match n {
            1 => load_n!(ctx, at, 1, |p| be8(p)),
            2 => load_n!(ctx, at, 2, |p| be16(p)),
            3 => load_n!(ctx, at, 3, |p| be16(p) << 8 | be8(p + 2)),
            4 => load_n!(ctx, at, 4, |p| be32(p)),
            5 => load_n!(ctx, at, 5, |p| be32(p) << 8 | be8(p + 4)),
            6 => load_n!(ctx, at, 6, |p| be32(p) << 16 | be16(p + 4)),
            7 => load_n!(ctx, at, 7, |p| be32(p) << 24
                | be16(p + 4) << 8
                | be8(p + 6)),
            8 => load_n!(ctx, at, 8, |p| be32(p) << 32 | be32(p + 4)),
            _ => None,
        }
    }
}
