//! Raw TCP peers for the malformed-traffic tests: an echo server in the
//! server namespace that serves a fixed number of connections, and a client
//! in the client namespace that sends chosen bytes (in chosen writes) and
//! reads back everything the server echoes. Both are threads of the test
//! process (entered with `setns`); every wait is bounded.

use crate::netns::{spawn_in_netns, NetPair};
use anyhow::{anyhow, bail, Context, Result};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// An echo server that serves `conns` connections one after the other and
/// returns how many bytes each sent.
pub struct EchoServer {
    handle: Option<JoinHandle<Result<Result<Vec<usize>>>>>,
}

impl EchoServer {
    /// Listens on `addr` (in the server namespace) for `conns` connections,
    /// each echoed until the client shuts its side down; gives up after
    /// `timeout`.
    pub fn start(net: &NetPair, addr: SocketAddr, conns: usize, timeout: Duration) -> Result<Self> {
        let (ready_tx, ready_rx) = mpsc::channel::<std::result::Result<(), String>>();
        let handle = spawn_in_netns(&net.server_ns, move || -> Result<Vec<usize>> {
            let listener = match TcpListener::bind(addr) {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    bail!("bind {addr}: {e}");
                }
            };
            let _ = ready_tx.send(Ok(()));
            listener.set_nonblocking(true)?;
            let deadline = Instant::now() + timeout;
            let mut sizes = Vec::new();
            while sizes.len() < conns {
                let mut c = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        if Instant::now() >= deadline {
                            bail!("echo server: {} of {conns} connections", sizes.len());
                        }
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    Err(e) => return Err(e).context("accept"),
                };
                c.set_nonblocking(false)?;
                c.set_read_timeout(Some(timeout))?;
                let mut buf = [0u8; 16384];
                let mut total = 0;
                loop {
                    let n = c.read(&mut buf).context("echo server read")?;
                    if n == 0 {
                        break;
                    }
                    c.write_all(&buf[..n]).context("echo server write")?;
                    total += n;
                }
                let _ = c.shutdown(Shutdown::Write);
                sizes.push(total);
            }
            Ok(sizes)
        })?;
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("echo server on {addr}: {e}"),
            Err(_) => bail!("echo server on {addr} did not start"),
        }
        Ok(Self {
            handle: Some(handle),
        })
    }

    /// Waits for the server thread: the byte count of every connection.
    pub fn join(mut self) -> Result<Vec<usize>> {
        let h = self
            .handle
            .take()
            .ok_or_else(|| anyhow!("already joined"))?;
        h.join()
            .map_err(|_| anyhow!("echo server thread panicked"))??
    }
}

/// What one client connection did.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The client's address.
    pub client: SocketAddr,
    /// Every byte written, in order.
    pub sent: Vec<u8>,
    /// Every byte read back.
    pub received: Vec<u8>,
    /// The server reset the connection (what was read until then is in
    /// `received`).
    pub reset: bool,
}

/// Connects from the client namespace to `addr`, writes each of `writes`
/// with `TCP_NODELAY` (pausing `gap` between writes so each leaves as its
/// own segment), shuts down writing and reads until the server closes (or
/// resets: see [`Sent::reset`]).
pub fn send_writes(
    net: &NetPair,
    addr: SocketAddr,
    writes: Vec<Vec<u8>>,
    gap: Duration,
    timeout: Duration,
) -> Result<Sent> {
    crate::netns::in_netns(&net.client_ns, move || -> Result<Sent> {
        let mut s = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connecting to {addr}"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(timeout))?;
        let client = s.local_addr()?;
        let mut reader = s.try_clone()?;
        // Read concurrently, so a large send cannot deadlock on full buffers.
        let rd = std::thread::spawn(move || -> std::io::Result<(Vec<u8>, bool)> {
            let mut got = Vec::new();
            match reader.read_to_end(&mut got) {
                Ok(_) => Ok((got, false)),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok((got, true)),
                Err(e) => Err(e),
            }
        });
        let mut sent = Vec::new();
        for w in &writes {
            s.write_all(w).context("client write")?;
            sent.extend_from_slice(w);
            if !gap.is_zero() {
                std::thread::sleep(gap);
            }
        }
        match s.shutdown(Shutdown::Write) {
            Err(e) if e.kind() != ErrorKind::NotConnected => {
                return Err(e).context("client shutdown");
            }
            _ => {}
        }
        let (received, reset) = rd
            .join()
            .map_err(|_| anyhow!("reader thread panicked"))?
            .context("client read")?;
        Ok(Sent {
            client,
            sent,
            received,
            reset,
        })
    })?
}

/// `len` pseudo-random bytes from `seed` (xorshift; reproducible).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
