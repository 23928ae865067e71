//! The policy's rules and its settings (from the effective config).

use std::time::Duration;

use serde::Serialize;

use super::Action;
use crate::api::policy::{PolicySummary, RuleSummary};
use crate::config::Config;

/// The policy's rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// `[peer] renegotiations_per_minute`.
    RenegotiationsPerMinute,
    /// `[peer] handshakes_per_10s`.
    HandshakesPer10s,
    /// `[prefix] renegotiations_per_minute`.
    PrefixRenegotiationsPerMinute,
    /// `[prefix] handshakes_per_10s`.
    PrefixHandshakesPer10s,
    /// `[limits] handshake_timeout`.
    HandshakeTimeout,
    /// `[limits] keyupdates_per_second`.
    KeyupdatesPerSecond,
    /// `[limits] reneg_cap` (the kernel resets; the agent reports).
    RenegCap,
}

impl Rule {
    /// The rule's name in the config and in events.
    pub fn name(self) -> &'static str {
        match self {
            Rule::RenegotiationsPerMinute => "renegotiations_per_minute",
            Rule::HandshakesPer10s => "handshakes_per_10s",
            Rule::PrefixRenegotiationsPerMinute => "prefix_renegotiations_per_minute",
            Rule::PrefixHandshakesPer10s => "prefix_handshakes_per_10s",
            Rule::HandshakeTimeout => "handshake_timeout",
            Rule::KeyupdatesPerSecond => "keyupdates_per_second",
            Rule::RenegCap => "reneg_cap",
        }
    }
}

/// The policy's settings, from the config file (and `--dry-run`,
/// `--reneg-cap`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Renegotiation threshold per minute (0: off).
    pub renegotiations_per_minute: u32,
    /// Handshake threshold per 10 s (0: off).
    pub handshakes_per_10s: u32,
    /// Action of the renegotiation rule.
    pub reneg_action: Action,
    /// Action of the handshake rule.
    pub handshake_action: Action,
    /// IPv4 prefix length of the prefix rules.
    pub prefix_v4_len: u32,
    /// IPv6 prefix length of the prefix rules.
    pub prefix_v6_len: u32,
    /// Prefix renegotiation threshold per minute (0: off).
    pub prefix_renegotiations_per_minute: u32,
    /// Prefix handshake threshold per 10 s (0: off).
    pub prefix_handshakes_per_10s: u32,
    /// Action of the prefix renegotiation rule.
    pub prefix_reneg_action: Action,
    /// Action of the prefix handshake rule.
    pub prefix_handshake_action: Action,
    /// The renegotiation cap per connection (0: none); the kernel enforces
    /// it, except in dry-run, where the policy reports `would_reset`.
    pub reneg_cap: u32,
    /// First-handshake time limit (zero: off).
    pub handshake_timeout: Duration,
    /// Action of the handshake timeout.
    pub handshake_timeout_action: Action,
    /// Streaked client KeyUpdate-size records (`keyupdate_streaked`) per
    /// connection per second (0: off).
    pub keyupdates_per_second: u32,
    /// Action of the KeyUpdate rule.
    pub keyupdate_action: Action,
    /// First ban TTL.
    pub ban_ttl: Duration,
    /// Factor per repeat offence.
    pub escalation: u32,
    /// Longest ban.
    pub max_ban_ttl: Duration,
    /// Compute, change nothing.
    pub dry_run: bool,
}

impl Settings {
    /// From the effective config ([`crate::config::resolve`] applied the
    /// command line to it).
    pub fn from_config(c: &Config) -> Self {
        Settings {
            renegotiations_per_minute: c.peer.renegotiations_per_minute,
            handshakes_per_10s: c.peer.handshakes_per_10s,
            reneg_action: c.action.renegotiations_per_minute,
            handshake_action: c.action.handshakes_per_10s,
            prefix_v4_len: c.prefix.v4_len,
            prefix_v6_len: c.prefix.v6_len,
            prefix_renegotiations_per_minute: c.prefix.renegotiations_per_minute,
            prefix_handshakes_per_10s: c.prefix.handshakes_per_10s,
            prefix_reneg_action: c.action.prefix_renegotiations_per_minute,
            prefix_handshake_action: c.action.prefix_handshakes_per_10s,
            reneg_cap: c.limits.reneg_cap,
            handshake_timeout: c.limits.handshake_timeout,
            handshake_timeout_action: c.action.handshake_timeout,
            keyupdates_per_second: c.limits.keyupdates_per_second,
            keyupdate_action: c.action.keyupdates_per_second,
            ban_ttl: c.action.ban_ttl,
            escalation: c.action.ban_escalation.max(1),
            max_ban_ttl: c.action.max_ban_ttl,
            dry_run: c.dry_run,
        }
    }

    /// The TTL of a ban after `prior` bans within 24 h.
    pub fn escalated_ttl(&self, prior: usize) -> Duration {
        let mut ttl = self.ban_ttl;
        for _ in 0..prior {
            ttl = ttl.saturating_mul(self.escalation);
            if ttl >= self.max_ban_ttl {
                break;
            }
        }
        ttl.min(self.max_ban_ttl).max(Duration::from_secs(1))
    }

    /// The action of `rule`.
    pub fn action(&self, rule: Rule) -> Action {
        match rule {
            Rule::RenegotiationsPerMinute => self.reneg_action,
            Rule::HandshakesPer10s => self.handshake_action,
            Rule::PrefixRenegotiationsPerMinute => self.prefix_reneg_action,
            Rule::PrefixHandshakesPer10s => self.prefix_handshake_action,
            Rule::HandshakeTimeout => self.handshake_timeout_action,
            Rule::KeyupdatesPerSecond => self.keyupdate_action,
            Rule::RenegCap => Action::Reset,
        }
    }

    /// What `hsmon status` shows: dry-run and the rules that are on.
    pub fn summary(&self, source: &str) -> PolicySummary {
        let timeout_ms = u64::try_from(self.handshake_timeout.as_millis()).unwrap_or(u64::MAX);
        let rules = [
            (Rule::RenegCap, u64::from(self.reneg_cap)),
            (Rule::HandshakeTimeout, timeout_ms),
            (
                Rule::KeyupdatesPerSecond,
                u64::from(self.keyupdates_per_second),
            ),
            (
                Rule::RenegotiationsPerMinute,
                u64::from(self.renegotiations_per_minute),
            ),
            (Rule::HandshakesPer10s, u64::from(self.handshakes_per_10s)),
            (
                Rule::PrefixRenegotiationsPerMinute,
                u64::from(self.prefix_renegotiations_per_minute),
            ),
            (
                Rule::PrefixHandshakesPer10s,
                u64::from(self.prefix_handshakes_per_10s),
            ),
        ];
        PolicySummary {
            source: source.to_owned(),
            dry_run: self.dry_run,
            rules: rules
                .iter()
                .filter(|(_, limit)| *limit > 0)
                .map(|(rule, limit)| RuleSummary {
                    rule: rule.name().to_owned(),
                    limit: *limit,
                    action: self.action(*rule).name().to_owned(),
                })
                .collect(),
            prefix_v4_len: self.prefix_v4_len,
            prefix_v6_len: self.prefix_v6_len,
            ban_ttl_s: self.ban_ttl.as_secs(),
            ban_escalation: self.escalation,
            max_ban_ttl_s: self.max_ban_ttl.as_secs(),
        }
    }
}
