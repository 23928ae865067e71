//! OpenSSL's `s_server` and `s_client` as TLS peers.
//!
//! Both keep stdin as a pipe: `s_server` reads `r` (server-initiated
//! renegotiation, TLS 1.2) and `k`/`K` (KeyUpdate, TLS 1.3); `s_client` reads
//! `R` (client-initiated renegotiation, TLS 1.2) and `k`/`K` (KeyUpdate). A
//! line starting with `Q`, `R`, `k` or `K` is a command, any other line is
//! sent as application data. Closing `s_client`'s stdin ends the connection
//! with a close_notify. `s_client` must not get `-ign_eof` or `-quiet`: both
//! switch the command letters off.
//!
//! Both run with `-msg` (every TLS message a peer sends or receives is
//! printed to its stdout, `>>>` sent, `<<<` received): tests wait on these
//! lines rather than on time. `s_client` also gets `-keylogfile` (the
//! secrets tshark needs to decrypt renegotiations and KeyUpdates).
//!
//! `s_server` selects on stdin and the socket together and, when both are
//! readable, handles stdin first: a line written to its stdin while a
//! record from the client is still unread is sent before that record is
//! processed. So a test that needs the server to have taken a client's
//! message (e.g. a KeyUpdate asking for an answer, which goes out with the
//! server's next write) waits for the server's `-msg` line first (see
//! [`SServer::wait_key_updates_received`]).

use crate::cert::TestCert;
use crate::netns::NetPair;
use crate::process::Proc;
use anyhow::{bail, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A TLS protocol version a peer is pinned to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 only.
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

impl TlsVersion {
    /// The openssl command-line flag.
    pub fn flag(self) -> &'static str {
        match self {
            TlsVersion::Tls12 => "-tls1_2",
            TlsVersion::Tls13 => "-tls1_3",
        }
    }

    /// As hsmon prints it: `"1.2"` / `"1.3"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::Tls12 => "1.2",
            TlsVersion::Tls13 => "1.3",
        }
    }
}

/// Options for [`SServer`].
#[derive(Debug, Clone)]
pub struct SServerOpts {
    /// Address to accept on (one of the server namespace's addresses).
    pub addr: SocketAddr,
    /// Pin the protocol version (`None`: OpenSSL's default range).
    pub version: Option<TlsVersion>,
    /// Pass `-client_renegotiation`: honour client-initiated renegotiation.
    /// Without it OpenSSL 3 refuses it with a no_renegotiation alert.
    pub client_renegotiation: bool,
    /// More arguments for `openssl s_server`.
    pub extra_args: Vec<String>,
}

impl SServerOpts {
    /// Defaults: no version pin, client renegotiation refused.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            version: None,
            client_renegotiation: false,
            extra_args: Vec::new(),
        }
    }

    /// Pins the version.
    pub fn version(mut self, v: TlsVersion) -> Self {
        self.version = Some(v);
        self
    }

    /// Sets `-client_renegotiation`.
    pub fn client_renegotiation(mut self, on: bool) -> Self {
        self.client_renegotiation = on;
        self
    }
}

/// A running `openssl s_server` in the server namespace.
#[derive(Debug)]
pub struct SServer {
    /// The process (stdin is a pipe).
    pub proc: Proc,
    /// Where it accepts.
    pub addr: SocketAddr,
}

impl SServer {
    /// Starts `openssl s_server` and waits until it listens.
    pub fn start(
        net: &NetPair,
        logdir: &Path,
        cert: &TestCert,
        opts: &SServerOpts,
        name: &str,
    ) -> Result<Self> {
        Self::start_in(&net.server_ns, logdir, cert, opts, name)
    }

