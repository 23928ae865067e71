//! A third namespace hanging off the client namespace of a [`NetPair`]: more
//! peers (a benign client, a prefix of attackers) whose traffic reaches the
//! server through the same veth the agent watches, from addresses outside
//! the client's prefix.
//!
//! The side namespace gets `10.201.S.2/24` (and any address added with
//! [`SideNet::add_addr`]); its veth peer in the client namespace
//! `10.201.S.1/24`. The client namespace forwards IPv4, the side namespace
//! routes everything through it, and the server namespace routes
//! `10.201.S.0/24` via the client's address. IPv4 only. The namespace (and its
//! veth pair) is deleted on drop, processes inside it killed first.

use anyhow::{bail, Context, Result};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::netns::{in_netns, ip, ns_cmd, NetPair};

/// The side namespace.
#[derive(Debug)]
pub struct SideNet {
    /// Its name.
    pub ns: String,
    /// Its first address (`10.201.S.2`).
    pub ip: Ipv4Addr,
    /// Its interface.
    pub iface: String,
    subnet: u8,
}

impl SideNet {
    /// Creates the namespace `<client_ns>-<tag>` on subnet `10.201.subnet.0/24`
    /// and waits until it reaches the server (TCP to port 9 is refused).
    pub fn attach(net: &NetPair, tag: &str, subnet: u8) -> Result<Self> {
        let ns = format!("{}-{tag}", net.client_ns);
        ip(&["netns", "add", &ns])?;
        let side = SideNet {
            ns,
            ip: Ipv4Addr::new(10, 201, subnet, 2),
            iface: "hsmt-side".to_owned(),
            subnet,
        };
        side.setup(net)
            .with_context(|| format!("setting up {}", side.ns))?;
        Ok(side)
    }

    fn setup(&self, net: &NetPair) -> Result<()> {
        let router_if = "hsmt-rtr";
        ip(&[
            "link",
            "add",
            router_if,
            "netns",
            &net.client_ns,
            "type",
            "veth",
            "peer",
            "name",
            &self.iface,
            "netns",
            &self.ns,
        ])?;
        let router = Ipv4Addr::new(10, 201, self.subnet, 1);
        ip(&[
            "-n",
            &net.client_ns,
            "addr",
            "add",
            &format!("{router}/24"),
            "dev",
            router_if,
        ])?;
        ip(&["-n", &net.client_ns, "link", "set", router_if, "up"])?;
        ip(&["-n", &self.ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &self.ns,
            "addr",
            "add",
            &format!("{}/24", self.ip),
            "dev",
            &self.iface,
        ])?;
        ip(&["-n", &self.ns, "link", "set", &self.iface, "up"])?;
        ip(&[
            "-n",
            &self.ns,
            "route",
            "add",
            "default",
            "via",
            &router.to_string(),
        ])?;
        let mut c = ns_cmd(&net.client_ns, "sysctl");
        c.args(["-qw", "net.ipv4.ip_forward=1"]);
        crate::cmd::run_ok(&mut c, Duration::from_secs(10))?;
        ip(&[
            "-n",
            &net.server_ns,
            "route",
            "add",
            &format!("10.201.{}.0/24", self.subnet),
            "via",
            &net.client_v4.to_string(),
        ])?;
        let target = SocketAddr::new(IpAddr::V4(net.server_v4), 9);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = in_netns(&self.ns, move || {
                TcpStream::connect_timeout(&target, Duration::from_millis(500))
            })?;
            match r {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(()),
                other if Instant::now() >= deadline => {
                    bail!("{} cannot reach {target}: {other:?}", self.ns)
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Adds `10.201.S.host/24` to the side namespace; returns it.
    pub fn add_addr(&self, host: u8) -> Result<Ipv4Addr> {
        let a = Ipv4Addr::new(10, 201, self.subnet, host);
        ip(&[
            "-n",
            &self.ns,
            "addr",
            "add",
            &format!("{a}/24"),
            "dev",
            &self.iface,
        ])?;
        Ok(a)
    }

    /// `ip netns exec SIDE program`.
    pub fn cmd(&self, program: &str) -> Command {
        ns_cmd(&self.ns, program)
    }
}

impl Drop for SideNet {
    fn drop(&mut self) {
        for _ in 0..3 {
            let pids: Vec<i32> = ip(&["netns", "pids", &self.ns])
                .map(|o| {
                    o.split_whitespace()
                        .filter_map(|p| p.parse().ok())
                        .collect()
                })
                .unwrap_or_default();
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
        if let Err(e) = ip(&["netns", "del", &self.ns]) {
            eprintln!("warning: deleting namespace {}: {e:#}", self.ns);
        }
    }
}
