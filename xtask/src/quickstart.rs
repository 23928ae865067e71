//! `cargo xtask quickstart-check`: the README's quick start, done the way a
//! person does it. The lines of its `# terminal N:` blocks are read from
//! README.md (so the README and the check cannot drift) and typed into tmux
//! windows (a private tmux server, `tmux -L hsmon-qs`): the agent in one,
//! the TLS server and client in a second, `hsmon top` in a third. Then `R`
//! and Enter is typed into the client four times, and the check asserts:
//! `hsmon top` counts the renegotiations, the 4th cuts the connection (the
//! client's window shows it end and its shell prompt return), and `hsmon
//! events` has the `reneg_cap` decision. Loopback only. On exit (also on
//! failure) the agent is stopped with Ctrl-C and `hsmon cleanup`, every
//! process the windows started is killed, and the tmux server is ended.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::setup::{self, Options as SetupOptions};
use crate::util;

/// The tmux server's socket name (`tmux -L`).
const SOCKET: &str = "hsmon-qs";
/// The tmux session.
const SESSION: &str = "qs";
/// The README section with the quick start's terminals.
const SECTION: &str = "### From nothing to `hsmon top` showing a live renegotiation";
/// The port the README's server listens on.
const PORT: &str = "4433";
/// Renegotiations the embedded policy allows per connection (the cap).
const CAP: usize = 3;

/// The lines of each `# terminal N: ...` block of the README's quick start,
/// as typed (continuation lines kept), comments dropped.
pub fn readme_terminals(readme: &str) -> Result<Vec<Vec<String>>> {
    let start = readme
        .find(SECTION)
        .with_context(|| format!("README.md has no section {SECTION:?}"))?;
    let block = readme[start..]
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .context("the quick start section has no ```sh block")?;
    let mut terminals: Vec<Vec<String>> = Vec::new();
    for line in block.lines() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("# terminal ") {
            let n: usize = rest
                .split(':')
                .next()
                .and_then(|n| n.trim().parse().ok())
                .with_context(|| format!("bad terminal heading {line:?}"))?;
            ensure!(n == terminals.len() + 1, "terminal {n} out of order");
            terminals.push(Vec::new());
        } else if trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        } else {
            terminals
                .last_mut()
                .with_context(|| format!("{line:?} comes before any `# terminal N:` heading"))?
                .push(line.to_string());
        }
    }
    ensure!(
        terminals.len() == 3 && terminals.iter().all(|t| !t.is_empty()),
        "the quick start must have three terminals with commands (agent, TLS peers, hsmon top), found {terminals:?}"
    );
    Ok(terminals)
}

/// Runs the check; prints what it saw.
pub fn quickstart_check() -> Result<()> {
    if !util::is_root() {
        bail!("quickstart-check needs root (the agent loads eBPF programs)");
    }
    setup::setup(SetupOptions { test_deps: true })?;
    let ws = util::workspace_root();
    let readme = std::fs::read_to_string(ws.join("README.md")).context("reading README.md")?;
    let terminals = readme_terminals(&readme)?;
    let hsmon = ws.join("target/release/hsmon");
    if status_answers(&hsmon) {
        bail!("an hsmon agent already answers on the default socket: stop it first");
    }
    let session = Tmux::start(&ws, &hsmon)?;
    let started = Instant::now();
    let result = drive(&session, &terminals, &hsmon);
    println!("quickstart-check: {:.0} s", started.elapsed().as_secs_f64());
    drop(session);
    result
}

