//! TLS 1.3 KeyUpdates: encrypted post-handshake messages. The ground truth
//! comes from the decrypted capture (tshark follows the key updates through
//! the key log); hsmon's `keyupdate_like` must match it.

use anyhow::Result;
use tests::openssl::{SClientOpts, SServerOpts, TlsVersion};
use tests::scenario::{assert_common, PER_CONN};
use tests::truth::KEY_UPDATE;
use tests::{ConnTruth, Report, Scenario};

const PORT: u16 = 4433;
const KEY_UPDATES: usize = 3;
const SERVER_LINE: &str = "ping from server";

/// One TLS 1.3 connection, `KEY_UPDATES` client KeyUpdates (`k`: no answer
/// requested), each sent before the next is typed.
fn drive_k(sc: &mut Scenario) -> Result<Report> {
    let addr = sc.server_addr(false, PORT);
    let _srv = sc.s_server(&SServerOpts::new(addr).version(TlsVersion::Tls13))?;
    let mut c = sc.s_client(&SClientOpts::new(addr).version(TlsVersion::Tls13))?;
    c.wait_established(PER_CONN)?;
    c.send_data("hello")?;
    for i in 0..KEY_UPDATES {
        c.key_update(false)?;
        c.wait_key_updates_sent(i + 1, PER_CONN)?;
    }
    c.send_data("after key updates")?;
    c.close(PER_CONN)?;
    sc.finish()
}

fn check_truth_k(r: &Report) -> &ConnTruth {
    let tls = r.tls();
    assert_eq!(tls.len(), 1, "{}", r.describe());
    let t = tls[0];
    assert_eq!(t.version().as_deref(), Some("1.3"));
    assert_eq!(
        t.to_server.msgs(KEY_UPDATE) as usize,
        KEY_UPDATES,
        "{}",
        t.summary()
    );
    assert_eq!(t.to_server.encrypted_msgs(KEY_UPDATE) as usize, KEY_UPDATES);
    assert_eq!(t.to_client.msgs(KEY_UPDATE), 0, "none requested");
    assert_eq!(
        t.undecrypted(),
        0,
        "records after the updates decrypted too"
    );
    t
}

#[test]
fn tls13_key_updates_counted() {
    tests::with_scenario("tls13-keyupdate", |sc| {
        let r = drive_k(sc)?;
        check_truth_k(&r);
        let (t, h) = r.only_tls()?;
        assert_common(t, h);
        assert_eq!(h.tls_version.as_deref(), Some("1.3"), "{h:?}");
        assert_eq!(
            h.keyupdate_like,
            u64::from(t.key_updates()),
            "{h:?}\n{}",
            t.summary()
        );
        assert_eq!(h.renegotiations_client, 0, "{h:?}");
        Ok(())
    });
}

#[test]
fn harness_selfcheck_tls13_key_updates() {
    tests::with_scenario_no_agent("tls13-keyupdate-selfcheck", |sc| {
        check_truth_k(&drive_k(sc)?);
        Ok(())
    });
}

/// One client KeyUpdate requesting an answer (`K`); the server's answer goes
/// out with its next write (a line on s_server's stdin). That line is written
/// only once s_server has processed the KeyUpdate: s_server handles stdin
/// before the socket when both are readable, so a line written while the
/// KeyUpdate record is still unread would go out without the answer, and
/// the answer, left pending, would never be sent.
fn drive_requested(sc: &mut Scenario) -> Result<Report> {
    let addr = sc.server_addr(false, PORT);
    let mut srv = sc.s_server(&SServerOpts::new(addr).version(TlsVersion::Tls13))?;
    let mut c = sc.s_client(&SClientOpts::new(addr).version(TlsVersion::Tls13))?;
    c.wait_established(PER_CONN)?;
    c.send_data("hello")?;
    c.key_update(true)?;
    c.wait_key_updates_sent(1, PER_CONN)?;
    srv.wait_key_updates_received(1, PER_CONN)?;
    srv.send_data(SERVER_LINE)?;
    c.wait_received(SERVER_LINE, PER_CONN)?;
    c.wait_key_updates_received(1, PER_CONN)?;
    c.close(PER_CONN)?;
    sc.finish()
}

fn check_truth_requested(r: &Report) -> &ConnTruth {
    let tls = r.tls();
    assert_eq!(tls.len(), 1, "{}", r.describe());
    let t = tls[0];
    assert_eq!(t.to_server.msgs(KEY_UPDATE), 1, "{}", t.summary());
    assert_eq!(
        t.to_client.msgs(KEY_UPDATE),
        1,
        "the answer: {}",
        t.summary()
    );
    assert_eq!(t.undecrypted(), 0);
    t
}

#[test]
fn tls13_requested_key_update_counted_both_ways() {
    tests::with_scenario("tls13-keyupdate-requested", |sc| {
        let r = drive_requested(sc)?;
        check_truth_requested(&r);
        let (t, h) = r.only_tls()?;
        assert_common(t, h);
        assert_eq!(
            h.keyupdate_like,
            u64::from(t.key_updates()),
            "{h:?}\n{}",
            t.summary()
        );
        Ok(())
    });
}

#[test]
fn harness_selfcheck_tls13_requested_key_update() {
    tests::with_scenario_no_agent("tls13-keyupdate-requested-selfcheck", |sc| {
        check_truth_requested(&drive_requested(sc)?);
        Ok(())
    });
}
