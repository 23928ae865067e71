//! The agent's settings: `hsmon run`'s flags ([`flags`]) and the policy
//! file (TOML): limits, per-peer thresholds, actions, bans,
//! allowlist and dry-run; embedded defaults for a public web server.
//!
//! Every table and key is optional (a missing one takes its default); an
//! unknown key, a wrong type or a bad value is an error naming the key and
//! its line and column.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde::{Deserialize, Deserializer};

use crate::api::cidr::Cidr;

pub mod flags;
pub mod resolve;

pub use crate::api::decisions::Action;
pub use flags::{HookMode, PortList, RunArgs, SocketArg, DEFAULT_SOCKET};
pub use resolve::{resolve, Effective, Overrides};

/// Where `hsmon run` and `hsmon config check` look when no file is named.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/hsmon/hsmon.toml";

/// The embedded defaults, as a file (also what an empty file means).
pub const DEFAULT_CONFIG_TOML: &str = r#"# hsmon policy: defaults for a public web server.
# Compute every decision but change nothing (report would_ban / would_reset).
dry_run = false
# Never ban or reset these prefixes (on top of loopback and this host's addresses).
allow = []

[limits]
# Per connection. Client-initiated renegotiations (enforced in the kernel;
# 0: no cap).
reneg_cap = 3
# A connection whose first handshake has not completed this long after its
# first ClientHello ("0s": off).
handshake_timeout = "10s"
# The client's KeyUpdate-size records in streaks (nothing of another size in
# either direction between them) per connection per second (0: off). The
# wire cannot tell a KeyUpdate from a 5-byte write: an application that
# exchanges only 5-byte messages more than 30 times a second breaks this
# rule too, so its action is "alert" (see the README's "Which default rules
# can misfire").
keyupdates_per_second = 30

[peer]
# Per client address, over sliding windows (0 disables the rule).
renegotiations_per_minute = 10
handshakes_per_10s = 100

[prefix]
# Per client prefix (/v4_len, /v6_len): the per-peer windows of the prefix's
# addresses summed (allowlisted addresses left out). 0 disables a rule: off
# by default.
v4_len = 24
v6_len = 64
renegotiations_per_minute = 0
handshakes_per_10s = 0

[action]
# What each rule does: "alert", "reset" (the offending connection) or "ban"
# (the peer; for the prefix rules the prefix).
renegotiations_per_minute = "ban"
handshakes_per_10s = "alert"
prefix_renegotiations_per_minute = "ban"
prefix_handshakes_per_10s = "ban"
handshake_timeout = "reset"
keyupdates_per_second = "alert"
# The first ban's length; each repeat offence within 24h multiplies it by
# ban_escalation, up to max_ban_ttl.
ban_ttl = "10m"
ban_escalation = 4
max_ban_ttl = "24h"
"#;

/// The whole policy file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Compute every decision, change nothing.
    pub dry_run: bool,
    /// Prefixes never banned, merged with the built-in allowlist.
    #[serde(deserialize_with = "cidrs")]
    pub allow: Vec<Cidr>,
    /// `[limits]`.
    pub limits: Limits,
    /// `[peer]`.
    pub peer: PeerLimits,
    /// `[prefix]`.
    pub prefix: PrefixLimits,
    /// `[action]`.
    pub action: Actions,
    /// Which hooks count (`"tc"` or `"socket"`; `hsmon run --hooks`
    /// wins). Read at start-up only: a reload keeps the running mode.
    pub hooks: Option<flags::HookMode>,
}

/// `[limits]`: per-connection limits.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Client-initiated renegotiations per connection, enforced in the
    /// kernel (0: no cap).
    pub reneg_cap: u32,
    /// Longest time from a connection's first ClientHello to the end of its
    /// first handshake (zero: off).
    #[serde(deserialize_with = "duration_or_off")]
    pub handshake_timeout: Duration,
    /// The client's streaked KeyUpdate-size records (`keyupdate_streaked`)
    /// per connection per second (0: off).
    pub keyupdates_per_second: u32,
}

