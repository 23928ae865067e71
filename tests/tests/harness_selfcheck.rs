//! Checks the harness itself, without hsmon: namespaces, a real peer, the
//! capture, and the ground-truth parser reading a decrypted renegotiation.

use tests::openssl::{SClientOpts, SServerOpts, TlsVersion};
use tests::scenario::PER_CONN;
use tests::truth::{Initiator, RenegOutcome, CLIENT_HELLO};

/// Two TLS 1.2 connections to `s_server -client_renegotiation`: the first
/// renegotiates once, the second is a plain handshake. The capture must show
/// exactly these two connections, and the renegotiation ClientHello must be
/// visible (decrypted through the key log) on the first.
#[test]
fn harness_selfcheck_two_handshakes_one_renegotiation() {
    tests::with_scenario_no_agent("selfcheck", |sc| {
        let addr = sc.server_addr(false, 4433);
        let _srv = sc.s_server(
            &SServerOpts::new(addr)
                .version(TlsVersion::Tls12)
                .client_renegotiation(true),
        )?;
        let opts = SClientOpts::new(addr).version(TlsVersion::Tls12);

        let mut first = sc.s_client(&opts)?;
        first.wait_established(PER_CONN)?;
        first.send_data("hello before renegotiation")?;
        first.renegotiate()?;
        first.wait_handshakes(2, PER_CONN)?;
        first.send_data("hello after renegotiation")?;
        first.close(PER_CONN)?;
        assert_eq!(first.handshakes_completed(), 2, "s_client's own count");

        assert_eq!(sc.sequential_handshakes(&opts, 1)?, 1);

        let report = sc.finish()?;
        eprintln!("{}", report.describe());
        assert_eq!(report.capture.dropped_by_kernel, 0);
        assert_eq!(report.truth.len(), 2, "two TCP connections");
        assert_eq!(report.tls().len(), 2, "both are TLS");

        let (a, b) = (&report.truth[0], &report.truth[1]);
        for t in [a, b] {
            assert!(t.saw_syn, "{}", t.summary());
            assert_eq!(t.client.ip(), sc.net.client_ip(false));
            assert_eq!(t.server, addr);
            assert_eq!(t.version().as_deref(), Some("1.2"));
            assert_eq!(t.first_resumed(), Some(false));
            assert_eq!(t.undecrypted(), 0, "everything decrypted: {}", t.summary());
            assert!(t.closed());
        }
        assert_ne!(a.client.port(), b.client.port());

        // The renegotiating connection: 2 ClientHellos, the second one
        // encrypted and decrypted by tshark, accepted, 2 full handshakes.
        assert_eq!(a.client_hellos(), 2, "{}", a.summary());
        assert_eq!(a.encrypted_client_hellos(), 1);
        assert_eq!(a.to_server.encrypted_msgs(CLIENT_HELLO), 1);
        assert_eq!(a.completed_handshakes(), 2);
        assert_eq!(a.renegotiations.len(), 1);
        assert_eq!(a.renegotiations[0].initiator, Initiator::Client);
        assert_eq!(a.renegotiations[0].outcome, RenegOutcome::Accepted);
        assert_eq!(a.handshakes[1].resumed, Some(false), "a full renegotiation");
        assert_eq!(a.to_server.app_data_records, 2);

        // The plain connection.
        assert_eq!(b.client_hellos(), 1);
        assert_eq!(b.completed_handshakes(), 1);
        assert!(b.renegotiations.is_empty());
        assert_eq!(b.hello_requests(), 0);
        Ok(())
    });
}
