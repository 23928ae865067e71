//! A self-signed certificate (RSA, or ECDSA P-256 where handshake cost
//! matters) made fresh for each test run.

use crate::cmd;
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Certificate and key files (PEM, CN=hsmon-test, no passphrase).
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
        Self::make(dir, "", &["-newkey", "rsa:2048"])
    }

    /// An ECDSA P-256 certificate (`cert-ec.pem`, `key-ec.pem`): a server
    /// handshake costs a fraction of an RSA 2048 one, so a flood is limited
    /// by more than the server's signing.
    pub fn generate_ec(dir: &Path) -> Result<Self> {
        Self::make(
            dir,
            "-ec",
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
        )
    }

    fn make(dir: &Path, suffix: &str, key_args: &[&str]) -> Result<Self> {
        let cert = dir.join(format!("cert{suffix}.pem"));
        let key = dir.join(format!("key{suffix}.pem"));
        let mut c = Command::new("openssl");
        c.args(["req", "-x509"])
            .args(key_args)
            .args(["-nodes", "-days", "2"])
            .args(["-subj", "/CN=hsmon-test", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert);
        cmd::run_ok(&mut c, Duration::from_secs(60))?;
        Ok(Self { cert, key })
    }
}
