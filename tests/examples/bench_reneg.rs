//! A one-client renegotiation flood against `openssl s_server -tls1_2
//! -client_renegotiation`: the server's CPU seconds over a fixed time,
//! unprotected vs hsmon enforcing (renegotiation cap 3 + reset, the embedded
//! policy's `renegotiations_per_minute = 10` -> ban), in alternating rounds;
//! and the ban latency measured in the enforcing rounds (`cargo xtask
//! bench` runs this as root; prints `BENCH_ROW` lines, see
//! [`tests::bench`]).
//!
//! The flood: `openssl s_client -tls1_2` in the client namespace, fed `R`
//! (renegotiate) every 2 ms; when it exits (reset by hsmon) a new one
//! connects at once. CPU: `utime + stime` of the s_server process from
//! `/proc/PID/stat` over the round.
//!
//! Ban latency, from the kernel's own state polled every ~0.1 ms through
//! the agent's pinned maps: `t_over` is when the client's renegotiations
//! (the sum of `renegotiations_client` over its flows in `FLOWS`, each flow
//! remembered after it leaves the map) first exceed the policy's threshold
//! (10), `t_ban` when `BAN_COUNT` becomes non-zero, `t_drop` when
//! `STATS[BanDropsPolicy]` (a packet dropped for a policy ban) first counts.
//! The latency is `t_drop - t_over`; `t_ban - t_over` is the agent's
//! decision time: the TC program sends `EVENT_FLOW_PROGRESS` with the
//! segment that carried the renegotiation ClientHello, and the agent's
//! ring-buffer reader evaluates the peer's rules on it and writes the ban
//! (before the event path, the policy ran only on the agent's 1-second
//! sweep: 434-798 ms). So that the first drop measures hsmon and not when
//! the flooding client happens to send again (after the reset its
//! `s_client` must restart: tens of ms), the enforcing rounds also run a
//! prober from the client's address: a non-blocking TCP connect to a closed
//! port of the server every [`PROBE_EVERY`] (answered by a RST until the
//! ban; its SYNs are the first packets dropped after it).

use anyhow::{bail, Context, Result};
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use monitor_common::flow::{FlowKey, FlowValue, Stat};
use std::collections::HashMap as StdMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tests::bench::{self, cpu_time, percentile, AbSamples, Goal, Row};
use tests::cert::TestCert;
use tests::hsmon::Agent;
use tests::netns::NetPair;
use tests::process::Proc;
use tests::workdir::WorkDir;

const SECTION: &str = "reneg_flood";
/// The embedded policy's `renegotiations_per_minute`.
const THRESHOLD: u64 = 10;
/// The map poller's pause between two reads (µs): the agent bans, resets
/// the crossing connection and deletes its flow within about a
/// millisecond, so the poller must see the crossing state before that.
const POLL_US: u64 = 100;
/// The prober's pause between two SYNs.
const PROBE_EVERY: Duration = Duration::from_millis(1);
/// The closed server port the prober connects to.
const PROBE_PORT: u16 = 9;

