//! nginx as a TLS server: a generated config in the test's directory, run in
//! the foreground (`daemon off`, `master_process off`) in the server
//! namespace. nginx refuses client-initiated renegotiation
//! (`SSL_OP_NO_RENEGOTIATION`): it answers the renegotiation ClientHello with
//! a no_renegotiation warning alert.

use crate::cert::TestCert;
use crate::netns::NetPair;
use crate::process::Proc;
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A running nginx.
#[derive(Debug)]
pub struct Nginx {
    /// The process.
    pub proc: Proc,
    /// Where it listens (`listen ADDR ssl`).
    pub addr: SocketAddr,
    /// The generated config file.
    pub conf: PathBuf,
}

/// Options of the generated nginx config: one TLS server (TLS 1.2 and
/// 1.3), one worker, every file nginx writes kept under its prefix. The one
/// config builder of the test crate: [`Nginx`] (behaviour tests),
/// `loadgen::start_nginx` (many held connections) and the `bench_nginx`
/// example (handshake rate and bulk throughput) differ only in these
/// options ([`NginxConfig::test`], [`NginxConfig::load`],
/// [`NginxConfig::bench`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NginxConfig {
    /// `master_process on` (the started process forks one worker).
    pub master: bool,
    /// `error_log` level (`info`, `warn`).
    pub error_level: &'static str,
    /// Write `access.log` (off: `access_log off`).
    pub access_log: bool,
    /// `events { worker_connections N; }`.
    pub worker_connections: usize,
    /// `worker_rlimit_nofile N`.
    pub rlimit_nofile: Option<usize>,
    /// `listen ... backlog=N`.
    pub backlog: Option<u32>,
    /// `keepalive_timeout` (nginx's default 75s when `None`).
    pub keepalive_timeout: Option<&'static str>,
    /// `client_header_timeout`.
    pub client_header_timeout: Option<&'static str>,
    /// `keepalive_requests` (nginx's default 1000 when `None`).
    pub keepalive_requests: Option<u64>,
    /// `ssl_session_cache off; ssl_session_tickets off;`: every handshake
    /// full.
    pub no_resumption: bool,
    /// Serve `PREFIX/www/big` at `/big` ([`spawn`] writes it: 1 MiB).
    pub big_file: bool,
    /// The body of `GET /` (`return 200`), a newline appended.
    pub body: &'static str,
}

/// Size of the file [`spawn`] writes for [`NginxConfig::big_file`].
pub const BIG_FILE_BYTES: usize = 1 << 20;

impl NginxConfig {
    /// For the behaviour tests: few connections, `info` error log, access
    /// log on, `GET /` answers `hello from nginx`.
    pub fn test() -> Self {
        NginxConfig {
            master: false,
            error_level: "info",
            access_log: true,
            worker_connections: 128,
            rlimit_nofile: None,
            backlog: None,
            keepalive_timeout: Some("30s"),
            client_header_timeout: None,
            keepalive_requests: None,
            no_resumption: false,
            big_file: false,
            body: "hello from nginx",
        }
    }

    /// For `conns` concurrent TLS connections: the file limit raised, a
    /// long listen backlog, idle and handshake timeouts long enough to hold
    /// them, no session resumption.
    pub fn load(conns: usize) -> Self {
        NginxConfig {
            error_level: "warn",
            worker_connections: conns * 2 + 1024,
            rlimit_nofile: Some(conns * 4 + 1024),
            backlog: Some(4096),
            keepalive_timeout: Some("300s"),
            client_header_timeout: Some("300s"),
            no_resumption: true,
            body: "ok",
            ..Self::test()
        }
    }

    /// For the benchmarks: no access log, keep-alive connections that are
    /// never closed by request count, and the 1 MiB file at `/big`.
    pub fn bench() -> Self {
        NginxConfig {
            error_level: "warn",
            access_log: false,
            worker_connections: 1024,
            keepalive_timeout: None,
            keepalive_requests: Some(1_000_000),
            big_file: true,
            body: "hello",
            ..Self::test()
        }
    }

