//! `BPF_PROG_TEST_RUN`: the real TC program, loaded into the kernel and fed
//! crafted IPv4 and IPv6 packets, ends with exactly the flow state that the
//! user-space tracker computes on the same bytes.
//!
//! Each test builds a TLS conversation with `monitor_common::testing`, cuts it
//! into segments (split records, several records per packet, retransmissions,
//! gaps, garbage), sends every segment through `hsmon_tc_ingress` with
//! `BPF_PROG_TEST_RUN`, replays the same segments into a user-space
//! `FlowState` with the same step budget, and compares the kernel's `FLOWS`
//! entry with it field by field.

use monitor_common::{
    testing::*,
    tls::{KEY_UPDATE_RECORD_LEN, MAX_RECORD_LEN},
    tracker::{FlowState, CLIENT, DIR_UNSYNCED, FF_CLOSED, KEYUPDATE_STREAK_MIN, SERVER},
};
use tests::{
    packet::{flags, tcp_segment, Endpoint},
    require_root,
    test_run::{frame, TcHarness},
};

fn v4() -> [Endpoint; 2] {
    [
        Endpoint {
            ip: "10.99.0.1".parse().expect("address"),
            port: 40001,
        },
        Endpoint {
            ip: "10.99.0.2".parse().expect("address"),
            port: 443,
        },
    ]
}

fn v6() -> [Endpoint; 2] {
    [
        Endpoint {
            ip: "fd00:99::1".parse().expect("address"),
            port: 40001,
        },
        Endpoint {
            ip: "fd00:99::2".parse().expect("address"),
            port: 8443,
        },
    ]
}

/// Feeds `plan` of `conv` to the kernel program and to a user-space tracker;
/// returns (kernel state, user-space state). `extra` segments (raw bytes at
/// an offset of a direction) are sent after the plan, to both.
fn replay(
    h: &mut TcHarness,
    ends: [Endpoint; 2],
    conv: &Conversation,
    plan: &[Step],
    isn: [u32; 2],
) -> (FlowState, FlowState) {
    let mut user = Driver::new(conv, isn);
    for step in plan {
        let frame = frame(ends, &user, *step);
        h.run(&frame).expect("BPF_PROG_TEST_RUN");
        user.step(*step);
    }
    let kernel = h
        .flow(ends[CLIENT], ends[SERVER])
        .expect("read FLOWS")
        .expect("the kernel created no flow");
    (kernel.tracker, user.state)
}

/// A TLS 1.2 connection: full handshake, two renegotiations (one honoured, one
/// refused by an alert), application data.
fn tls12_with_renegotiations() -> Conversation {
    let mut c = Conversation::new();
    c.client(ClientHello::tls12().record());
    c.server(hs_record(&[
        &ServerHello::tls12().message(),
        &certificate(900),
        &server_key_exchange(300),
        &server_hello_done(),
    ]));
    c.client(hs_record(&[&client_key_exchange(66)]))
        .client(ccs())
        .client(encrypted_finished());
    c.server(ccs()).server(encrypted_finished());
    c.client(app_data(120)).server(app_data(400));
    // Honoured client renegotiation.
    c.client(encrypted_handshake(250));
    c.server(encrypted_handshake(1300));
    c.client(encrypted_handshake(120))
        .client(ccs())
        .client(encrypted_finished());
    c.server(ccs()).server(encrypted_finished());
    // Refused one.
    c.client(encrypted_handshake(250));
    c.server(encrypted_alert());
    c.client(app_data(30));
    c
}

/// A TLS 1.3 connection with KeyUpdate-sized records after the handshake:
/// six from the client, each answered by one from the server (one streak:
/// the last three count in `keyupdate_streaked`).
fn tls13_with_key_updates() -> Conversation {
    let mut c = Conversation::new();
    c.client(ClientHello::tls13().record());
    c.server(hs_record(&[&ServerHello::tls13().message()]))
        .server(ccs())
        .server(app_data(2000));
    c.client(ccs()).client(app_data(53));
    c.server(app_data(200));
    for _ in 0..6 {
        c.client(app_data(KEY_UPDATE_RECORD_LEN as usize));
        c.server(app_data(KEY_UPDATE_RECORD_LEN as usize));
    }
    c.client(app_data(100));
    c
}

