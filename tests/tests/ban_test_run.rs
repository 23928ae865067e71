//! `BPF_PROG_TEST_RUN`: the ban check of the real TC ingress program. A
//! packet whose source a ban in force covers is dropped (`TC_ACT_SHOT`) and
//! counted; an expired ban, another source, a ban on the destination,
//! `BAN_COUNT` = 0 and the egress program all let it pass (`TC_ACT_UNSPEC`).

use monitor::agent::kernel::clock::monotonic_now_ns;
use monitor_common::{ban::BAN_REASON_MANUAL, flow::Stat, testing::ClientHello};
use tests::{
    packet::{flags, tcp_segment, Endpoint},
    require_root,
    test_run::{TcHarness, TC_ACT_SHOT, TC_ACT_UNSPEC},
};

const HOUR_NS: u64 = 3600 * 1_000_000_000;

fn ep(ip: &str, port: u16) -> Endpoint {
    Endpoint {
        ip: ip.parse().expect("address"),
        port,
    }
}

/// A segment with payload from `src` to `dst`.
fn from(src: &str, dst: &str) -> Vec<u8> {
    tcp_segment(
        ep(src, 40001),
        ep(dst, 443),
        7,
        flags::ACK | flags::PSH,
        b"payload",
    )
}

/// A bare SYN from `src` to `dst`.
fn syn(src: &str, dst: &str) -> Vec<u8> {
    tcp_segment(ep(src, 40001), ep(dst, 443), 7, 0x02, &[])
}

fn in_an_hour() -> u64 {
    monotonic_now_ns() + HOUR_NS
}

#[test]
fn banned_ipv4_source_is_dropped_and_counted() {
    require_root!();
    let mut h = TcHarness::load().expect("load the TC program");
    h.ban("10.99.0.1", in_an_hour(), BAN_REASON_MANUAL)
        .expect("ban");
    h.set_ban_count(1).expect("count");
    assert_eq!(
        h.run(&syn("10.99.0.1", "10.99.0.2")).expect("run"),
        TC_ACT_SHOT
    );
    assert_eq!(
        h.run(&from("10.99.0.1", "10.99.0.2")).expect("run"),
        TC_ACT_SHOT
    );
    assert_eq!(h.stat(Stat::BanDrops).expect("stat"), 2);
    assert_eq!(h.stat(Stat::BanDropsManual).expect("stat"), 2);
    // A dropped packet is not tracked either.
    assert_eq!(h.stat_segments().expect("stat"), 0);
    // Another source, and the banned address as destination, pass.
    assert_eq!(
        h.run(&from("10.99.0.3", "10.99.0.2")).expect("run"),
        TC_ACT_UNSPEC
    );
    assert_eq!(
        h.run(&from("10.99.0.2", "10.99.0.1")).expect("run"),
        TC_ACT_UNSPEC
    );
    assert_eq!(h.stat(Stat::BanDrops).expect("stat"), 2);
    assert_eq!(h.stat_segments().expect("stat"), 2);
}

#[test]
fn a_banned_sources_client_hello_creates_no_flow() {
    require_root!();
    let mut h = TcHarness::load().expect("load the TC program");
    h.ban("10.99.0.1", in_an_hour(), BAN_REASON_MANUAL)
        .expect("ban");
    h.set_ban_count(1).expect("count");
    let record = ClientHello::tls12().record();
    let hello = tcp_segment(
        ep("10.99.0.1", 40001),
        ep("10.99.0.2", 443),
        1000,
        flags::ACK | flags::PSH,
        &record,
    );
    assert_eq!(h.run(&hello).expect("run"), TC_ACT_SHOT);
    assert_eq!(h.flow_count().expect("flows"), 0);
    // The same hello from an unbanned source is tracked as usual.
    let hello = tcp_segment(
        ep("10.99.0.5", 40001),
        ep("10.99.0.2", 443),
        1000,
        flags::ACK | flags::PSH,
        &record,
    );
    assert_eq!(h.run(&hello).expect("run"), TC_ACT_UNSPEC);
    assert_eq!(h.flow_count().expect("flows"), 1);
}

#[test]
fn expired_ban_passes() {
    require_root!();
    let mut h = TcHarness::load().expect("load the TC program");
    let past = monotonic_now_ns().saturating_sub(1);
    h.ban("10.99.0.1", past, BAN_REASON_MANUAL).expect("ban");
    h.set_ban_count(1).expect("count");
    assert_eq!(
        h.run(&syn("10.99.0.1", "10.99.0.2")).expect("run"),
        TC_ACT_UNSPEC
    );
    assert_eq!(h.stat(Stat::BanDrops).expect("stat"), 0);
    // Renewed: dropped again.
    h.ban("10.99.0.1", in_an_hour(), BAN_REASON_MANUAL)
        .expect("ban");
    assert_eq!(
        h.run(&syn("10.99.0.1", "10.99.0.2")).expect("run"),
        TC_ACT_SHOT
    );
}

