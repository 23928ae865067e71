//! Builds the control API's [`ConnRecord`] from a `FLOWS` entry, and the
//! address formatting and clock it needs.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

pub use crate::api::conns::{ConnRecord, ConnState, FailureReason, ProcessFields, RecordCounts};
use monitor_common::flow::{addr_bytes, FlowKey, FlowValue};
use monitor_common::tracker::{
    alert_description, alert_level, FlowState, CLIENT, FF_CLOSED, FF_HRR_SEEN, FF_RESUMED,
    FF_UNSYNCED, SERVER,
};

/// The wire half of [`ConnRecord::failure_reasons`]: each direction's first
/// cleartext alert and, when it differs, its last.
pub fn alert_reasons(t: &FlowState) -> Vec<FailureReason> {
    let mut out = Vec::new();
    for (dir, sender) in [(CLIENT, "client"), (SERVER, "server")] {
        let first = t.alert_first[dir];
        let last = t.alert_last[dir];
        if first != 0 {
            out.push(alert_reason(sender, first));
        }
        if last != 0 && last != first {
            out.push(alert_reason(sender, last));
        }
    }
    out
}

/// One alert (`level << 8 | description`) sent by `sender`.
fn alert_reason(sender: &str, v: u16) -> FailureReason {
    FailureReason::Alert {
        sender: sender.to_owned(),
        level: alert_level_name(alert_level(v)),
        description: alert_description_name(alert_description(v)),
    }
}

/// `"warning"`, `"fatal"`, else `"level_N"`.
pub fn alert_level_name(level: u8) -> String {
    match level {
        1 => "warning".to_owned(),
        2 => "fatal".to_owned(),
        n => format!("level_{n}"),
    }
}

/// The TLS alert description's name (RFC 5246, RFC 8446 and their
/// registry), else `"alert_N"`.
pub fn alert_description_name(desc: u8) -> String {
    let name = match desc {
        0 => "close_notify",
        10 => "unexpected_message",
        20 => "bad_record_mac",
        21 => "decryption_failed",
        22 => "record_overflow",
        30 => "decompression_failure",
        40 => "handshake_failure",
        41 => "no_certificate",
        42 => "bad_certificate",
        43 => "unsupported_certificate",
        44 => "certificate_revoked",
        45 => "certificate_expired",
        46 => "certificate_unknown",
        47 => "illegal_parameter",
        48 => "unknown_ca",
        49 => "access_denied",
        50 => "decode_error",
        51 => "decrypt_error",
        60 => "export_restriction",
        70 => "protocol_version",
        71 => "insufficient_security",
        80 => "internal_error",
        86 => "inappropriate_fallback",
        90 => "user_canceled",
        100 => "no_renegotiation",
        109 => "missing_extension",
        110 => "unsupported_extension",
        111 => "certificate_unobtainable",
        112 => "unrecognized_name",
        113 => "bad_certificate_status_response",
        114 => "bad_certificate_hash_value",
        115 => "unknown_psk_identity",
        116 => "certificate_required",
        120 => "no_application_protocol",
        n => return format!("alert_{n}"),
    };
    name.to_owned()
}

impl ConnRecord {
    /// Builds the record for one flow. `now_ns` is the current
    /// `CLOCK_MONOTONIC` time, the clock `bpf_ktime_get_ns` uses. A flow whose
    /// tracker carries `FF_CLOSED` is reported closed whatever `state` says.
    pub fn from_flow(key: &FlowKey, value: &FlowValue, state: ConnState, now_ns: u64) -> Self {
        let (client, server) = client_server_addrs(key, value);
        let t = &value.tracker;
        let c = &t.counters;
        let state = if t.flags & FF_CLOSED != 0 {
            ConnState::Closed
        } else {
            state
        };
        ConnRecord {
            client,
            server,
            tls_version: tls_version(t.version).map(str::to_owned),
            client_hellos: c.client_hellos,
            handshakes: c.handshakes,
            resumed: t.flags & FF_RESUMED != 0,
            renegotiations_client: c.renegotiations_client,
            renegotiations_server: c.renegotiations_server,
            renegotiations_refused: c.renegotiations_refused,
            alerts: c.alerts,
            keyupdate_like: c.keyupdate_like,
            unsynced: t.flags & FF_UNSYNCED != 0,
            state,
            records: RecordCounts {
                change_cipher_spec: c.records[0],
                alert: c.records[1],
                handshake: c.records[2],
                application_data: c.records[3],
                heartbeat: c.records[4],
            },
            retransmits: c.retransmits,
            gaps: c.gaps,
            bad_records: c.bad_records,
            overflows: c.overflows,
            malformed: c.malformed,
            hello_retry: t.flags & FF_HRR_SEEN != 0,
            keyupdate_streaked: c.keyupdate_streaked,
            first_seen_ms_ago: ms_ago(now_ns, value.first_seen_ns),
            last_seen_ms_ago: ms_ago(now_ns, value.last_seen_ns),
            failure_reasons: alert_reasons(t),
            socket_cookie: (key.sock_cookie != 0).then_some(key.sock_cookie),
            netns_cookie: (key.sock_cookie != 0).then_some(key.netns_cookie),
            process: ProcessFields::default(),
        }
    }
}