fn check(h: &mut TcHarness, ends: [Endpoint; 2], conv: &Conversation, plan: &[Step]) -> FlowState {
    let (kernel, user) = replay(h, ends, conv, plan, [0x1000_0000, u32::MAX - 100]);
    assert_eq!(kernel, user, "kernel and user-space trackers differ");
    kernel
}

#[test]
fn ipv4_records_split_across_segments() {
    require_root!();
    let mut h = TcHarness::load().expect("load the TC program");
    let conv = tls12_with_renegotiations();
    // 7-byte segments split every record header and most records.
    let s = check(&mut h, v4(), &conv, &conv.plan_sizes(|_| 7));
    assert_eq!(s.counters.handshakes, 2);
    assert_eq!(s.counters.renegotiations_client, 2);
    assert_eq!(s.counters.renegotiations_refused, 1);
    assert!(!s.unsynced());
}

#[test]
fn ipv4_several_records_per_packet() {
    require_root!();
    let mut h = TcHarness::load().expect("load the TC program");
    let conv = tls12_with_renegotiations();
    let s = check(&mut h, v4(), &conv, &conv.plan_runs());
    assert_eq!(s.counters.client_hellos, 3);
    assert_eq!(s.counters.handshakes, 2);
}

#[test]
fn ipv6_tls13_key_updates() {
    require_root!();
    let mut h = TcHarness::load().expect("load the TC program");
    let conv = tls13_with_key_updates();
    let s = check(
        &mut h,
        v6(),
        &conv,
        &conv.plan_sizes(|d| if d == CLIENT { 13 } else { 700 }),
    );
    assert_eq!(s.version, 0x0304);
    assert_eq!(s.counters.keyupdate_like, 12);
    assert_eq!(
        s.counters.keyupdate_streaked,
        6 - u32::from(KEYUPDATE_STREAK_MIN) + 1
    );
    assert_eq!(s.counters.handshakes, 1);
}

#[test]
fn retransmitted_segments_are_not_counted_twice() {
    require_root!();
    let mut h = TcHarness::load().expect("load the TC program");
    let conv = tls12_with_renegotiations();
    let mut plan = Vec::new();
    for step in conv.plan_sizes(|_| 40) {
        plan.push(step);
        // Every segment twice, and every third one again overlapping its predecessor.
        plan.push(step);
        if let Step::Seg { dir, start, end } = step {
            if start >= 10 && plan.len() % 3 == 0 {
                plan.push(Step::Seg {
                    dir,
                    start: start - 10,
                    end,
                });
            }
        }
    }
    let s = check(&mut h, v4(), &conv, &plan);
    let clean = run_sends(&conv, [0, 0]);
    assert_eq!(s.counters.handshakes, clean.counters.handshakes);
    assert_eq!(s.counters.client_hellos, clean.counters.client_hellos);
    assert!(s.counters.retransmits > 0);
    assert!(!s.unsynced());
}

#[test]
fn gap_marks_the_direction_unsynced() {
    require_root!();
    let mut h = TcHarness::load().expect("load the TC program");
    let conv = tls12_with_renegotiations();
    // Drop the 4th client segment: everything after it in that direction is a gap.
    let mut n = 0;
    let plan: Vec<Step> = conv
        .plan_sizes(|_| 100)
        .into_iter()
        .filter(|s| {
            if let Step::Seg { dir: CLIENT, .. } = s {
                n += 1;
                n != 4
            } else {
                true
            }
        })
        .collect();
    let s = check(&mut h, v4(), &conv, &plan);
    assert_eq!(s.dirs[CLIENT].status, DIR_UNSYNCED);
    assert_ne!(s.dirs[SERVER].status, DIR_UNSYNCED);
    assert_eq!(s.counters.gaps, 1);
    assert!(s.unsynced());
}

