//! The flags of `hsmon run` and the control-socket option every verb
//! shares: their types, defaults and value parsers (the agent reads them,
//! the CLI parses them).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use monitor_common::flow::MAX_PORTS;
use serde::{Deserialize, Serialize};

use crate::api::cidr::Cidr;

/// Where the agent listens and the CLI connects unless `--socket` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/hsmon/hsmon.sock";

/// The `--socket` option every verb that talks to the agent shares.
#[derive(Debug, Clone, clap::Args)]
pub struct SocketArg {
    /// Path of the agent's control socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

/// The event ring buffer's default size in bytes (the object's own).
pub const DEFAULT_EVENTS_RING_SIZE: u32 = 256 * 1024;
/// How many closed flows the agent keeps unless told otherwise.
pub const DEFAULT_KEEP_CLOSED: usize = 10_000;
/// The group whose members may use the control socket, unless
/// `--socket-group` names another.
pub const DEFAULT_SOCKET_GROUP: &str = "hsmon";
/// Where `hsmon run` pins unless `--pin-dir` says otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/hsmon";
/// Where `hsmon run` keeps its state file unless `--state-file` says otherwise.
pub const DEFAULT_STATE_FILE: &str = "/run/hsmon/state.json";
/// Where the agent serves metrics unless `--metrics-addr` says otherwise.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9477";

/// Arguments of `hsmon run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Interface to watch (repeatable); default: every interface that is up.
    #[arg(long = "iface", value_name = "IF", value_parser = parse_iface_name)]
    pub iface: Vec<String>,
    /// Control socket to listen on.
    #[command(flatten)]
    pub socket: SocketArg,
    /// Only track flows to these server ports (comma-separated, at most 16);
    /// default: every port.
    #[arg(long, value_name = "P,P", value_parser = parse_ports)]
    pub ports: Option<PortList>,
    /// Capacity of the kernel's flow map (an LRU: the least recently used flow
    /// makes room when it is full).
    #[arg(long, value_name = "N", default_value_t = 65536,
          value_parser = clap::value_parser!(u32).range(1..=(1 << 24)))]
    pub flow_map_size: u32,
    /// Size in bytes of the kernel's event ring buffer: a power of two, at
    /// least one page (4096). Events that do not fit are counted as
    /// `events_lost`; the flow counters stay exact (the sweep reads them).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_EVENTS_RING_SIZE,
          value_parser = parse_ring_size)]
    pub events_ring_size: u32,
    /// How many closed flows to keep for `hsmon conns`.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_KEEP_CLOSED)]
    pub keep_closed: usize,
    /// Never ban this address or prefix (repeatable); loopback and every
    /// address of this host's interfaces at start-up are always allowlisted.
    #[arg(long = "allow", value_name = "CIDR", value_parser = crate::api::cidr::parse_allow)]
    pub allow: Vec<Cidr>,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics, or `off`.
    #[arg(long, value_name = "ADDR:PORT|off", default_value = DEFAULT_METRICS_ADDR)]
    pub metrics_addr: MetricsAddr,
    /// Most client-initiated renegotiations per connection (0: no cap). The
    /// client segment carrying the one over the cap, and every later one of
    /// that connection, is dropped at TC ingress, and the connection is reset.
    /// Overrides the policy file's `[limits] reneg_cap`.
    #[arg(long, value_name = "N")]
    pub reneg_cap: Option<u32>,
    /// The policy file (TOML); default /etc/hsmon/hsmon.toml if it exists,
    /// else the embedded defaults (`hsmon config default`).
    #[arg(long, value_name = "PATH")]
    pub config: Option<std::path::PathBuf>,
    /// Compute every policy decision but change nothing (`would_ban`).
    #[arg(long)]
    pub dry_run: bool,
    /// Also append every policy decision (the JSON lines printed on stdout)
    /// to this file; SIGHUP reopens it (for logrotate).
    #[arg(long, value_name = "PATH")]
    pub events_file: Option<std::path::PathBuf>,
    /// Which libssl functions get uprobes: `handshake` (functions called
    /// once or a few times per connection; process, library and handshake
    /// timing for apps that call SSL_do_handshake/SSL_accept/SSL_connect),
    /// `full` (also SSL_read/SSL_write on every I/O call and SSL_get_error:
    /// a trap per call, costly), or `off` (no process fields). The README's
    /// "Probe sets" section lists the fields each provides.
    #[arg(long, value_name = "SET", value_enum, default_value_t = UprobeSet::Handshake)]
    pub uprobes: UprobeSet,
    /// Same as `--uprobes off`.
    #[arg(long, conflicts_with = "uprobes")]
    pub no_uprobes: bool,
    /// Probe only this file (repeatable; a libssl or an executable carrying
    /// OpenSSL): no discovery, no rescans.
    #[arg(long, value_name = "FILE", conflicts_with = "no_uprobes")]
    pub uprobe_target: Vec<std::path::PathBuf>,
    /// Members of this group may use the control socket (besides root): the
    /// socket file gets it when the group exists.
    #[arg(long, value_name = "GROUP", default_value = DEFAULT_SOCKET_GROUP)]
    pub socket_group: String,
    /// How often the flow map is re-read (the policy's fallback for lost
    /// events and its clock for the handshake timeout). For tests and
    /// benchmarks: a long interval shows what the event path does alone.
    #[arg(long, value_name = "DURATION", default_value = "1s", hide = true,
          value_parser = parse_sweep_interval)]
    pub sweep_interval: Duration,
    /// Pinned state across restarts (`--pin-dir`, `--state-file`, `--no-persist`).
    #[command(flatten)]
    pub persist: PersistArgs,
    /// Which hooks count TLS records: `tc` (the TC programs on the
    /// interfaces, flows by 4-tuple) or `socket` (`cgroup_skb` programs at
    /// the cgroup v2 root, one entry per local server socket in any network
    /// namespace, after NAT; TC then only drops banned sources). Overrides
    /// the policy file's `hooks`; default `socket`. See the README's "Socket
    /// hooks".
    #[arg(long, value_name = "MODE", value_enum)]
    pub hooks: Option<HookMode>,
}

