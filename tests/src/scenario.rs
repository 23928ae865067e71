//! One end-to-end run: namespaces, capture, hsmon agent and peers, and at the
//! end hsmon's view next to the capture's ground truth.
//!
//! ```no_run
//! use tests::openssl::{SClientOpts, SServerOpts, TlsVersion};
//! tests::with_scenario("example", |sc| {
//!     let addr = sc.server_addr(false, 4433);
//!     let _srv = sc.s_server(&SServerOpts::new(addr).version(TlsVersion::Tls12))?;
//!     sc.sequential_handshakes(&SClientOpts::new(addr), 2)?;
//!     let report = sc.finish()?;
//!     for (truth, seen) in report.matched()? {
//!         tests::scenario::assert_common(truth, seen);
//!     }
//!     Ok(())
//! });
//! ```
//!
//! When the test panics (a failed assertion, or an error from the body), the
//! scenario prints the report and every log it knows (agent, peers, tcpdump)
//! before it cleans up.

use crate::capture::{self, Capture, CaptureStats};
use crate::cert::TestCert;
use crate::hsmon::{Agent, HsmonConn};
use crate::netns::NetPair;
use crate::nginx::Nginx;
use crate::openssl::{SClient, SClientOpts, SServer, SServerOpts, TlsVersion};
use crate::plain::{self, PlainExchange};
use crate::process::{read_lossy, tail, Proc};
use crate::pyssl::PyTlsServer;
use crate::truth::{parse_tshark_json, ConnTruth};
use crate::workdir::WorkDir;
use anyhow::{anyhow, bail, Context, Result};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long one peer connection may take from start to exit.
pub const PER_CONN: Duration = Duration::from_secs(15);

/// How long [`Scenario::finish`] waits for hsmon's view to settle.
pub const SETTLE: Duration = Duration::from_secs(10);

/// A running scenario. Fields drop in order: agent, capture, namespaces (and
/// any process left in them), temporary directory.
pub struct Scenario {
    /// The test's name (used in file names).
    pub name: String,
    agent: Option<Agent>,
    capture: Option<Capture>,
    /// The namespaces.
    pub net: NetPair,
    /// The certificate every server uses.
    pub cert: TestCert,
    client_keylog: PathBuf,
    keylogs: Vec<PathBuf>,
    tls_ports: Vec<u16>,
    logs: Vec<(String, PathBuf)>,
    seq: u32,
    report_text: Option<String>,
    /// The temporary directory (removed last).
    pub dir: WorkDir,
}

impl Scenario {
    /// Namespaces, certificate, capture and the hsmon agent.
    pub fn start(name: &str) -> Result<Self> {
        Self::start_with(name, true)
    }

    /// Like [`Scenario::start`] but without hsmon: for checking the harness.
    pub fn start_without_agent(name: &str) -> Result<Self> {
        Self::start_with(name, false)
    }

    fn start_with(name: &str, with_agent: bool) -> Result<Self> {
        Self::start_full(name, with_agent.then_some(&[][..]))
    }

    /// Like [`Scenario::start`], with `agent_args` appended to `hsmon run`'s
    /// arguments.
    pub fn start_with_agent_args(name: &str, agent_args: &[String]) -> Result<Self> {
        Self::start_full(name, Some(agent_args))
    }

    /// `agent`: `None` runs no agent, `Some(args)` one with `args` appended.
    fn start_full(name: &str, agent: Option<&[String]>) -> Result<Self> {
        let dir = WorkDir::new(name)?;
        let net = NetPair::create().context("creating the network namespaces")?;
        let cert = TestCert::generate(dir.path()).context("generating the test certificate")?;
        let client_keylog = dir.join("clients.keylog");
        let mut sc = Self {
            name: name.to_owned(),
            agent: None,
            capture: None,
            net,
            cert,
            keylogs: vec![client_keylog.clone()],
            client_keylog,
            tls_ports: Vec::new(),
            logs: Vec::new(),
            seq: 0,
            report_text: None,
            dir,
        };
        let capture =
            Capture::start(&sc.net, sc.dir.path(), "tcpdump").context("starting tcpdump")?;
        sc.capture = Some(capture);
        if let Some(args) = agent {
            sc.agent = Some(
                Agent::start_with_args(&sc.net, sc.dir.path(), args).context("starting hsmon")?,
            );
        }
        Ok(sc)
    }

    /// The server's address of a family, with `port`.
    pub fn server_addr(&self, ipv6: bool, port: u16) -> SocketAddr {
        self.net.server_addr(ipv6, port)
    }

    /// A path in the scenario's temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The key log all `s_client`s append to.
    pub fn client_keylog(&self) -> &Path {
        &self.client_keylog
    }

