//! hsmon on real host topologies and against a hostile client (issue 11).
//!
//! Topologies ([`tests::hosts::Host`]): a Docker-like bridge host (server
//! and client containers on `br0`, a client on the host itself, an uplink
//! with a port published through nft DNAT), two bridges carrying the same
//! 4-tuple, and the plain veth pair ([`tests::rig::Rig`]) for the attacks
//! that need no bridge. The agent runs in the host namespace with the
//! default policy (renegotiation cap 3) and the hooks each test names.
//!
//! Ground truth is the peers' own account: `openssl s_server -msg` (every
//! ClientHello it read; for the 20 MB downloads the Python bulk server of
//! [`tests::bulk`], which counts the same), the attacker client's lines ([`tests::attack`]:
//! each renegotiation's result, whether the server side ended the
//! connection), and for retransmissions a tcpdump capture read by tshark.
//!
//! The cap check every topology runs ([`cap_run`]): a benign connection
//! renegotiates twice (under the cap), an attacker connection tries 6
//! renegotiations (exactly 3 may be honoured, the 4th ClientHello must not
//! reach the server and the connection must be reset), then a benign
//! connection renegotiates once more with a second server (no ban, not cut
//! off). With the cap holding, the first `s_server` reads exactly 3 + 4
//! ClientHellos, the second 2.
//!
//! Tests that fail on today's code are `#[ignore = "issue 11: …"]` with what
//! they measured; run them with `--ignored`.

use anyhow::{ensure, Context, Result};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::time::{Duration, Instant};
use tests::attack::{self, ok_count, Client};
use tests::bulk::BulkServer;
use tests::capture::Capture;
use tests::cert::TestCert;
use tests::decisions::decisions;
use tests::hosts::{self, Host};
use tests::hsmon::{Agent, HsmonConn};
use tests::openssl::{msg_count, SServer, SServerOpts, TlsVersion};
use tests::pyssl::PyTlsServer;
use tests::require_root;
use tests::rig::Rig;
use tests::workdir::WorkDir;

const PORT: u16 = 4433;
const AFTER_PORT: u16 = 4434;
const PUBLISHED: u16 = 8443;
/// The servers' ports in socket-hook tests: the `cgroup_skb` programs see
/// every socket on the host, so these tests use ports no other test uses
/// and the agent watches only them.
const SOCK_PORT: u16 = 4733;
const SOCK_AFTER_PORT: u16 = 4734;
const SOCK_PUBLISHED: u16 = 8743;
const CAP: usize = 3;
const TRIES: usize = 6;
const CLIENT_WAIT: Duration = Duration::from_secs(60);

/// Which hooks the agent counts with (`hsmon run --hooks`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hooks {
    /// TC on the interfaces (`--hooks tc`).
    Tc,
    /// The socket hooks (`--hooks socket`), watching only the socket-test ports.
    Socket,
}

impl Hooks {
    /// The first server's port.
    fn port(self) -> u16 {
        match self {
            Hooks::Tc => PORT,
            Hooks::Socket => SOCK_PORT,
        }
    }

    /// The second server's port.
    fn after_port(self) -> u16 {
        match self {
            Hooks::Tc => AFTER_PORT,
            Hooks::Socket => SOCK_AFTER_PORT,
        }
    }

    /// The host port published through DNAT to the first server.
    fn published(self) -> u16 {
        match self {
            Hooks::Tc => PUBLISHED,
            Hooks::Socket => SOCK_PUBLISHED,
        }
    }

    /// `hsmon run` arguments for this mode.
    fn args(self) -> Vec<String> {
        match self {
            Hooks::Tc => vec!["--hooks".into(), "tc".into()],
            Hooks::Socket => vec![
                "--hooks".into(),
                "socket".into(),
                "--ports".into(),
                format!("{SOCK_PORT},{SOCK_AFTER_PORT}"),
            ],
        }
    }
}

/// Where the peers of one cap check run.
struct Peers<'a> {
    client_ns: &'a str,
    server_ns: &'a str,
    /// Where the server listens.
    listen: SocketAddr,
    /// Where the clients connect (differs from `listen` behind DNAT).
    connect: SocketAddr,
    /// The second server, for the later benign connection (s_server serves
    /// one connection at a time: an attacker connection left stuck would
    /// hold the first one).
    after_listen: SocketAddr,
    /// Where the later benign connection connects.
    after_connect: SocketAddr,
    dir: &'a Path,
    cert: &'a TestCert,
    agent: &'a Agent,
    hooks: Hooks,
    /// Whether the agent's reset is expected to reach the server's socket
    /// (and the decision to say `reset`). It does in the agent's namespace,
    /// and with the socket hooks in any namespace (the flow names it); a
    /// TC-observed flow is reset in another namespace only when exactly one
    /// namespace has a socket with its 4-tuple.
    reset_reaches: bool,
}

/// What one cap check measured.
#[derive(Debug)]
struct CapRun {
    benign_ok: usize,
    attack_ok: usize,
    attack_end: String,
    after_ok: usize,
    server_hellos: usize,
    after_hellos: usize,
    bans: usize,
    /// hsmon's entries per client port: benign, attacker, after.
    entries: [Vec<HsmonConn>; 3],
    /// The agent's decisions, counted by `rule:action`.
    decisions: BTreeMap<String, usize>,
    /// The decisions about the attacker's connection, by `rule:action`.
    attack_decisions: BTreeMap<String, usize>,
    /// See [`Peers::reset_reaches`].
    reset_reaches: bool,
}

/// The agent's decisions so far, counted by `rule:action`.
fn decision_counts(agent: &Agent) -> Result<BTreeMap<String, usize>> {
    decision_counts_for(agent, None)
}

/// [`decision_counts`] of the decisions about the connection from `client`
/// only (all with `None`). The socket hooks see every socket of the host,
/// so a decision about another test's connection on the same port can show
/// up in this agent's log.
fn decision_counts_for(
    agent: &Agent,
    client: Option<SocketAddr>,
) -> Result<BTreeMap<String, usize>> {
    let mut m = BTreeMap::new();
    for d in decisions(agent)? {
        if let Some(c) = client {
            if d["connection"]["client"].as_str() != Some(c.to_string().as_str()) {
                continue;
            }
        }
        let key = format!(
            "{}:{}",
            d["rule"].as_str().unwrap_or("?"),
            d["action"].as_str().unwrap_or("?")
        );
        *m.entry(key).or_default() += 1;
    }
    Ok(m)
}

