//! One test per tracker behaviour, on hand-built TLS streams.
//!
//! Unless a test is about segmentation, every conversation goes through
//! [`all_ways`]: it is fed with several ISNs (some wrapping around `u32::MAX`)
//! and cut in several ways (one segment per send, one per run of sends, 1-byte
//! segments, odd sizes), and all of them must observe exactly the same thing.

mod support;

use monitor_common::tls::*;
use monitor_common::tracker::*;
use support::*;

/// Index of each content type in `FlowCounters::records`.
const R_CCS: usize = 0;
const R_ALERT: usize = 1;
const R_HS: usize = 2;
const R_APP: usize = 3;
const R_HB: usize = 4;

/// Records by type, in the `FlowCounters::records` order.
fn recs(ccs: u32, alert: u32, hs: u32, app: u32, hb: u32) -> [u32; 5] {
    let mut r = [0; 5];
    r[R_CCS] = ccs;
    r[R_ALERT] = alert;
    r[R_HS] = hs;
    r[R_APP] = app;
    r[R_HB] = hb;
    r
}

/// Runs `conv` in many ways (ISNs, segmentations); all must observe the same.
/// Returns the state after feeding one segment per send.
fn all_ways(conv: &Conversation) -> FlowState {
    let reference = run_sends(conv, ISNS[0]);
    let want = Observed::of(&reference);
    let mut n = 0usize;
    let plans = [
        ("sends", conv.plan_sends()),
        ("runs", conv.plan_runs()),
        ("bytes", conv.plan_bytes()),
        ("7", conv.plan_sizes(|_| 7)),
        (
            "mixed",
            conv.plan_sizes(|dir| {
                n += 1;
                [1, 2, 3, 4, 5, 6, 1460, 9, 300][(n + dir) % 9]
            }),
        ),
    ];
    for isn in ISNS {
        for (name, plan) in &plans {
            let mut d = Driver::new(conv, isn);
            d.run(plan);
            assert_eq!(Observed::of(&d.state), want, "plan {name}, isn {isn:?}");
        }
    }
    reference
}

/// Runs `conv` in many ways, then `finish()`.
fn all_ways_finished(conv: &Conversation) -> FlowState {
    let mut s = all_ways(conv);
    s.finish();
    s
}

fn assert_synced(s: &FlowState) {
    assert!(!s.unsynced(), "unsynced: {s:#?}");
    assert_eq!(s.dirs[CLIENT].status, DIR_SYNCED);
    assert_eq!(s.dirs[SERVER].status, DIR_SYNCED);
}

// ---------------------------------------------------------------------------
// TLS 1.2 first handshake.

#[test]
fn tls12_full_handshake() {
    let mut c = Conversation::new();
    tls12_full(&mut c)
        .client(app_data(100))
        .server(app_data(2000));
    let s = all_ways(&c);
    assert_eq!(
        s.counters,
        FlowCounters {
            client_hellos: 1,
            handshakes: 1,
            records: recs(2, 0, 8, 2, 0),
            ..Default::default()
        }
    );
    assert_eq!(s.version, VERSION_TLS12);
    assert!(!s.resumed());
    assert_eq!(
        s.flags & (FF_FIRST_HS_DONE | FF_HS_ACTIVE),
        FF_FIRST_HS_DONE
    );
    assert!(s.flags & FF_SERVER_CERT_SEEN != 0);
    assert_synced(&s);
}

#[test]
fn tls12_several_messages_in_one_record() {
    let mut c = Conversation::new();
    c.client(ClientHello::tls12().record()).server(hs_record(&[
        &ServerHello::tls12().message(),
        &certificate(800),
        &server_key_exchange(300),
        &certificate_request(20),
        &server_hello_done(),
    ]));
    tls12_finish_full(
        &mut c,
        &hs_record(&[
            &certificate(500),
            &client_key_exchange(66),
            &hs(15, &[7; 72]),
        ]),
        &hs_record(&[&new_session_ticket(180)]),
    );
    let s = all_ways(&c);
    assert_eq!(
        s.counters,
        FlowCounters {
            client_hellos: 1,
            handshakes: 1,
            records: recs(2, 0, 6, 0, 0),
            ..Default::default()
        }
    );
    assert_eq!(s.version, VERSION_TLS12);
    assert!(!s.resumed());
    assert_synced(&s);
}

/// A Certificate is the only certificate-class message and it spans two
/// records: the handshake is still seen as full, and what follows parses.
#[test]
fn tls12_message_spanning_two_records() {
    let cert = certificate(3000);
    let (a, b) = cert.split_at(1234);
    let flight = [
        hs_record(&[&ServerHello::tls12().message(), a]),
        hs_record(&[b, &server_hello_done()]),
    ]
    .concat();
    let mut c = Conversation::new();
    tls12_full_with_flight(&mut c, &flight);
    let s = all_ways(&c);
    assert_eq!(
        s.counters,
        FlowCounters {
            client_hellos: 1,
            handshakes: 1,
            records: recs(2, 0, 6, 0, 0),
            ..Default::default()
        }
    );
    assert!(!s.resumed());
    assert_synced(&s);
}

/// The server's flight cut into tiny records: every message, the ServerHello's
/// fields included, spans several records.
#[test]
fn flights_in_tiny_records() {
    for frag in [1usize, 2, 3, 5, 7, 64] {
        let msgs = [
            ServerHello::tls12().message(),
            certificate(100),
            server_key_exchange(50),
            server_hello_done(),
        ];
        let refs: Vec<&[u8]> = msgs.iter().map(|m| &m[..]).collect();
        let total: usize = msgs.iter().map(Vec::len).sum();
        let mut c = Conversation::new();
        tls12_full_with_flight(&mut c, &hs_fragmented(&refs, frag));
        let s = all_ways(&c);
        assert_eq!(
            s.counters,
            FlowCounters {
                client_hellos: 1,
                handshakes: 1,
                records: recs(2, 0, 4 + total.div_ceil(frag) as u32, 0, 0),
                ..Default::default()
            },
            "frag {frag}"
        );
        assert_eq!(s.version, VERSION_TLS12);
        assert!(!s.resumed());

        // TLS 1.3, resumed: the ServerHello alone in tiny records.
        let sh = ServerHello::tls13().psk().message();
        let mut c = Conversation::new();
        c.client(hs_fragmented(&[&ClientHello::tls13().message()], frag))
            .server([hs_fragmented(&[&sh], frag), app_data(60)].concat())
            .client(app_data(53));
        let s = all_ways(&c);
        assert_eq!(s.counters.client_hellos, 1, "frag {frag}");
        assert_eq!(s.counters.handshakes, 1, "frag {frag}");
        assert_eq!(s.version, VERSION_TLS13, "frag {frag}");
        assert!(s.resumed(), "frag {frag}");
    }
}

/// The ServerHello (and the handshake header of the message after it) split
/// across two records at every byte: version, resumption and sync unchanged.
#[test]
fn server_hello_split_across_records_at_every_byte() {
    for tls13 in [false, true] {
        let sh = if tls13 {
            ServerHello::tls13().psk().message()
        } else {
            ServerHello::tls12().message()
        };
        let msgs = [sh, new_session_ticket(30)].concat();
        for cut in 1..msgs.len() {
            let (a, b) = msgs.split_at(cut);
            let mut c = Conversation::new();
            c.client(ClientHello::tls13().record())
                .server([hs_record(&[a]), hs_record(&[b])].concat());
            if tls13 {
                c.server(app_data(60)).client(app_data(53));
            } else {
                tls12_finish_abbreviated(&mut c, &[]);
            }
            let s = run_sends(&c, [7, 7]);
            let want = if tls13 { VERSION_TLS13 } else { VERSION_TLS12 };
            assert_eq!(s.version, want, "tls13 {tls13}, cut {cut}");
            assert!(s.resumed(), "tls13 {tls13}, cut {cut}");
            assert_eq!(s.counters.handshakes, 1, "tls13 {tls13}, cut {cut}");
            assert_eq!(s.counters.malformed, 0, "tls13 {tls13}, cut {cut}");
            assert_synced(&s);
        }
    }
}

/// Every single cut of either direction's stream (so every record header split
/// at every position) gives the same result as the unsplit sends.
#[test]
fn record_header_split_at_every_cut() {
    let mut c = Conversation::new();
    tls12_full(&mut c).client(app_data(0)).server(app_data(30));
    tls12_client_reneg(&mut c).client(encrypted_alert());
    let want = Observed::of(&run_sends(&c, [0, 0]));
    assert_eq!(want.counters.handshakes, 2);
    for dir in [CLIENT, SERVER] {
        let len = c.stream(dir).len();
        for cut in 1..len {
            for isn in [[0, 0], [u32::MAX - 2, u32::MAX - 2]] {
                let cuts: [&[usize]; 2] = if dir == CLIENT {
                    [&[cut], &[]]
                } else {
                    [&[], &[cut]]
                };
                let mut d = Driver::new(&c, isn);
                d.run(&c.plan_cuts(cuts));
                assert_eq!(Observed::of(&d.state), want, "dir {dir}, cut {cut}");
            }
        }
    }
    // And every pair of cuts inside the first 12 bytes (the ClientHello's
    // record header and handshake header).
    for a in 1..12 {
        for b in a + 1..13 {
            let mut d = Driver::new(&c, [1, 1]);
            d.run(&c.plan_cuts([&[a, b], &[]]));
            assert_eq!(Observed::of(&d.state), want, "cuts {a} {b}");
        }
    }
}