#[test]
fn garbage_after_the_handshake_loses_sync() {
    require_root!();
    let mut h = TcHarness::load().expect("load the TC program");
    let mut conv = tls12_with_renegotiations();
    conv.client(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    conv.client(app_data(10));
    let s = check(&mut h, v4(), &conv, &conv.plan_sends());
    assert_eq!(s.counters.bad_records, 1);
    assert_eq!(s.dirs[CLIENT].status, DIR_UNSYNCED);
}

#[test]
fn maximum_size_record_spans_segments() {
    require_root!();
    let mut h = TcHarness::load().expect("load the TC program");
    let mut conv = tls13_with_key_updates();
    conv.server(app_data(MAX_RECORD_LEN as usize));
    conv.server(app_data(10));
    let s = check(&mut h, v6(), &conv, &conv.plan_sizes(|_| 1400));
    assert!(!s.unsynced());
    assert_eq!(s.counters.records[3], conv_app_records(&conv));
}

/// Application-data records in a conversation, by construction.
fn conv_app_records(conv: &Conversation) -> u32 {
    let d = run_sends(conv, [0, 0]);
    d.counters.records[3]
}

#[test]
fn close_finishes_pending_renegotiation() {
    require_root!();
    let mut h = TcHarness::load().expect("load the TC program");
    let mut conv = tls12_with_renegotiations();
    conv.client(encrypted_handshake(250));
    conv.close(SERVER);
    let s = check(&mut h, v4(), &conv, &conv.plan_sends());
    assert_eq!(s.counters.renegotiations_client, 3);
    assert_eq!(s.counters.renegotiations_refused, 2);
    // FIN is not the end of the flow: the socket tracepoint decides that.
    assert_eq!(s.flags & FF_CLOSED, 0);
}

#[test]
fn non_tls_payload_creates_no_flow() {
    require_root!();
    let mut h = TcHarness::load().expect("load the TC program");
    let [c, s] = v4();
    for (i, payload) in [
        &b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0x00, 0x05, 0x02, 0, 0, 0, 0][..], // handshake, but not a ClientHello
        &[0x17, 0x03, 0x03, 0x00, 0x10][..],
        &[0xff; 64][..],
    ]
    .iter()
    .enumerate()
    {
        let frame = tcp_segment(c, s, 1000 + i as u32 * 100, flags::ACK, payload);
        h.run(&frame).expect("BPF_PROG_TEST_RUN");
    }
    assert_eq!(h.flow_count().expect("count flows"), 0);
    assert!(h.stat_segments().expect("read STATS") >= 4);
}

#[test]
fn malformed_packets_pass_untouched() {
    require_root!();
    let mut h = TcHarness::load().expect("load the TC program");
    let [c, s] = v4();
    let good = tcp_segment(c, s, 1, flags::ACK, &ClientHello::tls12().record());
    // Truncated at every length: no panic, no drop, and no flow from a cut ClientHello.
    // From a whole IPv4 header on: the kernel refuses shorter IPv4 test input.
    for len in 34..good.len() {
        let ret = h
            .run(&good[..len])
            .unwrap_or_else(|e| panic!("{len}: {e:?}"));
        assert_eq!(ret, tests::test_run::TC_ACT_UNSPEC, "packet of {len} bytes");
    }
    assert_eq!(h.flow_count().expect("count flows"), 0);
    // The whole packet does create it.
    h.run(&good).expect("BPF_PROG_TEST_RUN");
    assert_eq!(h.flow_count().expect("count flows"), 1);
}

/// One segment per run of same-direction sends whose first send is
/// `first` and whose other sends follow it in the same segment: the
/// segment starts at a record boundary with one whole record followed by
/// more bytes (a reply written as head + body under `TCP_CORK`).
fn whole_record_then_more(conv: &mut Conversation, dir: usize, first: Vec<u8>, rest: &[Vec<u8>]) {
    let mut seg = first;
    for r in rest {
        seg.extend_from_slice(r);
    }
    conv.send(dir, seg);
}

