//! A plain (non-TLS) TCP exchange between the namespaces: a one-connection
//! echo server in the server namespace and a client in the client namespace,
//! both threads of the test process (entered with `setns`). The client's
//! bytes do not start like a TLS record, but contain `16 03 01 …` and
//! `16 03 03 …` further in, so a tracker that scans for record headers
//! anywhere instead of at record boundaries would see "TLS".

use crate::netns::{spawn_in_netns, NetPair};
use anyhow::{anyhow, bail, Context, Result};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The client's bytes (first write).
pub const FIRST: &[u8] = b"HELLO plain tcp, not TLS\n";

/// The client's bytes (second write): TLS-looking headers not at the start.
pub fn second() -> Vec<u8> {
    let mut v = b"data: ".to_vec();
    v.extend_from_slice(&[
        0x16, 0x03, 0x01, 0x00, 0x2a, 0x01, 0x00, 0x00, 0x26, 0x03, 0x03,
    ]);
    v.extend_from_slice(b" middle ");
    v.extend_from_slice(&[0x16, 0x03, 0x03, 0x00, 0x05, 0x00, 0x00, 0x00, 0x01, 0x00]);
    v.extend_from_slice(b" end\n");
    v
}

/// What the exchange did.
#[derive(Debug, Clone)]
pub struct PlainExchange {
    /// The client's address and port.
    pub client: SocketAddr,
    /// The server's address and port.
    pub server: SocketAddr,
    /// Bytes the client sent (and got echoed back).
    pub bytes: usize,
}

/// Runs one echo exchange to `server` (an address of `net`'s server side)
/// and closes the connection from both sides. Bounded by `timeout`.
pub fn exchange(net: &NetPair, server: SocketAddr, timeout: Duration) -> Result<PlainExchange> {
    let (ready_tx, ready_rx) = mpsc::channel::<std::io::Result<()>>();
    let srv = spawn_in_netns(&net.server_ns, move || -> Result<usize> {
        let listener = match TcpListener::bind(server) {
            Ok(l) => l,
            Err(e) => {
                let msg = e.to_string();
                let _ = ready_tx.send(Err(e));
                bail!("bind {server}: {msg}");
            }
        };
        let _ = ready_tx.send(Ok(()));
        listener.set_nonblocking(true)?;
        let deadline = Instant::now() + timeout;
        let mut conn = loop {
            match listener.accept() {
                Ok((c, _)) => break c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        bail!("no connection within {timeout:?}");
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e).context("accept"),
            }
        };
        conn.set_nonblocking(false)?;
        conn.set_read_timeout(Some(timeout))?;
        let mut echoed = 0;
        let mut buf = [0u8; 4096];
        loop {
            let n = conn.read(&mut buf).context("server read")?;
            if n == 0 {
                break;
            }
            conn.write_all(&buf[..n]).context("server write")?;
            echoed += n;
        }
        conn.shutdown(Shutdown::Both).ok();
        Ok(echoed)
    })?;
    ready_rx
        .recv_timeout(timeout)
        .map_err(|_| anyhow!("plain server did not start"))?
        .with_context(|| format!("plain server bind {server}"))?;

    let cli = spawn_in_netns(&net.client_ns, move || -> Result<(SocketAddr, usize)> {
        let mut s = TcpStream::connect_timeout(&server, timeout).context("connect")?;
        s.set_read_timeout(Some(timeout))?;
        let local = s.local_addr()?;
        let mut sent = Vec::new();
        s.write_all(FIRST)?;
        sent.extend_from_slice(FIRST);
        // Let the first write go out as its own segment.
        std::thread::sleep(Duration::from_millis(50));
        let two = second();
        s.write_all(&two)?;
        sent.extend_from_slice(&two);
        s.shutdown(Shutdown::Write)?;
        let mut back = Vec::new();
        s.read_to_end(&mut back).context("client read")?;
        if back != sent {
            bail!(
                "echo mismatch: sent {} bytes, got {}",
                sent.len(),
                back.len()
            );
        }
        Ok((local, sent.len()))
    })?;
    let (client, bytes) = cli
        .join()
        .map_err(|_| anyhow!("plain client thread panicked"))??
        .context("plain client")?;
    let echoed = srv
        .join()
        .map_err(|_| anyhow!("plain server thread panicked"))??
        .context("plain server")?;
    if echoed != bytes {
        bail!("server echoed {echoed} bytes, client sent {bytes}");
    }
    Ok(PlainExchange {
        client,
        server,
        bytes,
    })
}