#[test]
fn several_records_in_one_segment() {
    let mut c = Conversation::new();
    tls12_full(&mut c).client(app_data(10)).server(app_data(10));
    // Everything a side sends in one go is one segment: the server's 4-record
    // flight, the client's CKE + CCS + Finished, the server's CCS + Finished.
    let plan = c.plan_runs();
    let mut d = Driver::new(&c, [100, u32::MAX - 5]);
    d.run(&plan);
    assert!(d.outcomes.iter().all(|o| *o == SegmentOutcome::Parsed));
    assert_eq!(d.state.counters.records, recs(2, 0, 8, 2, 0));
    assert_eq!(d.state.counters.handshakes, 1);

    // Both directions of the whole connection, one segment each (the server's
    // first: it is not what a real server does but the records do not care
    // except for the order of the two Finished).
    let mut d = Driver::new(&c, [5, 6]);
    let (cl, sl) = (d.streams[CLIENT].len(), d.streams[SERVER].len());
    assert_eq!(d.seg(CLIENT, 0, cl), SegmentOutcome::Parsed);
    assert_eq!(d.seg(SERVER, 0, sl), SegmentOutcome::Parsed);
    assert_eq!(d.state.counters.records, recs(2, 0, 8, 2, 0));
    assert_eq!(d.state.counters.client_hellos, 1);
    assert_eq!(d.state.counters.handshakes, 1);
    assert!(!d.state.resumed());
}

/// TLS 1.0 and 1.1 behave like 1.2; the version is the ServerHello's.
#[test]
fn tls10_and_tls11_handshakes() {
    for v in [VERSION_TLS10, 0x0302] {
        let mut c = Conversation::new();
        tls12_full_with_hello(&mut c, &ServerHello::tls12().version(v).message(), 500)
            .client(app_data(22));
        let s = all_ways(&c);
        assert_eq!(s.version, v);
        assert_eq!(s.counters.handshakes, 1);
        assert_eq!(s.counters.keyupdate_like, 0);
        assert!(!s.resumed());
    }
}

/// A TLS 1.2 ServerHello without an extensions block.
#[test]
fn tls12_server_hello_without_extensions() {
    let mut sh = ServerHello::tls12();
    sh.no_extensions = true;
    let mut c = Conversation::new();
    tls12_full_with_hello(&mut c, &sh.message(), 100);
    let s = all_ways(&c);
    assert_eq!(s.version, VERSION_TLS12);
    assert_eq!(s.counters.handshakes, 1);
    assert_eq!(s.counters.malformed, 0);
    assert!(!s.resumed());
    assert!(s.flags & FF_SERVER_CERT_SEEN != 0);
}

// ---------------------------------------------------------------------------
// Resumption.

#[test]
fn tls12_resumed_with_ticket() {
    let mut c = Conversation::new();
    tls12_abbreviated(
        &mut c,
        &hs_records(&[&ServerHello::tls12().message(), &new_session_ticket(170)]),
    )
    .client(app_data(500));
    let s = all_ways(&c);
    assert_eq!(
        s.counters,
        FlowCounters {
            client_hellos: 1,
            handshakes: 1,
            records: recs(2, 0, 5, 1, 0),
            ..Default::default()
        }
    );
    assert!(s.resumed());
    assert_eq!(s.version, VERSION_TLS12);
    assert_synced(&s);
}

#[test]
fn tls12_resumed_session_id_without_ticket() {
    let mut c = Conversation::new();
    tls12_abbreviated(
        &mut c,
        &hs_record(&[&ServerHello::tls12().session_id(32).message()]),
    );
    let s = all_ways(&c);
    assert_eq!(s.counters.handshakes, 1);
    assert_eq!(s.counters.records, recs(2, 0, 4, 0, 0));
    assert!(s.resumed());
}

/// A renegotiation after a full handshake has no visible certificate (it is
/// encrypted): it must not turn the flow into "resumed".
#[test]
fn tls12_renegotiation_does_not_mark_resumed() {
    let mut c = Conversation::new();
    tls12_full(&mut c);
    // Abbreviated renegotiation: server CCS before any certificate-class message.
    tls12_client_reneg_abbreviated(&mut c);
    let s = all_ways(&c);
    assert_eq!(s.counters.handshakes, 2);
    assert!(!s.resumed());
}

// ---------------------------------------------------------------------------
// TLS 1.3.

#[test]
fn tls13_full_handshake() {
    let mut c = Conversation::new();
    tls13_full(&mut c);
    let s = all_ways(&c);
    assert_eq!(
        s.counters,
        FlowCounters {
            client_hellos: 1,
            handshakes: 1,
            records: recs(0, 0, 2, 7, 0),
            ..Default::default()
        }
    );
    assert_eq!(s.version, VERSION_TLS13);
    assert!(!s.resumed());
    assert_synced(&s);
}

/// Middlebox compatibility mode (RFC 8446 D.4): a dummy CCS from the server
/// after its ServerHello and from the client before its Finished flight.
#[test]
fn tls13_full_handshake_compat_ccs() {
    let mut c = Conversation::new();
    c.client(ClientHello::tls13().record())
        .server(
            [
                hs_record(&[&ServerHello::tls13().message()]),
                ccs(),
                app_data(40),
                app_data(900),
                app_data(280),
                app_data(53),
            ]
            .concat(),
        )
        .client([ccs(), app_data(53)].concat())
        .server(app_data(200))
        .client(app_data(22));
    let s = all_ways(&c);
    assert_eq!(
        s.counters,
        FlowCounters {
            client_hellos: 1,
            handshakes: 1,
            keyupdate_like: 1,
            records: recs(2, 0, 2, 7, 0),
            ..Default::default()
        }
    );
    assert_eq!(s.version, VERSION_TLS13);
    assert!(!s.resumed());
}

#[test]
fn tls13_resumed_with_pre_shared_key() {
    for psk_first in [false, true] {
        let mut sh = ServerHello::tls13().psk();
        sh.psk_first = psk_first;
        let mut c = Conversation::new();
        c.client(ClientHello::tls13().record());
        tls13_finish(&mut c, &sh.message(), &[40, 53]).server(app_data(200));
        let s = all_ways(&c);
        assert_eq!(
            s.counters,
            FlowCounters {
                client_hellos: 1,
                handshakes: 1,
                records: recs(0, 0, 2, 4, 0),
                ..Default::default()
            }
        );
        assert_eq!(s.version, VERSION_TLS13);
        assert!(s.resumed(), "psk_first {psk_first}");
    }
}

/// pre_shared_key in a TLS 1.2 ServerHello means nothing.
#[test]
fn pre_shared_key_in_tls12_server_hello_is_not_resumption() {
    let mut sh = ServerHello::tls12();
    sh.psk = true;
    let mut c = Conversation::new();
    tls12_full_with_hello(&mut c, &sh.message(), 100);
    let s = all_ways(&c);
    assert!(!s.resumed());
    assert_eq!(s.counters.handshakes, 1);
}

#[test]
fn tls13_hello_retry_request() {
    let mut c = Conversation::new();
    c.client(ClientHello::tls13().record())
        .server(hs_record(&[&ServerHello::hrr().message()]))
        .client(ClientHello::tls13().record());
    tls13_finish(&mut c, &ServerHello::tls13().message(), &[900, 53]);
    let s = all_ways(&c);
    assert_eq!(
        s.counters,
        FlowCounters {
            client_hellos: 2,
            handshakes: 1,
            records: recs(0, 0, 4, 3, 0),
            ..Default::default()
        }
    );
    assert_eq!(s.version, VERSION_TLS13);
    assert!(!s.resumed());
    assert!(s.flags & FF_HRR_SEEN != 0);
    assert_synced(&s);
}

/// HelloRetryRequest in middlebox compatibility mode: the server's dummy CCS
/// follows the HRR, the client's precedes its second ClientHello. Both
/// ClientHellos and the second ServerHello are still cleartext.
#[test]
fn tls13_hello_retry_request_compat_ccs() {
    for psk in [false, true] {
        let sh = if psk {
            ServerHello::tls13().psk()
        } else {
            ServerHello::tls13()
        };
        let mut c = Conversation::new();
        c.client(ClientHello::tls13().record())
            .server([hs_record(&[&ServerHello::hrr().message()]), ccs()].concat())
            .client([ccs(), ClientHello::tls13().record()].concat());
        tls13_finish(&mut c, &sh.message(), &[900, 53]).client(app_data(22));
        let s = all_ways(&c);
        assert_eq!(
            s.counters,
            FlowCounters {
                client_hellos: 2,
                handshakes: 1,
                keyupdate_like: 1,
                records: recs(2, 0, 4, 4, 0),
                ..Default::default()
            },
            "psk {psk}"
        );
        assert_eq!(s.version, VERSION_TLS13);
        assert_eq!(s.resumed(), psk);
    }
}

