//! Prometheus metrics: `GET /metrics` on `--metrics-addr` (default
//! [`DEFAULT_METRICS_ADDR`]), encoded with the `prometheus-client` crate.
//!
//! Every scrape builds the exposition from a fresh [`Snapshot`]: the kernel's
//! `STATS` counters, the flow table's cumulative per-flow totals
//! ([`FlowTable::metrics`](crate::agent::ingest::flows::FlowTable::metrics)) and the agent's
//! own counts. The per-flow totals are monotonic and never count a flow twice:
//! a total is the sum of the final counts of every flow that has left the
//! live set (closed or evicted), accumulated once when it leaves
//! ([`Departed`]), plus the sum over the flows live now.
//!
//! Label cardinality is bounded: the only per-peer family is
//! `hsmon_peer_renegotiations{peer}`, the [`TOP_PEERS`] clients with the most
//! client-initiated renegotiations over live and recently closed flows.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use monitor_common::flow::Stat;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::agent::publish::routes;
use crate::agent::publish::view::View;
use crate::locks::lock;

pub use crate::config::flags::{MetricsAddr, DEFAULT_METRICS_ADDR};
/// The HTTP path of the exposition.
pub const METRICS_PATH: &str = "/metrics";
/// The content type of the OpenMetrics text format `prometheus-client` writes
/// (Prometheus asks for it first).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub use crate::agent::ingest::flow_stats::{FlowCounts, FlowMetrics, TOP_PEERS};

/// Everything one scrape shows.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// From the flow table.
    pub flows: FlowMetrics,
    /// The kernel's `STATS` counters summed over CPUs, by name.
    pub kernel: BTreeMap<String, u64>,
    /// Ring-buffer events read.
    pub events_read: u64,
    /// Ring-buffer events too short or of an unknown kind.
    pub events_bad: u64,
    /// Capacity of the kernel's flow map.
    pub flow_map_capacity: u32,
    /// Bans that entered the ban maps, by origin (`manual`, `policy`).
    pub bans_issued: BTreeMap<String, u64>,
    /// Bans in force now.
    pub bans_active: usize,
}

/// The drop reasons of the kernel's `STATS` slots, from [`Stat::ALL`]:
/// every `ban_drops_ORIGIN` slot is reason `ban_ORIGIN`, every other
/// `NAME_drops` slot is reason `NAME`; `ban_drops` (all bans) is not a
/// reason of its own, but what it counts beyond its origins is
/// `ban_other`. Returns (reason, slot names summed).
pub fn drop_reasons() -> Vec<(String, Vec<&'static str>)> {
    let mut out = Vec::new();
    for stat in Stat::ALL {
        let name = stat.name();
        if let Some(origin) = name.strip_prefix("ban_drops_") {
            out.push((format!("ban_{origin}"), vec![name]));
        } else if name != "ban_drops" {
            if let Some(reason) = name.strip_suffix("_drops") {
                out.push((reason.to_owned(), vec![name]));
            }
        }
    }
    out
}

/// `hsmon_drops_total{reason}`'s values from the kernel counters by name.
pub fn drops_by_reason(kernel: &BTreeMap<String, u64>) -> Vec<(String, u64)> {
    let get = |n: &str| kernel.get(n).copied().unwrap_or(0);
    let mut out: Vec<(String, u64)> = drop_reasons()
        .into_iter()
        .map(|(reason, slots)| (reason, slots.iter().map(|s| get(s)).sum()))
        .collect();
    if Stat::ALL.iter().any(|s| s.name() == "ban_drops") {
        let by_origin: u64 = out
            .iter()
            .filter(|(r, _)| r.starts_with("ban_"))
            .map(|(_, n)| *n)
            .sum();
        out.push((
            "ban_other".to_owned(),
            get("ban_drops").saturating_sub(by_origin),
        ));
    }
    out
}

/// The run counters behind `hsmon_program_runs_total{program}`: (counter
/// name in `STATS` or the uprobes' `SSL_STATS`, the `program` label).
/// Uprobe programs are counted together (entries, returns).
pub const PROGRAM_RUNS: [(&str, &str); 5] = [
    ("tc_ingress_runs", "hsmon_tc_ingress"),
    ("tc_egress_runs", "hsmon_tc_egress"),
    ("sock_state_runs", "hsmon_sock_state"),
    ("ssl_probe_entries", "libssl_uprobes"),
    ("ssl_probe_returns", "libssl_uretprobes"),
];

