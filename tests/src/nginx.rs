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

/// The config: one TLS server on `addr` answering `GET /` with a short text,
/// every file nginx writes kept under `prefix`.
pub fn config(prefix: &Path, addr: SocketAddr, cert: &TestCert) -> String {
    let p = prefix.display();
    format!(
        "daemon off;
master_process off;
worker_processes 1;
pid {p}/nginx.pid;
error_log {p}/error.log info;
events {{ worker_connections 128; }}
http {{
    access_log {p}/access.log;
    client_body_temp_path {p}/client_body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    server {{
        listen {addr} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        keepalive_timeout 30s;
        location / {{ return 200 \"hello from nginx\\n\"; }}
    }}
}}
",
        cert = cert.cert.display(),
        key = cert.key.display(),
    )
}

impl Nginx {
    /// Writes the config under `dir/NAME/` and starts nginx; waits until it
    /// listens.
    pub fn start(
        net: &NetPair,
        dir: &Path,
        cert: &TestCert,
        addr: SocketAddr,
        name: &str,
    ) -> Result<Self> {
        let prefix = dir.join(name);
        std::fs::create_dir_all(&prefix)
            .with_context(|| format!("creating {}", prefix.display()))?;
        let conf = prefix.join("nginx.conf");
        std::fs::write(&conf, config(&prefix, addr, cert))
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
        let prefix = dir.join(name);
        std::fs::create_dir_all(&prefix)
            .with_context(|| format!("creating {}", prefix.display()))?;
        let conf = prefix.join("nginx.conf");
        let text = config(&prefix, addr, cert).replace("master_process off;", "master_process on;");
        std::fs::write(&conf, text).with_context(|| format!("writing {}", conf.display()))?;
        let mut c = net.server_cmd("nginx");
        c.arg("-p").arg(&prefix).arg("-c").arg(&conf);
        let mut proc = Proc::spawn(name, c, dir, false)?;
        proc.wait_listening(&net.server_ns, addr, Duration::from_secs(15))
            .with_context(|| {
                format!(
                    "nginx error.log:\n{}",
                    crate::process::read_lossy(&prefix.join("error.log"))
                )
            })?;
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
}
