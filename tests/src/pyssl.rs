//! A TLS echo server written with Python's `ssl` module (which uses the
//! system libssl), with `SSLContext.keylog_filename` set so its secrets land
//! in a key log too. Two reads are not echoed: `PUSH N MS` makes it push
//! N 5-byte messages (`+OK\r\n`), one every MS ms (then it prints
//! `PUSHED`), and a read starting with `~` (a heartbeat) is answered with
//! itself and `-ack`. The script is written to the test's directory and runs
//! with `/usr/bin/python3` (Debian's, linked to the system OpenSSL) when that
//! exists.

use crate::cert::TestCert;
use crate::netns::NetPair;
use crate::openssl::TlsVersion;
use crate::process::Proc;
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The echo server script: `script HOST PORT CERT KEY KEYLOG [1.2|1.3]`.
pub const SCRIPT: &str = r#"import os, socket, ssl, sys, threading, time

host, port, cert, key, keylog = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
version = sys.argv[6] if len(sys.argv) > 6 else ""

ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
ctx.keylog_filename = keylog
if version == "1.2":
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
elif version == "1.3":
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
sni_delay_ms = int(os.environ.get("HSMON_TEST_SNI_DELAY_MS", "0"))
if sni_delay_ms > 0:
    ctx.sni_callback = lambda sock, name, c: time.sleep(sni_delay_ms / 1000.0)

family = socket.AF_INET6 if ":" in host else socket.AF_INET
srv = socket.socket(family, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((host, port))
srv.listen(16)
print("READY", flush=True)

def serve(conn, peer):
    try:
        with ctx.wrap_socket(conn, server_side=True) as tls:
            print("HANDSHAKE", peer, tls.version(), flush=True)
            while True:
                data = tls.recv(4096)
                if not data:
                    break
                if data.startswith(b"PUSH "):
                    # Server push: N 5-byte messages, one every MS ms.
                    _, n, ms = data.split()
                    for _ in range(int(n)):
                        tls.sendall(b"+OK\r\n")
                        time.sleep(int(ms) / 1000)
                    print("PUSHED", peer, int(n), flush=True)
                elif data.startswith(b"~"):
                    # A heartbeat: answered with 4 more bytes.
                    tls.sendall(data + b"-ack")
                else:
                    tls.sendall(data)
        print("CLOSED", peer, flush=True)
    except Exception as e:
        print("ERROR", peer, repr(e), flush=True)

while True:
    conn, peer = srv.accept()
    conn.settimeout(30)
    threading.Thread(target=serve, args=(conn, peer), daemon=True).start()
"#;

/// A running Python TLS echo server.
#[derive(Debug)]
pub struct PyTlsServer {
    /// The process.
    pub proc: Proc,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its key log file.
    pub keylog: PathBuf,
}

/// `/usr/bin/python3` if present, else `python3` from `PATH`.
pub fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

impl PyTlsServer {
    /// Writes the script and starts it in the server namespace; waits until
    /// it listens.
    pub fn start(
        net: &NetPair,
        dir: &Path,
        cert: &TestCert,
        addr: SocketAddr,
        version: Option<TlsVersion>,
        name: &str,
    ) -> Result<Self> {
        Self::start_with_sni_delay(net, dir, cert, addr, version, name, 0)
    }

    /// Like [`PyTlsServer::start`], with an SNI callback that sleeps
    /// `sni_delay_ms` inside every handshake whose ClientHello names a server
    /// (`HSMON_TEST_SNI_DELAY_MS`; 0: no callback).
    pub fn start_with_sni_delay(
        net: &NetPair,
        dir: &Path,
        cert: &TestCert,
        addr: SocketAddr,
        version: Option<TlsVersion>,
        name: &str,
        sni_delay_ms: u32,
    ) -> Result<Self> {
        let script = dir.join("tls_echo_server.py");
        std::fs::write(&script, SCRIPT).with_context(|| format!("writing {}", script.display()))?;
        let keylog = dir.join(format!("{name}.keylog"));
        let mut c = net.server_cmd(python());
        c.arg(&script)
            .arg(addr.ip().to_string())
            .arg(addr.port().to_string())
            .arg(&cert.cert)
            .arg(&cert.key)
            .arg(&keylog)
            .env("HSMON_TEST_SNI_DELAY_MS", sni_delay_ms.to_string());
        if let Some(v) = version {
            c.arg(v.as_str());
        }
        let mut proc = Proc::spawn(name, c, dir, false)?;
        proc.wait_for("READY", Duration::from_secs(15), |out, _| {
            out.contains("READY")
        })?;
        proc.wait_listening(&net.server_ns, addr, Duration::from_secs(15))?;
        Ok(Self { proc, addr, keylog })
    }

    /// Handshakes the server completed (its `HANDSHAKE` lines).
    pub fn handshakes(&self) -> usize {
        crate::openssl::count_lines(&self.proc.stdout(), "HANDSHAKE")
    }
}

/// A real ClientHello from Python's `ssl` (the system OpenSSL), made
/// through memory BIOs (no socket): the bytes a client sends first, for
/// tests that abort a handshake after it.
pub fn client_hello_bytes() -> Result<Vec<u8>> {
    const SCRIPT: &str = "import ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
i, o = ssl.MemoryBIO(), ssl.MemoryBIO()
s = ctx.wrap_bio(i, o, server_hostname='hsmon.test')
try:
    s.do_handshake()
except ssl.SSLWantReadError:
    pass
sys.stdout.write(o.read().hex())
";
    let out = std::process::Command::new(python())
        .arg("-c")
        .arg(SCRIPT)
        .output()
        .context("running python3")?;
    if !out.status.success() {
        anyhow::bail!(
            "python3 could not make a ClientHello: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let hex = String::from_utf8_lossy(&out.stdout);
    let hex = hex.trim();
    if hex.len() < 10 || !hex.len().is_multiple_of(2) {
        anyhow::bail!("not a ClientHello: {hex:?}");
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).context("hex from python3"))
        .collect()
}
