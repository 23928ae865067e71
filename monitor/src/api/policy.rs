//! The policy in force as `GET /v1/status` reports it.

use serde::{Deserialize, Serialize};

/// The policy in force, as `hsmon status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySummary {
    /// Where the policy came from: a file's path or "embedded defaults".
    pub source: String,
    /// Dry-run: decisions reported, nothing banned, reset or dropped.
    pub dry_run: bool,
    /// The rules that are on (limit above zero).
    pub rules: Vec<RuleSummary>,
    /// IPv4 prefix length of the prefix rules.
    pub prefix_v4_len: u32,
    /// IPv6 prefix length of the prefix rules.
    pub prefix_v6_len: u32,
    /// The first ban's TTL in seconds.
    pub ban_ttl_s: u64,
    /// Factor per repeat offence within 24 h.
    pub ban_escalation: u32,
    /// The longest ban in seconds.
    pub max_ban_ttl_s: u64,
}

/// One rule that is on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleSummary {
    /// The rule's name (as in events).
    pub rule: String,
    /// Its limit in the rule's own unit (count per window; ms for
    /// `handshake_timeout`).
    pub limit: u64,
    /// `alert`, `reset` or `ban`.
    pub action: String,
}
