//! Malformed and awkward traffic: hsmon must never drop it, must count what
//! it can and mark what it cannot (`unsynced`), and must not fail.
//!
//! - A real TLS client (Python `ssl`) that sends every byte as its own TCP
//!   segment: its handshake is still counted exactly.
//! - Raw TCP streams through an echo server: random bytes, a ClientHello
//!   followed by garbage, a truncated record. Every byte sent comes back
//!   (nothing dropped), and hsmon's counts equal the user-space tracker's on
//!   the same bytes.
//! - Garbage to a real TLS server, then a real handshake, which is counted.
//! - Reordered and retransmitted segments: this kernel has no `sch_netem`
//!   (and no nftables/iptables), so they are crafted and run through the real
//!   TC program with `BPF_PROG_TEST_RUN`: every one passes, the gap is
//!   counted and the direction marked unsynced, as the user-space tracker
//!   says.

use std::time::Duration;

use monitor_common::testing::*;
use monitor_common::tracker::{step_bound, FlowState, CLIENT, DIR_UNSYNCED, SERVER};
use tests::hsmon::HsmonConn;
use tests::openssl::TlsVersion;
use tests::pyssl::PyTlsServer;
use tests::rawpeer::{random_bytes, send_writes, EchoServer};
use tests::rig::Rig;
use tests::test_run::{frame, TcHarness, TC_ACT_UNSPEC};
use tests::{require_root, tlsclient};

const TLS_PORT: u16 = 24435;
const ECHO_PORT: u16 = 27443;
const TIMEOUT: Duration = Duration::from_secs(30);

fn conn_for(conns: &[HsmonConn], port: u16) -> Option<&HsmonConn> {
    conns
        .iter()
        .find(|c| c.client_addr().is_ok_and(|a| a.port() == port))
}

/// No kernel counter whose name says "drop" moved.
fn assert_no_drops(rig: &Rig) {
    let stats = rig.agent.stats_value().expect("stats");
    let kernel = stats["kernel"].as_object().expect("stats.kernel");
    for (k, v) in kernel {
        if k.contains("drop") {
            assert_eq!(v.as_u64(), Some(0), "kernel counter {k}: {stats}");
        }
    }
}

/// A real TLS client whose first segment carries `first` bytes and every
/// later one byte, against a real TLS server: the handshake is counted
/// exactly.
fn bytewise(version: TlsVersion, want: &str, first: u64) {
    let mut rig = Rig::start(&format!("bytewise-{want}-{first}"), &[]).expect("set up");
    let addr = rig.server_addr(TLS_PORT);
    let srv = PyTlsServer::start(
        &rig.net,
        rig.dir.path(),
        &rig.cert,
        addr,
        Some(version),
        "pyserver",
    )
    .expect("start the TLS server");
    let mut client = tlsclient::start(
        &rig.net,
        rig.dir.path(),
        "bytewise",
        "bytewise",
        addr,
        &[300, first],
    )
    .expect("start the client");
    client
        .wait_for("its report", Duration::from_secs(60), |out, _| {
            out.contains("\"port\"")
        })
        .expect("the byte-per-segment client");
    let line = client
        .stdout()
        .lines()
        .find(|l| l.contains("\"port\""))
        .map(str::to_owned)
        .expect("report line");
    let r: serde_json::Value = serde_json::from_str(&line).expect("client JSON");
    let sent = r["sent"].as_u64().expect("sent");
    let segs = r["data_segs_out"].as_u64().expect("data_segs_out");
    let port = r["port"].as_u64().expect("port") as u16;
    assert_eq!(r["echo_ok"], true, "every byte echoed: {line}");
    assert_eq!(r["version"], want, "{line}");
    assert!(sent > 300, "{line}");
    assert!(
        segs >= sent - (first - 1),
        "each byte (but the first {first}) must have left as its own segment: {line}"
    );
    assert_eq!(tlsclient::server_handshakes(&srv), 1);
    let conns = rig
        .wait_conns("the connection closed", TIMEOUT, |cs| {
            conn_for(cs, port).is_some_and(|c| c.state == "closed")
        })
        .expect("hsmon's view");
    let c = conn_for(&conns, port).expect("listed");
    assert_eq!(c.client_hellos, 1, "{c:?}");
    assert_eq!(c.handshakes, 1, "{c:?}");
    assert!(!c.unsynced, "{c:?}");
    assert_eq!(c.tls_version.as_deref(), Some(&want[4..]), "{c:?}");
    assert_no_drops(&rig);
    rig.assert_agent_healthy();
}

/// The ClientHello's record header and handshake type (6 bytes) in the
/// first segment, then one byte per segment for everything else.
#[test]
fn one_byte_per_segment_tls13_handshake_is_counted_exactly() {
    require_root!();
    bytewise(TlsVersion::Tls13, "TLSv1.3", 6);
}

