//! A real Prometheus (Debian's `/usr/bin/prometheus`) scraping the agent,
//! and a minimal HTTP GET for talking to it and to the agent's `/metrics`
//! from inside a namespace.
//!
//! Prometheus runs in the server namespace (`ip netns exec`) with a config,
//! its TSDB and its logs in the test's temporary directory, scraping one
//! target every second as job `hsmon` and loading the shipped alert rules
//! (`monitor/dist/hsmon.rules.yml`). It listens on 127.0.0.1 inside that
//! namespace only. It is stopped with SIGTERM (SIGKILL after 5 s) on drop.

use crate::netns::{in_netns, NetPair};
use crate::process::Proc;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The Prometheus binary of Debian's `prometheus` package.
pub const PROMETHEUS_BIN: &str = "/usr/bin/prometheus";

/// The shipped alert rules.
pub fn rules_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new(env!("CARGO_MANIFEST_DIR")))
        .join("monitor/dist/hsmon.rules.yml")
}

/// An HTTP answer.
#[derive(Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Header lines, as sent.
    pub headers: String,
    /// Body, lossily decoded.
    pub body: String,
}

impl HttpResponse {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// `GET path` (HTTP/1.0) to `addr`, from inside namespace `ns`, bounded by
/// `timeout`.
pub fn http_get(ns: &str, addr: SocketAddr, path: &str, timeout: Duration) -> Result<HttpResponse> {
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: */*\r\n\r\n");
    let raw = in_netns(ns, move || -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        s.write_all(request.as_bytes())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)?;
        Ok(buf)
    })?
    .with_context(|| format!("GET http://{addr}{path} in {ns}"))?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("GET http://{addr}{path}: no end of headers in {text:?}"))?;
    let (status_line, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| anyhow!("GET http://{addr}{path}: bad status line {status_line:?}"))?;
    Ok(HttpResponse {
        status,
        headers: headers.to_owned(),
        body: body.to_owned(),
    })
}

/// Percent-encodes `s` for a URL query value.
pub fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A running Prometheus in the server namespace.
#[derive(Debug)]
pub struct Prometheus {
    /// The process (`ip netns exec NS prometheus ...` execs Prometheus).
    pub proc: Proc,
    /// The namespace it runs in.
    pub ns: String,
    /// Its web address (inside `ns`).
    pub web: SocketAddr,
}

impl Prometheus {
    /// Writes `dir/prometheus.yml` (scrape `target` every second as job
    /// `hsmon`, load the shipped rules), starts Prometheus in the server
    /// namespace with its TSDB in `dir/prometheus-data`, listening on `web`,
    /// and waits until it listens (at most 30 s).
    pub fn start(net: &NetPair, dir: &Path, target: SocketAddr, web: SocketAddr) -> Result<Self> {
        if !Path::new(PROMETHEUS_BIN).is_file() {
            bail!("{PROMETHEUS_BIN} not found: install Debian's `prometheus` package (`cargo xtask setup --test-deps`)");
        }
        let config = dir.join("prometheus.yml");
        let rules = rules_file();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules}\n\
                 scrape_configs:\n  - job_name: hsmon\n    static_configs:\n      - targets: ['{target}']\n",
                rules = rules.display()
            ),
        )
        .with_context(|| format!("writing {}", config.display()))?;
        let data = dir.join("prometheus-data");
        let mut c: Command = net.server_cmd(PROMETHEUS_BIN);
        c.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address={web}"))
            .arg("--log.level=info");
        let mut proc = Proc::spawn("prometheus", c, dir, false)?;
        proc.wait_listening(&net.server_ns, web, Duration::from_secs(30))?;
        Ok(Self {
            proc,
            ns: net.server_ns.clone(),
            web,
        })
    }

    /// `GET /api/v1/...` on Prometheus; the `data` of a successful answer.
    pub fn api(&self, path_and_query: &str) -> Result<Value> {
        let r = http_get(&self.ns, self.web, path_and_query, Duration::from_secs(5))?;
        let v: Value = serde_json::from_str(&r.body)
            .with_context(|| format!("Prometheus {path_and_query}: not JSON: {}", r.body))?;
        if r.status != 200 || v["status"] != "success" {
            bail!("Prometheus {path_and_query}: HTTP {}: {}", r.status, r.body);
        }
        Ok(v["data"].clone())
    }

    /// An instant query: every sample as (labels, value).
    pub fn query(&self, promql: &str) -> Result<Vec<(Value, f64)>> {
        let data = self.api(&format!("/api/v1/query?query={}", url_encode(promql)))?;
        let result = data["result"]
            .as_array()
            .ok_or_else(|| anyhow!("query {promql}: no result array: {data}"))?;
        result
            .iter()
            .map(|s| {
                let v = s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .ok_or_else(|| anyhow!("query {promql}: bad sample {s}"))?;
                Ok((s["metric"].clone(), v))
            })
            .collect()
    }

    /// The single value of `promql`, if the query returns exactly one sample.
    pub fn value(&self, promql: &str) -> Result<Option<f64>> {
        let samples = self.query(promql)?;
        Ok(match samples.as_slice() {
            [(_, v)] => Some(*v),
            _ => None,
        })
    }

    /// Waits (at most `timeout`, polling every 500 ms) until `promql` has
    /// the single value `want`; fails with the last value seen.
    pub fn wait_value(&mut self, promql: &str, want: f64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.proc.try_status() {
                bail!("prometheus exited ({status})\n{}", self.proc.logs(40));
            }
            let last = self.value(promql);
            if matches!(last, Ok(Some(v)) if v == want) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "Prometheus: {promql} is not {want} within {timeout:?}; last: {last:?}\n{}",
                    self.proc.logs(20)
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// SIGTERM, SIGKILL after 5 s.
    pub fn stop(&mut self) {
        self.proc.stop(libc::SIGTERM, Duration::from_secs(5));
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn encodes_promql() {
        assert_eq!(
            url_encode("hsmon_renegotiations_total{initiator=\"client\"}"),
            "hsmon_renegotiations_total%7Binitiator%3D%22client%22%7D"
        );
    }

    #[test]
    fn rules_file_is_shipped() {
        assert!(rules_file().is_file(), "{}", rules_file().display());
    }
}
