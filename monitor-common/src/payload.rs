//! Where the tracker reads bytes from: a TCP payload in a packet (eBPF) or a
//! plain byte slice (user space, tests).

/// A TCP segment's payload, readable in small big-endian pieces.
///
/// The tracker never asks for more than 8 bytes at once and never reads past
/// [`Payload::payload_len`]. Implementations return `None` when a read fails;
/// the tracker then marks the direction unsynced instead of guessing.
pub trait Payload {
    /// Number of payload bytes in this segment.
    fn payload_len(&self) -> usize;
    /// The `n` bytes (1..=8) at `off`, as a big-endian number.
    fn load_be(&self, off: usize, n: usize) -> Option<u64>;
}

impl Payload for [u8] {
    #[inline]
    fn payload_len(&self) -> usize {
        self.len()
    }

    #[inline]
    fn load_be(&self, off: usize, n: usize) -> Option<u64> {
        if n == 0 || n > 8 {
            return None;
        }
        let bytes = self.get(off..off.checked_add(n)?)?;
        Some(bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }
}

#[cfg(test)]
mod tests {
    use super::Payload;

    #[test]
    fn slice_reads_big_endian_and_refuses_out_of_range() {
        let b: &[u8] = &[1, 2, 3, 4, 5, 6, 7, 8, 9];
        assert_eq!(b.load_be(0, 2), Some(0x0102));
        assert_eq!(b.load_be(1, 8), Some(0x0203_0405_0607_0809));
        assert_eq!(b.load_be(8, 1), Some(9));
        assert_eq!(b.load_be(8, 2), None);
        assert_eq!(b.load_be(0, 0), None);
        assert_eq!(b.load_be(0, 9), None);
        assert_eq!(b.load_be(usize::MAX, 1), None);
    }
}
