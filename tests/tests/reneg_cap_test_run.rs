//! `BPF_PROG_TEST_RUN`: the renegotiation cap in the real TC program. With
//! `CONFIG.reneg_cap = 3`, ingress drops (`TC_ACT_SHOT`) the client segment
//! that carries the 4th client-initiated renegotiation ClientHello, its
//! retransmission and every later client segment with payload; earlier
//! segments and server segments pass (`TC_ACT_UNSPEC`); one `EVENT_LIMIT_HIT`
//! is sent; `STATS.reneg_cap_drops` counts the drops; egress and cap 0 never
//! drop; and the kernel's flow state equals the user-space tracker's run with
//! the same cap.

use monitor_common::{
    flow::{Stat, TrackerConfig, EVENT_FLOW_OPENED, EVENT_FLOW_PROGRESS, EVENT_LIMIT_HIT},
    testing::*,
    tracker::{CapVerdict, FlowState, CLIENT, FF_OVER_CAP, SERVER},
};
use tests::{
    packet::Endpoint,
    require_root,
    test_run::{frame, TcHarness, TC_ACT_SHOT, TC_ACT_UNSPEC},
};

fn ends(v6: bool) -> [Endpoint; 2] {
    let (c, s) = if v6 {
        ("fd00:98::1", "fd00:98::2")
    } else {
        ("10.98.0.1", "10.98.0.2")
    };
    [
        Endpoint {
            ip: c.parse().expect("address"),
            port: 40100,
        },
        Endpoint {
            ip: s.parse().expect("address"),
            port: 4433,
        },
    ]
}

/// TLS 1.2: a full handshake and `n` honoured client renegotiations, each
/// followed by application data both ways.
fn renegotiating(n: usize) -> Conversation {
    let mut c = Conversation::new();
    tls12_full(&mut c);
    c.client(app_data(100)).server(app_data(200));
    for _ in 0..n {
        tls12_client_reneg(&mut c);
        c.client(app_data(50)).server(app_data(60));
    }
    c
}

fn config(cap: u32) -> TrackerConfig {
    TrackerConfig {
        reneg_cap: cap,
        ..TrackerConfig::default()
    }
}

/// What happened to each step of a plan in the kernel.
struct Replay {
    /// (step, program's return value)
    verdicts: Vec<(Step, u32)>,
    kernel: FlowState,
    user: Driver,
}

/// Sends `plan` of `conv` through the loaded program and through a
/// user-space tracker applying `cap` after client segments as ingress does.
fn replay(
    h: &mut TcHarness,
    ends: [Endpoint; 2],
    conv: &Conversation,
    plan: &[Step],
    cap: u32,
) -> Replay {
    let mut user = Driver::new(conv, [1000, 7_000_000]);
    user.reneg_cap = cap;
    let mut verdicts = Vec::new();
    for step in plan {
        let f = frame(ends, &user, *step);
        verdicts.push((*step, h.run(&f).expect("BPF_PROG_TEST_RUN")));
        user.step(*step);
    }
    let kernel = h
        .flow(ends[CLIENT], ends[SERVER])
        .expect("read FLOWS")
        .expect("the kernel created no flow")
        .tracker;
    Replay {
        verdicts,
        kernel,
        user,
    }
}

fn is_client_seg(step: &Step) -> bool {
    matches!(step, Step::Seg { dir: CLIENT, .. })
}