/// A client sending 0-RTT data sends its compatibility CCS right after the
/// first ClientHello, before it knows the version; a HelloRetryRequest then
/// asks for a second, cleartext ClientHello.
#[test]
fn tls13_hello_retry_request_after_early_ccs() {
    let mut c = Conversation::new();
    c.client([ClientHello::tls13().record(), ccs(), app_data(100)].concat())
        .server([hs_record(&[&ServerHello::hrr().message()]), ccs()].concat())
        .client(ClientHello::tls13().record());
    tls13_finish(&mut c, &ServerHello::tls13().message(), &[900, 53]);
    let s = all_ways(&c);
    assert_eq!(s.counters.client_hellos, 2);
    assert_eq!(s.counters.handshakes, 1);
    assert_eq!(s.version, VERSION_TLS13);
    assert!(!s.resumed());
}

// ---------------------------------------------------------------------------
// Client-initiated renegotiation.

#[test]
fn client_renegotiation_honoured() {
    let mut c = Conversation::new();
    tls12_full(&mut c);
    c.client(app_data(100));
    tls12_client_reneg(&mut c);
    c.client(app_data(100)).server(app_data(100));
    let s = all_ways_finished(&c);
    assert_eq!(
        s.counters,
        FlowCounters {
            client_hellos: 2,
            handshakes: 2,
            renegotiations_client: 1,
            records: recs(4, 0, 16, 3, 0),
            ..Default::default()
        }
    );
    assert!(!s.resumed());
    assert_eq!(s.flags & (FF_HS_ACTIVE | FF_RENEG_PENDING_CLIENT), 0);
    assert_synced(&s);
}

#[test]
fn client_renegotiation_after_resumed_handshake() {
    let mut c = Conversation::new();
    tls12_abbreviated(&mut c, &hs_record(&[&ServerHello::tls12().message()]));
    tls12_client_reneg(&mut c);
    let s = all_ways_finished(&c);
    assert_eq!(s.counters.client_hellos, 2);
    assert_eq!(s.counters.handshakes, 2);
    assert_eq!(s.counters.renegotiations_client, 1);
    assert_eq!(s.counters.renegotiations_refused, 0);
    assert!(s.resumed());
}

#[test]
fn client_renegotiations_in_a_row() {
    for n in 0..8u32 {
        let mut c = Conversation::new();
        tls12_full(&mut c);
        for i in 0..n {
            if i % 2 == 0 {
                tls12_client_reneg(&mut c);
            } else {
                // Abbreviated: the server resumes the session.
                tls12_client_reneg_abbreviated(&mut c);
            }
            c.client(app_data(10 + i as usize));
        }
        let s = all_ways_finished(&c);
        let full = n.div_ceil(2);
        let abbr = n / 2;
        assert_eq!(
            s.counters,
            FlowCounters {
                client_hellos: 1 + n,
                handshakes: 1 + n,
                renegotiations_client: n,
                records: recs(2 + 2 * n, 0, 8 + 8 * full + 4 * abbr, n, 0),
                ..Default::default()
            },
            "n {n}"
        );
    }
}

#[test]
fn client_renegotiation_refused_by_alert() {
    let mut c = Conversation::new();
    tls12_full(&mut c);
    tls12_client_reneg_refused(&mut c)
        .client(app_data(100))
        .server(app_data(100));
    let s = all_ways_finished(&c);
    assert_eq!(
        s.counters,
        FlowCounters {
            client_hellos: 2,
            handshakes: 1,
            renegotiations_client: 1,
            renegotiations_refused: 1,
            alerts: 1,
            records: recs(2, 1, 9, 2, 0),
            ..Default::default()
        }
    );
    assert_eq!(s.flags & (FF_HS_ACTIVE | FF_RENEG_PENDING_CLIENT), 0);
}

/// Refused, then tried again and honoured, then refused again.
#[test]
fn client_renegotiation_refused_then_honoured_then_refused() {
    let mut c = Conversation::new();
    tls12_full(&mut c);
    tls12_client_reneg_refused(&mut c);
    tls12_client_reneg(&mut c);
    tls12_client_reneg_refused(&mut c);
    let s = all_ways_finished(&c);
    assert_eq!(s.counters.client_hellos, 4);
    assert_eq!(s.counters.renegotiations_client, 3);
    assert_eq!(s.counters.renegotiations_refused, 2);
    assert_eq!(s.counters.handshakes, 2);
    assert_eq!(s.counters.alerts, 2);
}

#[test]
fn client_renegotiation_refused_by_server_close() {
    let mut c = Conversation::new();
    tls12_full(&mut c);
    c.client(encrypted_handshake(250)).close(SERVER);
    let s = all_ways(&c);
    let want = FlowCounters {
        client_hellos: 2,
        handshakes: 1,
        renegotiations_client: 1,
        renegotiations_refused: 1,
        records: recs(2, 0, 9, 0, 0),
        ..Default::default()
    };
    assert_eq!(s.counters, want);
    // The end of the connection does not count it again.
    let mut f = s;
    f.finish();
    assert_eq!(f.counters, want);
    assert!(f.flags & FF_CLOSED != 0);
}

/// The client closing does not answer its own renegotiation; the end of the
/// connection does.
#[test]
fn client_renegotiation_pending_at_finish_is_refused() {
    let mut c = Conversation::new();
    tls12_full(&mut c);
    c.client(encrypted_handshake(250)).close(CLIENT);
    let s = all_ways(&c);
    assert_eq!(s.counters.renegotiations_refused, 0);
    assert!(s.flags & FF_RENEG_PENDING_CLIENT != 0);
    let mut f = s;
    f.finish();
    assert_eq!(f.counters.renegotiations_refused, 1);
    assert_eq!(f.counters.renegotiations_client, 1);
    f.finish();
    assert_eq!(
        f.counters.renegotiations_refused, 1,
        "finish twice counts once"
    );
}

/// Once the server answered with a handshake record, closing is not a refusal.
#[test]
fn client_renegotiation_answered_then_closed_is_not_refused() {
    let mut c = Conversation::new();
    tls12_full(&mut c);
    c.client(encrypted_handshake(250))
        .server(encrypted_handshake(120))
        .close(SERVER);
    let s = all_ways_finished(&c);
    assert_eq!(s.counters.renegotiations_client, 1);
    assert_eq!(s.counters.renegotiations_refused, 0);
    assert_eq!(s.counters.handshakes, 1);
}

// ---------------------------------------------------------------------------
// Server-initiated renegotiation.

#[test]
fn server_hello_request_answered_with_client_hello() {
    let mut c = Conversation::new();
    tls12_full(&mut c);
    tls12_server_reneg(&mut c);
    let s = all_ways_finished(&c);
    assert_eq!(
        s.counters,
        FlowCounters {
            client_hellos: 2,
            handshakes: 2,
            renegotiations_server: 1,
            records: recs(4, 0, 16, 0, 0),
            ..Default::default()
        }
    );
    assert_eq!(s.flags & (FF_HELLO_REQUEST_PENDING | FF_HS_ACTIVE), 0);
}

#[test]
fn server_hello_request_refused_by_alert() {
    let mut c = Conversation::new();
    tls12_full(&mut c);
    tls12_server_reneg_refused(&mut c)
        .client(app_data(50))
        .server(app_data(50));
    let s = all_ways_finished(&c);
    assert_eq!(
        s.counters,
        FlowCounters {
            client_hellos: 1,
            handshakes: 1,
            renegotiations_server: 1,
            renegotiations_refused: 1,
            alerts: 1,
            records: recs(2, 1, 9, 2, 0),
            ..Default::default()
        }
    );
    assert_eq!(s.flags & FF_HELLO_REQUEST_PENDING, 0);
}

#[test]
fn server_hello_request_refused_by_client_close() {
    let mut c = Conversation::new();
    tls12_full(&mut c);
    c.server(encrypted_handshake(32)).close(CLIENT);
    let s = all_ways(&c);
    assert_eq!(s.counters.renegotiations_server, 1);
    assert_eq!(s.counters.renegotiations_refused, 1);
    let mut f = s;
    f.finish();
    assert_eq!(f.counters.renegotiations_refused, 1);
}

#[test]
fn server_hello_request_ignored_until_finish_is_refused() {
    let mut c = Conversation::new();
    tls12_full(&mut c);
    c.server(encrypted_handshake(32))
        .client(app_data(50))
        .server(app_data(50));
    let s = all_ways(&c);
    assert_eq!(s.counters.renegotiations_refused, 0);
    let mut f = s;
    f.finish();
    assert_eq!(f.counters.renegotiations_server, 1);
    assert_eq!(f.counters.renegotiations_refused, 1);
    assert_eq!(f.counters.client_hellos, 1);
}

