//! Real host topologies for the `hosts` tests: a "host" network namespace
//! with Linux bridges, "containers" (namespaces on veths whose host ends are
//! bridge ports), an optional "outside" namespace joined to the host by its
//! own veth (the host's uplink, for a port published through nft DNAT), and
//! the agent running inside the host namespace with the hooks a test
//! chooses.
//!
//! Every address lives inside namespaces this module creates, so the same
//! addresses can be used by every test process at once. Everything is
//! removed on drop, also when the test panics: the processes left in the
//! namespaces are killed, then the namespaces are deleted (their veths,
//! bridges and nft tables go with them).

use crate::hsmon::{agent_cmd_in, hsmon_bin, Agent, AgentState};
use crate::netns::ip;
use anyhow::{bail, Context, Result};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One "container": a namespace whose `eth0` is a veth to a bridge port.
#[derive(Debug, Clone)]
pub struct Container {
    /// The namespace.
    pub ns: String,
    /// Its address on the bridge.
    pub ip: Ipv4Addr,
    /// The veth's host end (a port of `bridge`, in the host namespace).
    pub host_if: String,
    /// The bridge it is attached to.
    pub bridge: String,
}

/// The host's uplink: a namespace standing for the rest of the network,
/// joined to the host by a veth (`uplink` in the host namespace).
#[derive(Debug, Clone)]
pub struct Outside {
    /// The outside namespace.
    pub ns: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// The host's address on the uplink.
    pub host_ip: Ipv4Addr,
    /// The uplink's name in the host namespace.
    pub host_if: String,
}

/// A host namespace with bridges, containers and maybe an uplink.
#[derive(Debug)]
pub struct Host {
    /// The host namespace (where the bridges live and the agent runs).
    pub ns: String,
    /// The containers, in the order they were added.
    pub containers: Vec<Container>,
    /// The uplink, if added.
    pub outside: Option<Outside>,
    prefix: String,
    created: Vec<String>,
}

/// The Docker-like default: bridge `br0` with the host at this address.
pub const BRIDGE_GW: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
/// The server container's address on `br0`.
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 2);
/// The client container's address on `br0`.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 3);
/// The host's uplink address (where ports are published).
pub const UPLINK_HOST: Ipv4Addr = Ipv4Addr::new(10, 214, 0, 1);
/// The outside client's address.
pub const UPLINK_PEER: Ipv4Addr = Ipv4Addr::new(10, 214, 0, 2);
/// The twin bridges' server address (the same on both).
pub const TWIN_SERVER: Ipv4Addr = Ipv4Addr::new(10, 215, 0, 2);
/// The twin bridges' client address (the same on both).
pub const TWIN_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 215, 0, 3);

/// In [`Host::wait_ready`]'s probes: from the host namespace.
const HOST: usize = usize::MAX - 1;

impl Host {
    /// An empty host namespace (loopback up, IPv4 forwarding on).
    pub fn create() -> Result<Self> {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("hsmt-{}-h{n}", std::process::id());
        let mut host = Self {
            ns: format!("{prefix}-host"),
            containers: Vec::new(),
            outside: None,
            prefix,
            created: Vec::new(),
        };
        ip(&["netns", "add", &host.ns])?;
        host.created.push(host.ns.clone());
        ip(&["-n", &host.ns, "link", "set", "lo", "up"])?;
        host.sysctl("net.ipv4.ip_forward=1")?;
        Ok(host)
    }

    /// A Docker-like host: bridge `br0` (the host at [`BRIDGE_GW`]), a
    /// server container ([`SERVER_IP`]) and a client container
    /// ([`CLIENT_IP`]) on it, and an uplink to an outside namespace
    /// ([`UPLINK_HOST`] ↔ [`UPLINK_PEER`]).
    pub fn docker_like() -> Result<Self> {
        let mut h = Self::create()?;
        h.add_bridge("br0", Some(BRIDGE_GW))?;
        h.add_container("srv", "br0", SERVER_IP, Some(BRIDGE_GW))?;
        h.add_container("cli", "br0", CLIENT_IP, Some(BRIDGE_GW))?;
        h.add_outside(UPLINK_HOST, UPLINK_PEER)?;
        h.wait_ready(&[
            (1, SERVER_IP),
            (0, CLIENT_IP),
            (usize::MAX, UPLINK_HOST),
            (HOST, SERVER_IP),
        ])?;
        Ok(h)
    }