    /// The config text for a server on `addr` with its files under
    /// `prefix`.
    pub fn render(&self, prefix: &Path, addr: SocketAddr, cert: &TestCert) -> String {
        let p = prefix.display();
        let mut main = format!(
            "daemon off;\nmaster_process {};\nworker_processes 1;\n",
            if self.master { "on" } else { "off" }
        );
        if let Some(n) = self.rlimit_nofile {
            main.push_str(&format!("worker_rlimit_nofile {n};\n"));
        }
        main.push_str(&format!(
            "pid {p}/nginx.pid;\nerror_log {p}/error.log {};\nevents {{ worker_connections {}; }}\n",
            self.error_level, self.worker_connections
        ));
        let mut http = String::new();
        if self.access_log {
            http.push_str(&format!("    access_log {p}/access.log;\n"));
        } else {
            http.push_str("    access_log off;\n");
        }
        for t in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            http.push_str(&format!("    {t}_temp_path {p}/{t};\n"));
        }
        if let Some(t) = self.client_header_timeout {
            http.push_str(&format!("    client_header_timeout {t};\n"));
        }
        let mut server = format!(
            "        listen {addr} ssl{};\n        ssl_certificate {};\n        ssl_certificate_key {};\n        ssl_protocols TLSv1.2 TLSv1.3;\n",
            self.backlog.map(|b| format!(" backlog={b}")).unwrap_or_default(),
            cert.cert.display(),
            cert.key.display(),
        );
        if self.no_resumption {
            server.push_str("        ssl_session_cache off;\n        ssl_session_tickets off;\n");
        }
        if let Some(t) = self.keepalive_timeout {
            server.push_str(&format!("        keepalive_timeout {t};\n"));
        }
        if let Some(n) = self.keepalive_requests {
            server.push_str(&format!("        keepalive_requests {n};\n"));
        }
        if self.big_file {
            server.push_str(&format!("        location = /big {{ root {p}/www; }}\n"));
        }
        server.push_str(&format!(
            "        location / {{ return 200 \"{}\\n\"; }}\n",
            self.body
        ));
        format!("{main}http {{\n{http}    server {{\n{server}    }}\n}}\n")
    }
}

/// Writes `cfg` to `dir/NAME/nginx.conf` (and the big file when it serves
/// one) and starts nginx in the server namespace; waits until it listens
/// (its error log in the error when it does not). Returns the process and
/// the config file.
pub fn spawn(
    net: &NetPair,
    dir: &Path,
    cert: &TestCert,
    addr: SocketAddr,
    name: &str,
    cfg: &NginxConfig,
) -> Result<(Proc, PathBuf)> {
    let prefix = dir.join(name);
    std::fs::create_dir_all(&prefix).with_context(|| format!("creating {}", prefix.display()))?;
    if cfg.big_file {
        let www = prefix.join("www");
        std::fs::create_dir_all(&www).with_context(|| format!("creating {}", www.display()))?;
        std::fs::write(www.join("big"), vec![b'x'; BIG_FILE_BYTES])
            .with_context(|| format!("writing {}/big", www.display()))?;
    }
    let conf = prefix.join("nginx.conf");
    std::fs::write(&conf, cfg.render(&prefix, addr, cert))
        .with_context(|| format!("writing {}", conf.display()))?;
    let mut c = net.server_cmd("nginx");
    c.arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(prefix.join("error.log"));
    let mut proc = Proc::spawn(name, c, dir, false)?;
    proc.wait_listening(&net.server_ns, addr, Duration::from_secs(15))
        .with_context(|| {
            format!(
                "nginx error.log:\n{}",
                crate::process::read_lossy(&prefix.join("error.log"))
            )
        })?;
    Ok((proc, conf))
}

/// The behaviour tests' config ([`NginxConfig::test`]) for a server on
/// `addr` with its files under `prefix`.
pub fn config(prefix: &Path, addr: SocketAddr, cert: &TestCert) -> String {
    NginxConfig::test().render(prefix, addr, cert)
}