#[test]
fn a_ban_count_of_zero_skips_the_check() {
    require_root!();
    let mut h = TcHarness::load().expect("load the TC program");
    h.ban("10.99.0.1", in_an_hour(), BAN_REASON_MANUAL)
        .expect("ban");
    assert_eq!(
        h.run(&syn("10.99.0.1", "10.99.0.2")).expect("run"),
        TC_ACT_UNSPEC
    );
    h.set_ban_count(1).expect("count");
    assert_eq!(
        h.run(&syn("10.99.0.1", "10.99.0.2")).expect("run"),
        TC_ACT_SHOT
    );
    h.set_ban_count(0).expect("count");
    assert_eq!(
        h.run(&syn("10.99.0.1", "10.99.0.2")).expect("run"),
        TC_ACT_UNSPEC
    );
}

#[test]
fn prefix_bans_cover_their_addresses() {
    require_root!();
    let mut h = TcHarness::load().expect("load the TC program");
    h.ban("10.99.7.0/24", in_an_hour(), BAN_REASON_MANUAL)
        .expect("ban");
    h.ban("fd00:99:1::/64", in_an_hour(), BAN_REASON_MANUAL)
        .expect("ban");
    h.set_ban_count(2).expect("count");
    for src in ["10.99.7.0", "10.99.7.1", "10.99.7.77", "10.99.7.255"] {
        assert_eq!(
            h.run(&syn(src, "10.99.0.2")).expect("run"),
            TC_ACT_SHOT,
            "{src}"
        );
    }
    for src in ["10.99.6.255", "10.99.8.0", "10.98.7.1"] {
        assert_eq!(
            h.run(&syn(src, "10.99.0.2")).expect("run"),
            TC_ACT_UNSPEC,
            "{src}"
        );
    }
    for src in ["fd00:99:1::1", "fd00:99:1:0:ffff:ffff:ffff:ffff"] {
        assert_eq!(
            h.run(&syn(src, "fd00:99::2")).expect("run"),
            TC_ACT_SHOT,
            "{src}"
        );
    }
    for src in ["fd00:99:1:1::1", "fd00:99::1", "fd00:98:1::1"] {
        assert_eq!(
            h.run(&syn(src, "fd00:99::2")).expect("run"),
            TC_ACT_UNSPEC,
            "{src}"
        );
    }
    assert_eq!(h.stat(Stat::BanDrops).expect("stat"), 6);
}

#[test]
fn longest_prefix_decides() {
    require_root!();
    let mut h = TcHarness::load().expect("load the TC program");
    // An expired /32 inside an active /24: the /32 is the match, and it is over.
    h.ban("10.99.7.0/24", in_an_hour(), BAN_REASON_MANUAL)
        .expect("ban");
    h.ban(
        "10.99.7.9",
        monotonic_now_ns().saturating_sub(1),
        BAN_REASON_MANUAL,
    )
    .expect("ban");
    h.set_ban_count(2).expect("count");
    assert_eq!(
        h.run(&syn("10.99.7.9", "10.99.0.2")).expect("run"),
        TC_ACT_UNSPEC
    );
    assert_eq!(
        h.run(&syn("10.99.7.8", "10.99.0.2")).expect("run"),
        TC_ACT_SHOT
    );
}

#[test]
fn banned_ipv6_host() {
    require_root!();
    let mut h = TcHarness::load().expect("load the TC program");
    h.ban("fd00:99::1", in_an_hour(), BAN_REASON_MANUAL)
        .expect("ban");
    h.set_ban_count(1).expect("count");
    assert_eq!(
        h.run(&from("fd00:99::1", "fd00:99::2")).expect("run"),
        TC_ACT_SHOT
    );
    assert_eq!(
        h.run(&from("fd00:99::3", "fd00:99::2")).expect("run"),
        TC_ACT_UNSPEC
    );
    // An IPv4 packet is looked up in the IPv4 trie only.
    assert_eq!(
        h.run(&from("10.99.0.1", "10.99.0.2")).expect("run"),
        TC_ACT_UNSPEC
    );
    assert_eq!(h.stat(Stat::BanDrops).expect("stat"), 1);
}

#[test]
fn every_protocol_from_a_banned_source_is_dropped() {
    require_root!();
    let mut h = TcHarness::load().expect("load the TC program");
    h.ban("10.99.0.1", in_an_hour(), BAN_REASON_MANUAL)
        .expect("ban");
    h.set_ban_count(1).expect("count");
    let mut udp = from("10.99.0.1", "10.99.0.2");
    udp[14 + 9] = 17; // IPv4 protocol: UDP
    assert_eq!(h.run(&udp).expect("run"), TC_ACT_SHOT);
    // Neither IPv4 nor IPv6 (here: the same bytes as ARP): passes.
    let mut arp = from("10.99.0.1", "10.99.0.2");
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    assert_eq!(h.run(&arp).expect("run"), TC_ACT_UNSPEC);
    assert_eq!(h.stat(Stat::BanDrops).expect("stat"), 1);
}

#[test]
fn egress_never_drops() {
    require_root!();
    let mut h = TcHarness::load_program("hsmon_tc_egress").expect("load the egress program");
    h.ban("10.99.0.1", in_an_hour(), BAN_REASON_MANUAL)
        .expect("ban");
    h.set_ban_count(1).expect("count");
    assert_eq!(
        h.run(&from("10.99.0.1", "10.99.0.2")).expect("run"),
        TC_ACT_UNSPEC
    );
    assert_eq!(h.stat(Stat::BanDrops).expect("stat"), 0);
}
