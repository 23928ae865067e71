//! Crafted Ethernet/IPv4/IPv6/TCP packets for `BPF_PROG_TEST_RUN`.
//!
//! Checksums are left zero: the TC programs never look at them, and the
//! kernel does not verify them on the test-run path.

use std::net::IpAddr;

/// TCP flag bits.
pub mod flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// One TCP endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Address (both must be the same family in a packet).
    pub ip: IpAddr,
    /// Port.
    pub port: u16,
}

/// An Ethernet frame carrying one TCP segment from `src` to `dst`.
///
/// Panics if the two addresses are of different families: a test bug.
pub fn tcp_segment(
    src: Endpoint,
    dst: Endpoint,
    seq: u32,
    tcp_flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut tcp = Vec::with_capacity(20 + payload.len());
    tcp.extend_from_slice(&src.port.to_be_bytes());
    tcp.extend_from_slice(&dst.port.to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&1u32.to_be_bytes()); // ack
    tcp.push(5 << 4); // data offset: 20 bytes
    tcp.push(tcp_flags);
    tcp.extend_from_slice(&65535u16.to_be_bytes()); // window
    tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    tcp.extend_from_slice(payload);

    let mut frame = Vec::with_capacity(14 + 40 + tcp.len());
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // dst MAC
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // src MAC
    match (src.ip, dst.ip) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            frame.extend_from_slice(&0x0800u16.to_be_bytes());
            let total = u16::try_from(20 + tcp.len()).expect("IPv4 packet too long");
            frame.extend_from_slice(&[0x45, 0]);
            frame.extend_from_slice(&total.to_be_bytes());
            frame.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]); // id, DF, ttl, TCP, csum
            frame.extend_from_slice(&s.octets());
            frame.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            frame.extend_from_slice(&0x86DDu16.to_be_bytes());
            let plen = u16::try_from(tcp.len()).expect("IPv6 payload too long");
            frame.extend_from_slice(&[0x60, 0, 0, 0]);
            frame.extend_from_slice(&plen.to_be_bytes());
            frame.extend_from_slice(&[6, 64]); // next header TCP, hop limit
            frame.extend_from_slice(&s.octets());
            frame.extend_from_slice(&d.octets());
        }
        _ => panic!("tcp_segment: mixed address families"),
    }
    frame.extend_from_slice(&tcp);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_frame_layout() {
        let a = Endpoint {
            ip: "10.0.0.1".parse().unwrap(),
            port: 40000,
        };
        let b = Endpoint {
            ip: "10.0.0.2".parse().unwrap(),
            port: 443,
        };
        let f = tcp_segment(a, b, 7, flags::ACK, b"xy");
        assert_eq!(f.len(), 14 + 20 + 20 + 2);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 42);
        assert_eq!(&f[26..30], &[10, 0, 0, 1]);
        assert_eq!(u16::from_be_bytes([f[34], f[35]]), 40000);
        assert_eq!(u32::from_be_bytes([f[38], f[39], f[40], f[41]]), 7);
        assert_eq!(&f[54..], b"xy");
    }

    #[test]
    fn ipv6_frame_layout() {
        let a = Endpoint {
            ip: "fd00::1".parse().unwrap(),
            port: 40000,
        };
        let b = Endpoint {
            ip: "fd00::2".parse().unwrap(),
            port: 443,
        };
        let f = tcp_segment(a, b, 9, flags::ACK, b"z");
        assert_eq!(f.len(), 14 + 40 + 20 + 1);
        assert_eq!(&f[12..14], &[0x86, 0xDD]);
        assert_eq!(u16::from_be_bytes([f[18], f[19]]), 21);
        assert_eq!(f[20], 6);
        assert_eq!(&f[74..], b"z");
    }
}
