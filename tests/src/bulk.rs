//! A bulk TLS source: a Python `ssl` server (the system libssl) that sends
//! every client `N` bytes of application data as soon as the handshake is
//! done, then keeps reading until the client leaves, honouring client
//! renegotiation (`SSL_OP_ALLOW_CLIENT_RENEGOTIATION`) so a download can be
//! followed by renegotiations on the same connection.
//!
//! It replaced `openssl s_server` fed from a pipe, which stalled in about one
//! run of four (blocked in `read(2)` on its socket with nothing in flight,
//! part of the 20 MB never written) and left the pipe's writer behind.
//!
//! Its own account is the ground truth: one line per event, `READY`,
//! `HELLO PEER` for every ClientHello it reads (the `msg_callback` of the
//! handshake layer, so renegotiation ClientHellos inside encrypted records
//! count too, as `s_server -msg` counts them), `HANDSHAKE PEER VERSION`,
//! `SENT PEER N`, then `RECEIVED PEER N` (what the client uploaded) and
//! `CLOSED PEER`, or `ERROR PEER WHY`.

use crate::cert::TestCert;
use crate::netns::ns_cmd;
use crate::openssl::TlsVersion;
use crate::process::Proc;
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// The server script: `script HOST PORT CERT KEY BYTES 1.2|1.3`.
pub const SCRIPT: &str = r#"import socket, ssl, sys, threading

host, port, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
total, version = int(sys.argv[5]), sys.argv[6]

def out(*a):
    print(*a, flush=True)

ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
v = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}[version]
ctx.minimum_version = v
ctx.maximum_version = v
ctx.options |= 0x100  # SSL_OP_ALLOW_CLIENT_RENEGOTIATION (OpenSSL 3)

def on_msg(conn, direction, ver, content_type, msg_type, data):
    # 22: handshake layer, 1: ClientHello (record headers come as 256).
    if direction == "read" and content_type == 22 and msg_type == 1:
        try:
            peer = conn.getpeername()
        except OSError:
            peer = "?"
        out("HELLO", peer)

ctx._msg_callback = on_msg

family = socket.AF_INET6 if ":" in host else socket.AF_INET
srv = socket.socket(family, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((host, port))
srv.listen(16)
out("READY")

def serve(conn, peer):
    try:
        with ctx.wrap_socket(conn, server_side=True) as tls:
            out("HANDSHAKE", peer, tls.version())
            chunk, sent = b"a" * 16384, 0
            while sent < total:
                n = min(len(chunk), total - sent)
                tls.sendall(chunk[:n])
                sent += n
            out("SENT", peer, sent)
            got = 0
            while True:
                d = tls.recv(65536)
                if not d:
                    break
                got += len(d)
            out("RECEIVED", peer, got)
        out("CLOSED", peer)
    except Exception as e:
        out("ERROR", peer, repr(e))

while True:
    conn, peer = srv.accept()
    conn.settimeout(60)
    threading.Thread(target=serve, args=(conn, peer), daemon=True).start()
"#;

/// A running bulk server.
#[derive(Debug)]
pub struct BulkServer {
    /// The process.
    pub proc: Proc,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl BulkServer {
    /// Writes the script to `dir` and starts it in namespace `ns`, serving
    /// `bytes` to every client over `version`; waits until it listens.
    pub fn start_in(
        ns: &str,
        dir: &Path,
        cert: &TestCert,
        addr: SocketAddr,
        version: TlsVersion,
        bytes: usize,
        name: &str,
    ) -> Result<Self> {
        let script = dir.join("tls_bulk_server.py");
        std::fs::write(&script, SCRIPT).with_context(|| format!("writing {}", script.display()))?;
        let mut c = ns_cmd(ns, crate::pyssl::python());
        c.arg(&script)
            .arg(addr.ip().to_string())
            .arg(addr.port().to_string())
            .arg(&cert.cert)
            .arg(&cert.key)
            .arg(bytes.to_string())
            .arg(version.as_str());
        let mut proc = Proc::spawn(name, c, dir, false)?;
        proc.wait_for("READY", Duration::from_secs(15), |out, _| {
            out.contains("READY")
        })?;
        proc.wait_listening(ns, addr, Duration::from_secs(15))?;
        Ok(Self { proc, addr })
    }

    /// Bytes of application data the server read from its clients
    /// (`RECEIVED` lines, summed).
    pub fn received(&self) -> u64 {
        self.proc
            .stdout()
            .lines()
            .filter_map(|l| l.strip_prefix("RECEIVED "))
            .filter_map(|r| r.split_whitespace().last()?.parse::<u64>().ok())
            .sum()
    }

    /// ClientHellos the server read, renegotiations included.
    pub fn client_hellos(&self) -> usize {
        lines_starting(&self.proc.stdout(), "HELLO ")
    }
}

fn lines_starting(text: &str, word: &str) -> usize {
    text.lines().filter(|l| l.starts_with(word)).count()
}
