//! Property tests of the TLS record tracker.
//!
//! * Generated valid conversations ([`Model`]: TLS 1.0-1.3 handshakes, full or
//!   resumed, HelloRetryRequest, compatibility CCS, 0-RTT, client and server
//!   renegotiations honoured or refused, application data, KeyUpdate-sized
//!   records, alerts, heartbeats, closes) are counted exactly as an
//!   independent oracle computed from the model's structure says, and the same
//!   however each direction's bytes are cut into segments, and when segments
//!   are retransmitted whole or overlapping.
//! * Arbitrary bytes in arbitrary segments never panic, and a stream that does
//!   not start with a TLS record header counts nothing.
//! * Correctly framed records with arbitrary bodies (garbage handshake
//!   messages, mutated ServerHellos) are all counted, keep the stream in sync,
//!   and do not depend on segmentation either.

mod support;

use monitor_common::tls::*;
use monitor_common::tracker::*;
use proptest::prelude::*;
use proptest::sample::Index;
use support::*;

const R_CCS: usize = 0;
const R_ALERT: usize = 1;
const R_HS: usize = 2;
const R_APP: usize = 3;
const R_HB: usize = 4;

// ---------------------------------------------------------------------------
// The model of a valid conversation.

/// How a cleartext flight of handshake messages is put into records.
#[derive(Clone, Copy, Debug)]
enum Pack {
    /// One record per message.
    Separate,
    /// All messages in one record.
    Together,
    /// The messages back to back, cut into this many records of about equal
    /// size (every flight is at least 24 bytes long, so up to 24 works).
    Fragment(usize),
}

#[derive(Clone, Debug)]
enum Proto {
    Tls12 {
        /// ServerHello version: TLS 1.0, 1.1 or 1.2.
        version: u16,
        resumed: bool,
        /// The server sends a NewSessionTicket.
        nst: bool,
        /// The server sends a ServerKeyExchange (full handshake).
        ske: bool,
    },
    Tls13 {
        /// pre_shared_key in the ServerHello.
        resumed: bool,
        hrr: bool,
        /// Middlebox compatibility CCS from both sides.
        compat: bool,
        /// 0-RTT data of this length right after the first ClientHello
        /// (the compatibility CCS, if any, before it).
        early_data: Option<usize>,
        /// Lengths of the server's encrypted records after the ServerHello.
        server_flight: Vec<usize>,
        /// Length of the client's encrypted Finished record.
        client_finished: usize,
    },
}

/// A renegotiation's outcome that lets the conversation go on.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// Full handshake: the server answers with this many encrypted records.
    Full(usize),
    /// Abbreviated handshake (resumed session).
    Abbreviated,
    /// Refused with an alert.
    Alert,
}

#[derive(Clone, Debug)]
enum Post {
    App {
        dir: usize,
        len: usize,
    },
    Alert {
        dir: usize,
    },
    Heartbeat {
        dir: usize,
        len: usize,
    },
    /// `n` client KeyUpdate-size records, each answered by one from the
    /// server when `answered` (a KeyUpdate flood, or 5-byte messages).
    KeyUpdates {
        n: usize,
        answered: bool,
    },
    /// TLS <= 1.2 only. The client may send application data right after its
    /// ClientHello, before the answer.
    ClientReneg {
        answer: Answer,
        app_between: Option<usize>,
    },
    /// TLS <= 1.2 only.
    HelloRequest {
        answer: Answer,
    },
}

/// How the conversation ends (before `finish()`).
#[derive(Clone, Copy, Debug)]
enum End {
    Nothing,
    ServerClose,
    ClientClose,
    /// TLS <= 1.2: a client renegotiation the server closes on.
    ClientRenegServerCloses,
    /// TLS <= 1.2: a client renegotiation still unanswered at the end.
    ClientRenegPending,
    /// TLS <= 1.2: a HelloRequest the client closes on.
    HelloRequestClientCloses,
    /// TLS <= 1.2: a HelloRequest the client ignores (sends application data).
    HelloRequestIgnored,
}

#[derive(Clone, Debug)]
struct Model {
    proto: Proto,
    /// Packing of the cleartext flights, in order.
    packs: [Pack; 4],
    client_session_id: usize,
    client_padding: usize,
    server_session_id: usize,
    /// Other ServerHello extensions (type, length), before the interesting ones.
    server_extra: Vec<(u16, usize)>,
    psk_first: bool,
    cert_len: usize,
    ske_len: usize,
    cke_len: usize,
    nst_len: usize,
    post: Vec<Post>,
    end: End,
}

fn dir() -> impl Strategy<Value = usize> {
    0usize..2
}

fn app_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        6 => 0usize..600,
        2 => Just(KEY_UPDATE_RECORD_LEN as usize),
        1 => 600usize..5000,
        1 => Just(MAX_RECORD_LEN as usize),
    ]
}

fn pack() -> impl Strategy<Value = Pack> {
    prop_oneof![
        Just(Pack::Separate),
        Just(Pack::Together),
        (1usize..=24).prop_map(Pack::Fragment),
    ]
}