    /// Like [`SServer::start`], in the network namespace `ns`.
    pub fn start_in(
        ns: &str,
        logdir: &Path,
        cert: &TestCert,
        opts: &SServerOpts,
        name: &str,
    ) -> Result<Self> {
        let mut c = crate::netns::ns_cmd(ns, "openssl");
        c.arg("s_server")
            .arg("-accept")
            .arg(opts.addr.to_string())
            .arg("-cert")
            .arg(&cert.cert)
            .arg("-key")
            .arg(&cert.key)
            .arg("-msg");
        if let Some(v) = opts.version {
            c.arg(v.flag());
        }
        if opts.client_renegotiation {
            c.arg("-client_renegotiation");
        }
        c.args(&opts.extra_args);
        // stdin stays open for the server's life: on EOF s_server quits.
        let mut proc = Proc::spawn(name, c, logdir, true)?;
        proc.wait_listening(ns, opts.addr, Duration::from_secs(15))?;
        Ok(Self {
            proc,
            addr: opts.addr,
        })
    }

    /// Writes `r`: the server sends a HelloRequest on the current
    /// connection (TLS 1.2) and runs the handshake to its end (blocking);
    /// returns once it printed `SSL_do_handshake -> N` (N = 1: the client
    /// renegotiated). Returns N.
    pub fn request_renegotiation(&mut self, timeout: Duration) -> Result<i32> {
        self.command("r", timeout)
    }

    fn command(&mut self, line: &str, timeout: Duration) -> Result<i32> {
        const ACK: &str = "SSL_do_handshake -> ";
        let before = self.stdout_count(ACK);
        self.proc.write_line(line)?;
        self.proc
            .wait_for(&format!("{ACK:?} after {line:?}"), timeout, |out, _| {
                count_lines(out, ACK) > before
            })?;
        let out = self.proc.stdout();
        let last = out.lines().rfind(|l| l.contains(ACK)).unwrap_or_default();
        let n = last
            .rsplit(ACK)
            .next()
            .and_then(|v| v.trim().parse::<i32>().ok())
            .unwrap_or(-1);
        Ok(n)
    }

    /// Sends `line` to the connected client as application data (s_server
    /// takes lines starting with `Q`, `q`, `P`, `S` or one-letter lines as
    /// commands: refused here). s_server reads stdin in chunks: wait for the
    /// client to see the line before writing the next.
    pub fn send_data(&mut self, line: &str) -> Result<()> {
        if line.starts_with(['Q', 'q', 'P', 'S']) || line.len() < 2 {
            bail!("{line:?} would be an s_server command");
        }
        self.proc.write_line(line)
    }

    /// KeyUpdate messages this server received and processed (from `-msg`).
    pub fn key_updates_received(&self) -> usize {
        msg_count(&self.proc.stdout(), "<<<", "KeyUpdate")
    }

    /// KeyUpdate messages this server sent (from `-msg`).
    pub fn key_updates_sent(&self) -> usize {
        msg_count(&self.proc.stdout(), ">>>", "KeyUpdate")
    }

    /// Waits until this server has read `n` KeyUpdates from the client.
    /// s_server prints the `-msg` line while it processes the record, inside
    /// the same `SSL_read` that marks a requested answer as pending; only
    /// then does a line written to its stdin carry the answer (see the
    /// module docs).
    pub fn wait_key_updates_received(&mut self, n: usize, timeout: Duration) -> Result<()> {
        self.proc
            .wait_for(&format!("{n} KeyUpdate(s) received"), timeout, |out, _| {
                msg_count(out, "<<<", "KeyUpdate") >= n
            })
    }

    /// How many stdout lines contain `needle`.
    pub fn stdout_count(&self, needle: &str) -> usize {
        count_lines(&self.proc.stdout(), needle)
    }

    /// Waits until at least `n` stdout lines contain `needle`.
    pub fn wait_stdout_count(&mut self, needle: &str, n: usize, timeout: Duration) -> Result<()> {
        self.proc
            .wait_for(&format!("{n} x {needle:?} on stdout"), timeout, |out, _| {
                count_lines(out, needle) >= n
            })
    }
}