    /// The agent, if the scenario has one.
    pub fn agent(&self) -> Option<&Agent> {
        self.agent.as_ref()
    }

    /// Adds a port tshark decodes as TLS (servers started here add theirs).
    pub fn add_tls_port(&mut self, port: u16) {
        if !self.tls_ports.contains(&port) {
            self.tls_ports.push(port);
        }
    }

    /// Adds a key log for tshark (e.g. a server's).
    pub fn add_keylog(&mut self, path: PathBuf) {
        self.keylogs.push(path);
    }

    fn next_name(&mut self, kind: &str) -> String {
        self.seq += 1;
        format!("{kind}-{}", self.seq)
    }

    /// Adds a process started outside the scenario (e.g. Prometheus) to the
    /// logs printed when the test fails.
    pub fn add_logs(&mut self, p: &Proc) {
        self.register(p);
    }

    fn register(&mut self, p: &Proc) {
        self.logs.push((
            format!("{} stdout", p.name()),
            p.stdout_path().to_path_buf(),
        ));
        self.logs.push((
            format!("{} stderr", p.name()),
            p.stderr_path().to_path_buf(),
        ));
    }

    /// Starts `openssl s_server` (in the server namespace).
    pub fn s_server(&mut self, opts: &SServerOpts) -> Result<SServer> {
        let name = self.next_name("s_server");
        self.add_tls_port(opts.addr.port());
        let s = SServer::start(&self.net, self.dir.path(), &self.cert, opts, &name)?;
        self.register(&s.proc);
        Ok(s)
    }

    /// Starts `openssl s_client` (in the client namespace) with the shared key
    /// log.
    pub fn s_client(&mut self, opts: &SClientOpts) -> Result<SClient> {
        let name = self.next_name("s_client");
        self.add_tls_port(opts.connect.port());
        let c = SClient::start(&self.net, self.dir.path(), &self.client_keylog, opts, &name)?;
        self.register(&c.proc);
        Ok(c)
    }

    /// A TLS 1.2 `s_server` on `port` (IPv4) that honours client-initiated
    /// renegotiation, and an `s_client` connected to it with its handshake
    /// done (within `wait`): the start of every renegotiation scenario.
    pub fn renegotiating_pair(&mut self, port: u16, wait: Duration) -> Result<(SServer, SClient)> {
        let addr = self.server_addr(false, port);
        let srv = self.s_server(
            &SServerOpts::new(addr)
                .version(TlsVersion::Tls12)
                .client_renegotiation(true),
        )?;
        let mut c = self.s_client(&SClientOpts::new(addr).version(TlsVersion::Tls12))?;
        c.wait_established(wait)?;
        Ok((srv, c))
    }

    /// `n` connections one after another, each a complete handshake and a
    /// clean close. Returns the handshakes completed (fails before `n` on
    /// the first connection that does not complete).
    pub fn sequential_handshakes(&mut self, opts: &SClientOpts, n: usize) -> Result<usize> {
        let mut done = 0;
        for i in 0..n {
            let mut c = self.s_client(opts)?;
            c.wait_established(PER_CONN)
                .with_context(|| format!("connection {i} of {n}"))?;
            c.close(PER_CONN)
                .with_context(|| format!("connection {i} of {n}"))?;
            done += c.handshakes_completed().min(1);
        }
        Ok(done)
    }

    /// Starts nginx (in the server namespace).
    pub fn nginx(&mut self, addr: SocketAddr) -> Result<Nginx> {
        let name = self.next_name("nginx");
        self.add_tls_port(addr.port());
        let n = Nginx::start(&self.net, self.dir.path(), &self.cert, addr, &name)?;
        self.register(&n.proc);
        if let Some(p) = n.conf.parent() {
            self.logs
                .push((format!("{name} error.log"), p.join("error.log")));
        }
        Ok(n)
    }

    /// Starts the Python `ssl` echo server (in the server namespace); its key
    /// log is added for tshark.
    /// A Python TLS echo server whose SNI callback sleeps `sni_delay_ms`
    /// (see [`PyTlsServer::start_with_sni_delay`]).
    pub fn python_tls_server_sni_delay(
        &mut self,
        addr: SocketAddr,
        sni_delay_ms: u32,
    ) -> Result<PyTlsServer> {
        let name = self.next_name("py_tls");
        self.add_tls_port(addr.port());
        let s = PyTlsServer::start_with_sni_delay(
            &self.net,
            self.dir.path(),
            &self.cert,
            addr,
            None,
            &name,
            sni_delay_ms,
        )?;
        self.register(&s.proc);
        self.keylogs.push(s.keylog.clone());
        Ok(s)
    }

