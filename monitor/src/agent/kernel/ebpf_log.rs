//! Forwards the eBPF programs' `aya-log` messages to our log as they arrive.

use std::io;

use anyhow::{Context as _, Result};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Flushes `logger` whenever its ring buffer has records, until cancelled.
pub async fn forward<T: log::Log>(logger: aya_log::EbpfLogger<T>) -> Result<()> {
    // SAFETY: the logger owns its ring buffer's fd, which stays open and the
    // same for as long as the AsyncFd holds it.
    let mut fd = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
        .map_err(io::Error::from)
        .context("watching the eBPF log ring buffer")?;
    loop {
        let mut guard = fd
            .readable_mut()
            .await
            .context("waiting on the eBPF log ring buffer")?;
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