/// Options for [`SClient`].
#[derive(Debug, Clone)]
pub struct SClientOpts {
    /// The server to connect to.
    pub connect: SocketAddr,
    /// Pin the protocol version.
    pub version: Option<TlsVersion>,
    /// `-sess_out FILE`: save the session (for a later resumption).
    pub sess_out: Option<PathBuf>,
    /// `-sess_in FILE`: offer this saved session (resumption).
    pub sess_in: Option<PathBuf>,
    /// More arguments for `openssl s_client`.
    pub extra_args: Vec<String>,
}

impl SClientOpts {
    /// Defaults: no version pin, no session files.
    pub fn new(connect: SocketAddr) -> Self {
        Self {
            connect,
            version: None,
            sess_out: None,
            sess_in: None,
            extra_args: Vec::new(),
        }
    }

    /// Pins the version.
    pub fn version(mut self, v: TlsVersion) -> Self {
        self.version = Some(v);
        self
    }

    /// Saves the session to `path`.
    pub fn sess_out(mut self, path: PathBuf) -> Self {
        self.sess_out = Some(path);
        self
    }

    /// Resumes the session saved in `path`.
    pub fn sess_in(mut self, path: PathBuf) -> Self {
        self.sess_in = Some(path);
        self
    }
}

/// How long s_client may take to consume one line of stdin.
pub const CONSUMED: Duration = Duration::from_secs(5);

/// A running `openssl s_client` in the client namespace.
#[derive(Debug)]
pub struct SClient {
    /// The process (stdin is a pipe).
    pub proc: Proc,
    version: Option<TlsVersion>,
}

impl SClient {
    /// Starts `openssl s_client -msg -keylogfile KEYLOG` (the key log is
    /// appended to, so several clients can share one).
    pub fn start(
        net: &NetPair,
        logdir: &Path,
        keylog: &Path,
        opts: &SClientOpts,
        name: &str,
    ) -> Result<Self> {
        Self::start_in(&net.client_ns, logdir, keylog, opts, name)
    }

    /// Like [`SClient::start`], in the network namespace `ns`.
    pub fn start_in(
        ns: &str,
        logdir: &Path,
        keylog: &Path,
        opts: &SClientOpts,
        name: &str,
    ) -> Result<Self> {
        let mut c = crate::netns::ns_cmd(ns, "openssl");
        c.arg("s_client")
            .arg("-connect")
            .arg(opts.connect.to_string())
            .arg("-msg")
            .arg("-keylogfile")
            .arg(keylog);
        if let Some(v) = opts.version {
            c.arg(v.flag());
        }
        if let Some(p) = &opts.sess_out {
            c.arg("-sess_out").arg(p);
        }
        if let Some(p) = &opts.sess_in {
            c.arg("-sess_in").arg(p);
        }
        c.args(&opts.extra_args);
        let proc = Proc::spawn(name, c, logdir, true)?;
        Ok(Self {
            proc,
            version: opts.version,
        })
    }

    /// Handshakes completed as the client saw them: the smaller of
    /// Finished messages sent and received (from `-msg`).
    pub fn handshakes_completed(&self) -> usize {
        msg_handshakes_completed(&self.proc.stdout())
    }

    /// KeyUpdate messages this client sent (from `-msg`).
    pub fn key_updates_sent(&self) -> usize {
        msg_count(&self.proc.stdout(), ">>>", "KeyUpdate")
    }

    /// KeyUpdate messages this client received (from `-msg`).
    pub fn key_updates_received(&self) -> usize {
        msg_count(&self.proc.stdout(), "<<<", "KeyUpdate")
    }

    /// NewSessionTicket messages received.
    pub fn tickets_received(&self) -> usize {
        msg_count(&self.proc.stdout(), "<<<", "NewSessionTicket")
    }

    /// Waits until `n` handshakes have completed; fails early if the client
    /// exits.
    pub fn wait_handshakes(&mut self, n: usize, timeout: Duration) -> Result<()> {
        self.proc
            .wait_for(&format!("{n} completed handshake(s)"), timeout, |out, _| {
                msg_handshakes_completed(out) >= n
            })
    }