/// Server- and client-initiated renegotiations mixed.
#[test]
fn mixed_renegotiations() {
    let mut c = Conversation::new();
    tls12_full(&mut c);
    tls12_client_reneg(&mut c); // honoured
    tls12_server_reneg(&mut c); // HR answered
    tls12_client_reneg_refused(&mut c); // refused
    tls12_server_reneg_refused(&mut c); // refused
    tls12_client_reneg(&mut c); // honoured
    let s = all_ways_finished(&c);
    assert_eq!(
        s.counters,
        FlowCounters {
            client_hellos: 5,
            handshakes: 4,
            renegotiations_client: 3,
            renegotiations_server: 2,
            renegotiations_refused: 2,
            alerts: 2,
            records: recs(8, 2, 8 + 8 + 2 + 6 + 1 + 1 + 8, 0, 0),
            ..Default::default()
        }
    );
}

// ---------------------------------------------------------------------------
// TLS 1.3 post-handshake.

#[test]
fn tls13_keyupdate_like_records() {
    let mut c = Conversation::new();
    tls13_full(&mut c);
    c.client(app_data(22))
        .server(app_data(22))
        .client([app_data(22), app_data(22), app_data(22)].concat())
        .client([app_data(21), app_data(23), app_data(0), app_data(100)].concat())
        .server([app_data(5), app_data(2000)].concat());
    let s = all_ways(&c);
    assert_eq!(s.counters.keyupdate_like, 5);
    assert_eq!(s.counters.records, recs(0, 0, 2, 7 + 11, 0));
}

/// The client's KeyUpdate streak: only client KeyUpdate-size records with
/// nothing between them but the server's KeyUpdate-size answers count, from
/// the [`KEYUPDATE_STREAK_MIN`]th on.
#[test]
fn tls13_keyupdate_streaks() {
    let ku = || app_data(KEY_UPDATE_RECORD_LEN as usize);
    let streaked = |build: &dyn Fn(&mut Conversation)| {
        let mut c = Conversation::new();
        tls13_full(&mut c);
        build(&mut c);
        let s = all_ways(&c);
        (s.counters.keyupdate_streaked, s.counters.keyupdate_like)
    };
    let min = u32::from(KEYUPDATE_STREAK_MIN);
    // A flood with update_requested: each client KeyUpdate answered.
    let flood_answered = streaked(&|c| {
        for _ in 0..10 {
            c.client(ku()).server(ku());
        }
    });
    assert_eq!(flood_answered, (10 - (min - 1), 20));
    // A flood without: client records only, several in one segment too.
    let flood = streaked(&|c| {
        c.client([ku(), ku(), ku(), ku(), ku()].concat());
        for _ in 0..5 {
            c.client(ku());
        }
    });
    assert_eq!(flood, (10 - (min - 1), 10));
    // 5-byte heartbeats answered with 9 bytes: never a streak.
    let heartbeats = streaked(&|c| {
        for _ in 0..10 {
            c.client(ku()).server(app_data(26));
        }
    });
    assert_eq!(heartbeats, (0, 10));
    // Server push of 5-byte messages: the server direction never counts.
    let push = streaked(&|c| {
        for _ in 0..10 {
            c.server(ku());
        }
    });
    assert_eq!(push, (0, 10));
    // An attacker breaking the streak with a 23-byte record every 3
    // KeyUpdates gets none counted; every 8, 8 - 3 of each 8 count.
    for (every, want) in [(3u32, 0u32), (8, 8 - (min - 1))] {
        let got = streaked(&|c| {
            for _ in 0..4 {
                for _ in 0..every {
                    c.client(ku()).server(ku());
                }
                c.client(app_data(23));
            }
        });
        assert_eq!(got, (4 * want, 4 * every * 2), "a break every {every}");
    }
    // A break from the server (a record of another size) counts as well,
    // and so does an alert; the streak starts again after it.
    let broken = streaked(&|c| {
        for _ in 0..5 {
            c.client(ku());
        }
        c.server(app_data(100));
        for _ in 0..5 {
            c.client(ku());
        }
        c.client(encrypted_alert());
        for _ in 0..3 {
            c.client(ku());
        }
    });
    assert_eq!(broken, (2 * (5 - (min - 1)), 13));
}

/// 22-byte records before the client's Finished flight (the server's
/// encrypted handshake, 0-RTT data) are not KeyUpdates.
#[test]
fn tls13_no_keyupdate_like_before_handshake_completes() {
    let mut c = Conversation::new();
    c.client([ClientHello::tls13().record(), app_data(22)].concat())
        .server(tls13_server_flight(
            &ServerHello::tls13().message(),
            &[22, 22, 53],
        ));
    let s = all_ways(&c);
    assert_eq!(s.counters.keyupdate_like, 0);
    assert_eq!(s.counters.handshakes, 0);
    // The client's first record after the ServerHello ends the handshake,
    // whatever its size; only the ones after it count.
    c.client(app_data(22)).client(app_data(22));
    let s = all_ways(&c);
    assert_eq!(s.counters.handshakes, 1);
    assert_eq!(s.counters.keyupdate_like, 1);
}

#[test]
fn tls12_has_no_keyupdate_like() {
    let mut c = Conversation::new();
    tls12_full(&mut c).client(app_data(22)).server(app_data(22));
    let s = all_ways(&c);
    assert_eq!(s.counters.keyupdate_like, 0);
}

/// After a TLS 1.3 handshake the client's records are encrypted: a record
/// that looks like a cleartext ClientHello is not one (and does not start a
/// handshake that would stop KeyUpdate counting).
#[test]
fn tls13_client_hello_lookalike_after_handshake() {
    for compat in [false, true] {
        let mut c = Conversation::new();
        c.client(ClientHello::tls13().record())
            .server(tls13_server_flight(&ServerHello::tls13().message(), &[900]));
        if compat {
            c.client(ccs());
        }
        c.client(app_data(53))
            .client(ClientHello::tls13().record())
            .client(app_data(53))
            .client(app_data(22));
        let s = all_ways(&c);
        assert_eq!(s.counters.client_hellos, 1, "compat {compat}");
        assert_eq!(s.counters.handshakes, 1, "compat {compat}");
        assert_eq!(s.counters.keyupdate_like, 1, "compat {compat}");
    }
}

/// In TLS 1.3 an encrypted handshake-typed record is not a renegotiation.
#[test]
fn tls13_handshake_records_after_handshake_are_not_renegotiations() {
    let mut c = Conversation::new();
    tls13_full(&mut c);
    c.client(encrypted_handshake(40))
        .server(encrypted_handshake(40));
    let s = all_ways_finished(&c);
    assert_eq!(s.counters.renegotiations_client, 0);
    assert_eq!(s.counters.renegotiations_server, 0);
    assert_eq!(s.counters.renegotiations_refused, 0);
    assert_eq!(s.counters.client_hellos, 1);
    assert_eq!(s.counters.records[R_HS], 4);
}

// ---------------------------------------------------------------------------
// Alerts, heartbeat, record types.

#[test]
fn alerts_and_every_record_type_counted() {
    let mut c = Conversation::new();
    tls12_full(&mut c)
        .client([heartbeat(19), app_data(1)].concat())
        .server([heartbeat(19), alert(ALERT_WARNING, 112)].concat())
        .client(encrypted_alert())
        .server(encrypted_alert());
    let s = all_ways_finished(&c);
    assert_eq!(
        s.counters,
        FlowCounters {
            client_hellos: 1,
            handshakes: 1,
            alerts: 3,
            records: recs(2, 3, 8, 1, 2),
            ..Default::default()
        }
    );
}

/// A fatal alert in the middle of the first handshake.
#[test]
fn handshake_failure_alert() {
    let mut c = Conversation::new();
    c.client(ClientHello::tls12().record())
        .server(alert(ALERT_FATAL, 40))
        .close(SERVER);
    let s = all_ways_finished(&c);
    assert_eq!(
        s.counters,
        FlowCounters {
            client_hellos: 1,
            alerts: 1,
            records: recs(0, 1, 1, 0, 0),
            ..Default::default()
        }
    );
    assert_eq!(s.version, 0);
}

// ---------------------------------------------------------------------------
// TCP: retransmissions, gaps, wraparound, empty segments.

#[test]
fn retransmitted_whole_segment_is_not_counted_twice() {
    let mut c = Conversation::new();
    tls12_full(&mut c);
    tls12_client_reneg(&mut c);
    let clean = run_sends(&c, [0, 0]);
    for isn in ISNS {
        let plan = c.plan_sends();
        let mut d = Driver::new(&c, isn);
        let mut resent = 0;
        for (i, s) in plan.iter().enumerate() {
            d.step(*s);
            // Every segment twice, and every third one a third time later.
            if let Step::Seg { dir, start, end } = *s {
                assert_eq!(d.seg(dir, start, end), SegmentOutcome::Retransmit);
                resent += 1;
            }
            if i % 3 == 2 {
                if let Some(Step::Seg { dir, start, end }) = plan.get(i - 2) {
                    assert_eq!(d.seg(*dir, *start, *end), SegmentOutcome::Retransmit);
                    resent += 1;
                }
            }
        }
        let mut want = Observed::of(&clean);
        want.counters.retransmits = resent;
        assert_eq!(Observed::of(&d.state), want, "isn {isn:?}");
    }
}