/// As above, TLS 1.2 (the client's ClientKeyExchange, ChangeCipherSpec and
/// Finished one byte per segment too).
#[test]
fn one_byte_per_segment_tls12_handshake_is_counted_exactly() {
    require_root!();
    bytewise(TlsVersion::Tls12, "TLSv1.2", 6);
}

/// Every byte its own segment, the ClientHello's first bytes included: the
/// TC program creates the flow from a first segment that could begin a
/// ClientHello (here its first byte alone), so splitting the record header
/// does not escape tracking.
#[test]
fn every_byte_its_own_segment_handshake_is_counted_exactly() {
    require_root!();
    bytewise(TlsVersion::Tls13, "TLSv1.3", 1);
}

/// The user-space tracker on the same writes: each client write, then its
/// echo (the echo server answers each write before the next one is sent).
fn oracle(writes: &[Vec<u8>]) -> FlowState {
    let mut st = FlowState::new();
    let mut seq = [1000u32, 5000u32];
    for w in writes {
        for dir in [CLIENT, SERVER] {
            st.on_segment(dir, seq[dir], w.as_slice(), step_bound(w.len() as u32));
            seq[dir] = seq[dir].wrapping_add(w.len() as u32);
        }
    }
    st.finish();
    st
}

#[test]
fn random_garbage_and_truncated_records_pass_untouched() {
    require_root!();
    let mut rig = Rig::start("malformed-raw", &[]).expect("set up");
    let addr = rig.server_addr(ECHO_PORT);
    let ch = ClientHello::tls12().record();

    // 1. Random bytes (not starting like a TLS record): never tracked.
    let mut random = random_bytes(64 * 1024, 0x5eed);
    random[0] = b'G';
    let random_writes: Vec<Vec<u8>> = random.chunks(1400).map(<[u8]>::to_vec).collect();
    // 2. A ClientHello, then garbage where the next record header should be.
    let mut garbage = vec![0u8];
    garbage.extend(random_bytes(4000, 7));
    let garbage_writes = vec![ch.clone(), garbage];
    // 3. A ClientHello, then a record that promises 16,000 bytes and stops
    //    after 100 (the client closes).
    let mut truncated = vec![23u8, 0x03, 0x03, 0x3e, 0x80];
    truncated.extend(random_bytes(100, 9));
    let truncated_writes = vec![ch.clone(), truncated];

    let cases = [
        ("random", random_writes, Duration::ZERO),
        ("garbage", garbage_writes, Duration::from_millis(200)),
        ("truncated", truncated_writes, Duration::from_millis(200)),
    ];
    let server = EchoServer::start(&rig.net, addr, cases.len(), TIMEOUT).expect("echo server");
    let mut results = Vec::new();
    for (name, writes, gap) in &cases {
        let sent = send_writes(&rig.net, addr, writes.clone(), *gap, TIMEOUT)
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert!(!sent.reset, "{name}: the echo server reset the connection");
        assert_eq!(sent.received.len(), sent.sent.len(), "{name}: bytes echoed");
        assert!(sent.received == sent.sent, "{name}: echoed bytes differ");
        results.push((name, writes, sent));
    }
    let sizes = server.join().expect("echo server");
    for ((name, _, sent), got) in results.iter().zip(&sizes) {
        assert_eq!(*got, sent.sent.len(), "{name}: bytes the server received");
    }

    let ports: Vec<u16> = results.iter().map(|(_, _, s)| s.client.port()).collect();
    let conns = rig
        .wait_conns("the tracked connections closed", TIMEOUT, |cs| {
            ports[1..]
                .iter()
                .all(|p| conn_for(cs, *p).is_some_and(|c| c.state == "closed"))
        })
        .expect("hsmon's view");
    assert!(
        conn_for(&conns, ports[0]).is_none(),
        "random bytes must not be listed as TLS"
    );
    for (name, writes, sent) in &results[1..] {
        let c = conn_for(&conns, sent.client.port()).expect("listed");
        let want = oracle(writes);
        assert_eq!(
            u64::from(want.counters.client_hellos),
            c.client_hellos,
            "{name}: {c:?}"
        );
        assert_eq!(
            u64::from(want.counters.handshakes),
            c.handshakes,
            "{name}: {c:?}"
        );
        assert_eq!(want.unsynced(), c.unsynced, "{name}: {c:?}");
        assert_eq!(u64::from(want.counters.alerts), c.alerts, "{name}: {c:?}");
    }
    // The garbage case lost sync (a bad record header); the truncated one did not.
    assert!(conn_for(&conns, ports[1]).is_some_and(|c| c.unsynced));
    assert!(conn_for(&conns, ports[2]).is_some_and(|c| !c.unsynced));
    assert_no_drops(&rig);
    rig.assert_agent_healthy();
}

