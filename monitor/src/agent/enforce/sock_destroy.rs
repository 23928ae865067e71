//! Resetting one TCP connection of this host: `SOCK_DESTROY` over
//! `NETLINK_SOCK_DIAG` (what `ss -K` does; needs `CONFIG_INET_DIAG_DESTROY`
//! and CAP_NET_ADMIN). The kernel aborts the socket (`tcp_abort`): the local
//! application's next call fails with `ECONNABORTED` and the peer gets a RST.
//!
//! sock_diag acts on the calling thread's network namespace, so the request
//! is sent from a thread inside the namespace that owns the socket
//! ([`crate::agent::kernel::netns`]; `setns(CLONE_NEWNET)` moves one
//! thread only):
//!
//! - **Socket hooks** (`--hooks socket`): the flow carries the server
//!   socket's cookie and its namespace's cookie. The namespace with that
//!   cookie is found (the agent's own, or one a process is in or `ip netns`
//!   keeps) and the socket is looked up there *with its cookie*: the kernel
//!   answers only for that very socket, so a socket with the same 4-tuple in
//!   another namespace, or a newer connection reusing the 4-tuple, is never
//!   touched.
//! - **TC hooks**: no cookie. The agent's own namespace is tried first; when
//!   no socket with that 4-tuple is there, every other namespace is asked
//!   (an exact 4-tuple query in each), and the socket is destroyed only when
//!   exactly one namespace has it. Two or more namespaces with that 4-tuple
//!   (the flow does not say whose it is) are reported as a failure, not
//!   guessed.
//!
//! `already_closed` ([`Outcome::Gone`]) therefore means: no such socket in
//! the namespace that owns the flow (or, for TC flows, in any namespace).
//! A namespace that cannot be found is an error (`reset_failed`), never
//! `already_closed`.
//!
//! Why netlink and not the `bpf_sock_destroy` kfunc from an `iter/tcp`
//! program (kernel >= 6.5): the TCP iterator also walks only the namespace
//! its creator was in, so it needs the same per-namespace thread; it is a
//! `BPF_PROG_TYPE_TRACING` program, which this project's reference kernel
//! refuses (`bpftool feature probe`: "program_type tracing is NOT
//! available", like fentry); and it would add a program to the eBPF object
//! for something the agent does a few times a minute at most. sock_diag
//! (`CONFIG_INET_DIAG_DESTROY`) works on every kernel the agent supports.
//!
//! An exact sock_diag request looks the 4-tuple up the way an arriving packet
//! would, so when the connection is already gone it finds the *listening*
//! socket of the port instead. Destroying by 4-tuple alone could therefore
//! abort a server's listener. So the socket is first queried
//! (`SOCK_DIAG_BY_FAMILY`), checked to be that connection (not listening, the
//! remote port matches), and then destroyed by its cookie, which names that
//! one socket and nothing else.

use std::io;
use std::mem;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

use crate::agent::kernel::netlink::{exchange, parse_ack};
use crate::agent::kernel::netns;
use crate::api::decisions::SocketCookies;

/// `SOCK_DIAG_BY_FAMILY`: query sockets.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `SOCK_DESTROY`: abort a socket.
pub const SOCK_DESTROY: u16 = 21;
/// Size of `struct nlmsghdr`.
const NLMSG_HDR_LEN: usize = 16;
/// Size of `struct inet_diag_req_v2`.
const REQ_LEN: usize = 56;
/// Offset of `struct inet_diag_sockid` in `inet_diag_req_v2` (after family,
/// protocol, ext, pad and the states word).
const REQ_ID_OFF: usize = 8;
/// Offset of `struct inet_diag_sockid` in `inet_diag_msg` (after family,
/// state, timer, retrans).
const MSG_ID_OFF: usize = 4;
/// Size of `struct inet_diag_sockid`.
const SOCKID_LEN: usize = 48;
/// Cookie value meaning "any socket".
const INET_DIAG_NOCOOKIE: u32 = !0;
/// `TCP_LISTEN` in `enum tcp_state`.
const TCP_LISTEN: u8 = 10;
/// `TCP_TIME_WAIT` in `enum tcp_state`: the connection is closed.
const TCP_TIME_WAIT: u8 = 6;
/// `TCP_CLOSE` in `enum tcp_state`.
const TCP_CLOSE: u8 = 7;
/// How long to wait for the kernel's answer.
const RECV_TIMEOUT: Duration = Duration::from_secs(1);