fn drive(t: &Tmux, terminals: &[Vec<String>], hsmon: &Path) -> Result<()> {
    let [agent, peers, top] = ["agent", "peers", "top"];
    t.new_window(agent)?;
    t.type_lines(agent, &terminals[0])?;
    let ready = wait(Duration::from_secs(20 * 60), Duration::from_secs(2), || {
        status_answers(hsmon).then_some(())
    });
    if ready.is_none() {
        bail!(
            "the agent did not answer `hsmon status` within 20 min:\n{}",
            t.capture(agent)?
        );
    }
    println!("ok: the agent answers (typed {:?})", terminals[0]);

    t.new_window(peers)?;
    t.type_lines(peers, &terminals[1])?;
    wait(Duration::from_secs(60), Duration::from_millis(250), || {
        t.capture(peers)
            .ok()
            .filter(|s| s.contains("Verify return code"))
            .map(drop)
    })
    .with_context(|| {
        format!(
            "s_client did not connect:\n{}",
            t.capture(peers).unwrap_or_default()
        )
    })?;
    println!("ok: s_client connected to the README's s_server");

    t.new_window(top)?;
    t.type_lines(top, &terminals[2])?;

    for n in 1..=CAP + 1 {
        t.send(peers, &["R", "Enter"])?;
        if n <= CAP {
            // Counted in hsmon top, connection still open.
            let shown = wait(Duration::from_secs(20), Duration::from_millis(300), || {
                let screen = t.capture(top).ok()?;
                conn_renegotiations(&screen).filter(|r| *r >= n as u64)
            });
            let screen = t.capture(top)?;
            let Some(shown) = shown else {
                bail!("hsmon top does not show {n} renegotiation(s) on the connection:\n{screen}");
            };
            println!("ok: R #{n}: hsmon top shows RENEG {shown} on 127.0.0.1:{PORT}");
            ensure!(
                !client_ended(&t.capture(peers)?),
                "the connection ended after only {n} renegotiation(s):\n{}",
                t.capture(peers)?
            );
        } else {
            let ended = wait(Duration::from_secs(20), Duration::from_millis(250), || {
                t.capture(peers).ok().filter(|s| client_ended(s))
            });
            let Some(screen) = ended else {
                bail!(
                    "the 4th R did not cut the connection:\n{}",
                    t.capture(peers)?
                );
            };
            println!(
                "ok: R #{n} cut the connection; s_client's window ends with:\n{}",
                last_lines(&screen, 4)
            );
        }
    }
    println!("hsmon top's screen:\n{}", t.capture(top)?.trim_end());

    let events = util::probe(Command::new(hsmon).args(["events", "--json"]))
        .context("`hsmon events --json` failed")?;
    let decision = events
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["event"] == "decision" && e["rule"] == "reneg_cap")
        .with_context(|| format!("no reneg_cap decision in `hsmon events`:\n{events}"))?;
    println!("ok: hsmon events: {decision}");
    Ok(())
}

/// The RENEG column of `hsmon top`'s row for the README's connection
/// (`127.0.0.1:PORT -> 127.0.0.1:4433`).
fn conn_renegotiations(screen: &str) -> Option<u64> {
    let server = format!("127.0.0.1:{PORT}");
    screen.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() >= 5 && f[0].starts_with("127.0.0.1:") && f[1] == server)
            .then(|| f[4].parse().ok())
            .flatten()
    })
}

/// Whether s_client's window shows it ended: an error or closed line after
/// the last `RENEGOTIATING`, and the shell prompt back.
fn client_ended(screen: &str) -> bool {
    let Some(pos) = screen.rfind("RENEGOTIATING") else {
        return false;
    };
    let after = &screen[pos..];
    let closed = after.contains("errno=")
        || after.contains("closed")
        || after.contains("error")
        || after.contains("DONE");
    let prompt = screen
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .is_some_and(|l| l.trim_end().ends_with('#') || l.trim_end().ends_with('$'));
    closed && prompt
}

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Whether `hsmon status` (default socket) answers.
fn status_answers(hsmon: &Path) -> bool {
    hsmon.is_file() && util::succeeds(Command::new(hsmon).arg("status"))
}

/// Polls `f` until it returns `Some`, at most `timeout`.
fn wait<T>(timeout: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// The private tmux server; on drop it stops the agent cleanly, kills what
/// the windows started and ends the server.
struct Tmux {
    dir: PathBuf,
    hsmon: PathBuf,
}

impl Tmux {
    fn start(dir: &Path, hsmon: &Path) -> Result<Self> {
        // A server left by an interrupted run.
        let _ = tmux(&["kill-server"]);
        let mut c = tmux_cmd(&[
            "new-session",
            "-d",
            "-s",
            SESSION,
            "-x",
            "160",
            "-y",
            "50",
            "-c",
        ]);
        c.arg(dir);
        run_quiet(&mut c).context("starting tmux")?;
        Ok(Self {
            dir: dir.to_path_buf(),
            hsmon: hsmon.to_path_buf(),
        })
    }

    fn new_window(&self, name: &str) -> Result<()> {
        let mut c = tmux_cmd(&["new-window", "-t", SESSION, "-n", name, "-c"]);
        c.arg(&self.dir);
        run_quiet(&mut c).with_context(|| format!("opening tmux window {name}"))
    }

    fn target(name: &str) -> String {
        format!("{SESSION}:{name}")
    }

    /// Types `lines` into window `name` as a paste would: each line and
    /// Enter.
    fn type_lines(&self, name: &str, lines: &[String]) -> Result<()> {
        for line in lines {
            tmux(&["send-keys", "-t", &Self::target(name), "-l", line])?;
            tmux(&["send-keys", "-t", &Self::target(name), "Enter"])?;
        }
        Ok(())
    }

    fn send(&self, name: &str, keys: &[&str]) -> Result<()> {
        let target = Self::target(name);
        let mut args = vec!["send-keys", "-t", target.as_str()];
        args.extend_from_slice(keys);
        tmux(&args).map(drop)
    }

    /// The visible screen of window `name` plus its scrollback.
    fn capture(&self, name: &str) -> Result<String> {
        tmux(&[
            "capture-pane",
            "-p",
            "-J",
            "-S",
            "-200",
            "-t",
            &Self::target(name),
        ])
    }

    /// Pids of the windows' shells and everything below them.
    fn descendants(&self) -> Vec<i32> {
        let roots: Vec<i32> = tmux(&["list-panes", "-s", "-t", SESSION, "-F", "#{pane_pid}"])
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        let parents = parent_map();
        let mut out = roots.clone();
        let mut k = 0;
        while k < out.len() {
            let p = out[k];
            out.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
            k += 1;
        }
        out
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // `q` quits hsmon top; Ctrl-C is a clean stop of the agent, which
        // then leaves its pins (removed by `hsmon cleanup` below).
        let _ = self.send("top", &["q"]);
        let _ = self.send("agent", &["C-c"]);
        let stopped = wait(Duration::from_secs(30), Duration::from_millis(250), || {
            let running = self.descendants().into_iter().any(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim() == "hsmon")
            });
            (!running).then_some(())
        });
        if stopped.is_none() {
            eprintln!("quickstart-check: an hsmon still runs 30 s after Ctrl-C / q; killing it");
        }
        let pids = self.descendants();
        for (signal, pause) in [(libc::SIGTERM, 500), (libc::SIGKILL, 200)] {
            for pid in &pids {
                // SAFETY: kill(2) on processes below this session's panes,
                // which this check started.
                unsafe {
                    libc::kill(*pid, signal);
                }
            }
            std::thread::sleep(Duration::from_millis(pause));
        }
        if self.hsmon.is_file() {
            if let Err(e) = util::run(Command::new(&self.hsmon).arg("cleanup")) {
                eprintln!("quickstart-check: hsmon cleanup: {e:#}");
            }
        }
        let _ = tmux(&["kill-server"]);
    }
}

