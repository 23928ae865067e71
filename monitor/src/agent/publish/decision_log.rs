//! `hsmon run --events-file PATH`: every policy decision line (the same JSON
//! the agent prints on stdout, see the README's "Events") also appended to a
//! file, for hosts that ship files rather than the journal.
//!
//! The file is opened (created 0640, appended to) before anything is
//! attached, so a bad path stops the agent with an error naming it; SIGHUP
//! reopens it, so logrotate can move it away (`postrotate systemctl reload
//! hsmon`). A failed write is logged and the line is still on stdout.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::{Context as _, Result};

use crate::locks::lock;

/// The file decisions are appended to, once `--events-file` opened it.
static SINK: OnceLock<Mutex<Sink>> = OnceLock::new();

struct Sink {
    path: PathBuf,
    file: Option<File>,
}

fn open_append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .with_context(|| format!("opening the events file {} (--events-file)", path.display()))
}

/// Opens `path` for the decisions; once per process.
pub fn open(path: &Path) -> Result<()> {
    let file = open_append(path)?;
    SINK.set(Mutex::new(Sink {
        path: path.to_owned(),
        file: Some(file),
    }))
    .map_err(|_| anyhow::anyhow!("the events file is already open"))
}

/// Reopens the file by its path (SIGHUP): a rotated file is left to its new
/// name and a fresh one started. Without `--events-file`, nothing.
pub fn reopen() {
    let Some(sink) = SINK.get() else {
        return;
    };
    let mut sink = lock(sink);
    match open_append(&sink.path) {
        Ok(f) => {
            sink.file = Some(f);
            tracing::info!(path = %sink.path.display(), "events file reopened");
        }
        Err(e) => {
            sink.file = None;
            tracing::warn!("{e:#}; decisions go to stdout only until the next SIGHUP");
        }
    }
}

/// Appends `lines` (whole JSON lines) to the file, if one is open.
pub fn append(lines: &[u8]) {
    let Some(sink) = SINK.get() else {
        return;
    };
    let mut sink = lock(sink);
    let path = sink.path.clone();
    if let Some(f) = sink.file.as_mut() {
        if let Err(e) = f.write_all(lines) {
            tracing::warn!("writing decisions to {}: {e}", path.display());
        }
    }
}

/// Prints each decision as one JSON line on stdout (and logs it).
pub fn print_decisions(decisions: &[crate::agent::policy::Decision]) {
    if decisions.is_empty() {
        return;
    }
    let mut out = String::new();
    for d in decisions {
        tracing::warn!(rule = d.rule, peer = %d.peer, action = d.action.name(), "policy decision");
        match serde_json::to_string(d) {
            Ok(line) => {
                out.push_str(&line);
                out.push('\n');
            }
            Err(e) => tracing::warn!("encoding a decision: {e}"),
        }
    }
    if let Err(e) = crate::stdout::write_stdout(out.as_bytes()) {
        tracing::warn!("writing decisions: {e:#}");
    }
    crate::agent::publish::decision_log::append(out.as_bytes());
}

/// The one way out for decisions: stamps each with the wall-clock time,
/// prints it on stdout (and logs it), appends it to the events file and
/// publishes it on the event bus.
pub fn emit(
    decisions: &mut [crate::agent::policy::Decision],
    bus: &crate::agent::publish::event_bus::EventBus,
) {
    if decisions.is_empty() {
        return;
    }
    let now = crate::agent::publish::event_bus::now_rfc3339();
    for d in decisions.iter_mut().filter(|d| d.time.is_empty()) {
        d.time.clone_from(&now);
    }
    print_decisions(decisions);
    for d in decisions.iter() {
        bus.decision(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_that_cannot_be_opened_is_an_error_naming_it() {
        let e = open(Path::new("/nonexistent-hsmon-dir/decisions.jsonl")).expect_err("no such dir");
        let msg = format!("{e:#}");
        assert!(
            msg.contains("/nonexistent-hsmon-dir/decisions.jsonl") && msg.contains("--events-file"),
            "{msg}"
        );
        // Nothing was opened: appending is a no-op, not a panic.
        append(b"{}\n");
        reopen();
    }
}