impl CapRun {
    fn summary(&self) -> String {
        let e = |i: usize| {
            self.entries[i]
                .iter()
                .map(|c| {
                    format!(
                        "{}->{} reneg_c={} hs={} unsynced={} state={}",
                        c.client,
                        c.server,
                        c.renegotiations_client,
                        c.handshakes,
                        c.unsynced,
                        c.state
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        format!(
            "benign {} ok; attacker {} ok, end {}; after {} ok; s_server ClientHellos {} (after: {}); bans {}; \
             decisions {:?} (attacker's {:?})\n  benign entries [{}]\n  attacker entries [{}]\n  after entries [{}]",
            self.benign_ok,
            self.attack_ok,
            self.attack_end,
            self.after_ok,
            self.server_hellos,
            self.after_hellos,
            self.bans,
            self.decisions,
            self.attack_decisions,
            e(0),
            e(1),
            e(2)
        )
    }

    /// The cap held, the benign connections were left alone and hsmon
    /// listed each connection once with the server's counts.
    fn check(&self) -> Result<()> {
        let s = self.summary();
        eprintln!("cap run: {s}");
        ensure!(self.benign_ok == 2, "benign renegotiations: {s}");
        ensure!(
            self.attack_ok == CAP,
            "attacker's honoured renegotiations: {s}"
        );
        ensure!(
            self.server_hellos == 3 + (1 + CAP),
            "s_server's ClientHellos (want 3 + 4): {s}"
        );
        ensure!(
            self.after_hellos == 2,
            "the second s_server's ClientHellos: {s}"
        );
        // Reset by the agent (the server's socket destroyed): the client
        // sees a RST or the server's close, never a connection left open.
        ensure!(
            !self.reset_reaches || self.attack_end == "reset" || self.attack_end == "eof",
            "the attacker's connection was not ended: {s}"
        );
        // And the agent says so truthfully: the reset reached the socket
        // (not `already_closed` for a socket that was open, nor failed).
        if self.reset_reaches {
            ensure!(
                self.attack_decisions.get("reneg_cap:reset") == Some(&1)
                    && !self
                        .attack_decisions
                        .contains_key("reneg_cap:already_closed")
                    && !self.attack_decisions.contains_key("reneg_cap:reset_failed"),
                "the cap decision's outcome is not `reset`: {s}"
            );
        }
        ensure!(self.after_ok == 1, "the later benign connection: {s}");
        ensure!(self.bans == 0, "a benign peer was banned: {s}");
        for (i, want) in [(0, 2), (2, 1)] {
            ensure!(
                self.entries[i].len() == 1,
                "hsmon lists connection {i} {} times: {s}",
                self.entries[i].len()
            );
            let c = &self.entries[i][0];
            ensure!(
                c.renegotiations_client == want && c.handshakes == want + 1 && !c.unsynced,
                "hsmon's counts for connection {i}: {s}"
            );
        }
        ensure!(
            self.entries[1].len() == 1,
            "hsmon lists the attacker {} times: {s}",
            self.entries[1].len()
        );
        Ok(())
    }
}

/// Starts a TLS 1.2 `s_server` on `listen` that honours client
/// renegotiation.
fn reneg_server(p: &Peers, listen: SocketAddr, name: &str) -> Result<SServer> {
    SServer::start_in(
        p.server_ns,
        p.dir,
        p.cert,
        &SServerOpts::new(listen)
            .version(TlsVersion::Tls12)
            .client_renegotiation(true),
        name,
    )
}

fn steps(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

/// hsmon's entries whose client address is `client`, once they settled
/// (at most 5 s).
fn entries_for(agent: &Agent, client: Option<SocketAddr>) -> Result<Vec<HsmonConn>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut prev = Vec::new();
    loop {
        let now: Vec<HsmonConn> = agent
            .conns()?
            .into_iter()
            .filter(|c| c.client_addr().ok() == client)
            .collect();
        if (!now.is_empty() && now == prev) || Instant::now() >= deadline {
            return Ok(now);
        }
        prev = now;
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The cap check (see the module docs). `attack` are the attacker's steps
/// before its renegotiations; `between` runs when the attacker printed
/// `between_marker` and before the test writes a line to its stdin (only
/// when `attack` has a `wait` step).
fn cap_run(
    p: &Peers,
    attack: &[&str],
    between_marker: Option<&str>,
    between: impl FnOnce() -> Result<()>,
) -> Result<CapRun> {
    let srv = reneg_server(p, p.listen, "s_server")?;
    let after_srv = reneg_server(p, p.after_listen, "s_server_after")?;
    let mut benign = Client::start(
        p.client_ns,
        p.dir,
        "benign",
        p.connect,
        &steps(&["tls=1.2", "reneg=2"]),
    )?;
    let benign_out = benign.finish(CLIENT_WAIT);
    let benign_addr = benign.local_addr().context("benign client's address")?;

    let mut all = vec!["tls=1.2"];
    all.extend_from_slice(attack);
    let reneg = format!("reneg={TRIES}");
    all.extend([reneg.as_str(), "awaitclose=10"]);
    let mut attacker = Client::start(p.client_ns, p.dir, "attacker", p.connect, &steps(&all))?;
    if let Some(marker) = between_marker {
        attacker
            .proc
            .wait_for(marker, CLIENT_WAIT, |out, _| out.contains(marker))?;
        between()?;
        attacker.proc.write_line("go")?;
    }
    let attack_out = attacker.finish(CLIENT_WAIT);
    let attack_addr = attacker.local_addr().context("attacker's address")?;

    let mut after = Client::start(
        p.client_ns,
        p.dir,
        "after",
        p.after_connect,
        &steps(&["tls=1.2", "reneg=1"]),
    )?;
    let after_out = after.finish(CLIENT_WAIT);
    let after_addr = after.local_addr();

    let attack_end = attack_out
        .lines()
        .find_map(|l| l.strip_prefix("CLOSED "))
        .unwrap_or("no CLOSED line")
        .to_owned();
    Ok(CapRun {
        benign_ok: ok_count(&benign_out, "RENEG"),
        attack_ok: ok_count(&attack_out, "RENEG"),
        attack_end,
        after_ok: ok_count(&after_out, "RENEG"),
        server_hellos: msg_count(&srv.proc.stdout(), "<<<", "ClientHello"),
        after_hellos: msg_count(&after_srv.proc.stdout(), "<<<", "ClientHello"),
        bans: p.agent.bans()?.len(),
        entries: [
            entries_for(p.agent, Some(benign_addr))?,
            entries_for(p.agent, Some(attack_addr))?,
            entries_for(p.agent, after_addr)?,
        ],
        decisions: decision_counts(p.agent)?,
        attack_decisions: decision_counts_for(p.agent, Some(attack_addr))?,
        reset_reaches: p.reset_reaches,
    })
    .map(|run| same_namespace_only(run, p.hooks))
}

/// With the socket hooks, keeps only the entries of the server's network
/// namespace (the benign connection's): a socket with the same 4-tuple in
/// another namespace (the ghost) is another entry, by design.
fn same_namespace_only(mut run: CapRun, hooks: Hooks) -> CapRun {
    if hooks != Hooks::Socket {
        return run;
    }
    let Some(ns) = run.entries[0].first().map(|c| c.netns_cookie) else {
        return run;
    };
    for e in run.entries.iter_mut().skip(1) {
        let others = e.iter().filter(|c| c.netns_cookie != ns).count();
        if others > 0 {
            eprintln!("entries in another namespace (left out): {others}");
        }
        e.retain(|c| c.netns_cookie == ns);
    }
    run
}

fn fail(e: anyhow::Error) -> ! {
    panic!("{e:#}")
}

/// The bridge host's cap check with the agent on `hooks` and the client in
/// the container `client` (or the host itself for `None`).
fn bridge_cap(name: &str, hooks: &[&str], client: Option<&str>) {
    bridge_cap_with(name, hooks, client, Hooks::Tc)
}

/// [`bridge_cap`] with the agent counting on `mode`.
fn bridge_cap_with(name: &str, hooks: &[&str], client: Option<&str>, mode: Hooks) {
    let dir = WorkDir::new(name).unwrap_or_else(|e| fail(e));
    let host = Host::docker_like().unwrap_or_else(|e| fail(e));
    let cert = TestCert::generate(dir.path()).unwrap_or_else(|e| fail(e));
    let mut args: Vec<String> = hooks.iter().map(|s| s.to_string()).collect();
    args.extend(mode.args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = host.agent(dir.path(), &args).unwrap_or_else(|e| fail(e));
    let srv = host.container("srv").unwrap_or_else(|e| fail(e)).clone();
    let client_ns = match client {
        Some(c) => host.container(c).unwrap_or_else(|e| fail(e)).ns.clone(),
        None => host.ns.clone(),
    };
    let listen = SocketAddr::from((hosts::SERVER_IP, mode.port()));
    // The server container's own view: real retransmissions on its eth0.
    let mut cap =
        Capture::start_in(&srv.ns, "eth0", dir.path(), "tcpdump").unwrap_or_else(|e| fail(e));
    let p = Peers {
        client_ns: &client_ns,
        server_ns: &srv.ns,
        listen,
        connect: listen,
        after_listen: SocketAddr::from((hosts::SERVER_IP, mode.after_port())),
        after_connect: SocketAddr::from((hosts::SERVER_IP, mode.after_port())),
        dir: dir.path(),
        cert: &cert,
        agent: &agent,
        hooks: mode,
        reset_reaches: true,
    };
    let run = cap_run(&p, &[], None, || Ok(())).unwrap_or_else(|e| fail(e));
    cap.stop().unwrap_or_else(|e| fail(e));
    let retrans = run.entries[0].first().map(|c| c.client_addr());
    let real = match retrans {
        Some(Ok(a)) => hosts::tshark_count(
            &cap.pcap,
            &format!("tcp.port == {} && tcp.analysis.retransmission", a.port()),
        )
        .unwrap_or_else(|e| fail(e)),
        _ => 0,
    };
    let seen = benign_retransmits(&agent, &run);
    eprintln!("benign connection: retransmissions captured {real}, hsmon {seen:?}");
    if let Err(e) = run.check() {
        fail(e.context(agent.logs(40)));
    }
    assert_eq!(
        seen,
        Some(real as u64),
        "hsmon's retransmissions of the benign connection vs the capture"
    );
}

/// hsmon's `retransmits` for the benign connection of a cap run.
fn benign_retransmits(agent: &Agent, run: &CapRun) -> Option<u64> {
    let client = run.entries[0].first()?.client.clone();
    let values = agent.conns_values().ok()?;
    values
        .iter()
        .find(|v| v["client"] == client.as_str())
        .and_then(|v| v["retransmits"].as_u64())
}

#[test]
#[ignore = "issue 11: benign: hsmon retransmits 14, capture 0 (every segment seen twice); the cap and its reset hold (reset in the server container's namespace)"]
fn bridge_default_hooks_count_once_and_cap_holds() {
    require_root!();
    bridge_cap("hosts-bridge-default", &[], Some("cli"));
}

/// TC on the client container's veth: the flow has no namespace cookie;
/// the reset finds the server's socket in the one other namespace that has
/// the 4-tuple (the server container) and destroys it there.
#[test]
fn bridge_client_veth_hook_counts_once_and_cap_holds() {
    require_root!();
    bridge_cap("hosts-bridge-iface", &["--iface", "v-cli"], Some("cli"));
}

#[test]
#[ignore = "issue 11: --iface = server veth host end: 6 of 6 renegotiations honoured, no decision"]
fn egress_only_hooks_still_cap() {
    require_root!();
    bridge_cap("hosts-egress-only", &["--iface", "v-srv"], Some("cli"));
}

#[test]
#[ignore = "issue 11: host client, default hooks: 6 of 6 honoured, no decision; retransmits 14 vs 0 captured"]
fn host_client_to_container_server_cap_holds() {
    require_root!();
    bridge_cap("hosts-host-client", &[], None);
}

#[test]
#[ignore = "issue 11: each connection listed twice (pre/post-NAT); benign peer banned (renegotiations_per_minute), later client 0 of 1; reset `already_closed` (the over-cap entry is the pre-DNAT tuple: no socket in any namespace has it)"]
fn published_port_through_dnat_counts_once_and_cap_holds() {
    require_root!();
    dnat_cap("hosts-dnat", Hooks::Tc);
}

/// The published-port cap check with the agent counting on `mode`.
fn dnat_cap(name: &str, mode: Hooks) {
    let dir = WorkDir::new(name).unwrap_or_else(|e| fail(e));
    let host = Host::docker_like().unwrap_or_else(|e| fail(e));
    let cert = TestCert::generate(dir.path()).unwrap_or_else(|e| fail(e));
    let published = mode.published();
    host.publish(published, SocketAddrV4::new(hosts::SERVER_IP, mode.port()))
        .unwrap_or_else(|e| fail(e));
    host.publish(
        published + 1,
        SocketAddrV4::new(hosts::SERVER_IP, mode.after_port()),
    )
    .unwrap_or_else(|e| fail(e));
    let args = mode.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = host.agent(dir.path(), &args).unwrap_or_else(|e| fail(e));
    let srv = host.container("srv").unwrap_or_else(|e| fail(e)).clone();
    let out = host.outside.clone().expect("uplink");
    let p = Peers {
        client_ns: &out.ns,
        server_ns: &srv.ns,
        listen: SocketAddr::from((hosts::SERVER_IP, mode.port())),
        connect: SocketAddr::from((hosts::UPLINK_HOST, published)),
        after_listen: SocketAddr::from((hosts::SERVER_IP, mode.after_port())),
        after_connect: SocketAddr::from((hosts::UPLINK_HOST, published + 1)),
        dir: dir.path(),
        cert: &cert,
        agent: &agent,
        hooks: mode,
        reset_reaches: true,
    };
    let run = cap_run(&p, &[], None, || Ok(())).unwrap_or_else(|e| fail(e));
    if let Err(e) = run.check() {
        fail(e.context(agent.logs(40)));
    }
}

/// Two bridges, each with a server and a client container with the same
/// addresses; both clients bind the same port, so both connections have
/// the same 4-tuple. Connection A renegotiates twice and stays open; then
/// connection B tries 6 renegotiations: its cap must hold (3 honoured,
/// server B reads 4 ClientHellos, B is reset); then A renegotiates once
/// more: it must not have been cut off (3 honoured, server A reads 4).
#[test]
#[ignore = "issue 11: one shared entry for both 4-tuples; B 6 of 6 honoured, not reset"]
fn same_four_tuple_on_two_bridges_keeps_separate_caps() {
    require_root!();
    twins_cap("hosts-twins", Hooks::Tc);
}

/// The twin-bridges check with the agent counting on `mode`.
fn twins_cap(name: &str, mode: Hooks) {
    let dir = WorkDir::new(name).unwrap_or_else(|e| fail(e));
    let host = Host::twin_bridges().unwrap_or_else(|e| fail(e));
    let cert = TestCert::generate(dir.path()).unwrap_or_else(|e| fail(e));
    let args = mode.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = host.agent(dir.path(), &args).unwrap_or_else(|e| fail(e));
    let listen = SocketAddr::from((hosts::TWIN_SERVER, mode.port()));
    let ns = |n: &str| host.container(n).unwrap_or_else(|e| fail(e)).ns.clone();
    let opts = SServerOpts::new(listen)
        .version(TlsVersion::Tls12)
        .client_renegotiation(true);
    let srv_a = SServer::start_in(&ns("srv0"), dir.path(), &cert, &opts, "s_server_a")
        .unwrap_or_else(|e| fail(e));
    let srv_b = SServer::start_in(&ns("srv1"), dir.path(), &cert, &opts, "s_server_b")
        .unwrap_or_else(|e| fail(e));
    let bind = format!("bind={}:40001", hosts::TWIN_CLIENT);
    let mut b = Client::start(
        &ns("cli1"),
        dir.path(),
        "client_b",
        listen,
        &steps(&["tls=1.2", &bind, "wait", "reneg=6", "awaitclose=10"]),
    )
    .unwrap_or_else(|e| fail(e));
    b.wait_connected(CLIENT_WAIT).unwrap_or_else(|e| fail(e));
    // A stays open while B is capped and reset, then renegotiates once
    // more: B's reset must not touch A's socket (same 4-tuple, another
    // namespace).
    let mut a = Client::start(
        &ns("cli0"),
        dir.path(),
        "client_a",
        listen,
        &steps(&["tls=1.2", &bind, "reneg=2", "wait", "reneg=1"]),
    )
    .unwrap_or_else(|e| fail(e));
    a.proc
        .wait_for("A's 2 renegotiations", CLIENT_WAIT, |out, _| {
            tests::attack::step_count(out, "RENEG") >= 2
        })
        .unwrap_or_else(|e| fail(e));
    std::thread::sleep(Duration::from_secs(1));
    b.proc.write_line("go").unwrap_or_else(|e| fail(e));
    let b_out = b.finish(CLIENT_WAIT);
    a.proc.write_line("go").unwrap_or_else(|e| fail(e));
    let a_out = a.finish(CLIENT_WAIT);
    let a_hellos = msg_count(&srv_a.proc.stdout(), "<<<", "ClientHello");
    let b_hellos = msg_count(&srv_b.proc.stdout(), "<<<", "ClientHello");
    let entries = entries_for(&agent, Some(SocketAddr::from((hosts::TWIN_CLIENT, 40001))))
        .unwrap_or_else(|e| fail(e));
    let summary = format!(
        "A: {} ok, server A ClientHellos {a_hellos}; B: {} ok, {}, server B ClientHellos \
         {b_hellos}; hsmon entries for port 40001: {}",
        ok_count(&a_out, "RENEG"),
        ok_count(&b_out, "RENEG"),
        b_out
            .lines()
            .find(|l| l.starts_with("CLOSED"))
            .unwrap_or("-"),
        entries.len()
    );
    eprintln!("{summary}");
    assert_eq!(ok_count(&a_out, "RENEG"), 3, "A kept working: {summary}");
    assert_eq!(a_hellos, 4, "{summary}");
    assert_eq!(ok_count(&b_out, "RENEG"), CAP, "{summary}");
    assert_eq!(b_hellos, 1 + CAP, "{summary}");
    assert!(
        b_out.contains("CLOSED reset") || b_out.contains("CLOSED eof"),
        "B's connection was not ended: {summary}"
    );
    if mode == Hooks::Socket {
        // The reset found B's socket in B's namespace, not A's (same
        // 4-tuple): A had closed by then, so a wrong namespace would have
        // found nothing (`already_closed`).
        let b_addr = SocketAddr::from((hosts::TWIN_CLIENT, 40001));
        let ds = decision_counts_for(&agent, Some(b_addr)).unwrap_or_else(|e| fail(e));
        assert_eq!(
            ds.get("reneg_cap:reset"),
            Some(&1),
            "decisions {ds:?}: {summary}"
        );
    }
    assert_eq!(entries.len(), 2, "{summary}");
    if mode == Hooks::Socket {
        assert_ne!(
            entries[0].netns_cookie, entries[1].netns_cookie,
            "two namespaces, two netns cookies: {summary}"
        );
    }
}

/// A Rig (veth pair, agent on the server's veth) with the default cap.
fn rig(name: &str, extra: &[&str]) -> Rig {
    rig_with(name, extra, Hooks::Tc)
}

/// [`rig`] with the agent counting on `mode`.
fn rig_with(name: &str, extra: &[&str], mode: Hooks) -> Rig {
    let mode_args = mode.args();
    let mut args = vec!["--reneg-cap", "3"];
    args.extend_from_slice(extra);
    args.extend(mode_args.iter().map(String::as_str));
    Rig::start(name, &args).unwrap_or_else(|e| fail(e))
}

fn rig_peers(r: &Rig) -> Peers<'_> {
    rig_peers_with(r, Hooks::Tc)
}

/// The rig's peers for an agent counting on `mode` (the agent runs in the
/// server's namespace: its reset reaches the server's socket).
fn rig_peers_with(r: &Rig, mode: Hooks) -> Peers<'_> {
    let listen = r.server_addr(mode.port());
    Peers {
        client_ns: &r.net.client_ns,
        server_ns: &r.net.server_ns,
        listen,
        connect: listen,
        after_listen: r.server_addr(mode.after_port()),
        after_connect: r.server_addr(mode.after_port()),
        dir: r.dir.path(),
        cert: &r.cert,
        agent: &r.agent,
        hooks: mode,
        reset_reaches: true,
    }
}

fn rig_attack(name: &str, extra: &[&str], attack: &[&str]) {
    rig_attack_with(name, extra, attack, Hooks::Tc);
}

/// [`rig_attack`] with the agent counting on `mode`; returns the rig (its
/// agent still running) for further checks.
fn rig_attack_with(name: &str, extra: &[&str], attack: &[&str], mode: Hooks) -> Rig {
    let r = rig_with(name, extra, mode);
    let p = rig_peers_with(&r, mode);
    let run = cap_run(&p, attack, None, || Ok(())).unwrap_or_else(|e| fail(e));
    if let Err(e) = run.check() {
        fail(e.context(r.agent.logs(40)));
    }
    r
}

#[test]
fn burst_of_3000_tiny_records_keeps_the_cap() {
    require_root!();
    rig_attack("hosts-burst", &[], &["burst=3000"]);
}

#[test]
#[ignore = "issue 11: attacker unsynced (reneg_c 0), 6 of 6 honoured"]
fn out_of_order_segment_keeps_the_cap() {
    require_root!();
    rig_attack("hosts-ooo", &[], &["ooo"]);
}

/// A segment TCP discards (wrong checksum) at the next sequence number,
/// carrying the header of a 16 KiB application-data record: a hook that
/// parses it before TCP's checksum check takes the real renegotiations that
/// follow at the same sequence numbers for retransmitted bytes of that
/// record.
#[test]
#[ignore = "issue 11: silent bypass: the attacker's 6 of 6 renegotiations honoured, its entry reneg_c 0, unsynced false (TC parses the 100 bytes TCP discards)"]
fn bad_checksum_segment_keeps_the_cap() {
    require_root!();
    rig_attack("hosts-badsum", &[], &["badsum"]);
}

/// The unprivileged ghost: a user without privileges creates its own user
/// and network namespace (`unshare -rn`), puts the real connection's
/// addresses on its loopback and opens and closes a TCP connection with the
/// same 4-tuple. The real connection (1 renegotiation before, 6 tries
/// after) must keep its cap.
#[test]
#[ignore = "issue 11: the ghost's close closes the real entry (reneg_c 1): 7 of 7 honoured"]
fn ghost_close_in_an_unprivileged_namespace_keeps_the_cap() {
    require_root!();
    ghost_close("hosts-ghost", Hooks::Tc);
}

/// The ghost-close check with the agent counting on `mode`.
fn ghost_close(name: &str, mode: Hooks) {
    let r = rig_with(name, &[], mode);
    let p = rig_peers_with(&r, mode);
    let client = r.net.client_v4;
    let server = r.server_addr(mode.port());
    let dir = r.dir.path().to_path_buf();
    let ghost = move || -> Result<()> {
        let script = dir.join("ghost.py");
        std::fs::write(&script, GHOST).context("writing the ghost script")?;
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        let mut c = std::process::Command::new("setpriv");
        c.args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "unshare",
            "-rn",
            "sh",
        ])
        .arg("-c")
        .arg(format!(
            "ip link set lo up && ip addr add {client}/32 dev lo && ip addr add {}/32 dev lo && exec /usr/bin/python3 {} {client} 40002 {} {}",
            server.ip(),
            script.display(),
            server.ip(),
            server.port()
        ));
        let out = tests::cmd::run_ok(&mut c, Duration::from_secs(20))?;
        ensure!(out.contains("GHOST closed"), "the ghost printed {out:?}");
        std::thread::sleep(Duration::from_secs(1));
        Ok(())
    };
    // The attacker binds port 40002 so the ghost can copy its 4-tuple.
    let run = cap_run(
        &p,
        &["bind=0.0.0.0:40002", "reneg=1", "wait"],
        Some("RENEG 1"),
        ghost,
    );
    // The attacker's first renegotiation counts towards the cap: 1 + 2.
    let run = run.unwrap_or_else(|e| fail(e));
    if let Err(e) = run.check() {
        fail(e.context(r.agent.logs(40)));
    }
    if mode == Hooks::Socket {
        // The ghost's server socket has its own entry, in its own namespace,
        // closed; the real one is another entry.
        let all: Vec<HsmonConn> = r
            .agent
            .conns()
            .unwrap_or_else(|e| fail(e))
            .into_iter()
            .filter(|c| c.client_addr().is_ok_and(|a| a.port() == 40002))
            .collect();
        eprintln!("entries for client port 40002: {all:?}");
        let mut netns: Vec<_> = all.iter().map(|c| c.netns_cookie).collect();
        netns.sort();
        netns.dedup();
        assert_eq!(all.len(), 2, "the real and the ghost's entry: {all:?}");
        assert_eq!(netns.len(), 2, "two namespaces: {all:?}");
    }
}

/// The ghost: connect from `client:cport` to `server:sport` on this
/// namespace's loopback, send the start of a ClientHello (so socket hooks
/// give the ghost's server socket an entry of its own), then close both
/// ends.
const GHOST: &str = r#"import socket, sys
c, cp, s, sp = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind((s, sp)); l.listen(1)
k = socket.socket(); k.bind((c, cp)); k.connect((s, sp))
a, _ = l.accept()
k.sendall(b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00"); a.recv(100)
k.close(); a.close(); l.close()
print("GHOST closed", flush=True)
"#;

fn eviction_flood(name: &str, map_size: Option<u32>, packets: usize) {
    eviction_flood_with(name, map_size, packets, Hooks::Tc)
}

/// [`eviction_flood`] with the agent counting on `mode`.
fn eviction_flood_with(name: &str, map_size: Option<u32>, packets: usize, mode: Hooks) {
    let size = map_size.map(|s| s.to_string());
    let extra: Vec<&str> = match &size {
        Some(s) => vec!["--flow-map-size", s.as_str()],
        None => Vec::new(),
    };
    let r = rig_with(name, &extra, mode);
    let p = rig_peers_with(&r, mode);
    let client_ns = r.net.client_ns.clone();
    let dir = r.dir.path().to_path_buf();
    let target = r.server_addr(mode.port());
    let flood = move || -> Result<()> {
        let t = Instant::now();
        let n = attack::flood(&client_ns, &dir, target, packets)?;
        eprintln!("flooded {n} forged packets in {:?}", t.elapsed());
        ensure!(n == packets, "sent {n} of {packets}");
        std::thread::sleep(Duration::from_secs(2));
        Ok(())
    };
    let run = cap_run(&p, &["reneg=1", "wait"], Some("RENEG 1"), flood).unwrap_or_else(|e| fail(e));
    // Only real sockets get state: no entry for a forged source.
    let forged = r
        .agent
        .conns()
        .unwrap_or_else(|e| fail(e))
        .iter()
        .filter(|c| c.client_addr().is_ok_and(|a| is_forged(a.ip())))
        .count();
    eprintln!("entries for forged sources: {forged}");
    if let Err(e) = run.check() {
        fail(e.context(r.agent.logs(40)));
    }
    assert_eq!(forged, 0, "hsmon tracks connections that never existed");
}

/// Whether `ip` is one of the flood's forged sources: 10.128.0.0 plus the
/// packet's number, i.e. 10.128.0.0/14 for up to 262,143 packets. (Not
/// /9: the rig's own addresses, 10.200.0.0/24, are in it.)
fn is_forged(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.octets()[0] == 10 && (128..132).contains(&v4.octets()[1]))
}

#[test]
#[ignore = "issue 11: map 1, 1,000 forged packets: attacker entry evicted, 7 of 7 honoured"]
fn eviction_flood_at_the_smallest_map_keeps_the_cap() {
    require_root!();
    eviction_flood("hosts-flood-small", Some(1), 1000);
}

#[test]
#[ignore = "issue 11: 80,000 forged packets: 75,408 forged entries, 65,408 handshake_timeout decisions, benign entry pushed out of conns; attacker evicted (7 of 7 honoured) in 1 of 3 runs"]
fn eviction_flood_at_the_default_map_keeps_the_cap() {
    require_root!();
    eviction_flood("hosts-flood-default", None, 80_000);
}

// Socket hooks (`hsmon run --hooks socket`): the same checks with the
// `cgroup_skb` programs counting per server socket (issue 11 items 1, 3, 4).

/// The basic path: the cap check on the veth pair (benign connections'
/// exact handshake and renegotiation counts, the attacker's 4th
/// renegotiation dropped at cgroup ingress and the connection reset).
#[test]
fn socket_hooks_count_and_cap_on_the_veth_pair() {
    require_root!();
    rig_attack_with("hosts-sock-cap", &[], &[], Hooks::Socket);
}

/// The same cap check over the veth pair's IPv6 addresses: the socket
/// hooks read an IPv6 socket's addresses (`src_ip6`/`dst_ip6`), count its
/// handshakes and renegotiations exactly, drop the 4th renegotiation and
/// reset the socket by its cookie.
#[test]
fn socket_hooks_count_and_cap_over_ipv6() {
    require_root!();
    let r = rig_with("hosts-sock-cap-v6", &[], Hooks::Socket);
    let mut p = rig_peers_with(&r, Hooks::Socket);
    p.listen = r.net.server_addr(true, Hooks::Socket.port());
    p.connect = p.listen;
    p.after_listen = r.net.server_addr(true, Hooks::Socket.after_port());
    p.after_connect = p.after_listen;
    let run = cap_run(&p, &[], None, || Ok(())).unwrap_or_else(|e| fail(e));
    if let Err(e) = run.check() {
        fail(e.context(r.agent.logs(40)));
    }
}

/// Plain handshakes, no renegotiation: one entry per connection with one
/// handshake each, closed with its socket.
#[test]
fn socket_hooks_count_plain_handshakes() {
    require_root!();
    let r = rig_with("hosts-sock-plain", &[], Hooks::Socket);
    let p = rig_peers_with(&r, Hooks::Socket);
    let _srv = reneg_server(&p, p.listen, "s_server").unwrap_or_else(|e| fail(e));
    let mut addrs = Vec::new();
    for i in 0..3 {
        let mut c = Client::start(
            p.client_ns,
            p.dir,
            &format!("plain{i}"),
            p.connect,
            &steps(&["tls=1.2"]),
        )
        .unwrap_or_else(|e| fail(e));
        let _ = c.finish(CLIENT_WAIT);
        addrs.push(c.local_addr().expect("the client printed its address"));
    }
    let mut cookies = Vec::new();
    for &a in &addrs {
        let e = entries_for(&r.agent, Some(a)).unwrap_or_else(|e| fail(e));
        eprintln!("{a}: {e:?}");
        assert_eq!(e.len(), 1, "entries for {a}: {e:?}");
        assert_eq!(
            (
                e[0].handshakes,
                e[0].client_hellos,
                e[0].renegotiations_client
            ),
            (1, 1, 0),
            "counts for {a}: {e:?}"
        );
        assert!(!e[0].unsynced, "{e:?}");
        assert!(
            e[0].socket_cookie.is_some() && e[0].netns_cookie.is_some(),
            "{e:?}"
        );
        cookies.push(e[0].socket_cookie);
    }
    cookies.sort();
    cookies.dedup();
    assert_eq!(cookies.len(), 3, "one socket cookie per connection");
    let closed = r
        .wait_conns("3 closed entries", Duration::from_secs(10), |c| {
            // Only these clients': the cgroup programs see every socket of
            // the host, other tests' connections on the port included.
            c.iter()
                .filter(|c| {
                    c.state == "closed" && c.client_addr().is_ok_and(|a| addrs.contains(&a))
                })
                .count()
                == 3
        })
        .unwrap_or_else(|e| fail(e));
    eprintln!("{} entries", closed.len());
}

/// (a) The eviction flood cannot get around the cap: forged packets belong
/// to no socket and create nothing; enforcement reads per-socket state.
#[test]
fn socket_hooks_eviction_flood_at_the_smallest_map_keeps_the_cap() {
    require_root!();
    eviction_flood_with("hosts-sock-flood-small", Some(1), 1000, Hooks::Socket);
}

/// (a) At the default map size, 80,000 forged packets.
#[test]
fn socket_hooks_eviction_flood_at_the_default_map_keeps_the_cap() {
    require_root!();
    eviction_flood_with("hosts-sock-flood-default", None, 80_000, Hooks::Socket);
}

/// (b) Two namespaces, the same 4-tuple: two entries, the cap holds in each.
#[test]
fn socket_hooks_same_four_tuple_on_two_bridges_keeps_separate_caps() {
    require_root!();
    twins_cap("hosts-sock-twins", Hooks::Socket);
}

/// (c) A published port through nft DNAT: one entry (the server socket's
/// post-NAT view), counted once, the cap holds.
#[test]
fn socket_hooks_published_port_through_dnat_counts_once_and_cap_holds() {
    require_root!();
    dnat_cap("hosts-sock-dnat", Hooks::Socket);
}

/// (d) The unprivileged ghost's close touches only its own socket's entry.
#[test]
fn socket_hooks_ghost_close_in_an_unprivileged_namespace_keeps_the_cap() {
    require_root!();
    ghost_close("hosts-sock-ghost", Hooks::Socket);
}

/// One segment of 3,000 tiny records before the renegotiations.
#[test]
fn socket_hooks_burst_of_3000_tiny_records_keeps_the_cap() {
    require_root!();
    rig_attack_with("hosts-sock-burst", &[], &["burst=3000"], Hooks::Socket);
}

/// One out-of-order segment (`TCP_REPAIR`): the cgroup hook runs before
/// TCP reassembly; it drops a client segment that starts beyond the next
/// expected byte (`monitor_common::rewind`), so the stray byte never
/// reaches TCP and the tracker stays in sync.
#[test]
fn socket_hooks_out_of_order_segment_keeps_the_cap() {
    require_root!();
    let r = rig_attack_with("hosts-sock-ooo", &[], &["ooo"], Hooks::Socket);
    let dropped = kernel_stat(&r.agent, "sock_drop_ahead");
    assert!(
        dropped >= 1,
        "the stray segment was not dropped ahead: {dropped}"
    );
}

/// The wrong-checksum segment of [`bad_checksum_segment_keeps_the_cap`]
/// with socket hooks: 100 bytes, so the kernel leaves the checksum check to
/// TCP, after the cgroup hook. The hook parses it; when the real segment
/// with the same sequence number arrives while `rcv_nxt` shows the 100
/// bytes were never accepted, the tracker goes back to its confirmed copy
/// (`monitor_common::rewind`) and parses the real renegotiation.
#[test]
fn socket_hooks_bad_checksum_segment_keeps_the_cap() {
    require_root!();
    let r = rig_attack_with("hosts-sock-badsum", &[], &["badsum"], Hooks::Socket);
    let rewinds = kernel_stat(&r.agent, "sock_rewinds");
    assert!(rewinds >= 1, "no rewind: {rewinds}");
}

/// A `STATS` counter from the agent's `/v1/stats` (0 when absent).
fn kernel_stat(agent: &Agent, name: &str) -> u64 {
    let v = agent.stats_value().unwrap_or_else(|e| fail(e));
    eprintln!("kernel {name} = {}", v["kernel"][name]);
    v["kernel"][name].as_u64().unwrap_or(0)
}

/// Impairs the client's side of the rig's veth pair for client segments to
/// `port` (this kernel has no `sch_netem`): an HTB root whose default class
/// is fast, and a u32 filter sending every TCP packet to `port` whose IP
/// ID ends in binary 00 (every 4th packet of a connection: ~25%) to a slow
/// class (2 Mbit/s, a 1-packet FIFO). Those packets leave after the ones
/// sent behind them (reordering) or are dropped when the FIFO is full
/// (loss). TSO/GSO is limited to one segment per packet so the impairment
/// applies per segment. Everything lives in the client namespace and goes
/// with it.
fn impair_client_link(net: &tests::netns::NetPair, port: u16) -> Result<()> {
    let ns = net.client_ns.as_str();
    let dev = net.client_if.as_str();
    let port = port.to_string();
    tests::netns::ip(&["-n", ns, "link", "set", dev, "gso_max_segs", "1"])?;
    let cmds: [&[&str]; 5] = [
        &[
            "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "10",
        ],
        &[
            "class", "add", "dev", dev, "parent", "1:", "classid", "1:10", "htb", "rate", "10gbit",
        ],
        &[
            "class", "add", "dev", dev, "parent", "1:", "classid", "1:20", "htb", "rate", "2mbit",
            "ceil", "2mbit",
        ],
        &[
            "qdisc", "add", "dev", dev, "parent", "1:20", "handle", "20:", "pfifo", "limit", "1",
        ],
        &[
            "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "u32", "match", "ip",
            "protocol", "6", "0xff", "match", "ip", "dport", &port, "0xffff", "match", "u16", "0",
            "0x3", "at", "4", "flowid", "1:20",
        ],
    ];
    for args in cmds {
        let mut c = tests::netns::ns_cmd(ns, "tc");
        c.args(args);
        tests::cmd::run_ok(&mut c, Duration::from_secs(10))?;
    }
    Ok(())
}

/// The slow class's (packets sent, packets dropped) from `tc -s`.
fn impaired_counts(net: &tests::netns::NetPair) -> Result<(u64, u64)> {
    let mut c = tests::netns::ns_cmd(&net.client_ns, "tc");
    c.args(["-s", "qdisc", "show", "dev", &net.client_if]);
    let out = tests::cmd::run_ok(&mut c, Duration::from_secs(10))?;
    let block = out
        .split("qdisc ")
        .find(|b| b.starts_with("pfifo 20:"))
        .with_context(|| format!("no slow FIFO in {out}"))?;
    let num = |after: &str| -> Option<u64> {
        let rest = block.split(after).nth(1)?;
        rest.split(|ch: char| !ch.is_ascii_digit())
            .find(|t| !t.is_empty())?
            .parse()
            .ok()
    };
    Ok((
        num("bytes ").context("sent packets")?,
        num("dropped ").context("dropped packets")?,
    ))
}

const UPLOAD: usize = 27 * 1024 * 1024;

/// A 27 MB TLS 1.2 upload over loopback with the socket hooks (client and
/// server in the server's namespace, connecting to its own address), then
/// one renegotiation: hsmon's entry stays in sync with exact counts, and
/// the server read every byte. On loopback a receive runs on the sending
/// CPU, so two CPUs can deliver segments of one socket at once (out of
/// order, or at the same time): before the drop ahead and the one-run-at-a-
/// time claim at socket ingress this lost sync in 3 of 19 runs.
#[test]
fn socket_hooks_bulk_upload_over_loopback_stays_in_sync() {
    require_root!();
    let r = rig_with("hosts-sock-upload", &[], Hooks::Socket);
    let addr = r.server_addr(SOCK_PORT);
    let srv = BulkServer::start_in(
        &r.net.server_ns,
        r.dir.path(),
        &r.cert,
        addr,
        TlsVersion::Tls12,
        0,
        "bulk_server",
    )
    .unwrap_or_else(|e| fail(e));
    let t = Instant::now();
    let mut c = Client::start(
        &r.net.server_ns,
        r.dir.path(),
        "uploader",
        addr,
        &steps(&[
            "tls=1.2",
            "timeout=20",
            &format!("upload={UPLOAD}"),
            "reneg=1",
        ]),
    )
    .unwrap_or_else(|e| fail(e));
    let out = c.finish(Duration::from_secs(120));
    let took = t.elapsed();
    let entries = entries_for(&r.agent, c.local_addr()).unwrap_or_else(|e| fail(e));
    // The server logs RECEIVED once the client has gone.
    let _ = tests::cmd::poll(Duration::from_secs(10), Duration::from_millis(100), || {
        (srv.received() > 0).then_some(())
    });
    let got = srv.received();
    let hellos = srv.client_hellos();
    let mut stats = Vec::new();
    for name in [
        "sock_drop_ahead",
        "sock_busy_drops",
        "sock_rewinds",
        "sock_unverified_drops",
        "sock_unverified",
    ] {
        stats.push((name, kernel_stat(&r.agent, name)));
    }
    eprintln!(
        "upload took {took:?}; server read {got} bytes, {hellos} ClientHellos; {stats:?}\n{entries:?}\n{out}"
    );
    assert!(out.contains(&format!("UPLOADED {UPLOAD}")), "{out}");
    assert_eq!(ok_count(&out, "RENEG"), 1, "{out}");
    assert_eq!(got, UPLOAD as u64, "the server's bytes");
    assert_eq!(hellos, 2, "the server's ClientHellos");
    assert_eq!(entries.len(), 1, "{entries:?}");
    let e = &entries[0];
    assert!(!e.unsynced, "{entries:?}");
    assert_eq!(
        (e.client_hellos, e.handshakes, e.renegotiations_client),
        (2, 2, 1),
        "{entries:?}"
    );
}

/// The cost side of dropping segments ahead at the socket hook: a
/// legitimate client whose segments are reordered and lost (see
/// [`impair_client_link`]) sends 3,000 one-byte records (about 66 KB in
/// many segments) and renegotiates twice. It completes, with no reset, no
/// ban, no decision, and hsmon's counts equal the server's own
/// (ClientHellos) and the client's; the drops ahead happened (the test
/// exercised them) and the time it took is printed next to the same client
/// on the clean link.
#[test]
fn socket_hooks_reordered_and_lost_client_segments_cost_only_time() {
    require_root!();
    let r = rig_with("hosts-sock-impaired", &[], Hooks::Socket);
    let p = rig_peers_with(&r, Hooks::Socket);
    let srv = reneg_server(&p, p.listen, "s_server").unwrap_or_else(|e| fail(e));
    let run = |name: &str| -> (String, Option<SocketAddr>, Duration) {
        let t = Instant::now();
        let mut c = Client::start(
            p.client_ns,
            p.dir,
            name,
            p.connect,
            &steps(&["tls=1.2", "timeout=20", "burst=3000", "reneg=2"]),
        )
        .unwrap_or_else(|e| fail(e));
        let out = c.finish(CLIENT_WAIT);
        (out, c.local_addr(), t.elapsed())
    };
    let (clean_out, clean_addr, clean_time) = run("clean");
    impair_client_link(&r.net, SOCK_PORT).unwrap_or_else(|e| fail(e));
    let (out, addr, time) = run("impaired");
    let (slow_sent, slow_dropped) = impaired_counts(&r.net).unwrap_or_else(|e| fail(e));
    let hellos = msg_count(&srv.proc.stdout(), "<<<", "ClientHello");
    let entries = entries_for(&r.agent, addr).unwrap_or_else(|e| fail(e));
    let clean_entries = entries_for(&r.agent, clean_addr).unwrap_or_else(|e| fail(e));
    let ahead = kernel_stat(&r.agent, "sock_drop_ahead");
    for other in ["sock_rewinds", "sock_unverified_drops", "sock_unverified"] {
        kernel_stat(&r.agent, other);
    }
    let decisions = decision_counts(&r.agent).unwrap_or_else(|e| fail(e));
    let bans = r.agent.bans().unwrap_or_else(|e| fail(e)).len();
    eprintln!(
        "clean {clean_time:?}, impaired {time:?}; slow class sent {slow_sent} dropped {slow_dropped}; \
         drops ahead {ahead}; server ClientHellos {hellos}; decisions {decisions:?}; bans {bans}\n\
         clean {clean_entries:?}\nimpaired {entries:?}\n{out}"
    );
    for o in [&clean_out, &out] {
        assert!(o.contains("BURST 3000") && o.contains("DONE"), "{o}");
        assert_eq!(ok_count(o, "RENEG"), 2, "{o}");
    }
    assert!(
        slow_sent > 0 && slow_dropped > 0,
        "the link was not impaired"
    );
    assert!(ahead > 0, "no segment was dropped ahead");
    assert_eq!(hellos, 2 * 3, "the server's ClientHellos");
    assert!(decisions.is_empty(), "{decisions:?}");
    assert_eq!(bans, 0);
    for e in [&clean_entries, &entries] {
        assert_eq!(e.len(), 1, "{e:?}");
        let c = &e[0];
        assert_eq!(
            (c.client_hellos, c.handshakes, c.renegotiations_client),
            (3, 3, 2),
            "{e:?}"
        );
        assert!(!c.unsynced, "{e:?}");
    }
}

/// The bridge host with a client container: one entry per connection
/// (however many hooks it crosses), the cap holds.
#[test]
fn socket_hooks_bridge_counts_once_and_cap_holds() {
    require_root!();
    bridge_cap_with("hosts-sock-bridge", &[], Some("cli"), Hooks::Socket);
}

/// `systemctl restart hsmon` with an attacker connected, socket hooks, the
/// server in a container: the attacker renegotiates twice under agent 1,
/// once while no agent runs (agent 1 stopped with SIGTERM, its pinned
/// links keep the programs counting), then 3 times under agent 2 (started
/// on the same pins, it swaps its programs into the pinned links): exactly
/// 3 honoured in all, the server reads 1 + 3 ClientHellos, and agent 2
/// resets the connection in the server's namespace (decision `reset`, the
/// client sees the reset). Agent 2 took over the 3 socket-hook links.
#[test]
fn socket_hooks_cap_holds_across_an_agent_restart() {
    require_root!();
    let dir = WorkDir::new("hosts-sock-restart").unwrap_or_else(|e| fail(e));
    let host = Host::docker_like().unwrap_or_else(|e| fail(e));
    let cert = TestCert::generate(dir.path()).unwrap_or_else(|e| fail(e));
    let mode = Hooks::Socket;
    let args = mode.args();
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut first = host
        .agent(dir.path(), &arg_refs)
        .unwrap_or_else(|e| fail(e));
    let state = first.state();
    let srv = host.container("srv").unwrap_or_else(|e| fail(e)).clone();
    let cli = host.container("cli").unwrap_or_else(|e| fail(e)).clone();
    let listen = SocketAddr::from((hosts::SERVER_IP, mode.port()));
    let server = SServer::start_in(
        &srv.ns,
        dir.path(),
        &cert,
        &SServerOpts::new(listen)
            .version(TlsVersion::Tls12)
            .client_renegotiation(true),
        "s_server",
    )
    .unwrap_or_else(|e| fail(e));
    let mut attacker = Client::start(
        &cli.ns,
        dir.path(),
        "attacker",
        listen,
        &steps(&[
            "tls=1.2",
            "reneg=2",
            "wait",
            "reneg=1",
            "wait",
            "reneg=3",
            "awaitclose=10",
        ]),
    )
    .unwrap_or_else(|e| fail(e));
    let renegs = |n: usize| move |out: &str, _: &str| tests::attack::step_count(out, "RENEG") >= n;
    attacker
        .proc
        .wait_for("2 renegotiations", CLIENT_WAIT, renegs(2))
        .unwrap_or_else(|e| fail(e));
    first.stop();
    assert!(!first.is_running(), "agent 1 stopped on SIGTERM");
    let pins = state.pins();
    for want in ["links/sock-ingress", "links/sock-egress", "links/sock-ops"] {
        assert!(
            pins.iter().any(|p| p == want),
            "no pin {want} after a clean stop: {pins:?}"
        );
    }
    attacker.proc.write_line("go").unwrap_or_else(|e| fail(e));
    attacker
        .proc
        .wait_for("3 renegotiations", CLIENT_WAIT, renegs(3))
        .unwrap_or_else(|e| fail(e));
    let second = Agent::start_in(
        tests::hsmon::agent_cmd_in(&host.ns, &tests::hsmon::hsmon_bin()),
        dir.path(),
        &args,
        state.clone(),
    )
    .unwrap_or_else(|e| fail(e));
    // One cgroup link per socket hook, the previous agent's taken over.
    let links = state
        .flows_map_id()
        .and_then(tests::hsmon::kernel_links)
        .unwrap_or_else(|e| fail(e));
    let status: serde_json::Value = serde_json::from_str(
        &second
            .cli(&["status", "--json"])
            .unwrap_or_else(|e| fail(e)),
    )
    .unwrap_or_else(|e| fail(anyhow::Error::new(e)));
    attacker.proc.write_line("go").unwrap_or_else(|e| fail(e));
    let out = attacker.finish(CLIENT_WAIT);
    let hellos = msg_count(&server.proc.stdout(), "<<<", "ClientHello");
    let attack_addr = attacker
        .local_addr()
        .expect("the attacker printed its address");
    let ds = decision_counts_for(&second, Some(attack_addr)).unwrap_or_else(|e| fail(e));
    let end = out
        .lines()
        .find_map(|l| l.strip_prefix("CLOSED "))
        .unwrap_or("no CLOSED line")
        .to_owned();
    let summary = format!(
        "honoured {} of 6, end {end}, server ClientHellos {hellos}, agent 2 decisions {ds:?}, \
         links taken over {}, kernel links of its maps {links:?}",
        ok_count(&out, "RENEG"),
        status["persistence"]["links_taken_over"]
    );
    eprintln!("restart: {summary}");
    let check = || -> Result<()> {
        ensure!(ok_count(&out, "RENEG") == CAP, "honoured: {summary}");
        ensure!(hellos == 1 + CAP, "server ClientHellos: {summary}");
        ensure!(end == "reset" || end == "eof", "not ended: {summary}");
        ensure!(ds.get("reneg_cap:reset") == Some(&1), "decision: {summary}");
        ensure!(links.cgroup == 3, "cgroup links: {summary}");
        // 3 socket-hook links plus the TC and tracepoint links.
        ensure!(
            status["persistence"]["links_taken_over"].as_u64() >= Some(3),
            "links taken over: {summary}"
        );
        Ok(())
    };
    if let Err(e) = check() {
        fail(e.context(second.logs(60)));
    }
}

/// The agent with the embedded default policy (cap 3, KeyUpdate rule,
/// handshake timeout) on the veth pair. (The KeyUpdate flood and the other
/// small-message workloads are in `keyupdate_flood.rs`.)
fn default_rig(name: &str) -> Rig {
    rig(name, &[])
}

/// A TLS 1.3 server answering 5-byte writes (`+OK\r\n`, a 22-byte record,
/// the size of a KeyUpdate) 20 times a second for 2 s, like Redis: no
/// reset, every reply arrives, no KeyUpdate decision.
#[test]
fn redis_like_small_replies_are_not_reset() {
    require_root!();
    let r = default_rig("hosts-redis");
    let addr = r.server_addr(PORT);
    let _srv = PyTlsServer::start(
        &r.net,
        r.dir.path(),
        &r.cert,
        addr,
        Some(TlsVersion::Tls13),
        "pyserver",
    )
    .unwrap_or_else(|e| fail(e));
    let mut c = Client::start(
        &r.net.client_ns,
        r.dir.path(),
        "redis_client",
        addr,
        &steps(&["tls=1.3", "ping=40,50,+OK\\r\\n"]),
    )
    .unwrap_or_else(|e| fail(e));
    let out = c.finish(CLIENT_WAIT);
    let ds = decision_counts(&r.agent).unwrap_or_else(|e| fail(e));
    eprintln!("replies {} of 40; decisions {ds:?}", ok_count(&out, "PING"));
    assert_eq!(ok_count(&out, "PING"), 40, "replies\n{out}");
    assert!(ds.is_empty(), "decisions for a benign workload: {ds:?}");
}

/// An established TLS 1.3 connection (one echo), 12 s without an agent,
/// then `start_agent` (given the namespaces and the directory, after the
/// connection is up), then 30 echoes over 15 s: all must arrive and the
/// agent must make no decision (no false `handshake_timeout`).
fn adopted_connection_keeps_working(
    name: &str,
    before: impl FnOnce(&tests::netns::NetPair, &Path) -> Result<()>,
    start_agent: impl FnOnce(&tests::netns::NetPair, &Path) -> Result<Agent>,
) {
    let dir = WorkDir::new(name).unwrap_or_else(|e| fail(e));
    let net = tests::netns::NetPair::create().unwrap_or_else(|e| fail(e));
    let cert = TestCert::generate(dir.path()).unwrap_or_else(|e| fail(e));
    let addr = net.server_addr(false, PORT);
    before(&net, dir.path()).unwrap_or_else(|e| fail(e));
    let _srv = PyTlsServer::start(
        &net,
        dir.path(),
        &cert,
        addr,
        Some(TlsVersion::Tls13),
        "pyserver",
    )
    .unwrap_or_else(|e| fail(e));
    let mut c = Client::start(
        &net.client_ns,
        dir.path(),
        "early",
        addr,
        &steps(&[
            "tls=1.3",
            "ping=1,0,hello",
            "wait",
            "ping=30,500,still-here",
        ]),
    )
    .unwrap_or_else(|e| fail(e));
    c.proc
        .wait_for("PING 1", CLIENT_WAIT, |o, _| o.contains("PING 1 ok"))
        .unwrap_or_else(|e| fail(e));
    std::thread::sleep(Duration::from_secs(12));
    let agent = start_agent(&net, dir.path()).unwrap_or_else(|e| fail(e));
    c.proc.write_line("go").unwrap_or_else(|e| fail(e));
    let out = c.finish(CLIENT_WAIT);
    let ds = decision_counts(&agent).unwrap_or_else(|e| fail(e));
    eprintln!("echoes {} of 31; decisions {ds:?}", ok_count(&out, "PING"));
    assert_eq!(ok_count(&out, "PING"), 31, "{out}");
    assert!(ds.is_empty(), "{ds:?}");
}

fn cap_args() -> Vec<String> {
    vec!["--reneg-cap".to_owned(), "3".to_owned()]
}

/// A connection opened while no agent runs; the agent starts 12 s later
/// and must adopt it without a false `handshake_timeout`: 30 echoes over
/// the next 15 s all arrive, no decision.
#[test]
fn connection_predating_the_agent_is_adopted() {
    require_root!();
    adopted_connection_keeps_working(
        "hosts-adopt",
        |_, _| Ok(()),
        |net, dir| Agent::start_with_args(net, dir, &cap_args()),
    );
}

/// The restart variant: an agent runs and stops (its programs and pins
/// stay, as by default), a connection is opened while it is stopped, and a
/// new agent starts on the same pins 12 s later: no false
/// `handshake_timeout`, 30 echoes over the next 15 s all arrive.
#[test]
fn connection_opened_while_the_agent_was_stopped_is_adopted_on_restart() {
    require_root!();
    let state = std::cell::RefCell::new(None);
    adopted_connection_keeps_working(
        "hosts-adopt-restart",
        |net, dir| {
            let mut first = Agent::start_with_args(net, dir, &cap_args())?;
            *state.borrow_mut() = Some(first.state());
            first.stop();
            Ok(())
        },
        |net, dir| {
            let st = state
                .borrow_mut()
                .take()
                .context("no state from the first agent")?;
            Agent::start_with_state(net, dir, &cap_args(), st)
        },
    );
}

const DOWNLOAD: usize = 20 * 1024 * 1024;

/// The bulk TLS source ([`BulkServer`]) serving `bytes` to every client.
fn download_server(r: &Rig, version: TlsVersion, bytes: usize) -> Result<BulkServer> {
    let addr = r.server_addr(PORT);
    BulkServer::start_in(
        &r.net.server_ns,
        r.dir.path(),
        &r.cert,
        addr,
        version,
        bytes,
        "bulk_server",
    )
}

fn download(name: &str, version: TlsVersion, tls: &str) {
    let r = default_rig(name);
    let addr = r.server_addr(PORT);
    let srv = download_server(&r, version, DOWNLOAD).unwrap_or_else(|e| fail(e));
    let mut c = Client::start(
        &r.net.client_ns,
        r.dir.path(),
        "downloader",
        addr,
        &steps(&[tls, &format!("download={DOWNLOAD}"), "hold=1"]),
    )
    .unwrap_or_else(|e| fail(e));
    let out = c.finish(CLIENT_WAIT);
    let client = c.local_addr();
    let port = client.map_or(0, |a| a.port());
    let entries = entries_for(&r.agent, client).unwrap_or_else(|e| fail(e));
    let values = r.agent.conns_values().unwrap_or_else(|e| fail(e));
    let v = values.iter().find(|v| {
        v["client"]
            .as_str()
            .is_some_and(|c| c.ends_with(&format!(":{port}")))
    });
    let hellos = srv.client_hellos();
    eprintln!(
        "{out:?}; server ClientHellos {hellos}; hsmon: {entries:?}; overflows {:?} gaps {:?}",
        v.map(|v| v["overflows"].clone()),
        v.map(|v| v["gaps"].clone())
    );
    assert!(out.contains(&format!("DOWNLOADED {DOWNLOAD}")), "{out}");
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(!entries[0].unsynced, "{entries:?}");
    assert_eq!(entries[0].client_hellos as usize, hellos, "{entries:?}");
    assert_eq!(entries[0].handshakes, 1, "{entries:?}");
}

#[test]
fn tls12_download_of_20_mb_stays_in_sync() {
    require_root!();
    download("hosts-dl12", TlsVersion::Tls12, "tls=1.2");
}

#[test]
fn tls13_download_of_20_mb_stays_in_sync() {
    require_root!();
    download("hosts-dl13", TlsVersion::Tls13, "tls=1.3");
}

/// A 20 MB TLS 1.2 download, then 6 renegotiations: exactly 3 honoured
/// (never fewer: no false reset under the cap), the 4th dropped and the
/// connection reset.
#[test]
fn download_then_six_renegotiations_caps_at_three() {
    require_root!();
    let r = default_rig("hosts-dl-reneg");
    let addr = r.server_addr(PORT);
    let srv = download_server(&r, TlsVersion::Tls12, DOWNLOAD).unwrap_or_else(|e| fail(e));
    let mut c = Client::start(
        &r.net.client_ns,
        r.dir.path(),
        "downloader",
        addr,
        &steps(&[
            "tls=1.2",
            &format!("download={DOWNLOAD}"),
            "reneg=6",
            "awaitclose=10",
        ]),
    )
    .unwrap_or_else(|e| fail(e));
    let out = c.finish(CLIENT_WAIT);
    let hellos = srv.client_hellos();
    let closed = out.lines().find(|l| l.starts_with("CLOSED")).unwrap_or("-");
    eprintln!(
        "honoured {}; server ClientHellos {hellos}; {closed}",
        ok_count(&out, "RENEG")
    );
    assert!(out.contains(&format!("DOWNLOADED {DOWNLOAD}")), "{out}");
    assert_eq!(ok_count(&out, "RENEG"), CAP, "{out}");
    assert_eq!(hellos, 1 + CAP, "the server's ClientHellos");
    assert!(
        closed == "CLOSED reset" || closed == "CLOSED eof",
        "the connection was not ended\n{out}"
    );
}

/// Five short exchanges with a Python `ssl` TLS 1.3 echo server, on three
/// connections: every connection stays in sync.
#[test]
fn python_tls13_short_exchanges_stay_in_sync() {
    require_root!();
    let r = default_rig("hosts-pyssl");
    let addr = r.server_addr(PORT);
    let _srv = PyTlsServer::start(
        &r.net,
        r.dir.path(),
        &r.cert,
        addr,
        Some(TlsVersion::Tls13),
        "pyserver",
    )
    .unwrap_or_else(|e| fail(e));
    let mut report = Vec::new();
    for i in 0..3 {
        let mut c = Client::start(
            &r.net.client_ns,
            r.dir.path(),
            &format!("py_client_{i}"),
            addr,
            &steps(&["tls=1.3", "ping=5,100,hello over tls 1.3"]),
        )
        .unwrap_or_else(|e| fail(e));
        let out = c.finish(CLIENT_WAIT);
        let e = entries_for(&r.agent, c.local_addr()).unwrap_or_else(|e| fail(e));
        report.push((ok_count(&out, "PING"), e));
    }
    let summary: Vec<String> = report
        .iter()
        .map(|(ok, e)| {
            format!(
                "{ok} echoes, {} entries, unsynced {:?}",
                e.len(),
                e.iter().map(|c| c.unsynced).collect::<Vec<_>>()
            )
        })
        .collect();
    eprintln!("{summary:?}");
    for (ok, e) in &report {
        assert_eq!(*ok, 5, "{summary:?}");
        assert_eq!(e.len(), 1, "{summary:?}");
        assert!(!e[0].unsynced && e[0].handshakes == 1, "{summary:?}");
    }
}

/// 20,000 idle clients hold the control socket (two processes of 10,000,
/// each within its own open-file limit): `hsmon status` still answers
/// within 10 s and a cap reset still happens.
#[test]
fn idle_control_socket_clients_do_not_starve_the_agent() {
    require_root!();
    const EACH: usize = 10_000;
    let r = rig("hosts-idle-ctl", &[]);
    let mut idle = Vec::new();
    let mut held = 0;
    for i in 0..2 {
        let (p, n) = attack::IdleClients::start(
            r.dir.path(),
            &format!("idle{i}"),
            &r.agent.socket,
            EACH,
            Duration::from_secs(120),
        )
        .unwrap_or_else(|e| fail(e));
        eprintln!("idle{i}: {}", p.proc.stdout().trim());
        idle.push(p);
        held += n;
    }
    std::thread::sleep(Duration::from_secs(1));
    let t = Instant::now();
    let status = r.agent.cli(&["status", "--json"]);
    eprintln!(
        "{held} idle clients connected; status answered: {} after {:?}",
        status.is_ok(),
        t.elapsed()
    );
    let p = rig_peers(&r);
    let run = cap_run(&p, &[], None, || Ok(()));
    match &run {
        Ok(r) => eprintln!("cap run with the idle clients: {}", r.summary()),
        Err(e) => eprintln!("cap run with the idle clients failed: {e:#}"),
    }
    drop(idle);
    status.unwrap_or_else(|e| fail(e));
    let run = run.unwrap_or_else(|e| fail(e));
    if let Err(e) = run.check() {
        fail(e.context(r.agent.logs(40)));
    }
    assert_eq!(held, 2 * EACH, "idle clients connected");
}

/// The harness itself on the bridge host, without the agent: the server
/// container is reachable from the client container, the host and through
/// the published port, and the attacker client reports honoured
/// renegotiations that match the server's own ClientHellos.
#[test]
fn harness_selfcheck_bridge_host_and_attacker_client() {
    require_root!();
    let dir = WorkDir::new("hosts-selfcheck").unwrap_or_else(|e| fail(e));
    let host = Host::docker_like().unwrap_or_else(|e| fail(e));
    let cert = TestCert::generate(dir.path()).unwrap_or_else(|e| fail(e));
    host.publish(PUBLISHED, SocketAddrV4::new(hosts::SERVER_IP, PORT))
        .unwrap_or_else(|e| fail(e));
    let srv = host.container("srv").unwrap_or_else(|e| fail(e)).clone();
    let listen = SocketAddr::from((hosts::SERVER_IP, PORT));
    let s = SServer::start_in(
        &srv.ns,
        dir.path(),
        &cert,
        &SServerOpts::new(listen)
            .version(TlsVersion::Tls12)
            .client_renegotiation(true),
        "s_server",
    )
    .unwrap_or_else(|e| fail(e));
    let out_ns = host.outside.clone().expect("uplink").ns;
    let cli_ns = host.container("cli").unwrap_or_else(|e| fail(e)).ns.clone();
    let published = SocketAddr::new(IpAddr::V4(hosts::UPLINK_HOST), PUBLISHED);
    let mut honoured = 0;
    for (i, (ns, to)) in [(&cli_ns, listen), (&host.ns, listen), (&out_ns, published)]
        .into_iter()
        .enumerate()
    {
        let mut c = Client::start(
            ns,
            dir.path(),
            &format!("c{i}"),
            to,
            &steps(&["tls=1.2", "reneg=2"]),
        )
        .unwrap_or_else(|e| fail(e));
        let out = c.finish(CLIENT_WAIT);
        assert_eq!(ok_count(&out, "RENEG"), 2, "client {i}: {out}");
        honoured += 3;
    }
    assert_eq!(msg_count(&s.proc.stdout(), "<<<", "ClientHello"), honoured);
}
