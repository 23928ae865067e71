//! A self-signed RSA certificate made fresh for each test run.

use crate::cmd;
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Certificate and key files (PEM, CN=hsmon-test, RSA 2048, no passphrase).
#[derive(Debug, Clone)]
pub struct TestCert {
    /// The certificate.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

impl TestCert {
    /// Runs `openssl req -x509 -newkey rsa:2048 -nodes` into `dir`.
    pub fn generate(dir: &Path) -> Result<Self> {
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        let mut c = Command::new("openssl");
        c.args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=hsmon-test", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert);
        cmd::run_ok(&mut c, Duration::from_secs(60))?;
        Ok(Self { cert, key })
    }
}
