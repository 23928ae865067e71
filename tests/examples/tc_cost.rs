//! Per-packet cost of hsmon's TC program under `BPF_PROG_TEST_RUN`
//! (`cargo xtask bench` runs this as root). Prints a table; not a test.
//!
//! Stateful packets (anything that parses TLS) cannot use the kernel's
//! `repeat`: from the second run on the bytes are a retransmission. So each of
//! their samples is one run (`repeat = 1`) after resetting the flow and
//! replaying the segments before it untimed. The kernel reports its own
//! timing of the run; with `repeat = 1` that includes one clock read pair,
//! so the non-TLS packet is also measured that way, next to its `repeat`
//! figure, to show that overhead.

use anyhow::{Context, Result};
use monitor_common::{ban::BAN_REASON_MANUAL, testing::*};
use tests::{
    packet::{flags, tcp_segment, Endpoint},
    test_run::{frame, TcHarness},
};

const SAMPLES: u32 = 3000;
const REPEAT: u32 = 100_000;

fn main() -> Result<()> {
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

    let mut rows = Vec::new();
    let names = [
        "ClientHello (creates the flow)",
        "server flight: SH+Cert+SKE+SHD, 1 record",
        "client CKE+CCS+Finished, 3 records",
        "server CCS+Finished, 2 records",
        "application data, 1 record of 1300 B",
    ];
    for (k, name) in names.iter().enumerate() {
        let mut total = 0u128;
        for _ in 0..SAMPLES {
            h.forget_flow(client, server)?;
            for f in &frames[..k] {
                h.run(f)?;
            }
            let (_, d) = h.run_repeat(&frames[k], 1)?;
            total += d.as_nanos();
        }
        rows.push((
            name.to_string(),
            total as f64 / f64::from(SAMPLES),
            "1 run, fresh state",
        ));
    }
    // The same application-data packet again: the retransmission path.
    let (_, d) = h.run_repeat(&frames[4], REPEAT)?;
    rows.push((
        "application data again (retransmission)".into(),
        d.as_nanos() as f64,
        "repeat",
    ));

    let plain = tcp_segment(client, server, 7, flags::ACK | flags::PSH, &[b'x'; 1300]);
    h.forget_flow(client, server)?;
    let (_, d) = h.run_repeat(&plain, REPEAT)?;
    rows.push((
        "non-TLS payload, 1300 B".into(),
        d.as_nanos() as f64,
        "repeat",
    ));
    rows.push((
        "non-TLS payload, 1300 B".into(),
        one_run_average(&mut h, &plain)?,
        "1 run",
    ));
    let pure_ack = tcp_segment(client, server, 7, flags::ACK, &[]);
    let (_, d) = h.run_repeat(&pure_ack, REPEAT)?;
    rows.push(("TCP without payload".into(), d.as_nanos() as f64, "repeat"));
    // Bans: one on another address (every packet now does the trie lookup),
    // then one on the sender (the packet is dropped).
    let hour = monitor::record::monotonic_now_ns() + 3_600_000_000_000;
    h.ban("10.99.0.77", hour, BAN_REASON_MANUAL)?;
    h.set_ban_count(1)?;
    let (_, d) = h.run_repeat(&pure_ack, REPEAT)?;
    rows.push((
        "TCP without payload, 1 ban (other source)".into(),
        d.as_nanos() as f64,
        "repeat",
    ));
    h.ban("10.99.0.0/24", hour, BAN_REASON_MANUAL)?;
    h.set_ban_count(2)?;
    let (_, d) = h.run_repeat(&plain, REPEAT)?;
    rows.push((
        "banned source (dropped), 1300 B".into(),
        d.as_nanos() as f64,
        "repeat",
    ));
    let mut noop = TcHarness::load_program("hsmon_tc_noop")?;
    let (_, d) = noop.run_repeat(&plain, REPEAT)?;
    rows.push((
        "baseline: no-op TC program".into(),
        d.as_nanos() as f64,
        "repeat",
    ));
    rows.push((
        "baseline: no-op TC program".into(),
        one_run_average(&mut noop, &plain)?,
        "1 run",
    ));

    println!("hsmon_tc_ingress under BPF_PROG_TEST_RUN ({SAMPLES} samples per 1-run row, repeat={REPEAT})");
    println!("{:<45} {:>10}  method", "packet", "ns/packet");
    for (name, ns, how) in rows {
        println!("{name:<45} {ns:>10.0}  {how}");
    }
    h.forget_flow(client, server).context("cleanup")?;
    Ok(())
}

/// Average kernel-reported time of `SAMPLES` separate single runs of a
/// stateless packet (measured like the stateful rows, clock reads included).
fn one_run_average(h: &mut TcHarness, frame: &[u8]) -> Result<f64> {
    let mut total = 0u128;
    for _ in 0..SAMPLES {
        total += h.run_repeat(frame, 1)?.1.as_nanos();
    }
    Ok(total as f64 / f64::from(SAMPLES))
}
