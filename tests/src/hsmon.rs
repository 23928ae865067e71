//! The hsmon agent under test and its `conns --json` view.
//!
//! The binary is `$HSMON_BIN`, else `<workspace>/target/release/hsmon`.
//! `hsmon run --iface IFACE --socket PATH` runs as root inside the server
//! namespace (`ip netns exec`, see [`agent_cmd`]); it is ready when `hsmon conns --json --socket
//! PATH` exits 0. It is stopped with SIGTERM, and SIGKILL after 5 s.
//!
//! Every agent keeps its pinned state ([`AgentState`]) on a bpf filesystem
//! of its own, mounted in the test's directory (so concurrent tests never
//! share pins, and `ip netns exec`'s private `/sys` does not hide them),
//! with its own state file. Restarted agents share one [`AgentState`]; when
//! the last holder drops it, `hsmon cleanup --force` runs and the bpffs is
//! unmounted, which detaches whatever is left, also after `kill -9`.

use crate::cmd;
use crate::netns::NetPair;
use crate::process::Proc;
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the agent may take to answer its first `conns`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One connection as `hsmon conns --json` lists it. Every key is required:
/// a missing one is a contract violation and fails the parse.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HsmonConn {
    /// Client `"ip:port"` (IPv6 as `"[ip]:port"`).
    pub client: String,
    /// Server `"ip:port"`.
    pub server: String,
    /// "1.2", "1.3" or null.
    pub tls_version: Option<String>,
    /// ClientHello messages seen.
    pub client_hellos: u64,
    /// Handshakes seen.
    pub handshakes: u64,
    /// The (first) handshake was resumed.
    pub resumed: bool,
    /// Client-initiated renegotiations.
    pub renegotiations_client: u64,
    /// Server-initiated renegotiations (HelloRequests).
    pub renegotiations_server: u64,
    /// Renegotiations the peer refused.
    pub renegotiations_refused: u64,
    /// Alert records.
    pub alerts: u64,
    /// TLS 1.3 KeyUpdate-like records.
    pub keyupdate_like: u64,
    /// The client's KeyUpdate-size records in streaks (what the KeyUpdate
    /// rule counts).
    pub keyupdate_streaked: u64,
    /// The tracker lost the record boundary on this flow.
    pub unsynced: bool,
    /// "open" or "closed".
    pub state: String,
    /// The server socket's cookie (socket hooks); null for TC flows.
    #[serde(default)]
    pub socket_cookie: Option<u64>,
    /// The server socket's network namespace cookie (socket hooks); null
    /// for TC flows.
    #[serde(default)]
    pub netns_cookie: Option<u64>,
}

impl HsmonConn {
    /// The client address, parsed.
    pub fn client_addr(&self) -> Result<SocketAddr> {
        self.client
            .parse()
            .with_context(|| format!("hsmon client address {:?}", self.client))
    }

    /// The server address, parsed.
    pub fn server_addr(&self) -> Result<SocketAddr> {
        self.server
            .parse()
            .with_context(|| format!("hsmon server address {:?}", self.server))
    }
}

/// Parses `hsmon conns --json` output.
pub fn parse_conns(json: &str) -> Result<Vec<HsmonConn>> {
    serde_json::from_str(json)
        .with_context(|| format!("hsmon conns --json output is not the agreed array: {json}"))
}

/// The hsmon binary: `$HSMON_BIN`, else `<workspace>/target/release/hsmon`.
pub fn hsmon_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("HSMON_BIN").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new(env!("CARGO_MANIFEST_DIR")))
        .join("target/release/hsmon")
}

/// The command that runs `bin` in the server namespace: `ip netns exec NS
/// BIN` by default. `ip netns exec` also gives the program a private mount
/// namespace with a fresh `/sys`, in which tracefs (`/sys/kernel/tracing`)
/// and bpffs (`/sys/fs/bpf`) are not mounted; with
/// `HSMON_AGENT_ENTER=nsenter` the agent runs under `nsenter --net=…`
/// instead, which switches only the network namespace.
pub fn agent_cmd(net: &NetPair, bin: &Path) -> Command {
    agent_cmd_in(&net.server_ns, bin)
}

