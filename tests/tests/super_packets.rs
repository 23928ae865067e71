//! GSO/GRO super-packets full of tiny records, through the real agent on a
//! veth pair (the TC programs see one skb of up to 64 KB per super-packet).
//!
//! - A 64 KB write of 13,099 empty application-data records after a
//!   ClientHello: the direction stays synced and every record is counted
//!   once; the burst crossed in at most 12 segments (so at least one carried
//!   more than 1,024 records: the old per-segment step budget).
//! - A write of 3,000 one-byte records followed by 6 renegotiation
//!   ClientHellos, with `--reneg-cap 3`: the ClientHellos are counted and
//!   the cap holds (the server never receives the segment that carries the
//!   4th), where the old budget marked the direction unsynced and let them
//!   all through.
//!
//! The peers are threads of the test (a client that pauses between writes
//! and a sink server that counts the bytes it receives); every wait is
//! bounded.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use monitor_common::testing::*;
use monitor_common::tracker::FlowState;
use tests::hsmon::HsmonConn;
use tests::netns::{spawn_in_netns, NetPair};
use tests::require_root;
use tests::rig::Rig;

const PORT: u16 = 27450;
const TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after each write, so that each write leaves on its own and the
/// counters can be read in between.
const PAUSE: Duration = Duration::from_millis(300);

/// The most whole 5-byte (empty) application-data records one 64 KB IPv4
/// packet can carry.
const MINIMAL_RECORDS: usize = (65_535 - 40) / 5;

/// A server in the server namespace that accepts one connection and reads
/// until EOF, a reset or `TIMEOUT`; returns the bytes received. With
/// `answer = (n, bytes)`, it writes `bytes` once it has received `n` bytes.
fn sink(
    net: &NetPair,
    addr: SocketAddr,
    answer: Option<(usize, Vec<u8>)>,
) -> Result<std::thread::JoinHandle<Result<Result<usize>>>> {
    let (ready_tx, ready_rx) = mpsc::channel::<std::result::Result<(), String>>();
    let h = spawn_in_netns(&net.server_ns, move || -> Result<usize> {
        let listener = match TcpListener::bind(addr) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready_tx.send(Err(e.to_string()));
                bail!("bind {addr}: {e}");
            }
        };
        let _ = ready_tx.send(Ok(()));
        listener.set_nonblocking(true)?;
        let deadline = Instant::now() + TIMEOUT;
        let mut c = loop {
            match listener.accept() {
                Ok((c, _)) => break c,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        bail!("sink: no connection");
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e).context("accept"),
            }
        };
        c.set_nonblocking(false)?;
        c.set_read_timeout(Some(TIMEOUT))?;
        let mut buf = vec![0u8; 65536];
        let mut total = 0;
        let mut answer = answer;
        loop {
            match c.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    total += n;
                    if let Some((_, bytes)) = answer.take_if(|(after, _)| total >= *after) {
                        c.write_all(&bytes).context("sink answer")?;
                    }
                }
                // The agent resets a connection over the cap.
                Err(_) => break,
            }
        }
        Ok(total)
    })?;
    match ready_rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(())) => Ok(h),
        Ok(Err(e)) => bail!("sink on {addr}: {e}"),
        Err(_) => bail!("sink on {addr} did not start"),
    }
}

/// Connects from the client namespace and writes each of `writes`
/// (`TCP_NODELAY`), pausing [`PAUSE`] after each and calling `between(i)`
/// (in the test's thread) before the next; then shuts down. Returns the
/// client's address.
fn client(
    net: &NetPair,
    addr: SocketAddr,
    writes: Vec<Vec<u8>>,
    mut between: impl FnMut(usize),
) -> Result<SocketAddr> {
    let (done_tx, done_rx) = mpsc::channel::<usize>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (addr_tx, addr_rx) = mpsc::channel::<SocketAddr>();
    let n = writes.len();
    let h = spawn_in_netns(&net.client_ns, move || -> Result<()> {
        let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)
            .with_context(|| format!("connecting to {addr}"))?;
        s.set_nodelay(true)?;
        s.set_write_timeout(Some(TIMEOUT))?;
        let _ = addr_tx.send(s.local_addr()?);
        for (i, w) in writes.iter().enumerate() {
            // A write into a connection the agent reset fails: that is
            // what the cap does, not a test failure.
            if s.write_all(w).is_err() {
                break;
            }
            std::thread::sleep(PAUSE);
            let _ = done_tx.send(i);
            if go_rx.recv_timeout(TIMEOUT).is_err() {
                break;
            }
        }
        let _ = s.shutdown(Shutdown::Write);
        Ok(())
    })?;
    let local = addr_rx
        .recv_timeout(TIMEOUT)
        .context("the client did not connect")?;
    for _ in 0..n {
        match done_rx.recv_timeout(TIMEOUT) {
            Ok(i) => between(i),
            Err(_) => break,
        }
        let _ = go_tx.send(());
    }
    h.join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))???;
    Ok(local)
}

/// `tls_segments` from the agent's kernel counters.
fn tls_segments(rig: &Rig) -> u64 {
    let stats = rig.agent.stats_value().expect("stats");
    stats["kernel"]["tls_segments"]
        .as_u64()
        .unwrap_or_else(|| panic!("no kernel.tls_segments in {stats}"))
}

fn conn_for(conns: &[HsmonConn], port: u16) -> Option<&HsmonConn> {
    conns
        .iter()
        .find(|c| c.client_addr().is_ok_and(|a| a.port() == port))
}