fn answer() -> impl Strategy<Value = Answer> {
    prop_oneof![
        (1usize..5).prop_map(Answer::Full),
        Just(Answer::Abbreviated),
        Just(Answer::Alert),
    ]
}

fn post(tls13: bool) -> BoxedStrategy<Post> {
    let common = prop_oneof![
        4 => (dir(), app_len()).prop_map(|(dir, len)| Post::App { dir, len }),
        1 => dir().prop_map(|dir| Post::Alert { dir }),
        1 => (dir(), 0usize..100).prop_map(|(dir, len)| Post::Heartbeat { dir, len }),
        1 => (1usize..10, any::<bool>()).prop_map(|(n, answered)| Post::KeyUpdates { n, answered }),
    ];
    if tls13 {
        common.boxed()
    } else {
        prop_oneof![
            3 => common,
            2 => (answer(), proptest::option::of(app_len()))
                .prop_map(|(answer, app_between)| Post::ClientReneg { answer, app_between }),
            1 => answer().prop_map(|answer| Post::HelloRequest { answer }),
        ]
        .boxed()
    }
}

fn end(tls13: bool) -> BoxedStrategy<End> {
    let common = prop_oneof![
        Just(End::Nothing),
        Just(End::ServerClose),
        Just(End::ClientClose)
    ];
    if tls13 {
        common.boxed()
    } else {
        prop_oneof![
            3 => common,
            1 => Just(End::ClientRenegServerCloses),
            1 => Just(End::ClientRenegPending),
            1 => Just(End::HelloRequestClientCloses),
            1 => Just(End::HelloRequestIgnored),
        ]
        .boxed()
    }
}

fn proto(tls13: bool) -> BoxedStrategy<Proto> {
    if tls13 {
        (
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            proptest::option::of(app_len()),
            proptest::collection::vec(app_len(), 1..5),
            prop_oneof![
                Just(53usize),
                Just(KEY_UPDATE_RECORD_LEN as usize),
                1usize..3000
            ],
        )
            .prop_map(
                |(resumed, hrr, compat, early_data, server_flight, client_finished)| Proto::Tls13 {
                    resumed,
                    hrr,
                    compat,
                    early_data: if resumed { early_data } else { None },
                    server_flight,
                    client_finished,
                },
            )
            .boxed()
    } else {
        (
            prop_oneof![Just(VERSION_TLS10), Just(0x0302u16), Just(VERSION_TLS12)],
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(version, resumed, nst, ske)| Proto::Tls12 {
                version,
                resumed,
                nst,
                ske,
            })
            .boxed()
    }
}

fn model() -> impl Strategy<Value = Model> {
    any::<bool>().prop_flat_map(|tls13| {
        (
            proto(tls13),
            [pack(), pack(), pack(), pack()],
            (0usize..=32, 0usize..200, 0usize..=32),
            proptest::collection::vec(
                (
                    prop_oneof![
                        Just(0xff01u16),
                        Just(0x000b),
                        Just(0x0017),
                        Just(0x0010),
                        Just(0x0023),
                        Just(0xfe0d)
                    ],
                    0usize..40,
                ),
                0..4,
            ),
            any::<bool>(),
            (20usize..3000, 20usize..600, 20usize..300, 20usize..300),
            proptest::collection::vec(post(tls13), 0..10),
            end(tls13),
        )
            .prop_map(
                move |(
                    proto,
                    packs,
                    (client_session_id, client_padding, server_session_id),
                    server_extra,
                    psk_first,
                    (cert_len, ske_len, cke_len, nst_len),
                    post,
                    end,
                )| Model {
                    proto,
                    packs,
                    client_session_id,
                    client_padding,
                    server_session_id,
                    server_extra,
                    psk_first,
                    cert_len,
                    ske_len,
                    cke_len,
                    nst_len,
                    post,
                    end,
                },
            )
    })
}

// ---------------------------------------------------------------------------
// Building the bytes.

/// The messages packed into handshake records.
fn flight(msgs: &[Vec<u8>], pack: Pack) -> Vec<u8> {
    let refs: Vec<&[u8]> = msgs.iter().map(|m| &m[..]).collect();
    match pack {
        Pack::Separate => hs_records(&refs),
        Pack::Together => hs_record(&refs),
        Pack::Fragment(k) => {
            let all = refs.concat();
            let t = all.len();
            assert!(k <= t, "flight of {t} bytes in {k} records");
            (0..k)
                .flat_map(|i| {
                    record(
                        CT_HANDSHAKE,
                        VERSION_TLS12,
                        &all[i * t / k..(i + 1) * t / k],
                    )
                })
                .collect()
        }
    }
}

fn client_hello(m: &Model, tls13: bool) -> Vec<u8> {
    ClientHello {
        session_id: filler(m.client_session_id, 40),
        tls13,
        padding: m.client_padding,
    }
    .message()
}

