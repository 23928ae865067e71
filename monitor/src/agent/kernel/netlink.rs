//! The one rtnetlink request aya does not offer: deleting the `clsact` qdisc
//! the agent added to an interface (only used on the clsact fallback path).

use std::io;
use std::mem;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

/// `TC_H_CLSACT`: the clsact qdisc's parent handle.
const TC_H_CLSACT: u32 = 0xFFFF_FFF1;
/// The clsact qdisc's own handle, `TC_H_MAKE(TC_H_CLSACT, 0)`.
const CLSACT_HANDLE: u32 = 0xFFFF_0000;
/// `TCA_KIND` attribute type.
const TCA_KIND: u16 = 1;
/// Size of `struct nlmsghdr`.
const NLMSG_HDR_LEN: usize = 16;
/// Size of `struct tcmsg`.
const TCMSG_LEN: usize = 20;

/// The `RTM_DELQDISC` request for the clsact qdisc of `ifindex`.
fn delete_clsact_request(ifindex: u32, seq: u32) -> Vec<u8> {
    let kind = b"clsact\0";
    let attr_len = 4 + kind.len();
    let attr_padded = (attr_len + 3) & !3;
    let total = NLMSG_HDR_LEN + TCMSG_LEN + attr_padded;
    let mut m = Vec::with_capacity(total);
    // nlmsghdr
    m.extend_from_slice(&(total as u32).to_ne_bytes());
    m.extend_from_slice(&libc::RTM_DELQDISC.to_ne_bytes());
    m.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // tcmsg
    m.push(libc::AF_UNSPEC as u8);
    m.extend_from_slice(&[0, 0, 0]);
    m.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    m.extend_from_slice(&CLSACT_HANDLE.to_ne_bytes());
    m.extend_from_slice(&TC_H_CLSACT.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // rtattr TCA_KIND "clsact"
    m.extend_from_slice(&(attr_len as u16).to_ne_bytes());
    m.extend_from_slice(&TCA_KIND.to_ne_bytes());
    m.extend_from_slice(kind);
    m.resize(total, 0);
    m
}

/// Reads the kernel's answer to a request sent with `NLM_F_ACK`: `Ok` for an
/// acknowledgement, the errno for an error message.
pub(crate) fn parse_ack(buf: &[u8], seq: u32) -> io::Result<()> {
    let mut off = 0;
    while buf.len().saturating_sub(off) >= NLMSG_HDR_LEN {
        let field = |at: usize| -> [u8; 4] {
            let mut b = [0u8; 4];
            b.copy_from_slice(&buf[off + at..off + at + 4]);
            b
        };
        let len = u32::from_ne_bytes(field(0)) as usize;
        let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        let msg_seq = u32::from_ne_bytes(field(8));
        if len < NLMSG_HDR_LEN || off + len > buf.len() {
            break;
        }
        if ty == libc::NLMSG_ERROR as u16 && msg_seq == seq && len >= NLMSG_HDR_LEN + 4 {
            let code = i32::from_ne_bytes(field(NLMSG_HDR_LEN));
            return if code == 0 {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(code.saturating_neg()))
            };
        }
        off += (len + 3) & !3;
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "no netlink acknowledgement in the kernel's answer",
    ))
}

/// Deletes the clsact qdisc (and with it every TC filter on it) of `ifindex`.
pub fn delete_clsact(ifindex: u32) -> io::Result<()> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh, valid descriptor owned by nothing else.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let seq = 1;
    let req = delete_clsact_request(ifindex, seq);
    let buf = exchange(&sock, &req)?;
    parse_ack(&buf, seq)
}

/// Sends `req` to the kernel and returns its answer.
pub(crate) fn exchange(sock: &OwnedFd, req: &[u8]) -> io::Result<Vec<u8>> {
    // SAFETY: an all-zero sockaddr_nl is valid; the fields set are plain integers.
    let mut addr: libc::sockaddr_nl = unsafe { mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: `req` and `addr` are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            req.as_ptr().cast(),
            req.len(),
            0,
            (&addr as *const libc::sockaddr_nl).cast(),
            mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 8192];
    // SAFETY: `buf` is valid for writes of its length.
    let got = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(got as usize);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout() {
        let m = delete_clsact_request(7, 42);
        assert_eq!(m.len(), 48);
        assert_eq!(u32::from_ne_bytes([m[0], m[1], m[2], m[3]]), 48);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), libc::RTM_DELQDISC);
        assert_eq!(i32::from_ne_bytes([m[20], m[21], m[22], m[23]]), 7);
        assert_eq!(&m[40..47], b"clsact\0");
    }

    fn error_msg(seq: u32, code: i32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&36u32.to_ne_bytes());
        m.extend_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&code.to_ne_bytes());
        m.resize(36, 0);
        m
    }

    #[test]
    fn acks_and_errors() {
        assert!(parse_ack(&error_msg(1, 0), 1).is_ok());
        let e = parse_ack(&error_msg(1, -libc::ENOENT), 1).expect_err("errno");
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        assert!(parse_ack(&error_msg(2, 0), 1).is_err());
        assert!(parse_ack(&[], 1).is_err());
        assert!(parse_ack(&[0xff; 10], 1).is_err());
        let mut truncated = error_msg(1, 0);
        truncated[0] = 200;
        assert!(parse_ack(&truncated, 1).is_err());
    }

    /// Needs root and `tc`; run inside a throw-away namespace:
    /// `ip netns add t && ip netns exec t cargo test -p monitor -- --ignored clsact; ip netns del t`.
    #[test]
    #[ignore = "needs root and a scratch network namespace"]
    fn deletes_a_clsact_qdisc() {
        let tc = |args: &[&str]| {
            std::process::Command::new("tc")
                .args(args)
                .output()
                .expect("runs tc")
        };
        assert!(tc(&["qdisc", "add", "dev", "lo", "clsact"])
            .status
            .success());
        let show =
            || String::from_utf8_lossy(&tc(&["qdisc", "show", "dev", "lo"]).stdout).into_owned();
        assert!(show().contains("clsact"));
        delete_clsact(1).expect("deletes");
        assert!(!show().contains("clsact"), "{}", show());
        let again = delete_clsact(1).expect_err("nothing left to delete");
        assert!(again.raw_os_error().is_some(), "{again}");
    }
}
