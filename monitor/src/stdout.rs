//! Writing to stdout, for the CLI's output and the agent's decision lines.

use std::io::Write as _;

use anyhow::{Context as _, Result};

/// Writes `bytes` to stdout; a closed pipe is not an error.
pub fn write_stdout(bytes: &[u8]) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(e).context("writing to stdout"),
    }
}
