//! What a stopped agent leaves and how `hsmon cleanup` removes it.
//!
//! - A clean stop (SIGTERM) keeps the maps and links pinned: the programs
//!   stay attached and a ban keeps dropping. `hsmon cleanup` then removes
//!   every pin, detaches every program (the kernel's link table has none
//!   left that uses the agent's maps), adds no qdisc and leaves none, removes
//!   the state file and lets the client through; a second run has nothing to
//!   remove.
//! - `hsmon cleanup` while the agent runs is refused (exit 1) and changes
//!   nothing.
//! - `--no-persist`: a clean stop leaves nothing behind.
//! - `--hooks socket`: the three cgroup links are pinned too, kept by a
//!   clean stop, taken over by the next agent, removed by `hsmon cleanup`;
//!   with `--no-persist` they go with the agent.

use anyhow::{ensure, Context, Result};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};
use tests::hsmon::{kernel_links, Agent, KernelLinks};
use tests::netns::{in_netns, ns_cmd, tcp_connects};
use tests::{cmd, with_scenario_no_agent, Scenario};

/// The port of the plain TCP listener.
const PORT: u16 = 5912;
/// How long a connect may take before it counts as dropped.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(700);

fn listen(sc: &Scenario) -> Result<(TcpListener, SocketAddr)> {
    let addr = sc.server_addr(false, PORT);
    let l = in_netns(&sc.net.server_ns, move || TcpListener::bind(addr))?
        .with_context(|| format!("listening on {addr}"))?;
    Ok((l, addr))
}

/// One TCP connect from the client namespace: true when established.
fn connects(sc: &Scenario, dst: SocketAddr) -> Result<bool> {
    tcp_connects(&sc.net.client_ns, None, dst, CONNECT_TIMEOUT, false)
}

/// The qdiscs of the server's veth (`tc qdisc show`).
fn qdiscs(sc: &Scenario) -> Result<String> {
    let mut c = ns_cmd(&sc.net.server_ns, "tc");
    c.args(["qdisc", "show", "dev", &sc.net.server_if]);
    cmd::run_ok(&mut c, Duration::from_secs(10))
}

fn with_logs<T>(r: Result<T>, agent: &Agent) -> Result<T> {
    r.map_err(|e| e.context(format!("agent logs:\n{}", agent.logs(40))))
}

const NONE: KernelLinks = KernelLinks {
    tcx: 0,
    sock_state: 0,
    cgroup: 0,
};

/// Polls the kernel's link table for `want` (2 s at most).
fn wait_links(map_id: u64, want: &KernelLinks) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let got = kernel_links(map_id)?;
        if &got == want {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the kernel holds {got:?} hsmon links for map {map_id}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn clean_stop_keeps_pins_and_cleanup_removes_everything() {
    with_scenario_no_agent("cleanup_after_stop", |sc| {
        let (_l, dst) = listen(sc)?;
        let qdiscs_before = qdiscs(sc)?;
        // The TC links (the socket hooks' pins: socket_hook_links_stay_pinned_*).
        let args = ["--no-uprobes", "--hooks", "tc"].map(String::from);
        let mut agent = Agent::start_with_args(&sc.net, sc.dir.path(), &args)?;
        let state = agent.state();
        let r = (|| -> Result<u64> {
            let client = sc.net.client_ip(false).to_string();
            agent.cli(&[
                "bans",
                "add",
                &client,
                "--ttl",
                "10m",
                "--reason",
                "cleanup test",
            ])?;
            ensure!(!connects(sc, dst)?, "the ban drops the SYN");
            state.flows_map_id()
        })();
        let map_id = with_logs(r, &agent)?;
        agent.stop();
        ensure!(!agent.is_running(), "the agent stopped on SIGTERM");
        // A clean stop keeps everything: protection continues.
        let pins = state.pins();
        for want in [
            "links/tc-",
            "links/tp-sock_state",
            "maps-v1/BANS_V4",
            "maps-v1/FLOWS",
        ] {
            ensure!(
                pins.iter().any(|p| p.starts_with(want)),
                "no pin {want}* after a clean stop: {pins:?}"
            );
        }
        ensure!(state.state_file.is_file(), "the state file stays");
        wait_links(
            map_id,
            &KernelLinks {
                tcx: 2,
                sock_state: 1,
                cgroup: 0,
            },
        )?;
        ensure!(
            !connects(sc, dst)?,
            "the ban still drops with the agent stopped"
        );

        let out = state.cleanup(&[], &agent.socket)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.code() == Some(0),
            "hsmon cleanup exited {}: {stdout}{stderr}",
            out.status
        );
        for want in [
            "removed link",
            "removed map",
            "removed state file",
            "removed pin directory",
        ] {
            ensure!(
                stdout.contains(want),
                "cleanup did not say {want:?}: {stdout}"
            );
        }
        ensure!(!state.pin_dir.exists(), "pins left: {:?}", state.pins());
        ensure!(!state.state_file.exists(), "the state file is left");
        wait_links(map_id, &NONE)?;
        let qdiscs_after = qdiscs(sc)?;
        ensure!(
            !qdiscs_after.contains("clsact") || qdiscs_before.contains("clsact"),
            "a clsact qdisc is left: {qdiscs_after}"
        );
        ensure!(
            connects(sc, dst)?,
            "the client connects once the ban's maps are gone"
        );

        let again = state.cleanup(&[], &agent.socket)?;
        let again_out = String::from_utf8_lossy(&again.stdout);
        ensure!(
            again.status.code() == Some(0) && again_out.contains("nothing to remove"),
            "a second cleanup: {} {again_out}",
            again.status
        );
        Ok(())
    });
}

