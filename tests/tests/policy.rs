//! The per-peer and per-prefix policy end to end, against `openssl s_server`
//! in the server namespace. The attacker is the client namespace; benign
//! clients and a prefix of attackers live in a third namespace behind it
//! ([`SideNet`], `10.201.0.0/24`), so their packets cross the same veth and
//! TC program as the attacker's.
//!
//! - Ban with escalation: `handshakes_per_10s = 20`, action `ban`, `ban_ttl
//!   = "3s"`. A flood of up to 60 quick `s_client` connections is banned
//!   (`ban` event, `hsmon bans` lists it with `added_by` `policy`, a TCP
//!   connect of the attacker times out: its SYN is dropped) while a benign
//!   client completes 20 handshakes in its own namespace during the attack,
//!   some of them (by their wall-clock times) while the ban is in force;
//!   after the TTL the attacker connects again (not before the ban ends); a
//!   second flood gets the escalated TTL (12 s). The kernel counted the drops as
//!   `ban_drops_policy`.
//! - `dry_run = true`: a `would_ban` event, no ban listed, connects succeed.
//! - Allowlisted attacker (`--allow` its address): the flood runs to its end,
//!   a `not_banned_allowlisted` event, nothing banned, and `hsmon bans add`
//!   of the address fails naming the allowlist.
//! - Prefix: per-peer rules off, `[prefix] handshakes_per_10s = 15`, action
//!   `ban`, `ban_ttl = "30s"`. Three addresses of `10.201.0.0/24` make 6 handshakes each: the
//!   prefix is banned as one CIDR (all three addresses time out), the
//!   attacker namespace's address outside it still connects. The same flood
//!   from the client's own /24, which holds the server's address, is
//!   `not_banned_allowlisted`.
//! - `hsmon config check`: a good file (exit 0, "ok"), an unknown key (exit 1,
//!   the key and its line named), a missing file (exit 1).

use anyhow::{bail, ensure, Context, Result};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tests::{
    cmd,
    decisions::{decisions, policy_args, wait_decision},
    hsmon::hsmon_bin,
    netns::tcp_connects,
    openssl::{SServerOpts, TlsVersion},
    scenario::with_scenario_agent_args,
    side_net::SideNet,
    workdir::WorkDir,
    Scenario,
};

const PORT: u16 = 4460;
const FLOOD: usize = 60;
const BENIGN: usize = 20;

fn ban_policy(dry_run: bool) -> String {
    format!(
        "dry_run = {dry_run}\n[peer]\nhandshakes_per_10s = 20\n[action]\nhandshakes_per_10s = \"ban\"\nban_ttl = \"3s\"\n"
    )
}

/// Up to `n` sequential `s_client` handshakes run by `c` (a command in some
/// namespace), from `src` if given, stopping at the first one that fails (or
/// with `keep_going`, counting the ones that worked); returns how many
/// completed.
fn handshakes(
    mut c: Command,
    addr: SocketAddr,
    src: Option<IpAddr>,
    n: usize,
    keep_going: bool,
) -> Result<usize> {
    let bind = src.map(|a| format!("-bind {a}:0")).unwrap_or_default();
    let on_fail = if keep_going { "true" } else { "break" };
    let script = format!(
        "n=0; for i in $(seq {n}); do if timeout 2 openssl s_client -connect {addr} {bind} -tls1_2 </dev/null >/dev/null 2>&1; then n=$((n+1)); else {on_fail}; fi; done; echo $n"
    );
    c.arg("-c").arg(script);
    let out = cmd::run_ok(&mut c, Duration::from_secs(180)).context("the handshakes")?;
    out.trim()
        .parse()
        .with_context(|| format!("the handshake loop printed {out:?}"))
}

/// One TCP connect from namespace `ns` (from `src` if given); false when it
/// times out.
fn connects(ns: &str, src: Option<IpAddr>, dst: SocketAddr) -> Result<bool> {
    tcp_connects(ns, src, dst, Duration::from_millis(700), false)
}

/// Seconds since the Unix epoch, now.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn bans_json(sc: &Scenario) -> Result<Vec<serde_json::Value>> {
    let agent = sc.agent().context("no agent")?;
    let out = agent.cli(&["bans", "--json"])?;
    serde_json::from_str(&out).with_context(|| format!("hsmon bans --json: {out:?}"))
}

fn kernel_stat(sc: &Scenario, name: &str) -> Result<u64> {
    let v = sc.agent().context("no agent")?.stats_value()?;
    v["kernel"][name]
        .as_u64()
        .with_context(|| format!("no kernel.{name} in {v}"))
}