#[test]
fn partially_overlapping_segment_counts_only_new_bytes() {
    let mut c = Conversation::new();
    tls12_full(&mut c);
    tls12_client_reneg(&mut c);
    c.client(app_data(22));
    let clean = Observed::of(&run_sends(&c, [0, 0]));
    for isn in ISNS {
        for back in [1usize, 3, 5, 6, 40, 700] {
            // Each segment (7 bytes) re-sent from `back` bytes earlier.
            let plan = c.plan_sizes(|_| 7);
            let mut d = Driver::new(&c, isn);
            for s in plan {
                match s {
                    Step::Seg { dir, start, end } => {
                        let out = d.seg(dir, start.saturating_sub(back), end);
                        assert_eq!(out, SegmentOutcome::Parsed);
                    }
                    close => d.step(close),
                }
            }
            assert_eq!(Observed::of(&d.state), clean, "isn {isn:?}, back {back}");
        }
    }
}

/// A segment that repeats old bytes and brings new ones, where the new part
/// starts in the middle of a record header.
#[test]
fn overlap_ending_inside_a_record_header() {
    let mut c = Conversation::new();
    tls12_full(&mut c);
    let clean = Observed::of(&run_sends(&c, [0, 0]));
    let mut d = Driver::new(&c, [u32::MAX - 1, 10]);
    let cl = d.streams[CLIENT].len();
    let ch = ClientHello::tls12().record().len();
    // Client: the ClientHello plus 2 bytes of the next header, then from 3
    // bytes back to the end.
    assert_eq!(d.seg(CLIENT, 0, ch + 2), SegmentOutcome::Parsed);
    let sl = d.streams[SERVER].len();
    assert_eq!(d.seg(SERVER, 0, sl - 20), SegmentOutcome::Parsed);
    assert_eq!(d.seg(CLIENT, ch - 1, cl), SegmentOutcome::Parsed);
    assert_eq!(d.seg(CLIENT, 0, cl), SegmentOutcome::Retransmit);
    assert_eq!(d.seg(SERVER, 100, sl), SegmentOutcome::Parsed);
    let mut want = clean;
    want.counters.retransmits = 1;
    assert_eq!(Observed::of(&d.state), want);
}

#[test]
fn gap_unsyncs_only_that_direction() {
    let mut c = Conversation::new();
    tls12_full(&mut c);
    c.client(app_data(100)).server(app_data(100));
    for isn in ISNS {
        let mut d = Driver::new(&c, isn);
        d.run(&c.plan_sends());
        let cl = d.streams[CLIENT].len();
        // The client's next 105 bytes are lost; the record after them arrives.
        d.streams[CLIENT].extend([app_data(100), app_data(22)].concat());
        assert_eq!(d.seg(CLIENT, cl + 105, cl + 132), SegmentOutcome::Gap);
        assert_eq!(d.state.counters.gaps, 1);
        assert!(d.state.unsynced());
        assert!(d.state.flags & FF_UNSYNCED != 0);
        assert_eq!(d.state.dirs[CLIENT].status, DIR_UNSYNCED);
        assert_eq!(d.state.dirs[SERVER].status, DIR_SYNCED);
        // Nothing more from the client is parsed, not even the lost bytes.
        assert_eq!(d.seg(CLIENT, cl, cl + 105), SegmentOutcome::Ignored);
        assert_eq!(d.state.counters.records[R_APP], 2);
        // The server keeps counting.
        let sl = d.streams[SERVER].len();
        d.streams[SERVER].extend([app_data(10), encrypted_alert()].concat());
        assert_eq!(d.seg(SERVER, sl, sl + 46), SegmentOutcome::Parsed);
        assert_eq!(d.state.counters.records[R_APP], 3);
        assert_eq!(d.state.counters.alerts, 1);
        assert_eq!(d.state.counters.gaps, 1);
    }
}

/// A gap in the middle of the handshake, and one segment ahead by one byte.
#[test]
fn gap_in_handshake() {
    let mut c = Conversation::new();
    tls12_full(&mut c);
    let mut d = Driver::new(&c, [u32::MAX - 10, u32::MAX]);
    let sl = d.streams[SERVER].len();
    d.seg(CLIENT, 0, 100);
    assert_eq!(d.seg(CLIENT, 101, 200), SegmentOutcome::Gap);
    assert_eq!(d.seg(SERVER, 0, 50), SegmentOutcome::Parsed);
    assert_eq!(d.seg(SERVER, 50, sl), SegmentOutcome::Parsed);
    assert_eq!(d.state.counters.gaps, 1);
    assert_eq!(d.state.counters.handshakes, 0);
    assert_eq!(d.state.version, VERSION_TLS12);
    assert_eq!(d.state.counters.records, recs(1, 0, 1 + 5, 0, 0));
    assert_eq!(d.state.dirs[SERVER].status, DIR_SYNCED);
}

#[test]
fn sequence_numbers_wrap() {
    let mut c = Conversation::new();
    tls12_full(&mut c);
    let clean = Observed::of(&run_sends(&c, [0, 0]));
    for start in 0..12u32 {
        let isn = [u32::MAX - start, u32::MAX - 6 * start];
        let mut d = Driver::new(&c, isn);
        d.run(&c.plan_sizes(|_| 3));
        assert_eq!(Observed::of(&d.state), clean, "isn {isn:?}");
        // Retransmission of the first bytes, across the wrap.
        assert_eq!(d.seg(CLIENT, 0, 20), SegmentOutcome::Retransmit);
    }
}

#[test]
fn empty_segments_and_unsynced_direction() {
    let mut c = Conversation::new();
    tls12_full(&mut c);
    let mut d = Driver::new(&c, [0, 0]);
    assert_eq!(d.raw(CLIENT, 0, &[]), SegmentOutcome::Empty);
    // An empty segment does not fix the sequence number: the stream may start later.
    assert_eq!(d.seg(CLIENT, 0, 10), SegmentOutcome::Parsed);
    assert_eq!(d.raw(CLIENT, 1_000, &[]), SegmentOutcome::Empty);
    assert_eq!(d.state.counters.gaps, 0);
    assert_eq!(
        d.raw(SERVER, 0, b"SSH-2.0-OpenSSH_9.2\r\n"),
        SegmentOutcome::BadRecord
    );
    assert_eq!(d.seg(SERVER, 21, 40), SegmentOutcome::Ignored);
    assert_eq!(d.raw(SERVER, 0, b"SSH"), SegmentOutcome::Ignored);
    assert_eq!(d.state.counters.retransmits, 0);
    assert_eq!(d.state.counters.bad_records, 1);
}

// ---------------------------------------------------------------------------
// Record headers that are not TLS.

#[test]
fn http_request_is_a_bad_record() {
    let mut c = Conversation::new();
    c.client(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
        .server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    for plan in [c.plan_sends(), c.plan_bytes()] {
        let mut d = Driver::new(&c, [9, 9]);
        d.run(&plan);
        let s = d.state;
        assert_eq!(
            s.counters,
            FlowCounters {
                bad_records: 2,
                ..Default::default()
            }
        );
        assert!(s.unsynced());
        assert_eq!(s.dirs[CLIENT].status, DIR_UNSYNCED);
        assert_eq!(s.dirs[SERVER].status, DIR_UNSYNCED);
    }
}

/// Bad type, bad version, oversize length: rejected where a header is due,
/// after valid records.
#[test]
fn bad_record_headers_rejected() {
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("type 0", record(0, VERSION_TLS12, &[1, 2])),
        ("type 19", record(19, VERSION_TLS12, &[1, 2])),
        ("type 25", record(25, VERSION_TLS12, &[1, 2])),
        (
            "type 0x80 (SSLv2)",
            vec![0x80, 0x2e, 0x01, 0x00, 0x02, 0, 0],
        ),
        ("version 2.0", record(CT_HANDSHAKE, 0x0200, &[1, 2])),
        ("version 3.5", record(CT_APPLICATION_DATA, 0x0305, &[1, 2])),
        ("version 4.3", record(CT_APPLICATION_DATA, 0x0403, &[1, 2])),
        (
            "version 0xfeff (DTLS)",
            record(CT_APPLICATION_DATA, 0xfeff, &[1, 2]),
        ),
        (
            "length MAX+1",
            record_raw(
                CT_APPLICATION_DATA,
                VERSION_TLS12,
                MAX_RECORD_LEN + 1,
                &[0; 64],
            ),
        ),
        (
            "length 0xffff",
            record_raw(CT_ALERT, VERSION_TLS12, 0xffff, &[0; 64]),
        ),
    ];
    for (name, b) in bad {
        let mut c = Conversation::new();
        tls12_full(&mut c)
            .client(app_data(10))
            .client(&b)
            .client(app_data(10));
        c.server(app_data(10));
        for plan in [c.plan_sends(), c.plan_bytes()] {
            let mut d = Driver::new(&c, [3, 4]);
            d.run(&plan);
            let s = d.state;
            assert_eq!(s.counters.bad_records, 1, "{name}");
            assert_eq!(s.counters.records, recs(2, 0, 8, 2, 0), "{name}");
            assert_eq!(s.counters.handshakes, 1, "{name}");
            assert_eq!(s.dirs[CLIENT].status, DIR_UNSYNCED, "{name}");
            assert_eq!(s.dirs[SERVER].status, DIR_SYNCED, "{name}");
            assert!(s.unsynced());
        }
    }
}