fn server_hello(m: &Model, mut sh: ServerHello) -> Vec<u8> {
    sh.session_id = filler(m.server_session_id, 41);
    sh.extra = m
        .server_extra
        .iter()
        .map(|(t, len)| (*t, filler(*len, 42)))
        .collect();
    sh.psk_first = m.psk_first;
    sh.message()
}

/// A TLS <= 1.2 renegotiation's answer and the rest of it, once the client's
/// ClientHello is sent.
fn reneg_rest(c: &mut Conversation, answer: Answer, refuser: usize) {
    match answer {
        Answer::Full(k) => {
            let server: Vec<u8> = (0..k)
                .flat_map(|i| encrypted_handshake(60 + 300 * i))
                .collect();
            c.server(server);
            tls12_finish_full(c, &encrypted_handshake(100), &[]);
        }
        Answer::Abbreviated => {
            tls12_finish_abbreviated(c, &encrypted_handshake(100));
        }
        Answer::Alert => {
            c.send(refuser, encrypted_alert());
        }
    }
}

fn build(m: &Model) -> Conversation {
    let mut c = Conversation::new();
    let p = m.packs;
    match &m.proto {
        Proto::Tls12 {
            version,
            resumed,
            nst,
            ske,
        } => {
            c.client(flight(&[client_hello(m, false)], p[0]));
            let sh = server_hello(m, ServerHello::tls12().version(*version));
            if *resumed {
                let mut msgs = vec![sh];
                if *nst {
                    msgs.push(new_session_ticket(m.nst_len));
                }
                tls12_finish_abbreviated(&mut c, &flight(&msgs, p[1]));
            } else {
                let mut msgs = vec![sh, certificate(m.cert_len)];
                if *ske {
                    msgs.push(server_key_exchange(m.ske_len));
                }
                msgs.push(server_hello_done());
                c.server(flight(&msgs, p[1]));
                let mut last = Vec::new();
                if *nst {
                    last = flight(&[new_session_ticket(m.nst_len)], p[3]);
                }
                tls12_finish_full(
                    &mut c,
                    &flight(&[client_key_exchange(m.cke_len)], p[2]),
                    &last,
                );
            }
        }
        Proto::Tls13 {
            resumed,
            hrr,
            compat,
            early_data,
            server_flight,
            client_finished,
        } => {
            let mut first = flight(&[client_hello(m, true)], p[0]);
            let mut client_ccs_sent = false;
            if let Some(len) = early_data {
                if *compat {
                    first.extend(ccs());
                    client_ccs_sent = true;
                }
                first.extend(app_data(*len));
            }
            c.client(first);
            let mut server_ccs_sent = false;
            if *hrr {
                let mut b = flight(&[server_hello(m, ServerHello::hrr())], p[1]);
                if *compat {
                    b.extend(ccs());
                    server_ccs_sent = true;
                }
                c.server(b);
                let mut b = Vec::new();
                if *compat && !client_ccs_sent {
                    b.extend(ccs());
                    client_ccs_sent = true;
                }
                b.extend(flight(&[client_hello(m, true)], p[2]));
                c.client(b);
            }
            let sh = if *resumed {
                ServerHello::tls13().psk()
            } else {
                ServerHello::tls13()
            };
            let mut b = flight(&[server_hello(m, sh)], p[3]);
            if *compat && !server_ccs_sent {
                b.extend(ccs());
            }
            for len in server_flight {
                b.extend(app_data(*len));
            }
            c.server(b);
            let mut b = Vec::new();
            if *compat && !client_ccs_sent {
                b.extend(ccs());
            }
            b.extend(app_data(*client_finished));
            c.client(b);
        }
    }
    for e in &m.post {
        match e {
            Post::App { dir, len } => {
                c.send(*dir, app_data(*len));
            }
            Post::Alert { dir } => {
                c.send(*dir, encrypted_alert());
            }
            Post::Heartbeat { dir, len } => {
                c.send(*dir, heartbeat(*len));
            }
            Post::KeyUpdates { n, answered } => {
                for _ in 0..*n {
                    c.client(app_data(KEY_UPDATE_RECORD_LEN as usize));
                    if *answered {
                        c.server(app_data(KEY_UPDATE_RECORD_LEN as usize));
                    }
                }
            }
            Post::ClientReneg {
                answer,
                app_between,
            } => {
                c.client(encrypted_handshake(300));
                if let Some(len) = app_between {
                    c.client(app_data(*len));
                }
                reneg_rest(&mut c, *answer, SERVER);
            }
            Post::HelloRequest { answer } => {
                c.server(encrypted_handshake(32));
                if !matches!(answer, Answer::Alert) {
                    c.client(encrypted_handshake(300));
                }
                reneg_rest(&mut c, *answer, CLIENT);
            }
        }
    }
    match m.end {
        End::Nothing => {}
        End::ServerClose => {
            c.close(SERVER);
        }
        End::ClientClose => {
            c.close(CLIENT);
        }
        End::ClientRenegServerCloses => {
            c.client(encrypted_handshake(300)).close(SERVER);
        }
        End::ClientRenegPending => {
            c.client(encrypted_handshake(300));
        }
        End::HelloRequestClientCloses => {
            c.server(encrypted_handshake(32)).close(CLIENT);
        }
        End::HelloRequestIgnored => {
            c.server(encrypted_handshake(32)).client(app_data(40));
        }
    }
    c
}

