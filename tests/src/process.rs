//! A guard around a spawned child process.
//!
//! The child's stdout and stderr go to files in the test's directory (read
//! them at any time, e.g. to wait for a marker line); stdin is an optional
//! pipe the test writes lines to. On drop a still-running child is killed
//! with SIGKILL and reaped.

use crate::cmd;
use anyhow::{anyhow, bail, Context, Result};
use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A running child process with logged output; killed and reaped on drop.
#[derive(Debug)]
pub struct Proc {
    name: String,
    desc: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `cmd`, its stdout and stderr written to `logdir/NAME.stdout`
    /// and `logdir/NAME.stderr`; stdin is a pipe if `stdin_pipe`, else
    /// `/dev/null`.
    pub fn spawn(name: &str, mut cmd: Command, logdir: &Path, stdin_pipe: bool) -> Result<Self> {
        let desc = cmd::describe(&cmd);
        let stdout_path = logdir.join(format!("{name}.stdout"));
        let stderr_path = logdir.join(format!("{name}.stderr"));
        let out = File::create(&stdout_path)
            .with_context(|| format!("creating {}", stdout_path.display()))?;
        let err = File::create(&stderr_path)
            .with_context(|| format!("creating {}", stderr_path.display()))?;
        cmd.stdout(out).stderr(err);
        cmd.stdin(if stdin_pipe {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {name}: `{desc}`"))?;
        let stdin = child.stdin.take();
        Ok(Self {
            name: name.to_owned(),
            desc,
            child,
            stdin,
            stdout_path,
            stderr_path,
            status: None,
        })
    }

    /// The name given at spawn time.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id (with `ip netns exec` this is the program itself:
    /// `ip` execs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Path of the stdout log.
    pub fn stdout_path(&self) -> &Path {
        &self.stdout_path
    }

    /// Path of the stderr log.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// Everything the child wrote to stdout so far.
    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout_path)
    }

    /// Everything the child wrote to stderr so far.
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    /// Writes `line` and a newline to the child's stdin and flushes.
    pub fn write_line(&mut self, line: &str) -> Result<()> {
        let name = &self.name;
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("{name}: stdin is not a pipe or already closed"))?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .with_context(|| format!("{name}: writing {line:?} to stdin"))
    }

    /// Closes the child's stdin (the child reads EOF).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Whether the child still runs (reaps it if it has exited).
    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// The exit status if the child has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.status = Some(s);
            }
        }
        self.status
    }

    /// Waits up to `timeout` for the child to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        cmd::poll(timeout, Duration::from_millis(20), || self.try_status())
    }

    /// Waits until `pred(stdout, stderr)` holds, at most `timeout`. Fails
    /// early (with the logs) if the child exits before that.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&str, &str) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let exited = self.try_status();
            if pred(&self.stdout(), &self.stderr()) {
                return Ok(());
            }
            if let Some(status) = exited {
                bail!(
                    "{}: exited ({status}) before {what}\n{}",
                    self.name,
                    self.logs(40)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: no {what} within {timeout:?}\n{}",
                    self.name,
                    self.logs(40)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal`, waits up to `grace`, then SIGKILLs. Returns the exit
    /// status.
    pub fn stop(&mut self, signal: i32, grace: Duration) -> ExitStatus {
        if let Some(s) = self.try_status() {
            return s;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on the pid of our own unreaped child: the pid
            // cannot have been reused yet.
            unsafe {
                libc::kill(pid, signal);
            }
        }
        if let Some(s) = self.wait_exit(grace) {
            return s;
        }
        self.kill()
    }

    /// SIGKILLs and reaps the child.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(s) = self.try_status() {
            return s;
        }
        let _ = self.child.kill();
        match self.child.wait() {
            Ok(s) => {
                self.status = Some(s);
                s
            }
            // Only if already reaped, which try_status would have seen.
            Err(_) => self.status.unwrap_or_default(),
        }
    }

    /// The command line and the last `lines` lines of stdout and stderr.
    pub fn logs(&self, lines: usize) -> String {
        format!(
            "--- {} (pid {}): {}\n--- {} stdout (tail):\n{}--- {} stderr (tail):\n{}",
            self.name,
            self.child.id(),
            self.desc,
            self.name,
            tail(&self.stdout(), lines),
            self.name,
            tail(&self.stderr(), lines)
        )
    }

    /// Waits until something listens on TCP `addr` inside namespace `ns`
    /// (checked with `ss -ltn` there, so no connection is made that a
    /// capture or hsmon would see). Fails early if this process exits.
    pub fn wait_listening(&mut self, ns: &str, addr: SocketAddr, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                bail!(
                    "{}: exited ({status}) before listening on {addr}\n{}",
                    self.name,
                    self.logs(40)
                );
            }
            if is_listening(ns, addr)? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: not listening on {addr} in {ns} within {timeout:?}\n{}",
                    self.name,
                    self.logs(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stdin = None;
        self.kill();
    }
}

/// Whether a TCP socket listens on `addr` (or on the wildcard address of its
/// family with the same port) inside namespace `ns`.
pub fn is_listening(ns: &str, addr: SocketAddr) -> Result<bool> {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, "ss", "-Hltn"]);
    let out = cmd::run_ok(&mut c, Duration::from_secs(10))?;
    Ok(listening_in_ss(&out, addr))
}

/// Parses `ss -Hltn` output: is `addr` among the local addresses?
pub fn listening_in_ss(ss_output: &str, addr: SocketAddr) -> bool {
    ss_output.lines().any(|line| {
        let Some(local) = line.split_whitespace().nth(3) else {
            return false;
        };
        let Some((host, port)) = local.rsplit_once(':') else {
            return false;
        };
        if port.parse::<u16>().ok() != Some(addr.port()) {
            return false;
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host = host.split('%').next().unwrap_or(host);
        match host {
            "*" => true,
            "0.0.0.0" => addr.is_ipv4(),
            "::" => true,
            h => h.parse::<std::net::IpAddr>().ok() == Some(addr.ip()),
        }
    })
}

/// Reads a file as text, replacing invalid UTF-8; empty if unreadable.
pub fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last `n` lines of `text`, each ending in a newline.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    let mut s = String::new();
    for l in &lines[start..] {
        s.push_str(l);
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn ss_lines_match_exact_and_wildcard() {
        let out = "LISTEN 0 4096 10.200.0.1:4433 0.0.0.0:*\n\
                   LISTEN 0 511 [fd00:200::1]:8443 [::]:*\n\
                   LISTEN 0 128 *:9000 *:*\n";
        let v4: SocketAddr = "10.200.0.1:4433".parse().expect("addr");
        let v4_other: SocketAddr = "10.200.0.5:4433".parse().expect("addr");
        let v6: SocketAddr = "[fd00:200::1]:8443".parse().expect("addr");
        let any: SocketAddr = "[fd00:200::9]:9000".parse().expect("addr");
        let none: SocketAddr = "10.200.0.1:1".parse().expect("addr");
        assert!(listening_in_ss(out, v4));
        assert!(!listening_in_ss(out, v4_other));
        assert!(listening_in_ss(out, v6));
        assert!(listening_in_ss(out, any));
        assert!(!listening_in_ss(out, none));
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail("a", 5), "a\n");
        assert_eq!(tail("", 5), "");
    }
}
