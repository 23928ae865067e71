//! The agent's policy decisions, read from its stdout (one JSON object per
//! line, see the README's "Events" section), and the policy files the
//! policy tests write.

use anyhow::{bail, ensure, Context, Result};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::hsmon::Agent;

/// Every key a decision line carries (optional ones aside).
pub const DECISION_KEYS: [&str; 6] = ["time", "rule", "peer", "counts", "action", "dry_run"];

/// Every decision the agent printed so far, in order. Fails on a stdout line
/// that is not a JSON object with [`DECISION_KEYS`].
pub fn decisions(agent: &Agent) -> Result<Vec<serde_json::Value>> {
    let out = agent.stdout();
    let mut v = Vec::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let d: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("decision line {line:?}"))?;
        for key in DECISION_KEYS {
            ensure!(d.get(key).is_some(), "{key} missing in {d}");
        }
        v.push(d);
    }
    Ok(v)
}

/// Waits (at most `within`) for a decision matching `pred`; returns it.
pub fn wait_decision(
    agent: &Agent,
    what: &str,
    within: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(d) = decisions(agent)?.into_iter().find(|d| pred(d)) {
            return Ok(d);
        }
        if Instant::now() >= deadline {
            bail!(
                "no decision {what} within {within:?}; agent stdout:\n{}\nagent log:\n{}",
                agent.stdout(),
                agent.logs(40)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes a policy file `name` with `text` into `dir`; returns
/// `["--config", PATH]` for the agent's arguments.
pub fn policy_args(dir: &Path, name: &str, text: &str) -> Result<Vec<String>> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(vec!["--config".to_owned(), path.display().to_string()])
}
