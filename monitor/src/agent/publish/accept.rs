//! The control socket's accept loop and connection handling: bounded
//! connections and time limits, so idle or slow clients can neither hold
//! the CLI out nor starve the agent of file descriptors.
//!
//! - A connection is *silent* until it sends its first byte: it costs one
//!   descriptor and a small task. At most [`Limits::silent`] silent
//!   connections are kept; a new one beyond that closes the oldest silent
//!   one (it had the longest to speak). The CLI writes its request as soon
//!   as it is connected, so it is never the oldest: `hsmon status` is
//!   answered however many idle clients connect. A silent connection is
//!   closed after [`Limits::first_byte`].
//! - A connection that spoke is *active*: at most [`Limits::active`] at
//!   once (requests and `events --follow` streams); beyond that it gets a
//!   `503` with a JSON error and is closed at once. Its request headers must
//!   arrive within [`Limits::header_read`]; one request per connection (no
//!   keep-alive), so an answered client cannot idle on it.
//! - [`raise_nofile`] raises the soft open-file limit to the hard one at
//!   start, and [`Limits::fit`] keeps [`RESERVE_FDS`] descriptors out of the
//!   control socket's reach for the agent's own work (maps, netlink sockets
//!   for resets, the state file).
//! - An `accept` that fails (`EMFILE`, `ENFILE`, ...) is logged (at most
//!   once a second) and retried after a short pause, never in a busy loop.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use axum::extract::connect_info::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{oneshot, Semaphore};

use super::server::PeerInfo;

/// File descriptors kept out of the control socket's reach.
pub const RESERVE_FDS: u64 = 256;

/// The control socket's bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections that have not sent a byte yet.
    pub silent: usize,
    /// Connections being served (requests and follow streams).
    pub active: usize,
    /// How long a connection may stay silent.
    pub first_byte: Duration,
    /// How long a request's headers may take once started.
    pub header_read: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            silent: 512,
            active: 64,
            first_byte: Duration::from_secs(5),
            header_read: Duration::from_secs(5),
        }
    }
}

impl Limits {
    /// These limits shrunk to fit `nofile` descriptors with
    /// [`RESERVE_FDS`] kept for the agent (at least 8 silent and 4 active
    /// connections).
    pub fn fit(self, nofile: u64) -> Self {
        let room = usize::try_from(nofile.saturating_sub(RESERVE_FDS)).unwrap_or(usize::MAX);
        let active = self.active.min(room / 4).max(4);
        let silent = self.silent.min(room.saturating_sub(active)).max(8);
        Limits {
            active,
            silent,
            ..self
        }
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft
/// limit in force afterwards.
pub fn raise_nofile() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        tracing::warn!("reading RLIMIT_NOFILE: {}", std::io::Error::last_os_error());
        return 1024;
    }
    if r.rlim_cur < r.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: r.rlim_max,
            rlim_max: r.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            tracing::info!(
                from = r.rlim_cur,
                to = r.rlim_max,
                "raised the open-file limit"
            );
            return r.rlim_max;
        }
        tracing::warn!(
            soft = r.rlim_cur,
            hard = r.rlim_max,
            "raising the open-file limit: {}",
            std::io::Error::last_os_error()
        );
    }
    r.rlim_cur
}

/// Decrements the silent count when a connection stops being silent.
struct SilentGuard(Arc<AtomicUsize>);

impl Drop for SilentGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What is answered to a connection over [`Limits::active`].
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
connection: close\r\ncontent-length: 74\r\n\r\n\
{\"error\":\"the hsmon control socket is busy (too many clients), try again\"}";

/// Accepts connections on `listener` and serves `app` on each, within
/// `limits`, until `shutdown` completes.
pub async fn run(
    listener: UnixListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    tracing::info!(
        silent = limits.silent,
        active = limits.active,
        first_byte_s = limits.first_byte.as_secs_f64(),
        header_read_s = limits.header_read.as_secs_f64(),
        "control socket limits"
    );
    tokio::pin!(shutdown);
    let active = Arc::new(Semaphore::new(limits.active));
    let silent = Arc::new(AtomicUsize::new(0));
    // Eviction handles of the silent connections, oldest first (closed
    // ones are skipped and compacted away).
    let mut order: VecDeque<oneshot::Sender<()>> = VecDeque::new();
    let mut last_error: Option<Instant> = None;
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => return Ok(()),
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    if last_error.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!("control socket: accept failed: {e} (retrying)");
                        last_error = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if silent.load(Ordering::Relaxed) >= limits.silent {
            // Close the oldest silent connection still waiting.
            while let Some(tx) = order.pop_front() {
                if tx.send(()).is_ok() {
                    break;
                }
            }
        }
        if order.len() > 2 * limits.silent {
            order.retain(|tx| !tx.is_closed());
        }
        let (tx, rx) = oneshot::channel();
        order.push_back(tx);
        silent.fetch_add(1, Ordering::Relaxed);
        let guard = SilentGuard(silent.clone());
        tokio::spawn(connection(
            stream,
            app.clone(),
            active.clone(),
            limits,
            rx,
            guard,
        ));
    }
}