/// `[peer]`: per client address thresholds (0 disables a rule).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeerLimits {
    /// Client renegotiation attempts in the last 60 s.
    pub renegotiations_per_minute: u32,
    /// New connections' first handshakes in the last 10 s.
    pub handshakes_per_10s: u32,
}

/// `[prefix]`: per client prefix thresholds (0 disables a rule; both are 0
/// by default).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrefixLimits {
    /// IPv4 prefix length the peers are grouped by (1..=32).
    #[serde(deserialize_with = "v4_len")]
    pub v4_len: u32,
    /// IPv6 prefix length the peers are grouped by (1..=128).
    #[serde(deserialize_with = "v6_len")]
    pub v6_len: u32,
    /// Client renegotiation attempts of the prefix in the last 60 s.
    pub renegotiations_per_minute: u32,
    /// New connections' first handshakes of the prefix in the last 10 s.
    pub handshakes_per_10s: u32,
}

/// `[action]`: what each rule does, and how long bans last.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Actions {
    /// Action of `renegotiations_per_minute`.
    pub renegotiations_per_minute: Action,
    /// Action of `handshakes_per_10s`.
    pub handshakes_per_10s: Action,
    /// Action of `[prefix] renegotiations_per_minute`.
    pub prefix_renegotiations_per_minute: Action,
    /// Action of `[prefix] handshakes_per_10s`.
    pub prefix_handshakes_per_10s: Action,
    /// Action of `[limits] handshake_timeout`.
    pub handshake_timeout: Action,
    /// Action of `[limits] keyupdates_per_second`.
    pub keyupdates_per_second: Action,
    /// The first ban's TTL.
    #[serde(deserialize_with = "ttl")]
    pub ban_ttl: Duration,
    /// Factor applied per repeat offence within 24 h (at least 1).
    pub ban_escalation: u32,
    /// The longest ban escalation reaches.
    #[serde(deserialize_with = "ttl")]
    pub max_ban_ttl: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            reneg_cap: 3,
            handshake_timeout: Duration::from_secs(10),
            keyupdates_per_second: 30,
        }
    }
}

impl Default for PrefixLimits {
    fn default() -> Self {
        PrefixLimits {
            v4_len: 24,
            v6_len: 64,
            renegotiations_per_minute: 0,
            handshakes_per_10s: 0,
        }
    }
}

impl Default for PeerLimits {
    fn default() -> Self {
        PeerLimits {
            renegotiations_per_minute: 10,
            handshakes_per_10s: 100,
        }
    }
}

impl Default for Actions {
    fn default() -> Self {
        Actions {
            renegotiations_per_minute: Action::Ban,
            handshakes_per_10s: Action::Alert,
            prefix_renegotiations_per_minute: Action::Ban,
            prefix_handshakes_per_10s: Action::Ban,
            handshake_timeout: Action::Reset,
            keyupdates_per_second: Action::Alert,
            ban_ttl: Duration::from_secs(600),
            ban_escalation: 4,
            max_ban_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

fn cidrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Cidr>, D::Error> {
    let raw = Vec::<String>::deserialize(d)?;
    raw.iter()
        .map(|s| crate::api::cidr::parse_allow(s).map_err(serde::de::Error::custom))
        .collect()
}

fn ttl<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let raw = String::deserialize(d)?;
    let ttl = humantime::parse_duration(&raw)
        .map_err(|e| serde::de::Error::custom(format!("{raw:?} is not a duration: {e}")))?;
    crate::api::bans::check_ttl(ttl).map_err(serde::de::Error::custom)?;
    Ok(ttl)
}

/// The longest `handshake_timeout`.
pub const MAX_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3600);

/// A duration such as `10s`; `0s` means off; at most
/// [`MAX_HANDSHAKE_TIMEOUT`].
fn duration_or_off<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let raw = String::deserialize(d)?;
    let t = humantime::parse_duration(raw.trim())
        .map_err(|e| serde::de::Error::custom(format!("{raw:?} is not a duration: {e}")))?;
    if t > MAX_HANDSHAKE_TIMEOUT {
        return Err(serde::de::Error::custom(format!(
            "{raw:?} is longer than the 1h maximum (\"0s\" turns the rule off)"
        )));
    }
    Ok(t)
}