    /// Waits up to `timeout` until `n` handshakes completed or the client
    /// exited, whichever comes first; returns the handshakes completed.
    pub fn wait_handshakes_or_exit(&mut self, n: usize, timeout: Duration) -> usize {
        let _ = crate::cmd::poll(timeout, Duration::from_millis(20), || {
            let done = self.handshakes_completed() >= n;
            let exited = !self.proc.is_running();
            (done || exited).then_some(())
        });
        self.handshakes_completed()
    }

    /// Waits until this client has sent `n` KeyUpdates.
    pub fn wait_key_updates_sent(&mut self, n: usize, timeout: Duration) -> Result<()> {
        self.proc
            .wait_for(&format!("{n} KeyUpdate(s) sent"), timeout, |out, _| {
                msg_count(out, ">>>", "KeyUpdate") >= n
            })
    }

    /// Waits until this client has received `n` KeyUpdates.
    pub fn wait_key_updates_received(&mut self, n: usize, timeout: Duration) -> Result<()> {
        self.proc
            .wait_for(&format!("{n} KeyUpdate(s) received"), timeout, |out, _| {
                msg_count(out, "<<<", "KeyUpdate") >= n
            })
    }

    /// Tries `n` client-initiated renegotiations one after another, each
    /// followed by a bounded wait (`each`) for its handshake to complete or
    /// for the client to exit (what OpenSSL's client does when the server
    /// refuses with a no_renegotiation alert). Stops early once the client
    /// is gone. Returns how many `R` commands the client took.
    pub fn try_renegotiations(&mut self, n: usize, each: Duration) -> Result<usize> {
        let mut taken = 0;
        for _ in 0..n {
            if !self.proc.is_running() {
                break;
            }
            let before = self.handshakes_completed();
            if let Err(e) = self.renegotiate() {
                if self.proc.is_running() {
                    return Err(e);
                }
                break;
            }
            taken += 1;
            self.wait_handshakes_or_exit(before + 1, each);
        }
        Ok(taken)
    }

    /// Waits for the first handshake and, for TLS 1.3, for the session
    /// tickets (needed before `-sess_out` has something to save).
    pub fn wait_established(&mut self, timeout: Duration) -> Result<()> {
        self.wait_handshakes(1, timeout)?;
        if self.version == Some(TlsVersion::Tls13) {
            self.proc
                .wait_for("a NewSessionTicket", timeout, |out, _| {
                    msg_count(out, "<<<", "NewSessionTicket") >= 1
                })?;
        }
        Ok(())
    }

    /// Writes `R`: a client-initiated renegotiation (TLS 1.2). Returns once
    /// s_client has taken the command (it prints `RENEGOTIATING`); the
    /// handshake itself may still be under way (see
    /// [`SClient::wait_handshakes_or_exit`]).
    pub fn renegotiate(&mut self) -> Result<()> {
        self.command("R", "RENEGOTIATING")
    }

    /// Writes `k` (or `K`, asking the server to update too): a TLS 1.3
    /// KeyUpdate from the client. Returns once s_client has taken the command
    /// (it prints `KEYUPDATE`).
    pub fn key_update(&mut self, request_peer_update: bool) -> Result<()> {
        self.command(if request_peer_update { "K" } else { "k" }, "KEYUPDATE")
    }

    /// s_client reads stdin in chunks and looks only at a chunk's first
    /// byte for a command: each line is written only after the previous one
    /// was consumed, which its output shows.
    fn command(&mut self, line: &str, ack: &str) -> Result<()> {
        let before = count_lines(&self.proc.stderr(), ack);
        self.proc.write_line(line)?;
        self.proc
            .wait_for(&format!("{ack:?} after {line:?}"), CONSUMED, |_, err| {
                count_lines(err, ack) > before
            })
    }

