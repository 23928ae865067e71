//! `hsmon bans`: list, add and remove the source-address bans the agent
//! enforces in the kernel (the documents are in `crate::api::bans`).

use super::output::{json_line, write_stdout};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Subcommand;
use hyper::Method;

use super::client::ApiError;
use crate::api::bans::*;
use crate::api::cidr::{parse_ban_target, Cidr};
use crate::config::DEFAULT_SOCKET;

/// Parses a TTL such as `10m`, `3s`, `1h 30m` (clap value parser).
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err(format!("{s:?}: a TTL cannot be negative"));
    }
    let ttl = humantime::parse_duration(t)
        .map_err(|e| format!("{s:?} is not a duration like 10m, 3s or 1h30m: {e}"))?;
    check_ttl(ttl)?;
    Ok(ttl)
}

fn parse_reason(s: &str) -> Result<String, String> {
    check_reason(s)?;
    Ok(s.to_owned())
}

/// Arguments of `hsmon bans`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    /// Add or remove a ban; without one, list the bans in force.
    #[command(subcommand)]
    pub action: Option<Action>,
    /// Print the JSON array the agent serves instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Path of the agent's control socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET, global = true)]
    pub socket: PathBuf,
}

/// `hsmon bans add` and `hsmon bans del`.
#[derive(Debug, Subcommand)]
pub enum Action {
    /// Ban an address or prefix: the kernel drops every packet it sends to
    /// this host until the TTL runs out. Allowlisted addresses (loopback, the
    /// host's own, `hsmon run --allow`) are refused.
    Add(AddArgs),
    /// Remove the ban on exactly this address or prefix.
    Del(DelArgs),
    /// Ban every address or prefix listed in a file (one per line; blank
    /// lines and `#` comments are skipped), in one request.
    Load(LoadArgs),
}

/// Arguments of `hsmon bans load`.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// The file: one address or prefix per line (`-` reads stdin).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// How long each ban lasts (`30s`, `10m`, `2h`; at most 24h).
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_TTL,
          value_parser = parse_ttl, allow_hyphen_values = true)]
    pub ttl: Duration,
    /// Why, shown by `hsmon bans`.
    #[arg(long, value_name = "TEXT", default_value = "", value_parser = parse_reason)]
    pub reason: String,
}

/// The prefixes of a ban list file: one address or prefix per line, blank
/// lines and `#` comments skipped; the first bad line is an error naming
/// `name:LINE`. More than [`MAX_BULK`] prefixes is an error too.
pub fn parse_ban_list(name: &str, text: &str) -> Result<Vec<Cidr>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let cidr = parse_ban_target(line).map_err(|e| anyhow::anyhow!("{name}:{}: {e}", i + 1))?;
        out.push(cidr);
        if out.len() > MAX_BULK {
            anyhow::bail!("{name}: more than {MAX_BULK} prefixes (both ban maps full)");
        }
    }
    Ok(out)
}

/// Arguments of `hsmon bans add`.
#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// The address (`192.0.2.7`, `2001:db8::7`) or prefix (`192.0.2.0/24`);
    /// host bits of a prefix are ignored.
    #[arg(value_name = "ADDR|CIDR", value_parser = parse_ban_target)]
    pub target: Cidr,
    /// How long the ban lasts (`30s`, `10m`, `2h`; at most 24h).
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_TTL,
          value_parser = parse_ttl, allow_hyphen_values = true)]
    pub ttl: Duration,
    /// Why, shown by `hsmon bans`.
    #[arg(long, value_name = "TEXT", default_value = "", value_parser = parse_reason)]
    pub reason: String,
}

/// Arguments of `hsmon bans del`.
#[derive(Debug, clap::Args)]
pub struct DelArgs {
    /// The banned address or prefix, as it was added.
    #[arg(value_name = "ADDR|CIDR", value_parser = parse_ban_target)]
    pub target: Cidr,
}

