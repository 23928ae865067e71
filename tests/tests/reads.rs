//! Reads never change state (issue 12): a closed flow still in the kernel's
//! `FLOWS` map is collected by the pipeline's sweep timer (or its close
//! event), never by a `GET`.
//!
//! The agent runs with `--sweep-interval 20s` (the hidden flag: its first
//! sweep runs as it starts, the next one 20 s later). A real TLS
//! connection is opened; a copy of its `FLOWS` entry, under another client
//! port and marked closed (`FF_CLOSED`), is written into the pinned map:
//! a closed flow that no close event will announce. Then two consecutive
//! `GET`s each of `/v1/conns`, `/v1/status`, `/v1/stats` and `/metrics`
//! return the same documents (clock readings and program-run counters
//! aside: those move with any traffic on the host), the flow still sits
//! in the kernel map and the agent has collected no close. Only the
//! timer's sweep collects it: it leaves the map, `closes_seen` counts it,
//! and `/v1/conns` shows it as it did before, closed.

use anyhow::{bail, ensure, Context, Result};
use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use monitor_common::flow::{FlowKey, FlowValue};
use monitor_common::tracker::FF_CLOSED;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tests::hsmon::control_request;
use tests::openssl::{SClientOpts, SServerOpts, TlsVersion};
use tests::prom::http_get;
use tests::scenario::{with_scenario_agent_args, PER_CONN};

const PORT: u16 = 4481;
/// The agent's `--metrics-addr`, inside the server namespace.
const METRICS: &str = "127.0.0.1:19481";
/// The agent's sweep interval: long enough for every read to happen
/// between two sweeps.
const SWEEP: Duration = Duration::from_secs(20);

/// Whether a kernel counter counts program runs: those move with any
/// traffic on the host (the reads' own TCP connections included).
fn counts_runs(name: &str) -> bool {
    name.ends_with("_runs") || name.starts_with("ssl_probe_")
}

/// `GET path` on the control socket, parsed, with the fields that read the
/// clock (`*_ms_ago`, `uptime_ms`) and the program-run counters removed.
fn document(socket: &Path, path: &str) -> Result<Value> {
    let (status, body) = control_request(socket, "GET", path, None)?;
    ensure!(status == 200, "GET {path}: {status} {body}");
    let mut v: Value =
        serde_json::from_str(&body).with_context(|| format!("GET {path}: {body:?}"))?;
    strip_clock(&mut v);
    Ok(v)
}

fn strip_clock(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| !k.ends_with("_ms_ago") && k != "uptime_ms" && !counts_runs(k));
            m.values_mut().for_each(strip_clock);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_clock),
        _ => {}
    }
}

/// The agent's `/metrics` exposition, its lines sorted (a family's labels
/// come in no fixed order), without the program-run counters.
fn metrics(ns: &str, addr: SocketAddr) -> Result<String> {
    let r = http_get(ns, addr, "/metrics", Duration::from_secs(5))?;
    ensure!(r.status == 200, "GET /metrics: {} {}", r.status, r.body);
    let mut lines: Vec<&str> = r
        .body
        .lines()
        .filter(|l| {
            !(l.contains("program_runs")
                || l.contains("_runs_total")
                || l.contains("_runs ")
                || l.contains("ssl_probe_"))
        })
        .collect();
    lines.sort_unstable();
    Ok(lines.iter().map(|l| format!("{l}\n")).collect())
}

/// The pinned `FLOWS` map.
fn flows_map(pin_dir: &Path) -> Result<BpfHashMap<MapData, FlowKey, FlowValue>> {
    let path = pin_dir.join("maps-v1/FLOWS");
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    BpfHashMap::try_from(Map::LruHashMap(data)).context("FLOWS is not a hash map")
}

