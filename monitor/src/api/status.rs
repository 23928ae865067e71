//! The `GET /v1/status` document (README "status JSON schema").

use serde::{Deserialize, Serialize};

/// What `GET /v1/status` serves. Keys are stable: add, never rename.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The agent's version (`hsmon --version`).
    pub version: String,
    /// The agent's process id.
    pub pid: u32,
    /// Milliseconds since the agent started.
    pub uptime_ms: u64,
    /// The control socket the agent listens on.
    pub socket: String,
    /// Where Prometheus metrics are served (`ADDR:PORT`), or null (`off`).
    pub metrics_addr: Option<String>,
    /// The TC programs attached, one per interface and direction.
    pub hooks: Vec<Hook>,
    /// The tracepoint programs attached.
    pub tracepoints: Vec<TracepointHook>,
    /// The files (libssl copies, static executables) the uprobes are
    /// attached to now; empty without uprobes.
    #[serde(default)]
    pub libraries: Vec<Library>,
    /// The libssl probe set in use: `"off"`, `"handshake"` or `"full"`
    /// (`hsmon run --uprobes`; `"off"` also when the probes could not be
    /// loaded).
    #[serde(default)]
    pub uprobe_set: String,
    /// Fill levels of the kernel maps.
    pub maps: MapFills,
    /// Ring-buffer event counts.
    pub events: EventCounts,
    /// Bans in force.
    pub bans_active: u64,
    /// The policy in force: dry-run and the rules that are on.
    pub policy: super::policy::PolicySummary,
    /// State across restarts: the pin directory and what was restored.
    #[serde(default)]
    pub persistence: Persistence,
}

/// State across restarts, as `hsmon status` reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persistence {
    /// The pin directory (`--pin-dir`).
    pub pin_dir: String,
    /// The state file (`--state-file`).
    pub state_file: String,
    /// Whether a clean stop leaves the programs attached and the maps pinned
    /// (false with `--no-persist`).
    pub persist_on_stop: bool,
    /// Whether this agent continued a previous agent's pinned state.
    pub restored: bool,
    /// The pinned maps reused.
    pub maps_reused: Vec<String>,
    /// A previous agent's links taken over (program swapped in place).
    pub links_taken_over: u64,
    /// Bans found in the pinned maps at start.
    pub bans_restored: u64,
    /// The state file at start: `"restored"`, `"missing"`, or `"unusable: why"`.
    pub state_file_status: String,
}

/// One TC program attached to one interface in one direction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hook {
    /// The interface's name.
    pub iface: String,
    /// The program's name in the eBPF object.
    pub program: String,
    /// `"ingress"` or `"egress"`.
    pub direction: String,
    /// `"tcx"` (a TCX link), `"clsact"` (netlink, on a clsact qdisc) or
    /// `"cgroup"` (a socket hook at the cgroup v2 root, `--hooks socket`).
    pub mode: String,
}

/// One tracepoint program.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TracepointHook {
    /// The program's name in the eBPF object.
    pub program: String,
    /// `"category/name"`, e.g. `"sock/inet_sock_set_state"`.
    pub tracepoint: String,
}

/// One file the libssl uprobes are attached to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Library {
    /// The file as the agent reaches it (`/proc/PID/root/...` for a file
    /// inside another mount namespace).
    pub path: String,
    /// Uprobes attached to it (functions the file lacks are skipped).
    pub probes: u64,
}

/// How full one map is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fill {
    /// Entries in the map now.
    pub entries: u64,
    /// The map's capacity (`max_entries`).
    pub capacity: u64,
}

/// Fill levels of the agent's maps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapFills {
    /// `FLOWS`: live TLS flows (entries read for this request).
    pub flows: Fill,
    /// `BANS_V4`: IPv4 ban prefixes.
    pub bans_v4: Fill,
    /// `BANS_V6`: IPv6 ban prefixes.
    pub bans_v6: Fill,
    /// Kernel memory charged for every BPF map the agent holds (the sum of
    /// their `memlock` in `/proc/self/fdinfo`), in bytes.
    #[serde(default)]
    pub memory_bytes: u64,
}

/// Ring-buffer event counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCounts {
    /// Events the agent read.
    pub read: u64,
    /// Events the kernel could not queue (buffer full), from `STATS`.
    pub lost: u64,
    /// Events too short or of an unknown kind.
    pub bad: u64,
}

/// The top-level keys of `GET /v1/status`, as the README's "status JSON
/// schema" lists them (the unit tests and the root tests check both).
pub const STATUS_KEYS: [&str; 14] = [
    "version",
    "pid",
    "uptime_ms",
    "socket",
    "metrics_addr",
    "hooks",
    "tracepoints",
    "libraries",
    "uprobe_set",
    "maps",
    "events",
    "bans_active",
    "policy",
    "persistence",
];