/// Runs `hsmon bans [add|del]`.
pub fn run(args: Args) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let socket = args.socket;
    match args.action {
        None => {
            let body = rt
                .block_on(crate::cli::client::get(&socket, BANS_PATH))
                .map_err(agent_error)?;
            let out = if args.json {
                json_line(&body)
            } else {
                let bans: Vec<BanRecord> = serde_json::from_slice(&body)
                    .context("the agent's answer is not a ban list")?;
                render(&bans).into_bytes()
            };
            write_stdout(&out)
        }
        Some(Action::Add(add)) => {
            let req = AddBan {
                cidr: add.target.to_string(),
                ttl_ms: ttl_ms(add.ttl),
                reason: add.reason,
            };
            let json = serde_json::to_vec(&req).context("encoding the request")?;
            let body = rt
                .block_on(crate::cli::client::request(
                    &socket,
                    Method::POST,
                    BANS_PATH,
                    Some(json),
                ))
                .map_err(agent_error)?;
            let ban: BanRecord =
                serde_json::from_slice(&body).context("the agent's answer is not a ban")?;
            tracing::debug!(?ban, "ban added");
            write_stdout(
                format!(
                    "banned {} for {}{}\n",
                    ban.cidr,
                    format_ms(ban.expires_in_ms),
                    if ban.reason.is_empty() {
                        String::new()
                    } else {
                        format!(" (reason: {})", ban.reason)
                    }
                )
                .as_bytes(),
            )
        }
        Some(Action::Load(load)) => {
            let (name, text) = if load.file.as_os_str() == "-" {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                    .context("reading the ban list from stdin")?;
                ("stdin".to_owned(), text)
            } else {
                let name = load.file.display().to_string();
                let text = std::fs::read_to_string(&load.file)
                    .with_context(|| format!("reading the ban list {name}"))?;
                (name, text)
            };
            let targets = parse_ban_list(&name, &text)?;
            let req = BulkAdd {
                bans: targets
                    .iter()
                    .map(|c| AddBan {
                        cidr: c.to_string(),
                        ttl_ms: ttl_ms(load.ttl),
                        reason: load.reason.clone(),
                    })
                    .collect(),
            };
            let json = serde_json::to_vec(&req).context("encoding the request")?;
            let body = rt
                .block_on(crate::cli::client::request(
                    &socket,
                    Method::POST,
                    BANS_BULK_PATH,
                    Some(json),
                ))
                .map_err(agent_error)?;
            let result: BulkResult = serde_json::from_slice(&body)
                .context("the agent's answer is not a bulk ban result")?;
            let mut out = format!(
                "banned {} of {} prefixes from {name} for {}\n",
                result.added,
                targets.len(),
                format_ms(ttl_ms(load.ttl))
            );
            for r in &result.refused {
                out.push_str(&format!("refused {}: {}\n", r.cidr, r.error));
            }
            write_stdout(out.as_bytes())?;
            if !result.refused.is_empty() {
                anyhow::bail!("{} of the bans were refused", result.refused.len());
            }
            Ok(())
        }
        Some(Action::Del(del)) => {
            let path = format!("{BANS_PATH}/{}", del.target);
            rt.block_on(crate::cli::client::request(
                &socket,
                Method::DELETE,
                &path,
                None,
            ))
            .map_err(agent_error)?;
            write_stdout(format!("removed the ban on {}\n", del.target).as_bytes())
        }
    }
}

/// A refusal from the agent becomes just its message (`hsmon: error: 127.0.0.1/32
/// is allowlisted ...`); other errors stay as they are.
fn agent_error(e: anyhow::Error) -> anyhow::Error {
    match e.downcast::<ApiError>() {
        Ok(api) if api.status.is_client_error() => anyhow::anyhow!(api.message),
        Ok(api) => anyhow::Error::new(api),
        Err(e) => e,
    }
}

