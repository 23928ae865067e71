//! The per-peer policy end to end: a handshake flood from the client
//! namespace (up to 60 quick `openssl s_client` connections) against
//! `openssl s_server`, with a policy file setting `handshakes_per_10s = 20`,
//! action `ban`, `ban_ttl = "3s"`.
//!
//! - Enforcing: the agent prints a `ban` event for the client address,
//!   `hsmon bans` lists it, and a TCP connect from the client fails during
//!   the ban.
//! - `dry_run = true`: a `would_ban` event, no ban listed, connects succeed.
//! - `hsmon config check`: a good file (exit 0, "ok"), an unknown key (exit 1,
//!   the key and its line named), a missing file (exit 1).

use anyhow::{bail, ensure, Context, Result};
use socket2::{Domain, SockAddr, Socket, Type};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tests::{
    cmd,
    hsmon::hsmon_bin,
    netns::in_netns,
    openssl::{SServerOpts, TlsVersion},
    scenario::with_scenario_agent_args,
    workdir::WorkDir,
    Scenario,
};

const PORT: u16 = 4460;
const FLOOD: usize = 60;

fn policy_file(dir: &WorkDir, dry_run: bool) -> Result<String> {
    let path = dir.join("hsmon.toml");
    let text = format!(
        "dry_run = {dry_run}\n[peer]\nhandshakes_per_10s = 20\n[action]\nhandshakes_per_10s = \"ban\"\nban_ttl = \"3s\"\n"
    );
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path.display().to_string())
}

/// Up to `FLOOD` sequential `s_client` handshakes from the client namespace,
/// stopping at the first one that fails (the ban); returns how many ran.
fn flood(sc: &Scenario, addr: SocketAddr) -> Result<usize> {
    let script = format!(
        "n=0; for i in $(seq {FLOOD}); do timeout 2 openssl s_client -connect {addr} -tls1_2 </dev/null >/dev/null 2>&1 || break; n=$((n+1)); done; echo $n"
    );
    let mut c = sc.net.client_cmd("bash");
    c.arg("-c").arg(script);
    let out = cmd::run_ok(&mut c, Duration::from_secs(120)).context("the flood")?;
    out.trim()
        .parse()
        .with_context(|| format!("the flood printed {out:?}"))
}

/// One TCP connect from the client namespace; false when it times out.
fn connects(sc: &Scenario, dst: SocketAddr) -> Result<bool> {
    in_netns(&sc.net.client_ns, move || -> Result<bool> {
        let s = Socket::new(Domain::for_address(dst), Type::STREAM, None)
            .context("creating a socket")?;
        match s.connect_timeout(&SockAddr::from(dst), Duration::from_millis(700)) {
            Ok(()) => Ok(true),
            Err(e)
                if e.kind() == std::io::ErrorKind::TimedOut
                    || e.kind() == std::io::ErrorKind::WouldBlock =>
            {
                Ok(false)
            }
            Err(e) => Err(e).with_context(|| format!("connecting to {dst}")),
        }
    })?
}

/// Waits for a decision event with `action` for `peer` on the agent's stdout.
fn wait_event(sc: &Scenario, peer: IpAddr, action: &str) -> Result<serde_json::Value> {
    let agent = sc.agent().context("no agent")?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = agent.stdout();
        for line in out.lines() {
            let v: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("event line {line:?}"))?;
            if v["action"] == action && v["peer"] == peer.to_string() {
                for key in ["time", "rule", "peer", "counts", "action", "dry_run"] {
                    ensure!(v.get(key).is_some(), "{key} missing in {v}");
                }
                ensure!(v["rule"] == "handshakes_per_10s", "{v}");
                return Ok(v);
            }
        }
        if Instant::now() >= deadline {
            bail!("no {action} event for {peer}; agent stdout:\n{out}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn bans_json(sc: &Scenario) -> Result<Vec<serde_json::Value>> {
    let agent = sc.agent().context("no agent")?;
    let out = agent.cli(&["bans", "--json"])?;
    serde_json::from_str(&out).with_context(|| format!("hsmon bans --json: {out:?}"))
}

fn run_flood_scenario(name: &str, dry_run: bool) {
    let dir = match WorkDir::new(name) {
        Ok(d) => d,
        Err(e) => panic!("{e:#}"),
    };
    let config = match policy_file(&dir, dry_run) {
        Ok(c) => c,
        Err(e) => panic!("{e:#}"),
    };
    let args = vec!["--config".to_owned(), config];
    with_scenario_agent_args(name, &args, |sc| {
        let addr = sc.server_addr(false, PORT);
        let _srv = sc.s_server(&SServerOpts::new(addr).version(TlsVersion::Tls12))?;
        let client = sc.net.client_ip(false);
        let ran = flood(sc, addr)?;
        if dry_run {
            ensure!(
                ran == FLOOD,
                "dry-run: only {ran} of {FLOOD} handshakes ran"
            );
            let ev = wait_event(sc, client, "would_ban")?;
            ensure!(ev["dry_run"] == true && ev["ttl_s"] == 3, "{ev}");
            ensure!(bans_json(sc)?.is_empty(), "dry-run banned something");
            ensure!(connects(sc, addr)?, "dry-run: a connect failed");
            let peers = sc.agent().context("no agent")?.cli(&["peers", "--json"])?;
            ensure!(peers.contains(&client.to_string()), "peers: {peers}");
        } else {
            let ev = wait_event(sc, client, "ban")?;
            ensure!(ev["dry_run"] == false && ev["ttl_s"] == 3, "{ev}");
            let bans = bans_json(sc)?;
            ensure!(
                bans.iter().any(|b| b["cidr"] == format!("{client}/32")
                    && b["reason"]
                        .as_str()
                        .is_some_and(|r| r.contains("handshakes_per_10s"))),
                "bans: {bans:?}"
            );
            ensure!(!connects(sc, addr)?, "a connect succeeded during the ban");
            ensure!(ran < FLOOD, "the flood was never stopped");
        }
        Ok(())
    });
}

#[test]
fn handshake_flood_is_banned() {
    run_flood_scenario("policy-ban", false);
}

#[test]
fn handshake_flood_dry_run_only_reports() {
    run_flood_scenario("policy-dry-run", true);
}

fn check(path: &Path) -> Result<(Option<i32>, String, String)> {
    let mut c = Command::new(hsmon_bin());
    c.arg("config").arg("check").arg(path);
    let out = cmd::output_within(&mut c, Duration::from_secs(10))?;
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn config_check() {
    let run = || -> Result<()> {
        let dir = WorkDir::new("config-check")?;
        let good = dir.join("good.toml");
        std::fs::write(&good, "[peer]\nhandshakes_per_10s = 20\n")?;
        let (code, out, err) = check(&good)?;
        ensure!(code == Some(0) && out == "ok\n", "{code:?} {out} {err}");

        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "dry_run = true\n[peer]\nhandshakez_per_10s = 20\n")?;
        let (code, _, err) = check(&bad)?;
        ensure!(code == Some(1), "{code:?} {err}");
        ensure!(err.contains("handshakez_per_10s"), "{err}");
        ensure!(err.contains("bad.toml:3:1"), "{err}");

        let (code, _, err) = check(&dir.join("missing.toml"))?;
        ensure!(
            code == Some(1) && err.contains("missing.toml"),
            "{code:?} {err}"
        );
        Ok(())
    };
    if let Err(e) = run() {
        panic!("{e:#}");
    }
}
