//! IP prefixes (`10.0.0.0/24`, `2001:db8::/32`, or a plain address): what
//! bans and the allowlist are made of.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use monitor_common::ban::{mask_prefix, V4_BITS, V6_BITS};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a text is not a prefix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The part before `/` is not an IPv4 or IPv6 address.
    #[error(
        "{0:?} is not an IP address or CIDR prefix (e.g. 192.0.2.7, 192.0.2.0/24, 2001:db8::/32)"
    )]
    NotAnAddress(String),
    /// The part after `/` is not a number.
    #[error("{0:?} is not a prefix length")]
    BadPrefix(String),
    /// The prefix is longer than the address.
    #[error("prefix length {len} is longer than an {family} address ({max} bits)")]
    PrefixTooLong {
        /// The prefix length given.
        len: u32,
        /// `"IPv4"` or `"IPv6"`.
        family: &'static str,
        /// The longest prefix of the family.
        max: u32,
    },
}

/// An IP prefix: an address whose bits after the first `prefix_len` are zero.
///
/// IPv4-mapped IPv6 prefixes (`::ffff:a.b.c.d/N`, N >= 96) are stored as the
/// IPv4 prefix they denote, since packets carry those as IPv4. Ordered IPv4
/// first, then by address, then by prefix length. Serializes as its text form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    /// The prefix of `addr` of length `prefix_len`; host bits are cleared.
    pub fn new(addr: IpAddr, prefix_len: u32) -> Result<Self, CidrError> {
        let (addr, prefix_len) = match addr {
            IpAddr::V6(v6) if (96..=V6_BITS).contains(&prefix_len) => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), prefix_len - 96),
                None => (addr, prefix_len),
            },
            _ => (addr, prefix_len),
        };
        let (family, max) = match addr {
            IpAddr::V4(_) => ("IPv4", V4_BITS),
            IpAddr::V6(_) => ("IPv6", V6_BITS),
        };
        if prefix_len > max {
            return Err(CidrError::PrefixTooLong {
                len: prefix_len,
                family,
                max,
            });
        }
        let addr = match addr {
            IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(mask_prefix(v4.octets(), prefix_len))),
            IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(mask_prefix(v6.octets(), prefix_len))),
        };
        Ok(Cidr {
            addr,
            // At most 128: checked above.
            prefix_len: prefix_len as u8,
        })
    }

    /// The prefix that holds exactly `addr` (/32 or /128).
    pub fn host(addr: IpAddr) -> Self {
        let len = match addr {
            IpAddr::V4(_) => V4_BITS,
            IpAddr::V6(_) => V6_BITS,
        };
        // A full-length prefix is always valid.
        Cidr::new(addr, len).unwrap_or(Cidr {
            addr,
            prefix_len: len as u8,
        })
    }

    /// The network address (host bits zero).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u32 {
        u32::from(self.prefix_len)
    }

    /// Is this an IPv4 prefix?
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// Does this prefix cover every address of `other`?
    pub fn contains(&self, other: &Cidr) -> bool {
        if self.is_ipv4() != other.is_ipv4() || self.prefix_len > other.prefix_len {
            return false;
        }
        Cidr::new(other.addr, self.prefix_len()).is_ok_and(|c| c.addr == self.addr)
    }

    /// Do the two prefixes share an address (one contains the other)?
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other) || other.contains(self)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `ADDR` (a host prefix) or `ADDR/LEN`.
    fn from_str(s: &str) -> Result<Self, CidrError> {
        let s = s.trim();
        let (addr_text, len_text) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| CidrError::NotAnAddress(s.to_owned()))?;
        match len_text {
            None => Ok(Cidr::host(addr)),
            Some(l) => {
                if l.is_empty() || !l.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(CidrError::BadPrefix(l.to_owned()));
                }
                let len: u32 = l.parse().map_err(|_| CidrError::BadPrefix(l.to_owned()))?;
                Cidr::new(addr, len)
            }
        }
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Parses a prefix that may be banned: any valid prefix except /0, which
/// would ban a whole address family (clap value parser).
pub fn parse_ban_target(s: &str) -> Result<Cidr, String> {
    let cidr: Cidr = s.parse().map_err(|e: CidrError| e.to_string())?;
    if cidr.prefix_len() == 0 {
        return Err(format!(
            "{s:?}: a /0 prefix would ban every {} address",
            if cidr.is_ipv4() { "IPv4" } else { "IPv6" }
        ));
    }
    Ok(cidr)
}

