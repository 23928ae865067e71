//! `hsmon status`: what the agent is doing, from `GET /v1/status`: version,
//! uptime, the hooks it attached, how full its maps are, ring-buffer events
//! read and lost, active bans and where the metrics are served. A table for
//! people, or (`--json`) the [`Status`] document whose schema the README's
//! "status JSON schema" section describes.

use super::output::fetch_and_print;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Result;

use crate::api::status::*;
use crate::api::STATUS_PATH;
use crate::config::SocketArg;

/// Arguments of `hsmon status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the status JSON object exactly as the agent serves it.
    #[arg(long)]
    pub json: bool,
    /// The agent's control socket.
    #[command(flatten)]
    pub socket: SocketArg,
}

/// Fetches the status and prints it.
pub fn run(args: Args) -> Result<()> {
    fetch_and_print(
        &args.socket.socket,
        STATUS_PATH,
        args.json,
        "a status object",
        render,
    )
}

/// `entries/capacity (P%)`.
fn fill(f: Fill) -> String {
    let pct = if f.capacity == 0 {
        0.0
    } else {
        f.entries as f64 * 100.0 / f.capacity as f64
    };
    format!("{}/{} ({pct:.1}%)", f.entries, f.capacity)
}

/// A rule's limit for people: `handshake_timeout`'s is a duration (ms in
/// the JSON) and is shown with its unit (`10s`); the others are counts in
/// the window their name says (`renegotiations_per_minute 10`).
fn rule_limit(rule: &str, limit: u64) -> String {
    if rule == "handshake_timeout" {
        humantime::format_duration(Duration::from_millis(limit)).to_string()
    } else {
        limit.to_string()
    }
}

