//! Session resumption: a first connection saves its session (`-sess_out`),
//! a second offers it (`-sess_in`) and is resumed. TLS 1.2 shows it as a
//! handshake without Certificate, TLS 1.3 as pre_shared_key in ServerHello.

use anyhow::{ensure, Result};
use tests::openssl::{SClientOpts, SServerOpts, TlsVersion};
use tests::scenario::{assert_common, PER_CONN};
use tests::truth::CERTIFICATE;
use tests::{Report, Scenario};

const PORT: u16 = 4433;

/// Two connections to one s_server: the second resumes the first's session.
fn drive(sc: &mut Scenario, v: TlsVersion) -> Result<Report> {
    let addr = sc.server_addr(false, PORT);
    let _srv = sc.s_server(&SServerOpts::new(addr).version(v))?;
    let sess = sc.path("session.pem");

    let mut first = sc.s_client(&SClientOpts::new(addr).version(v).sess_out(sess.clone()))?;
    first.wait_established(PER_CONN)?;
    first.close(PER_CONN)?;
    ensure!(sess.is_file(), "s_client -sess_out wrote no session");
    ensure!(
        first.proc.stdout().contains("\nNew, "),
        "first connection not new"
    );

    let mut second = sc.s_client(&SClientOpts::new(addr).version(v).sess_in(sess))?;
    second.wait_handshakes(1, PER_CONN)?;
    second.close(PER_CONN)?;
    ensure!(
        second.proc.stdout().contains("\nReused, "),
        "s_client reports the second connection as not reused"
    );
    sc.finish()
}

fn check_truth(r: &Report, v: TlsVersion) {
    let tls = r.tls();
    assert_eq!(tls.len(), 2, "{}", r.describe());
    let (a, b) = (tls[0], tls[1]);
    for t in [a, b] {
        assert_eq!(t.version().as_deref(), Some(v.as_str()), "{}", t.summary());
        assert_eq!(t.completed_handshakes(), 1, "{}", t.summary());
        assert_eq!(t.undecrypted(), 0);
    }
    assert_eq!(a.first_resumed(), Some(false), "{}", a.summary());
    assert_eq!(b.first_resumed(), Some(true), "{}", b.summary());
    assert_eq!(b.to_client.msgs(CERTIFICATE), 0, "resumed: no certificate");
}

fn check_hsmon(r: &Report) {
    let m = r.matched().expect("hsmon lists both connections");
    assert_eq!(m.len(), 2);
    for (t, h) in &m {
        assert_common(t, h);
        assert_eq!(Some(h.resumed), t.first_resumed(), "{h:?}\n{}", t.summary());
        assert_eq!(h.handshakes, 1, "{h:?}");
    }
    assert!(!m[0].1.resumed, "first: {:?}", m[0].1);
    assert!(m[1].1.resumed, "second: {:?}", m[1].1);
}

#[test]
fn resumed_tls12_second_connection() {
    tests::with_scenario("resume-tls12", |sc| {
        let r = drive(sc, TlsVersion::Tls12)?;
        check_truth(&r, TlsVersion::Tls12);
        check_hsmon(&r);
        Ok(())
    });
}

#[test]
fn resumed_tls13_second_connection() {
    tests::with_scenario("resume-tls13", |sc| {
        let r = drive(sc, TlsVersion::Tls13)?;
        check_truth(&r, TlsVersion::Tls13);
        check_hsmon(&r);
        Ok(())
    });
}

#[test]
fn harness_selfcheck_resumption_tls12() {
    tests::with_scenario_no_agent("resume-tls12-selfcheck", |sc| {
        check_truth(&drive(sc, TlsVersion::Tls12)?, TlsVersion::Tls12);
        Ok(())
    });
}

#[test]
fn harness_selfcheck_resumption_tls13() {
    tests::with_scenario_no_agent("resume-tls13-selfcheck", |sc| {
        check_truth(&drive(sc, TlsVersion::Tls13)?, TlsVersion::Tls13);
        Ok(())
    });
}