    /// Two bridges without host addresses, each with a server container
    /// ([`TWIN_SERVER`]) and a client container ([`TWIN_CLIENT`]): the same
    /// addresses twice. Containers 0, 1 are `br0`'s server and client, 2, 3
    /// `br1`'s.
    pub fn twin_bridges() -> Result<Self> {
        let mut h = Self::create()?;
        for (i, br) in ["br0", "br1"].iter().enumerate() {
            h.add_bridge(br, None)?;
            h.add_container(&format!("srv{i}"), br, TWIN_SERVER, None)?;
            h.add_container(&format!("cli{i}"), br, TWIN_CLIENT, None)?;
        }
        h.wait_ready(&[(1, TWIN_SERVER), (3, TWIN_SERVER)])?;
        Ok(h)
    }

    /// The container called `name` (`srv`, `cli`, `srv0`, …).
    pub fn container(&self, name: &str) -> Result<&Container> {
        let ns = format!("{}-{name}", self.prefix);
        self.containers
            .iter()
            .find(|c| c.ns == ns)
            .with_context(|| format!("no container {name}"))
    }

    /// `sysctl -w SETTING` in the host namespace.
    pub fn sysctl(&self, setting: &str) -> Result<()> {
        let mut c = crate::netns::ns_cmd(&self.ns, "sysctl");
        c.args(["-qw", setting]);
        crate::cmd::run_ok(&mut c, Duration::from_secs(10))?;
        Ok(())
    }

    /// Adds a bridge (STP off, no forwarding delay), with the host's
    /// address `gw/24` on it when given.
    pub fn add_bridge(&mut self, name: &str, gw: Option<Ipv4Addr>) -> Result<()> {
        let ns = self.ns.clone();
        ip(&[
            "-n",
            &ns,
            "link",
            "add",
            name,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ])?;
        if let Some(gw) = gw {
            ip(&["-n", &ns, "addr", "add", &format!("{gw}/24"), "dev", name])?;
        }
        ip(&["-n", &ns, "link", "set", name, "up"])?;
        Ok(())
    }