// ---------------------------------------------------------------------------
// The oracle: what the model says must be counted, from its structure alone.

#[derive(Debug, PartialEq, Eq)]
struct Expect {
    counters: FlowCounters,
    version: u16,
    resumed: bool,
}

fn records_of(pack: Pack, messages: u32) -> u32 {
    match pack {
        Pack::Separate => messages,
        Pack::Together => 1,
        Pack::Fragment(k) => k as u32,
    }
}

fn oracle(m: &Model) -> Expect {
    let mut c = FlowCounters::default();
    let p = m.packs;
    let version;
    let resumed;
    let tls13;
    match &m.proto {
        Proto::Tls12 {
            version: v,
            resumed: r,
            nst,
            ske,
        } => {
            version = *v;
            resumed = *r;
            tls13 = false;
            c.client_hellos = 1;
            c.handshakes = 1;
            c.records[R_CCS] = 2;
            // ClientHello, both Finished.
            c.records[R_HS] = records_of(p[0], 1) + 2;
            if *r {
                c.records[R_HS] += records_of(p[1], 1 + u32::from(*nst));
            } else {
                c.records[R_HS] += records_of(p[1], 3 + u32::from(*ske));
                c.records[R_HS] += records_of(p[2], 1);
                if *nst {
                    c.records[R_HS] += records_of(p[3], 1);
                }
            }
        }
        Proto::Tls13 {
            resumed: r,
            hrr,
            compat,
            early_data,
            server_flight,
            ..
        } => {
            version = VERSION_TLS13;
            resumed = *r;
            tls13 = true;
            c.client_hellos = 1 + u32::from(*hrr);
            c.handshakes = 1;
            c.records[R_CCS] = if *compat { 2 } else { 0 };
            c.records[R_HS] = records_of(p[0], 1) + records_of(p[3], 1);
            if *hrr {
                c.records[R_HS] += records_of(p[1], 1) + records_of(p[2], 1);
            }
            c.records[R_APP] = u32::from(early_data.is_some()) + server_flight.len() as u32 + 1;
        }
    }
    let reneg_rest = |c: &mut FlowCounters, answer: Answer| match answer {
        Answer::Full(k) => {
            c.handshakes += 1;
            c.records[R_HS] += k as u32 + 3;
            c.records[R_CCS] += 2;
        }
        Answer::Abbreviated => {
            c.handshakes += 1;
            c.records[R_HS] += 3;
            c.records[R_CCS] += 2;
        }
        Answer::Alert => {
            c.renegotiations_refused += 1;
            c.alerts += 1;
            c.records[R_ALERT] += 1;
        }
    };
    // The client's KeyUpdate streak: its KeyUpdate-size records since the
    // last record of another size or type (the server's KeyUpdate-size
    // records neither count nor break it).
    let mut run = 0u16;
    for e in &m.post {
        match e {
            Post::App { len, dir } => {
                c.records[R_APP] += 1;
                if *len != KEY_UPDATE_RECORD_LEN as usize {
                    run = 0;
                } else if tls13 {
                    c.keyupdate_like += 1;
                    if *dir == CLIENT {
                        run += 1;
                        if run >= KEYUPDATE_STREAK_MIN {
                            c.keyupdate_streaked += 1;
                        }
                    }
                }
            }
            Post::Alert { .. } => {
                run = 0;
                c.alerts += 1;
                c.records[R_ALERT] += 1;
            }
            Post::Heartbeat { .. } => {
                run = 0;
                c.records[R_HB] += 1;
            }
            Post::KeyUpdates { n, answered } => {
                let per = 1 + u32::from(*answered);
                c.records[R_APP] += *n as u32 * per;
                if tls13 {
                    c.keyupdate_like += *n as u32 * per;
                    for _ in 0..*n {
                        run += 1;
                        if run >= KEYUPDATE_STREAK_MIN {
                            c.keyupdate_streaked += 1;
                        }
                    }
                }
            }
            Post::ClientReneg {
                answer,
                app_between,
            } => {
                c.client_hellos += 1;
                c.renegotiations_client += 1;
                c.records[R_HS] += 1;
                c.records[R_APP] += u32::from(app_between.is_some());
                reneg_rest(&mut c, *answer);
            }
            Post::HelloRequest { answer } => {
                c.renegotiations_server += 1;
                c.records[R_HS] += 1;
                if !matches!(answer, Answer::Alert) {
                    c.client_hellos += 1;
                    c.records[R_HS] += 1;
                }
                reneg_rest(&mut c, *answer);
            }
        }
    }
    match m.end {
        End::Nothing | End::ServerClose | End::ClientClose => {}
        End::ClientRenegServerCloses | End::ClientRenegPending => {
            c.client_hellos += 1;
            c.renegotiations_client += 1;
            c.renegotiations_refused += 1;
            c.records[R_HS] += 1;
        }
        End::HelloRequestClientCloses => {
            c.renegotiations_server += 1;
            c.renegotiations_refused += 1;
            c.records[R_HS] += 1;
        }
        End::HelloRequestIgnored => {
            c.renegotiations_server += 1;
            c.renegotiations_refused += 1;
            c.records[R_HS] += 1;
            c.records[R_APP] += 1;
        }
    }
    Expect {
        counters: c,
        version,
        resumed,
    }
}

