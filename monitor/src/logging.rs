//! Logging: `tracing` to stderr, filtered by `HSMON_LOG` (or `RUST_LOG`),
//! `info` by default. Records from the `log` crate (aya-log's eBPF messages)
//! are forwarded too.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Safe to call once; a bad filter falls back
/// to `info` with a warning.
pub fn init() {
    let spec = std::env::var("HSMON_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_default();
    let (filter, bad) = if spec.trim().is_empty() {
        (EnvFilter::new("info"), None)
    } else {
        match EnvFilter::try_new(&spec) {
            Ok(f) => (f, None),
            Err(e) => (EnvFilter::new("info"), Some(e)),
        }
    };
    let installed = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init()
        .is_ok();
    if let (true, Some(e)) = (installed, bad) {
        tracing::warn!("ignoring the log filter {spec:?}: {e}");
    }
}