/// Like [`agent_cmd`], for the network namespace `ns`.
pub fn agent_cmd_in(ns: &str, bin: &Path) -> Command {
    let nsenter = std::env::var("HSMON_AGENT_ENTER").is_ok_and(|v| v == "nsenter");
    if nsenter {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/var/run/netns/{ns}")).arg(bin);
        c
    } else {
        crate::netns::ns_cmd(ns, &bin.to_string_lossy())
    }
}

/// Numbers the [`AgentState`]s of this test process.
static SEQ: AtomicU32 = AtomicU32::new(0);
/// Numbers the agents of this test process (their log file names).
static AGENTS: AtomicU32 = AtomicU32::new(0);

/// The state an agent leaves across restarts: a private bpffs mount with
/// its pin directory, and its state file. Removed on drop (`hsmon cleanup
/// --force` in the server namespace, then the bpffs is unmounted).
#[derive(Debug)]
pub struct AgentState {
    mount: PathBuf,
    /// `hsmon run --pin-dir`.
    pub pin_dir: PathBuf,
    /// `hsmon run --state-file`.
    pub state_file: PathBuf,
    server_ns: String,
    bin: PathBuf,
}

impl AgentState {
    /// Mounts a fresh bpffs under `dir` (unique per process and call).
    pub fn new(net: &NetPair, dir: &Path) -> Result<Arc<Self>> {
        Self::new_in(&net.server_ns, dir)
    }

    /// Like [`AgentState::new`], for an agent in the network namespace `ns`.
    pub fn new_in(ns: &str, dir: &Path) -> Result<Arc<Self>> {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let mount = dir.join(format!("bpffs-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&mount).with_context(|| format!("creating {}", mount.display()))?;
        let mut c = Command::new("mount");
        c.args(["-t", "bpf", "bpf"]).arg(&mount);
        cmd::run_ok(&mut c, Duration::from_secs(10))
            .with_context(|| format!("mounting a bpffs at {}", mount.display()))?;
        Ok(Arc::new(Self {
            pin_dir: mount.join("hsmon"),
            state_file: dir.join(format!("hsmon-state-{}-{n}.json", std::process::id())),
            mount,
            server_ns: ns.to_owned(),
            bin: hsmon_bin(),
        }))
    }

    /// `--pin-dir DIR --state-file PATH` for `hsmon run` and `hsmon cleanup`.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--pin-dir".into(),
            self.pin_dir.display().to_string(),
            "--state-file".into(),
            self.state_file.display().to_string(),
        ]
    }

    /// The names of the entries under the pin directory (recursively,
    /// relative to it), sorted.
    pub fn pins(&self) -> Vec<String> {
        fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
            if let Ok(rd) = std::fs::read_dir(dir) {
                for e in rd.flatten() {
                    let p = e.path();
                    if let Ok(rel) = p.strip_prefix(base) {
                        out.push(rel.display().to_string());
                    }
                    if p.is_dir() {
                        walk(base, &p, out);
                    }
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.pin_dir, &self.pin_dir, &mut out);
        out.sort();
        out
    }

    /// `hsmon cleanup ARGS --pin-dir .. --state-file .. --socket SOCKET` in
    /// the server namespace; any exit status.
    pub fn cleanup(&self, extra: &[&str], socket: &Path) -> Result<std::process::Output> {
        let mut c = if Path::new("/var/run/netns").join(&self.server_ns).exists() {
            crate::netns::ns_cmd(&self.server_ns, &self.bin.to_string_lossy())
        } else {
            Command::new(&self.bin)
        };
        c.arg("cleanup")
            .args(self.args())
            .arg("--socket")
            .arg(socket)
            .args(extra);
        cmd::output_within(&mut c, Duration::from_secs(20))
    }
}

/// The kernel's view of the programs an agent's pinned maps serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelLinks {
    /// TCX links whose program uses the map.
    pub tcx: usize,
    /// Perf-event (tracepoint) links of `hsmon_sock_state` using the map.
    pub sock_state: usize,
    /// cgroup links (`--hooks socket`: `cgroup_skb` and `sock_ops`) whose
    /// program uses the map.
    pub cgroup: usize,
}