// ---------------------------------------------------------------------------
// Feeding.

/// xorshift64*: the tests' own randomness, seeded by proptest.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn isn() -> impl Strategy<Value = u32> {
    prop_oneof![any::<u32>(), (0u32..3000).prop_map(|x| u32::MAX - x)]
}

/// Largest segment size: 1 (every byte alone) up to bigger than most records.
fn max_seg() -> impl Strategy<Value = usize> {
    prop_oneof![Just(1usize), 2usize..8, 8usize..200, 200usize..20000]
}

/// Feeds `plan`, retransmitting now and then: a segment re-sent from earlier
/// bytes (partial overlap), or an already-sent range of either direction
/// again. Returns the final state (after `finish()`).
fn run_retransmitting(
    conv: &Conversation,
    isn: [u32; 2],
    plan: &[Step],
    rng: &mut Rng,
) -> Result<FlowState, TestCaseError> {
    let mut d = Driver::new(conv, isn);
    let mut sent = [0usize; 2];
    for s in plan {
        match *s {
            Step::Seg { dir, start, end } => {
                let from = if start > 0 && rng.below(4) == 0 {
                    start - 1 - rng.below(start)
                } else {
                    start
                };
                prop_assert_eq!(d.seg(dir, from, end), SegmentOutcome::Parsed);
                sent[dir] = end;
                if rng.below(3) == 0 {
                    let od = rng.below(2);
                    if sent[od] > 0 {
                        let b = 1 + rng.below(sent[od]);
                        let a = rng.below(b);
                        prop_assert_eq!(d.seg(od, a, b), SegmentOutcome::Retransmit);
                    }
                }
            }
            close => d.step(close),
        }
    }
    d.state.finish();
    Ok(d.state)
}

