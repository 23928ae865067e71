//! Who may use the control socket: the agent creates it with mode 0660 and
//! the group `--socket-group` names (a group this test creates with a unique
//! name and deletes on exit, also on failure), and checks every request's
//! `SO_PEERCRED`.
//!
//! The CLI runs as `nobody` through `setpriv`:
//! - without the group: refused by the file mode, with a message naming the
//!   socket and who may use it (exit 1);
//! - with the group as a supplementary group: served;
//! - without the group, after the test opened the file to everyone (0666):
//!   refused by the agent's credential check (403, exit 1), with the uid and
//!   the group named.

use anyhow::{bail, ensure, Context, Result};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tests::cmd::{output_within, run_ok};
use tests::hsmon::hsmon_bin;
use tests::scenario::with_scenario_agent_args;

/// A group created for this test, deleted when dropped.
struct TempGroup {
    name: String,
    gid: u32,
}

impl TempGroup {
    fn create() -> Result<Self> {
        let name = format!("hsmt{}", std::process::id());
        let mut c = Command::new("groupadd");
        c.arg(&name);
        run_ok(&mut c, Duration::from_secs(10)).context("groupadd (package passwd)")?;
        let mut group = TempGroup { name, gid: 0 };
        let mut c = Command::new("getent");
        c.args(["group", &group.name]);
        let line = run_ok(&mut c, Duration::from_secs(5))?;
        group.gid = line
            .trim()
            .split(':')
            .nth(2)
            .and_then(|g| g.parse().ok())
            .with_context(|| format!("getent group {}: {line:?}", group.name))?;
        Ok(group)
    }
}

impl Drop for TempGroup {
    fn drop(&mut self) {
        let mut c = Command::new("groupdel");
        c.arg(&self.name);
        if let Err(e) = run_ok(&mut c, Duration::from_secs(10)) {
            eprintln!("removing the test group {}: {e:#}", self.name);
        }
    }
}

/// `hsmon status --json --socket SOCKET` as nobody, with `groups`
/// (comma-separated gids) as its supplementary groups or none.
fn status_as_nobody(
    bin: &Path,
    socket: &Path,
    groups: Option<u32>,
) -> Result<std::process::Output> {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=nobody", "--regid=nogroup"]);
    match groups {
        Some(g) => c.arg(format!("--groups={g}")),
        None => c.arg("--clear-groups"),
    };
    c.arg(bin)
        .args(["status", "--json", "--socket"])
        .arg(socket);
    output_within(&mut c, Duration::from_secs(15))
}

#[test]
fn only_root_and_the_group_may_use_the_socket() {
    if !tests::root::root_or_skip("socket_perm") {
        return;
    }
    let group = match TempGroup::create() {
        Ok(g) => g,
        Err(e) => panic!("{e:#}"),
    };
    let args = vec!["--socket-group".to_owned(), group.name.clone()];
    with_scenario_agent_args("socket-perm", &args, |sc| {
        let socket = sc.agent().context("no agent")?.socket.clone();
        // nobody must be able to reach the socket's directory and run the
        // binary: a copy in the test's own directory, opened to everyone.
        let dir = sc.dir.path();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .context("opening the test directory")?;
        let bin = dir.join("hsmon");
        std::fs::copy(hsmon_bin(), &bin).context("copying hsmon")?;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))?;

        let meta = std::fs::metadata(&socket).context("the socket file")?;
        ensure!(
            meta.mode() & 0o777 == 0o660,
            "socket mode {:o}",
            meta.mode() & 0o777
        );
        ensure!(
            meta.gid() == group.gid,
            "socket group {} != {}",
            meta.gid(),
            group.gid
        );

        // Not in the group: the file mode refuses, the CLI explains.
        let out = status_as_nobody(&bin, &socket, None)?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(out.status.code() == Some(1), "exit {:?}: {err}", out.status);
        ensure!(
            err.contains("permission denied opening the agent's control socket")
                && err.contains(&socket.display().to_string()),
            "unclear refusal: {err}"
        );

        // In the group: served.
        let out = status_as_nobody(&bin, &socket, Some(group.gid))?;
        ensure!(
            out.status.success(),
            "nobody in group {} was refused: {}",
            group.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("status JSON")?;
        ensure!(v["version"].is_string(), "{v}");

        // File opened to everyone: the agent's SO_PEERCRED check refuses.
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))?;
        let out = status_as_nobody(&bin, &socket, None)?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(out.status.code() == Some(1), "exit {:?}: {err}", out.status);
        if !(err.contains("403")
            && err.contains("may not use the hsmon control socket")
            && err.contains(&format!("group {}", group.name)))
        {
            bail!("the agent did not refuse clearly: {err}");
        }
        // Root still is served.
        sc.agent().context("no agent")?.cli(&["status", "--json"])?;
        Ok(())
    });
    drop(group);
}
