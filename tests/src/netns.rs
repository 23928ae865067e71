//! Two network namespaces joined by a veth pair: the test's private network.
//!
//! The server side gets `10.200.X.Y+1/30` and `fd00:200:0:X::1/64`, the
//! client side `…+2/30` and `fd00:200:0:X::2/64` (`nodad`, so the IPv6
//! addresses are usable at once). Names are unique per process and call:
//! `hsmt-PID-N-srv` / `hsmt-PID-N-cli`. Everything is deleted on drop, also
//! when the test panics: first every process still inside the namespaces is
//! killed, then the namespaces (and with them the veth pair) are deleted.

use crate::cmd;
use anyhow::{anyhow, bail, Context, Result};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

const IP_TIMEOUT: Duration = Duration::from_secs(10);

/// A server namespace and a client namespace joined by a veth pair.
#[derive(Debug)]
pub struct NetPair {
    /// Name of the server's namespace (where servers, tcpdump and hsmon run).
    pub server_ns: String,
    /// Name of the client's namespace.
    pub client_ns: String,
    /// The veth end inside the server namespace (hsmon's `--iface`).
    pub server_if: String,
    /// The veth end inside the client namespace.
    pub client_if: String,
    /// Server IPv4 address.
    pub server_v4: Ipv4Addr,
    /// Client IPv4 address.
    pub client_v4: Ipv4Addr,
    /// Server IPv6 (ULA) address.
    pub server_v6: Ipv6Addr,
    /// Client IPv6 (ULA) address.
    pub client_v6: Ipv6Addr,
    created: Vec<String>,
}

impl NetPair {
    /// Creates both namespaces, the veth pair and the addresses, brings the
    /// links up and waits until both address families carry TCP.
    pub fn create() -> Result<Self> {
        remove_stale_namespaces();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let block = n % 16384; // 16384 /30 blocks in 10.200.0.0/16
        let base = block * 4;
        let third = u8::try_from(base / 256).context("address block")?;
        let fourth = u8::try_from(base % 256).context("address block")?;
        let block16 = u16::try_from(block).context("address block")?;
        let mut pair = Self {
            server_ns: format!("hsmt-{pid}-{n}-srv"),
            client_ns: format!("hsmt-{pid}-{n}-cli"),
            server_if: "hsmt-srv".to_owned(),
            client_if: "hsmt-cli".to_owned(),
            server_v4: Ipv4Addr::new(10, 200, third, fourth + 1),
            client_v4: Ipv4Addr::new(10, 200, third, fourth + 2),
            server_v6: Ipv6Addr::new(0xfd00, 0x200, 0, block16, 0, 0, 0, 1),
            client_v6: Ipv6Addr::new(0xfd00, 0x200, 0, block16, 0, 0, 0, 2),
            created: Vec::new(),
        };
        pair.setup()?;
        Ok(pair)
    }

