//! `hsmon cleanup`: removes everything a persistent agent leaves behind —
//! the pinned links (which detaches the programs), the pinned maps (bans and
//! counters), the clsact filters and qdiscs hsmon added (named in the state
//! file), the pin directory and the state file. Refuses while an agent runs
//! on that pin directory (it holds the directory's lock, or its control
//! socket answers) unless `--force`. Idempotent: with nothing left it says
//! so and succeeds.

use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::agent::persist::state_file::{self, SavedState};

/// Arguments of `hsmon cleanup`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The agent's pin directory (`hsmon run --pin-dir`).
    #[arg(long, value_name = "DIR", default_value = crate::agent::persist::pins::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    /// The agent's state file (`hsmon run --state-file`).
    #[arg(long, value_name = "PATH", default_value = state_file::DEFAULT_STATE_FILE)]
    pub state_file: PathBuf,
    /// The agent's control socket: cleanup refuses while it answers.
    #[command(flatten)]
    pub socket: crate::config::SocketArg,
    /// Remove everything even while an agent runs (it then stops enforcing).
    #[arg(long)]
    pub force: bool,
}

/// Why cleanup must not run now, if an agent is running on this state.
fn agent_running(args: &Args, saved: Option<&SavedState>) -> Option<String> {
    if let Ok(dir) = std::fs::File::open(&args.pin_dir) {
        // SAFETY: flock on a descriptor we own; released when `dir` closes.
        let rc = unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Some(format!(
                "an agent holds the pin directory {}",
                args.pin_dir.display()
            ));
        }
    }
    let mut sockets = vec![args.socket.socket.clone()];
    if let Some(s) = saved.filter(|s| !s.socket.is_empty()) {
        sockets.push(PathBuf::from(&s.socket));
    }
    sockets
        .into_iter()
        .find(|s| std::os::unix::net::UnixStream::connect(s).is_ok())
        .map(|s| format!("an agent answers on {}", s.display()))
}

/// The state file's content, whatever boot wrote it (a bad file: none).
fn read_state(path: &Path) -> Option<SavedState> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// Runs `hsmon cleanup`.
pub fn run(args: Args) -> Result<()> {
    let saved = read_state(&args.state_file);
    if let Some(why) = agent_running(&args, saved.as_ref()) {
        if !args.force {
            bail!("{why}: stop it first (or use --force; its bans then stop being enforced)");
        }
        eprintln!("hsmon cleanup: --force: {why}; removing its state anyway");
    }
    let removed =
        crate::agent::persist::remove_all(&args.pin_dir, &args.state_file, saved.as_ref())?;
    if removed.is_empty() {
        println!("nothing to remove");
    } else {
        for line in removed {
            println!("removed {line}");
        }
    }
    Ok(())
}
