//! State across restarts: `kill -9` of the agent and a restart on the same
//! pinned state.
//!
//! - A ban keeps dropping the client's SYNs while no agent runs, and ends
//!   on time (the kernel checks the expiry).
//! - A restarted agent lists the ban (with its reason, from the state
//!   file), the kernel counters continue (not reset), and the kernel holds
//!   exactly one hsmon program per hook (TCX ingress and egress, the
//!   tracepoint): counted in the kernel's link table, not in hsmon's status.
//! - Connections open across the restart are listed once, with their
//!   handshake counted once, and the kernel's flow counters are not doubled.
//! - `kill -9` in the middle of a handshake flood and a restart while it
//!   goes on: every connection counted once by the kernel, no handshake
//!   counted twice, the ban survives, one program per hook.
//! - The policy's ban history survives: a repeat offender after the restart
//!   gets the escalated TTL.

use anyhow::{bail, ensure, Context, Result};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};
use tests::hsmon::{kernel_links, Agent, KernelLinks};
use tests::netns::{in_netns, tcp_connects};
use tests::openssl::SClientOpts;
use tests::{with_scenario_no_agent, Scenario};

/// The port of the plain TCP listener.
const PORT: u16 = 5911;
/// How long a connect may take before it counts as dropped.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(700);

/// The agent's arguments in these tests (no uprobes: not under test).
fn agent_args() -> Vec<String> {
    vec!["--no-uprobes".into()]
}

/// A listener in the server namespace (connections complete in the accept
/// queue; nothing needs to accept them).
fn listen(sc: &Scenario) -> Result<(TcpListener, SocketAddr)> {
    let addr = sc.server_addr(false, PORT);
    let l = in_netns(&sc.net.server_ns, move || TcpListener::bind(addr))?
        .with_context(|| format!("listening on {addr}"))?;
    Ok((l, addr))
}

/// One TCP connect from the client namespace (a line sent once connected):
/// false when it times out (dropped).
fn connects(sc: &Scenario, dst: SocketAddr, timeout: Duration) -> Result<bool> {
    tcp_connects(&sc.net.client_ns, None, dst, timeout, true)
}

/// One kernel counter from `GET /v1/stats`.
fn kernel_stat(agent: &Agent, name: &str) -> Result<u64> {
    let v = agent.stats_value()?;
    v["kernel"][name]
        .as_u64()
        .with_context(|| format!("no kernel counter {name} in {v}"))
}

/// Adds the agent's logs to an error.
fn with_logs<T>(r: Result<T>, agents: &[&Agent]) -> Result<T> {
    r.map_err(|e| {
        let logs: Vec<String> = agents.iter().map(|a| a.logs(40)).collect();
        e.context(format!("agent logs:\n{}", logs.join("\n---\n")))
    })
}

