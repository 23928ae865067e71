//! The command line: one subcommand per verb, each defined in its own
//! module. The verbs talk to the agent through [`client`] and the documents
//! of [`crate::api`]; they never import the agent (`hsmon run` parses into
//! [`crate::config::RunArgs`] and `main` starts the agent with them;
//! `hsmon cleanup` uses `crate::agent::persist`).

pub mod bans;
pub mod cleanup;
pub mod client;
pub mod config;
pub mod conns;
pub mod docs;
pub mod events;
pub mod output;
pub mod peers;
pub mod status;
pub mod table;
pub mod top;

#[cfg(test)]
use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use crate::config::{SocketArg, DEFAULT_SOCKET};

/// hsmon watches TLS handshakes and renegotiations on this host from the kernel.
#[derive(Debug, Parser)]
#[command(name = "hsmon", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub verb: Verb,
}

/// The verbs `hsmon` understands.
// Parsed once per process and moved out at once: the size of the `run`
// variant costs nothing worth a `Box` and its clap plumbing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Verb {
    /// Run the agent: load and attach the eBPF programs, track TLS flows and
    /// serve the control API on a Unix socket (needs root).
    Run(crate::config::RunArgs),
    /// List the TLS connections the agent tracks (open and recently closed).
    Conns(conns::Args),
    /// List the source-address bans in force (`add` and `del` change them).
    Bans(bans::Args),
    /// Show what the agent is doing: version, uptime, hooks attached, map
    /// fill levels, ring-buffer events read and lost, active bans.
    Status(status::Args),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(docs::CompletionsArgs),
    /// Print the man page (roff) of hsmon, or of one verb.
    Man(docs::ManArgs),
    /// List the peers the policy watches: handshakes and renegotiations in
    /// the current windows, bans in the last 24 h.
    Peers(peers::Args),
    /// Check the policy file (`check [FILE]`) or print the defaults.
    Config(config::Args),
    /// Remove everything a stopped agent left pinned: links (programs
    /// detached), maps (bans, counters), clsact qdiscs it added, the state file.
    Cleanup(cleanup::Args),
    /// Print the agent's events (decisions, bans, reloads): the recent
    /// backlog, or with --follow a live stream.
    Events(events::Args),
    /// A live view of peers and connections by handshake and renegotiation
    /// rate (q quits); plain frames with --once, --iterations or --json.
    Top(top::Args),
}

impl Verb {
    /// Runs the verb to completion.
    pub fn execute(self) -> anyhow::Result<()> {
        match self {
            Verb::Run(_) => anyhow::bail!("`hsmon run` starts the agent, not a CLI verb"),
            Verb::Conns(args) => conns::run(args),
            Verb::Bans(args) => bans::run(args),
            Verb::Status(args) => status::run(args),
            Verb::Completions(args) => docs::run_completions(args),
            Verb::Man(args) => docs::run_man(args),
            Verb::Config(args) => config::run(args),
            Verb::Cleanup(args) => cleanup::run(args),
            Verb::Peers(args) => peers::run(args),
            Verb::Events(args) => events::run(args),
            Verb::Top(args) => top::run(args),
        }
    }
}

/// Formats an error and its chain of causes for stderr:
/// `hsmon: error: top` followed by one `  caused by: ...` line per cause.
pub fn format_error(err: &anyhow::Error) -> String {
    let mut out = format!("hsmon: error: {err}");
    for cause in err.chain().skip(1) {
        out.push_str("\n  caused by: ");
        out.push_str(&cause.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("hsmon").chain(args.iter().copied()))
    }

    #[test]
    fn run_defaults() {
        let cli = parse(&["run"]).expect("parses");
        let Verb::Run(args) = cli.verb else {
            panic!("not run")
        };
        assert!(args.iface.is_empty());
        assert_eq!(args.socket.socket, PathBuf::from(DEFAULT_SOCKET));
        assert!(args.ports.is_none());
        assert_eq!(args.flow_map_size, 65536);
        assert_eq!(args.keep_closed, 10_000);
        assert_eq!(args.reneg_cap, None, "the policy file's cap unless asked");
    }

    #[test]
    fn run_with_everything() {
        let cli = parse(&[
            "run",
            "--iface",
            "lo",
            "--iface",
            "eth0",
            "--socket",
            "/tmp/x.sock",
            "--ports",
            "443,8443",
            "--flow-map-size",
            "1024",
        ])
        .expect("parses");
        let Verb::Run(args) = cli.verb else {
            panic!("not run")
        };
        assert_eq!(args.iface, ["lo", "eth0"]);
        assert_eq!(args.socket.socket, PathBuf::from("/tmp/x.sock"));
        assert_eq!(args.ports, Some(crate::config::PortList(vec![443, 8443])));
        assert_eq!(args.flow_map_size, 1024);
    }

    #[test]
    fn run_metrics_addr() {
        let args = |extra: &[&str]| {
            let mut all = vec!["run"];
            all.extend_from_slice(extra);
            match parse(&all).expect("parses").verb {
                Verb::Run(args) => args.metrics_addr.0,
                _ => panic!("not run"),
            }
        };
        assert_eq!(args(&[]), Some("127.0.0.1:9477".parse().expect("addr")));
        assert_eq!(
            args(&["--metrics-addr", "[::1]:9100"]),
            Some("[::1]:9100".parse().expect("addr"))
        );
        assert_eq!(args(&["--metrics-addr", "off"]), None);
        for bad in ["localhost:9477", "9477", "1.2.3.4:99999", ""] {
            let err = parse(&["run", "--metrics-addr", bad]).expect_err(bad);
            assert_eq!(err.exit_code(), 2, "{bad}: {err}");
        }
    }

    #[test]
    fn conns_flags() {
        let cli = parse(&["conns", "--json", "--socket", "/tmp/s"]).expect("parses");
        let Verb::Conns(args) = cli.verb else {
            panic!("not conns")
        };
        assert!(args.json);
        assert_eq!(args.socket.socket, PathBuf::from("/tmp/s"));
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        for bad in [
            &["run", "--ports", "https"][..],
            &["run", "--ports", "0"],
            &["run", "--ports", "70000"],
            &[
                "run",
                "--ports",
                "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17",
            ],
            &["run", "--flow-map-size", "0"],
            &["run", "--flow-map-size", "-5"],
            &["run", "--iface", ""],
            &["run", "--nope"],
            &["conns", "--json=maybe"],
            &["conns", "extra"],
            &["frobnicate"],
        ] {
            let err = parse(bad).expect_err(&format!("{bad:?} should not parse"));
            assert_ne!(err.kind(), ErrorKind::DisplayHelp, "{bad:?}");
            assert_eq!(err.exit_code(), 2, "{bad:?}: {err}");
        }
    }

    #[test]
    fn missing_verb_is_a_usage_error() {
        let err = parse(&[]).expect_err("needs a verb");
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn error_chain_is_printed() {
        let err = anyhow::anyhow!("inner").context("outer");
        assert_eq!(
            format_error(&err),
            "hsmon: error: outer\n  caused by: inner"
        );
    }
}
