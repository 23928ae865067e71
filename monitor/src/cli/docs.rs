//! `hsmon completions SHELL` and `hsmon man [VERB]`: shell completion
//! scripts (clap_complete) and roff man pages (clap_mangen), both generated
//! from the clap definitions in [`crate::cli`], so they never drift from the
//! options the binary accepts.

use crate::cli::output::write_stdout;

use anyhow::{anyhow, Context as _, Result};
use clap::CommandFactory as _;
use clap_complete::Shell;

use crate::cli::Cli;

/// The program name completions and man pages are written for.
const BIN: &str = "hsmon";

/// Arguments of `hsmon completions`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to write the completion script for.
    #[arg(value_name = "SHELL")]
    pub shell: Shell,
}

/// Arguments of `hsmon man`.
#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Write the page of this verb (`hsmon-VERB(1)`) instead of hsmon(1).
    #[arg(value_name = "VERB", conflicts_with = "list")]
    pub verb: Option<String>,
    /// Print the verbs that have a page of their own, one per line.
    #[arg(long)]
    pub list: bool,
}

/// The completion script for `shell`.
pub fn completions(shell: Shell) -> Vec<u8> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, BIN, &mut out);
    out
}

/// The roff man page of `hsmon` (`verb` `None`) or of `hsmon VERB`.
pub fn man_page(verb: Option<&str>) -> Result<Vec<u8>> {
    let mut cmd = Cli::command();
    // Building the tree names each verb's page hsmon-VERB and puts
    // `hsmon VERB` in its synopsis.
    cmd.build();
    let page = match verb {
        None => cmd,
        Some(v) => {
            let names = verbs();
            cmd.find_subcommand(v)
                .cloned()
                .ok_or_else(|| anyhow!("no verb {v:?}; the verbs are: {}", names.join(", ")))?
        }
    };
    let mut out = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut out)
        .context("rendering the man page")?;
    Ok(out)
}

/// The verbs (visible subcommands) of `hsmon`, in definition order.
pub fn verbs() -> Vec<String> {
    Cli::command()
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(|s| s.get_name().to_owned())
        .collect()
}

/// `hsmon completions SHELL`.
pub fn run_completions(args: CompletionsArgs) -> Result<()> {
    write_stdout(&completions(args.shell))
}

/// `hsmon man [VERB]`.
pub fn run_man(args: ManArgs) -> Result<()> {
    if args.list {
        let mut out = verbs().join("\n");
        out.push('\n');
        return write_stdout(out.as_bytes());
    }
    write_stdout(&man_page(args.verb.as_deref())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum as _;

    /// Every verb, named here on purpose: a new verb must be added.
    const VERBS: [&str; 6] = ["run", "conns", "bans", "status", "completions", "man"];

    #[test]
    fn the_verb_list_is_complete() {
        let cmd = Cli::command();
        let mut got: Vec<&str> = cmd.get_subcommands().map(|s| s.get_name()).collect();
        got.retain(|n| *n != "help");
        got.sort_unstable();
        let mut want = VERBS.to_vec();
        want.sort_unstable();
        // Other verbs may land meanwhile; every one of ours must be there.
        for v in &want {
            assert!(got.contains(v), "verb {v} missing from {got:?}");
        }
    }

    #[test]
    fn completions_mention_every_verb() {
        let cmd = Cli::command();
        let verbs: Vec<String> = cmd
            .get_subcommands()
            .map(|s| s.get_name().to_owned())
            .collect();
        for shell in Shell::value_variants() {
            let script = String::from_utf8(completions(*shell)).expect("UTF-8");
            assert!(script.contains(BIN), "{shell}: no {BIN}");
            for verb in verbs.iter().map(String::as_str).chain(VERBS) {
                assert!(script.contains(verb), "{shell}: no verb {verb}");
            }
        }
        let bash = String::from_utf8(completions(Shell::Bash)).expect("UTF-8");
        assert!(bash.contains("--socket") && bash.contains("--metrics-addr"));
    }

    #[test]
    fn every_shell_parses() {
        for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
            let cli = <Cli as clap::Parser>::try_parse_from(["hsmon", "completions", shell])
                .unwrap_or_else(|e| panic!("{shell}: {e}"));
            assert!(matches!(cli.verb, crate::cli::Verb::Completions(_)));
        }
        let err = <Cli as clap::Parser>::try_parse_from(["hsmon", "completions", "tcsh"])
            .expect_err("not a shell");
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn man_page_mentions_every_verb() {
        let page = String::from_utf8(man_page(None).expect("renders")).expect("UTF-8");
        assert!(page.contains(".TH hsmon 1"), "{page}");
        for verb in VERBS {
            // roff escapes the dash of hsmon-VERB(1).
            assert!(
                page.contains(&format!("hsmon\\-{verb}(1)")),
                "no hsmon-{verb}(1) in:\n{page}"
            );
        }
    }

    #[test]
    fn verb_pages() {
        let page = String::from_utf8(man_page(Some("run")).expect("renders")).expect("UTF-8");
        assert!(page.contains(".TH hsmon-run 1"), "{page}");
        assert!(page.contains("metrics\\-addr"), "{page}");
        let page = String::from_utf8(man_page(Some("status")).expect("renders")).expect("UTF-8");
        assert!(page.contains("\\-\\-json"), "{page}");
        let err = man_page(Some("frobnicate")).expect_err("no such verb");
        assert!(err.to_string().contains("run, conns"), "{err}");
    }
}