/// The status for people: `key: value` lines, then the hooks as a table.
pub fn render(s: &Status) -> String {
    let uptime = humantime::format_duration(Duration::from_secs(s.uptime_ms / 1000));
    let mut out = String::new();
    let mut line = |k: &str, v: &str| {
        let _ = writeln!(out, "{k:<14}{v}");
    };
    line("version:", &s.version);
    line("pid:", &s.pid.to_string());
    line("uptime:", &uptime.to_string());
    line("socket:", &s.socket);
    line("metrics:", s.metrics_addr.as_deref().unwrap_or("off"));
    line("flows:", &fill(s.maps.flows));
    line(
        "map memory:",
        &format!("{:.1} MiB", s.maps.memory_bytes as f64 / (1024.0 * 1024.0)),
    );
    line("bans (IPv4):", &fill(s.maps.bans_v4));
    line("bans (IPv6):", &fill(s.maps.bans_v6));
    line("bans active:", &s.bans_active.to_string());
    line(
        "pin dir:",
        &format!(
            "{} ({}{})",
            s.persistence.pin_dir,
            if s.persistence.restored {
                "restored"
            } else {
                "fresh"
            },
            if s.persistence.persist_on_stop {
                ", kept on stop"
            } else {
                ", removed on stop"
            }
        ),
    );
    line("dry-run:", if s.policy.dry_run { "on" } else { "off" });
    line("policy:", &s.policy.source);
    for r in &s.policy.rules {
        line(
            "",
            &format!(
                "{} {} -> {}",
                r.rule,
                rule_limit(&r.rule, r.limit),
                r.action
            ),
        );
    }
    line(
        "events:",
        &format!(
            "{} read, {} lost, {} bad",
            s.events.read, s.events.lost, s.events.bad
        ),
    );
    let tps: Vec<String> = s
        .tracepoints
        .iter()
        .map(|t| format!("{} ({})", t.tracepoint, t.program))
        .collect();
    line(
        "tracepoints:",
        if tps.is_empty() {
            "none"
        } else {
            tps.first().map(String::as_str).unwrap_or("none")
        },
    );
    for more in tps.iter().skip(1) {
        line("", more);
    }
    line(
        "uprobe set:",
        if s.uprobe_set.is_empty() {
            "off"
        } else {
            &s.uprobe_set
        },
    );
    let libs: Vec<String> = s
        .libraries
        .iter()
        .map(|l| format!("{} ({} probes)", l.path, l.probes))
        .collect();
    line(
        "uprobes:",
        libs.first().map(String::as_str).unwrap_or("none"),
    );
    for more in libs.iter().skip(1) {
        line("", more);
    }
    if s.hooks.is_empty() {
        out.push_str("hooks:        none\n");
        return out;
    }
    out.push_str("hooks:\n");
    let rows: Vec<[String; 4]> = s
        .hooks
        .iter()
        .map(|h| {
            [
                h.iface.clone(),
                h.direction.clone(),
                h.mode.clone(),
                h.program.clone(),
            ]
        })
        .collect();
    out.push_str(&crate::cli::output::aligned_table(
        ["IFACE", "DIRECTION", "MODE", "PROGRAM"],
        &rows,
        [false; 4],
        "  ",
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Status {
        Status {
            version: "0.1.0".into(),
            pid: 42,
            uptime_ms: 3_723_000,
            socket: "/run/hsmon/hsmon.sock".into(),
            metrics_addr: Some("127.0.0.1:9477".into()),
            hooks: vec![
                Hook {
                    iface: "eth0".into(),
                    program: "hsmon_tc_ingress".into(),
                    direction: "ingress".into(),
                    mode: "tcx".into(),
                },
                Hook {
                    iface: "eth0".into(),
                    program: "hsmon_tc_egress".into(),
                    direction: "egress".into(),
                    mode: "clsact".into(),
                },
            ],
            tracepoints: vec![TracepointHook {
                program: "hsmon_sock_state".into(),
                tracepoint: "sock/inet_sock_set_state".into(),
            }],
            libraries: vec![Library {
                path: "/usr/lib/x86_64-linux-gnu/libssl.so.3".into(),
                probes: 9,
            }],
            uprobe_set: "handshake".into(),
            maps: MapFills {
                flows: Fill {
                    entries: 3,
                    capacity: 65536,
                },
                bans_v4: Fill {
                    entries: 1,
                    capacity: 65536,
                },
                bans_v6: Fill {
                    entries: 0,
                    capacity: 65536,
                },
                memory_bytes: 48_548_864,
            },
            events: EventCounts {
                read: 10,
                lost: 2,
                bad: 0,
            },
            bans_active: 1,
            policy: crate::api::policy::PolicySummary {
                source: "/etc/hsmon/hsmon.toml".into(),
                dry_run: false,
                rules: vec![crate::api::policy::RuleSummary {
                    rule: "handshake_timeout".into(),
                    limit: 10_000,
                    action: "reset".into(),
                }],
                prefix_v4_len: 24,
                prefix_v6_len: 64,
                ban_ttl_s: 600,
                ban_escalation: 4,
                max_ban_ttl_s: 86_400,
            },
            persistence: Persistence {
                pin_dir: "/sys/fs/bpf/hsmon".into(),
                state_file: "/run/hsmon/state.json".into(),
                persist_on_stop: true,
                restored: true,
                maps_reused: vec!["FLOWS".into()],
                links_taken_over: 3,
                bans_restored: 1,
                state_file_status: "restored".into(),
            },
        }
    }

    #[test]
    fn json_keys_are_the_documented_ones() {
        let v = serde_json::to_value(sample()).expect("serializes");
        let obj = v.as_object().expect("an object");
        let mut want = STATUS_KEYS.to_vec();
        want.sort_unstable();
        let mut got: Vec<&str> = obj.keys().map(String::as_str).collect();
        got.sort_unstable();
        assert_eq!(got, want);
        let hook = v["hooks"][0].as_object().expect("hook object");
        let mut hk: Vec<&str> = hook.keys().map(String::as_str).collect();
        hk.sort_unstable();
        assert_eq!(hk, ["direction", "iface", "mode", "program"]);
        for m in ["flows", "bans_v4", "bans_v6"] {
            assert!(v["maps"][m]["entries"].is_u64(), "{m}");
            assert!(v["maps"][m]["capacity"].is_u64(), "{m}");
        }
        for e in ["read", "lost", "bad"] {
            assert!(v["events"][e].is_u64(), "{e}");
        }
        assert_eq!(
            v["tracepoints"][0]["tracepoint"],
            "sock/inet_sock_set_state"
        );
        let back: Status = serde_json::from_value(v).expect("round trip");
        assert_eq!(back, sample());
    }

    /// The README's "status JSON schema" section: its table lists exactly
    /// [`STATUS_KEYS`], and its example parses as a [`Status`] with those keys.
    #[test]
    fn readme_documents_the_schema() {
        let readme = include_str!("../../../README.md");
        let start = readme
            .find("## status JSON schema")
            .expect("README has a status JSON schema section");
        let section = &readme[start..];
        let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
        let mut documented: Vec<&str> = section
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .collect();
        documented.sort_unstable();
        let mut want = STATUS_KEYS.to_vec();
        want.sort_unstable();
        assert_eq!(documented, want);
        let json = section
            .split("```json\n")
            .nth(1)
            .and_then(|s| s.split("```").next())
            .expect("an example");
        let example: serde_json::Value = serde_json::from_str(json).expect("example is JSON");
        let mut keys: Vec<&str> = example
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, want);
        let _: Status = serde_json::from_value(example).expect("example is a Status");
    }

    #[test]
    fn table() {
        let expected = "\
version:      0.1.0
pid:          42
uptime:       1h 2m 3s
socket:       /run/hsmon/hsmon.sock
metrics:      127.0.0.1:9477
flows:        3/65536 (0.0%)
map memory:   46.3 MiB
bans (IPv4):  1/65536 (0.0%)
bans (IPv6):  0/65536 (0.0%)
bans active:  1
pin dir:      /sys/fs/bpf/hsmon (restored, kept on stop)
dry-run:      off
policy:       /etc/hsmon/hsmon.toml
              handshake_timeout 10s -> reset
events:       10 read, 2 lost, 0 bad
tracepoints:  sock/inet_sock_set_state (hsmon_sock_state)
uprobe set:   handshake
uprobes:      /usr/lib/x86_64-linux-gnu/libssl.so.3 (9 probes)
hooks:
  IFACE  DIRECTION  MODE    PROGRAM
  eth0   ingress    tcx     hsmon_tc_ingress
  eth0   egress     clsact  hsmon_tc_egress
";
        assert_eq!(render(&sample()), expected);
    }

    #[test]
    fn durations_have_units() {
        assert_eq!(rule_limit("handshake_timeout", 10_000), "10s");
        assert_eq!(rule_limit("handshake_timeout", 1_500), "1s 500ms");
        assert_eq!(rule_limit("renegotiations_per_minute", 10_000), "10000");
        let mut s = sample();
        s.uptime_ms = 59_000;
        let t = render(&s);
        assert!(t.contains("uptime:       59s\n"), "{t}");
        assert!(t.contains(" handshake_timeout 10s -> reset\n"), "{t}");
    }

    #[test]
    fn table_without_hooks_or_metrics() {
        let mut s = sample();
        s.hooks.clear();
        s.tracepoints.clear();
        s.libraries.clear();
        s.metrics_addr = None;
        s.maps.flows = Fill {
            entries: 1,
            capacity: 4,
        };
        let t = render(&s);
        assert!(t.contains("metrics:      off\n"), "{t}");
        assert!(t.contains("flows:        1/4 (25.0%)\n"), "{t}");
        assert!(t.contains("tracepoints:  none\n"), "{t}");
        assert!(t.contains("uprobes:      none\n"), "{t}");
        assert!(t.ends_with("hooks:        none\n"), "{t}");
    }
}
