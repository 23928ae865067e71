//! Load for the load tests: an nginx sized for many connections, a Python
//! asyncio client that holds thousands of TLS connections open, and
//! `h2load` (nghttp2-client) for a handshake flood. Everything runs in the
//! test's namespaces and is stopped when dropped (the processes are
//! [`Proc`]s; the namespaces' drop kills anything left).

use crate::cert::TestCert;
use crate::netns::NetPair;
use crate::process::Proc;
use crate::pyssl::python;
use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Starts nginx sized for `conns` concurrent TLS connections
/// ([`crate::nginx::NginxConfig::load`]) in the server namespace and waits
/// until it listens.
pub fn start_nginx(
    net: &NetPair,
    dir: &Path,
    cert: &TestCert,
    addr: SocketAddr,
    conns: usize,
) -> Result<Proc> {
    let cfg = crate::nginx::NginxConfig::load(conns);
    let (proc, _conf) = crate::nginx::spawn(net, dir, cert, addr, "nginx-load", &cfg)?;
    Ok(proc)
}

/// The holding client: opens N TLS connections (at most C handshakes in
/// flight), prints `OPENED ok=N failed=M`, waits for a line on stdin,
/// closes them all and prints `CLOSED`.
pub const HOLD_SCRIPT: &str = r#"import asyncio, resource, ssl, sys

host, port, n, conc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
want = n + 1024
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if soft < want:
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, soft), max(want, hard)))
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE

async def main():
    sem = asyncio.Semaphore(conc)
    writers = []
    failed = [0]
    async def one():
        async with sem:
            try:
                _, w = await asyncio.wait_for(
                    asyncio.open_connection(host, port, ssl=ctx), 60)
                writers.append(w)
            except Exception as e:
                failed[0] += 1
                if failed[0] <= 5:
                    print("FAIL", repr(e), flush=True)
    await asyncio.gather(*(one() for _ in range(n)))
    print("OPENED ok=%d failed=%d" % (len(writers), failed[0]), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    for w in writers:
        w.close()
    for w in writers:
        try:
            await asyncio.wait_for(w.wait_closed(), 5)
        except Exception:
            pass
    print("CLOSED", len(writers), flush=True)

asyncio.run(main())
"#;

/// Starts the holding client for `n` connections, `conc` handshakes at a time.
pub fn start_holder(
    net: &NetPair,
    dir: &Path,
    addr: SocketAddr,
    n: usize,
    conc: usize,
) -> Result<Proc> {
    let script = dir.join("hold_many.py");
    std::fs::write(&script, HOLD_SCRIPT)
        .with_context(|| format!("writing {}", script.display()))?;
    let mut c = net.client_cmd(python());
    c.arg(&script)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg(n.to_string())
        .arg(conc.to_string());
    Proc::spawn("holder", c, dir, true)
}

/// `ok` and `failed` of the holder's `OPENED ok=N failed=M` line.
pub fn opened_counts(stdout: &str) -> Option<(usize, usize)> {
    crate::tlsclient::ok_failed_counts(stdout, "OPENED")
}

/// What h2load reported.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct H2loadResult {
    /// Seconds the run took (`finished in N.NNs`).
    pub secs: f64,
    /// Requests succeeded (one per connection here).
    pub succeeded: u64,
    /// Requests failed.
    pub failed: u64,
    /// Requests errored.
    pub errored: u64,
}

/// Parses h2load's `requests: N total, N started, N done, N succeeded, N
/// failed, N errored, N timeout` line.
pub fn parse_h2load(out: &str) -> Option<H2loadResult> {
    let secs = out
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))?
        .split(',')
        .next()
        .and_then(parse_h2load_duration)?;
    let line = out.lines().find(|l| l.starts_with("requests:"))?;
    let field = |name: &str| -> Option<u64> {
        line.split(',')
            .find(|p| p.trim().ends_with(name))?
            .split_whitespace()
            .find_map(|w| w.parse().ok())
    };
    Some(H2loadResult {
        secs,
        succeeded: field("succeeded")?,
        failed: field("failed")?,
        errored: field("errored")?,
    })
}

/// Parses one of h2load's durations (`993.14ms`, `2.00s`, `850us`) into
/// seconds. h2load picks the unit by size, so a fast run prints `ms`.
fn parse_h2load_duration(text: &str) -> Option<f64> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else {
        return None;
    };
    number.trim().parse::<f64>().ok().map(|n| n * scale)
}

/// Runs h2load from the client namespace as a closed loop: `clients`
/// clients, each sending one request per connection (`Connection: close`,
/// so the server closes and the client reconnects at once) until `requests`
/// requests are done: as many handshakes per second as the machine sustains.
/// Waits at most `timeout`.
pub fn h2load_closed_loop(
    net: &NetPair,
    dir: &Path,
    addr: SocketAddr,
    requests: u64,
    clients: u64,
    timeout: Duration,
) -> Result<(H2loadResult, String)> {
    let mut c = net.client_cmd("h2load");
    c.arg("--h1")
        .arg("-n")
        .arg(requests.to_string())
        .arg("-c")
        .arg(clients.to_string())
        .arg("-t")
        .arg("1")
        .args(["-H", "Connection: close"])
        .arg(format!("https://{addr}/"));
    run_h2load(c, dir, timeout)
}

/// Spawns the prepared h2load command, waits for it and parses its summary.
fn run_h2load(
    c: std::process::Command,
    dir: &Path,
    timeout: Duration,
) -> Result<(H2loadResult, String)> {
    let mut p = Proc::spawn("h2load", c, dir, false)?;
    if p.wait_exit(timeout).is_none() {
        bail!("h2load did not finish within {timeout:?}\n{}", p.logs(20));
    }
    let out = p.stdout();
    let r = parse_h2load(&out)
        .with_context(|| format!("no summary in h2load's output\n{}", p.logs(40)))?;
    Ok((r, out))
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn parses_h2load_and_holder_lines() {
        let out = "finished in 2.00s, 500.00 req/s, 1KB/s\n\
                   requests: 1000 total, 1000 started, 1000 done, 998 succeeded, 2 failed, 0 errored, 0 timeout\n";
        assert_eq!(
            parse_h2load(out),
            Some(H2loadResult {
                secs: 2.0,
                succeeded: 998,
                failed: 2,
                errored: 0
            })
        );
        assert_eq!(parse_h2load("nothing"), None);
        let fast = "finished in 993.14ms, 1510.36 req/s, 0B/s\n\
                    requests: 1500 total, 1500 started, 1500 done, 1500 succeeded, 0 failed, 0 errored, 0 timeout\n";
        let r = parse_h2load(fast).expect("a sub-second run parses");
        assert!((r.secs - 0.99314).abs() < 1e-9, "{}", r.secs);
        assert_eq!(parse_h2load_duration("850us"), Some(850e-6));
        assert_eq!(parse_h2load_duration("12 parsecs"), None);
        assert_eq!(opened_counts("x\nOPENED ok=10 failed=0\n"), Some((10, 0)));
    }
}
