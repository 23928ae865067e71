//! Writes the tracker target's seed corpus: `monitor_common::testing`
//! conversations (TLS 1.2 full/resumed, renegotiations honoured and refused,
//! TLS 1.3 full) in the target's input format, plus variants with a
//! retransmission, a gap and garbage. Usage (from the repository root):
//! `cargo run --manifest-path fuzz/Cargo.toml -p hsmon-fuzz-seedgen -- fuzz/corpus/tracker`.

#[path = "../../src/tracker_input.rs"]
#[allow(dead_code)]
mod tracker_input;

use monitor_common::testing::*;
use tracker_input::{encode, Input, Op};

fn ops(conv: &Conversation) -> Vec<Op> {
    conv.events
        .iter()
        .map(|e| match e {
            Event::Send(dir, bytes) => Op::Send {
                dir: *dir,
                bytes: bytes.clone(),
            },
            Event::Close(dir) => Op::Close { dir: *dir },
        })
        .collect()
}

fn input(ops: Vec<Op>, isn: [u32; 2]) -> Input {
    Input {
        isn,
        max_steps: 0,
        reneg_cap: 2,
        ops,
    }
}

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/corpus/tracker".to_owned());
    std::fs::create_dir_all(&dir)?;
    let mut seeds: Vec<(&str, Input)> = Vec::new();

    let mut c = Conversation::new();
    tls12_full(&mut c);
    c.client(app_data(100)).server(app_data(40));
    seeds.push(("tls12-full", input(ops(&c), [1000, 0xffff_fff0])));

    let mut c = Conversation::new();
    tls12_abbreviated(&mut c, &hs_record(&[&ServerHello::tls12().message()]));
    seeds.push(("tls12-resumed", input(ops(&c), [7, 9])));

    let mut c = Conversation::new();
    tls12_full(&mut c);
    tls12_client_reneg(&mut c);
    tls12_client_reneg_refused(&mut c);
    tls12_server_reneg(&mut c);
    tls12_server_reneg_refused(&mut c);
    tls12_client_reneg(&mut c);
    tls12_client_reneg(&mut c);
    c.close(CLIENT_DIR);
    let mut all = ops(&c);
    all.push(Op::Finish);
    seeds.push(("tls12-renegotiations", input(all, [0x8000_0000, 1])));

    let mut c = Conversation::new();
    tls13_full(&mut c);
    c.client(app_data(5)).server(app_data(5));
    seeds.push(("tls13-full", input(ops(&c), [42, 4242])));

    // A retransmission of the first 10 bytes, then a gap, then garbage.
    let mut c = Conversation::new();
    tls12_full(&mut c);
    let mut all = ops(&c);
    all.insert(
        1,
        Op::At {
            dir: CLIENT_DIR,
            offset: -10,
            bytes: vec![0; 10],
        },
    );
    all.push(Op::At {
        dir: SERVER_DIR,
        offset: 100,
        bytes: app_data(20),
    });
    all.push(Op::Send {
        dir: CLIENT_DIR,
        bytes: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
    });
    seeds.push(("retransmit-gap-garbage", input(all, [5, 6])));

    for (name, seed) in &seeds {
        let path = format!("{dir}/seed-{name}");
        std::fs::write(&path, encode(seed))?;
        println!("wrote {path}");
    }
    Ok(())
}

const CLIENT_DIR: usize = tracker_input::CLIENT;
const SERVER_DIR: usize = tracker_input::SERVER;
