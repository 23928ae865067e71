//! `hsmon bans` end to end: the agent on the server namespace's veth, plain
//! TCP connects from the client namespace.
//!
//! A ban on the client's addresses (TTL 3 s) makes its connects time out
//! (the SYN is dropped) while a second client address is unaffected; after
//! the TTL the client connects again and the ban is no longer listed. The
//! allowlist (loopback, the agent host's own addresses) refuses bans with
//! exit status 1; bad arguments exit with 2; `bans del` lifts a ban at once.

use anyhow::{bail, ensure, Context, Result};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener};
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use tests::{
    cmd,
    hsmon::{hsmon_bin, BanEntry},
    netns::{in_netns, ip, tcp_connects},
    with_scenario, Scenario,
};

/// The port the test's listeners use (nothing else listens in the namespaces).
const PORT: u16 = 5901;
/// The TTL of the bans under test.
const TTL: Duration = Duration::from_secs(3);
/// How long a connect may take before it counts as dropped.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(700);

/// Runs `hsmon ARGS --socket SOCKET` (10 s at most); any exit status.
fn hsmon(sc: &Scenario, args: &[&str]) -> Result<Output> {
    let agent = sc.agent().context("the scenario has no agent")?;
    let mut c = Command::new(hsmon_bin());
    c.args(args).arg("--socket").arg(&agent.socket);
    cmd::output_within(&mut c, Duration::from_secs(10))
}

/// Like [`hsmon`], failing unless the exit status is `code`; returns stdout.
fn hsmon_exit(sc: &Scenario, args: &[&str], code: i32) -> Result<(String, String)> {
    let out = hsmon(sc, args)?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        out.status.code() == Some(code),
        "`hsmon {}` exited with {} instead of {code}\nstdout: {stdout}\nstderr: {stderr}",
        args.join(" "),
        out.status
    );
    Ok((stdout, stderr))
}

fn list(sc: &Scenario) -> Result<Vec<BanEntry>> {
    let (out, _) = hsmon_exit(sc, &["bans", "--json"], 0)?;
    serde_json::from_str(&out).with_context(|| format!("`hsmon bans --json` printed {out:?}"))
}

/// One TCP connect from the client namespace to `dst` from `src` (see
/// [`tcp_connects`]).
fn connects(sc: &Scenario, src: IpAddr, dst: SocketAddr, timeout: Duration) -> Result<bool> {
    tcp_connects(&sc.net.client_ns, Some(src), dst, timeout, false)
}