    fn setup(&mut self) -> Result<()> {
        for ns in [self.server_ns.clone(), self.client_ns.clone()] {
            ip(&["netns", "add", &ns])?;
            self.created.push(ns);
        }
        // Both ends are created directly inside their namespaces, so the
        // names never collide with anything in the root namespace.
        ip(&[
            "link",
            "add",
            &self.server_if,
            "netns",
            &self.server_ns,
            "type",
            "veth",
            "peer",
            "name",
            &self.client_if,
            "netns",
            &self.client_ns,
        ])?;
        let sides = [
            (
                &self.server_ns,
                &self.server_if,
                self.server_v4,
                self.server_v6,
            ),
            (
                &self.client_ns,
                &self.client_if,
                self.client_v4,
                self.client_v6,
            ),
        ];
        for (ns, dev, v4, v6) in sides {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "addr", "add", &format!("{v4}/30"), "dev", dev])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        self.wait_ready(Duration::from_secs(10))
    }

    /// Waits until both links are up, no address is tentative and a TCP SYN
    /// from the client to a closed server port is answered by a RST over
    /// IPv4 and IPv6 (a refused connect proves the path works).
    fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.check_ready() {
                Ok(()) => return Ok(()),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "network pair {} not ready within {timeout:?}: {last}",
                    self.server_ns
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn check_ready(&self) -> Result<()> {
        for (ns, dev) in [
            (&self.server_ns, &self.server_if),
            (&self.client_ns, &self.client_if),
        ] {
            let link = ip(&["-n", ns, "-o", "link", "show", "dev", dev])?;
            if !link.contains("state UP") {
                bail!("{ns}/{dev} not up: {link}");
            }
            let addrs = ip(&[
                "-n", ns, "-o", "addr", "show", "dev", dev, "scope", "global",
            ])?;
            if addrs.contains("tentative") {
                bail!("{ns}/{dev} has a tentative address: {addrs}");
            }
        }
        for ip in [IpAddr::V4(self.server_v4), IpAddr::V6(self.server_v6)] {
            // Port 9 (discard): nothing listens, the server's kernel answers
            // with a RST. Sent before any capture or agent starts.
            let target = SocketAddr::new(ip, 9);
            let r = in_netns(&self.client_ns, move || {
                TcpStream::connect_timeout(&target, Duration::from_millis(500))
            })?;
            match r {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                Err(e) => bail!("probe {target}: {e}"),
                Ok(_) => bail!("probe {target}: something listens on port 9"),
            }
        }
        Ok(())
    }

    /// The server's address of the chosen family with `port`.
    pub fn server_addr(&self, ipv6: bool, port: u16) -> SocketAddr {
        if ipv6 {
            SocketAddr::new(IpAddr::V6(self.server_v6), port)
        } else {
            SocketAddr::new(IpAddr::V4(self.server_v4), port)
        }
    }

    /// The client's address of the chosen family (port 0).
    pub fn client_ip(&self, ipv6: bool) -> IpAddr {
        if ipv6 {
            IpAddr::V6(self.client_v6)
        } else {
            IpAddr::V4(self.client_v4)
        }
    }

    /// `ip netns exec SERVER_NS program`: add arguments and spawn.
    pub fn server_cmd(&self, program: &str) -> Command {
        ns_cmd(&self.server_ns, program)
    }

    /// `ip netns exec CLIENT_NS program`: add arguments and spawn.
    pub fn client_cmd(&self, program: &str) -> Command {
        ns_cmd(&self.client_ns, program)
    }

    /// Pids of the processes inside the namespaces.
    pub fn pids(&self) -> Vec<i32> {
        pids_in(&self.created)
    }
}

/// Pids of the processes inside the namespaces `names`.
pub fn pids_in(names: &[String]) -> Vec<i32> {
    let mut pids = Vec::new();
    for ns in names {
        if let Ok(out) = ip(&["netns", "pids", ns]) {
            pids.extend(out.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
    }
    pids
}

/// Removes the namespaces a test created (newest first), after killing the
/// processes still inside them (normally their guards have already killed
/// them; a namespace lives on while a process is inside it). Leaves
/// `created` empty; failures are warnings (this runs in `Drop`).
pub fn remove_created(created: &mut Vec<String>) {
    for _ in 0..3 {
        let pids = pids_in(created);
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            // SAFETY: kill(2) with a pid read from `ip netns pids` of a
            // namespace this test created.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for ns in created.drain(..).rev() {
        if let Err(e) = ip(&["netns", "del", &ns]) {
            eprintln!("warning: deleting namespace {ns}: {e:#}");
        }
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        remove_created(&mut self.created);
    }
}

/// `ip netns exec NS program`.
pub fn ns_cmd(ns: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]);
    c
}

/// Deletes the `hsmt-PID-N-*` namespaces of test processes that no longer
/// exist (a test killed with SIGKILL cannot run its drops), once per
/// process; each deletion is reported on stderr.
fn remove_stale_namespaces() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        let Ok(list) = ip(&["netns", "list"]) else {
            return;
        };
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            let Some(pid) = name
                .strip_prefix("hsmt-")
                .and_then(|rest| rest.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if std::path::Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            match ip(&["netns", "del", name]) {
                Ok(_) => eprintln!("removed namespace {name} left by the dead test process {pid}"),
                Err(e) => eprintln!("could not remove the stale namespace {name}: {e:#}"),
            }
        }
        unmount_stale_bpffs();
    });
}

/// Unmounts the private bpffs mounts (`.../bpffs-PID-N`, see
/// `hsmon::AgentState`) of test processes that no longer exist: their pinned
/// links (uprobes, the tracepoint) would otherwise stay attached for good.
fn unmount_stale_bpffs() {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    for mount_point in stale_bpffs_mounts(&info, |pid| {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    }) {
        let mut c = Command::new("umount");
        c.arg("-l").arg(&mount_point);
        match cmd::run_ok(&mut c, IP_TIMEOUT) {
            Ok(_) => eprintln!("unmounted the bpffs {mount_point} left by a dead test process"),
            Err(e) => eprintln!("could not unmount the stale bpffs {mount_point}: {e:#}"),
        }
    }
}