#[test]
fn cleanup_is_refused_while_the_agent_runs() {
    with_scenario_no_agent("cleanup_refused", |sc| {
        let (_l, dst) = listen(sc)?;
        let mut agent = Agent::start_with_args(&sc.net, sc.dir.path(), &["--no-uprobes".into()])?;
        let state = agent.state();
        let r = (|| -> Result<()> {
            let client = sc.net.client_ip(false).to_string();
            agent.cli(&[
                "bans",
                "add",
                &client,
                "--ttl",
                "10m",
                "--reason",
                "refusal test",
            ])?;
            let pins = state.pins();
            let out = state.cleanup(&[], &agent.socket)?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            ensure!(
                out.status.code() == Some(1),
                "cleanup with the agent running exited {}",
                out.status
            );
            ensure!(
                stderr.contains("agent") && stderr.contains("stop it first"),
                "the refusal says why: {stderr}"
            );
            ensure!(state.pins() == pins, "cleanup changed pins while refusing");
            ensure!(agent.is_running(), "the agent still runs");
            ensure!(!connects(sc, dst)?, "the ban is still enforced");
            Ok(())
        })();
        with_logs(r, &agent)
    });
}

#[test]
fn no_persist_leaves_nothing_behind() {
    with_scenario_no_agent("cleanup_no_persist", |sc| {
        let (_l, dst) = listen(sc)?;
        let mut agent = Agent::start_with_args(
            &sc.net,
            sc.dir.path(),
            &["--no-uprobes".into(), "--no-persist".into()],
        )?;
        let state = agent.state();
        let r = (|| -> Result<u64> {
            let client = sc.net.client_ip(false).to_string();
            agent.cli(&[
                "bans",
                "add",
                &client,
                "--ttl",
                "10m",
                "--reason",
                "no persist",
            ])?;
            ensure!(!connects(sc, dst)?, "the ban drops the SYN");
            std::thread::sleep(Duration::from_millis(1500));
            ensure!(
                state.state_file.is_file(),
                "the state file is kept while running"
            );
            state.flows_map_id()
        })();
        let map_id = with_logs(r, &agent)?;
        agent.stop();
        ensure!(!state.pin_dir.exists(), "pins left: {:?}", state.pins());
        ensure!(!state.state_file.exists(), "the state file is left");
        wait_links(map_id, &NONE)?;
        ensure!(
            connects(sc, dst)?,
            "the client connects after the agent left"
        );
        Ok(())
    });
}

