//! Renegotiation (TLS 1.2): client-initiated, accepted by
//! `s_server -client_renegotiation`, refused by plain `s_server` and by
//! nginx; and server-initiated (HelloRequest).
//!
//! On the wire (OpenSSL 3.0, nginx 1.22): a refusing server answers the
//! encrypted renegotiation ClientHello with an encrypted warning alert
//! no_renegotiation (100); OpenSSL's client then sends a fatal
//! handshake_failure (40) and closes, so only the first attempt of a series
//! crosses the wire. The tests compare with the capture, not with the number
//! of `R` lines typed.
//!
//! Interpretation of hsmon's keys used here (adjust with the agent if it
//! differs): `handshakes` counts completed handshakes including
//! renegotiations; `client_hellos` counts every ClientHello, the encrypted
//! renegotiation ones included; a ClientHello that answers a HelloRequest is
//! part of the server's renegotiation and not counted in
//! `renegotiations_client`.

use anyhow::{ensure, Result};
use std::time::Duration;
use tests::openssl::{SClientOpts, SServerOpts, TlsVersion};
use tests::scenario::{assert_common, PER_CONN};
use tests::truth::{Initiator, RenegOutcome, ALERT_NO_RENEGOTIATION};
use tests::{ConnTruth, Report, Scenario};

const PORT: u16 = 4433;
const RENEGS: usize = 5;
const SERVER_RENEGS: usize = 2;

/// One TLS 1.2 connection with `RENEGS` accepted renegotiations, each
/// waited for before the next.
fn drive_accepted(sc: &mut Scenario) -> Result<Report> {
    let (_srv, mut c) = sc.renegotiating_pair(PORT, PER_CONN)?;
    c.send_data("hello")?;
    for i in 0..RENEGS {
        c.renegotiate()?;
        c.wait_handshakes(i + 2, PER_CONN)?;
    }
    c.send_data("bye")?;
    c.close(PER_CONN)?;
    ensure!(
        c.handshakes_completed() == RENEGS + 1,
        "s_client completed {}",
        c.handshakes_completed()
    );
    sc.finish()
}

fn check_truth_accepted(r: &Report) -> &ConnTruth {
    let tls = r.tls();
    assert_eq!(tls.len(), 1, "{}", r.describe());
    let t = tls[0];
    assert_eq!(t.client_hellos() as usize, RENEGS + 1, "{}", t.summary());
    assert_eq!(t.encrypted_client_hellos() as usize, RENEGS);
    assert_eq!(t.client_renegotiations(), RENEGS);
    assert_eq!(t.refused_renegotiations(), 0);
    assert_eq!(t.completed_handshakes(), RENEGS + 1);
    assert!(t
        .renegotiations
        .iter()
        .all(|x| x.initiator == Initiator::Client && x.outcome == RenegOutcome::Accepted));
    t
}

#[test]
fn client_renegotiation_accepted_five_times() {
    tests::with_scenario("reneg-accepted", |sc| {
        let r = drive_accepted(sc)?;
        check_truth_accepted(&r);
        let (t, h) = r.only_tls()?;
        assert_common(t, h);
        assert_eq!(h.renegotiations_client, RENEGS as u64, "{h:?}");
        assert_eq!(h.renegotiations_client, t.client_renegotiations() as u64);
        assert_eq!(h.renegotiations_refused, 0, "{h:?}");
        assert_eq!(h.renegotiations_server, 0, "{h:?}");
        assert_eq!(h.client_hellos, u64::from(t.client_hellos()), "{h:?}");
        assert_eq!(h.handshakes, t.completed_handshakes() as u64, "{h:?}");
        Ok(())
    });
}

#[test]
fn harness_selfcheck_client_renegotiation_accepted() {
    tests::with_scenario_no_agent("reneg-accepted-selfcheck", |sc| {
        check_truth_accepted(&drive_accepted(sc)?);
        Ok(())
    });
}

/// Up to `RENEGS` renegotiation attempts against plain s_server (refuses).
/// Returns the report and how many `R` commands s_client took.
fn drive_refused_s_server(sc: &mut Scenario) -> Result<(Report, usize)> {
    let addr = sc.server_addr(false, PORT);
    let _srv = sc.s_server(&SServerOpts::new(addr).version(TlsVersion::Tls12))?;
    let mut c = sc.s_client(&SClientOpts::new(addr).version(TlsVersion::Tls12))?;
    c.wait_established(PER_CONN)?;
    c.send_data("hello")?;
    let taken = c.try_renegotiations(RENEGS, Duration::from_secs(3))?;
    c.close(PER_CONN)?;
    Ok((sc.finish()?, taken))
}

/// Up to `RENEGS` renegotiation attempts against nginx after one request.
fn drive_refused_nginx(sc: &mut Scenario) -> Result<(Report, usize)> {
    let addr = sc.server_addr(false, PORT);
    let _ngx = sc.nginx(addr)?;
    let mut opts = SClientOpts::new(addr).version(TlsVersion::Tls12);
    opts.extra_args.push("-crlf".into());
    let mut c = sc.s_client(&opts)?;
    c.wait_established(PER_CONN)?;
    c.send_data("GET / HTTP/1.1")?;
    c.send_data("Host: hsmon-test")?;
    c.send_data("")?;
    c.wait_received("hello from nginx", PER_CONN)?;
    let taken = c.try_renegotiations(RENEGS, Duration::from_secs(3))?;
    c.close(PER_CONN)?;
    Ok((sc.finish()?, taken))
}

