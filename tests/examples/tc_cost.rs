//! Per-packet cost of hsmon's TC ingress program under `BPF_PROG_TEST_RUN`,
//! next to a no-op TC program (`hsmon_tc_noop`) in the same run (`cargo
//! xtask bench` runs this as root). Prints a table and one `BENCH_ROW` line
//! per figure ([`tests::bench`]); not a test.
//!
//! Every figure is taken in alternating rounds (hsmon, no-op, no-op, hsmon,
//! ...) and reported as the median of the rounds.
//!
//! Stateless packets (non-TLS payload, a banned source) use the kernel's
//! `repeat` (100,000 runs timed together). Stateful packets (anything that
//! parses TLS) cannot: from the second run on the bytes are a
//! retransmission. So each of their samples is one run (`repeat = 1`) after
//! resetting the flow and replaying the segments before it untimed. The
//! kernel's time of a single run includes one clock-read pair and the
//! per-call set-up, which the no-op program pays too: the estimated cost of
//! a stateful packet is `hsmon 1-run - (no-op 1-run - no-op repeat)`, and
//! the raw figures are in the row's note.

use anyhow::{Context, Result};
use monitor_common::{
    ban::BAN_REASON_MANUAL,
    flow::{TrackerConfig, MAX_PORTS},
    testing::*,
};
use tests::{
    bench::{self, median, Goal, Row},
    packet::{flags, tcp_segment, Endpoint},
    test_run::{frame, TcHarness},
};

const SECTION: &str = "tc_cost";