/// `--hooks socket` (on a port no other test uses: the cgroup programs see
/// every socket of the host).
fn socket_args(extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["--no-uprobes", "--hooks", "socket", "--ports", "5913"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// The socket hooks' links are pinned: a clean stop leaves the three
/// cgroup links attached, a restarted agent takes them over (still three,
/// no duplicate), and `hsmon cleanup` removes their pins and detaches them.
#[test]
fn socket_hook_links_stay_pinned_and_cleanup_removes_them() {
    with_scenario_no_agent("cleanup_sock_links", |sc| {
        let args = socket_args(&[]);
        let mut first = Agent::start_with_args(&sc.net, sc.dir.path(), &args)?;
        let state = first.state();
        let with_sock = KernelLinks {
            tcx: 2,
            sock_state: 1,
            cgroup: 3,
        };
        let map_id = with_logs(
            (|| -> Result<u64> {
                let id = state.flows_map_id()?;
                wait_links(id, &with_sock)?;
                Ok(id)
            })(),
            &first,
        )?;
        first.stop();
        let pins = state.pins();
        for want in ["links/sock-ingress", "links/sock-egress", "links/sock-ops"] {
            ensure!(
                pins.iter().any(|p| p == want),
                "no pin {want} after a clean stop: {pins:?}"
            );
        }
        wait_links(map_id, &with_sock)?;
        let mut second = Agent::start_with_state(&sc.net, sc.dir.path(), &args, state.clone())?;
        with_logs(wait_links(map_id, &with_sock), &second)?;
        second.stop();
        let out = state.cleanup(&[], &second.socket)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.code() == Some(0) && stdout.contains("links/sock-ops"),
            "cleanup: {} {stdout}",
            out.status
        );
        ensure!(!state.pin_dir.exists(), "pins left: {:?}", state.pins());
        wait_links(map_id, &NONE)?;
        Ok(())
    });
}

/// With `--no-persist` the socket hooks go with the agent.
#[test]
fn socket_hooks_no_persist_leave_nothing_behind() {
    with_scenario_no_agent("cleanup_sock_no_persist", |sc| {
        let mut agent =
            Agent::start_with_args(&sc.net, sc.dir.path(), &socket_args(&["--no-persist"]))?;
        let state = agent.state();
        let map_id = with_logs(
            (|| -> Result<u64> {
                let id = state.flows_map_id()?;
                wait_links(
                    id,
                    &KernelLinks {
                        tcx: 2,
                        sock_state: 1,
                        cgroup: 3,
                    },
                )?;
                Ok(id)
            })(),
            &agent,
        )?;
        agent.stop();
        ensure!(!state.pin_dir.exists(), "pins left: {:?}", state.pins());
        wait_links(map_id, &NONE)?;
        Ok(())
    });
}

/// The hsmon bpf filters on the server's veth in `direction` (`tc filter
/// show`), one line each.
fn hsmon_filters(sc: &Scenario, direction: &str) -> Result<Vec<String>> {
    let mut c = ns_cmd(&sc.net.server_ns, "tc");
    c.args(["filter", "show", "dev", &sc.net.server_if, direction]);
    let out = cmd::run_ok(&mut c, Duration::from_secs(10))?;
    Ok(out
        .lines()
        .filter(|l| l.contains("hsmon_tc_"))
        .map(str::to_owned)
        .collect())
}

#[test]
fn clsact_filters_are_replaced_on_restart_and_removed_by_cleanup() {
    with_scenario_no_agent("cleanup_clsact", |sc| {
        let (_l, dst) = listen(sc)?;
        ensure!(
            !qdiscs(sc)?.contains("clsact"),
            "the veth has a clsact qdisc before the test"
        );
        let args: Vec<String> = ["--no-uprobes", "--hooks", "tc", "--tc-mode", "clsact"]
            .map(String::from)
            .to_vec();
        let mut first = Agent::start_with_args(&sc.net, sc.dir.path(), &args)?;
        let state = first.state();
        let r = (|| -> Result<()> {
            ensure!(qdiscs(sc)?.contains("clsact"), "hsmon added a clsact qdisc");
            for d in ["ingress", "egress"] {
                let f = hsmon_filters(sc, d)?;
                ensure!(f.len() == 1, "{d}: {f:?}");
            }
            let client = sc.net.client_ip(false).to_string();
            first.cli(&["bans", "add", &client, "--ttl", "10m", "--reason", "clsact"])?;
            // The state file (which records the filters) is written within a
            // second of a change.
            std::thread::sleep(Duration::from_millis(1500));
            Ok(())
        })();
        with_logs(r, &first)?;
        first.kill9();
        ensure!(
            !connects(sc, dst)?,
            "the filter keeps dropping with the agent dead"
        );
        let mut second = Agent::start_with_state(&sc.net, sc.dir.path(), &args, state.clone())?;
        let r = (|| -> Result<()> {
            for d in ["ingress", "egress"] {
                let f = hsmon_filters(sc, d)?;
                ensure!(
                    f.len() == 1,
                    "after the restart, {d} has {} hsmon filters: {f:?}",
                    f.len()
                );
            }
            ensure!(!connects(sc, dst)?, "the ban is enforced after the restart");
            wait_links(
                state.flows_map_id()?,
                &KernelLinks {
                    tcx: 0,
                    sock_state: 1,
                    cgroup: 0,
                },
            )?;
            Ok(())
        })();
        with_logs(r, &second)?;
        second.stop();
        ensure!(
            hsmon_filters(sc, "ingress")?.len() == 1,
            "a clean stop keeps the filter"
        );
        let out = state.cleanup(&[], &second.socket)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.code() == Some(0),
            "cleanup: {} {stdout}",
            out.status
        );
        ensure!(
            stdout.contains("removed clsact qdisc"),
            "cleanup did not remove the qdisc: {stdout}"
        );
        for d in ["ingress", "egress"] {
            let f = hsmon_filters(sc, d)?;
            ensure!(f.is_empty(), "{d} filters left: {f:?}");
        }
        ensure!(!qdiscs(sc)?.contains("clsact"), "the clsact qdisc is left");
        ensure!(connects(sc, dst)?, "the client connects after cleanup");
        Ok(())
    });
}