/// An independent check of a record header (RFC 5246 6.2.1, RFC 8446 5.1).
fn is_tls_header(b: &[u8]) -> bool {
    b.len() >= 5
        && (20..=24).contains(&b[0])
        && b[1] == 3
        && b[2] <= 4
        && u16::from_be_bytes([b[3], b[4]]) <= (1 << 14) + 2048
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1000,
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    /// (a) + (c): exact counts from the oracle, independent of segmentation
    /// and of retransmissions.
    #[test]
    fn valid_conversations_count_as_the_oracle_says_however_segmented(
        m in model(),
        isn_c in isn(),
        isn_s in isn(),
        max in max_seg(),
        seed in any::<u64>(),
    ) {
        let conv = build(&m);
        let want = oracle(&m);
        let isn = [isn_c, isn_s];

        // One segment per send.
        let mut d = Driver::new(&conv, isn);
        d.run(&conv.plan_sends());
        prop_assert!(d.outcomes.iter().all(|o| *o == SegmentOutcome::Parsed));
        d.state.finish();
        let unsplit = d.state;
        let got = Expect {
            counters: unsplit.counters,
            version: unsplit.version,
            resumed: unsplit.resumed(),
        };
        prop_assert_eq!(&got, &want);
        prop_assert!(!unsplit.unsynced());

        // Random cut points (1-byte segments when max is 1).
        let mut rng = Rng::new(seed);
        let plan = conv.plan_sizes(|_| 1 + rng.below(max));
        let mut d = Driver::new(&conv, isn);
        d.run(&plan);
        prop_assert!(d.outcomes.iter().all(|o| *o == SegmentOutcome::Parsed));
        d.state.finish();
        prop_assert_eq!(Observed::of(&d.state), Observed::of(&unsplit));

        // The same cuts, with retransmissions.
        let s = run_retransmitting(&conv, isn, &plan, &mut rng)?;
        let mut got = Observed::of(&s);
        got.counters.retransmits = 0;
        prop_assert_eq!(got, Observed::of(&unsplit));
    }

}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    /// (b) Arbitrary bytes in arbitrary segments, any budget: no panic, and
    /// each direction loses sync at most once.
    #[test]
    fn arbitrary_segments_never_panic(
        segs in proptest::collection::vec(
            (
                prop_oneof![4 => 0usize..2, 1 => any::<usize>()],
                prop_oneof![3 => 0u32..400, 1 => any::<u32>()],
                prop_oneof![
                    3 => proptest::collection::vec(any::<u8>(), 0..80),
                    1 => (20u8..=24, 0u8..=4, 0u16..300, proptest::collection::vec(any::<u8>(), 0..80))
                        .prop_map(|(t, minor, len, rest)| {
                            [&[t, 3, minor][..], &len.to_be_bytes(), &rest].concat()
                        }),
                ],
            ),
            0..40,
        ),
        max_steps in prop_oneof![0u32..12, Just(u32::MAX)],
        closes in proptest::collection::vec((0usize..40, 0usize..2), 0..3),
    ) {
        let mut s = FlowState::new();
        for (i, (dir, seq, bytes)) in segs.iter().enumerate() {
            s.on_segment(*dir, *seq, &bytes[..], max_steps);
            for (at, who) in &closes {
                if *at == i {
                    s.on_close(*who);
                }
            }
        }
        s.finish();
        let lost = u32::from(s.counters.gaps)
            + u32::from(s.counters.bad_records)
            + u32::from(s.counters.overflows);
        prop_assert!(lost <= 2, "{:?}", s.counters);
        for d in &s.dirs {
            prop_assert!(d.status <= DIR_UNSYNCED);
            prop_assert!(d.hdr_have < RECORD_HEADER_LEN as u8);
            if d.status == DIR_UNSYNCED {
                prop_assert!(s.unsynced());
            }
        }
        prop_assert!(s.counters.renegotiations_refused
            <= s.counters.renegotiations_client + s.counters.renegotiations_server);
    }

    /// (b) A stream whose first bytes are not a TLS record header counts
    /// nothing, whatever follows and however it is cut.
    #[test]
    fn non_tls_start_counts_nothing(
        mut streams in [
            proptest::collection::vec(any::<u8>(), 0..400),
            proptest::collection::vec(any::<u8>(), 0..400),
        ],
        tails in [
            proptest::collection::vec(any::<u8>(), 0..4),
            proptest::collection::vec(any::<u8>(), 0..4),
        ],
        isn_c in isn(),
        isn_s in isn(),
        max in max_seg(),
        budget in prop_oneof![1u32..12, Just(u32::MAX)],
        seed in any::<u64>(),
    ) {
        for (s, tail) in streams.iter_mut().zip(&tails) {
            // Follow the bytes with a valid record: it must not be counted either.
            s.extend(app_data(tail.len()));
            if is_tls_header(s) {
                // Not a header at the start, keeping the rest arbitrary.
                s[0] = tail.first().copied().unwrap_or(0) % 20;
            }
        }
        let mut conv = Conversation::new();
        let mut rng = Rng::new(seed);
        // Interleave the two directions in random chunks.
        let mut off = [0usize; 2];
        while off[0] < streams[0].len() || off[1] < streams[1].len() {
            let dir = rng.below(2);
            let n = (1 + rng.below(60)).min(streams[dir].len() - off[dir]);
            if n > 0 {
                conv.send(dir, &streams[dir][off[dir]..off[dir] + n]);
                off[dir] += n;
            }
        }
        let mut d = Driver::new(&conv, [isn_c, isn_s]);
        d.max_steps = budget;
        d.run(&conv.plan_sizes(|_| 1 + rng.below(max)));
        let s = d.state;
        let quiet = FlowCounters {
            bad_records: s.counters.bad_records,
            overflows: s.counters.overflows,
            ..Default::default()
        };
        prop_assert_eq!(s.counters, quiet);
        prop_assert_eq!(s.version, 0);
        prop_assert_eq!(s.flags & !FF_UNSYNCED, 0);
        // Each direction stops at its first header (or runs out of budget before).
        prop_assert_eq!(s.counters.bad_records + s.counters.overflows, 2);
        if budget == u32::MAX {
            prop_assert_eq!(s.counters.bad_records, 2);
        }
    }

    /// Correctly framed records with arbitrary bodies: every record counted by
    /// type, no sync lost, no panic, and the same however it is segmented.
    #[test]
    fn framed_garbage_keeps_sync(
        recs in proptest::collection::vec(
            (
                0usize..2,
                prop_oneof![3 => Just(CT_HANDSHAKE), 1 => 20u8..=24],
                0u16..=4,
                prop_oneof![
                    // Random bytes.
                    2 => proptest::collection::vec(any::<u8>(), 0..200),
                    // Handshake headers with random types and lengths.
                    2 => proptest::collection::vec(
                        (prop_oneof![Just(HS_SERVER_HELLO), Just(HS_CLIENT_HELLO), any::<u8>()],
                         prop_oneof![0u32..100, any::<u32>()],
                         proptest::collection::vec(any::<u8>(), 0..60)),
                        0..4,
                    ).prop_map(|msgs| msgs.into_iter().flat_map(|(t, len, body)| {
                        [&[t][..], &len.to_be_bytes()[1..], &body].concat()
                    }).collect()),
                    // Real ServerHellos with a few bytes replaced, or truncated.
                    2 => (
                        prop_oneof![
                            Just(ServerHello::tls12().message()),
                            Just(ServerHello::tls13().psk().message()),
                            Just(ServerHello::hrr().message()),
                        ],
                        proptest::collection::vec((any::<Index>(), any::<u8>()), 0..4),
                        any::<Index>(),
                        any::<bool>(),
                    ).prop_map(|(mut sh, edits, cut, truncate)| {
                        for (i, b) in edits {
                            let at = i.index(sh.len());
                            sh[at] = b;
                        }
                        if truncate {
                            sh.truncate(cut.index(sh.len()));
                        }
                        sh
                    }),
                ],
            ),
            0..30,
        ),
        max in max_seg(),
        seed in any::<u64>(),
        isn_c in isn(),
        isn_s in isn(),
    ) {
        let mut conv = Conversation::new();
        let mut by_type = [0u32; 5];
        for (dir, typ, minor, body) in &recs {
            conv.send(*dir, record(*typ, 0x0300 | minor, body));
            by_type[(*typ - CT_CHANGE_CIPHER_SPEC) as usize] += 1;
        }
        let isn = [isn_c, isn_s];
        let unsplit = run_sends(&conv, isn);
        prop_assert_eq!(unsplit.counters.records, by_type);
        prop_assert_eq!(unsplit.counters.alerts, by_type[R_ALERT]);
        prop_assert!(!unsplit.unsynced());
        prop_assert_eq!(unsplit.counters.bad_records, 0);

        let mut rng = Rng::new(seed);
        let mut d = Driver::new(&conv, isn);
        d.run(&conv.plan_sizes(|_| 1 + rng.below(max)));
        prop_assert_eq!(Observed::of(&d.state), Observed::of(&unsplit));
    }
}