/// Polls until the kernel's link table shows `want` for `map_id` (links
/// appear and go asynchronously); fails with the last count.
fn wait_links(map_id: u64, want: &KernelLinks, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let got = kernel_links(map_id)?;
        if &got == want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("the kernel holds {got:?} hsmon links for map {map_id}, want {want:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Segments the counting hooks saw: `segments` (TC hooks) plus
/// `sock_ingress_runs` (the socket hooks, the default), so the check holds
/// in either mode.
fn counted_segments(agent: &Agent) -> Result<u64> {
    Ok(kernel_stat(agent, "segments")? + kernel_stat(agent, "sock_ingress_runs")?)
}

/// The links one agent on one veth (not loopback) holds with the default
/// socket hooks: TC ingress and egress (bans), the close tracepoint, and
/// the cgroup ingress, egress and sock_ops links.
const ONE_PER_HOOK: KernelLinks = KernelLinks {
    tcx: 2,
    sock_state: 1,
    cgroup: 3,
};

#[test]
fn kill9_ban_keeps_dropping_until_it_expires() {
    with_scenario_no_agent("restart_ban_ttl", |sc| {
        let (_l, dst) = listen(sc)?;
        let mut agent = Agent::start_with_args(&sc.net, sc.dir.path(), &agent_args())?;
        let r = (|| -> Result<()> {
            ensure!(
                connects(sc, dst, CONNECT_TIMEOUT)?,
                "the path works before the ban"
            );
            let client = sc.net.client_ip(false).to_string();
            let ttl = Duration::from_secs(7);
            agent.cli(&[
                "bans",
                "add",
                &client,
                "--ttl",
                "7s",
                "--reason",
                "restart test",
            ])?;
            let banned_at = Instant::now();
            ensure!(
                !connects(sc, dst, CONNECT_TIMEOUT)?,
                "the ban drops the SYN"
            );
            let map_id = agent.state().flows_map_id()?;
            agent.kill9();
            ensure!(!agent.is_running(), "the agent is gone after kill -9");
            // Nothing runs in user space now: the pinned links keep the
            // programs attached, the kernel keeps dropping.
            wait_links(map_id, &ONE_PER_HOOK, Duration::from_secs(2))?;
            let mut tries = 0;
            while banned_at.elapsed() < ttl - Duration::from_millis(1500) {
                ensure!(
                    !connects(sc, dst, CONNECT_TIMEOUT)?,
                    "connected {:?} after a {ttl:?} ban with the agent dead",
                    banned_at.elapsed()
                );
                tries += 1;
            }
            ensure!(tries >= 3, "only {tries} attempts during the ban");
            // After the TTL the kernel lets the client through on its own.
            let deadline = banned_at + ttl + Duration::from_secs(5);
            loop {
                if connects(sc, dst, Duration::from_millis(400))? {
                    break;
                }
                ensure!(
                    Instant::now() < deadline,
                    "still dropped {:?} after a {ttl:?} ban",
                    banned_at.elapsed()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            let ended = banned_at.elapsed();
            ensure!(
                ended >= ttl - Duration::from_millis(1500),
                "the ban ended early: {ended:?} < {ttl:?}"
            );
            Ok(())
        })();
        with_logs(r, &[&agent])
    });
}

#[test]
fn restarted_agent_lists_the_ban_keeps_counters_and_one_attachment_per_hook() {
    with_scenario_no_agent("restart_takeover", |sc| {
        let (_l, dst) = listen(sc)?;
        let mut first = Agent::start_with_args(&sc.net, sc.dir.path(), &agent_args())?;
        let state = first.state();
        let r = (|| -> Result<(u64, u64)> {
            let map_id = state.flows_map_id()?;
            wait_links(map_id, &ONE_PER_HOOK, Duration::from_secs(2))?;
            ensure!(
                connects(sc, dst, CONNECT_TIMEOUT)?,
                "the path works before the ban"
            );
            let client = sc.net.client_ip(false);
            first.cli(&[
                "bans",
                "add",
                &client.to_string(),
                "--ttl",
                "60s",
                "--reason",
                "kept across kill -9",
            ])?;
            ensure!(
                !connects(sc, dst, CONNECT_TIMEOUT)?,
                "the ban drops the SYN"
            );
            let drops_before = kernel_stat(&first, "ban_drops")?;
            let segments_before = counted_segments(&first)?;
            ensure!(drops_before > 0, "ban_drops counted the dropped SYN");
            ensure!(
                segments_before > 0,
                "the counting hooks counted the payload"
            );
            // The state file is written within a second of a change.
            std::thread::sleep(Duration::from_millis(1500));
            first.kill9();
            Ok((drops_before, segments_before))
        })();
        let (drops_before, segments_before) = with_logs(r, &[&first])?;
        let second = Agent::start_with_state(&sc.net, sc.dir.path(), &agent_args(), state.clone())?;
        let r = (|| -> Result<()> {
            let list = second.bans()?;
            let client = sc.net.client_ip(false);
            let want = format!("{client}/32");
            let ban = list
                .iter()
                .find(|b| b.cidr == want)
                .with_context(|| format!("the restarted agent lists no ban on {want}: {list:?}"))?;
            ensure!(
                ban.reason == "kept across kill -9",
                "reason {:?}",
                ban.reason
            );
            ensure!(ban.added_by == "manual", "added_by {:?}", ban.added_by);
            ensure!(
                ban.expires_in_ms > 0 && ban.expires_in_ms <= 60_000,
                "expires_in_ms {}",
                ban.expires_in_ms
            );
            // Counters continue from where they were (same pinned map).
            let drops_after = kernel_stat(&second, "ban_drops")?;
            let segments_after = counted_segments(&second)?;
            ensure!(
                drops_after >= drops_before && segments_after >= segments_before,
                "kernel counters reset: ban_drops {drops_before} -> {drops_after}, \
                 segments {segments_before} -> {segments_after}"
            );
            // Still enforced, by the new agent's program.
            ensure!(
                !connects(sc, dst, CONNECT_TIMEOUT)?,
                "the ban still drops after the restart"
            );
            let drops_later = kernel_stat(&second, "ban_drops")?;
            ensure!(
                drops_later > drops_after,
                "the new program counts ban drops"
            );
            // Exactly one hsmon program per hook in the kernel.
            let map_id = state.flows_map_id()?;
            wait_links(map_id, &ONE_PER_HOOK, Duration::from_secs(3))?;
            let status: serde_json::Value =
                serde_json::from_str(&second.cli(&["status", "--json"])?).context("status")?;
            ensure!(
                status["persistence"]["restored"] == true
                    // TC ingress, egress, the close tracepoint, and the
                    // three socket-hook links.
                    && status["persistence"]["links_taken_over"] == 6
                    && status["persistence"]["state_file_status"] == "restored",
                "status.persistence: {}",
                status["persistence"]
            );
            Ok(())
        })();
        with_logs(r, &[&second])
    });
}

#[test]
fn restart_does_not_double_counts() {
    with_scenario_no_agent("restart_counts", |sc| {
        const N: usize = 3;
        let addr = sc.server_addr(false, 8443);
        let _nginx = sc.nginx(addr)?;
        let mut first = Agent::start_with_args(&sc.net, sc.dir.path(), &agent_args())?;
        let state = first.state();
        let mut clients = Vec::new();
        for i in 0..N {
            let mut c = sc.s_client(&SClientOpts::new(addr))?;
            c.wait_handshakes(1, Duration::from_secs(15))
                .with_context(|| format!("client {i}"))?;
            clients.push(c);
        }
        let r = (|| -> Result<Vec<String>> {
            let conns = wait_conns(&first, N)?;
            let created = kernel_stat(&first, "flows_created")?;
            ensure!(
                created == N as u64,
                "flows_created {created} before the restart, want {N}"
            );
            Ok(conns)
        })();
        let before = with_logs(r, &[&first])?;
        first.kill9();
        let second = Agent::start_with_state(&sc.net, sc.dir.path(), &agent_args(), state)?;
        let r = (|| -> Result<()> {
            let after = wait_conns(&second, N)?;
            ensure!(
                after == before,
                "the restarted agent lists {after:?}, before the restart {before:?}"
            );
            let created = kernel_stat(&second, "flows_created")?;
            ensure!(
                created == N as u64,
                "flows_created {created} after the restart, want {N}"
            );
            Ok(())
        })();
        with_logs(r, &[&second])?;
        drop(clients);
        Ok(())
    });
}

/// Waits (10 s at most) until `agent` lists exactly `n` open TLS connections,
/// each with one handshake; returns their client addresses, sorted.
fn wait_conns(agent: &Agent, n: usize) -> Result<Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let conns = agent.conns()?;
        let open: Vec<_> = conns.iter().filter(|c| c.state == "open").collect();
        if open.len() == n && open.iter().all(|c| c.handshakes == 1) {
            ensure!(conns.len() == n, "duplicates or extra flows: {conns:?}");
            let mut clients: Vec<String> = open.iter().map(|c| c.client.clone()).collect();
            clients.sort();
            return Ok(clients);
        }
        if Instant::now() >= deadline {
            bail!("want {n} open connections with one handshake each, got {conns:?}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// One complete TLS connection from the client namespace: `openssl
/// s_client` with stdin closed handshakes, then closes. True when it
/// connected and completed the handshake.
fn one_handshake(client_ns: &str, addr: SocketAddr) -> Result<bool> {
    let mut c = tests::netns::ns_cmd(client_ns, "openssl");
    c.args(["s_client", "-connect", &addr.to_string()])
        .stdin(std::process::Stdio::null());
    let out = tests::cmd::output_within(&mut c, Duration::from_secs(10))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(out.status.success() && stdout.contains("CONNECTED") && stdout.contains("Cipher is"))
}

#[test]
fn kill9_mid_flood_and_restart_loses_and_doubles_nothing() {
    with_scenario_no_agent("restart_mid_flood", |sc| {
        const N: usize = 80;
        let addr = sc.server_addr(false, 8443);
        let _nginx = sc.nginx(addr)?;
        let mut first = Agent::start_with_args(&sc.net, sc.dir.path(), &agent_args())?;
        let state = first.state();
        // A ban on an address outside the test's traffic: it must survive.
        first.cli(&[
            "bans",
            "add",
            "192.0.2.77",
            "--ttl",
            "10m",
            "--reason",
            "survives the flood",
        ])?;
        std::thread::sleep(Duration::from_millis(1200));
        let client_ns = sc.net.client_ns.clone();
        let net = &sc.net;
        let dir = sc.dir.path().to_path_buf();
        let progress = std::sync::atomic::AtomicUsize::new(0);
        let progress = &progress;
        let (done, second, at_kill, at_ready) = std::thread::scope(|s| {
            let flood = s.spawn(move || -> Result<usize> {
                let mut ok = 0;
                for _ in 0..N {
                    if one_handshake(&client_ns, addr)? {
                        ok += 1;
                    }
                    progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(ok)
            });
            // Mid-flood (an eighth done, bounded wait): kill -9, then restart
            // on the same state while the handshakes go on.
            let deadline = Instant::now() + Duration::from_secs(20);
            while progress.load(std::sync::atomic::Ordering::Relaxed) < N / 8
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            first.kill9();
            let at_kill = progress.load(std::sync::atomic::Ordering::Relaxed);
            let second = Agent::start_with_state(net, &dir, &agent_args(), state.clone());
            let at_ready = progress.load(std::sync::atomic::Ordering::Relaxed);
            let done = flood
                .join()
                .map_err(|_| anyhow::anyhow!("the flood thread panicked"));
            (done, second, at_kill, at_ready)
        });
        eprintln!("flood: kill -9 after {at_kill} of {N}, new agent ready after {at_ready}");
        ensure!(
            (N / 8..N).contains(&at_kill),
            "the kill was not mid-flood ({at_kill} of {N} done)"
        );
        let done = done??;
        let second = second?;
        ensure!(done == N, "only {done} of {N} handshakes completed");
        let r = (|| -> Result<()> {
            // Every connection counted once by the kernel, across the kill
            // and the swap of programs (flows_created counts new TLS flows).
            let deadline = Instant::now() + Duration::from_secs(5);
            let created = loop {
                let created = kernel_stat(&second, "flows_created")?;
                if created >= N as u64 || Instant::now() >= deadline {
                    break created;
                }
                std::thread::sleep(Duration::from_millis(200));
            };
            ensure!(created == N as u64, "flows_created {created}, want {N}");
            // No connection is listed with its handshake counted twice, and
            // no more connections than were made.
            let conns = second.conns()?;
            ensure!(
                conns.len() <= N,
                "{} connections listed for {N}",
                conns.len()
            );
            ensure!(
                conns.iter().all(|c| c.handshakes <= 1),
                "a handshake counted twice: {conns:?}"
            );
            let list = second.bans()?;
            ensure!(
                list.iter()
                    .any(|b| b.cidr == "192.0.2.77/32" && b.reason == "survives the flood"),
                "the ban was lost: {list:?}"
            );
            wait_links(state.flows_map_id()?, &ONE_PER_HOOK, Duration::from_secs(3))?;
            Ok(())
        })();
        with_logs(r, &[&second])
    });
}

/// Sequential `s_client` handshakes (TLS 1.2) from the client namespace,
/// stopping at the first that fails; returns how many completed.
fn flood(sc: &Scenario, addr: SocketAddr, n: usize) -> Result<usize> {
    let mut c = sc.net.client_cmd("bash");
    let script = format!(
        "n=0; for i in $(seq {n}); do if timeout 2 openssl s_client -connect {addr} -tls1_2 </dev/null >/dev/null 2>&1; then n=$((n+1)); else break; fi; done; echo $n"
    );
    c.arg("-c").arg(script);
    let out = tests::cmd::run_ok(&mut c, Duration::from_secs(180)).context("the flood")?;
    out.trim()
        .parse()
        .with_context(|| format!("the flood printed {out:?}"))
}

/// The attacker's `bans_24h` in `hsmon peers --json` (0 when not listed).
fn bans_24h(agent: &Agent, peer: &str) -> Result<u64> {
    let peers: Vec<serde_json::Value> =
        serde_json::from_str(&agent.cli(&["peers", "--json"])?).context("hsmon peers --json")?;
    Ok(peers
        .iter()
        .find(|p| p["peer"] == peer)
        .and_then(|p| p["bans_24h"].as_u64())
        .unwrap_or(0))
}

#[test]
fn restarted_agent_keeps_escalating_repeat_offenders() {
    with_scenario_no_agent("restart_escalation", |sc| {
        use tests::decisions::{policy_args, wait_decision};
        use tests::openssl::{SServerOpts, TlsVersion};
        let policy = "[peer]\nhandshakes_per_10s = 20\n[action]\nhandshakes_per_10s = \"ban\"\nban_ttl = \"3s\"\n";
        let mut args = policy_args(sc.dir.path(), "hsmon.toml", policy)?;
        args.extend(agent_args());
        let addr = sc.server_addr(false, 4461);
        let _srv = sc.s_server(&SServerOpts::new(addr).version(TlsVersion::Tls12))?;
        let attacker = sc.net.client_ip(false).to_string();
        let mut first = Agent::start_with_args(&sc.net, sc.dir.path(), &args)?;
        let state = first.state();
        let r = (|| -> Result<()> {
            let ran = flood(sc, addr, 60)?;
            let ev = wait_decision(&first, "first ban", Duration::from_secs(5), |d| {
                d["action"] == "ban" && d["peer"] == attacker.as_str()
            })?;
            ensure!(ev["ttl_s"] == 3, "first ban {ev} after {ran} handshakes");
            ensure!(bans_24h(&first, &attacker)? == 1, "one ban in the history");
            // The state file is written within a second of a change.
            std::thread::sleep(Duration::from_millis(1500));
            Ok(())
        })();
        with_logs(r, &[&first])?;
        first.kill9();
        let second = Agent::start_with_state(&sc.net, sc.dir.path(), &args, state)?;
        let r = (|| -> Result<()> {
            ensure!(
                bans_24h(&second, &attacker)? == 1,
                "the restarted agent forgot the ban history"
            );
            // Let the first ban end (3 s) and the 10 s window drain.
            let drained = Instant::now() + Duration::from_secs(20);
            loop {
                let peers: Vec<serde_json::Value> =
                    serde_json::from_str(&second.cli(&["peers", "--json"])?)?;
                let n = peers
                    .iter()
                    .find(|p| p["peer"] == attacker.as_str())
                    .and_then(|p| p["handshakes_10s"].as_u64())
                    .unwrap_or(0);
                let banned = second.bans()?.iter().any(|b| b.cidr.starts_with(&attacker));
                if n <= 20 && !banned {
                    break;
                }
                ensure!(
                    Instant::now() < drained,
                    "the first ban never ended: {peers:?}"
                );
                std::thread::sleep(Duration::from_millis(250));
            }
            let _ = flood(sc, addr, 60)?;
            let ev = wait_decision(&second, "second ban", Duration::from_secs(5), |d| {
                d["action"] == "ban" && d["peer"] == attacker.as_str()
            })?;
            ensure!(
                ev["ttl_s"] == 12,
                "the repeat offence after the restart got {} s, not the escalated 12 s: {ev}",
                ev["ttl_s"]
            );
            ensure!(
                bans_24h(&second, &attacker)? == 2,
                "two bans in the history"
            );
            Ok(())
        })();
        with_logs(r, &[&second])
    });
}