/// `hsmon run --hooks` (and the policy file's `hooks`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HookMode {
    /// The TC programs count flows by 4-tuple (for traffic this host only
    /// forwards; see the README's threat model for what TC cannot hold).
    Tc,
    /// The socket hooks count each local server socket (`cgroup_skb` +
    /// `SK_STORAGE`); TC keeps the bans. The default.
    #[default]
    Socket,
}

impl HookMode {
    /// The mode's name on the command line and in the file.
    pub fn name(self) -> &'static str {
        match self {
            HookMode::Tc => "tc",
            HookMode::Socket => "socket",
        }
    }
}

/// A port filter from `--ports`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortList(pub Vec<u16>);

/// Parses `443,8443`: 1 to 16 distinct ports, each 1..=65535.
pub fn parse_ports(s: &str) -> Result<PortList, String> {
    let mut ports = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        let port: u16 = part
            .parse()
            .map_err(|_| format!("{part:?} is not a port number (1-65535)"))?;
        if port == 0 {
            return Err("port 0 cannot be watched".into());
        }
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    if ports.len() > MAX_PORTS {
        return Err(format!(
            "at most {MAX_PORTS} ports can be watched, got {}",
            ports.len()
        ));
    }
    Ok(PortList(ports))
}

/// Parses `--sweep-interval`: a duration from 10 ms to 1 h (`500ms`, `60s`).
pub fn parse_sweep_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| format!("{s:?}: {e}"))?;
    if !(Duration::from_millis(10)..=Duration::from_secs(3600)).contains(&d) {
        return Err(format!("{s:?} is not between 10ms and 1h"));
    }
    Ok(d)
}

/// Parses `--events-ring-size`: a power of two from 4096 (one page) to 1 GiB.
pub fn parse_ring_size(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size in bytes"))?;
    if !n.is_power_of_two() || !(4096..=(1 << 30)).contains(&n) {
        return Err(format!(
            "{n} is not a power of two between 4096 and 1073741824"
        ));
    }
    Ok(n)
}

/// `--metrics-addr`: an address to listen on, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsAddr(pub Option<SocketAddr>);

impl FromStr for MetricsAddr {
    type Err = String;

    /// `ADDR:PORT` (IPv6 as `[ADDR]:PORT`) or `off`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(MetricsAddr(None));
        }
        s.parse::<SocketAddr>()
            .map(|a| MetricsAddr(Some(a)))
            .map_err(|_| {
                format!("{s:?} is not ADDR:PORT (e.g. 127.0.0.1:9477 or [::1]:9477) or \"off\"")
            })
    }
}