fn event_for<'a>(peer: IpAddr, action: &'a str) -> impl Fn(&serde_json::Value) -> bool + 'a {
    move |d| d["action"] == action && d["peer"] == peer.to_string()
}

fn work_args(name: &str, policy: &str) -> (WorkDir, Vec<String>) {
    let dir = WorkDir::new(name).unwrap_or_else(|e| panic!("{e:#}"));
    let args = policy_args(dir.path(), "hsmon.toml", policy).unwrap_or_else(|e| panic!("{e:#}"));
    (dir, args)
}

#[test]
fn handshake_flood_is_banned_benign_unaffected_ttl_escalates() {
    let (_dir, args) = work_args("policy-ban", &ban_policy(false));
    with_scenario_agent_args("policy-ban", &args, |sc| {
        let addr = sc.server_addr(false, PORT);
        let _srv = sc.s_server(&SServerOpts::new(addr).version(TlsVersion::Tls12))?;
        let side = SideNet::attach(&sc.net, "ben", 0)?;
        let attacker = sc.net.client_ip(false);

        // The benign client runs alongside the flood.
        let benign_cmd = side.cmd("bash");
        let benign = std::thread::spawn(move || {
            // Paced so the 20 handshakes span the ban (about 6 s); one
            // line per completed handshake with its wall-clock time.
            let mut c = benign_cmd;
            let script = format!(
                "for i in $(seq {BENIGN}); do if timeout 2 openssl s_client -connect {addr} -tls1_2 </dev/null >/dev/null 2>&1; then echo \"ok $(date +%s.%N)\"; fi; sleep 0.25; done"
            );
            c.arg("-c").arg(script);
            cmd::run_ok(&mut c, Duration::from_secs(120))
        });
        let ran = handshakes(sc.net.client_cmd("bash"), addr, None, FLOOD, false)?;
        let agent = sc.agent().context("no agent")?;
        let ev = wait_decision(
            agent,
            "ban",
            Duration::from_secs(5),
            event_for(attacker, "ban"),
        )?;
        ensure!(ev["rule"] == "handshakes_per_10s", "{ev}");
        ensure!(ev["dry_run"] == false && ev["ttl_s"] == 3, "{ev}");
        ensure!(
            ran < FLOOD,
            "the flood was never stopped ({ran} handshakes)"
        );
        let bans = bans_json(sc)?;
        // When the kernel stops dropping (the flood loop noticed the ban
        // only after its last handshake timed out).
        let left = bans
            .iter()
            .find(|b| b["cidr"] == format!("{attacker}/32"))
            .and_then(|b| b["expires_in_ms"].as_u64())
            .context("the ban's expires_in_ms")?;
        let ends_at = Instant::now() + Duration::from_millis(left);
        let ends_wall = unix_now() + left as f64 / 1000.0;
        ensure!(
            bans.iter().any(|b| b["cidr"] == format!("{attacker}/32")
                && b["added_by"] == "policy"
                && b["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("handshakes_per_10s"))),
            "bans: {bans:?}"
        );
        ensure!(
            !connects(&sc.net.client_ns, None, addr)?,
            "the attacker connected during the ban"
        );
        ensure!(
            kernel_stat(sc, "ban_drops_policy")? > 0,
            "no ban_drops_policy"
        );
        ensure!(
            kernel_stat(sc, "ban_drops_manual")? == 0,
            "policy drops counted as manual"
        );

        // After the TTL the attacker is back, not before.
        let deadline = ends_at + Duration::from_secs(5);
        let back = loop {
            if connects(&sc.net.client_ns, None, addr)? {
                break Instant::now();
            }
            if Instant::now() >= deadline {
                bail!("the attacker could not connect 5 s after its ban ended");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        ensure!(
            back + Duration::from_millis(300) >= ends_at,
            "back {:?} before the ban's end",
            ends_at.duration_since(back)
        );
        eprintln!(
            "attacker connects again {:?} after the ban's end",
            back.saturating_duration_since(ends_at)
        );

        let out = benign
            .join()
            .map_err(|_| anyhow::anyhow!("the benign thread panicked"))??;
        let times: Vec<f64> = out
            .lines()
            .filter_map(|l| l.strip_prefix("ok "))
            .map(|t| t.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .with_context(|| format!("benign printed {out:?}"))?;
        ensure!(
            times.len() == BENIGN,
            "the benign client completed {} of {BENIGN} handshakes",
            times.len()
        );
        let during = times
            .iter()
            .filter(|t| **t >= ends_wall - 3.0 && **t < ends_wall)
            .count();
        eprintln!("benign handshakes completed while the attacker was banned: {during}");
        ensure!(during > 0, "no benign handshake fell inside the ban");

        // A repeat offence, once the first flood left the 10 s window: the
        // escalated TTL (3 s x 4).
        let drained = Instant::now() + Duration::from_secs(15);
        loop {
            let peers: Vec<serde_json::Value> =
                serde_json::from_str(&agent.cli(&["peers", "--json"])?)?;
            let n = peers
                .iter()
                .find(|p| p["peer"] == attacker.to_string())
                .and_then(|p| p["handshakes_10s"].as_u64())
                .unwrap_or(0);
            if n <= 20 {
                break;
            }
            ensure!(
                Instant::now() < drained,
                "the handshake window never drained: {peers:?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        let n_before = decisions(agent)?.len();
        let _ = handshakes(sc.net.client_cmd("bash"), addr, None, FLOOD, false)?;
        let ev2 = wait_decision(agent, "second ban", Duration::from_secs(5), |d| {
            d["action"] == "ban" && d["peer"] == attacker.to_string() && d["ttl_s"] != 3
        })?;
        ensure!(ev2["ttl_s"] == 12, "{ev2}");
        ensure!(decisions(agent)?.len() > n_before, "no new decision");
        let peers = agent.cli(&["peers", "--json"])?;
        let peers: Vec<serde_json::Value> = serde_json::from_str(&peers)?;
        ensure!(
            peers
                .iter()
                .any(|p| p["peer"] == attacker.to_string() && p["bans_24h"] == 2),
            "peers: {peers:?}"
        );
        Ok(())
    });
}

#[test]
fn handshake_flood_dry_run_only_reports() {
    let (_dir, args) = work_args("policy-dry-run", &ban_policy(true));
    with_scenario_agent_args("policy-dry-run", &args, |sc| {
        let addr = sc.server_addr(false, PORT);
        let _srv = sc.s_server(&SServerOpts::new(addr).version(TlsVersion::Tls12))?;
        let client = sc.net.client_ip(false);
        let ran = handshakes(sc.net.client_cmd("bash"), addr, None, FLOOD, false)?;
        ensure!(
            ran == FLOOD,
            "dry-run: only {ran} of {FLOOD} handshakes ran"
        );
        let agent = sc.agent().context("no agent")?;
        let ev = wait_decision(
            agent,
            "would_ban",
            Duration::from_secs(5),
            event_for(client, "would_ban"),
        )?;
        ensure!(ev["dry_run"] == true && ev["ttl_s"] == 3, "{ev}");
        ensure!(bans_json(sc)?.is_empty(), "dry-run banned something");
        ensure!(
            connects(&sc.net.client_ns, None, addr)?,
            "dry-run: a connect failed"
        );
        ensure!(
            kernel_stat(sc, "ban_drops")? == 0,
            "dry-run dropped packets"
        );
        let peers = agent.cli(&["peers", "--json"])?;
        ensure!(peers.contains(&client.to_string()), "peers: {peers}");
        let status: serde_json::Value = serde_json::from_str(&agent.cli(&["status", "--json"])?)?;
        ensure!(status["policy"]["dry_run"] == true, "status: {status}");
        let text = agent.cli(&["status"])?;
        ensure!(text.contains("dry-run:      on"), "status: {text}");
        Ok(())
    });
}

#[test]
fn allowlisted_attacker_is_never_banned() {
    let (_dir, mut args) = work_args("policy-allow", &ban_policy(false));
    // The client namespace's address is only known inside the scenario; the
    // whole client /30 block range of the harness is allowlisted instead.
    args.extend(["--allow".to_owned(), "10.200.0.0/16".to_owned()]);
    with_scenario_agent_args("policy-allow", &args, |sc| {
        let addr = sc.server_addr(false, PORT);
        let _srv = sc.s_server(&SServerOpts::new(addr).version(TlsVersion::Tls12))?;
        let client = sc.net.client_ip(false);
        let ran = handshakes(sc.net.client_cmd("bash"), addr, None, FLOOD, false)?;
        ensure!(
            ran == FLOOD,
            "only {ran} of {FLOOD} handshakes: the allowlisted client was stopped"
        );
        let agent = sc.agent().context("no agent")?;
        let ev = wait_decision(
            agent,
            "not_banned_allowlisted",
            Duration::from_secs(5),
            event_for(client, "not_banned_allowlisted"),
        )?;
        ensure!(ev.get("ttl_s").is_none(), "{ev}");
        ensure!(
            bans_json(sc)?.is_empty(),
            "an allowlisted address was banned"
        );
        ensure!(connects(&sc.net.client_ns, None, addr)?, "a connect failed");
        let mut c = Command::new(hsmon_bin());
        c.args([
            "bans",
            "add",
            &client.to_string(),
            "--ttl",
            "1m",
            "--socket",
        ])
        .arg(&agent.socket);
        let out = cmd::output_within(&mut c, Duration::from_secs(10))?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.code() == Some(1) && err.contains("allowlist"),
            "`hsmon bans add {client}`: {:?} {err}",
            out.status
        );
        ensure!(
            bans_json(sc)?.is_empty(),
            "bans add of an allowlisted address went through"
        );
        Ok(())
    });
}

#[test]
fn prefix_flood_bans_the_prefix() {
    let (_dir, args) = work_args(
        "policy-prefix",
        "[peer]\nhandshakes_per_10s = 0\nrenegotiations_per_minute = 0\n[prefix]\nv4_len = 24\nhandshakes_per_10s = 15\n[action]\nprefix_handshakes_per_10s = \"ban\"\nban_ttl = \"30s\"\n",
    );
    with_scenario_agent_args("policy-prefix", &args, |sc| {
        let addr = sc.server_addr(false, PORT);
        let _srv = sc.s_server(&SServerOpts::new(addr).version(TlsVersion::Tls12))?;
        let side = SideNet::attach(&sc.net, "pfx", 0)?;
        let members = [
            IpAddr::V4(side.ip),
            IpAddr::V4(side.add_addr(3)?),
            IpAddr::V4(side.add_addr(4)?),
        ];
        let agent = sc.agent().context("no agent")?;

        // The client's own /24 holds the server's address: never banned.
        let ran = handshakes(sc.net.client_cmd("bash"), addr, None, 18, false)?;
        ensure!(ran == 18, "client flood: {ran}");
        let own = wait_decision(
            agent,
            "prefix decision for the client /24",
            Duration::from_secs(5),
            |d| {
                d["rule"] == "prefix_handshakes_per_10s"
                    && d["peer"] == sc.net.client_ip(false).to_string()
            },
        )?;
        ensure!(own["action"] == "not_banned_allowlisted", "{own}");

        // Three addresses of 10.201.0.0/24, 6 handshakes each: 18 > 15.
        let mut total = 0;
        for m in members {
            total += handshakes(side.cmd("bash"), addr, Some(m), 6, true)?;
        }
        eprintln!("prefix members completed {total} handshakes");
        let d = wait_decision(agent, "prefix ban", Duration::from_secs(5), |d| {
            d["rule"] == "prefix_handshakes_per_10s" && d["action"] == "ban"
        })?;
        ensure!(d["prefix"] == "10.201.0.0/24", "{d}");
        ensure!(d["ttl_s"] == 30, "{d}");
        ensure!(
            d["counts"]["handshakes_10s"]
                .as_u64()
                .is_some_and(|n| n > 15),
            "{d}"
        );
        let bans = bans_json(sc)?;
        ensure!(
            bans.iter()
                .any(|b| b["cidr"] == "10.201.0.0/24" && b["added_by"] == "policy"),
            "bans: {bans:?}"
        );
        for m in members {
            ensure!(
                !connects(&side.ns, Some(m), addr)?,
                "{m} connected during the prefix ban"
            );
        }
        ensure!(
            connects(&sc.net.client_ns, None, addr)?,
            "an address outside the prefix was dropped"
        );
        Ok(())
    });
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
        std::fs::write(
            &good,
            "[peer]\nhandshakes_per_10s = 20\n[limits]\nhandshake_timeout = \"5s\"\n[prefix]\nv4_len = 16\n",
        )?;
        let (code, out, err) = check(&good)?;
        ensure!(code == Some(0) && out == "ok\n", "{code:?} {out} {err}");

        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "dry_run = true\n[peer]\nhandshakez_per_10s = 20\n")?;
        let (code, _, err) = check(&bad)?;
        ensure!(code == Some(1), "{code:?} {err}");
        ensure!(err.contains("handshakez_per_10s"), "{err}");
        ensure!(err.contains("bad.toml:3:1"), "{err}");

        let bad_prefix = dir.join("prefix.toml");
        std::fs::write(&bad_prefix, "[prefix]\nv4_len = 33\n")?;
        let (code, _, err) = check(&bad_prefix)?;
        ensure!(
            code == Some(1) && err.contains("prefix.toml:2"),
            "{code:?} {err}"
        );

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