/// `bpftool ARGS -j`, parsed.
fn bpftool_json(args: &[&str]) -> Result<serde_json::Value> {
    let mut c = Command::new("bpftool");
    c.args(args).arg("-j");
    let out = cmd::run_ok(&mut c, Duration::from_secs(20))?;
    serde_json::from_str(&out).with_context(|| format!("bpftool {args:?} printed {out:?}"))
}

impl AgentState {
    /// The kernel id of the pinned `FLOWS` map (`bpftool map show pinned`).
    pub fn flows_map_id(&self) -> Result<u64> {
        let path = self.pin_dir.join("maps-v1/FLOWS");
        let v = bpftool_json(&["map", "show", "pinned", &path.display().to_string()])?;
        v["id"]
            .as_u64()
            .with_context(|| format!("no map id for {}: {v}", path.display()))
    }
}

/// Counts, in the kernel's link table (`bpftool link show`), the links
/// whose program uses the map `map_id`: TCX links, `hsmon_sock_state`
/// perf-event links and cgroup links. bpftool 7.1 prints the TCX link type as its number (11).
pub fn kernel_links(map_id: u64) -> Result<KernelLinks> {
    let links = bpftool_json(&["link", "show"])?;
    let mut out = KernelLinks {
        tcx: 0,
        sock_state: 0,
        cgroup: 0,
    };
    for l in links.as_array().map(Vec::as_slice).unwrap_or_default() {
        let Some(prog_id) = l["prog_id"].as_u64() else {
            continue;
        };
        let is_tcx = l["type"] == "tcx" || l["type"] == 11;
        let is_perf = l["type"] == "perf_event";
        let is_cgroup = l["type"] == "cgroup";
        if !is_tcx && !is_perf && !is_cgroup {
            continue;
        }
        // The program may go away between the two calls: skip it then.
        let Ok(prog) = bpftool_json(&["prog", "show", "id", &prog_id.to_string()]) else {
            continue;
        };
        let uses = prog["map_ids"]
            .as_array()
            .is_some_and(|ids| ids.iter().any(|i| i.as_u64() == Some(map_id)));
        if !uses {
            continue;
        }
        if is_tcx {
            out.tcx += 1;
        } else if is_cgroup {
            out.cgroup += 1;
        } else if prog["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("hsmon_sock_stat"))
        {
            out.sock_state += 1;
        }
    }
    Ok(out)
}

impl Drop for AgentState {
    fn drop(&mut self) {
        let nowhere = self.mount.with_extension("nosock");
        if let Err(e) = self.cleanup(&["--force"], &nowhere) {
            eprintln!("hsmon cleanup for {}: {e:#}", self.pin_dir.display());
        }
        let mut c = Command::new("umount");
        c.arg("-l").arg(&self.mount);
        if let Err(e) = cmd::run_ok(&mut c, Duration::from_secs(10)) {
            eprintln!("unmounting {}: {e:#}", self.mount.display());
        }
        let _ = std::fs::remove_dir(&self.mount);
        let _ = std::fs::remove_file(&self.state_file);
    }
}

/// A running `hsmon run` in the server namespace.
#[derive(Debug)]
pub struct Agent {
    proc: Proc,
    bin: PathBuf,
    /// The control socket.
    pub socket: PathBuf,
    /// Its pinned state (shared with the agents that restart on it).
    state: Arc<AgentState>,
}

impl Agent {
    /// Starts the agent on the server's veth and waits until `conns`
    /// answers (at most [`READY_TIMEOUT`]).
    pub fn start(net: &NetPair, dir: &Path) -> Result<Self> {
        Self::start_with_args(net, dir, &[])
    }

    /// Like [`Agent::start`], with `extra` appended to `hsmon run`'s
    /// arguments (e.g. `--metrics-addr 127.0.0.1:9477`).
    pub fn start_with_args(net: &NetPair, dir: &Path, extra: &[String]) -> Result<Self> {
        Self::start_with_state(net, dir, extra, AgentState::new(net, dir)?)
    }

    /// Like [`Agent::start_with_args`], on the pinned state `state` (a
    /// restart: the agent takes over what a previous one left).
    pub fn start_with_state(
        net: &NetPair,
        dir: &Path,
        extra: &[String],
        state: Arc<AgentState>,
    ) -> Result<Self> {
        let mut args = vec!["--iface".to_owned(), net.server_if.clone()];
        args.extend_from_slice(extra);
        // The embedded policy caps renegotiations at 3 per connection; tests
        // that renegotiate more set their own cap (or none).
        if !extra.iter().any(|a| a == "--reneg-cap") {
            args.extend(["--reneg-cap".to_owned(), "0".to_owned()]);
        }
        Self::start_in(agent_cmd(net, &hsmon_bin()), dir, &args, state)
    }

    /// Starts `hsmon run` through `enter` (a command that runs the hsmon
    /// binary in the agent's namespace: [`agent_cmd`] or `ip netns exec NS
    /// BIN`) with `--socket DIR/hsmon.sock`, the state's pin directory and
    /// state file, then exactly `args` (no `--iface`: every interface that
    /// is up; no `--reneg-cap`: the policy's), and waits until `conns`
    /// answers.
    pub fn start_in(
        enter: Command,
        dir: &Path,
        args: &[String],
        state: Arc<AgentState>,
    ) -> Result<Self> {
        let bin = hsmon_bin();
        if !bin.is_file() {
            bail!(
                "hsmon binary not found at {} (build it with `cargo build --release -p monitor`, or set HSMON_BIN)",
                bin.display()
            );
        }
        let socket = dir.join("hsmon.sock");
        let mut c = enter;
        c.arg("run")
            .arg("--socket")
            .arg(&socket)
            .args(state.args())
            .args(args);
        let n = AGENTS.fetch_add(1, Ordering::Relaxed);
        let name = if n == 0 {
            "hsmon-agent".to_owned()
        } else {
            format!("hsmon-agent-{n}")
        };
        let proc = Proc::spawn(&name, c, dir, false)?;
        let mut agent = Self {
            proc,
            bin,
            socket,
            state,
        };
        agent.wait_ready(READY_TIMEOUT)?;
        Ok(agent)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.proc.try_status() {
                bail!(
                    "hsmon run exited ({status}) before it was ready\n{}",
                    self.proc.logs(80)
                );
            }
            let last = match self.conns_raw() {
                Ok(_) => return Ok(()),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "hsmon not ready within {timeout:?}; last `conns` error: {last}\n{}",
                    self.proc.logs(80)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn conns_raw(&self) -> Result<String> {
        let mut c = Command::new(&self.bin);
        c.arg("conns")
            .arg("--json")
            .arg("--socket")
            .arg(&self.socket);
        cmd::run_ok(&mut c, Duration::from_secs(10))
    }

    /// `hsmon conns --json`, parsed.
    pub fn conns(&self) -> Result<Vec<HsmonConn>> {
        parse_conns(&self.conns_raw()?)
    }

    /// `hsmon conns --json` as JSON values (every key, extras included).
    pub fn conns_values(&self) -> Result<Vec<serde_json::Value>> {
        let raw = self.conns_raw()?;
        serde_json::from_str(&raw).with_context(|| format!("hsmon conns --json: {raw}"))
    }

    /// The agent's `GET /v1/stats` document.
    pub fn stats_value(&self) -> Result<serde_json::Value> {
        use std::io::{Read as _, Write as _};
        let mut s = std::os::unix::net::UnixStream::connect(&self.socket)
            .with_context(|| format!("connecting to {}", self.socket.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .context("setting a read timeout")?;
        s.write_all(b"GET /v1/stats HTTP/1.1\r\nHost: hsmon\r\nConnection: close\r\n\r\n")
            .context("sending GET /v1/stats")?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)
            .context("reading the /v1/stats answer")?;
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .with_context(|| format!("no HTTP body in {resp:?}"))?;
        serde_json::from_str(body).with_context(|| format!("/v1/stats body {body:?}"))
    }

    /// Everything the agent wrote to stdout so far (policy decisions, one
    /// JSON line each).
    pub fn stdout(&self) -> String {
        self.proc.stdout()
    }

    /// `hsmon bans --json`.
    pub fn bans(&self) -> Result<Vec<BanEntry>> {
        let out = self.cli(&["bans", "--json"])?;
        serde_json::from_str(&out).with_context(|| format!("`hsmon bans --json` printed {out:?}"))
    }

    /// `hsmon VERB... --socket SOCKET`: stdout on success.
    pub fn cli(&self, verb: &[&str]) -> Result<String> {
        let mut c = Command::new(&self.bin);
        c.args(verb).arg("--socket").arg(&self.socket);
        cmd::run_ok(&mut c, Duration::from_secs(10))
    }

    /// Whether the agent still runs.
    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// SIGTERM, SIGKILL after 5 s.
    pub fn stop(&mut self) {
        self.proc.stop(libc::SIGTERM, Duration::from_secs(5));
    }

    /// SIGKILL (no clean stop: whatever it pinned stays).
    pub fn kill9(&mut self) {
        self.proc.kill();
    }

    /// The agent's pinned state, to restart another agent on it.
    pub fn state(&self) -> Arc<AgentState> {
        self.state.clone()
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The agent's command line, stdout and stderr (tails).
    pub fn logs(&self, lines: usize) -> String {
        self.proc.logs(lines)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One HTTP/1.1 request on the agent's control socket (`Connection:
/// close`, a JSON body or none); the status code and body.
pub fn control_request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .context("setting a read timeout")?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: hsmon\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .with_context(|| format!("sending {method} {path}"))?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)
        .with_context(|| format!("reading the answer to {method} {path}"))?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no HTTP status in {resp:?}"))?;
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((status, body.to_owned()))
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn parses_the_agreed_shape() {
        let json = r#"[{"client":"[fd00:200::2]:40000","server":"[fd00:200::1]:4433","tls_version":null,
            "client_hellos":1,"handshakes":1,"resumed":false,"renegotiations_client":0,
            "renegotiations_server":0,"renegotiations_refused":0,"alerts":2,"keyupdate_like":0,
            "keyupdate_streaked":0,"unsynced":false,"state":"closed","pid":123}]"#;
        let c = parse_conns(json).expect("parse");
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].tls_version, None);
        assert_eq!(
            c[0].client_addr().expect("addr"),
            "[fd00:200::2]:40000".parse::<SocketAddr>().expect("addr")
        );
        assert!(parse_conns(r#"[{"client":"1.2.3.4:5"}]"#).is_err());
    }
}

/// One entry of `hsmon bans --json`.
#[derive(Debug, Clone, Deserialize)]
pub struct BanEntry {
    /// The banned prefix.
    pub cidr: String,
    /// Why (`manual`, a policy rule, `restored`, ...).
    pub reason: String,
    /// Time left, in milliseconds.
    pub expires_in_ms: u64,
    /// Who added it (`operator`, `policy`, ...).
    pub added_by: String,
}