/// The mount points in `mountinfo` of bpf filesystems named `bpffs-PID-N`
/// whose PID `alive` says is gone.
fn stale_bpffs_mounts(mountinfo: &str, alive: impl Fn(u32) -> bool) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let mut halves = line.splitn(2, " - ");
            let (left, right) = (halves.next()?, halves.next()?);
            if right.split_whitespace().next() != Some("bpf") {
                return None;
            }
            let mount_point = left.split_whitespace().nth(4)?;
            let last = mount_point.rsplit('/').next()?;
            let pid = last
                .strip_prefix("bpffs-")?
                .split('-')
                .next()?
                .parse()
                .ok()?;
            (!alive(pid)).then(|| mount_point.to_owned())
        })
        .collect()
}

/// Runs `ip ARGS` and returns stdout; fails with stderr on a non-zero exit.
pub fn ip(args: &[&str]) -> Result<String> {
    let mut c = Command::new("ip");
    c.args(args);
    cmd::run_ok(&mut c, IP_TIMEOUT)
}

fn enter_netns(ns: &str) -> Result<()> {
    let path = format!("/var/run/netns/{ns}");
    let f = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns(2) on a valid namespace fd; it changes only the calling
    // thread's network namespace, and that thread is one we own.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("setns into {ns}"));
    }
    Ok(())
}

/// Runs `f` on a new thread that has entered namespace `ns` and returns its
/// result. Sockets created by `f` belong to `ns` for their whole life.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    spawn_in_netns(ns, f)?
        .join()
        .map_err(|_| anyhow!("thread in namespace {ns} panicked"))?
}

/// Spawns a thread that enters namespace `ns` and runs `f`; join it later.
pub fn spawn_in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<Result<T>>> {
    let ns = ns.to_owned();
    std::thread::Builder::new()
        .name(format!("in-{ns}"))
        .spawn(move || {
            enter_netns(&ns)?;
            Ok(f())
        })
        .context("spawning a thread")
}

/// One TCP connect from namespace `ns` to `dst` (bound to `src` when
/// given): `Ok(true)` when established within `timeout`, `Ok(false)` when it
/// times out (the SYN or its answer was dropped, as a ban does), an error
/// otherwise (a refused connect means the path works but nothing listens: a
/// test bug). With `hello`, a line is sent once connected, so the TC
/// programs see a data segment.
pub fn tcp_connects(
    ns: &str,
    src: Option<IpAddr>,
    dst: SocketAddr,
    timeout: Duration,
    hello: bool,
) -> Result<bool> {
    use socket2::{Domain, SockAddr, Socket, Type};
    use std::io::Write as _;
    in_netns(ns, move || -> Result<bool> {
        let s = Socket::new(Domain::for_address(dst), Type::STREAM, None)
            .context("creating a socket")?;
        if let Some(src) = src {
            s.bind(&SockAddr::from(SocketAddr::new(src, 0)))
                .with_context(|| format!("binding to {src}"))?;
        }
        match s.connect_timeout(&SockAddr::from(dst), timeout) {
            Ok(()) => {
                if hello {
                    let mut t: TcpStream = s.into();
                    let _ = t.write_all(b"hello\n");
                }
                Ok(true)
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::TimedOut
                    || e.kind() == std::io::ErrorKind::WouldBlock =>
            {
                Ok(false)
            }
            Err(e) => Err(e).with_context(|| match src {
                Some(src) => format!("connecting {src} -> {dst}"),
                None => format!("connecting to {dst}"),
            }),
        }
    })?
}

#[cfg(test)]
mod stale_mounts {
    use super::stale_bpffs_mounts;

    #[test]
    fn finds_only_bpffs_of_dead_pids() {
        let info = "\
36 25 0:31 / /sys/fs/bpf rw,nosuid shared:14 - bpf bpf rw,mode=700
90 25 0:52 / /tmp/hsmt-1/bpffs-100-0 rw,relatime shared:50 - bpf bpf rw
91 25 0:53 / /tmp/hsmt-2/bpffs-200-3 rw,relatime shared:51 - bpf bpf rw
92 25 0:54 / /tmp/hsmt-3/bpffs-300-0 rw,relatime shared:52 - tmpfs tmpfs rw
";
        let got = stale_bpffs_mounts(info, |pid| pid == 200);
        assert_eq!(got, vec!["/tmp/hsmt-1/bpffs-100-0".to_owned()]);
    }
}
