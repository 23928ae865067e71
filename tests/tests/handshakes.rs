//! Plain handshakes: many separate connections, another TLS stack (Python's
//! `ssl`), and IPv6.
//!
//! Every test drives real peers, then checks the capture's ground truth
//! against the scenario's own constants, then hsmon's `conns` against the
//! ground truth. The `harness_selfcheck_*` twins run the same traffic without
//! hsmon and check only the ground truth: they pass before hsmon exists.

use anyhow::{ensure, Result};
use tests::openssl::{SClientOpts, SServerOpts, TlsVersion};
use tests::scenario::{assert_common, PER_CONN};
use tests::{Report, Scenario};

const TWENTY: usize = 20;
const TLS_PORT: u16 = 4433;

/// `TWENTY` TLS 1.2 connections to s_server, each one full handshake and a
/// clean close.
fn drive_twenty(sc: &mut Scenario) -> Result<Report> {
    let addr = sc.server_addr(false, TLS_PORT);
    let _srv = sc.s_server(&SServerOpts::new(addr).version(TlsVersion::Tls12))?;
    let done =
        sc.sequential_handshakes(&SClientOpts::new(addr).version(TlsVersion::Tls12), TWENTY)?;
    ensure!(done == TWENTY, "{done} of {TWENTY} handshakes completed");
    sc.finish()
}

fn check_truth_twenty(r: &Report) {
    let tls = r.tls();
    assert_eq!(tls.len(), TWENTY, "{}", r.describe());
    assert!(r.non_tls().is_empty(), "{}", r.describe());
    for t in tls {
        assert_eq!(t.client_hellos(), 1, "{}", t.summary());
        assert_eq!(t.completed_handshakes(), 1, "{}", t.summary());
        assert!(t.renegotiations.is_empty(), "{}", t.summary());
        assert_eq!(t.first_resumed(), Some(false), "{}", t.summary());
        assert_eq!(t.version().as_deref(), Some("1.2"));
        assert!(t.closed());
    }
}

#[test]
fn twenty_full_handshakes_are_twenty_connections() {
    tests::with_scenario("twenty", |sc| {
        let r = drive_twenty(sc)?;
        check_truth_twenty(&r);
        let matched = r.matched()?;
        assert_eq!(matched.len(), TWENTY);
        assert_eq!(
            r.hsmon()?.len(),
            TWENTY,
            "nothing else listed\n{}",
            r.describe()
        );
        for (t, h) in matched {
            assert_common(t, h);
            assert_eq!(h.client_hellos, 1, "{h:?}");
            assert_eq!(h.client_hellos, u64::from(t.client_hellos()));
            assert_eq!(h.handshakes, 1, "{h:?}");
            assert_eq!(h.renegotiations_client, 0, "{h:?}");
            assert_eq!(h.renegotiations_server, 0, "{h:?}");
            assert_eq!(h.renegotiations_refused, 0, "{h:?}");
            assert!(!h.resumed, "{h:?}");
        }
        Ok(())
    });
}

#[test]
fn harness_selfcheck_twenty_full_handshakes() {
    tests::with_scenario_no_agent("twenty-selfcheck", |sc| {
        check_truth_twenty(&drive_twenty(sc)?);
        Ok(())
    });
}

const PY_PORT: u16 = 8443;
const PY_LINE: &str = "hello python ssl";

/// One connection to the Python `ssl` echo server: handshake, one echoed
/// line, close.
fn drive_python(sc: &mut Scenario) -> Result<Report> {
    let addr = sc.server_addr(false, PY_PORT);
    let srv = sc.python_tls_server(addr, None)?;
    let mut c = sc.s_client(&SClientOpts::new(addr))?;
    c.wait_handshakes(1, PER_CONN)?;
    c.send_data(PY_LINE)?;
    c.wait_received(PY_LINE, PER_CONN)?;
    c.close(PER_CONN)?;
    ensure!(
        srv.handshakes() == 1,
        "python server saw {} handshakes",
        srv.handshakes()
    );
    sc.finish()
}

fn check_truth_python(r: &Report) {
    let tls = r.tls();
    assert_eq!(tls.len(), 1, "{}", r.describe());
    let t = tls[0];
    assert_eq!(t.client_hellos(), 1, "{}", t.summary());
    assert_eq!(t.completed_handshakes(), 1, "{}", t.summary());
    assert!(t.renegotiations.is_empty());
    assert_eq!(t.first_resumed(), Some(false));
    assert!(t.to_server.app_data_records >= 1 && t.to_client.app_data_records >= 1);
}

#[test]
fn python_ssl_server_connection_counted_like_s_server() {
    tests::with_scenario("python", |sc| {
        let r = drive_python(sc)?;
        check_truth_python(&r);
        let (t, h) = r.only_tls()?;
        assert_common(t, h);
        assert_eq!(h.client_hellos, 1, "{h:?}");
        assert_eq!(h.handshakes, 1, "{h:?}");
        assert_eq!(h.renegotiations_client, 0, "{h:?}");
        assert!(!h.resumed, "{h:?}");
        Ok(())
    });
}

#[test]
fn harness_selfcheck_python_ssl_server() {
    tests::with_scenario_no_agent("python-selfcheck", |sc| {
        check_truth_python(&drive_python(sc)?);
        Ok(())
    });
}

/// One handshake over the namespaces' IPv6 addresses.
fn drive_ipv6(sc: &mut Scenario) -> Result<Report> {
    let addr = sc.server_addr(true, TLS_PORT);
    let _srv = sc.s_server(&SServerOpts::new(addr))?;
    let done = sc.sequential_handshakes(&SClientOpts::new(addr), 1)?;
    ensure!(done == 1, "handshake not completed");
    sc.finish()
}

fn check_truth_ipv6(sc: &Scenario, r: &Report) {
    let tls = r.tls();
    assert_eq!(tls.len(), 1, "{}", r.describe());
    let t = tls[0];
    assert!(t.client.is_ipv6() && t.server.is_ipv6(), "{}", t.summary());
    assert_eq!(t.client.ip(), sc.net.client_ip(true));
    assert_eq!(t.server, sc.server_addr(true, TLS_PORT));
    assert_eq!(t.completed_handshakes(), 1);
}

#[test]
fn ipv6_handshake_listed_with_bracketed_addresses() {
    tests::with_scenario("ipv6", |sc| {
        let r = drive_ipv6(sc)?;
        check_truth_ipv6(sc, &r);
        let (t, h) = r.only_tls()?;
        assert_common(t, h);
        assert_eq!(h.client, format!("[{}]:{}", t.client.ip(), t.client.port()));
        assert_eq!(h.server, format!("[{}]:{}", t.server.ip(), t.server.port()));
        assert_eq!(h.client_hellos, 1, "{h:?}");
        assert_eq!(h.handshakes, 1, "{h:?}");
        Ok(())
    });
}

#[test]
fn harness_selfcheck_ipv6_handshake() {
    tests::with_scenario_no_agent("ipv6-selfcheck", |sc| {
        let r = drive_ipv6(sc)?;
        check_truth_ipv6(sc, &r);
        Ok(())
    });
}
