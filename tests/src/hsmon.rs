//! The hsmon agent under test and its `conns --json` view.
//!
//! The binary is `$HSMON_BIN`, else `<workspace>/target/release/hsmon`.
//! `hsmon run --iface IFACE --socket PATH` runs as root inside the server
//! namespace (`ip netns exec`, see [`agent_cmd`]); it is ready when `hsmon conns --json --socket
//! PATH` exits 0. It is stopped with SIGTERM, and SIGKILL after 5 s.

use crate::cmd;
use crate::netns::NetPair;
use crate::process::Proc;
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
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
    /// The tracker lost the record boundary on this flow.
    pub unsynced: bool,
    /// "open" or "closed".
    pub state: String,
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
    let nsenter = std::env::var("HSMON_AGENT_ENTER").is_ok_and(|v| v == "nsenter");
    if nsenter {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/var/run/netns/{}", net.server_ns))
            .arg(bin);
        c
    } else {
        net.server_cmd(&bin.to_string_lossy())
    }
}

/// A running `hsmon run` in the server namespace.
#[derive(Debug)]
pub struct Agent {
    proc: Proc,
    bin: PathBuf,
    /// The control socket.
    pub socket: PathBuf,
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
        let bin = hsmon_bin();
        if !bin.is_file() {
            bail!(
                "hsmon binary not found at {} (build it with `cargo build --release -p monitor`, or set HSMON_BIN)",
                bin.display()
            );
        }
        let socket = dir.join("hsmon.sock");
        let mut c = agent_cmd(net, &bin);
        c.arg("run")
            .arg("--iface")
            .arg(&net.server_if)
            .arg("--socket")
            .arg(&socket)
            .args(extra);
        // The embedded policy caps renegotiations at 3 per connection; tests
        // that renegotiate more set their own cap (or none).
        if !extra.iter().any(|a| a == "--reneg-cap") {
            c.arg("--reneg-cap").arg("0");
        }
        let proc = Proc::spawn("hsmon-agent", c, dir, false)?;
        let mut agent = Self { proc, bin, socket };
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

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn parses_the_agreed_shape() {
        let json = r#"[{"client":"[fd00:200::2]:40000","server":"[fd00:200::1]:4433","tls_version":null,
            "client_hellos":1,"handshakes":1,"resumed":false,"renegotiations_client":0,
            "renegotiations_server":0,"renegotiations_refused":0,"alerts":2,"keyupdate_like":0,
            "unsynced":false,"state":"closed","pid":123}]"#;
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