/// The generator covers what it claims to (a cheap guard against a strategy
/// that silently never produces some case).
#[test]
fn model_generator_covers_the_cases() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strat = model();
    let mut seen = [false; 13];
    for _ in 0..3000 {
        let m = strat.new_tree(&mut runner).unwrap().current();
        let e = oracle(&m);
        match &m.proto {
            Proto::Tls12 { resumed, .. } => {
                seen[0] = true;
                seen[1] |= *resumed;
            }
            Proto::Tls13 {
                resumed,
                hrr,
                compat,
                early_data,
                ..
            } => {
                seen[2] = true;
                seen[3] |= *resumed;
                seen[4] |= *hrr && *compat;
                seen[5] |= *hrr && early_data.is_some();
            }
        }
        seen[6] |= e.counters.renegotiations_client >= 3;
        seen[7] |= e.counters.renegotiations_server >= 1 && e.counters.renegotiations_refused >= 1;
        seen[8] |= e.counters.keyupdate_like >= 1;
        seen[9] |= e.counters.records[R_HB] >= 1;
        seen[10] |= matches!(m.end, End::ClientRenegServerCloses);
        seen[11] |= m
            .packs
            .iter()
            .any(|p| matches!(p, Pack::Fragment(k) if *k > 10));
        seen[12] |= e.counters.keyupdate_streaked >= 1;
    }
    assert_eq!(seen, [true; 13]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Cleartext alerts after a ClientHello, from either side, however
    /// segmented: each direction's first and last (level, description)
    /// are kept.
    #[test]
    fn cleartext_alerts_first_and_last_per_direction(
        alerts in proptest::collection::vec((dir(), 1u8..=2, any::<u8>()), 1..8),
        max in max_seg(),
        seed in any::<u64>(),
        isn_c in isn(),
        isn_s in isn(),
    ) {
        let mut conv = Conversation::new();
        conv.client(ClientHello::tls12().record());
        let mut first = [0u16; 2];
        let mut last = [0u16; 2];
        for (dir, level, desc) in &alerts {
            conv.send(*dir, alert(*level, *desc));
            let v = u16::from(*level) << 8 | u16::from(*desc);
            if first[*dir] == 0 {
                first[*dir] = v;
            }
            last[*dir] = v;
        }
        let isn = [isn_c, isn_s];
        let unsplit = run_sends(&conv, isn);
        prop_assert_eq!(unsplit.alert_first, first);
        prop_assert_eq!(unsplit.alert_last, last);
        prop_assert_eq!(unsplit.counters.alerts, alerts.len() as u32);
        let mut rng = Rng::new(seed);
        let mut d = Driver::new(&conv, isn);
        d.run(&conv.plan_sizes(|_| 1 + rng.below(max)));
        prop_assert_eq!(Observed::of(&d.state), Observed::of(&unsplit));
    }
}

// ---------------------------------------------------------------------------
// Bounded work: the eBPF budget, `step_bound` of a segment's length.

