//! A Python `ssl` TLS client (the system libssl) for the hardening tests,
//! run in the client namespace. Modes:
//!
//! - `burst N P`: N connections, P at a time; each handshakes, sends a line,
//!   reads it back (the echo server) and closes. Prints `OK PORT` per
//!   connection and `DONE ok=N failed=M`.
//! - `hold N BATCH PAUSE_MS`: opens N connections (handshake each) in batches
//!   of BATCH with PAUSE_MS between batches, keeps them all open, prints
//!   `OPEN PORT` each and `ALLOPEN`, waits for a line on stdin, closes every
//!   one and prints `CLOSED N`.
//! - `bytewise LEN [FIRST]`: one connection with `TCP_NODELAY` whose every
//!   outgoing byte, the handshake's included, is its own `send` (2 ms
//!   apart), except that the first `send` carries FIRST bytes (default 1),
//!   through an `SSLObject` over memory BIOs; then LEN bytes of application
//!   data the same way, read back from the echo server. Prints one JSON
//!   line: `port`,
//!   `sent` (bytes written to the socket), `data_segs_out` (from
//!   `TCP_INFO`), `echo_ok`, `version`.
//!
//! Certificates are not verified (the test's own self-signed one).

use crate::netns::NetPair;
use crate::process::Proc;
use crate::pyssl::{python, PyTlsServer};
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::path::Path;

/// The client script.
pub const SCRIPT: &str = r#"import json, socket, ssl, struct, sys, threading, time

mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
args = [int(a) for a in sys.argv[4:]]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
family = socket.AF_INET6 if ":" in host else socket.AF_INET

def connect():
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect((host, port))
    return s

if mode == "burst":
    n, par = args[0], max(1, args[1])
    lock = threading.Lock()
    counts = {"ok": 0, "failed": 0}
    nxt = [0]
    def worker():
        while True:
            with lock:
                if nxt[0] >= n:
                    return
                nxt[0] += 1
            try:
                raw = connect()
                lport = raw.getsockname()[1]
                with ctx.wrap_socket(raw) as t:
                    t.sendall(b"ping\n")
                    got = b""
                    while len(got) < 5:
                        d = t.recv(64)
                        if not d:
                            break
                        got += d
                    if got != b"ping\n":
                        raise Exception("echo mismatch %r" % got)
                with lock:
                    counts["ok"] += 1
                    print("OK", lport, flush=True)
            except Exception as e:
                with lock:
                    counts["failed"] += 1
                    print("FAIL", repr(e), flush=True)
    ts = [threading.Thread(target=worker) for _ in range(par)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    print("DONE ok=%d failed=%d" % (counts["ok"], counts["failed"]), flush=True)
elif mode == "hold":
    n, batch, pause = args[0], max(1, args[1]), args[2]
    conns = []
    for i in range(n):
        raw = connect()
        t = ctx.wrap_socket(raw)
        t.sendall(b"x\n")
        t.recv(2)
        conns.append(t)
        print("OPEN", t.getsockname()[1], flush=True)
        if (i + 1) % batch == 0 and i + 1 < n:
            time.sleep(pause / 1000.0)
    print("ALLOPEN", flush=True)
    sys.stdin.readline()
    for t in conns:
        t.close()
    print("CLOSED", len(conns), flush=True)
elif mode == "bytewise":
    length = args[0]
    first = args[1] if len(args) > 1 else 1
    s = connect()
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=host)
    sent = [0]
    def flush():
        data = out.read()
        i = 0
        while i < len(data):
            n = max(1, first) if sent[0] == 0 else 1
            s.sendall(data[i:i + n])
            sent[0] += len(data[i:i + n])
            i += n
            time.sleep(0.002)
    def fill():
        d = s.recv(65536)
        if not d:
            raise Exception("eof from the server")
        inc.write(d)
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            flush()
            fill()
    flush()
    payload = bytes((i * 7 + 3) % 251 for i in range(length))
    obj.write(payload)
    flush()
    got = b""
    deadline = time.time() + 20
    while len(got) < length and time.time() < deadline:
        try:
            got += obj.read(65536)
        except ssl.SSLWantReadError:
            fill()
    info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)
    data_segs_out = struct.unpack_from("I", info, 156)[0]
    print(json.dumps({"port": s.getsockname()[1], "sent": sent[0],
                      "data_segs_out": data_segs_out, "echo_ok": got == payload,
                      "version": obj.version()}), flush=True)
    try:
        obj.unwrap()
        flush()
    except Exception:
        pass
    s.close()
else:
    sys.exit("unknown mode " + mode)
"#;

/// Starts the client in `mode` against `addr` with integer `args`; its
/// output goes to `dir/NAME.stdout`.
pub fn start(
    net: &NetPair,
    dir: &Path,
    name: &str,
    mode: &str,
    addr: SocketAddr,
    args: &[u64],
) -> Result<Proc> {
    let script = dir.join("tls_client.py");
    std::fs::write(&script, SCRIPT).with_context(|| format!("writing {}", script.display()))?;
    let mut c = net.client_cmd(python());
    c.arg(&script)
        .arg(mode)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .args(args.iter().map(|a| a.to_string()));
    Proc::spawn(name, c, dir, mode == "hold")
}

/// The server's own handshake count: its `HANDSHAKE` words (its threads'
/// prints can share a line).
pub fn server_handshakes(srv: &PyTlsServer) -> usize {
    srv.proc.stdout().matches("HANDSHAKE").count()
}

/// The local ports of `OK PORT` / `OPEN PORT` lines with that `tag`.
pub fn ports(stdout: &str, tag: &str) -> Vec<u16> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix(tag)?.strip_prefix(' ')?.trim().parse().ok())
        .collect()
}

/// `ok` and `failed` of a `DONE ok=N failed=M` line.
pub fn done_counts(stdout: &str) -> Option<(usize, usize)> {
    ok_failed_counts(stdout, "DONE")
}

/// `ok` and `failed` of the first `TAG ok=N failed=M` line of a client's
/// output (this module's `DONE`, the load holder's `OPENED`).
pub fn ok_failed_counts(stdout: &str, tag: &str) -> Option<(usize, usize)> {
    let line = stdout.lines().find(|l| {
        l.strip_prefix(tag)
            .is_some_and(|rest| rest.starts_with(' '))
    })?;
    let mut ok = None;
    let mut failed = None;
    for part in line.split_whitespace() {
        if let Some(v) = part.strip_prefix("ok=") {
            ok = v.parse().ok();
        } else if let Some(v) = part.strip_prefix("failed=") {
            failed = v.parse().ok();
        }
    }
    Some((ok?, failed?))
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn parses_ports_and_done() {
        let out = "OK 40000\nFAIL x\nOK 40001\nOPEN 5\nDONE ok=2 failed=1\n";
        assert_eq!(ports(out, "OK"), vec![40000, 40001]);
        assert_eq!(ports(out, "OPEN"), vec![5]);
        assert_eq!(done_counts(out), Some((2, 1)));
        assert_eq!(done_counts("nothing"), None);
    }
}