    /// Sends `line` as application data and returns once s_client has sent
    /// the record. Fails for a line s_client would take as a command.
    pub fn send_data(&mut self, line: &str) -> Result<()> {
        if line.starts_with(['Q', 'R', 'k', 'K']) {
            bail!("{line:?} would be an s_client command");
        }
        let before = msg_records_sent(&self.proc.stdout(), 0x17);
        self.proc.write_line(line)?;
        self.proc
            .wait_for("the application data record", CONSUMED, |out, _| {
                msg_records_sent(out, 0x17) > before
            })
    }

    /// Waits until the data received from the server (printed to stdout)
    /// contains `text`.
    pub fn wait_received(&mut self, text: &str, timeout: Duration) -> Result<()> {
        self.proc
            .wait_for(&format!("{text:?} from the server"), timeout, |out, _| {
                out.contains(text)
            })
    }

    /// Closes stdin (s_client sends close_notify and exits) and waits up to
    /// `timeout`; kills it if it is still running then.
    pub fn close(&mut self, timeout: Duration) -> Result<()> {
        self.proc.close_stdin();
        if self.proc.wait_exit(timeout).is_none() {
            self.proc.kill();
            bail!(
                "{}: still running {timeout:?} after stdin was closed\n{}",
                self.proc.name(),
                self.proc.logs(40)
            );
        }
        Ok(())
    }
}

/// Records of outer content type `ct` s_client sent, from the `-msg`
/// `>>> … RecordHeader` lines and the hex line after each.
pub fn msg_records_sent(msg_output: &str, ct: u8) -> usize {
    let want = format!("{ct:02x} ");
    let mut lines = msg_output.lines();
    let mut n = 0;
    while let Some(l) = lines.next() {
        if l.starts_with(">>>") && l.contains("RecordHeader") {
            if let Some(hex) = lines.next() {
                if hex.trim_start().starts_with(&want) {
                    n += 1;
                }
            }
        }
    }
    n
}

/// Counts `-msg` lines of a direction (`>>>` sent, `<<<` received) that name
/// handshake message `msg` (e.g. `Finished`, `ClientHello`, `KeyUpdate`).
pub fn msg_count(msg_output: &str, dir: &str, msg: &str) -> usize {
    msg_output
        .lines()
        .filter(|l| {
            l.starts_with(dir) && l.contains(", Handshake [") && l.trim_end().ends_with(msg)
        })
        .count()
}

/// Completed handshakes in `-msg` output: min(Finished sent, Finished received).
pub fn msg_handshakes_completed(msg_output: &str) -> usize {
    msg_count(msg_output, ">>>", "Finished").min(msg_count(msg_output, "<<<", "Finished"))
}

/// How many lines of `text` contain `needle`.
pub fn count_lines(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

#[cfg(test)]
mod unit {
    use super::*;

    const MSG: &str = "\
>>> TLS 1.2, RecordHeader [length 0005]
>>> TLS 1.2, Handshake [length 00c4], ClientHello
<<< TLS 1.2, Handshake [length 003d], ServerHello
<<< TLS 1.2, Handshake [length 0010], Finished
>>> TLS 1.2, Handshake [length 0010], Finished
>>> TLS 1.2, Handshake [length 00c4], ClientHello
>>> TLS 1.3, Handshake [length 0005], KeyUpdate
";

    #[test]
    fn msg_counts() {
        assert_eq!(msg_count(MSG, ">>>", "ClientHello"), 2);
        assert_eq!(msg_count(MSG, "<<<", "ServerHello"), 1);
        assert_eq!(msg_count(MSG, ">>>", "KeyUpdate"), 1);
        assert_eq!(msg_handshakes_completed(MSG), 1);
        let recs = ">>> TLS 1.2, RecordHeader [length 0005]\n    17 03 03 00 35\n\
                    >>> TLS 1.2, RecordHeader [length 0005]\n    15 03 03 00 1a\n";
        assert_eq!(msg_records_sent(recs, 0x17), 1);
        assert_eq!(msg_records_sent(recs, 0x15), 1);
        assert_eq!(msg_records_sent(recs, 0x16), 0);
    }
}