fn prefix_len<'de, D: Deserializer<'de>>(d: D, max: u32) -> Result<u32, D::Error> {
    let n = u32::deserialize(d)?;
    if n == 0 || n > max {
        return Err(serde::de::Error::custom(format!(
            "a prefix length must be between 1 and {max}, got {n}"
        )));
    }
    Ok(n)
}

fn v4_len<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    prefix_len(d, 32)
}

fn v6_len<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    prefix_len(d, 128)
}

/// A policy file that did not parse: where and why.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct ConfigError {
    /// The file's name as given.
    pub file: String,
    /// 1-based line of the offending key or value.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong (names the key).
    pub message: String,
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

impl Config {
    /// Parses and checks a policy file's text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((1, 1), |s| line_col(text, s.start));
            ConfigError {
                file: file.to_owned(),
                line,
                column,
                message: e.message().trim().to_owned(),
            }
        })?;
        if config.action.ban_escalation == 0 {
            let (line, column) = text
                .find("ban_escalation")
                .map_or((1, 1), |o| line_col(text, o));
            return Err(ConfigError {
                file: file.to_owned(),
                line,
                column,
                message: "ban_escalation must be at least 1".into(),
            });
        }
        Ok(config)
    }

    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the policy file {}", path.display()))?;
        Ok(Config::parse(&text, &path.display().to_string())?)
    }

    /// The policy `hsmon run` uses: `explicit` (which must exist), else
    /// [`DEFAULT_CONFIG_PATH`] if it exists, else the embedded defaults.
    /// Returns where it came from too.
    pub fn resolve(explicit: Option<&Path>) -> Result<(Config, String)> {
        if let Some(p) = explicit {
            return Ok((Config::load(p)?, p.display().to_string()));
        }
        let default = Path::new(DEFAULT_CONFIG_PATH);
        if default.exists() {
            return Ok((Config::load(default)?, DEFAULT_CONFIG_PATH.to_owned()));
        }
        Ok((Config::default(), "embedded defaults".to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_file_is_the_default() {
        assert_eq!(
            Config::parse(DEFAULT_CONFIG_TOML, "x").expect("parses"),
            Config::default()
        );
        assert_eq!(Config::parse("", "x").expect("parses"), Config::default());
    }

    #[test]
    fn values_are_read() {
        let c = Config::parse(
            "dry_run = true\nallow = [\"10.0.0.0/8\", \"2001:db8::1\"]\n[peer]\nhandshakes_per_10s = 20\n[action]\nhandshakes_per_10s = \"ban\"\nban_ttl = \"3s\"\n",
            "x",
        )
        .expect("parses");
        assert!(c.dry_run);
        assert_eq!(c.allow.len(), 2);
        assert_eq!(c.peer.handshakes_per_10s, 20);
        assert_eq!(c.peer.renegotiations_per_minute, 10);
        assert_eq!(c.action.handshakes_per_10s, Action::Ban);
        assert_eq!(c.action.ban_ttl, Duration::from_secs(3));
        assert_eq!(c.limits.reneg_cap, 3);
        assert_eq!(c.limits.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.prefix.handshakes_per_10s, 0);
    }

    #[test]
    fn hook_mode_is_read() {
        use flags::HookMode;
        assert_eq!(Config::parse("", "x").expect("parses").hooks, None);
        let c = Config::parse("hooks = \"socket\"\n", "x").expect("parses");
        assert_eq!(c.hooks, Some(HookMode::Socket));
        let c = Config::parse("hooks = \"tc\"\n", "x").expect("parses");
        assert_eq!(c.hooks, Some(HookMode::Tc));
        let e = Config::parse("hooks = \"xdp\"\n", "x").expect_err("unknown mode");
        assert!(e.to_string().contains("expected `tc` or `socket`"), "{e}");
    }

    #[test]
    fn connection_and_prefix_rules_are_read() {
        let c = Config::parse(
            "[limits]\nhandshake_timeout = \"2s\"\nkeyupdates_per_second = 5\n[prefix]\nv4_len = 16\nv6_len = 48\nhandshakes_per_10s = 30\n[action]\nhandshake_timeout = \"ban\"\nkeyupdates_per_second = \"alert\"\nprefix_handshakes_per_10s = \"reset\"\n",
            "x",
        )
        .expect("parses");
        assert_eq!(c.limits.handshake_timeout, Duration::from_secs(2));
        assert_eq!(c.limits.keyupdates_per_second, 5);
        assert_eq!((c.prefix.v4_len, c.prefix.v6_len), (16, 48));
        assert_eq!(c.prefix.handshakes_per_10s, 30);
        assert_eq!(c.action.handshake_timeout, Action::Ban);
        assert_eq!(c.action.keyupdates_per_second, Action::Alert);
        assert_eq!(c.action.prefix_handshakes_per_10s, Action::Reset);
        let off = Config::parse("[limits]\nhandshake_timeout = \"0s\"\n", "x").expect("off");
        assert!(off.limits.handshake_timeout.is_zero());
        for bad in [
            "[limits]\nhandshake_timeout = \"2h\"\n",
            "[limits]\nhandshake_timeout = \"soon\"\n",
            "[prefix]\nv4_len = 0\n",
            "[prefix]\nv4_len = 33\n",
            "[prefix]\nv6_len = 129\n",
            "[action]\nkeyupdates_per_second = \"drop\"\n",
        ] {
            let e = Config::parse(bad, "f").expect_err(bad);
            assert_eq!(e.line, 2, "{bad}: {e}");
        }
    }

    #[test]
    fn errors_name_the_key_and_place() {
        let e = Config::parse("[peer]\nhandshakes_per_10s = 5\nbogus = 1\n", "f.toml")
            .expect_err("unknown key");
        assert_eq!((e.line, e.column), (3, 1), "{e}");
        assert!(e.message.contains("bogus"), "{e}");
        assert!(e.to_string().starts_with("f.toml:3:1: "), "{e}");

        let e = Config::parse("[action]\nban_ttl = \"soon\"\n", "f").expect_err("ttl");
        assert_eq!(e.line, 2, "{e}");
        let e = Config::parse("[action]\nban_ttl = \"0s\"\n", "f").expect_err("zero");
        assert_eq!(e.line, 2, "{e}");
        let e =
            Config::parse("[action]\nhandshakes_per_10s = \"drop\"\n", "f").expect_err("action");
        assert_eq!(e.line, 2, "{e}");
        let e = Config::parse("allow = [\"nope\"]\n", "f").expect_err("cidr");
        assert_eq!(e.line, 1, "{e}");
        let e = Config::parse("[peer]\nhandshakes_per_10s = -1\n", "f").expect_err("neg");
        assert_eq!(e.line, 2, "{e}");
        let e = Config::parse("[action]\nban_escalation = 0\n", "f").expect_err("esc");
        assert_eq!(e.line, 2, "{e}");
        assert!(Config::parse("[nope]\n", "f").is_err());
    }

    #[test]
    fn explicit_missing_file_is_an_error() {
        let e = Config::resolve(Some(Path::new("/nonexistent/hsmon.toml"))).expect_err("missing");
        assert!(
            format!("{e:#}").contains("/nonexistent/hsmon.toml"),
            "{e:#}"
        );
    }
}