#[test]
fn cap_3_drops_the_4th_client_renegotiation_and_all_after_it() {
    require_root!();
    for v6 in [false, true] {
        let mut h = TcHarness::load().expect("load");
        h.set_config(&config(3)).expect("config");
        let conv = renegotiating(6);
        let plan = conv.plan_sends();
        let r = replay(&mut h, ends(v6), &conv, &plan, 3);

        // The user-space tracker says which client segment hits the cap.
        let hit = r
            .user
            .verdicts
            .iter()
            .position(|v| *v == CapVerdict::Hit)
            .expect("the user-space tracker hits the cap");
        // Client sends: ClientHello, CKE+CCS+Finished, app data (3), then 3
        // per renegotiation: the 4th renegotiation's ClientHello is the 13th.
        assert_eq!(hit, 12);
        let mut client_i = 0;
        let mut drops = 0u64;
        for (step, ret) in &r.verdicts {
            if is_client_seg(step) {
                let want = if client_i < hit {
                    TC_ACT_UNSPEC
                } else {
                    TC_ACT_SHOT
                };
                assert_eq!(*ret, want, "v6 {v6}: client segment {client_i} ({step:?})");
                if want == TC_ACT_SHOT {
                    drops += 1;
                }
                client_i += 1;
            } else {
                assert_eq!(
                    *ret, TC_ACT_UNSPEC,
                    "v6 {v6}: server segment {step:?} passes"
                );
            }
        }
        assert!(drops >= 2, "the hit and later client segments");

        // The kernel counts what crossed the wire, like user space.
        assert_eq!(r.kernel, r.user.state, "v6 {v6}");
        assert_eq!(r.kernel.counters.renegotiations_client, 6);
        assert!(r.kernel.flags & FF_OVER_CAP != 0);
        assert_eq!(h.stat(Stat::RenegCapDrops).expect("stats"), drops);

        // Exactly one limit event, for this flow, with the 4th renegotiation in it.
        let events = h.drain_events().expect("events");
        let hits: Vec<_> = events
            .iter()
            .filter(|e| e.kind == EVENT_LIMIT_HIT)
            .collect();
        assert_eq!(hits.len(), 1, "v6 {v6}: {events:?}");
        assert_eq!(hits[0].value.tracker.counters.renegotiations_client, 4);
        assert!(hits[0].value.tracker.flags & FF_OVER_CAP != 0);
        let [client, server] = ends(v6);
        let (key, _) = monitor_common::flow::FlowKey::from_endpoints(
            &tests::test_run::addr16(client.ip),
            client.port,
            &tests::test_run::addr16(server.ip),
            server.port,
        );
        assert_eq!(hits[0].key, key);
    }
}

#[test]
fn retransmission_of_the_dropped_segment_is_dropped_too() {
    require_root!();
    let e = ends(false);
    let mut h = TcHarness::load().expect("load");
    h.set_config(&config(3)).expect("config");
    let conv = renegotiating(4);
    let plan = conv.plan_sends();
    let mut user = Driver::new(&conv, [5, 9]);
    user.reneg_cap = 3;
    let mut dropped = None;
    for step in &plan {
        let f = frame(e, &user, *step);
        let ret = h.run(&f).expect("run");
        user.step(*step);
        if ret == TC_ACT_SHOT {
            dropped = Some((*step, f));
            break;
        }
        assert_eq!(ret, TC_ACT_UNSPEC, "{step:?} before the cap");
    }
    let (step, f) = dropped.expect("the 4th renegotiation is dropped");
    assert!(is_client_seg(&step));
    assert_eq!(user.verdicts.last(), Some(&CapVerdict::Hit));
    let before = h.flow(e[CLIENT], e[SERVER]).expect("flows").expect("flow");
    // The client's TCP retransmits it, three times: dropped each time,
    // counted as retransmissions, not as new renegotiations.
    for i in 0..3 {
        assert_eq!(h.run(&f).expect("run"), TC_ACT_SHOT, "retransmission {i}");
        if let Step::Seg { dir, start, end } = step {
            user.seg(dir, start, end);
        }
    }
    let after = h.flow(e[CLIENT], e[SERVER]).expect("flows").expect("flow");
    assert_eq!(after.tracker.counters.renegotiations_client, 4);
    assert_eq!(
        after.tracker.counters.retransmits,
        before.tracker.counters.retransmits + 3
    );
    assert_eq!(after.tracker, user.state);
    assert_eq!(h.stat(Stat::RenegCapDrops).expect("stats"), 4);
    // One event only, whatever the retransmissions.
    let events = h.drain_events().expect("events");
    assert_eq!(
        events.iter().filter(|e| e.kind == EVENT_LIMIT_HIT).count(),
        1
    );
    // A server segment (no cap on that side) still passes.
    let srv = Step::Seg {
        dir: SERVER,
        start: 0,
        end: 10,
    };
    assert_eq!(h.run(&frame(e, &user, srv)).expect("run"), TC_ACT_UNSPEC);
}