/// Which libssl functions the agent probes (`hsmon run --uprobes`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UprobeSet {
    /// No uprobes and no `sock/*` attribution tracepoints: no process
    /// fields.
    Off,
    /// Functions called O(1) times per connection: `SSL_do_handshake`,
    /// `SSL_accept`, `SSL_connect` (entry and return),
    /// `SSL_renegotiate(_abbreviated)`, `SSL_key_update`.
    #[default]
    Handshake,
    /// `handshake` plus `SSL_read(_ex)`, `SSL_write(_ex)` (every I/O call),
    /// `SSL_get_error` (entry and return) and `SSL_free`: adds `library` for
    /// processes that handshake inside `SSL_read`/`SSL_write` and the
    /// `ssl_get_error` failure reasons.
    Full,
}

impl UprobeSet {
    /// The set's name on the command line and in `hsmon status`.
    pub fn name(self) -> &'static str {
        match self {
            UprobeSet::Off => "off",
            UprobeSet::Handshake => "handshake",
            UprobeSet::Full => "full",
        }
    }
}

/// The persistence options of `hsmon run`.
#[derive(Debug, Clone, clap::Args)]
pub struct PersistArgs {
    /// Directory on a bpf filesystem for the pinned maps and links.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    /// The agent's state file (ban reasons, ban history, clsact qdiscs added).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_STATE_FILE)]
    pub state_file: PathBuf,
    /// On a clean stop, detach every program, unpin every map and link and
    /// remove the state file (default: leave them, so protection continues
    /// until the next agent starts; `hsmon cleanup` removes them).
    #[arg(long)]
    pub no_persist: bool,
    /// How TC programs are attached: `auto` (TCX links, clsact filters where
    /// TCX is refused) or `clsact` (always netlink filters on a clsact qdisc).
    #[arg(long, value_enum, default_value_t = TcMode::Auto)]
    pub tc_mode: TcMode,
}

/// `--tc-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TcMode {
    /// TCX links; clsact filters where TCX is refused.
    Auto,
    /// Always clsact filters (netlink).
    Clsact,
}

/// Checks an interface name given on the command line (clap value parser).
pub fn parse_iface_name(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("an interface name cannot be empty".into());
    }
    if s.len() > 15 {
        return Err(format!(
            "{s:?} is longer than 15 bytes, the limit for interface names"
        ));
    }
    if s.contains(['/', '\0']) || s.chars().any(char::is_whitespace) || s == "." || s == ".." {
        return Err(format!("{s:?} is not a valid interface name"));
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_sizes() {
        assert_eq!(parse_ring_size("4096"), Ok(4096));
        assert_eq!(parse_ring_size("262144"), Ok(262_144));
        assert!(parse_ring_size("4095").is_err());
        assert!(parse_ring_size("6000").is_err());
        assert!(parse_ring_size("2048").is_err());
        assert!(parse_ring_size("-1").is_err());
        assert!(parse_ring_size("big").is_err());
    }

    #[test]
    fn sweep_intervals() {
        assert_eq!(parse_sweep_interval("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_sweep_interval("60s"), Ok(Duration::from_secs(60)));
        assert!(parse_sweep_interval("1ms").is_err());
        assert!(parse_sweep_interval("2h").is_err());
        assert!(parse_sweep_interval("soon").is_err());
    }

    #[test]
    fn ports() {
        assert_eq!(parse_ports("443"), Ok(PortList(vec![443])));
        assert_eq!(parse_ports("443, 8443,443"), Ok(PortList(vec![443, 8443])));
        assert!(parse_ports("").is_err());
        assert!(parse_ports("0").is_err());
        assert!(parse_ports("65536").is_err());
        assert!(parse_ports("443,,8443").is_err());
        let seventeen: Vec<String> = (1..=17).map(|p| p.to_string()).collect();
        assert!(parse_ports(&seventeen.join(",")).is_err());
    }

    #[test]
    fn names() {
        assert!(parse_iface_name("lo").is_ok());
        assert!(parse_iface_name("veth-a.10").is_ok());
        assert!(parse_iface_name("").is_err());
        assert!(parse_iface_name("a/b").is_err());
        assert!(parse_iface_name("a b").is_err());
        assert!(parse_iface_name("sixteen-bytes-xx").is_err());
    }
}
