//! A light end-to-end fixture for the hardening tests (malformed traffic,
//! ring-buffer overflow, flow-map pressure): the namespaces, a certificate
//! and the agent with chosen arguments, without the packet capture that
//! [`crate::Scenario`] runs (these tests check hsmon against the peers' own
//! accounts, not against tshark). Drops in order: agent, namespaces (and any
//! process left in them), directory.

use crate::cert::TestCert;
use crate::hsmon::{Agent, HsmonConn};
use crate::netns::NetPair;
use crate::workdir::WorkDir;
use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Namespaces, certificate and a running agent.
pub struct Rig {
    /// The agent.
    pub agent: Agent,
    /// The namespaces.
    pub net: NetPair,
    /// The certificate every server uses.
    pub cert: TestCert,
    /// The test's directory (removed last).
    pub dir: WorkDir,
}

impl Rig {
    /// Sets up everything, `hsmon run` with `agent_args` appended.
    pub fn start(name: &str, agent_args: &[&str]) -> Result<Self> {
        let dir = WorkDir::new(name)?;
        let net = NetPair::create().context("creating the network namespaces")?;
        let cert = TestCert::generate(dir.path()).context("generating the test certificate")?;
        let args: Vec<String> = agent_args.iter().map(|s| s.to_string()).collect();
        let agent = Agent::start_with_args(&net, dir.path(), &args).context("starting hsmon")?;
        Ok(Self {
            agent,
            net,
            cert,
            dir,
        })
    }

    /// The server's IPv4 address with `port`.
    pub fn server_addr(&self, port: u16) -> SocketAddr {
        self.net.server_addr(false, port)
    }

    /// `hsmon status --json`.
    pub fn status(&self) -> Result<serde_json::Value> {
        let out = self.agent.cli(&["status", "--json"])?;
        serde_json::from_str(&out).with_context(|| format!("hsmon status --json: {out}"))
    }

    /// Polls `hsmon conns --json` until `done(conns)` holds (at most
    /// `timeout`); returns the last answer.
    pub fn wait_conns(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&[HsmonConn]) -> bool,
    ) -> Result<Vec<HsmonConn>> {
        let deadline = Instant::now() + timeout;
        loop {
            let conns = self.agent.conns()?;
            if done(&conns) {
                return Ok(conns);
            }
            if Instant::now() >= deadline {
                let mut states = std::collections::BTreeMap::<&str, usize>::new();
                for c in &conns {
                    *states.entry(c.state.as_str()).or_default() += 1;
                }
                bail!(
                    "hsmon conns: no {what} within {timeout:?}; last answer ({} conns, by state \
                     {states:?}; the first 20):\n{}",
                    conns.len(),
                    conns
                        .iter()
                        .take(20)
                        .map(|c| format!("{c:?}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Fails if the agent exited or logged an error or a panic.
    pub fn assert_agent_healthy(&mut self) {
        assert!(
            self.agent.is_running(),
            "the agent exited\n{}",
            self.agent.logs(80)
        );
        let log = self.agent.logs(1_000_000);
        for bad in [" ERROR ", "panicked"] {
            assert!(
                !log.contains(bad),
                "the agent logged {bad:?}\n{}",
                self.agent.logs(80)
            );
        }
    }
}

/// Stops a process with SIGSTOP and continues it (SIGCONT) when dropped, so
/// a failing test never leaves the agent stopped.
pub struct Paused {
    pid: i32,
}

impl Paused {
    /// SIGSTOP `pid` (a process this test started).
    pub fn stop(pid: i32) -> Result<Self> {
        // SAFETY: kill(2) with a pid the test started (the agent).
        if unsafe { libc::kill(pid, libc::SIGSTOP) } != 0 {
            return Err(std::io::Error::last_os_error()).context("SIGSTOP");
        }
        Ok(Self { pid })
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        // SAFETY: as in `stop`.
        unsafe {
            libc::kill(self.pid, libc::SIGCONT);
        }
    }
}
