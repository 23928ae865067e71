//! `hsmon config check [FILE]` and `hsmon config default`.

use std::path::PathBuf;

use anyhow::Result;

use crate::config::{Config, DEFAULT_CONFIG_PATH, DEFAULT_CONFIG_TOML};

/// Arguments of `hsmon config`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to do with the policy file.
    #[command(subcommand)]
    pub verb: ConfigVerb,
}

/// `hsmon config` verbs.
#[derive(Debug, clap::Subcommand)]
pub enum ConfigVerb {
    /// Validate a policy file (default /etc/hsmon/hsmon.toml): prints "ok",
    /// or the bad key with its line and column and exits with 1.
    Check {
        /// The file to check.
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// Print the embedded default policy file.
    Default,
}

/// Runs `hsmon config ...`.
pub fn run(args: Args) -> Result<()> {
    match args.verb {
        ConfigVerb::Check { file } => {
            let path = file.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
            Config::load(&path)?;
            super::output::write_stdout(b"ok\n")
        }
        ConfigVerb::Default => super::output::write_stdout(DEFAULT_CONFIG_TOML.as_bytes()),
    }
}