/// Every renegotiation ClientHello that crossed the wire was refused with
/// no_renegotiation; the first handshake is the only one completed.
fn check_truth_refused(r: &Report, taken: usize) -> &ConnTruth {
    let tls = r.tls();
    assert_eq!(tls.len(), 1, "{}", r.describe());
    let t = tls[0];
    let crossed = t.encrypted_client_hellos() as usize;
    assert!(
        crossed >= 1,
        "no renegotiation ClientHello on the wire: {}",
        t.summary()
    );
    assert!(
        crossed <= taken && taken <= RENEGS,
        "crossed {crossed}, taken {taken}"
    );
    assert_eq!(t.client_renegotiations(), crossed, "{}", t.summary());
    assert_eq!(t.refused_renegotiations(), crossed, "{}", t.summary());
    assert!(
        t.renegotiations.iter().all(|x| x.outcome
            == RenegOutcome::Refused {
                alert: Some(ALERT_NO_RENEGOTIATION)
            }),
        "{:?}",
        t.renegotiations
    );
    assert_eq!(t.completed_handshakes(), 1);
    assert!(t.closed());
    t
}

fn check_hsmon_refused(r: &Report) {
    let (t, h) = r.only_tls().expect("hsmon lists the connection");
    assert_common(t, h);
    let crossed = u64::from(t.encrypted_client_hellos());
    assert_eq!(h.renegotiations_client, crossed, "{h:?}\n{}", t.summary());
    assert_eq!(h.renegotiations_refused, crossed, "{h:?}\n{}", t.summary());
    assert_eq!(h.renegotiations_server, 0, "{h:?}");
    assert_eq!(
        h.alerts,
        t.alert_records() as u64,
        "alert records both ways: {h:?}"
    );
    assert_eq!(h.handshakes, 1, "{h:?}");
}

#[test]
fn client_renegotiation_refused_by_s_server() {
    tests::with_scenario("reneg-refused-s_server", |sc| {
        let (r, taken) = drive_refused_s_server(sc)?;
        check_truth_refused(&r, taken);
        check_hsmon_refused(&r);
        Ok(())
    });
}

#[test]
fn harness_selfcheck_client_renegotiation_refused_by_s_server() {
    tests::with_scenario_no_agent("reneg-refused-s_server-selfcheck", |sc| {
        let (r, taken) = drive_refused_s_server(sc)?;
        check_truth_refused(&r, taken);
        Ok(())
    });
}

#[test]
fn client_renegotiation_refused_by_nginx() {
    tests::with_scenario("reneg-refused-nginx", |sc| {
        let (r, taken) = drive_refused_nginx(sc)?;
        check_truth_refused(&r, taken);
        check_hsmon_refused(&r);
        Ok(())
    });
}

#[test]
fn harness_selfcheck_client_renegotiation_refused_by_nginx() {
    tests::with_scenario_no_agent("reneg-refused-nginx-selfcheck", |sc| {
        let (r, taken) = drive_refused_nginx(sc)?;
        check_truth_refused(&r, taken);
        Ok(())
    });
}

/// `SERVER_RENEGS` server-initiated renegotiations (`r` on s_server's
/// stdin), each completed before the next.
fn drive_server_initiated(sc: &mut Scenario) -> Result<Report> {
    let addr = sc.server_addr(false, PORT);
    let mut srv = sc.s_server(&SServerOpts::new(addr).version(TlsVersion::Tls12))?;
    let mut c = sc.s_client(&SClientOpts::new(addr).version(TlsVersion::Tls12))?;
    c.wait_established(PER_CONN)?;
    c.send_data("hello")?;
    for i in 0..SERVER_RENEGS {
        let rc = srv.request_renegotiation(PER_CONN)?;
        ensure!(rc == 1, "s_server: SSL_do_handshake -> {rc}");
        c.wait_handshakes(i + 2, PER_CONN)?;
    }
    c.send_data("bye")?;
    c.close(PER_CONN)?;
    sc.finish()
}

fn check_truth_server_initiated(r: &Report) -> &ConnTruth {
    let tls = r.tls();
    assert_eq!(tls.len(), 1, "{}", r.describe());
    let t = tls[0];
    assert_eq!(
        t.hello_requests() as usize,
        SERVER_RENEGS,
        "{}",
        t.summary()
    );
    assert_eq!(t.server_renegotiations(), SERVER_RENEGS);
    assert_eq!(t.client_renegotiations(), 0);
    assert_eq!(t.refused_renegotiations(), 0);
    assert_eq!(t.completed_handshakes(), SERVER_RENEGS + 1);
    t
}

#[test]
fn server_initiated_renegotiation_counted() {
    tests::with_scenario("reneg-server", |sc| {
        let r = drive_server_initiated(sc)?;
        check_truth_server_initiated(&r);
        let (t, h) = r.only_tls()?;
        assert_common(t, h);
        assert!(h.renegotiations_server >= 1, "{h:?}");
        assert_eq!(
            h.renegotiations_server,
            u64::from(t.hello_requests()),
            "{h:?}"
        );
        assert_eq!(
            h.renegotiations_client,
            t.client_renegotiations() as u64,
            "{h:?}"
        );
        assert_eq!(h.renegotiations_refused, 0, "{h:?}");
        Ok(())
    });
}

#[test]
fn harness_selfcheck_server_initiated_renegotiation() {
    tests::with_scenario_no_agent("reneg-server-selfcheck", |sc| {
        check_truth_server_initiated(&drive_server_initiated(sc)?);
        Ok(())
    });
}