    pub fn python_tls_server(
        &mut self,
        addr: SocketAddr,
        version: Option<TlsVersion>,
    ) -> Result<PyTlsServer> {
        let name = self.next_name("py_tls");
        self.add_tls_port(addr.port());
        let s = PyTlsServer::start(&self.net, self.dir.path(), &self.cert, addr, version, &name)?;
        self.register(&s.proc);
        self.keylogs.push(s.keylog.clone());
        Ok(s)
    }

    /// A plain TCP echo exchange to `addr` (not a TLS port).
    pub fn plain_exchange(&mut self, addr: SocketAddr) -> Result<PlainExchange> {
        plain::exchange(&self.net, addr, PER_CONN)
    }

    /// Stops the capture, builds the ground truth and, with an agent, waits
    /// until hsmon lists every TLS connection of the capture with a settled
    /// state (bounded by [`SETTLE`]) and takes its `conns`.
    pub fn finish(&mut self) -> Result<Report> {
        let cap = self
            .capture
            .as_mut()
            .ok_or_else(|| anyhow!("finish called twice"))?;
        let stats = cap.stop()?;
        let pcap = cap.pcap.clone();
        let keylog = self.dir.join("all.keylog");
        capture::merge_keylogs(&self.keylogs, &keylog)?;
        let json = capture::tshark_json(
            &pcap,
            Some(&keylog),
            &self.tls_ports,
            &self.dir.join("capture.json"),
        )?;
        let truth = parse_tshark_json(&json, &self.tls_ports).context("parsing tshark's JSON")?;
        let conns = match self.agent.as_mut() {
            Some(agent) => Some(settled_conns(agent, &truth)?),
            None => None,
        };
        let report = Report {
            truth,
            conns,
            capture: stats,
            pcap,
        };
        let text = report.describe();
        // Shown by the test harness only for failing tests (or --nocapture).
        eprintln!("scenario {}:\n{text}", self.name);
        self.report_text = Some(text);
        Ok(report)
    }

    /// Prints the report (if any) and the tails of every known log.
    pub fn dump_logs(&self) {
        let mut s = format!("======== scenario {} failed; its logs:\n", self.name);
        if let Some(r) = &self.report_text {
            s.push_str(r);
        }
        if let Some(a) = &self.agent {
            s.push_str(&a.logs(200));
        }
        if let Some(c) = &self.capture {
            s.push_str(&c.logs());
        }
        for (label, path) in &self.logs {
            let text = read_lossy(path);
            let _ = writeln!(s, "--- {label} ({}):\n{}", path.display(), tail(&text, 30));
        }
        if !self.dir.removed_on_drop() {
            let _ = writeln!(s, "(files kept in {})", self.dir.path().display());
        }
        s.push_str("======== end of logs\n");
        eprintln!("{s}");
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
    }
}

fn settled_conns(agent: &mut Agent, truth: &[ConnTruth]) -> Result<Vec<HsmonConn>> {
    let deadline = Instant::now() + SETTLE;
    let mut prev: Option<Vec<HsmonConn>> = None;
    loop {
        if !agent.is_running() {
            bail!("hsmon run is gone\n{}", agent.logs(80));
        }
        let now = agent.conns()?;
        let settled = truth.iter().filter(|t| t.is_tls()).all(|t| {
            find_by_client_port(&now, t.client.port())
                .is_some_and(|h| !t.closed() || h.state == "closed")
        });
        let stable = prev.as_ref() == Some(&now);
        if (settled && stable) || Instant::now() >= deadline {
            return Ok(now);
        }
        prev = Some(now);
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn find_by_client_port(conns: &[HsmonConn], port: u16) -> Option<&HsmonConn> {
    conns
        .iter()
        .find(|h| h.client_addr().is_ok_and(|a| a.port() == port))
}

/// What a scenario measured.
#[derive(Debug)]
pub struct Report {
    /// Ground truth, one per TCP connection in the capture.
    pub truth: Vec<ConnTruth>,
    /// hsmon's `conns --json` (None without an agent).
    pub conns: Option<Vec<HsmonConn>>,
    /// tcpdump's counters.
    pub capture: CaptureStats,
    /// The capture file (inside the temporary directory).
    pub pcap: PathBuf,
}

impl Report {
    /// Ground truth of the TLS connections.
    pub fn tls(&self) -> Vec<&ConnTruth> {
        self.truth.iter().filter(|t| t.is_tls()).collect()
    }

    /// Ground truth of the TCP connections that are not TLS.
    pub fn non_tls(&self) -> Vec<&ConnTruth> {
        self.truth.iter().filter(|t| !t.is_tls()).collect()
    }

    /// hsmon's connections (fails without an agent).
    pub fn hsmon(&self) -> Result<&[HsmonConn]> {
        self.conns
            .as_deref()
            .ok_or_else(|| anyhow!("this scenario ran without hsmon"))
    }

    /// hsmon's entry for a connection, matched by the client's port.
    pub fn hsmon_for(&self, t: &ConnTruth) -> Option<&HsmonConn> {
        find_by_client_port(self.conns.as_deref()?, t.client.port())
    }

    /// Every TLS connection of the capture with hsmon's entry for it; fails
    /// naming the connections hsmon does not list.
    pub fn matched(&self) -> Result<Vec<(&ConnTruth, &HsmonConn)>> {
        let conns = self.hsmon()?;
        let mut out = Vec::new();
        let mut missing = Vec::new();
        for t in self.tls() {
            match find_by_client_port(conns, t.client.port()) {
                Some(h) => out.push((t, h)),
                None => missing.push(t.summary()),
            }
        }
        if !missing.is_empty() {
            bail!(
                "hsmon does not list {} TLS connection(s) of the capture:\n  {}\n{}",
                missing.len(),
                missing.join("\n  "),
                self.describe()
            );
        }
        Ok(out)
    }

    /// The single TLS connection of the capture and hsmon's entry for it.
    pub fn only_tls(&self) -> Result<(&ConnTruth, &HsmonConn)> {
        let m = self.matched()?;
        if m.len() != 1 {
            bail!(
                "expected exactly 1 TLS connection, capture has {}\n{}",
                m.len(),
                self.describe()
            );
        }
        Ok(m[0])
    }

    /// Ground truth and hsmon's view as text.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "capture: {} packets, {} dropped by kernel, {} TCP connection(s)\n",
            self.capture.captured,
            self.capture.dropped_by_kernel,
            self.truth.len()
        );
        for t in &self.truth {
            let _ = writeln!(s, "  truth: {}", t.summary());
        }
        match &self.conns {
            None => s.push_str("  (no hsmon)\n"),
            Some(conns) => {
                for h in conns {
                    let _ = writeln!(s, "  hsmon: {h:?}");
                }
            }
        }
        s
    }
}