/// The user-space tracker on the client's writes, one segment each, with
/// the server's `answer` after the first `answer_after` writes.
fn oracle(writes: &[Vec<u8>], answer_after: usize, answer: &[u8]) -> FlowState {
    let mut conv = Conversation::new();
    for (i, w) in writes.iter().enumerate() {
        if i == answer_after && !answer.is_empty() {
            conv.server(answer);
        }
        conv.client(w);
    }
    run_sends(&conv, [1000, 1000])
}

#[test]
fn sixty_four_kb_burst_of_minimal_records_stays_synced() {
    require_root!();
    let mut rig = Rig::start("superpkt-64k", &[]).expect("set up");
    let addr = rig.server_addr(PORT);
    let server = sink(&rig.net, addr, None).expect("sink");
    let burst: Vec<u8> = (0..MINIMAL_RECORDS).flat_map(|_| app_data(0)).collect();
    assert_eq!(burst.len(), 65_495);
    let writes = vec![ClientHello::tls12().record(), burst, app_data(10)];
    let mut segs = Vec::new();
    let local = client(&rig.net, addr, writes.clone(), |_| {
        segs.push(tls_segments(&rig))
    })
    .expect("client");
    let received = server
        .join()
        .expect("sink thread")
        .expect("sink")
        .expect("sink result");
    let sent: usize = writes.iter().map(Vec::len).sum();
    assert_eq!(received, sent, "nothing dropped");
    assert_eq!(segs.len(), 3, "{segs:?}");
    let burst_segments = segs[1] - segs[0];
    assert!(
        (1..=12).contains(&burst_segments),
        "the 64 KB write must cross as super-packets (at most 12 segments, so one carries over \
         1,024 records), not {burst_segments}"
    );
    let conns = rig
        .wait_conns("the connection closed", TIMEOUT, |cs| {
            conn_for(cs, local.port()).is_some_and(|c| c.state == "closed")
        })
        .expect("hsmon's view");
    let c = conn_for(&conns, local.port()).expect("listed");
    assert!(!c.unsynced, "{c:?}");
    let want = oracle(&writes, 0, &[]);
    assert_eq!(want.counters.records[3] as usize, MINIMAL_RECORDS + 1);
    let values = rig.agent.conns_values().expect("conns");
    let v = values
        .iter()
        .find(|v| v["client"].as_str() == Some(local.to_string().as_str()))
        .expect("listed");
    assert_eq!(
        v["records"]["application_data"].as_u64(),
        Some(u64::from(want.counters.records[3])),
        "{v}"
    );
    assert_eq!(v["overflows"].as_u64(), Some(0), "{v}");
    assert_eq!(c.client_hellos, 1, "{c:?}");
    rig.assert_agent_healthy();
}

/// Body length of an encrypted renegotiation ClientHello here.
const RENEG_HELLO: usize = 250;

#[test]
fn renegotiations_behind_3000_tiny_records_are_capped() {
    require_root!();
    let mut rig = Rig::start("superpkt-reneg", &["--reneg-cap", "3"]).expect("set up");
    let addr = rig.server_addr(PORT);
    // A TLS 1.2 full handshake: the server answers the ClientHello with its
    // whole flight (ServerHello .. ServerHelloDone, CCS, Finished).
    let hello = ClientHello::tls12().record();
    let server_flight = [
        hs_record(&[
            &ServerHello::tls12().message(),
            &certificate(900),
            &server_key_exchange(300),
            &server_hello_done(),
        ]),
        ccs(),
        encrypted_finished(),
    ]
    .concat();
    let server = sink(&rig.net, addr, Some((hello.len(), server_flight.clone()))).expect("sink");
    let client_finish = [
        hs_record(&[&client_key_exchange(66)]),
        ccs(),
        encrypted_finished(),
    ]
    .concat();
    // 3,000 one-byte records (6,000 tracker steps), then 6 renegotiation
    // ClientHellos, in one write.
    let mut burst: Vec<u8> = (0..3000).flat_map(|_| app_data(1)).collect();
    for _ in 0..6 {
        burst.extend(encrypted_handshake(RENEG_HELLO));
    }
    let writes = vec![hello, client_finish, app_data(100), burst];
    let local = client(&rig.net, addr, writes.clone(), |_| {}).expect("client");
    let received = server
        .join()
        .expect("sink thread")
        .expect("sink")
        .expect("sink result");
    let sent: usize = writes.iter().map(Vec::len).sum();
    // The segment with the 4th ClientHello (and everything after it) never
    // reached the server.
    let capped_tail = 3 * (5 + RENEG_HELLO);
    assert!(
        received <= sent - capped_tail,
        "the server received {received} of {sent} bytes: the cap let the 4th ClientHello through"
    );
    let want = oracle(&writes, 1, &server_flight);
    assert_eq!(want.counters.handshakes, 1);
    assert_eq!(want.counters.renegotiations_client, 6);
    let conns = rig
        .wait_conns("the connection counted", TIMEOUT, |cs| {
            conn_for(cs, local.port()).is_some_and(|c| c.renegotiations_client >= 4)
        })
        .expect("hsmon's view");
    let c = conn_for(&conns, local.port()).expect("listed");
    assert!(!c.unsynced, "{c:?}");
    assert_eq!(c.handshakes, 1, "{c:?}");
    assert_eq!(
        c.renegotiations_client,
        u64::from(want.counters.renegotiations_client),
        "{c:?}"
    );
    let stats = rig.agent.stats_value().expect("stats");
    assert!(
        stats["kernel"]["reneg_cap_drops"].as_u64().unwrap_or(0) >= 1,
        "{stats}"
    );
    rig.assert_agent_healthy();
}