/// A TTL in whole milliseconds, rounded up (so a positive TTL never becomes 0).
fn ttl_ms(ttl: Duration) -> u64 {
    let ms = ttl.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// `2m 5s` for 124,100 ms: whole seconds, rounded up; `0s` only at 0.
fn format_ms(ms: u64) -> String {
    humantime::format_duration(Duration::from_secs(ms.div_ceil(1000))).to_string()
}

/// The table `hsmon bans` prints: CIDR, REASON, EXPIRES IN.
pub fn render(bans: &[BanRecord]) -> String {
    if bans.is_empty() {
        return "no bans\n".to_owned();
    }
    let rows: Vec<[String; 3]> = bans
        .iter()
        .map(|b| {
            [
                b.cidr.to_string(),
                if b.reason.is_empty() {
                    "-".to_owned()
                } else {
                    b.reason.clone()
                },
                format_ms(b.expires_in_ms),
            ]
        })
        .collect();
    crate::cli::output::aligned_table(["CIDR", "REASON", "EXPIRES IN"], &rows, [false; 3], "")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Verb};
    use clap::error::ErrorKind;
    use clap::Parser as _;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("hsmon").chain(args.iter().copied()))
    }

    fn bans(args: &[&str]) -> Args {
        match parse(args).expect("parses").verb {
            Verb::Bans(a) => a,
            other => panic!("not bans: {other:?}"),
        }
    }

    #[test]
    fn list() {
        let a = bans(&["bans"]);
        assert!(a.action.is_none());
        assert!(!a.json);
        assert_eq!(a.socket, PathBuf::from(DEFAULT_SOCKET));
        let a = bans(&["bans", "--json", "--socket", "/tmp/s"]);
        assert!(a.json);
        assert_eq!(a.socket, PathBuf::from("/tmp/s"));
    }

    #[test]
    fn ban_list_files() {
        let text = "# bad hosts\n192.0.2.7\n\n  2001:db8::/48  # a net\n198.51.100.0/24\n";
        let got = parse_ban_list("list.txt", text).expect("parses");
        let want: Vec<Cidr> = ["192.0.2.7", "2001:db8::/48", "198.51.100.0/24"]
            .iter()
            .map(|s| parse_ban_target(s).expect("cidr"))
            .collect();
        assert_eq!(got, want);
        let e = parse_ban_list("list.txt", "192.0.2.7\nnot-an-address\n").expect_err("bad line");
        assert!(e.to_string().starts_with("list.txt:2: "), "{e}");
        let e = parse_ban_list("l", "0.0.0.0/0\n").expect_err("/0");
        assert!(e.to_string().starts_with("l:1: "), "{e}");
        assert!(parse_ban_list("l", "").expect("empty").is_empty());
        let many: String = (0..=MAX_BULK)
            .map(|i| format!("10.{}.{}.{}\n", i >> 16, (i >> 8) & 255, i & 255))
            .collect();
        assert!(parse_ban_list("l", &many).is_err());
    }

    #[test]
    fn load() {
        match parse(&[
            "bans",
            "load",
            "/tmp/list",
            "--ttl",
            "1h",
            "--reason",
            "feed",
        ])
        .expect("parses")
        .verb
        {
            Verb::Bans(Args {
                action: Some(Action::Load(l)),
                ..
            }) => {
                assert_eq!(l.file, PathBuf::from("/tmp/list"));
                assert_eq!(l.ttl, Duration::from_secs(3600));
                assert_eq!(l.reason, "feed");
            }
            other => panic!("not bans load: {other:?}"),
        }
        let e = parse(&["bans", "load"]).expect_err("no file");
        assert_eq!(e.kind(), ErrorKind::MissingRequiredArgument);
        let e = parse(&["bans", "load", "f", "--ttl", "-3s"]).expect_err("negative ttl");
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn add_and_del() {
        let a = bans(&[
            "bans", "add", "10.1.2.3", "--ttl", "3s", "--reason", "test", "--socket", "/tmp/s",
        ]);
        assert_eq!(a.socket, PathBuf::from("/tmp/s"));
        let Some(Action::Add(add)) = a.action else {
            panic!("not add")
        };
        assert_eq!(add.target.to_string(), "10.1.2.3/32");
        assert_eq!(add.ttl, Duration::from_secs(3));
        assert_eq!(add.reason, "test");

        let Some(Action::Add(add)) = bans(&["bans", "add", "2001:db8::/32"]).action else {
            panic!("not add")
        };
        assert_eq!(add.ttl, Duration::from_secs(600));
        assert_eq!(add.reason, "");
        assert_eq!(add.target.to_string(), "2001:db8::/32");

        let Some(Action::Del(del)) = bans(&["bans", "del", "10.0.0.7/24"]).action else {
            panic!("not del")
        };
        assert_eq!(del.target.to_string(), "10.0.0.0/24");
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        for bad in [
            &["bans", "add", "example.com"][..],
            &["bans", "add", "10.0.0.0/0"],
            &["bans", "add", "::/0"],
            &["bans", "add", "10.0.0.0/33"],
            &["bans", "add", "2001:db8::/129"],
            &["bans", "add", "10.0.0.1", "--ttl", "-5s"],
            &["bans", "add", "10.0.0.1", "--ttl", "0s"],
            &["bans", "add", "10.0.0.1", "--ttl", "0"],
            &["bans", "add", "10.0.0.1", "--ttl", "soon"],
            &["bans", "add", "10.0.0.1", "--ttl", "25h"],
            &["bans", "add", "10.0.0.1", "--reason", "a\nb"],
            &["bans", "add"],
            &["bans", "del"],
            &["bans", "del", "nope"],
            &["bans", "--json", "add", "10.0.0.1"],
            &["bans", "frob"],
        ] {
            let err = parse(bad).expect_err(&format!("{bad:?} should not parse"));
            assert_ne!(err.kind(), ErrorKind::DisplayHelp, "{bad:?}");
            assert_eq!(err.exit_code(), 2, "{bad:?}: {err}");
        }
    }

    #[test]
    fn run_allow() {
        let cli = parse(&["run", "--allow", "10.0.0.9/8", "--allow", "::/0"]).expect("parses");
        let Verb::Run(args) = cli.verb else {
            panic!("not run")
        };
        let allow: Vec<String> = args.allow.iter().map(ToString::to_string).collect();
        assert_eq!(allow, ["10.0.0.0/8", "::/0"]);
        assert!(parse(&["run"]).is_ok_and(|c| matches!(c.verb, Verb::Run(a) if a.allow.is_empty())));
        for bad in ["nope", "10.0.0.0/33", ""] {
            let err = parse(&["run", "--allow", bad]).expect_err(bad);
            assert_eq!(err.exit_code(), 2, "{bad}: {err}");
        }
    }

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_ttl("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_ttl("24h"), Ok(MAX_TTL));
        assert!(parse_ttl("24h 1s").is_err());
        assert!(parse_ttl("-1s").unwrap_err().contains("negative"));
        assert!(parse_ttl("0ms").unwrap_err().contains("zero"));
        assert_eq!(ttl_ms(Duration::from_nanos(1)), 1);
        assert_eq!(ttl_ms(Duration::from_secs(3)), 3000);
    }

    #[test]
    fn reasons() {
        assert!(check_reason("").is_ok());
        assert!(check_reason("handshake flood ünïcode").is_ok());
        assert!(check_reason(&"x".repeat(MAX_REASON_CHARS)).is_ok());
        assert!(check_reason(&"x".repeat(MAX_REASON_CHARS + 1)).is_err());
        assert!(check_reason("tab\there").is_err());
    }

    #[test]
    fn table() {
        let b = |cidr: &str, reason: &str, ms| BanRecord {
            cidr: cidr.parse().expect("cidr"),
            reason: reason.to_owned(),
            expires_in_ms: ms,
            added_by: ADDED_BY_MANUAL.to_owned(),
        };
        let t = render(&[
            b("10.0.0.0/24", "flood", 124_100),
            b("2001:db8::1", "", 999),
        ]);
        let expected = "\
CIDR             REASON  EXPIRES IN
10.0.0.0/24      flood   2m 5s
2001:db8::1/128  -       1s
";
        assert_eq!(t, expected);
        assert_eq!(render(&[]), "no bans\n");
    }

    #[test]
    fn json_shape() {
        let r = BanRecord {
            cidr: "10.0.0.1".parse().expect("cidr"),
            reason: "x".into(),
            expires_in_ms: 5,
            added_by: ADDED_BY_MANUAL.into(),
        };
        assert_eq!(
            serde_json::to_value(&r).expect("json"),
            serde_json::json!({"cidr": "10.0.0.1/32", "reason": "x", "expires_in_ms": 5, "added_by": "manual"})
        );
    }

    #[test]
    fn refusals_print_only_the_agents_message() {
        let e = anyhow::Error::new(ApiError {
            path: BANS_PATH.into(),
            status: hyper::StatusCode::CONFLICT,
            message: "127.0.0.1/32 is allowlisted".into(),
        });
        assert_eq!(agent_error(e).to_string(), "127.0.0.1/32 is allowlisted");
        let e = anyhow::Error::new(ApiError {
            path: BANS_PATH.into(),
            status: hyper::StatusCode::INTERNAL_SERVER_ERROR,
            message: "map".into(),
        });
        assert!(agent_error(e).to_string().contains("500"));
    }
}
