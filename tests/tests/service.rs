//! Running hsmon as a service: `hsmon status` against a live agent, and the
//! systemd notification protocol (`READY=1` after the hooks are attached,
//! `WATCHDOG=1` at half `WATCHDOG_USEC`, `STOPPING=1`) received on a fake
//! `NOTIFY_SOCKET`, plus SIGHUP reloading the configuration without stopping
//! the agent.

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tests::hsmon::{agent_cmd, hsmon_bin, READY_TIMEOUT};
use tests::netns::NetPair;
use tests::openssl::{SClientOpts, SServerOpts, TlsVersion};
use tests::process::Proc;
use tests::scenario::PER_CONN;
use tests::workdir::WorkDir;

const PORT: u16 = 4433;

use monitor::api::status::STATUS_KEYS;

/// `hsmon status [--json] --socket SOCKET`'s stdout.
fn status_raw(socket: &Path, json: bool) -> Result<String> {
    let mut c = Command::new(hsmon_bin());
    c.arg("status");
    if json {
        c.arg("--json");
    }
    c.arg("--socket").arg(socket);
    tests::cmd::run_ok(&mut c, Duration::from_secs(10))
}

/// `hsmon status --json`, parsed, with every documented key checked.
fn status(socket: &Path) -> Result<Value> {
    let raw = status_raw(socket, true)?;
    let v: Value = serde_json::from_str(&raw).with_context(|| format!("status JSON: {raw}"))?;
    let obj = v
        .as_object()
        .ok_or_else(|| anyhow!("status is not an object: {raw}"))?;
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut want = STATUS_KEYS.to_vec();
    want.sort_unstable();
    ensure!(keys == want, "status keys {keys:?}, documented {want:?}");
    for m in ["flows", "bans_v4", "bans_v6"] {
        for k in ["entries", "capacity"] {
            ensure!(v["maps"][m][k].is_u64(), "maps.{m}.{k} in {raw}");
        }
    }
    for k in ["read", "lost", "bad"] {
        ensure!(v["events"][k].is_u64(), "events.{k} in {raw}");
    }
    for h in v["hooks"].as_array().into_iter().flatten() {
        for k in ["iface", "program", "direction", "mode"] {
            ensure!(h[k].is_string(), "hooks[].{k} in {raw}");
        }
    }
    Ok(v)
}

