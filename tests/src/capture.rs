//! Packet capture on the server's veth, and tshark to read it back.
//!
//! tcpdump runs in the server namespace with `--immediate-mode -U` (without
//! immediate mode, packets still in the kernel's ring when tcpdump is
//! stopped never reach the file) and `-Z root` (so it can write into the
//! test's private directory). [`Capture::start`] returns once tcpdump
//! reports `listening on`; [`Capture::stop`] sends SIGINT and waits so the
//! file is complete.

use crate::cmd;
use crate::netns::NetPair;
use crate::process::Proc;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// tcpdump's closing counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// "N packets captured".
    pub captured: u64,
    /// "N packets dropped by kernel".
    pub dropped_by_kernel: u64,
}

/// A running tcpdump writing a pcap file.
#[derive(Debug)]
pub struct Capture {
    proc: Proc,
    /// The pcap file.
    pub pcap: PathBuf,
    stats: Option<CaptureStats>,
}

impl Capture {
    /// Starts `tcpdump -i SERVER_IF -w DIR/NAME.pcap tcp` in the server
    /// namespace and waits until it captures.
    pub fn start(net: &NetPair, dir: &Path, name: &str) -> Result<Self> {
        Self::start_in(&net.server_ns, &net.server_if, dir, name)
    }

    /// Like [`Capture::start`], on interface `iface` of namespace `ns`.
    pub fn start_in(ns: &str, iface: &str, dir: &Path, name: &str) -> Result<Self> {
        let pcap = dir.join(format!("{name}.pcap"));
        let mut c = crate::netns::ns_cmd(ns, "tcpdump");
        c.args([
            "-i",
            iface,
            "-n",
            "-U",
            "--immediate-mode",
            "-Z",
            "root",
            "-s",
            "0",
            "-w",
        ])
        .arg(&pcap)
        .arg("tcp");
        let mut proc = Proc::spawn(name, c, dir, false)?;
        proc.wait_for(
            "tcpdump's \"listening on\"",
            Duration::from_secs(15),
            |_, err| err.contains("listening on"),
        )?;
        Ok(Self {
            proc,
            pcap,
            stats: None,
        })
    }

    /// Stops tcpdump (SIGINT, SIGKILL after 5 s) and returns its counters.
    /// Idempotent.
    pub fn stop(&mut self) -> Result<CaptureStats> {
        if let Some(s) = self.stats {
            return Ok(s);
        }
        // Packets of the last exchange may still be on their way.
        std::thread::sleep(Duration::from_millis(200));
        let status = self.proc.stop(libc::SIGINT, Duration::from_secs(5));
        let err = self.proc.stderr();
        let stats = parse_stats(&err);
        if !status.success() && stats.is_none() {
            bail!("tcpdump exited with {status}\n{}", self.proc.logs(20));
        }
        let stats = stats.unwrap_or_default();
        self.stats = Some(stats);
        Ok(stats)
    }

    /// tcpdump's log.
    pub fn logs(&self) -> String {
        self.proc.logs(20)
    }
}

/// Reads tcpdump's closing lines.
pub fn parse_stats(stderr: &str) -> Option<CaptureStats> {
    let mut captured = None;
    let mut dropped = None;
    for line in stderr.lines() {
        let mut words = line.split_whitespace();
        let Some(n) = words.next().and_then(|w| w.parse::<u64>().ok()) else {
            continue;
        };
        let rest: Vec<&str> = words.collect();
        match rest.as_slice() {
            ["packets", "captured", ..] | ["packet", "captured", ..] => captured = Some(n),
            ["packets", "dropped", "by", "kernel", ..]
            | ["packet", "dropped", "by", "kernel", ..] => dropped = Some(n),
            _ => {}
        }
    }
    Some(CaptureStats {
        captured: captured?,
        dropped_by_kernel: dropped.unwrap_or(0),
    })
}

/// Runs tshark over `pcap` with the key log, decoding `tls_ports` as TLS, and
/// returns its JSON (`-T json --no-duplicate-keys`, layers ip, ipv6, tcp, tls
/// of every TCP packet). The text is also written to `json_out`.
pub fn tshark_json(
    pcap: &Path,
    keylog: Option<&Path>,
    tls_ports: &[u16],
    json_out: &Path,
) -> Result<String> {
    let mut c = Command::new("tshark");
    c.arg("-n").arg("-r").arg(pcap);
    if let Some(k) = keylog {
        c.arg("-o").arg(format!("tls.keylog_file:{}", k.display()));
    }
    for p in tls_ports {
        c.arg("-d").arg(format!("tcp.port=={p},tls"));
    }
    c.args([
        "-T",
        "json",
        "--no-duplicate-keys",
        "-J",
        "ip ipv6 tcp tls",
        "-Y",
        "tcp",
    ]);
    let out = cmd::output_within(&mut c, Duration::from_secs(120))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            cmd::describe(&c),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::write(json_out, &text).with_context(|| format!("writing {}", json_out.display()))?;
    Ok(text)
}

/// Concatenates key log files (missing ones are skipped) into `out`.
pub fn merge_keylogs(inputs: &[PathBuf], out: &Path) -> Result<()> {
    let mut all = String::new();
    for p in inputs {
        if let Ok(text) = std::fs::read_to_string(p) {
            all.push_str(&text);
            if !all.ends_with('\n') && !all.is_empty() {
                all.push('\n');
            }
        }
    }
    std::fs::write(out, all).with_context(|| format!("writing {}", out.display()))
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn tcpdump_stats() {
        let err = "tcpdump: listening on hsmt-srv, link-type EN10MB (Ethernet), snapshot length 262144 bytes\n\
                   12 packets captured\n12 packets received by filter\n0 packets dropped by kernel\n";
        assert_eq!(
            parse_stats(err),
            Some(CaptureStats {
                captured: 12,
                dropped_by_kernel: 0
            })
        );
        assert_eq!(parse_stats("tcpdump: listening on x\n"), None);
    }
}