/// `tmux -L SOCKET ARGS`.
fn tmux_cmd(args: &[&str]) -> Command {
    let mut c = Command::new("tmux");
    c.args(["-L", SOCKET]).args(args);
    c
}

/// Runs `tmux -L SOCKET ARGS`; returns stdout.
fn tmux(args: &[&str]) -> Result<String> {
    let out = tmux_cmd(args)
        .output()
        .with_context(|| format!("running tmux {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "tmux {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_quiet(c: &mut Command) -> Result<()> {
    let out = c.output().context("starting tmux")?;
    if !out.status.success() {
        bail!(
            "{}: {}",
            util::describe(c),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// (pid, parent pid) of every process.
fn parent_map() -> Vec<(i32, i32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // `pid (comm) state ppid ...`: comm may contain spaces.
            let rest = &stat[stat.rfind(')')? + 2..];
            let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readme_has_three_terminals() {
        let readme =
            std::fs::read_to_string(util::workspace_root().join("README.md")).expect("README");
        let t = readme_terminals(&readme).expect("parsed");
        assert_eq!(t[0], ["cargo xtask run"]);
        assert!(t[1].iter().any(|l| l.contains("openssl s_client")), "{t:?}");
        assert!(
            t[1].iter()
                .any(|l| l.starts_with("sleep infinity | openssl s_server")),
            "the server's stdin must be a pipe that stays open: {t:?}"
        );
        assert_eq!(t[2], ["target/release/hsmon top"]);
    }

    #[test]
    fn terminal_blocks_parse() {
        let md = format!("{SECTION}\n\n```sh\n# terminal 1: a\nrun\n\n# terminal 2: b\nx \\\n  y\n# note\n# terminal 3: c\ntop\n```\n");
        let t = readme_terminals(&md).expect("parsed");
        assert_eq!(
            t,
            vec![
                vec!["run".to_string()],
                vec!["x \\".into(), "  y".into()],
                vec!["top".into()]
            ]
        );
        assert!(readme_terminals("no section").is_err());
    }

    #[test]
    fn top_row_parsing() {
        let screen = "CLIENT           SERVER          VER  RENEG/S  RENEG  HS/S  HS  STATE  PROCESS\n\
                      127.0.0.1:51442  127.0.0.1:4433  1.2     2.00     14  2.00  15  open   s_server/4242\n";
        assert_eq!(conn_renegotiations(screen), Some(14));
        assert_eq!(
            conn_renegotiations("PEER RENEG/S\n127.0.0.1 2.00 14\n"),
            None
        );
    }

    #[test]
    fn client_end_needs_error_and_prompt() {
        assert!(client_ended(
            "R\nRENEGOTIATING\nread:errno=104\nroot@host:/w# \n"
        ));
        assert!(!client_ended("R\nRENEGOTIATING\n"));
        assert!(!client_ended("R\nRENEGOTIATING\nread:errno=104\n"));
    }
}