/// `hsmon_program_runs_total{program}`'s values from the counters by name
/// (the uprobe rows only when the uprobes are attached).
pub fn program_runs(kernel: &BTreeMap<String, u64>) -> Vec<(&'static str, u64)> {
    PROGRAM_RUNS
        .iter()
        .filter_map(|(slot, program)| kernel.get(*slot).map(|n| (*program, *n)))
        .collect()
}

/// HELP text of a kernel `STATS` counter, by name.
fn kernel_help(name: &str) -> String {
    match Stat::ALL.iter().find(|s| s.name() == name) {
        Some(stat) => format!("{} (kernel STATS counter)", stat.help()),
        None => format!("The kernel's STATS counter {name}"),
    }
}

/// A counter family with one label.
fn labelled(pairs: &[(&str, &str, u64)]) -> Family<Vec<(String, String)>, Counter> {
    let family = Family::<Vec<(String, String)>, Counter>::default();
    for (label, value, n) in pairs {
        family
            .get_or_create(&vec![((*label).to_owned(), (*value).to_owned())])
            .inc_by(*n);
    }
    family
}

/// A counter with one value.
fn counter(n: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(n);
    c
}

/// A gauge with one value.
fn gauge(n: usize) -> Gauge {
    let g = Gauge::default();
    g.set(i64::try_from(n).unwrap_or(i64::MAX));
    g
}

impl Snapshot {
    /// The registry of this snapshot, every name prefixed `hsmon_`.
    /// (Counters get their `_total` suffix from the encoder.)
    pub fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("hsmon");
        let c = &self.flows.counts;
        r.register(
            "handshakes",
            "Completed TLS handshakes: first handshakes by kind full or resumed, and honoured renegotiations as kind renegotiation",
            labelled(&[
                ("kind", "full", c.handshakes_full),
                ("kind", "resumed", c.handshakes_resumed),
                ("kind", "renegotiation", c.handshakes_renegotiation),
            ]),
        );
        r.register(
            "client_hellos",
            "ClientHello messages, cleartext and encrypted (renegotiation)",
            counter(c.client_hellos),
        );
        r.register(
            "renegotiations",
            "TLS <= 1.2 renegotiations by initiator: encrypted ClientHellos from the client, HelloRequests from the server",
            labelled(&[
                ("initiator", "client", c.renegotiations_client),
                ("initiator", "server", c.renegotiations_server),
            ]),
        );
        r.register(
            "renegotiations_refused",
            "Renegotiations the peer refused (alert, close, or no answer)",
            counter(c.renegotiations_refused),
        );
        r.register(
            "alerts",
            "TLS alert records, both directions",
            counter(c.alerts),
        );
        r.register(
            "keyupdate_like",
            "TLS 1.3 post-handshake records of KeyUpdate size",
            counter(c.keyupdate_like),
        );
        r.register(
            "unsynced_flows",
            "Flows a direction of which lost sync (gap, non-TLS header, step budget) and was not parsed further",
            counter(c.unsynced),
        );
        r.register(
            "flows_tracked",
            "TLS flows live in the kernel's flow map",
            gauge(self.flows.live),
        );
        r.register(
            "flows_recently_closed",
            "Closed and evicted flows the agent keeps for hsmon conns",
            gauge(self.flows.recently_closed),
        );
        r.register(
            "flows_evicted",
            "Live flows the full kernel flow map dropped (LRU) before they closed",
            counter(self.flows.evicted),
        );
        r.register(
            "flow_map_capacity",
            "Capacity of the kernel's flow map (--flow-map-size)",
            gauge(self.flow_map_capacity as usize),
        );
        let ratio = Gauge::<f64, AtomicU64>::default();
        ratio.set(if self.flow_map_capacity == 0 {
            0.0
        } else {
            self.flows.live as f64 / f64::from(self.flow_map_capacity)
        });
        r.register(
            "flow_map_fill_ratio",
            "Live flows divided by the flow map's capacity (0 to 1)",
            ratio,
        );
        r.register(
            "events_lost",
            "Ring-buffer events the kernel dropped because the buffer was full (counts are not lost: the sweep picks the flows up)",
            counter(self.kernel.get("events_lost").copied().unwrap_or(0)),
        );
        r.register(
            "events_read",
            "Ring-buffer events the agent read",
            counter(self.events_read),
        );
        r.register(
            "events_bad",
            "Ring-buffer events too short or of an unknown kind",
            counter(self.events_bad),
        );
        for (name, value) in &self.kernel {
            r.register(format!("kernel_{name}"), kernel_help(name), counter(*value));
        }
        let drops = drops_by_reason(&self.kernel);
        let drop_pairs: Vec<(&str, &str, u64)> = drops
            .iter()
            .map(|(reason, n)| ("reason", reason.as_str(), *n))
            .collect();
        r.register(
            "drops",
            "Packets the TC ingress program dropped, by reason: ban_ORIGIN (a ban's packets, by who added it), ban_other, reneg_cap (segments of a connection over the renegotiation cap), and every other NAME_drops kernel counter",
            labelled(&drop_pairs),
        );
        let runs: Vec<(&str, &str, u64)> = program_runs(&self.kernel)
            .into_iter()
            .map(|(program, n)| ("program", program, n))
            .collect();
        r.register(
            "program_runs",
            "Runs of each hsmon eBPF program, counted by the program itself (the libssl uprobes together: entries and returns)",
            labelled(&runs),
        );
        let issued = Family::<Vec<(String, String)>, Counter>::default();
        for origin in ["manual", "policy"] {
            let _ = issued.get_or_create(&vec![("added_by".to_owned(), origin.to_owned())]);
        }
        for (origin, n) in &self.bans_issued {
            issued
                .get_or_create(&vec![("added_by".to_owned(), origin.clone())])
                .inc_by(*n);
        }
        r.register(
            "bans_issued",
            "Bans that entered the kernel's ban maps (or had their TTL renewed), by origin: manual (hsmon bans add) or policy",
            issued,
        );
        r.register(
            "bans_active",
            "Bans in force in the kernel's ban maps",
            gauge(self.bans_active),
        );
        let peers = Family::<Vec<(String, String)>, Gauge>::default();
        for (ip, n) in &self.flows.top_peers {
            peers
                .get_or_create(&vec![("peer".to_owned(), ip.to_string())])
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
        r.register(
            "peer_renegotiations",
            format!(
                "Client-initiated renegotiations of the {TOP_PEERS} clients with the most, over live and recently closed flows"
            ),
            peers,
        );
        r
    }

