//! The aligned text table `hsmon conns` prints for people.

use crate::api::conns::ConnRecord;

/// Column titles, in order.
const HEADERS: [&str; 12] = [
    "CLIENT",
    "SERVER",
    "VER",
    "HELLOS",
    "HS",
    "RENEG(C/S/REFUSED)",
    "ALERTS",
    "KU",
    "STATE",
    "PROCESS",
    "HS_MS",
    "FAILURE",
];

/// Columns whose values are right-aligned (counts).
const NUMERIC: [bool; 12] = [
    false, false, false, true, true, true, true, true, false, false, true, false,
];

/// One table row for a connection; `-` where a value is unknown.
fn row(c: &ConnRecord) -> [String; 12] {
    let state = if c.unsynced {
        format!("{} (unsynced)", c.state.as_str())
    } else {
        c.state.as_str().to_owned()
    };
    [
        c.client.to_string(),
        c.server.to_string(),
        c.tls_version.clone().unwrap_or_else(|| "-".to_owned()),
        c.client_hellos.to_string(),
        c.handshakes.to_string(),
        format!(
            "{}/{}/{}",
            c.renegotiations_client, c.renegotiations_server, c.renegotiations_refused
        ),
        c.alerts.to_string(),
        c.keyupdate_like.to_string(),
        state,
        process(c),
        c.process
            .handshake_ms_max
            .map(|ms| format!("{ms:.1}"))
            .unwrap_or_else(|| "-".to_owned()),
        failure(c),
    ]
}

/// The failure reasons, comma-separated (`server:protocol_version,SSL_ERROR_SSL`);
/// `-` when there are none.
fn failure(c: &ConnRecord) -> String {
    if c.failure_reasons.is_empty() {
        return "-".to_owned();
    }
    c.failure_reasons
        .iter()
        .map(crate::api::conns::FailureReason::short)
        .collect::<Vec<_>>()
        .join(",")
}

/// `comm/pid` of the process behind the connection, `-` when unknown.
fn process(c: &ConnRecord) -> String {
    match (&c.process.comm, c.process.pid) {
        (Some(comm), Some(pid)) => format!("{comm}/{pid}"),
        (None, Some(pid)) => pid.to_string(),
        _ => "-".to_owned(),
    }
}

/// The whole table, header first, columns separated by two spaces, each line
/// ending in a newline. An empty list says so instead.
pub fn render(conns: &[ConnRecord]) -> String {
    if conns.is_empty() {
        return "no TLS connections tracked\n".to_owned();
    }
    let rows: Vec<[String; 12]> = conns.iter().map(row).collect();
    crate::cli::output::aligned_table(HEADERS, &rows, NUMERIC, "")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::conns::{ConnState, RecordCounts};

    fn conn(client: &str, server: &str, version: Option<&str>) -> ConnRecord {
        ConnRecord {
            client: client.parse().expect("addr"),
            server: server.parse().expect("addr"),
            tls_version: version.map(str::to_owned),
            client_hellos: 1,
            handshakes: 1,
            resumed: false,
            renegotiations_client: 0,
            renegotiations_server: 0,
            renegotiations_refused: 0,
            alerts: 1,
            keyupdate_like: 0,
            unsynced: false,
            state: ConnState::Open,
            records: RecordCounts::default(),
            retransmits: 0,
            gaps: 0,
            bad_records: 0,
            overflows: 0,
            malformed: 0,
            hello_retry: false,
            keyupdate_streaked: 0,
            first_seen_ms_ago: 0,
            last_seen_ms_ago: 0,
            failure_reasons: Vec::new(),
            socket_cookie: None,
            netns_cookie: None,
            process: Default::default(),
        }
    }

    #[test]
    fn aligned_table() {
        let mut b = conn("[2001:db8::1]:51234", "[2001:db8::2]:443", None);
        b.client_hellos = 120;
        b.renegotiations_client = 119;
        b.renegotiations_refused = 119;
        b.state = ConnState::Closed;
        b.unsynced = true;
        b.process.pid = Some(4242);
        b.process.comm = Some("nginx".to_owned());
        b.process.handshake_ms_max = Some(52.5);
        b.failure_reasons = vec![
            crate::api::conns::FailureReason::Alert {
                sender: "server".to_owned(),
                level: "fatal".to_owned(),
                description: "protocol_version".to_owned(),
            },
            crate::api::conns::FailureReason::SslGetError {
                error: "SSL_ERROR_SSL".to_owned(),
            },
        ];
        let t = render(&[conn("127.0.0.1:40000", "127.0.0.1:14433", Some("1.3")), b]);
        let expected = "\
CLIENT               SERVER             VER  HELLOS  HS  RENEG(C/S/REFUSED)  ALERTS  KU  STATE              PROCESS     HS_MS  FAILURE
127.0.0.1:40000      127.0.0.1:14433    1.3       1   1               0/0/0       1   0  open               -               -  -
[2001:db8::1]:51234  [2001:db8::2]:443  -       120   1           119/0/119       1   0  closed (unsynced)  nginx/4242   52.5  server:protocol_version,SSL_ERROR_SSL
";
        assert_eq!(t, expected);
    }

    #[test]
    fn empty() {
        assert_eq!(render(&[]), "no TLS connections tracked\n");
    }
}