/// What [`destroy`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The socket was aborted.
    Destroyed,
    /// No such connection any more (it closed first).
    Gone,
}

/// A TCP connection as seen from the local socket to destroy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conn {
    /// The local socket's address (for the server side: the server).
    pub local: SocketAddr,
    /// The peer's address.
    pub remote: SocketAddr,
}

/// The address family and `inet_diag_sockid` address words of a connection;
/// IPv4-mapped addresses are IPv4 (the kernel's IPv4 lookup also finds
/// dual-stack IPv6 sockets with mapped peers).
fn family_and_addrs(conn: &Conn) -> Result<(u8, [u8; 16], [u8; 16])> {
    let norm = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    match (norm(conn.local.ip()), norm(conn.remote.ip())) {
        (IpAddr::V4(l), IpAddr::V4(r)) => {
            let mut lb = [0u8; 16];
            let mut rb = [0u8; 16];
            lb[..4].copy_from_slice(&l.octets());
            rb[..4].copy_from_slice(&r.octets());
            Ok((libc::AF_INET as u8, lb, rb))
        }
        (IpAddr::V6(l), IpAddr::V6(r)) => Ok((libc::AF_INET6 as u8, l.octets(), r.octets())),
        (l, r) => bail!("mixed address families: local {l}, remote {r}"),
    }
}

/// A `SOCK_DIAG_BY_FAMILY` (query) or `SOCK_DESTROY` request for the TCP
/// socket of `conn` with `cookie` (`[INET_DIAG_NOCOOKIE; 2]`: any).
pub fn request(msg_type: u16, seq: u32, conn: &Conn, cookie: [u32; 2]) -> Result<Vec<u8>> {
    let (family, local, remote) = family_and_addrs(conn)?;
    let total = NLMSG_HDR_LEN + REQ_LEN;
    let mut flags = libc::NLM_F_REQUEST as u16;
    if msg_type == SOCK_DESTROY {
        flags |= libc::NLM_F_ACK as u16;
    }
    let mut m = Vec::with_capacity(total);
    // nlmsghdr
    m.extend_from_slice(&(total as u32).to_ne_bytes());
    m.extend_from_slice(&msg_type.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // inet_diag_req_v2
    m.push(family);
    m.push(libc::IPPROTO_TCP as u8);
    m.push(0); // idiag_ext
    m.push(0); // pad
    m.extend_from_slice(&u32::MAX.to_ne_bytes()); // idiag_states: all
                                                  // inet_diag_sockid: ports and addresses in network order.
    debug_assert_eq!(m.len(), NLMSG_HDR_LEN + REQ_ID_OFF);
    m.extend_from_slice(&conn.local.port().to_be_bytes());
    m.extend_from_slice(&conn.remote.port().to_be_bytes());
    m.extend_from_slice(&local);
    m.extend_from_slice(&remote);
    m.extend_from_slice(&0u32.to_ne_bytes()); // idiag_if: any
    m.extend_from_slice(&cookie[0].to_ne_bytes());
    m.extend_from_slice(&cookie[1].to_ne_bytes());
    debug_assert_eq!(m.len(), total);
    Ok(m)
}

/// The socket a query found: its TCP state, remote port and cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    /// `enum tcp_state`.
    pub state: u8,
    /// The socket's remote port.
    pub remote_port: u16,
    /// `idiag_cookie`.
    pub cookie: [u32; 2],
}