/// Polls until `src` connects to `dst`; returns when (bounded by `within`).
fn wait_connects(sc: &Scenario, src: IpAddr, dst: SocketAddr, within: Duration) -> Result<Instant> {
    let deadline = Instant::now() + within;
    loop {
        if connects(sc, src, dst, Duration::from_millis(400))? {
            return Ok(Instant::now());
        }
        if Instant::now() >= deadline {
            bail!("{src} could not connect to {dst} within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Listeners in the server namespace on both server addresses. Connections
/// complete in the kernel's accept queue; nothing needs to accept them.
fn listen(sc: &Scenario) -> Result<Vec<TcpListener>> {
    let mut out = Vec::new();
    for ipv6 in [false, true] {
        let addr = sc.server_addr(ipv6, PORT);
        let l = in_netns(&sc.net.server_ns, move || TcpListener::bind(addr))?
            .with_context(|| format!("listening on {addr}"))?;
        out.push(l);
    }
    Ok(out)
}

#[test]
fn bans_drop_a_client_until_the_ttl_ends() {
    with_scenario("bans_ttl", |sc| {
        let _listeners = listen(sc)?;
        let v4_dst = sc.server_addr(false, PORT);
        let v6_dst = sc.server_addr(true, PORT);
        let client_v4 = sc.net.client_ip(false);
        let client_v6 = sc.net.client_ip(true);
        // A second client address, in the client's /64.
        let other_v6 = {
            let s = sc.net.client_v6.segments();
            Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 3)
        };
        ip(&[
            "-n",
            &sc.net.client_ns,
            "addr",
            "add",
            &format!("{other_v6}/64"),
            "dev",
            &sc.net.client_if,
            "nodad",
        ])?;
        let other_v6 = IpAddr::V6(other_v6);

        for src in [client_v4, client_v6, other_v6] {
            let dst = if src.is_ipv4() { v4_dst } else { v6_dst };
            wait_connects(sc, src, dst, Duration::from_secs(5)).context("before any ban")?;
        }
        assert!(list(sc)?.is_empty(), "no bans at start");

        let ttl = format!("{}s", TTL.as_secs());
        let v6_cidr = format!("{client_v6}/128");
        let added = Instant::now();
        let (out, _) = hsmon_exit(
            sc,
            &[
                "bans",
                "add",
                &client_v4.to_string(),
                "--ttl",
                &ttl,
                "--reason",
                "test",
            ],
            0,
        )?;
        assert!(
            out.contains(&format!("{client_v4}/32")),
            "add printed {out:?}"
        );
        hsmon_exit(
            sc,
            &["bans", "add", &v6_cidr, "--ttl", &ttl, "--reason", "test"],
            0,
        )?;

        // Listed while active, with the reason.
        let bans = list(sc)?;
        assert_eq!(bans.len(), 2, "{bans:?}");
        assert_eq!(bans[0].cidr, format!("{client_v4}/32"));
        assert_eq!(bans[1].cidr, v6_cidr);
        for b in &bans {
            assert_eq!(b.reason, "test", "{b:?}");
            assert_eq!(b.added_by, "manual", "{b:?}");
            assert!(b.expires_in_ms > 0 && b.expires_in_ms <= 3000, "{b:?}");
        }
        let (table, _) = hsmon_exit(sc, &["bans"], 0)?;
        assert!(table.starts_with("CIDR"), "{table}");
        assert!(
            table.contains(&format!("{client_v4}/32")) && table.contains("test"),
            "{table}"
        );

        // The banned addresses' connects time out; the other address connects.
        assert!(
            !connects(sc, client_v4, v4_dst, CONNECT_TIMEOUT)?,
            "a banned IPv4 client connected"
        );
        assert!(
            !connects(sc, client_v6, v6_dst, CONNECT_TIMEOUT)?,
            "a banned IPv6 client connected"
        );
        assert!(
            connects(sc, other_v6, v6_dst, Duration::from_secs(2))?,
            "an address that is not banned could not connect"
        );
        let during = added.elapsed();
        assert!(
            during < TTL,
            "the checks took {during:?}, longer than the TTL"
        );

        // After the TTL: connects work again, and the bans are gone.
        let back = wait_connects(sc, client_v4, v4_dst, TTL + Duration::from_secs(8))?;
        let after = back.duration_since(added);
        assert!(
            after >= TTL - Duration::from_millis(300),
            "the ban ended after {after:?}, before its TTL"
        );
        wait_connects(sc, client_v6, v6_dst, Duration::from_secs(8))?;
        assert!(list(sc)?.is_empty(), "bans listed after their TTL");
        let (table, _) = hsmon_exit(sc, &["bans"], 0)?;
        assert_eq!(table, "no bans\n");

        // `bans del` lifts a ban at once.
        hsmon_exit(
            sc,
            &[
                "bans",
                "add",
                &client_v4.to_string(),
                "--ttl",
                "1m",
                "--reason",
                "del",
            ],
            0,
        )?;
        assert!(
            !connects(sc, client_v4, v4_dst, CONNECT_TIMEOUT)?,
            "ban not enforced"
        );
        hsmon_exit(sc, &["bans", "del", &client_v4.to_string()], 0)?;
        assert!(
            connects(sc, client_v4, v4_dst, Duration::from_secs(2))?,
            "ban not lifted"
        );
        let (_, err) = hsmon_exit(sc, &["bans", "del", &client_v4.to_string()], 1)?;
        assert!(
            err.contains("hsmon: error:") && err.contains("not banned"),
            "{err}"
        );
        assert!(list(sc)?.is_empty());
        Ok(())
    });
}

#[test]
fn allowlisted_and_bad_bans_are_refused() {
    with_scenario("bans_refused", |sc| {
        let server_v4 = sc.net.server_v4.to_string();
        let server_v6 = sc.net.server_v6.to_string();
        let client_net = format!("{}/24", sc.net.client_v4);
        // Loopback, the agent host's own addresses, and a prefix that covers one.
        for target in ["127.0.0.1", "::1", &server_v4, &server_v6, &client_net] {
            let (_, err) = hsmon_exit(sc, &["bans", "add", target], 1)?;
            assert!(
                err.starts_with("hsmon: error:") && err.contains("allowlisted"),
                "{target}: {err}"
            );
        }
        // Bad arguments: usage errors, nothing sent to the agent.
        for args in [
            &["bans", "add", "10.0.0.0/0"][..],
            &["bans", "add", "not-an-address"],
            &["bans", "add", "10.0.0.1/33"],
            &["bans", "add", "10.0.0.1", "--ttl", "0s"],
            &["bans", "add", "10.0.0.1", "--ttl", "-3s"],
            &["bans", "add", "10.0.0.1", "--ttl", "25h"],
        ] {
            hsmon_exit(sc, args, 2)?;
        }
        assert!(list(sc)?.is_empty(), "a refused ban was listed");
        Ok(())
    });
}

/// `hsmon bans load FILE`: 100,000 prefixes (both families) in one
/// request, all listed afterwards; an allowlisted line is refused by name
/// (exit status 1) without stopping the others; a bad line is an error
/// naming FILE:LINE before anything is sent.
#[test]
fn a_ban_list_file_loads_in_one_request() {
    with_scenario("bans_load", |sc| {
        const PER_FAMILY: u32 = 50_000;
        let mut text = String::from("# test ban list\n");
        for i in 0..PER_FAMILY {
            let v4 = std::net::Ipv4Addr::from(0x6440_0000u32 + i); // 100.64.0.0/10
            let v6 = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, (i >> 16) as u16, i as u16);
            text.push_str(&format!("{v4}\n{v6}\n"));
        }
        text.push_str("127.0.0.1  # allowlisted: refused\n");
        let file = sc.dir.path().join("bans.txt");
        std::fs::write(&file, &text).context("writing the ban list")?;
        let path = file.display().to_string();

        let started = Instant::now();
        let (out, err) = hsmon_exit(
            sc,
            &["bans", "load", &path, "--ttl", "1h", "--reason", "feed"],
            1,
        )?;
        let took = started.elapsed();
        println!("100,000 bans loaded through `hsmon bans load` in {took:?}");
        let want = format!(
            "banned {} of {} prefixes",
            2 * PER_FAMILY,
            2 * PER_FAMILY + 1
        );
        assert!(out.starts_with(&want), "{out}");
        assert!(
            out.contains("refused 127.0.0.1/32: ") && out.contains("allowlisted"),
            "{out}"
        );
        assert!(err.contains("1 of the bans were refused"), "{err}");

        let bans = list(sc)?;
        assert_eq!(bans.len(), 2 * PER_FAMILY as usize);
        assert!(bans
            .iter()
            .all(|b| b.reason == "feed" && b.added_by == "manual"));
        assert!(bans.iter().any(|b| b.cidr == "100.64.0.0/32"));
        assert!(bans.iter().any(|b| b.cidr == "2001:db8:ffff::/128"));
        assert!(bans.iter().all(|b| b.expires_in_ms > 3_500_000), "TTL 1h");

        // A bad line: nothing is sent, the error names the line.
        std::fs::write(&file, "192.0.2.1\nnot-an-address\n").context("writing")?;
        let (_, err) = hsmon_exit(sc, &["bans", "load", &path], 1)?;
        assert!(err.contains(&format!("{path}:2: ")), "{err}");
        assert!(
            !list(sc)?.iter().any(|b| b.cidr == "192.0.2.1/32"),
            "nothing sent"
        );
        Ok(())
    });
}