fn main() -> Result<()> {
    let rounds: u32 = bench::scale(9, 3);
    let samples: u32 = bench::scale(1000, 200);
    let repeat: u32 = bench::scale(100_000, 20_000);
    let client = Endpoint {
        ip: "10.99.0.1".parse()?,
        port: 40001,
    };
    let server = Endpoint {
        ip: "10.99.0.2".parse()?,
        port: 443,
    };
    let ends = [client, server];
    let mut h = TcHarness::load()?;
    let mut noop = TcHarness::load_program("hsmon_tc_noop")?;

    // A TLS 1.2 conversation, one segment per run of same-direction sends.
    let mut conv = Conversation::new();
    conv.client(ClientHello::tls12().record());
    conv.server(hs_record(&[
        &ServerHello::tls12().message(),
        &certificate(900),
        &server_key_exchange(300),
        &server_hello_done(),
    ]));
    conv.client(hs_record(&[&client_key_exchange(66)]))
        .client(ccs())
        .client(encrypted_finished());
    conv.server(ccs()).server(encrypted_finished());
    conv.client(app_data(1300));
    let plan = conv.plan_runs();
    let driver = Driver::new(&conv, [1000, 5000]);
    let frames: Vec<Vec<u8>> = plan
        .iter()
        .filter(|s| matches!(s, Step::Seg { .. }))
        .map(|s| frame(ends, &driver, *s))
        .collect();
    anyhow::ensure!(
        frames.len() == 5,
        "expected 5 segments, got {}",
        frames.len()
    );
    let plain = tcp_segment(client, server, 7, flags::ACK | flags::PSH, &[b'x'; 1300]);
    let pure_ack = tcp_segment(client, server, 7, flags::ACK, &[]);
    // The same payload between two ports the port filter does not watch.
    let unwatched = tcp_segment(
        Endpoint {
            port: 40002,
            ..client
        },
        Endpoint {
            port: 8080,
            ..server
        },
        7,
        flags::ACK | flags::PSH,
        &[b'x'; 1300],
    );

    // Baselines: the no-op program, repeat and single runs.
    let mut noop_repeat = Vec::new();
    let mut noop_one = Vec::new();

    // Stateful packets: (name, index of the frame, target).
    let stateful: [(&str, usize, Option<f64>); 5] = [
        (
            "TLS handshake packet: ClientHello (creates the flow)",
            0,
            Some(150.0),
        ),
        (
            "TLS handshake packet: server flight SH+Cert+SKE+SHD",
            1,
            Some(150.0),
        ),
        (
            "TLS handshake packet: client CKE+CCS+Finished, 3 records",
            2,
            None,
        ),
        (
            "TLS handshake packet: server CCS+Finished, 2 records",
            3,
            None,
        ),
        (
            "application-data packet, 1 record of 1300 B",
            4,
            Some(150.0),
        ),
    ];
    let mut stateful_ns: Vec<Vec<f64>> = vec![Vec::new(); stateful.len()];
    let mut plain_ab = bench::AbSamples::default();
    let mut ack_ab = bench::AbSamples::default();
    let mut ban_ab = bench::AbSamples::default();
    let mut filtered_ab = bench::AbSamples::default();

    // A third ingress harness with a port filter (`--ports 443`).
    let mut filtered = TcHarness::load()?;
    let mut ports = [0u16; MAX_PORTS];
    ports[0] = 443;
    filtered.set_config(&TrackerConfig {
        port_count: 1,
        ports,
        reneg_cap: 0,
        ..TrackerConfig::default()
    })?;

    // A second ingress harness with a ban on the client's /24: every packet
    // from it is dropped.
    let mut banned = TcHarness::load()?;
    let hour = monitor::agent::kernel::clock::monotonic_now_ns() + 3_600_000_000_000;
    banned.ban("10.99.0.0/24", hour, BAN_REASON_MANUAL)?;
    banned.set_ban_count(1)?;
    let (verdict, _) = banned.run_repeat(&plain, 1)?;
    anyhow::ensure!(
        verdict == tests::test_run::TC_ACT_SHOT,
        "the banned source was not dropped (verdict {verdict})"
    );

    for round in 0..rounds {
        // Stateful rows, with the no-op's single-run figure alternating.
        let hsmon_first = round.is_multiple_of(2);
        for (i, (_, k, _)) in stateful.iter().enumerate() {
            let mut total = 0u128;
            for _ in 0..samples {
                h.forget_flow(client, server)?;
                for f in &frames[..*k] {
                    h.run(f)?;
                }
                total += h.run_repeat(&frames[*k], 1)?.1.as_nanos();
            }
            stateful_ns[i].push(total as f64 / f64::from(samples));
        }
        let one = one_run_average(&mut noop, &plain, samples)?;
        noop_one.push(one);
        // (samples, packet, harness: 0 plain, 1 banned, 2 port filter)
        let pairs: [(&mut bench::AbSamples, &Vec<u8>, u8); 4] = [
            (&mut plain_ab, &plain, 0),
            (&mut ack_ab, &pure_ack, 0),
            (&mut ban_ab, &plain, 1),
            (&mut filtered_ab, &unwatched, 2),
        ];
        h.forget_flow(client, server)?;
        for (ab, pkt, which) in pairs {
            let mut measure_hsmon = || -> Result<f64> {
                let target = match which {
                    1 => &mut banned,
                    2 => &mut filtered,
                    _ => &mut h,
                };
                Ok(target.run_repeat(pkt, repeat)?.1.as_nanos() as f64)
            };
            let measure_noop = |noop: &mut TcHarness| -> Result<f64> {
                Ok(noop.run_repeat(pkt, repeat)?.1.as_nanos() as f64)
            };
            if hsmon_first {
                ab.b.push(measure_hsmon()?);
                ab.a.push(measure_noop(&mut noop)?);
            } else {
                ab.a.push(measure_noop(&mut noop)?);
                ab.b.push(measure_hsmon()?);
            }
        }
        noop_repeat.push(plain_ab.a.last().copied().unwrap_or(f64::NAN));
    }
    h.forget_flow(client, server).context("cleanup")?;

    let noop_rep = median(&noop_repeat);
    let noop_1 = median(&noop_one);
    let overhead = noop_1 - noop_rep;
    let mut rows = vec![
        Row::new(
            SECTION,
            "baseline: no-op TC program, 1300 B packet",
            noop_rep,
            "ns",
            &format!("repeat={repeat}, median of {rounds} rounds"),
        ),
        Row::new(
            SECTION,
            "baseline: no-op TC program, single run",
            noop_1,
            "ns",
            &format!(
                "repeat=1, mean of {samples} runs per round, median of {rounds} rounds; \
                 the single-run set-up cost subtracted below is {overhead:.0} ns"
            ),
        ),
    ];
    for (i, (name, _, target)) in stateful.iter().enumerate() {
        let raw = median(&stateful_ns[i]);
        let mut row = Row::new(
            SECTION,
            name,
            raw - overhead,
            "ns",
            &format!(
                "single run on fresh state (flow reset, earlier segments replayed untimed): \
                 raw {raw:.0} ns minus the no-op's single-run set-up {overhead:.0} ns; \
                 {samples} runs per round, median of {rounds} rounds alternating with the no-op"
            ),
        );
        if let Some(t) = target {
            row = row.target(Goal::AtMost, *t);
        }
        rows.push(row);
    }
    rows.push(
        Row::new(
            SECTION,
            "non-TLS packet (1300 B payload) above the no-op baseline",
            plain_ab.b_median() - plain_ab.a_median(),
            "ns",
            &format!(
                "repeat={repeat}; {}",
                plain_ab.describe("no-op", "hsmon", "ns")
            ),
        )
        .target(Goal::AtMost, 50.0),
    );
    rows.push(Row::new(
        SECTION,
        "non-TLS packet, ports not watched (--ports 443), above the no-op",
        filtered_ab.b_median() - filtered_ab.a_median(),
        "ns",
        &format!(
            "repeat={repeat}; port filter [443], packet 40002 -> 8080: skipped before the \
             flow lookup; {}",
            filtered_ab.describe("no-op", "hsmon", "ns")
        ),
    ));
    rows.push(Row::new(
        SECTION,
        "TCP segment without payload above the no-op baseline",
        ack_ab.b_median() - ack_ab.a_median(),
        "ns",
        &format!(
            "repeat={repeat}; {}",
            ack_ab.describe("no-op", "hsmon", "ns")
        ),
    ));
    rows.push(Row::new(
        SECTION,
        "banned-source drop (1300 B), per packet",
        ban_ab.b_median(),
        "ns",
        &format!(
            "repeat={repeat}, ban on the sender's /24 (TC_ACT_SHOT); {}",
            ban_ab.describe("no-op", "hsmon", "ns")
        ),
    ));

    println!(
        "hsmon_tc_ingress under BPF_PROG_TEST_RUN ({rounds} alternating rounds, \
         {samples} single runs per stateful sample, repeat={repeat})"
    );
    println!("{:<62} {:>10}", "packet", "ns/packet");
    for r in &rows {
        println!("{:<62} {:>10.0}", r.what, r.value);
    }
    for r in &rows {
        r.emit();
    }
    Ok(())
}

/// Average kernel-reported time of `samples` separate single runs of a
/// stateless packet (measured like the stateful rows, clock reads included).
fn one_run_average(h: &mut TcHarness, frame: &[u8], samples: u32) -> Result<f64> {
    let mut total = 0u128;
    for _ in 0..samples {
        total += h.run_repeat(frame, 1)?.1.as_nanos();
    }
    Ok(total as f64 / f64::from(samples))
}