/// Reads the kernel's answer to a query: the socket, `Ok(None)` when there
/// is none (`ENOENT`), an error otherwise.
pub fn parse_query_answer(buf: &[u8], seq: u32) -> Result<Option<Found>> {
    let mut off = 0;
    while buf.len().saturating_sub(off) >= NLMSG_HDR_LEN {
        let word = |at: usize| -> [u8; 4] {
            let mut b = [0u8; 4];
            b.copy_from_slice(&buf[off + at..off + at + 4]);
            b
        };
        let len = u32::from_ne_bytes(word(0)) as usize;
        let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        let msg_seq = u32::from_ne_bytes(word(8));
        if len < NLMSG_HDR_LEN || off + len > buf.len() {
            break;
        }
        if msg_seq == seq {
            if ty == libc::NLMSG_ERROR as u16 && len >= NLMSG_HDR_LEN + 4 {
                let code = i32::from_ne_bytes(word(NLMSG_HDR_LEN));
                if code.saturating_neg() == libc::ENOENT {
                    return Ok(None);
                }
                return Err(io::Error::from_raw_os_error(code.saturating_neg()))
                    .context("sock_diag query");
            }
            if ty == SOCK_DIAG_BY_FAMILY && len >= NLMSG_HDR_LEN + MSG_ID_OFF + SOCKID_LEN {
                let body = &buf[off + NLMSG_HDR_LEN..off + len];
                let id = &body[MSG_ID_OFF..MSG_ID_OFF + SOCKID_LEN];
                let ne =
                    |at: usize| u32::from_ne_bytes([id[at], id[at + 1], id[at + 2], id[at + 3]]);
                return Ok(Some(Found {
                    state: body[1],
                    remote_port: u16::from_be_bytes([id[2], id[3]]),
                    cookie: [ne(40), ne(44)],
                }));
            }
        }
        off += (len + 3) & !3;
    }
    bail!("no sock_diag answer in the kernel's {} bytes", buf.len())
}

/// A `NETLINK_SOCK_DIAG` socket with a receive timeout.
fn open() -> Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error()).context("opening a NETLINK_SOCK_DIAG socket");
    }
    // SAFETY: `raw` is a fresh, valid descriptor owned by nothing else.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let tv = libc::timeval {
        tv_sec: RECV_TIMEOUT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: `tv` is a valid timeval for the length given.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error()).context("setting SO_RCVTIMEO");
    }
    Ok(sock)
}

/// Pauses before the second and third attempt of [`destroy`].
const RETRY_PAUSES: [std::time::Duration; 2] = [
    std::time::Duration::from_millis(20),
    std::time::Duration::from_millis(100),
];

/// Aborts the local TCP socket of `conn` in the network namespace that
/// owns it (see the module doc; `socket` is the flow's socket identity in
/// socket mode, `None` for a TC flow). A failed attempt (no netlink socket:
/// `EMFILE`; a lost answer; the namespace not found) is logged and retried
/// twice; the last error is returned, for the caller to report.
pub fn destroy(conn: &Conn, socket: Option<SocketCookies>) -> Result<Outcome> {
    let mut result = destroy_once(conn, socket);
    for pause in RETRY_PAUSES {
        let Err(e) = &result else {
            break;
        };
        tracing::warn!(local = %conn.local, remote = %conn.remote, "reset attempt failed, retrying: {e:#}");
        std::thread::sleep(pause);
        result = destroy_once(conn, socket);
    }
    result.context("resetting the connection (3 attempts)")
}

/// The sock_diag cookie words of a socket cookie.
fn cookie_words(cookie: u64) -> [u32; 2] {
    [cookie as u32, (cookie >> 32) as u32]
}

/// One attempt of [`destroy`].
fn destroy_once(conn: &Conn, socket: Option<SocketCookies>) -> Result<Outcome> {
    match socket {
        Some(id) => destroy_in_owner(conn, id),
        None => destroy_anywhere(conn),
    }
}

/// Socket mode: that socket, in the namespace with that cookie.
fn destroy_in_owner(conn: &Conn, id: SocketCookies) -> Result<Outcome> {
    let cookie = cookie_words(id.socket);
    if id.netns == netns::own_cookie()? {
        return destroy_here(conn, cookie);
    }
    let Some(ns) = netns::find(id.netns) else {
        bail!(
            "the socket's network namespace (cookie {}) was not found: no process is in it \
             and /run/netns does not name it",
            id.netns
        );
    };
    let outcome = netns::run_in(ns.fd(), || destroy_here(conn, cookie))
        .with_context(|| format!("entering the network namespace of {}", ns.path.display()))??;
    tracing::debug!(local = %conn.local, remote = %conn.remote, netns = %ns.path.display(), ?outcome, "SOCK_DESTROY in the socket's namespace");
    Ok(outcome)
}