/// Steps one segment by hand as the eBPF program does (the application-data
/// fast path, then one `step_segment` per `bpf_loop` iteration) and checks
/// that every step but a final error consumes at least one byte, so the
/// steps never exceed `step_bound` of the segment's new bytes.
fn check_steps(s: &mut FlowState, dir: usize, seq: u32, bytes: &[u8]) -> Result<(), TestCaseError> {
    let Ok((mut off, len)) = s.begin_segment(dir, seq, bytes.len()) else {
        return Ok(());
    };
    let bound = step_bound(len - off);
    let start = off;
    let mut steps = s.app_data_steps(dir, bytes, &mut off, len, bound);
    prop_assert!(
        off - start >= steps,
        "fast path: {steps} steps, {} bytes",
        off - start
    );
    if steps > 0 && off >= len {
        return Ok(());
    }
    loop {
        let before = off;
        let r = s.step_segment(dir, bytes, &mut off, len);
        steps += 1;
        prop_assert!(steps <= bound, "{steps} steps for {} bytes", len - start);
        match r {
            None => prop_assert!(off > before, "a step consumed nothing"),
            Some(SegmentOutcome::Parsed) => prop_assert!(off >= len),
            Some(_) => break,
        }
        if r.is_some() {
            break;
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1000,
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    /// From any state a valid conversation's prefix leaves (mid-header,
    /// mid-handshake field, inside an alert, ...), the next segment, valid
    /// continuation or arbitrary bytes, never needs more than `step_bound`
    /// of its length: the eBPF budget cannot run out.
    #[test]
    fn step_bound_is_never_exhausted(
        m in model(),
        cut in [any::<Index>(), any::<Index>()],
        dir in dir(),
        garbage in prop_oneof![Just(None), proptest::collection::vec(any::<u8>(), 1..600).prop_map(Some)],
        take in 1usize..3000,
        max in max_seg(),
        seed in any::<u64>(),
    ) {
        let conv = build(&m);
        let streams = [conv.stream(CLIENT), conv.stream(SERVER)];
        let mut rng = Rng::new(seed);
        let mut s = FlowState::new();
        let ends = [cut[0].index(streams[0].len() + 1), cut[1].index(streams[1].len() + 1)];
        // Each direction's prefix, cut into random segments (both directions
        // start at sequence number 0).
        for d in [CLIENT, SERVER] {
            let mut at = 0;
            while at < ends[d] {
                let n = (1 + rng.below(max)).min(ends[d] - at);
                s.on_segment(d, at as u32, &streams[d][at..at + n], u32::MAX);
                at += n;
            }
        }
        let next: Vec<u8> = match garbage {
            Some(g) => g,
            None => streams[dir][ends[dir]..(ends[dir] + take).min(streams[dir].len())].to_vec(),
        };
        let mut by_hand = s;
        check_steps(&mut by_hand, dir, ends[dir] as u32, &next)?;
        let out = s.on_segment(dir, ends[dir] as u32, &next[..], step_bound(next.len() as u32));
        prop_assert_ne!(out, SegmentOutcome::Overflow);
        prop_assert_eq!(s, by_hand);
    }

    /// A valid record stream (application data and heartbeats of any length,
    /// empty ones included) cut anywhere, at record boundaries or inside
    /// records, so that segments start at a boundary with whole records and
    /// a partial one: with the eBPF budget the direction stays synced and
    /// every record is counted exactly once.
    #[test]
    fn any_split_of_a_record_stream_counts_every_record_once(
        recs in proptest::collection::vec(
            (prop_oneof![4 => Just(CT_APPLICATION_DATA), 1 => Just(CT_HEARTBEAT)],
             prop_oneof![2 => 0usize..3, 2 => 3usize..64, 1 => 64usize..2000]),
            1..300,
        ),
        cuts in proptest::collection::vec((any::<bool>(), any::<Index>()), 0..60),
        isn in isn(),
    ) {
        let mut conv = Conversation::new();
        tls13_full(&mut conv);
        let head = conv.stream(SERVER).len();
        for (typ, len) in &recs {
            conv.server(record(*typ, VERSION_TLS12, &filler(*len, *len as u8)));
        }
        let stream = conv.stream(SERVER);
        // Record boundaries of the server's stream after the handshake.
        let mut at = head;
        let mut boundaries = Vec::new();
        for (_, len) in &recs {
            boundaries.push(at);
            at += 5 + len;
        }
        let mut points: Vec<usize> = cuts
            .iter()
            .map(|(on_boundary, i)| {
                if *on_boundary {
                    boundaries[i.index(boundaries.len())]
                } else {
                    head + i.index(stream.len() - head)
                }
            })
            .collect();
        points.push(head);
        points.push(stream.len());
        points.sort_unstable();
        points.dedup();
        let mut handshake = Conversation::new();
        tls13_full(&mut handshake);
        let mut s = run_sends(&handshake, [0, isn]);
        let before = s.counters.records;
        for w in points.windows(2) {
            let seg = &stream[w[0]..w[1]];
            let out = s.on_segment(
                SERVER,
                isn.wrapping_add(w[0] as u32),
                seg,
                step_bound(seg.len() as u32),
            );
            prop_assert_eq!(out, SegmentOutcome::Parsed);
        }
        prop_assert!(!s.unsynced(), "{:?}", s.counters);
        let app = recs.iter().filter(|(t, _)| *t == CT_APPLICATION_DATA).count() as u32;
        let hb = recs.len() as u32 - app;
        prop_assert_eq!(s.counters.records[R_APP], before[R_APP] + app);
        prop_assert_eq!(s.counters.records[R_HB], before[R_HB] + hb);
    }
}