/// Every legal header variant is accepted: versions 3.0 to 3.4, lengths 0 and
/// MAX_RECORD_LEN.
#[test]
fn legal_record_headers_accepted() {
    let mut c = Conversation::new();
    for minor in 0..=4u16 {
        c.client(record(CT_APPLICATION_DATA, 0x0300 | minor, &[1, 2, 3]));
    }
    c.client(app_data(0))
        .client(heartbeat(0))
        .client(record(CT_ALERT, VERSION_TLS12, &[]));
    let s = all_ways(&c);
    assert_eq!(s.counters.records, recs(0, 1, 0, 6, 1));
    assert_eq!(s.counters.bad_records, 0);
    assert_eq!(s.dirs[CLIENT].status, DIR_SYNCED);
    assert!(!s.unsynced());
}

#[test]
fn maximum_size_record_spans_many_segments() {
    let mut c = Conversation::new();
    tls12_full(&mut c)
        .client(
            [
                app_data(MAX_RECORD_LEN as usize),
                app_data(22),
                app_data(MAX_RECORD_LEN as usize),
            ]
            .concat(),
        )
        .client(encrypted_alert());
    for isn in ISNS {
        for mss in [1usize, 1448, 1460, 4096, 65535] {
            let mut d = Driver::new(&c, isn);
            d.run(&c.plan_sizes(|_| mss));
            let s = d.state;
            assert_eq!(s.counters.records, recs(2, 1, 8, 3, 0), "mss {mss}");
            assert_eq!(s.counters.alerts, 1);
            assert_eq!(s.counters.bad_records, 0);
            assert_synced(&s);
        }
    }
}

// ---------------------------------------------------------------------------
// Step budget.

#[test]
fn step_budget_overflow() {
    // 50 one-byte records: a header step and a body step each.
    let many: Vec<u8> = (0..50).flat_map(|_| app_data(1)).collect();
    let mut c = Conversation::new();
    c.client(&many).server(app_data(1));
    let need = 100;

    let mut d = Driver::new(&c, [0, 0]);
    d.max_steps = need;
    d.run(&c.plan_sends());
    assert_eq!(d.outcomes, [SegmentOutcome::Parsed, SegmentOutcome::Parsed]);
    assert_eq!(d.state.counters.records[R_APP], 51);
    assert_eq!(d.state.counters.overflows, 0);

    for budget in [0, 1, 2, 50, need - 1] {
        let mut d = Driver::new(&c, [0, 0]);
        d.max_steps = budget;
        d.run(&c.plan_sends());
        assert_eq!(d.outcomes[0], SegmentOutcome::Overflow, "budget {budget}");
        // The server's one record needs 2 steps.
        assert_eq!(d.state.counters.overflows, 1 + u16::from(budget < 2));
        assert_eq!(d.state.dirs[CLIENT].status, DIR_UNSYNCED);
        assert!(d.state.flags & FF_UNSYNCED != 0);
        // What was read before the budget ran out is counted: one record per
        // header step, client and server.
        assert_eq!(
            d.state.counters.records[R_APP],
            budget.div_ceil(2) + u32::from(budget >= 1)
        );
        // The next client segment is ignored.
        assert_eq!(
            d.raw(CLIENT, many.len(), &app_data(1)),
            SegmentOutcome::Ignored
        );
        // The server has its own budget per segment.
        if budget >= 2 {
            assert_eq!(d.outcomes[1], SegmentOutcome::Parsed);
        }
    }

    // The same bytes in small segments fit the budget.
    let mut d = Driver::new(&c, [0, 0]);
    d.max_steps = 4;
    d.run(&c.plan_sizes(|_| 12));
    assert_eq!(d.state.counters.records[R_APP], 51);
    assert_eq!(d.state.counters.overflows, 0);
}

/// The eBPF program's budget: `step_bound` of each segment's length.
fn ebpf_run(c: &Conversation, plan: &[Step]) -> FlowState {
    let mut st = FlowState::new();
    let streams = [c.stream(CLIENT), c.stream(SERVER)];
    for s in plan {
        match *s {
            Step::Seg { dir, start, end } => {
                let bytes = &streams[dir][start..end];
                st.on_segment(dir, start as u32, bytes, step_bound(bytes.len() as u32));
            }
            Step::Close(dir) => st.on_close(dir),
        }
    }
    st
}

#[test]
fn step_bound_covers_a_64k_segment_of_minimal_records() {
    // 13,099 empty records: one header step each, 65,495 bytes.
    let n = (65_535 - 40) / 5;
    let burst: Vec<u8> = (0..n).flat_map(|_| app_data(0)).collect();
    let mut c = Conversation::new();
    c.client(ClientHello::tls12().record())
        .client(&burst)
        .client(app_data(3));
    let st = ebpf_run(&c, &c.plan_sends());
    assert!(!st.unsynced(), "{:?}", st.counters);
    assert_eq!(st.counters.overflows, 0);
    assert_eq!(st.counters.records[R_APP], n as u32 + 1);
    // The old fixed budget of 1,024 steps ran out on it.
    let mut d = Driver::new(&c, [0, 0]);
    d.max_steps = 1024;
    d.run(&c.plan_sends());
    assert_eq!(d.state.counters.overflows, 1);
}

#[test]
fn step_bound_covers_one_byte_records_then_renegotiations() {
    let mut c = Conversation::new();
    tls12_full(&mut c);
    let mut burst: Vec<u8> = (0..3000).flat_map(|_| app_data(1)).collect();
    for _ in 0..6 {
        burst.extend(encrypted_handshake(250));
    }
    c.client(burst);
    let st = ebpf_run(&c, &c.plan_sends());
    assert!(!st.unsynced(), "{:?}", st.counters);
    assert_eq!(st.counters.renegotiations_client, 6);
    assert_eq!(st.counters.records[R_APP], 3000);
}

#[test]
fn whole_record_then_more_in_one_segment_stays_synced() {
    // A reply written as head + body: one whole record, then more records,
    // the last one cut by the segment end.
    let mut c = Conversation::new();
    tls13_full(&mut c);
    let mut seg = app_data(30);
    seg.extend(app_data(300));
    seg.extend(app_data(40));
    c.server(&seg).server(app_data(5));
    let whole = ebpf_run(&c, &c.plan_sends());
    assert!(!whole.unsynced(), "{:?}", whole.counters);
    let cut = ebpf_run(&c, &c.plan_sizes(|_| 333));
    assert!(!cut.unsynced(), "{:?}", cut.counters);
    assert_eq!(whole.counters, cut.counters);
    assert_eq!(
        whole.counters.records[R_APP],
        run_sends(&c, [0, 0]).counters.records[R_APP]
    );
}

// ---------------------------------------------------------------------------
// Malformed ServerHellos: no panic; record framing keeps the stream in sync.

/// The ServerHello `sh_body` (raw) in one record with a Certificate and a
/// ServerHelloDone, then the rest of a TLS 1.2 handshake.
fn with_server_hello_body(sh_body: &[u8]) -> Conversation {
    let mut c = Conversation::new();
    tls12_full_with_hello(&mut c, &hs(HS_SERVER_HELLO, sh_body), 300).client(app_data(10));
    c
}

fn assert_intact(s: &FlowState, name: &str) {
    assert_eq!(s.counters.records, recs(2, 0, 5, 1, 0), "{name}");
    assert_eq!(s.counters.handshakes, 1, "{name}");
    assert!(
        s.flags & FF_SERVER_CERT_SEEN != 0,
        "{name}: certificate not seen"
    );
    assert!(!s.resumed(), "{name}");
    assert_synced(s);
}

#[test]
fn server_hello_shorter_than_fixed_fields() {
    let full = no_ext_body(ServerHello::tls12());
    for len in [0usize, 1, 2, 10, 34, 35, 37] {
        let c = with_server_hello_body(&full[..len.min(full.len())]);
        let s = all_ways(&c);
        assert_eq!(s.counters.malformed, 1, "len {len}");
        assert_eq!(s.version, 0, "len {len}");
        assert_intact(&s, &format!("len {len}"));
    }
    // 38 bytes: exactly the fixed fields (empty session id, no extensions).
    let mut sh = ServerHello::tls12().session_id(0);
    sh.no_extensions = true;
    let c = with_server_hello_body(&sh.body());
    let s = all_ways(&c);
    assert_eq!(sh.body().len(), 38);
    assert_eq!(s.counters.malformed, 0);
    assert_eq!(s.version, VERSION_TLS12);
    assert_intact(&s, "38");
}

/// The ServerHello's body without its extensions block.
fn no_ext_body(mut sh: ServerHello) -> Vec<u8> {
    sh.no_extensions = true;
    sh.body()
}