/// TC mode: the agent's namespace, else the one other namespace that has
/// a socket with this 4-tuple.
fn destroy_anywhere(conn: &Conn) -> Result<Outcome> {
    if destroy_here(conn, [INET_DIAG_NOCOOKIE; 2])? == Outcome::Destroyed {
        return Ok(Outcome::Destroyed);
    }
    let others = netns::others()?;
    // One thread visits every namespace (not one thread each).
    let answers = netns::run_in_each(&others, |_| query_here(conn, [INET_DIAG_NOCOOKIE; 2]));
    if answers.len() != others.len() {
        bail!("the thread visiting the other network namespaces failed");
    }
    let mut holders = Vec::new();
    for (ns, answer) in others.iter().zip(answers) {
        match answer {
            Ok(Ok(Some(found))) => holders.push((ns, found)),
            Ok(Ok(None)) => {}
            Ok(Err(e)) | Err(e) => {
                tracing::debug!(netns = %ns.path.display(), "sock_diag query: {e:#}");
            }
        }
    }
    match holders.as_slice() {
        [] => Ok(Outcome::Gone),
        [(ns, found)] => {
            let outcome = netns::run_in(ns.fd(), || destroy_here(conn, found.cookie))
                .with_context(|| {
                    format!("entering the network namespace of {}", ns.path.display())
                })??;
            tracing::info!(local = %conn.local, remote = %conn.remote, netns = %ns.path.display(), ?outcome, "the connection's socket was in another network namespace");
            Ok(outcome)
        }
        many => bail!(
            "{} network namespaces have a socket with this 4-tuple and a TC-observed flow \
             does not say whose it is: none reset (--hooks socket names the namespace)",
            many.len()
        ),
    }
}

/// Looks the connection's socket up in the calling thread's namespace
/// (with `cookie`: only that socket); `None` when there is no such
/// connection (gone, closed, or only the listener of its port).
fn query_here(conn: &Conn, cookie: [u32; 2]) -> Result<Option<Found>> {
    let sock = open()?;
    query(&sock, conn, cookie)
}

/// [`query_here`] on an open sock_diag socket.
fn query(sock: &OwnedFd, conn: &Conn, cookie: [u32; 2]) -> Result<Option<Found>> {
    let req = request(SOCK_DIAG_BY_FAMILY, 1, conn, cookie)?;
    let answer = exchange(sock, &req).context("sock_diag query")?;
    let Some(found) = parse_query_answer(&answer, 1)? else {
        return Ok(None);
    };
    if matches!(found.state, TCP_LISTEN | TCP_TIME_WAIT | TCP_CLOSE)
        || found.remote_port != conn.remote.port()
    {
        // The connection is closed, or gone and the lookup fell back to
        // the listener.
        return Ok(None);
    }
    Ok(Some(found))
}