#[test]
fn cap_0_and_within_the_cap_never_drop() {
    require_root!();
    for (cap, n) in [(0u32, 8usize), (3, 3), (8, 8)] {
        let mut h = TcHarness::load().expect("load");
        h.set_config(&config(cap)).expect("config");
        let conv = renegotiating(n);
        let plan = conv.plan_sizes(|_| 700);
        let r = replay(&mut h, ends(true), &conv, &plan, cap);
        assert!(
            r.verdicts.iter().all(|(_, ret)| *ret == TC_ACT_UNSPEC),
            "cap {cap}, {n} renegotiations"
        );
        assert_eq!(r.kernel, r.user.state);
        assert_eq!(r.kernel.counters.renegotiations_client, n as u32);
        assert_eq!(r.kernel.flags & FF_OVER_CAP, 0);
        assert_eq!(h.stat(Stat::RenegCapDrops).expect("stats"), 0);
        let events = h.drain_events().expect("events");
        assert!(events.iter().all(|e| e.kind != EVENT_LIMIT_HIT));
    }
}

#[test]
fn egress_never_drops() {
    require_root!();
    let mut h = TcHarness::load_program("hsmon_tc_egress").expect("load egress");
    h.set_config(&config(1)).expect("config");
    let conv = renegotiating(4);
    let plan = conv.plan_sends();
    let mut user = Driver::new(&conv, [77, 88]);
    for step in &plan {
        let f = frame(ends(false), &user, *step);
        assert_eq!(h.run(&f).expect("run"), TC_ACT_UNSPEC, "{step:?}");
        user.step(*step);
    }
    let e = ends(false);
    let k = h.flow(e[CLIENT], e[SERVER]).expect("flows").expect("flow");
    // Egress applies no cap at all: no flag, no limit event, no drop
    // counted. Its events are the flow's EVENT_FLOW_OPENED, sent after the
    // first segment (the ClientHello) was parsed, then one
    // EVENT_FLOW_PROGRESS per renegotiation, carrying the count so far.
    assert_eq!(k.tracker, user.state);
    assert_eq!(k.tracker.counters.renegotiations_client, 4);
    assert_eq!(k.tracker.flags & FF_OVER_CAP, 0);
    assert_eq!(h.stat(Stat::RenegCapDrops).expect("stats"), 0);
    let events = h.drain_events().expect("events");
    let kinds: Vec<u32> = events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            EVENT_FLOW_OPENED,
            EVENT_FLOW_PROGRESS,
            EVENT_FLOW_PROGRESS,
            EVENT_FLOW_PROGRESS,
            EVENT_FLOW_PROGRESS
        ],
        "{events:?}"
    );
    assert_eq!(events[0].value.tracker.counters.client_hellos, 1);
    assert_eq!(events[0].value.tracker.counters.handshakes, 0);
    let renegs: Vec<u32> = events[1..]
        .iter()
        .map(|e| e.value.tracker.counters.renegotiations_client)
        .collect();
    assert_eq!(renegs, [1, 2, 3, 4], "{events:?}");
}

#[test]
fn renegotiations_behind_a_frame_of_tiny_records_are_capped() {
    require_root!();
    let e = ends(false);
    let mut h = TcHarness::load().expect("load");
    h.set_config(&config(3)).expect("config");
    let mut conv = Conversation::new();
    tls12_full(&mut conv);
    conv.client(app_data(100)).server(app_data(200));
    // One client segment: 540 one-byte records (1,080 tracker steps, more
    // than the old per-segment budget of 1,024), then 4 renegotiation
    // ClientHellos, in the largest frame BPF_PROG_TEST_RUN takes.
    let mut burst: Vec<u8> = (0..540).flat_map(|_| app_data(1)).collect();
    for _ in 0..4 {
        burst.extend(encrypted_handshake(90));
    }
    conv.client(burst);
    let plan = conv.plan_sends();
    let r = replay(&mut h, e, &conv, &plan, 3);
    assert_eq!(r.kernel, r.user.state);
    assert!(!r.kernel.unsynced(), "{:?}", r.kernel.counters);
    assert_eq!(r.kernel.counters.renegotiations_client, 4);
    assert!(r.kernel.flags & FF_OVER_CAP != 0);
    // The last segment (the burst) is the one dropped; everything before passes.
    let (last, before) = r.verdicts.split_last().expect("steps");
    assert_eq!(
        last.1, TC_ACT_SHOT,
        "the burst carrying the 4th ClientHello"
    );
    assert!(before.iter().all(|(_, v)| *v == TC_ACT_UNSPEC));
    assert_eq!(h.stat(Stat::RenegCapDrops).expect("stats"), 1);
}
