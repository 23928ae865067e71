//! The tracker target's input format: a byte string decoded into initial
//! sequence numbers, a step budget and a list of operations. Shared with the
//! seed generator (`fuzz/seedgen`), which encodes conversations with
//! [`encode`].
//!
//! Layout: 4 bytes client ISN, 4 bytes server ISN (big-endian), 1 byte step
//! budget for the free-form run (0: the eBPF program's, `step_bound` of each
//! segment's length), 1 byte renegotiation
//! cap, then operations until the input ends, each starting with a tag byte
//! whose low two bits are the kind and bit 2 the direction:
//!
//! * kind 0, **send**: a 2-byte big-endian length, then that many bytes (fewer
//!   if the input ends), sent in order at the direction's stream position;
//! * kind 1, **segment at an arbitrary place**: a 4-byte big-endian signed
//!   offset from the direction's stream position, a 1-byte length, the bytes
//!   (a retransmission, an overlap, a gap);
//! * kind 2, **close**: the direction's sender closed (`on_close`);
//! * kind 3, **finish**: the connection ended (`finish`).

/// Client to server (`monitor_common::tracker::CLIENT`).
pub const CLIENT: usize = 0;
/// Server to client.
pub const SERVER: usize = 1;

/// One decoded operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// In-order bytes from `dir`.
    Send {
        /// Direction.
        dir: usize,
        /// Payload.
        bytes: Vec<u8>,
    },
    /// A segment `offset` bytes from `dir`'s stream position.
    At {
        /// Direction.
        dir: usize,
        /// Offset from the stream position (negative: already sent bytes).
        offset: i32,
        /// Payload.
        bytes: Vec<u8>,
    },
    /// `on_close(dir)`.
    Close {
        /// Direction.
        dir: usize,
    },
    /// `finish()`.
    Finish,
}

/// A decoded input.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Input {
    /// Initial sequence numbers, client and server.
    pub isn: [u32; 2],
    /// Step budget of the free-form run (0: the eBPF one).
    pub max_steps: u8,
    /// Renegotiation cap applied after each client segment (0: none).
    pub reneg_cap: u8,
    /// The operations, in order.
    pub ops: Vec<Op>,
}

fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let n = n.min(data.len());
    let (head, tail) = data.split_at(n);
    *data = tail;
    head
}

fn be_u32(b: &[u8]) -> u32 {
    b.iter().fold(0u32, |acc, &x| (acc << 8) | u32::from(x))
}

/// Decodes any byte string (missing bytes read as zero; never fails).
pub fn decode(mut data: &[u8]) -> Input {
    let d = &mut data;
    let isn = [be_u32(take(d, 4)), be_u32(take(d, 4))];
    let max_steps = take(d, 1).first().copied().unwrap_or(0);
    let reneg_cap = take(d, 1).first().copied().unwrap_or(0);
    let mut ops = Vec::new();
    while let Some((&tag, rest)) = d.split_first() {
        *d = rest;
        let dir = usize::from(tag >> 2) & 1;
        match tag & 3 {
            0 => {
                let len = be_u32(take(d, 2)) as usize;
                ops.push(Op::Send {
                    dir,
                    bytes: take(d, len).to_vec(),
                });
            }
            1 => {
                let offset = be_u32(take(d, 4)) as i32;
                let len = take(d, 1).first().copied().unwrap_or(0) as usize;
                ops.push(Op::At {
                    dir,
                    offset,
                    bytes: take(d, len).to_vec(),
                });
            }
            2 => ops.push(Op::Close { dir }),
            _ => ops.push(Op::Finish),
        }
    }
    Input {
        isn,
        max_steps,
        reneg_cap,
        ops,
    }
}

/// Encodes `input` so that [`decode`] gives it back (sends longer than
/// 65,535 bytes and `At` segments longer than 255 are split/cut).
pub fn encode(input: &Input) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&input.isn[0].to_be_bytes());
    out.extend_from_slice(&input.isn[1].to_be_bytes());
    out.push(input.max_steps);
    out.push(input.reneg_cap);
    for op in &input.ops {
        match op {
            Op::Send { dir, bytes } => {
                for chunk in bytes.chunks(usize::from(u16::MAX)) {
                    out.push((*dir as u8 & 1) << 2);
                    out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
                    out.extend_from_slice(chunk);
                }
            }
            Op::At { dir, offset, bytes } => {
                let bytes = &bytes[..bytes.len().min(255)];
                out.push(((*dir as u8 & 1) << 2) | 1);
                out.extend_from_slice(&offset.to_be_bytes());
                out.push(bytes.len() as u8);
                out.extend_from_slice(bytes);
            }
            Op::Close { dir } => out.push(((*dir as u8 & 1) << 2) | 2),
            Op::Finish => out.push(3),
        }
    }
    out
}