#[test]
fn reads_never_collect_a_closed_flow_only_the_sweep_timer_does() {
    let args = vec![
        "--sweep-interval".to_owned(),
        format!("{}s", SWEEP.as_secs()),
        "--metrics-addr".to_owned(),
        METRICS.to_owned(),
    ];
    // The agent sweeps as it starts; the next sweep comes SWEEP later.
    let agent_started = Instant::now();
    with_scenario_agent_args("reads", &args, |sc| {
        let metrics_addr: SocketAddr = METRICS.parse().context("metrics address")?;
        let addr = sc.server_addr(false, PORT);
        let _srv = sc.s_server(&SServerOpts::new(addr).version(TlsVersion::Tls12))?;
        let mut c = sc.s_client(&SClientOpts::new(addr).version(TlsVersion::Tls12))?;
        c.wait_established(PER_CONN)?;
        let agent = sc.agent().context("no agent")?;
        let socket = agent.socket.clone();
        let pin_dir = agent.state().pin_dir.clone();

        // The live flow, copied under another client port and marked closed.
        let mut flows = flows_map(&pin_dir)?;
        let entries: Vec<(FlowKey, FlowValue)> = flows
            .iter()
            .collect::<Result<_, _>>()
            .context("reading FLOWS")?;
        let Some((key, value)) = entries
            .iter()
            .find(|(k, _)| k.port_a == PORT || k.port_b == PORT)
        else {
            bail!(
                "no flow for port {PORT} in FLOWS: {} entries",
                entries.len()
            );
        };
        let mut closed_key = *key;
        if closed_key.port_a == PORT {
            closed_key.port_b = closed_key.port_b.wrapping_add(1);
        } else {
            closed_key.port_a = closed_key.port_a.wrapping_add(1);
        }
        ensure!(
            !entries.iter().any(|(k, _)| *k == closed_key),
            "the copy's key is taken"
        );
        let mut closed_value = *value;
        closed_value.tracker.flags |= FF_CLOSED;
        flows
            .insert(closed_key, closed_value, 0)
            .context("writing the closed copy into FLOWS")?;
        let stats_before = document(&socket, "/v1/stats")?;

        // Two rounds of reads: the same documents, nothing collected.
        let read = || -> Result<(Value, Value, Value, String)> {
            Ok((
                document(&socket, "/v1/conns")?,
                document(&socket, "/v1/status")?,
                document(&socket, "/v1/stats")?,
                metrics(&sc.net.server_ns, metrics_addr)?,
            ))
        };
        let first = read()?;
        let second = read()?;
        ensure!(
            agent_started.elapsed() < SWEEP - Duration::from_secs(3),
            "the reads took until {:?} after the start: a sweep may have run",
            agent_started.elapsed()
        );
        ensure!(
            first.0 == second.0,
            "GET /v1/conns changed:\n{}\n{}",
            first.0,
            second.0
        );
        ensure!(
            first.1 == second.1,
            "GET /v1/status changed:\n{}\n{}",
            first.1,
            second.1
        );
        ensure!(
            first.2 == second.2,
            "GET /v1/stats changed:\n{}\n{}",
            first.2,
            second.2
        );
        let changed: Vec<(&str, &str)> = first
            .3
            .lines()
            .zip(second.3.lines())
            .filter(|(a, b)| a != b)
            .collect();
        ensure!(
            first.3.lines().count() == second.3.lines().count() && changed.is_empty(),
            "GET /metrics changed: {changed:?}"
        );
        ensure!(
            first.2 == stats_before,
            "reads changed /v1/stats:\n{stats_before}\n{}",
            first.2
        );
        ensure!(
            flows.get(&closed_key, 0).is_ok(),
            "the reads removed the closed flow from FLOWS"
        );
        let closed: Vec<&Value> = first
            .0
            .as_array()
            .context("/v1/conns is not an array")?
            .iter()
            .filter(|v| v["state"] == "closed")
            .collect();
        ensure!(
            closed.len() == 1,
            "the closed flow shows once, closed, before it is collected: {}",
            first.0
        );
        let closes_before = stats_before["closes_seen"]
            .as_u64()
            .with_context(|| format!("no closes_seen in {stats_before}"))?;

        // The timer's sweep collects it.
        let deadline = agent_started + SWEEP + Duration::from_secs(15);
        loop {
            if flows.get(&closed_key, 0).is_err() {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "the sweep timer did not collect the closed flow within {:?}",
                SWEEP + Duration::from_secs(15)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let collected_after = agent_started.elapsed();
        eprintln!("collected {collected_after:?} after the agent started");
        ensure!(
            collected_after >= SWEEP - Duration::from_secs(1),
            "collected {collected_after:?} after the start: before the timer's sweep"
        );
        let stats = document(&socket, "/v1/stats")?;
        ensure!(
            stats["closes_seen"].as_u64() == Some(closes_before + 1),
            "closes_seen after the sweep: {stats}"
        );
        let conns = document(&socket, "/v1/conns")?;
        ensure!(
            conns == first.0,
            "/v1/conns changed when the flow was collected:\n{}\n{conns}",
            first.0
        );
        Ok(())
    });
}