/// Parses an allowlist prefix (clap value parser); /0 is allowed (never ban
/// that address family).
pub fn parse_allow(s: &str) -> Result<Cidr, String> {
    s.parse().map_err(|e: CidrError| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().expect(s)
    }

    #[test]
    fn parses_and_prints() {
        assert_eq!(c("10.1.2.3").to_string(), "10.1.2.3/32");
        assert_eq!(c("10.1.2.3/24").to_string(), "10.1.2.0/24");
        assert_eq!(c(" 192.0.2.0/24 ").to_string(), "192.0.2.0/24");
        assert_eq!(c("2001:db8::1").to_string(), "2001:db8::1/128");
        assert_eq!(c("2001:db8:ffff::/33").to_string(), "2001:db8:8000::/33");
        assert_eq!(c("::ffff:10.1.2.3").to_string(), "10.1.2.3/32");
        assert_eq!(c("::ffff:10.1.2.3/120").to_string(), "10.1.2.0/24");
        assert_eq!(c("::/0").to_string(), "::/0");
        assert_eq!(c("10.0.0.0/0").prefix_len(), 0);
    }

    #[test]
    fn rejects() {
        for bad in [
            "",
            "host",
            "10.0.0",
            "10.0.0.256",
            "10.0.0.0/",
            "10.0.0.0/x",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "10.0.0.0/33",
            "::/129",
            "1.2.3.4/99999999999",
            "10.0.0.0/24/1",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?} parsed");
        }
        assert_eq!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::PrefixTooLong {
                len: 33,
                family: "IPv4",
                max: 32
            })
        );
    }

    #[test]
    fn ban_targets() {
        assert!(parse_ban_target("10.0.0.0/0").is_err());
        assert!(parse_ban_target("::/0").is_err());
        assert!(parse_ban_target("10.0.0.0/1").is_ok());
        assert!(parse_allow("::/0").is_ok());
        assert!(parse_allow("nope").is_err());
    }

    #[test]
    fn containment() {
        assert!(c("10.0.0.0/8").contains(&c("10.200.1.2")));
        assert!(c("10.0.0.0/8").contains(&c("10.0.0.0/8")));
        assert!(!c("10.0.0.0/8").contains(&c("11.0.0.1")));
        assert!(!c("10.0.0.1").contains(&c("10.0.0.0/8")));
        assert!(c("10.0.0.1").overlaps(&c("10.0.0.0/8")));
        assert!(!c("10.0.0.0/24").overlaps(&c("10.0.1.0/24")));
        assert!(!c("::/0").contains(&c("10.0.0.1")));
        assert!(c("::/0").contains(&c("::1")));
        assert!(c("0.0.0.0/0").contains(&c("127.0.0.1")));
        assert!(c("fd00::/8").overlaps(&c("fd00:200::2")));
    }

    #[test]
    fn serde_as_text() {
        let j = serde_json::to_string(&c("10.0.0.0/8")).expect("serialize");
        assert_eq!(j, "\"10.0.0.0/8\"");
        let back: Cidr = serde_json::from_str(&j).expect("deserialize");
        assert_eq!(back, c("10.0.0.0/8"));
        assert!(serde_json::from_str::<Cidr>("\"10.0.0.0/40\"").is_err());
    }

    #[test]
    fn order_is_v4_first() {
        let mut v = vec![c("::1"), c("10.0.0.0/8"), c("9.0.0.1")];
        v.sort();
        assert_eq!(v, vec![c("9.0.0.1"), c("10.0.0.0/8"), c("::1")]);
    }
}