/// Finds and destroys the connection's socket in the calling thread's
/// namespace (with `cookie`: only that socket).
fn destroy_here(conn: &Conn, cookie: [u32; 2]) -> Result<Outcome> {
    let sock = open()?;
    let Some(found) = query(&sock, conn, cookie)? else {
        return Ok(Outcome::Gone);
    };
    let req = request(SOCK_DESTROY, 2, conn, found.cookie)?;
    let answer = exchange(&sock, &req).context("SOCK_DESTROY")?;
    match parse_ack(&answer, 2) {
        Ok(()) => Ok(Outcome::Destroyed),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(Outcome::Gone),
        Err(e) => Err(e).context("SOCK_DESTROY"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(local: &str, remote: &str) -> Conn {
        Conn {
            local: local.parse().expect("address"),
            remote: remote.parse().expect("address"),
        }
    }

    #[test]
    fn ipv4_request_layout() {
        let c = conn("10.0.0.2:4433", "10.0.0.1:40000");
        let m = request(SOCK_DESTROY, 9, &c, [0x1122_3344, 0x5566_7788]).expect("request");
        assert_eq!(m.len(), 72);
        assert_eq!(u32::from_ne_bytes([m[0], m[1], m[2], m[3]]), 72);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), 21);
        let flags = u16::from_ne_bytes([m[6], m[7]]);
        assert_eq!(flags, (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16);
        assert_eq!(u32::from_ne_bytes([m[8], m[9], m[10], m[11]]), 9);
        let r = &m[NLMSG_HDR_LEN..];
        assert_eq!(r[0], libc::AF_INET as u8);
        assert_eq!(r[1], libc::IPPROTO_TCP as u8);
        assert_eq!(u32::from_ne_bytes([r[4], r[5], r[6], r[7]]), u32::MAX);
        let id = &r[REQ_ID_OFF..];
        assert_eq!(&id[0..2], &4433u16.to_be_bytes(), "sport: the local port");
        assert_eq!(&id[2..4], &40000u16.to_be_bytes(), "dport: the peer's");
        assert_eq!(&id[4..8], &[10, 0, 0, 2]);
        assert_eq!(&id[8..20], &[0; 12]);
        assert_eq!(&id[20..24], &[10, 0, 0, 1]);
        assert_eq!(&id[36..40], &[0; 4], "any interface");
        assert_eq!(
            u32::from_ne_bytes([id[40], id[41], id[42], id[43]]),
            0x1122_3344
        );
        assert_eq!(
            u32::from_ne_bytes([id[44], id[45], id[46], id[47]]),
            0x5566_7788
        );
    }

    #[test]
    fn query_has_no_ack_and_mapped_addresses_are_ipv4() {
        let c = conn("[::ffff:192.0.2.1]:443", "[::ffff:192.0.2.9]:5000");
        let m = request(SOCK_DIAG_BY_FAMILY, 1, &c, [INET_DIAG_NOCOOKIE; 2]).expect("request");
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), 20);
        assert_eq!(u16::from_ne_bytes([m[6], m[7]]), libc::NLM_F_REQUEST as u16);
        let r = &m[NLMSG_HDR_LEN..];
        assert_eq!(r[0], libc::AF_INET as u8);
        assert_eq!(&r[REQ_ID_OFF + 4..REQ_ID_OFF + 8], &[192, 0, 2, 1]);
        assert_eq!(&r[REQ_ID_OFF + 20..REQ_ID_OFF + 24], &[192, 0, 2, 9]);
        assert_eq!(&r[REQ_ID_OFF + 40..REQ_ID_OFF + 48], &[0xff; 8]);
    }

    #[test]
    fn ipv6_request_and_mixed_families() {
        let c = conn("[fd00::2]:443", "[fd00::1]:5000");
        let m = request(SOCK_DESTROY, 1, &c, [1, 2]).expect("request");
        let r = &m[NLMSG_HDR_LEN..];
        assert_eq!(r[0], libc::AF_INET6 as u8);
        let local: std::net::Ipv6Addr = "fd00::2".parse().expect("address");
        assert_eq!(&r[REQ_ID_OFF + 4..REQ_ID_OFF + 20], &local.octets());
        assert!(request(SOCK_DESTROY, 1, &conn("10.0.0.1:1", "[fd00::1]:2"), [0, 0]).is_err());
    }

    fn answer(seq: u32, ty: u16, body: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDR_LEN + body.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn query_answers() {
        // inet_diag_msg: family, state, timer, retrans, sockid, then 5 words.
        let mut body = vec![libc::AF_INET as u8, 1, 0, 0];
        let mut id = [0u8; SOCKID_LEN];
        id[0..2].copy_from_slice(&443u16.to_be_bytes());
        id[2..4].copy_from_slice(&5000u16.to_be_bytes());
        id[40..44].copy_from_slice(&7u32.to_ne_bytes());
        id[44..48].copy_from_slice(&8u32.to_ne_bytes());
        body.extend_from_slice(&id);
        body.extend_from_slice(&[0; 20]);
        let found = parse_query_answer(&answer(1, SOCK_DIAG_BY_FAMILY, &body), 1)
            .expect("parses")
            .expect("a socket");
        assert_eq!(
            found,
            Found {
                state: 1,
                remote_port: 5000,
                cookie: [7, 8]
            }
        );
        let enoent = answer(1, libc::NLMSG_ERROR as u16, &(-libc::ENOENT).to_ne_bytes());
        assert_eq!(parse_query_answer(&enoent, 1).expect("parses"), None);
        let eperm = answer(1, libc::NLMSG_ERROR as u16, &(-libc::EPERM).to_ne_bytes());
        assert!(parse_query_answer(&eperm, 1).is_err());
        assert!(parse_query_answer(&answer(2, SOCK_DIAG_BY_FAMILY, &body), 1).is_err());
        assert!(parse_query_answer(&body[..10], 1).is_err());
        assert!(parse_query_answer(&[], 1).is_err());
    }

    #[test]
    fn cookie_words_split_low_then_high() {
        assert_eq!(
            cookie_words(0x1122_3344_5566_7788),
            [0x5566_7788, 0x1122_3344]
        );
    }

    /// The socket cookie of `s` (`SO_COOKIE`).
    fn so_cookie(s: &std::net::TcpStream) -> u64 {
        use std::os::fd::AsRawFd as _;
        let mut c: u64 = 0;
        let mut len = mem::size_of::<u64>() as libc::socklen_t;
        // SAFETY: `c` and `len` are valid for the sizes given.
        let rc = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_COOKIE,
                (&mut c as *mut u64).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "SO_COOKIE");
        c
    }

    /// Needs root: with socket cookies, only the socket named is destroyed:
    /// a wrong cookie finds nothing (the connection survives), the right
    /// one resets it.
    #[test]
    #[ignore = "needs root (CAP_NET_ADMIN)"]
    fn a_socket_cookie_names_exactly_one_socket() {
        use std::io::{Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let server_addr = listener.local_addr().expect("addr");
        let mut client = std::net::TcpStream::connect(server_addr).expect("connect");
        let (mut server_side, client_addr) = listener.accept().expect("accept");
        let c = Conn {
            local: server_addr,
            remote: client_addr,
        };
        let own = netns::own_cookie().expect("own netns cookie");
        let real = so_cookie(&server_side);
        let wrong = SocketCookies {
            socket: real ^ 1,
            netns: own,
        };
        assert_eq!(destroy(&c, Some(wrong)).expect("destroy"), Outcome::Gone);
        server_side.write_all(b"x").expect("still open");
        let mut buf = [0u8; 1];
        client.read_exact(&mut buf).expect("still open");
        let right = SocketCookies {
            socket: real,
            netns: own,
        };
        assert_eq!(
            destroy(&c, Some(right)).expect("destroy"),
            Outcome::Destroyed
        );
        let err = client.read(&mut buf);
        assert!(
            matches!(&err, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
            "{err:?}"
        );
    }

    /// Needs root: a real loopback connection in the calling namespace is
    /// destroyed; its peer sees the reset; the listener survives.
    #[test]
    #[ignore = "needs root (CAP_NET_ADMIN)"]
    fn destroys_a_real_connection_and_spares_the_listener() {
        use std::io::Read as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let server_addr = listener.local_addr().expect("addr");
        let mut client = std::net::TcpStream::connect(server_addr).expect("connect");
        let (_server_side, client_addr) = listener.accept().expect("accept");
        let c = Conn {
            local: server_addr,
            remote: client_addr,
        };
        assert_eq!(destroy(&c, None).expect("destroy"), Outcome::Destroyed);
        let mut buf = [0u8; 1];
        let err = client.read(&mut buf);
        assert!(
            matches!(&err, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
            "{err:?}"
        );
        // Gone now: the lookup would find the listener, which is spared.
        assert_eq!(destroy(&c, None).expect("destroy"), Outcome::Gone);
        let _again = std::net::TcpStream::connect(server_addr).expect("listener still there");
    }
}
