//! The one place that turns `hsmon run`'s flags and the policy file into the
//! settings in force, at start-up and on every SIGHUP alike: the command
//! line wins over the file (`--dry-run`, `--reneg-cap`, `--allow`), and the
//! kernel's renegotiation cap follows from the result.

use std::path::PathBuf;

use anyhow::Result;

use super::{Config, RunArgs};
use crate::api::cidr::Cidr;

/// What the command line fixed, applied again on every reload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--config`, if given (else the default path, else the defaults).
    pub config: Option<PathBuf>,
    /// `--dry-run`.
    pub dry_run: bool,
    /// `--reneg-cap`.
    pub reneg_cap: Option<u32>,
    /// `--allow`.
    pub allow: Vec<Cidr>,
}

impl Overrides {
    /// The overrides `hsmon run`'s flags give.
    pub fn from_args(args: &RunArgs) -> Self {
        Overrides {
            config: args.config.clone(),
            dry_run: args.dry_run,
            reneg_cap: args.reneg_cap,
            allow: args.allow.clone(),
        }
    }
}

/// The settings in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Effective {
    /// The policy file (or the embedded defaults) with the command line
    /// applied: `dry_run` and `limits.reneg_cap` are the effective ones.
    pub config: Config,
    /// Where the file came from: its path or "embedded defaults".
    pub source: String,
    /// The renegotiation cap the kernel enforces: none in dry-run, where
    /// nothing may be dropped (the policy reports `would_reset` instead).
    pub kernel_reneg_cap: u32,
    /// Prefixes never banned besides the built-in ones (loopback, this
    /// host's addresses): `--allow`, then the file's `allow`.
    pub allow: Vec<Cidr>,
}

/// Reads the policy file the overrides name (or the default one) and applies
/// the command line on top of it.
pub fn resolve(overrides: &Overrides) -> Result<Effective> {
    let (config, source) = Config::resolve(overrides.config.as_deref())?;
    Ok(effective(config, source, overrides))
}

/// [`resolve`] without the file read.
pub fn effective(mut config: Config, source: String, overrides: &Overrides) -> Effective {
    config.dry_run |= overrides.dry_run;
    if let Some(cap) = overrides.reneg_cap {
        config.limits.reneg_cap = cap;
    }
    let cap = config.limits.reneg_cap;
    let kernel_reneg_cap = if config.dry_run { 0 } else { cap };
    if config.dry_run && cap != 0 {
        tracing::warn!(
            configured = cap,
            "dry-run: the renegotiation cap is not enforced in the kernel (the policy reports would_reset)"
        );
    }
    let mut allow = overrides.allow.clone();
    allow.extend(config.allow.iter().copied());
    Effective {
        config,
        source,
        kernel_reneg_cap,
        allow,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(file: &str, overrides: Overrides) -> Effective {
        let config = Config::parse(file, "test.toml").expect("parses");
        effective(config, "test.toml".into(), &overrides)
    }

    #[test]
    fn the_file_rules_when_the_command_line_is_silent() {
        let e = with("[limits]\nreneg_cap = 5\n", Overrides::default());
        assert_eq!(e.config.limits.reneg_cap, 5);
        assert_eq!(e.kernel_reneg_cap, 5);
        assert!(!e.config.dry_run);
    }

    #[test]
    fn the_command_line_wins_over_the_file() {
        let e = with(
            "allow = [\"192.0.2.0/24\"]\n[limits]\nreneg_cap = 5\n",
            Overrides {
                reneg_cap: Some(2),
                allow: vec!["198.51.100.7".parse().expect("cidr")],
                ..Overrides::default()
            },
        );
        assert_eq!(e.config.limits.reneg_cap, 2);
        assert_eq!(e.kernel_reneg_cap, 2);
        let allow: Vec<String> = e.allow.iter().map(ToString::to_string).collect();
        assert_eq!(allow, ["198.51.100.7/32", "192.0.2.0/24"]);
    }

    #[test]
    fn dry_run_from_either_side_keeps_the_cap_out_of_the_kernel() {
        let flag = with(
            "[limits]\nreneg_cap = 3\n",
            Overrides {
                dry_run: true,
                ..Overrides::default()
            },
        );
        assert!(flag.config.dry_run);
        assert_eq!(
            flag.config.limits.reneg_cap, 3,
            "the policy still knows the cap"
        );
        assert_eq!(flag.kernel_reneg_cap, 0);
        let file = with(
            "dry_run = true\n[limits]\nreneg_cap = 3\n",
            Overrides::default(),
        );
        assert_eq!(file.kernel_reneg_cap, 0);
        let off = with(
            "dry_run = true\n[limits]\nreneg_cap = 0\n",
            Overrides::default(),
        );
        assert_eq!(off.kernel_reneg_cap, 0);
    }
}