    /// The OpenMetrics text exposition of this snapshot.
    pub fn encode(&self) -> Result<String> {
        let mut out = String::new();
        encode(&mut out, &self.registry()).context("encoding the metrics")?;
        Ok(out)
    }

    /// Reads everything a scrape shows (blocking: map syscalls).
    pub fn take(view: &View, flow_map_capacity: u32) -> Result<Self> {
        let mut kernel = lock(&view.stats).read()?;
        if let Some(u) = view.uprobes.get() {
            kernel.extend(u.stats_by_name()?);
        }
        let flows = lock(&view.table).metrics(TOP_PEERS)?;
        let bans_active = lock(&view.bans)
            .list(crate::agent::kernel::clock::monotonic_now_ns())
            .len();
        Ok(Snapshot {
            flows,
            kernel,
            events_read: view.reader.read(),
            events_bad: view.reader.bad(),
            flow_map_capacity,
            bans_issued: view.events.bans_issued(),
            bans_active,
        })
    }
}

/// Binds the metrics listener (`--metrics-addr`), naming the address and
/// the option in the error.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen for metrics on {addr} (--metrics-addr; pick another address, or \"off\")")
    })
}

/// Serves `GET /metrics` on `listener` until the task is cancelled.
pub async fn serve(listener: TcpListener, view: Arc<View>, flow_map_capacity: u32) -> Result<()> {
    let addr = listener
        .local_addr()
        .context("the metrics listener's address")?;
    tracing::info!(%addr, "serving Prometheus metrics on http://{addr}{METRICS_PATH}");
    axum::serve(listener, routes::metrics::router(view, flow_map_capacity))
        .await
        .with_context(|| format!("serving metrics on {addr}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::ingest::flow_stats::*;
    use crate::agent::ingest::record::tests::sample_flow;
    use monitor_common::tracker::FF_CLOSED;
    use monitor_common::tracker::{FF_FIRST_HS_DONE, FF_RESUMED, FF_UNSYNCED};
    use std::net::IpAddr;

    fn renegs(n: u64) -> FlowCounts {
        FlowCounts {
            renegotiations_client: n,
            handshakes_full: 1,
            handshakes_renegotiation: n,
            ..FlowCounts::default()
        }
    }

    #[test]
    fn metrics_addr_parses() {
        assert_eq!(
            "127.0.0.1:9477".parse::<MetricsAddr>(),
            Ok(MetricsAddr(Some("127.0.0.1:9477".parse().expect("addr"))))
        );
        assert_eq!(
            "[::1]:1".parse::<MetricsAddr>(),
            Ok(MetricsAddr(Some("[::1]:1".parse().expect("addr"))))
        );
        assert_eq!("off".parse::<MetricsAddr>(), Ok(MetricsAddr(None)));
        assert_eq!("OFF".parse::<MetricsAddr>(), Ok(MetricsAddr(None)));
        for bad in [
            "",
            "9477",
            "localhost:9477",
            "127.0.0.1",
            "1.2.3.4:70000",
            "::1:9",
        ] {
            assert!(bad.parse::<MetricsAddr>().is_err(), "{bad:?}");
        }
        assert!(DEFAULT_METRICS_ADDR.parse::<MetricsAddr>().is_ok());
    }

    #[test]
    fn counts_of_a_flow() {
        let (_, mut v) = sample_flow();
        v.tracker.flags = FF_FIRST_HS_DONE;
        v.tracker.counters.handshakes = 4;
        v.tracker.counters.renegotiations_client = 3;
        let c = FlowCounts::of(&v);
        assert_eq!(c.handshakes_full, 1);
        assert_eq!(c.handshakes_resumed, 0);
        assert_eq!(c.handshakes_renegotiation, 3);
        v.tracker.flags |= FF_RESUMED | FF_UNSYNCED;
        let c = FlowCounts::of(&v);
        assert_eq!(
            (c.handshakes_full, c.handshakes_resumed, c.unsynced),
            (0, 1, 1)
        );
        // No handshake completed yet: nothing counted as a handshake.
        v.tracker.flags = 0;
        v.tracker.counters.handshakes = 0;
        let c = FlowCounts::of(&v);
        assert_eq!(
            c.handshakes_full + c.handshakes_resumed + c.handshakes_renegotiation,
            0
        );
    }

    #[test]
    fn exposition_has_every_family_with_help() {
        let mut snap = Snapshot {
            flow_map_capacity: 1024,
            events_read: 7,
            ..Snapshot::default()
        };
        snap.flows.counts = renegs(3);
        snap.flows.live = 256;
        snap.flows.top_peers = vec![(IpAddr::from([10, 200, 0, 2]), 3)];
        snap.kernel.insert("segments".into(), 42);
        snap.kernel.insert("events_lost".into(), 1);
        snap.kernel.insert("stat_99".into(), 5);
        snap.kernel.insert("ban_drops".into(), 10);
        snap.kernel.insert("ban_drops_manual".into(), 4);
        snap.kernel.insert("reneg_cap_drops".into(), 2);
        snap.bans_issued.insert("policy".into(), 3);
        snap.bans_active = 1;
        let text = snap.encode().expect("encode");
        for line in [
            "hsmon_handshakes_total{kind=\"full\"} 1",
            "hsmon_handshakes_total{kind=\"resumed\"} 0",
            "hsmon_handshakes_total{kind=\"renegotiation\"} 3",
            "hsmon_renegotiations_total{initiator=\"client\"} 3",
            "hsmon_renegotiations_total{initiator=\"server\"} 0",
            "hsmon_client_hellos_total 0",
            "hsmon_renegotiations_refused_total 0",
            "hsmon_alerts_total 0",
            "hsmon_keyupdate_like_total 0",
            "hsmon_unsynced_flows_total 0",
            "hsmon_flows_tracked 256",
            "hsmon_flows_recently_closed 0",
            "hsmon_flows_evicted_total 0",
            "hsmon_flow_map_capacity 1024",
            "hsmon_flow_map_fill_ratio 0.25",
            "hsmon_events_lost_total 1",
            "hsmon_events_read_total 7",
            "hsmon_kernel_segments_total 42",
            "hsmon_kernel_events_lost_total 1",
            "hsmon_kernel_stat_99_total 5",
            "hsmon_drops_total{reason=\"ban_manual\"} 4",
            "hsmon_drops_total{reason=\"reneg_cap\"} 2",
            "hsmon_bans_issued_total{added_by=\"policy\"} 3",
            "hsmon_bans_issued_total{added_by=\"manual\"} 0",
            "hsmon_bans_active 1",
            "hsmon_peer_renegotiations{peer=\"10.200.0.2\"} 3",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        for family in [
            "handshakes",
            "client_hellos",
            "renegotiations",
            "renegotiations_refused",
            "alerts",
            "keyupdate_like",
            "unsynced_flows",
            "flows_tracked",
            "flows_recently_closed",
            "flows_evicted",
            "flow_map_capacity",
            "flow_map_fill_ratio",
            "events_lost",
            "kernel_segments",
            "peer_renegotiations",
            "drops",
            "bans_issued",
            "bans_active",
        ] {
            let help = format!("# HELP hsmon_{family} ");
            assert!(
                text.lines()
                    .any(|l| l.starts_with(&help) && l.len() > help.len() + 10),
                "no HELP for {family} in\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        // No per-peer label anywhere else.
        let with_peer: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("peer=") && !l.starts_with("hsmon_peer_renegotiations{"))
            .collect();
        assert!(with_peer.is_empty(), "{with_peer:?}");
    }

    #[test]
    fn program_runs_name_the_programs_and_skip_absent_counters() {
        // Every STATS slot the table names exists (a renamed slot must fail here).
        for (slot, _) in PROGRAM_RUNS.iter().take(3) {
            assert!(Stat::ALL.iter().any(|s| s.name() == *slot), "{slot}");
        }
        let kernel = BTreeMap::from([
            ("tc_ingress_runs".to_owned(), 7),
            ("tc_egress_runs".to_owned(), 5),
            ("sock_state_runs".to_owned(), 2),
            ("segments".to_owned(), 99),
        ]);
        assert_eq!(
            program_runs(&kernel),
            [
                ("hsmon_tc_ingress", 7),
                ("hsmon_tc_egress", 5),
                ("hsmon_sock_state", 2)
            ]
        );
        let mut with_uprobes = kernel.clone();
        with_uprobes.insert("ssl_probe_entries".to_owned(), 40);
        with_uprobes.insert("ssl_probe_returns".to_owned(), 9);
        let runs = program_runs(&with_uprobes);
        assert!(runs.contains(&("libssl_uprobes", 40)), "{runs:?}");
        assert!(runs.contains(&("libssl_uretprobes", 9)), "{runs:?}");
    }

    #[test]
    fn drop_reasons_come_from_the_stat_slots() {
        let reasons: Vec<String> = drop_reasons().into_iter().map(|(r, _)| r).collect();
        assert!(reasons.contains(&"ban_manual".to_owned()), "{reasons:?}");
        assert!(reasons.contains(&"reneg_cap".to_owned()), "{reasons:?}");
        assert!(!reasons.contains(&"ban".to_owned()), "{reasons:?}");
        // Every slot named *_drops* but the total is a reason.
        for stat in Stat::ALL {
            let n = stat.name();
            if n.contains("_drops") && n != "ban_drops" {
                let reason = n
                    .strip_prefix("ban_drops_")
                    .map(|o| format!("ban_{o}"))
                    .unwrap_or_else(|| n.trim_end_matches("_drops").to_owned());
                assert!(
                    reasons.contains(&reason),
                    "{n} has no reason in {reasons:?}"
                );
            }
        }
        let kernel = BTreeMap::from([
            ("ban_drops".to_owned(), 10),
            ("ban_drops_manual".to_owned(), 4),
        ]);
        let d = drops_by_reason(&kernel);
        let other = d.iter().find(|(r, _)| r == "ban_other").map(|(_, n)| *n);
        let by_origin: u64 = d
            .iter()
            .filter(|(r, _)| r.starts_with("ban_") && r != "ban_other")
            .map(|(_, n)| *n)
            .sum();
        assert_eq!(other, Some(10 - by_origin));
    }

    #[test]
    fn closed_flag_does_not_change_counts() {
        let (_, mut v) = sample_flow();
        let before = FlowCounts::of(&v);
        v.tracker.flags |= FF_CLOSED;
        assert_eq!(FlowCounts::of(&v), before);
    }
}