/// The (direction, mode) of each hook on `iface`.
fn hooks_on(v: &Value, iface: &str) -> Vec<(String, String)> {
    v["hooks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|h| h["iface"] == iface)
        .map(|h| {
            (
                h["direction"].as_str().unwrap_or("").to_owned(),
                h["mode"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// Whether ingress and egress are both hooked on `iface`, each TCX or clsact.
fn ingress_and_egress(v: &Value, iface: &str) -> bool {
    let hooks = hooks_on(v, iface);
    let ok_mode = |m: &str| m == "tcx" || m == "clsact";
    ["ingress", "egress"]
        .iter()
        .all(|d| hooks.iter().any(|(dir, mode)| dir == d && ok_mode(mode)))
}

fn flows(v: &Value) -> u64 {
    v["maps"]["flows"]["entries"].as_u64().unwrap_or(0)
}

#[test]
fn status_reports_hooks_maps_and_flows() {
    tests::scenario::with_scenario("status", |sc| {
        let socket = sc
            .agent()
            .ok_or_else(|| anyhow!("no agent"))?
            .socket
            .clone();
        let iface = sc.net.server_if.clone();

        let v = status(&socket)?;
        ensure!(
            ingress_and_egress(&v, &iface),
            "hooks on {iface}: {:?}",
            v["hooks"]
        );
        ensure!(
            v["tracepoints"].as_array().is_some_and(|t| t
                .iter()
                .any(|t| t["tracepoint"] == "sock/inet_sock_set_state")),
            "no tracepoint: {v}"
        );
        ensure!(v["version"] == env!("CARGO_PKG_VERSION"), "version: {v}");
        ensure!(v["socket"] == socket.display().to_string(), "socket: {v}");
        ensure!(v["metrics_addr"] == "127.0.0.1:9477", "metrics_addr: {v}");
        ensure!(v["maps"]["flows"]["capacity"] == 65536, "capacity: {v}");
        ensure!(v["maps"]["bans_v4"]["capacity"] == 65536, "capacity: {v}");
        ensure!(v["bans_active"] == 0, "bans: {v}");
        ensure!(v["pid"].as_u64().is_some_and(|p| p > 1), "pid: {v}");
        let before = flows(&v);

        // One TLS connection, kept open: FLOWS grows.
        let server = sc.server_addr(false, PORT);
        let _srv = sc.s_server(&SServerOpts::new(server).version(TlsVersion::Tls12))?;
        let mut c = sc.s_client(&SClientOpts::new(server).version(TlsVersion::Tls12))?;
        c.wait_established(PER_CONN)?;
        c.send_data("hello")?;
        let grown = tests::cmd::poll(Duration::from_secs(10), Duration::from_millis(200), || {
            status(&socket).ok().filter(|v| flows(v) > before)
        })
        .ok_or_else(|| anyhow!("FLOWS entries never grew above {before}"))?;
        ensure!(
            grown["events"]["lost"] == 0,
            "events lost: {}",
            grown["events"]
        );
        ensure!(
            grown["uptime_ms"].as_u64() >= v["uptime_ms"].as_u64(),
            "uptime went back: {v} then {grown}"
        );

        // The table for people names the interface, both directions and the flows.
        let table = status_raw(&socket, false)?;
        for needle in [
            iface.as_str(),
            "ingress",
            "egress",
            "sock/inet_sock_set_state",
            "flows:",
        ] {
            ensure!(table.contains(needle), "no {needle:?} in:\n{table}");
        }

        // SIGHUP (systemd's ExecReload) reloads and does not stop the agent.
        let pid = v["pid"]
            .as_u64()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| anyhow!("pid: {v}"))?;
        // SAFETY: kill(2) with a pid the agent reported and a valid signal.
        let rc = unsafe { libc::kill(pid, libc::SIGHUP) };
        ensure!(
            rc == 0,
            "kill -HUP {pid}: {}",
            std::io::Error::last_os_error()
        );
        let agent_logs = || sc.agent().map(|a| a.logs(200)).unwrap_or_default();
        let logged = tests::cmd::poll(Duration::from_secs(5), Duration::from_millis(100), || {
            agent_logs()
                .contains("SIGHUP: configuration reloaded")
                .then_some(())
        });
        ensure!(
            logged.is_some(),
            "no reload logged after SIGHUP:\n{}",
            agent_logs()
        );
        let after = status(&socket)?;
        ensure!(after["pid"] == v["pid"], "another agent answers: {after}");

        c.send_data("bye")?;
        c.close(PER_CONN)?;
        let report = sc.finish()?;
        let (t, h) = report.only_tls()?;
        tests::scenario::assert_common(t, h);
        Ok(())
    });
}

/// The datagrams received on `sock` until `until` returns true or `timeout`
/// passes, each with when it arrived.
fn receive(
    sock: &UnixDatagram,
    timeout: Duration,
    mut until: impl FnMut(&[(Instant, String)]) -> bool,
) -> Result<Vec<(Instant, String)>> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && !until(&got) {
        let left = deadline.saturating_duration_since(Instant::now());
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .context("setting the notify socket's timeout")?;
        match sock.recv(&mut buf) {
            Ok(n) => got.push((
                Instant::now(),
                String::from_utf8_lossy(&buf[..n]).into_owned(),
            )),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e).context("receiving on the notify socket"),
        }
    }
    Ok(got)
}

fn has(msgs: &[(Instant, String)], line: &str) -> bool {
    msgs.iter().any(|(_, m)| m.lines().any(|l| l == line))
}

/// Starts `hsmon run` in the server namespace with `NOTIFY_SOCKET` (and
/// `WATCHDOG_USEC` if given) set.
fn start_agent(
    net: &NetPair,
    dir: &Path,
    name: &str,
    notify: &Path,
    watchdog_usec: Option<u64>,
) -> Result<Proc> {
    let mut c = agent_cmd(net, &hsmon_bin());
    c.arg("run")
        .args(["--iface", &net.server_if])
        .arg("--socket")
        .arg(dir.join(format!("{name}.sock")))
        .args(["--metrics-addr", "off"])
        // Nothing of this agent may outlive the test: no pins kept on stop,
        // and its state file in the test's directory, not /run/hsmon.
        .arg("--no-persist")
        .arg("--state-file")
        .arg(dir.join(format!("{name}.state.json")))
        .env("NOTIFY_SOCKET", notify)
        .env_remove("WATCHDOG_PID");
    match watchdog_usec {
        Some(u) => c.env("WATCHDOG_USEC", u.to_string()),
        None => c.env_remove("WATCHDOG_USEC"),
    };
    Proc::spawn(name, c, dir, false)
}

#[test]
fn sd_notify_ready_watchdog_and_stopping() {
    tests::require_root!("sd_notify_ready_watchdog_and_stopping");
    let run = || -> Result<()> {
        let dir = WorkDir::new("sd-notify")?;
        let net = NetPair::create()?;
        let notify_path = dir.join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path)
            .with_context(|| format!("binding {}", notify_path.display()))?;

        // With a 2 s watchdog.
        let mut agent = start_agent(&net, dir.path(), "agent-wd", &notify_path, Some(2_000_000))?;
        let socket = dir.join("agent-wd.sock");
        let msgs = receive(&notify, READY_TIMEOUT, |m| has(m, "READY=1"))?;
        if !has(&msgs, "READY=1") {
            bail!(
                "no READY=1 within {READY_TIMEOUT:?}; got {msgs:?}\n{}",
                agent.logs(60)
            );
        }
        // READY=1 means the hooks are attached and the socket answers.
        let v = status(&socket).context("status right after READY=1")?;
        ensure!(
            ingress_and_egress(&v, &net.server_if),
            "READY=1 before the hooks: {:?}",
            v["hooks"]
        );
        // WATCHDOG=1 about every second (half of 2 s), never 2 s apart.
        let pings = receive(&notify, Duration::from_millis(4500), |_| false)?;
        let times: Vec<Instant> = pings
            .iter()
            .filter(|(_, m)| m.lines().any(|l| l == "WATCHDOG=1"))
            .map(|(t, _)| *t)
            .collect();
        ensure!(
            times.len() >= 3,
            "{} WATCHDOG=1 in 4.5 s, want >= 3: {pings:?}\n{}",
            times.len(),
            agent.logs(40)
        );
        for w in times.windows(2) {
            let gap = w[1].duration_since(w[0]);
            ensure!(
                gap >= Duration::from_millis(700) && gap < Duration::from_millis(1800),
                "WATCHDOG=1 gap {gap:?} (want about 1 s)"
            );
        }
        let st = agent.stop(libc::SIGTERM, Duration::from_secs(5));
        ensure!(st.success(), "agent exit {st}\n{}", agent.logs(40));
        let msgs = receive(&notify, Duration::from_secs(2), |m| has(m, "STOPPING=1"))?;
        ensure!(has(&msgs, "STOPPING=1"), "no STOPPING=1: {msgs:?}");
        drop(agent);

        // Without WATCHDOG_USEC: READY=1, and no pings.
        let mut agent = start_agent(&net, dir.path(), "agent-nowd", &notify_path, None)?;
        let msgs = receive(&notify, READY_TIMEOUT, |m| has(m, "READY=1"))?;
        ensure!(
            has(&msgs, "READY=1"),
            "no READY=1: {msgs:?}\n{}",
            agent.logs(60)
        );
        let later = receive(&notify, Duration::from_millis(2500), |_| false)?;
        ensure!(
            !has(&msgs, "WATCHDOG=1") && !has(&later, "WATCHDOG=1"),
            "WATCHDOG=1 without a watchdog: {msgs:?} {later:?}"
        );
        agent.stop(libc::SIGTERM, Duration::from_secs(5));
        Ok(())
    };
    if let Err(e) = run() {
        panic!("sd_notify_ready_watchdog_and_stopping: {e:?}");
    }
}