/// Sends a SYN from the client namespace to `dst` every [`PROBE_EVERY`]
/// (a non-blocking connect, the socket closed before the next) until `stop`;
/// returns the SYNs sent.
fn start_prober(
    net: &NetPair,
    dst: SocketAddr,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<Result<Result<u64>>>> {
    tests::netns::spawn_in_netns(&net.client_ns, move || -> Result<u64> {
        use socket2::{Domain, SockAddr, Socket, Type};
        let mut sent = 0u64;
        // Bounded like the rounds themselves: at most a minute of probing.
        let end = Instant::now() + Duration::from_secs(60);
        while !stop.load(Ordering::SeqCst) && Instant::now() < end {
            let s = Socket::new(Domain::for_address(dst), Type::STREAM, None)
                .context("creating the prober's socket")?;
            s.set_nonblocking(true).context("non-blocking socket")?;
            // EINPROGRESS is the expected answer; the SYN is out.
            let _ = s.connect(&SockAddr::from(dst));
            sent += 1;
            std::thread::sleep(PROBE_EVERY);
        }
        Ok(sent)
    })
}

fn start_server(net: &NetPair, dir: &Path, cert: &TestCert, addr: SocketAddr) -> Result<Proc> {
    let mut c = net.server_cmd("openssl");
    c.args([
        "s_server",
        "-accept",
        &addr.to_string(),
        "-tls1_2",
        "-client_renegotiation",
    ])
    .arg("-cert")
    .arg(&cert.cert)
    .arg("-key")
    .arg(&cert.key);
    // stdin stays open: on EOF s_server quits.
    let mut p = Proc::spawn("s_server", c, dir, true)?;
    p.wait_listening(&net.server_ns, addr, Duration::from_secs(15))?;
    Ok(p)
}

/// Floods for `secs`: a client that renegotiates every 2 ms, reconnecting
/// whenever it exits. Returns the clients started.
fn flood(net: &NetPair, dir: &Path, addr: SocketAddr, secs: f64) -> Result<u32> {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut started = 0u32;
    while Instant::now() < end {
        let mut c = net.client_cmd("openssl");
        c.args(["s_client", "-tls1_2", "-connect", &addr.to_string()]);
        let mut p = Proc::spawn("flood-client", c, dir, true)?;
        started += 1;
        while Instant::now() < end && p.is_running() {
            if p.write_line("R").is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        // Dropped here: killed if still running (e.g. connecting to a
        // banned address), reaped.
        drop(p);
    }
    Ok(started)
}

fn pinned(agent: &Agent, name: &str) -> Result<Map> {
    let pin_dir = &agent.state().pin_dir;
    let mut found: Option<PathBuf> = None;
    for e in std::fs::read_dir(pin_dir).with_context(|| format!("listing {}", pin_dir.display()))? {
        let p = e?.path().join(name);
        if p.exists() {
            found = Some(p);
        }
    }
    let p = found.with_context(|| format!("no pinned {name} under {}", pin_dir.display()))?;
    let data = MapData::from_pin(&p).with_context(|| format!("opening {}", p.display()))?;
    Map::from_map_data(data).with_context(|| format!("{name}: map type"))
}

/// The moments of one ban, in seconds from the poller's start.
#[derive(Debug, Default, Clone, Copy)]
struct BanTimes {
    over: Option<f64>,
    ban: Option<f64>,
    drop: Option<f64>,
}

/// Polls the agent's pinned FLOWS, BAN_COUNT and STATS until `stop` or
/// until the first policy drop.
fn poll_ban(
    agent: &Agent,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<Result<BanTimes>>> {
    let flows: HashMap<MapData, FlowKey, FlowValue> = HashMap::try_from(pinned(agent, "FLOWS")?)?;
    let count: Array<MapData, u32> = Array::try_from(pinned(agent, "BAN_COUNT")?)?;
    let stats: PerCpuArray<MapData, u64> = PerCpuArray::try_from(pinned(agent, "STATS")?)?;
    Ok(std::thread::spawn(move || {
        let t0 = Instant::now();
        let mut seen: StdMap<(FlowKey, u64), u64> = StdMap::new();
        let mut t = BanTimes::default();
        while !stop.load(Ordering::SeqCst) && t.drop.is_none() {
            let now = t0.elapsed().as_secs_f64();
            if t.over.is_none() {
                for item in flows.iter() {
                    let (k, v) = item.context("iterating FLOWS")?;
                    let n = u64::from(v.tracker.counters.renegotiations_client);
                    let e = seen.entry((k, v.first_seen_ns)).or_insert(0);
                    *e = (*e).max(n);
                }
                if seen.values().sum::<u64>() > THRESHOLD {
                    t.over = Some(now);
                }
            }
            if t.ban.is_none() && count.get(&0, 0).context("BAN_COUNT")? > 0 {
                t.ban = Some(now);
            }
            let drops: u64 = stats
                .get(&(Stat::BanDropsPolicy as u32), 0)
                .context("STATS")?
                .iter()
                .sum();
            if drops > 0 {
                t.drop = Some(now);
            }
            std::thread::sleep(Duration::from_micros(POLL_US));
        }
        Ok(t)
    }))
}

fn main() -> Result<()> {
    let rounds: u32 = bench::scale(3, 1);
    let secs = bench::scale(10.0, 4.0);
    let extra_latency_rounds = bench::scale(3, 1);
    let dir = WorkDir::new("bench-reneg")?;
    let net = NetPair::create()?;
    let cert = TestCert::generate(dir.path())?;
    let addr = net.server_addr(false, 8444);
    let server = start_server(&net, dir.path(), &cert, addr)?;
    let spid = server.pid();
    let args: Vec<String> = ["--reneg-cap", "3", "--metrics-addr", "off"]
        .iter()
        .map(|s| s.to_string())
        .collect();

    let mut cpu = AbSamples::default();
    let mut lat = Vec::new();
    let mut decide = Vec::new();
    let mut enforce_ms = Vec::new();
    let mut clients = (Vec::new(), Vec::new());
    let mut missed = 0u32;
    let mut samples = 0usize;
    let mut one_round = |enforce: bool, flood_secs: f64, cpu_sample: bool| -> Result<bool> {
        let agent = if enforce {
            Some(Agent::start_with_args(&net, dir.path(), &args)?)
        } else {
            None
        };
        let stop = Arc::new(AtomicBool::new(false));
        let poller = match &agent {
            Some(a) => Some(poll_ban(a, stop.clone())?),
            None => None,
        };
        let prober = if enforce {
            Some(start_prober(
                &net,
                SocketAddr::new(addr.ip(), PROBE_PORT),
                stop.clone(),
            )?)
        } else {
            None
        };
        let mut sampled = false;
        let before = cpu_time(spid)?;
        let n = flood(&net, dir.path(), addr, flood_secs)?;
        let used = (cpu_time(spid)? - before).as_secs_f64();
        stop.store(true, Ordering::SeqCst);
        if let Some(p) = prober {
            p.join()
                .map_err(|_| anyhow::anyhow!("the prober panicked"))???;
        }
        if let Some(p) = poller {
            let t = p
                .join()
                .map_err(|_| anyhow::anyhow!("the map poller panicked"))??;
            match (t.over, t.ban, t.drop) {
                (Some(o), Some(b), Some(d)) => {
                    lat.push((d - o) * 1000.0);
                    decide.push((b - o) * 1000.0);
                    enforce_ms.push((d - b) * 1000.0);
                    sampled = true;
                }
                (None, Some(_), Some(_)) => {
                    // The agent banned, reset the crossing connection and
                    // deleted its flow between two polls: no sample.
                    missed += 1;
                    eprintln!("round without a latency sample: the crossing state was never polled ({t:?})");
                }
                _ => bail!(
                    "no ban within the round: {t:?}\n{}",
                    agent.as_ref().map(|a| a.logs(30)).unwrap_or_default()
                ),
            }
        }
        if cpu_sample {
            if enforce {
                cpu.b.push(used);
                clients.1.push(f64::from(n));
            } else {
                cpu.a.push(used);
                clients.0.push(f64::from(n));
            }
        }
        drop(agent);
        Ok(sampled)
    };
    for r in 0..rounds {
        let order = if r.is_multiple_of(2) {
            [false, true]
        } else {
            [true, false]
        };
        for enforce in order {
            samples += usize::from(
                one_round(enforce, secs, true)
                    .with_context(|| format!("round {r}, enforce={enforce}"))?,
            );
        }
    }
    for r in 0..extra_latency_rounds {
        samples +=
            usize::from(one_round(true, 3.0, false).with_context(|| format!("latency round {r}"))?);
    }
    // Rounds whose crossing state the poller missed are run again (bounded).
    let mut extra = 0;
    while samples < (rounds + extra_latency_rounds) as usize && extra < 2 * rounds {
        extra += 1;
        samples += usize::from(
            one_round(true, 3.0, false).with_context(|| format!("extra latency round {extra}"))?,
        );
    }
    drop(server);
    if lat.is_empty() {
        bail!("no latency sample in any round ({missed} rounds without the crossing state)");
    }

    Row::new(
        SECTION,
        "server CPU, hsmon enforcing / unprotected",
        cpu.ratio(),
        "ratio",
        &format!(
            "s_server utime+stime over {secs}s of flood per round; {}; s_client processes started per round: \
             unprotected {:?}, enforcing {:?}",
            cpu.describe("unprotected", "enforcing", "CPU s"),
            clients.0,
            clients.1
        ),
    )
    .target(Goal::AtMost, 0.05)
    .emit();
    Row::new(
        SECTION,
        "server CPU, unprotected",
        cpu.a_median(),
        "CPU s",
        &format!("over {secs}s"),
    )
    .emit();
    Row::new(
        SECTION,
        "server CPU, hsmon enforcing",
        cpu.b_median(),
        "CPU s",
        &format!("over {secs}s"),
    )
    .emit();
    let n = lat.len();
    Row::new(
        SECTION,
        "ban latency p99: over-threshold renegotiation -> first dropped packet",
        percentile(&lat, 99.0),
        "ms",
        &format!(
            "{n} bans (one per fresh agent; {missed} more rounds gave no sample: the agent deleted the crossing flow \
             between two polls), kernel state polled every {POLL_US} us through the pinned maps; \
             with n={n} the p99 is the maximum; all samples {:?} ms; median {:.1} ms",
            lat.iter().map(|x| x.round()).collect::<Vec<_>>(),
            bench::median(&lat)
        ),
    )
    .target(Goal::AtMost, 10.0)
    .emit();
    Row::new(
        SECTION,
        "ban decision: over-threshold renegotiation -> ban in the kernel map (median)",
        bench::median(&decide),
        "ms",
        &format!(
            "the agent's policy acts on the ring-buffer event of the segment (EVENT_FLOW_PROGRESS); samples {:?} ms",
            decide.iter().map(|x| x.round()).collect::<Vec<_>>()
        ),
    )
    .emit();
    Row::new(
        SECTION,
        "ban in the kernel map -> first dropped packet (median)",
        bench::median(&enforce_ms),
        "ms",
        &format!(
            "the kernel drops from the first packet after the map update; this is the wait for the \
             client's next packet: the prober's SYN every {PROBE_EVERY:?} (within the polling interval); \
             samples {:?} ms",
            enforce_ms
                .iter()
                .map(|x| (x * 10.0).round() / 10.0)
                .collect::<Vec<_>>()
        ),
    )
    .emit();
    Ok(())
}
