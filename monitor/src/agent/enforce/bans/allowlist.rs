//! The allowlist no ban may overlap: loopback, this host's addresses and
//! the configured prefixes.

use std::ffi::CStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{anyhow, Context as _, Result};

use crate::api::cidr::Cidr;

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