    /// Adds a container namespace `PREFIX-NAME` whose `eth0` (address
    /// `addr/24`, default route via `gw`) is a veth to a port `v-NAME` of
    /// `bridge`.
    pub fn add_container(
        &mut self,
        name: &str,
        bridge: &str,
        addr: Ipv4Addr,
        gw: Option<Ipv4Addr>,
    ) -> Result<()> {
        let ns = format!("{}-{name}", self.prefix);
        ip(&["netns", "add", &ns])?;
        self.created.push(ns.clone());
        let host_if = format!("v-{name}");
        ip(&[
            "link", "add", &host_if, "netns", &self.ns, "type", "veth", "peer", "name", "eth0",
            "netns", &ns,
        ])?;
        ip(&["-n", &self.ns, "link", "set", &host_if, "master", bridge])?;
        ip(&["-n", &self.ns, "link", "set", &host_if, "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        if let Some(gw) = gw {
            ip(&["-n", &ns, "route", "add", "default", "via", &gw.to_string()])?;
        }
        self.containers.push(Container {
            ns,
            ip: addr,
            host_if,
            bridge: bridge.to_owned(),
        });
        Ok(())
    }

    /// Adds the outside namespace, joined to the host by the veth `uplink`
    /// (`host_ip/30` on the host, `peer_ip/30` outside).
    pub fn add_outside(&mut self, host_ip: Ipv4Addr, peer_ip: Ipv4Addr) -> Result<()> {
        let ns = format!("{}-out", self.prefix);
        ip(&["netns", "add", &ns])?;
        self.created.push(ns.clone());
        ip(&[
            "link", "add", "uplink", "netns", &self.ns, "type", "veth", "peer", "name", "eth0",
            "netns", &ns,
        ])?;
        ip(&[
            "-n",
            &self.ns,
            "addr",
            "add",
            &format!("{host_ip}/30"),
            "dev",
            "uplink",
        ])?;
        ip(&["-n", &self.ns, "link", "set", "uplink", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{peer_ip}/30"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        self.outside = Some(Outside {
            ns,
            ip: peer_ip,
            host_ip,
            host_if: "uplink".to_owned(),
        });
        Ok(())
    }

    /// Publishes `host_port` on the uplink address to `to` with an nft DNAT
    /// rule in the host namespace (Docker's `-p host_port:port`).
    pub fn publish(&self, host_port: u16, to: SocketAddrV4) -> Result<()> {
        let out = self.outside.as_ref().context("publish needs the uplink")?;
        // `add` is idempotent for the table and chain: a second call adds
        // a second rule.
        let rules = format!(
            "add table ip hsmt_nat\n\
             add chain ip hsmt_nat prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}\n\
             add rule ip hsmt_nat prerouting ip daddr {} tcp dport {host_port} dnat to {to}\n",
            out.host_ip
        );
        let mut c = crate::netns::ns_cmd(&self.ns, "nft");
        c.args(["-f", "-"]);
        run_with_stdin(&mut c, &rules).context("loading the nft DNAT rule")
    }

    /// Waits (at most 10 s) until each `(container index, address)` pair
    /// works: a TCP connect from that container (`usize::MAX`: the outside
    /// namespace; [`HOST`]: the host) to port 9 of the
    /// address is refused, which proves the path.
    fn wait_ready(&self, probes: &[(usize, Ipv4Addr)]) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        for &(from, to) in probes {
            let ns = match from {
                usize::MAX => self.outside.as_ref().map(|o| o.ns.clone()),
                HOST => None,
                i => self.containers.get(i).map(|c| c.ns.clone()),
            }
            .unwrap_or_else(|| self.ns.clone());
            loop {
                let target = SocketAddr::from((to, 9));
                let r = crate::netns::in_netns(&ns, move || {
                    TcpStream::connect_timeout(&target, Duration::from_millis(300))
                })?;
                match r {
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
                    r if Instant::now() >= deadline => {
                        bail!("{ns} -> {target} not ready: {r:?}")
                    }
                    _ => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        Ok(())
    }

    /// Starts `hsmon run` in the host namespace with `args` (no `--iface`:
    /// every interface that is up; no `--reneg-cap`: the policy's, 3 by
    /// default), its pins on a private bpffs under `dir`.
    pub fn agent(&self, dir: &Path, args: &[&str]) -> Result<Agent> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let state = AgentState::new_in(&self.ns, dir)?;
        Agent::start_in(agent_cmd_in(&self.ns, &hsmon_bin()), dir, &args, state)
            .context("starting hsmon in the host namespace")
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        crate::netns::remove_created(&mut self.created);
    }
}

/// Runs `c` with `input` on its stdin (at most 10 s); fails with its stderr
/// on a non-zero exit.
fn run_with_stdin(c: &mut Command, input: &str) -> Result<()> {
    use std::io::Write as _;
    use std::process::Stdio;
    let desc = crate::cmd::describe(c);
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning `{desc}`"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .with_context(|| format!("writing to `{desc}`"))?;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().context("waiting")? {
            let out = child.wait_with_output().context("reading the output")?;
            if !status.success() {
                bail!(
                    "`{desc}` failed ({status}): {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            return Ok(());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{desc}` did not finish within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How many packets of `pcap` match the display filter `filter` (tshark,
/// at most 120 s).
pub fn tshark_count(pcap: &Path, filter: &str) -> Result<usize> {
    let mut c = Command::new("tshark");
    c.arg("-n")
        .arg("-r")
        .arg(pcap)
        .args(["-Y", filter, "-T", "fields", "-e", "frame.number"]);
    let out = crate::cmd::run_ok(&mut c, Duration::from_secs(120))?;
    Ok(out.lines().filter(|l| !l.trim().is_empty()).count())
}