#[test]
fn server_hello_with_lying_lengths() {
    let base = ServerHello::tls12();
    let fixed = no_ext_body(base.clone()); // 2 + 32 + 1 + 32 + 2 + 1 = 70 bytes
    assert_eq!(fixed.len(), 70);
    let exts = base.extensions();
    let with_exts = |ext_len: u16, exts: &[u8]| -> Vec<u8> {
        [&fixed[..], &ext_len.to_be_bytes(), exts].concat()
    };
    let mut session_id_too_long = fixed.clone();
    session_id_too_long[34] = 255;
    let mut session_id_short = fixed.clone();
    session_id_short[34] = 3;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("extensions length beyond message", with_exts(500, &exts)),
        ("extensions length 0xffff", with_exts(0xffff, &exts)),
        ("extensions length short", with_exts(3, &exts)),
        (
            "extension header length beyond block",
            with_exts(6, &[0xff, 0x01, 0x01, 0x00, 0, 0]),
        ),
        (
            "extension length 0xffff",
            with_exts(8, &[0, 0x2b, 0xff, 0xff, 3, 4, 0, 0]),
        ),
        ("truncated extension header", with_exts(2, &[0, 0x2b])),
        (
            "one byte of extensions length",
            [&fixed[..], &[0u8][..]].concat(),
        ),
        ("session id length beyond message", session_id_too_long),
        ("session id length short", session_id_short),
        (
            "supported_versions of 3 bytes",
            with_exts(7, &[0, 0x2b, 0, 3, 3, 4, 0]),
        ),
        (
            "supported_versions of 1 byte",
            with_exts(5, &[0, 0x2b, 0, 1, 3]),
        ),
        // The extensions length promises 6 bytes, the message ends after the
        // 4-byte header of a 2-byte supported_versions: its value must not be
        // read from the next message.
        (
            "supported_versions past the end of the message",
            with_exts(6, &[0, 0x2b, 0, 2]),
        ),
    ];
    for (name, body) in cases {
        let c = with_server_hello_body(&body);
        let s = all_ways(&c);
        assert_eq!(s.counters.malformed, 0, "{name}");
        assert_eq!(s.version, VERSION_TLS12, "{name}");
        assert_intact(&s, name);
    }
}

/// A ServerHello whose handshake length is more than its record holds and the
/// next record is a CCS: the half-read message is dropped, and the stream
/// stays in sync.
#[test]
fn server_hello_cut_short_by_ccs() {
    let sh = ServerHello::tls12().message();
    let mut c = Conversation::new();
    tls12_abbreviated(&mut c, &hs_record(&[&sh[..50]])).client(app_data(10));
    let s = all_ways(&c);
    assert_eq!(s.counters.records, recs(2, 0, 4, 1, 0));
    assert_eq!(s.counters.handshakes, 1);
    assert_synced(&s);
}

/// Garbage inside cleartext handshake records: handshake headers with huge
/// lengths, random bytes. Records keep being framed correctly.
#[test]
fn garbage_inside_handshake_records() {
    let mut c = Conversation::new();
    c.client(hs_record(&[&[0xff; 300]]))
        .server(hs_record(&[&[HS_SERVER_HELLO, 0xff, 0xff, 0xff]]))
        .server(hs_record(&[&filler(400, 99)]))
        .server(hs_record(&[&[HS_SERVER_HELLO, 0, 0, 40], &filler(40, 98)]))
        .server(hs_record(&[&[HS_SERVER_HELLO]]))
        .server(hs_record(&[&[0, 0]]))
        .client(hs_record(&[
            &[HS_CLIENT_HELLO, 0, 0, 0],
            &[HS_CLIENT_HELLO, 0, 0, 1],
        ]))
        .client(hs_record(&[&[7]]))
        .client(app_data(3));
    let s = all_ways(&c);
    assert_eq!(s.counters.records, recs(0, 0, 8, 1, 0));
    assert_synced(&s);
}

// ---------------------------------------------------------------------------
// The first-bytes check.

#[test]
fn starts_with_client_hello_cases() {
    let ch = ClientHello::tls12().record();
    let first6 = |b: &[u8]| -> [u8; 6] { b[..6].try_into().unwrap() };
    assert!(starts_with_client_hello(&first6(&ch)));
    assert!(starts_with_client_hello(&first6(
        &ClientHello::tls13().record()
    )));
    for v in [0x0300u16, 0x0301, 0x0302, 0x0303, 0x0304] {
        assert!(
            starts_with_client_hello(&[22, 3, v as u8, 0, 4, 1]),
            "{v:x}"
        );
    }
    let max = MAX_RECORD_LEN.to_be_bytes();
    assert!(starts_with_client_hello(&[22, 3, 1, max[0], max[1], 1]));
    let over = (MAX_RECORD_LEN + 1).to_be_bytes();
    let no: &[(&str, [u8; 6])] = &[
        (
            "server hello",
            first6(&hs_record(&[&ServerHello::tls12().message()])),
        ),
        ("application data", [23, 3, 3, 0, 40, 1]),
        ("alert", [21, 3, 3, 0, 2, 1]),
        ("version 2.0", [22, 2, 0, 0, 40, 1]),
        ("version 3.5", [22, 3, 5, 0, 40, 1]),
        ("length 3", [22, 3, 1, 0, 3, 1]),
        ("length 0", [22, 3, 1, 0, 0, 1]),
        ("length MAX+1", [22, 3, 1, over[0], over[1], 1]),
        ("http", *b"GET / "),
        ("sslv2", [0x80, 0x2e, 1, 0, 2, 0]),
        ("zeros", [0; 6]),
        ("hello request", [22, 3, 3, 0, 4, 0]),
    ];
    for (name, b) in no {
        assert!(!starts_with_client_hello(b), "{name}");
    }
}

/// A first segment shorter than 6 bytes: every prefix of a real ClientHello
/// could start one; a prefix with a wrong byte cannot.
#[test]
fn could_start_client_hello_on_short_segments() {
    let ch = ClientHello::tls13().record();
    let mut head = [0u8; 6];
    head.copy_from_slice(&ch[..6]);
    for n in 1..=6 {
        let mut partial = [0u8; 6];
        partial[..n].copy_from_slice(&ch[..n]);
        assert!(could_start_client_hello(&partial, n), "prefix of {n}");
    }
    assert!(!could_start_client_hello(&head, 0), "nothing");
    assert!(
        !could_start_client_hello(&[23, 0, 0, 0, 0, 0], 1),
        "app data"
    );
    assert!(
        !could_start_client_hello(&[22, 2, 0, 0, 0, 0], 2),
        "version 2"
    );
    assert!(
        !could_start_client_hello(&[22, 3, 9, 0, 0, 0], 3),
        "version 3.9"
    );
    assert!(
        !could_start_client_hello(&[22, 3, 3, 0, 2, 0], 5),
        "length 2"
    );
    assert!(
        !could_start_client_hello(&[22, 3, 3, 0, 40, 2], 6),
        "server hello"
    );
    assert!(!could_start_client_hello(b"G\0\0\0\0\0", 1), "http");
    // Bytes past `n` are not looked at.
    assert!(could_start_client_hello(&[22, 3, 3, 0xff, 0xff, 9], 3));
}

/// A renegotiation flood into a server that never answers: every encrypted
/// ClientHello is a new attempt, and each unanswered one is refused.
#[test]
fn client_renegotiation_flood_into_silent_server() {
    let mut c = Conversation::new();
    tls12_full(&mut c);
    for _ in 0..5 {
        c.client(encrypted_handshake(250));
    }
    let s = all_ways_finished(&c);
    assert_eq!(s.counters.client_hellos, 6);
    assert_eq!(s.counters.renegotiations_client, 5);
    // Four superseded while unanswered, the last one refused at finish().
    assert_eq!(s.counters.renegotiations_refused, 5);
    assert_eq!(s.counters.handshakes, 1);
}

// ---------------------------------------------------------------------------
// Renegotiation cap (`apply_reneg_cap`, `FF_OVER_CAP`).

/// A TLS 1.2 connection with `n` honoured client renegotiations, each
/// followed by application data both ways.
fn tls12_with_client_renegs(n: usize) -> Conversation {
    let mut c = Conversation::new();
    tls12_full(&mut c);
    c.client(app_data(100)).server(app_data(200));
    for _ in 0..n {
        tls12_client_reneg(&mut c);
        c.client(app_data(50)).server(app_data(60));
    }
    c
}

/// Runs `plan` with `cap`, checking after every client segment that the
/// verdict is `Hit` exactly on the segment whose parsing took
/// `renegotiations_client` over `cap`, `Pass` before it and `Over` after it.
/// Returns the driver and the index (among client segments) of the hit.
fn run_capped(
    conv: &Conversation,
    isn: [u32; 2],
    plan: &[Step],
    cap: u32,
) -> (Driver, Option<usize>) {
    let mut d = Driver::new(conv, isn);
    d.reneg_cap = cap;
    let mut hit = None;
    let mut client_segs = 0;
    for step in plan {
        let before = d.state.counters.renegotiations_client;
        d.step(*step);
        if let Step::Seg { dir: CLIENT, .. } = step {
            let after = d.state.counters.renegotiations_client;
            let verdict = *d.verdicts.last().expect("a verdict per client segment");
            let want = if hit.is_some() {
                CapVerdict::Over
            } else if before <= cap && after > cap {
                hit = Some(client_segs);
                CapVerdict::Hit
            } else {
                CapVerdict::Pass
            };
            assert_eq!(
                verdict, want,
                "client segment {client_segs}: {before} -> {after}"
            );
            assert_eq!(d.state.over_cap(), hit.is_some());
            client_segs += 1;
        }
    }
    assert_eq!(d.verdicts.len(), client_segs);
    (d, hit)
}