impl Nginx {
    /// Writes the config ([`NginxConfig::test`]) under `dir/NAME/` and
    /// starts nginx; waits until it listens.
    pub fn start(
        net: &NetPair,
        dir: &Path,
        cert: &TestCert,
        addr: SocketAddr,
        name: &str,
    ) -> Result<Self> {
        let (proc, conf) = spawn(net, dir, cert, addr, name, &NginxConfig::test())?;
        Ok(Self { proc, addr, conf })
    }

    /// Like [`Nginx::start`] but with a master process (`master_process
    /// on`): the started process is the master, and one worker process it
    /// forks serves the connections.
    pub fn start_with_master(
        net: &NetPair,
        dir: &Path,
        cert: &TestCert,
        addr: SocketAddr,
        name: &str,
    ) -> Result<Self> {
        let cfg = NginxConfig {
            master: true,
            ..NginxConfig::test()
        };
        let (proc, conf) = spawn(net, dir, cert, addr, name, &cfg)?;
        Ok(Self { proc, addr, conf })
    }

    /// nginx's own error log (info level).
    pub fn error_log(&self) -> String {
        self.conf
            .parent()
            .map(|p| crate::process::read_lossy(&p.join("error.log")))
            .unwrap_or_default()
    }

    /// Stops nginx (SIGTERM: fast shutdown), SIGKILL after 5 s.
    pub fn stop(&mut self) {
        self.proc.stop(libc::SIGTERM, Duration::from_secs(5));
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn config_brackets_ipv6_and_keeps_paths_in_prefix() {
        let cert = TestCert {
            cert: "/t/cert.pem".into(),
            key: "/t/key.pem".into(),
        };
        let addr: SocketAddr = "[fd00:200::1]:4433".parse().expect("addr");
        let c = config(Path::new("/t/ngx"), addr, &cert);
        assert!(c.contains("listen [fd00:200::1]:4433 ssl;"));
        assert!(c.contains("pid /t/ngx/nginx.pid;"));
        assert!(c.contains("ssl_certificate_key /t/key.pem;"));
        assert!(!c.contains("/var/"));
    }

    /// The three presets render the configs the tests and benchmarks used
    /// before there was one builder (checked line by line, order aside).
    #[test]
    fn presets_keep_their_directives() {
        let cert = TestCert {
            cert: "/t/cert.pem".into(),
            key: "/t/key.pem".into(),
        };
        let addr: SocketAddr = "10.0.0.1:8443".parse().expect("addr");
        let p = Path::new("/t/n");
        let has = |c: &str, want: &[&str]| {
            for w in want {
                assert!(c.lines().any(|l| l.trim() == *w), "{w:?} missing in:\n{c}");
            }
        };
        let t = NginxConfig::test().render(p, addr, &cert);
        has(
            &t,
            &[
                "master_process off;",
                "error_log /t/n/error.log info;",
                "events { worker_connections 128; }",
                "access_log /t/n/access.log;",
                "listen 10.0.0.1:8443 ssl;",
                "keepalive_timeout 30s;",
                "location / { return 200 \"hello from nginx\\n\"; }",
            ],
        );
        assert!(
            !t.contains("ssl_session_cache") && !t.contains("/big"),
            "{t}"
        );
        let l = NginxConfig::load(100).render(p, addr, &cert);
        has(
            &l,
            &[
                "worker_rlimit_nofile 1424;",
                "events { worker_connections 1224; }",
                "error_log /t/n/error.log warn;",
                "client_header_timeout 300s;",
                "keepalive_timeout 300s;",
                "listen 10.0.0.1:8443 ssl backlog=4096;",
                "ssl_session_cache off;",
                "ssl_session_tickets off;",
                "location / { return 200 \"ok\\n\"; }",
            ],
        );
        let b = NginxConfig::bench().render(p, addr, &cert);
        has(
            &b,
            &[
                "access_log off;",
                "events { worker_connections 1024; }",
                "keepalive_requests 1000000;",
                "location = /big { root /t/n/www; }",
                "location / { return 200 \"hello\\n\"; }",
            ],
        );
        assert!(!b.contains("keepalive_timeout"), "{b}");
        let m = NginxConfig {
            master: true,
            ..NginxConfig::test()
        };
        has(&m.render(p, addr, &cert), &["master_process on;"]);
    }
}