#[test]
fn segment_of_a_whole_record_then_more_stays_synced() {
    require_root!();
    let mut h = TcHarness::load().expect("load the TC program");
    let mut conv = tls13_with_key_updates();
    // TLS 1.3 server: a whole application-data record, then two more (the
    // last one cut by the segment end below); the client likewise.
    whole_record_then_more(
        &mut conv,
        SERVER,
        app_data(30),
        &[app_data(300), app_data(40)],
    );
    whole_record_then_more(
        &mut conv,
        CLIENT,
        app_data(KEY_UPDATE_RECORD_LEN as usize),
        &[app_data(7)],
    );
    let plan = conv.plan_sends();
    let s = check(&mut h, v4(), &conv, &plan);
    assert!(!s.unsynced(), "{:?}", s.counters);
    assert_eq!(s.counters.overflows, 0);
    assert_eq!(s.counters.records[3], conv_app_records(&conv));
    // Cut every segment so that it ends inside its last record: the next
    // segment then starts in the middle of a record.
    h.forget_flow(v4()[CLIENT], v4()[SERVER])
        .expect("forget the flow");
    let s = check(&mut h, v4(), &conv, &conv.plan_sizes(|_| 333));
    assert!(!s.unsynced(), "{:?}", s.counters);
    assert_eq!(s.counters.records[3], conv_app_records(&conv));
}

#[test]
fn tls12_renegotiation_behind_a_whole_record_is_counted() {
    require_root!();
    let mut h = TcHarness::load().expect("load the TC program");
    let mut conv = tls12_with_renegotiations();
    // Application data and an encrypted renegotiation ClientHello in one
    // client segment: the ClientHello is not the segment's first record.
    whole_record_then_more(&mut conv, CLIENT, app_data(64), &[encrypted_handshake(250)]);
    conv.server(encrypted_alert());
    let s = check(&mut h, v6(), &conv, &conv.plan_sends());
    assert!(!s.unsynced(), "{:?}", s.counters);
    assert_eq!(s.counters.renegotiations_client, 3);
    assert_eq!(s.counters.renegotiations_refused, 2);
}

/// One-byte application-data records (6 bytes, 2 tracker steps each) that
/// fit in the largest frame `BPF_PROG_TEST_RUN` takes for TC (a page
/// minus the skb's head- and tailroom: about 3,700 bytes; this kernel builds
/// no non-linear test skbs): 600 records, 1,200 steps, more than the old
/// per-segment budget of 1,024.
const TINY_RECORDS_PER_FRAME: usize = 600;

#[test]
fn frame_of_tiny_records_stays_synced() {
    require_root!();
    let mut h = TcHarness::load().expect("load the TC program");
    let mut conv = tls13_with_key_updates();
    let before = conv_app_records(&conv);
    let burst: Vec<u8> = (0..TINY_RECORDS_PER_FRAME)
        .flat_map(|_| app_data(1))
        .collect();
    conv.server(burst);
    conv.server(app_data(100));
    let s = check(&mut h, v4(), &conv, &conv.plan_sends());
    assert!(!s.unsynced(), "{:?}", s.counters);
    assert_eq!(s.counters.overflows, 0);
    assert_eq!(
        s.counters.records[3],
        before + TINY_RECORDS_PER_FRAME as u32 + 1
    );
}

/// The verifier accepts both classifiers of the object hsmon ships (with
/// the segment-sized `bpf_loop` count); prints how long loading took and how
/// many instructions the verifier processed.
#[test]
fn verifier_accepts_the_classifiers() {
    require_root!();
    for name in ["hsmon_tc_ingress", "hsmon_tc_egress"] {
        let t = std::time::Instant::now();
        let mut h = TcHarness::load_program(name).expect("the verifier accepts it");
        let took = t.elapsed();
        let insns = h.verified_instructions().expect("program info");
        eprintln!("{name}: loaded in {took:?}, {insns:?} instructions verified");
        assert!(insns.is_some_and(|n| n > 0), "{name}: {insns:?}");
    }
}