#[test]
fn reneg_cap_hits_on_the_segment_with_the_clienthello_over_it() {
    let c = tls12_with_client_renegs(5);
    let mut n = 0usize;
    let plans = [
        c.plan_sends(),
        c.plan_runs(),
        c.plan_bytes(),
        c.plan_sizes(|_| 7),
        c.plan_sizes(|dir| {
            n += 1;
            [1, 2, 3, 4, 5, 6, 1460, 9, 300][(n + dir) % 9]
        }),
    ];
    for isn in ISNS {
        for plan in &plans {
            let (d, hit) = run_capped(&c, isn, plan, 3);
            assert!(hit.is_some(), "the 4th renegotiation hits the cap of 3");
            // Counting goes on: the counts say what crossed the wire.
            assert_eq!(d.state.counters.renegotiations_client, 5);
            assert!(d.state.flags & FF_OVER_CAP != 0);
        }
    }
}

#[test]
fn reneg_cap_hit_is_the_fourth_clienthello_segment_when_one_per_send() {
    let c = tls12_with_client_renegs(5);
    let (d, hit) = run_capped(&c, ISNS[0], &c.plan_sends(), 3);
    // Client sends: ClientHello, then CKE + CCS + Finished, then app data: 3
    // before the renegotiations and 3 per renegotiation; the 4th
    // renegotiation's ClientHello is the first send after 3 of them.
    assert_eq!(hit, Some(3 + 3 * 3));
    let s = d.state;
    assert_eq!(s.counters.handshakes, 6);
    assert_eq!(s.counters.renegotiations_refused, 0);
}

#[test]
fn reneg_cap_within_or_off_never_hits() {
    for n in 0..5usize {
        let c = tls12_with_client_renegs(n);
        for cap in [n as u32, n as u32 + 1, 10] {
            if cap == 0 {
                continue;
            }
            let (d, hit) = run_capped(&c, ISNS[1], &c.plan_runs(), cap);
            assert_eq!(hit, None, "{n} renegotiations, cap {cap}");
            assert!(d.verdicts.iter().all(|v| *v == CapVerdict::Pass));
        }
        // Cap 0: no cap at all.
        let mut s = run_sends(&c, ISNS[0]);
        assert_eq!(s.apply_reneg_cap(0), CapVerdict::Pass);
        assert!(!s.over_cap());
    }
}

#[test]
fn reneg_cap_retransmission_of_the_dropped_segment_is_over() {
    let c = tls12_with_client_renegs(4);
    let plan = c.plan_sends();
    let mut d = Driver::new(&c, ISNS[2]);
    d.reneg_cap = 3;
    let mut hit_step = None;
    for step in &plan {
        d.step(*step);
        if d.verdicts.last() == Some(&CapVerdict::Hit) {
            hit_step = Some(*step);
            break;
        }
    }
    let Some(Step::Seg { dir, start, end }) = hit_step else {
        panic!("no hit with 4 renegotiations and cap 3");
    };
    let counters = d.state.counters;
    // The client's TCP retransmits the dropped segment: nothing is counted
    // twice, and it is dropped again.
    assert_eq!(d.seg(dir, start, end), SegmentOutcome::Retransmit);
    assert_eq!(d.verdicts.last(), Some(&CapVerdict::Over));
    assert_eq!(
        d.state.counters.renegotiations_client,
        counters.renegotiations_client
    );
    assert_eq!(d.state.counters.retransmits, counters.retransmits + 1);
    // The flag stays, whatever the cap says later; the end of the connection
    // refuses the unanswered renegotiation.
    assert_eq!(d.state.apply_reneg_cap(0), CapVerdict::Over);
    assert_eq!(d.state.apply_reneg_cap(100), CapVerdict::Over);
    d.state.finish();
    assert!(d.state.over_cap());
    assert_eq!(d.state.counters.renegotiations_refused, 1);
}

#[test]
fn reneg_cap_counts_refused_attempts_and_floods() {
    // Refused attempts count towards the cap: they crossed the wire.
    let mut c = Conversation::new();
    tls12_full(&mut c);
    tls12_client_reneg_refused(&mut c);
    tls12_client_reneg_refused(&mut c);
    let (d, hit) = run_capped(&c, ISNS[0], &c.plan_sends(), 1);
    assert!(hit.is_some());
    assert_eq!(d.state.counters.renegotiations_refused, 2);

    // ClientHellos into a silent server, all in one segment: one hit.
    let mut c = Conversation::new();
    tls12_full(&mut c);
    let flood: Vec<u8> = (0..6).flat_map(|_| encrypted_handshake(250)).collect();
    c.client(flood);
    let (d, hit) = run_capped(&c, ISNS[1], &c.plan_sends(), 3);
    assert_eq!(
        hit,
        Some(2),
        "the flood segment (after the 2 handshake sends)"
    );
    assert_eq!(d.state.counters.renegotiations_client, 6);
}

#[test]
fn reneg_cap_ignores_server_initiated_renegotiations() {
    let mut c = Conversation::new();
    tls12_full(&mut c);
    for _ in 0..4 {
        tls12_server_reneg(&mut c);
    }
    let (d, hit) = run_capped(&c, ISNS[0], &c.plan_sends(), 1);
    assert_eq!(hit, None);
    assert_eq!(d.state.counters.renegotiations_server, 4);
    assert_eq!(d.state.counters.renegotiations_client, 0);
    assert!(d.state.counters.client_hellos >= 5);
}

// ---------------------------------------------------------------------------
// Cleartext alert bodies (why a handshake failed).

/// `level << 8 | description`, as `alert_first`/`alert_last` hold it.
fn alert_code(level: u8, desc: u8) -> u16 {
    u16::from(level) << 8 | u16::from(desc)
}

#[test]
fn cleartext_alert_body_is_recorded() {
    let mut c = Conversation::new();
    c.client(ClientHello::tls12().record())
        .server(alert(ALERT_FATAL, 40))
        .close(SERVER);
    let s = all_ways_finished(&c);
    assert_eq!(s.alert_first, [0, alert_code(ALERT_FATAL, 40)]);
    assert_eq!(s.alert_last, [0, alert_code(ALERT_FATAL, 40)]);
    assert_eq!(
        (
            alert_level(s.alert_first[SERVER]),
            alert_description(s.alert_first[SERVER])
        ),
        (2, 40)
    );
}

/// A TLS 1.3 ClientHello refused for its version: the server's cleartext
/// `protocol_version`.
#[test]
fn protocol_version_refusal() {
    let mut c = Conversation::new();
    c.client(ClientHello::tls13().record())
        .server(alert(ALERT_FATAL, 70))
        .close(SERVER);
    let s = all_ways_finished(&c);
    assert_eq!(s.alert_first[SERVER], alert_code(ALERT_FATAL, 70));
    assert_eq!(s.alert_first[CLIENT], 0);
}

/// First and last per direction; several alerts in one record count as
/// several; the client's own alert stays in the client slot.
#[test]
fn first_and_last_alert_per_direction() {
    let mut c = Conversation::new();
    c.client(ClientHello::tls12().record())
        .server(hs_record(&[&ServerHello::tls12().message()]))
        .client(alert(ALERT_WARNING, 90))
        .client(record(
            CT_ALERT,
            0x0303,
            &[ALERT_WARNING, 0, ALERT_FATAL, 48],
        ))
        .close(CLIENT);
    let s = all_ways_finished(&c);
    assert_synced(&s);
    assert_eq!(s.alert_first, [alert_code(ALERT_WARNING, 90), 0]);
    assert_eq!(s.alert_last, [alert_code(ALERT_FATAL, 48), 0]);
    assert_eq!(s.counters.alerts, 2);
}

/// An alert record with an odd byte keeps sync; the odd byte is not the
/// start of the next pair.
#[test]
fn odd_alert_byte_is_dropped_and_sync_kept() {
    let mut c = Conversation::new();
    c.client(ClientHello::tls12().record())
        .server(record(CT_ALERT, 0x0303, &[ALERT_FATAL, 40, 7]))
        .server(alert(ALERT_WARNING, 0));
    let s = all_ways(&c);
    assert_synced(&s);
    assert_eq!(s.alert_first[SERVER], alert_code(ALERT_FATAL, 40));
    assert_eq!(s.alert_last[SERVER], alert_code(ALERT_WARNING, 0));
    assert_eq!(s.counters.records[R_ALERT], 2);
}

/// Alerts after ChangeCipherSpec (TLS 1.2) are encrypted: counted, body not
/// read.
#[test]
fn encrypted_alerts_are_not_read() {
    let mut c = Conversation::new();
    tls12_full(&mut c)
        .server(alert(ALERT_FATAL, 40))
        .client(encrypted_alert());
    let s = all_ways_finished(&c);
    assert_eq!(s.alert_first, [0, 0]);
    assert_eq!(s.alert_last, [0, 0]);
    assert_eq!(s.counters.alerts, 2);
}