#[test]
fn garbage_to_a_tls_server_then_a_real_handshake_is_counted() {
    require_root!();
    let mut rig = Rig::start("malformed-tls", &[]).expect("set up");
    let addr = rig.server_addr(TLS_PORT);
    let srv = PyTlsServer::start(&rig.net, rig.dir.path(), &rig.cert, addr, None, "pyserver")
        .expect("start the TLS server");
    // A ClientHello header with a random body: the server refuses it.
    let mut bad = vec![22u8, 0x03, 0x01, 0x00, 0x80, 0x01, 0x00, 0x00, 0x7c];
    bad.extend(random_bytes(0x7c, 11));
    bad.extend(random_bytes(2000, 12));
    // The server answers with an alert and may reset the connection.
    let garbage = send_writes(&rig.net, addr, vec![bad], Duration::ZERO, TIMEOUT)
        .expect("garbage connection");
    let mut client = tlsclient::start(&rig.net, rig.dir.path(), "one", "burst", addr, &[1, 1])
        .expect("start the client");
    client
        .wait_for("DONE", TIMEOUT, |out, _| out.contains("DONE "))
        .expect("the real handshake");
    assert_eq!(tlsclient::done_counts(&client.stdout()), Some((1, 0)));
    let port = tlsclient::ports(&client.stdout(), "OK")[0];
    assert_eq!(tlsclient::server_handshakes(&srv), 1);
    let conns = rig
        .wait_conns("both connections closed", TIMEOUT, |cs| {
            [port, garbage.client.port()]
                .iter()
                .all(|p| conn_for(cs, *p).is_some_and(|c| c.state == "closed"))
        })
        .expect("hsmon's view");
    let good = conn_for(&conns, port).expect("listed");
    assert_eq!(good.handshakes, 1, "{good:?}");
    assert_eq!(good.client_hellos, 1, "{good:?}");
    assert!(!good.unsynced, "{good:?}");
    let bad = conn_for(&conns, garbage.client.port()).expect("listed");
    assert_eq!(bad.handshakes, 0, "{bad:?}");
    assert_no_drops(&rig);
    rig.assert_agent_healthy();
}

#[test]
fn reordered_and_retransmitted_segments_pass_and_lose_sync() {
    require_root!();
    let mut h = TcHarness::load().expect("load the TC program");
    let ends = [
        tests::packet::Endpoint {
            ip: "10.98.0.1".parse().expect("address"),
            port: 40002,
        },
        tests::packet::Endpoint {
            ip: "10.98.0.2".parse().expect("address"),
            port: 443,
        },
    ];
    let mut conv = Conversation::new();
    tls12_full(&mut conv);
    for _ in 0..6 {
        conv.client(app_data(300)).server(app_data(200));
    }
    // Client segments of 50 bytes; from the 8th on, each pair is swapped
    // (the later one arrives first) and every 3rd is sent twice.
    let base = conv.plan_sizes(|_| 50);
    let mut plan = Vec::new();
    let mut n_client = 0;
    let mut held: Option<Step> = None;
    for step in base {
        let client = matches!(step, Step::Seg { dir: CLIENT, .. });
        if client {
            n_client += 1;
        }
        if client && n_client >= 8 {
            match held.take() {
                None => {
                    held = Some(step);
                    continue;
                }
                Some(first) => {
                    plan.push(step);
                    plan.push(first);
                    if n_client % 3 == 0 {
                        plan.push(first);
                    }
                    continue;
                }
            }
        }
        if let Some(first) = held.take() {
            plan.push(first);
        }
        plan.push(step);
        if client && n_client % 3 == 0 {
            plan.push(step);
        }
    }
    if let Some(first) = held.take() {
        plan.push(first);
    }
    let mut user = Driver::new(&conv, [0x7fff_fff0, 77]);
    for step in &plan {
        let f = frame(ends, &user, *step);
        let verdict = h.run(&f).expect("BPF_PROG_TEST_RUN");
        assert_eq!(verdict, TC_ACT_UNSPEC, "segment {step:?} must pass");
        user.step(*step);
    }
    let kernel = h
        .flow(ends[CLIENT], ends[SERVER])
        .expect("read FLOWS")
        .expect("a flow");
    assert_eq!(kernel.tracker, user.state, "kernel = user-space tracker");
    assert_eq!(kernel.tracker.dirs[CLIENT].status, DIR_UNSYNCED);
    assert_eq!(kernel.tracker.counters.gaps, 1);
    assert!(kernel.tracker.counters.retransmits > 0);
    assert_eq!(
        kernel.tracker.counters.handshakes, 1,
        "counted before the reordering"
    );
}