/// One flow's state as a ring-buffer event showed it: what ingest hands on
/// to the policy.
#[derive(Clone, Copy, Debug)]
pub struct FlowUpdate {
    /// The flow.
    pub key: FlowKey,
    /// Its state in the event.
    pub value: FlowValue,
    /// It left the live set (`EVENT_FLOW_CLOSED`).
    pub departed: bool,
}

/// A flow's client and server socket addresses
/// ([`monitor_common::orient::client_server`]).
pub fn client_server_addrs(key: &FlowKey, value: &FlowValue) -> (SocketAddr, SocketAddr) {
    let (c, s) = monitor_common::orient::client_server(key, value);
    (
        socket_addr(&addr_bytes(&c.addr), c.port),
        socket_addr(&addr_bytes(&s.addr), s.port),
    )
}

/// The socket address of a `FlowKey` endpoint: IPv6 bytes in network order,
/// IPv4-mapped addresses turned back into IPv4.
pub fn socket_addr(addr: &[u8; 16], port: u16) -> SocketAddr {
    let v6 = Ipv6Addr::from(*addr);
    let ip = match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    };
    SocketAddr::new(ip, port)
}

/// `"1.0"`..`"1.3"` for wire versions 0x0301..0x0304; `None` otherwise.
pub fn tls_version(wire: u16) -> Option<&'static str> {
    match wire {
        0x0301 => Some("1.0"),
        0x0302 => Some("1.1"),
        0x0303 => Some("1.2"),
        0x0304 => Some("1.3"),
        _ => None,
    }
}