/// Checks that hold for every TLS connection of every scenario: hsmon's
/// addresses are the capture's, its version is the capture's, it never lost
/// sync on a clean veth, a closed connection is "closed", and the ground
/// truth itself is complete (every handshake record decrypted).
pub fn assert_common(t: &ConnTruth, h: &HsmonConn) {
    assert_eq!(
        t.undecrypted(),
        0,
        "ground truth incomplete (key log?): {}",
        t.summary()
    );
    assert_eq!(
        h.client_addr().ok(),
        Some(t.client),
        "client address: {h:?}"
    );
    assert_eq!(
        h.server_addr().ok(),
        Some(t.server),
        "server address: {h:?}"
    );
    assert_eq!(
        h.tls_version,
        t.version(),
        "tls_version vs capture: {h:?} / {}",
        t.summary()
    );
    assert!(!h.unsynced, "hsmon lost sync on a clean capture: {h:?}");
    if t.closed() {
        assert_eq!(h.state, "closed", "connection ended in the capture: {h:?}");
    }
}

/// Runs a test body in a fresh [`Scenario`] with the hsmon agent. Skips (or
/// fails, see [`crate::root`]) without root; an `Err` from the body fails
/// the test after the logs are printed.
pub fn with_scenario(name: &str, body: impl FnOnce(&mut Scenario) -> Result<()>) {
    run(name, true, body);
}

/// Like [`with_scenario`], with `agent_args` appended to `hsmon run`'s
/// arguments.
pub fn with_scenario_agent_args(
    name: &str,
    agent_args: &[String],
    body: impl FnOnce(&mut Scenario) -> Result<()>,
) {
    if !crate::root::root_or_skip(name) {
        return;
    }
    let mut sc = match Scenario::start_with_agent_args(name, agent_args) {
        Ok(sc) => sc,
        Err(e) => panic!("{name}: setting up the scenario failed: {e:?}"),
    };
    if let Err(e) = body(&mut sc) {
        // Panicking while `sc` is alive makes its Drop print the logs.
        panic!("{name}: {e:?}");
    }
}

/// Like [`with_scenario`] but without hsmon (harness self-checks).
pub fn with_scenario_no_agent(name: &str, body: impl FnOnce(&mut Scenario) -> Result<()>) {
    run(name, false, body);
}

fn run(name: &str, agent: bool, body: impl FnOnce(&mut Scenario) -> Result<()>) {
    if !crate::root::root_or_skip(name) {
        return;
    }
    let mut sc = match Scenario::start_with(name, agent) {
        Ok(sc) => sc,
        Err(e) => panic!("{name}: setting up the scenario failed: {e:?}"),
    };
    if let Err(e) = body(&mut sc) {
        // Panicking while `sc` is alive makes its Drop print the logs.
        panic!("{name}: {e:?}");
    }
}