/// One connection: waits (silent) for its first byte, then serves one
/// request if there is room.
async fn connection(
    stream: UnixStream,
    app: Router,
    active: Arc<Semaphore>,
    limits: Limits,
    evict: oneshot::Receiver<()>,
    guard: SilentGuard,
) {
    let spoke = tokio::select! {
        r = tokio::time::timeout(limits.first_byte, first_byte(&stream)) => matches!(r, Ok(Ok(true))),
        _ = evict => false,
    };
    drop(guard);
    if !spoke {
        tracing::debug!("control socket: closed a silent connection");
        return;
    }
    let Ok(permit) = active.try_acquire_owned() else {
        tracing::debug!("control socket: busy, answered 503");
        // Best effort: a fresh socket's send buffer takes the answer.
        let _ = stream.try_write(BUSY);
        return;
    };
    let peer = PeerInfo::of(&stream);
    let svc = TowerToHyperService::new(app.layer(axum::Extension(ConnectInfo(peer))));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), svc);
    if let Err(e) = conn.await {
        tracing::debug!("control socket connection: {e}");
    }
    drop(permit);
}

/// Waits until `stream` holds a byte to read (`true`) or its peer closed
/// it (`false`); readiness alone can be spurious, so the byte is peeked.
async fn first_byte(stream: &UnixStream) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd as _;
    loop {
        stream.readable().await?;
        let peeked = stream.try_io(tokio::io::Interest::READABLE, || {
            let mut b = 0u8;
            // SAFETY: `b` is a valid, writable byte for the call; the fd is
            // the stream's, open for the call's duration.
            let n = unsafe {
                libc::recv(
                    stream.as_raw_fd(),
                    (&mut b as *mut u8).cast(),
                    1,
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n > 0)
            }
        });
        match peeked {
            Ok(data) => return Ok(data),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_keep_the_reserve() {
        let d = Limits::default();
        assert_eq!(d.fit(1_048_576), d);
        let small = d.fit(600);
        assert_eq!((small.active, small.silent), (64, 600 - 256 - 64));
        let tiny = d.fit(300);
        assert_eq!((tiny.active, tiny.silent), (11, 33));
        assert!(tiny.active + tiny.silent + RESERVE_FDS as usize <= 300);
        let none = d.fit(10);
        assert_eq!((none.active, none.silent), (4, 8));
    }

    #[test]
    fn the_busy_answer_is_well_formed() {
        let text = std::str::from_utf8(BUSY).expect("utf8");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.parse().ok())
            .expect("content-length");
        assert_eq!(len, body.len());
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        assert!(v["error"].as_str().is_some_and(|e| e.contains("busy")));
    }

    #[tokio::test]
    async fn first_byte_waits_for_data_not_readiness() {
        use tokio::io::AsyncWriteExt as _;
        let (a, mut b) = UnixStream::pair().expect("pair");
        let wait = tokio::time::timeout(Duration::from_millis(100), first_byte(&a)).await;
        assert!(wait.is_err(), "a silent peer is not a first byte");
        b.write_all(b"G").await.expect("write");
        let got = tokio::time::timeout(Duration::from_secs(5), first_byte(&a)).await;
        assert!(matches!(got, Ok(Ok(true))), "{got:?}");
        let (c, d) = UnixStream::pair().expect("pair");
        drop(d);
        let closed = tokio::time::timeout(Duration::from_secs(5), first_byte(&c)).await;
        assert!(matches!(closed, Ok(Ok(false))), "{closed:?}");
    }
}