/// Whole milliseconds from `then_ns` to `now_ns`; 0 when `then_ns` is unset
/// or in the future.
fn ms_ago(now_ns: u64, then_ns: u64) -> u64 {
    if then_ns == 0 {
        return 0;
    }
    now_ns.saturating_sub(then_ns) / 1_000_000
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::agent::kernel::uprobes::ssl_error_reasons;
    use monitor_common::flow::ipv4_mapped;
    use monitor_common::tracker::FlowState;

    /// A flow 10.0.0.1:40000 (client) → 10.0.0.2:443 with some counters.
    pub(crate) fn sample_flow() -> (FlowKey, FlowValue) {
        let client = ipv4_mapped([10, 0, 0, 1]);
        let server = ipv4_mapped([10, 0, 0, 2]);
        let (key, client_is_a) = FlowKey::from_endpoints(&client, 40000, &server, 443);
        let mut tracker = FlowState::new();
        tracker.version = 0x0303;
        tracker.flags = FF_RESUMED | FF_UNSYNCED;
        tracker.counters.client_hellos = 3;
        tracker.counters.handshakes = 2;
        tracker.counters.renegotiations_client = 2;
        tracker.counters.renegotiations_server = 0;
        tracker.counters.renegotiations_refused = 1;
        tracker.counters.alerts = 1;
        tracker.counters.keyupdate_like = 0;
        tracker.counters.records = [2, 1, 9, 4, 0];
        tracker.counters.retransmits = 5;
        tracker.counters.gaps = 1;
        let value = FlowValue {
            tracker,
            first_seen_ns: 1_000_000_000,
            last_seen_ns: 3_000_000_000,
            client_is_a: client_is_a as u8,
            _pad: [0; 7],
        };
        (key, value)
    }

    #[test]
    fn ipv4_mapped_prints_as_ipv4() {
        let a = socket_addr(&addr_bytes(&ipv4_mapped([127, 0, 0, 1])), 14433);
        assert_eq!(a.to_string(), "127.0.0.1:14433");
    }

    #[test]
    fn ipv6_prints_bracketed() {
        let a = socket_addr(&Ipv6Addr::LOCALHOST.octets(), 443);
        assert_eq!(a.to_string(), "[::1]:443");
        let b: Ipv6Addr = "2001:db8::17".parse().expect("literal");
        assert_eq!(
            socket_addr(&b.octets(), 8443).to_string(),
            "[2001:db8::17]:8443"
        );
        // IPv4-compatible (not mapped) stays IPv6.
        let c: Ipv6Addr = "::7f00:1".parse().expect("literal");
        assert_eq!(socket_addr(&c.octets(), 1).to_string(), "[::7f00:1]:1");
    }

    #[test]
    fn versions() {
        assert_eq!(tls_version(0x0301), Some("1.0"));
        assert_eq!(tls_version(0x0302), Some("1.1"));
        assert_eq!(tls_version(0x0303), Some("1.2"));
        assert_eq!(tls_version(0x0304), Some("1.3"));
        assert_eq!(tls_version(0), None);
        assert_eq!(tls_version(0x0300), None);
        assert_eq!(tls_version(0x7f1c), None);
    }

    #[test]
    fn record_from_flow() {
        let (key, value) = sample_flow();
        let r = ConnRecord::from_flow(&key, &value, ConnState::Open, 4_500_000_000);
        assert_eq!(r.client.to_string(), "10.0.0.1:40000");
        assert_eq!(r.server.to_string(), "10.0.0.2:443");
        assert_eq!(r.tls_version.as_deref(), Some("1.2"));
        assert_eq!(r.client_hellos, 3);
        assert_eq!(r.handshakes, 2);
        assert!(r.resumed);
        assert_eq!(r.renegotiations_client, 2);
        assert_eq!(r.renegotiations_server, 0);
        assert_eq!(r.renegotiations_refused, 1);
        assert_eq!(r.alerts, 1);
        assert_eq!(r.keyupdate_like, 0);
        assert!(r.unsynced);
        assert_eq!(r.state, ConnState::Open);
        assert_eq!(r.records.handshake, 9);
        assert_eq!(r.records.application_data, 4);
        assert_eq!(r.retransmits, 5);
        assert_eq!(r.gaps, 1);
        assert!(!r.hello_retry);
        assert_eq!(r.keyupdate_streaked, 0);
        assert_eq!(r.first_seen_ms_ago, 3500);
        assert_eq!(r.last_seen_ms_ago, 1500);
        let mut ku = value;
        ku.tracker.counters.keyupdate_streaked = 7;
        let r = ConnRecord::from_flow(&key, &ku, ConnState::Open, 4_500_000_000);
        assert_eq!(r.keyupdate_streaked, 7);
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!(json["keyupdate_streaked"], 7, "{json}");
    }

    #[test]
    fn client_is_b() {
        // The client sorts after the server: key endpoint a is the server.
        let client = ipv4_mapped([192, 168, 1, 9]);
        let server = ipv4_mapped([10, 0, 0, 2]);
        let (key, client_is_a) = FlowKey::from_endpoints(&client, 50000, &server, 443);
        assert!(!client_is_a);
        let value = FlowValue {
            client_is_a: 0,
            ..FlowValue::default()
        };
        let r = ConnRecord::from_flow(&key, &value, ConnState::Open, 0);
        assert_eq!(r.client.to_string(), "192.168.1.9:50000");
        assert_eq!(r.server.to_string(), "10.0.0.2:443");
        assert_eq!(r.tls_version, None);
        assert_eq!(r.first_seen_ms_ago, 0);
    }

    #[test]
    fn closed_flag_wins() {
        let (key, mut value) = sample_flow();
        value.tracker.flags |= FF_CLOSED;
        let r = ConnRecord::from_flow(&key, &value, ConnState::Open, 0);
        assert_eq!(r.state, ConnState::Closed);
    }

    #[test]
    fn json_shape() {
        let (key, value) = sample_flow();
        let r = ConnRecord::from_flow(&key, &value, ConnState::Closed, 3_000_000_000);
        let v = serde_json::to_value(&r).expect("serializes");
        assert_eq!(v["client"], "10.0.0.1:40000");
        assert_eq!(v["server"], "10.0.0.2:443");
        assert_eq!(v["tls_version"], "1.2");
        assert_eq!(v["state"], "closed");
        assert_eq!(v["resumed"], true);
        assert_eq!(v["records"]["handshake"], 9);
        for k in [
            "client_hellos",
            "handshakes",
            "renegotiations_client",
            "renegotiations_server",
            "renegotiations_refused",
            "alerts",
            "keyupdate_like",
            "unsynced",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        let back: ConnRecord = serde_json::from_value(v).expect("round trip");
        assert_eq!(back, r);
        // An unknown version is null.
        let none = ConnRecord::from_flow(&key, &FlowValue::default(), ConnState::Open, 0);
        assert_eq!(
            serde_json::to_value(&none).expect("ser")["tls_version"],
            serde_json::Value::Null
        );
    }

    #[test]
    fn extras_may_be_missing() {
        let json = r#"{"client":"[::1]:5","server":"[::1]:443","tls_version":null,
            "client_hellos":1,"handshakes":0,"resumed":false,"renegotiations_client":0,
            "renegotiations_server":0,"renegotiations_refused":0,"alerts":0,
            "keyupdate_like":0,"unsynced":false,"state":"open"}"#;
        let r: ConnRecord = serde_json::from_str(json).expect("parses");
        assert_eq!(r.client.to_string(), "[::1]:5");
        assert_eq!(r.retransmits, 0);
    }

    #[test]
    fn wire_alerts_become_failure_reasons() {
        let (key, mut value) = sample_flow();
        value.tracker.alert_first = [0, 0x0246];
        value.tracker.alert_last = [0, 0x0246];
        let r = ConnRecord::from_flow(&key, &value, ConnState::Closed, 0);
        assert_eq!(
            r.failure_reasons,
            vec![FailureReason::Alert {
                sender: "server".into(),
                level: "fatal".into(),
                description: "protocol_version".into()
            }]
        );
        let v = serde_json::to_value(&r).expect("ser");
        assert_eq!(
            v["failure_reasons"][0],
            serde_json::json!({"source": "alert", "sender": "server", "level": "fatal",
                "description": "protocol_version"})
        );
        // First and last differ: both, client first.
        value.tracker.alert_first = [0x015a, 0x0230];
        value.tracker.alert_last = [0x015a, 0x0100];
        let r = ConnRecord::from_flow(&key, &value, ConnState::Closed, 0);
        let short: Vec<String> = r.failure_reasons.iter().map(FailureReason::short).collect();
        assert_eq!(
            short,
            [
                "client:user_canceled",
                "server:unknown_ca",
                "server:close_notify"
            ]
        );
        assert_eq!(alert_description_name(250), "alert_250");
        assert_eq!(alert_level_name(9), "level_9");
    }

    #[test]
    fn ssl_errors_by_name_without_retries() {
        // SSL (1), WANT_READ (2), SYSCALL (5), WANT_CLIENT_HELLO_CB (11), 20.
        let mask = (1 << 1) | (1 << 2) | (1 << 5) | (1 << 11) | (1 << 20);
        let names: Vec<String> = ssl_error_reasons(mask)
            .iter()
            .map(FailureReason::short)
            .collect();
        assert_eq!(
            names,
            ["SSL_ERROR_SSL", "SSL_ERROR_SYSCALL", "SSL_ERROR_20"]
        );
        assert!(ssl_error_reasons(1 << 2 | 1 << 3 | 1).is_empty());
        let v = serde_json::to_value(ssl_error_reasons(1 << 6)).expect("ser");
        assert_eq!(
            v,
            serde_json::json!([{"source": "ssl_get_error", "error": "SSL_ERROR_ZERO_RETURN"}])
        );
    }
}
