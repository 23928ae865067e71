//! A plain TCP flow is not a TLS connection: hsmon must not list it.

use anyhow::Result;
use tests::openssl::{SClientOpts, SServerOpts};
use tests::plain::PlainExchange;
use tests::scenario::assert_common;
use tests::{Report, Scenario};

const PLAIN_PORT: u16 = 7000;
const TLS_PORT: u16 = 4433;

/// One plain echo exchange (with TLS-looking bytes in the middle of the
/// stream), then one TLS handshake so that hsmon's list is not trivially
/// empty.
fn drive(sc: &mut Scenario) -> Result<(Report, PlainExchange)> {
    let plain_addr = sc.server_addr(false, PLAIN_PORT);
    let plain = sc.plain_exchange(plain_addr)?;
    let addr = sc.server_addr(false, TLS_PORT);
    let _srv = sc.s_server(&SServerOpts::new(addr))?;
    sc.sequential_handshakes(&SClientOpts::new(addr), 1)?;
    Ok((sc.finish()?, plain))
}

fn check_truth(r: &Report, plain: &PlainExchange) {
    assert_eq!(r.truth.len(), 2, "{}", r.describe());
    assert_eq!(r.tls().len(), 1, "{}", r.describe());
    let non_tls = r.non_tls();
    assert_eq!(non_tls.len(), 1, "{}", r.describe());
    let p = non_tls[0];
    assert_eq!(p.client, plain.client);
    assert_eq!(p.server, plain.server);
    assert!(p.records.is_empty(), "not decoded as TLS: {}", p.summary());
    assert_eq!(p.to_server.payload_bytes, plain.bytes as u64);
    assert_eq!(p.to_client.payload_bytes, plain.bytes as u64);
    assert!(p.closed());
}

#[test]
fn plain_tcp_flow_is_not_listed() {
    tests::with_scenario("non-tls", |sc| {
        let (r, plain) = drive(sc)?;
        check_truth(&r, &plain);
        let conns = r.hsmon()?;
        assert!(
            !conns.iter().any(|h| h
                .client_addr()
                .is_ok_and(|a| a.port() == plain.client.port())),
            "the plain flow {} is listed\n{}",
            plain.client,
            r.describe()
        );
        assert_eq!(conns.len(), 1, "only the TLS connection\n{}", r.describe());
        let (t, h) = r.only_tls()?;
        assert_common(t, h);
        Ok(())
    });
}

#[test]
fn harness_selfcheck_plain_tcp_flow() {
    tests::with_scenario_no_agent("non-tls-selfcheck", |sc| {
        let (r, plain) = drive(sc)?;
        check_truth(&r, &plain);
        Ok(())
    });
}
