//! Debian package checks and installs: `dpkg-query` to see what is there,
//! one `apt-get update` per run at most, and non-interactive installs.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::util;

/// The debconf answer that keeps `tshark`'s install from asking whether
/// non-root users may capture packets.
pub const WIRESHARK_PRESEED: &str =
    "wireshark-common wireshark-common/install-setuid boolean false";

/// Version of `pkg` if dpkg says it is installed ("install ok installed").
pub fn installed_version(pkg: &str) -> Option<String> {
    let out =
        util::probe(Command::new("dpkg-query").args(["-W", "-f=${Status}\t${Version}", pkg]))?;
    parse_dpkg_status(&out)
}

/// Parses `dpkg-query -W -f='${Status}\t${Version}'` output.
fn parse_dpkg_status(out: &str) -> Option<String> {
    let (status, version) = out.split_once('\t').unwrap_or((out, ""));
    status
        .contains("install ok installed")
        .then(|| version.trim().to_string())
}

/// Whether installing `pkgs` needs the wireshark-common debconf preseed.
pub fn needs_wireshark_preseed(pkgs: &[&str]) -> bool {
    pkgs.iter()
        .any(|p| matches!(*p, "tshark" | "wireshark-common" | "wireshark"))
}

/// The shell command a non-root user should run (as root) to install `pkgs`.
pub fn manual_install_hint(pkgs: &[&str]) -> String {
    let mut hint = String::new();
    if needs_wireshark_preseed(pkgs) {
        hint.push_str(&format!(
            "echo '{WIRESHARK_PRESEED}' | debconf-set-selections && "
        ));
    }
    hint.push_str("apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y ");
    hint.push_str(&pkgs.join(" "));
    hint
}

/// Installs Debian packages as root; runs `apt-get update` at most once.
#[derive(Default)]
pub struct Apt {
    updated: bool,
}

impl Apt {
    /// Installs `pkgs` in one `apt-get install` call. Caller must be root.
    pub fn install(&mut self, pkgs: &[&str]) -> Result<()> {
        if pkgs.is_empty() {
            return Ok(());
        }
        if !util::is_root() {
            bail!(
                "installing {} needs root; run as root: {}",
                pkgs.join(", "),
                manual_install_hint(pkgs)
            );
        }
        if !self.updated {
            util::run(
                Command::new("apt-get")
                    .arg("update")
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .stdin(Stdio::null()),
            )
            .context("apt-get update failed: check the network and /etc/apt/sources.list*")?;
            self.updated = true;
        }
        if needs_wireshark_preseed(pkgs) {
            preseed(WIRESHARK_PRESEED)?;
        }
        util::run(
            Command::new("apt-get")
                .args(["install", "-y"])
                .args(pkgs)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdin(Stdio::null()),
        )
        .with_context(|| {
            format!(
                "apt-get could not install {}: are they in the configured apt sources \
                 (`apt-cache policy {}`)?",
                pkgs.join(", "),
                pkgs.join(" ")
            )
        })
    }
}

/// Feeds one answer to `debconf-set-selections`.
fn preseed(line: &str) -> Result<()> {
    eprintln!("+ echo '{line}' | debconf-set-selections");
    let mut child = Command::new("debconf-set-selections")
        .stdin(Stdio::piped())
        .spawn()
        .context("could not start debconf-set-selections (package debconf)")?;
    let mut stdin = child
        .stdin
        .take()
        .context("debconf-set-selections has no stdin pipe")?;
    writeln!(stdin, "{line}").context("writing to debconf-set-selections")?;
    drop(stdin);
    let status = child.wait().context("waiting for debconf-set-selections")?;
    if !status.success() {
        bail!("debconf-set-selections failed ({status}) for: {line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status_parsing() {
        assert_eq!(
            parse_dpkg_status("install ok installed\t3.0.19-1~deb12u2"),
            Some("3.0.19-1~deb12u2".to_string())
        );
        assert_eq!(parse_dpkg_status("deinstall ok config-files\t1.0"), None);
        assert_eq!(parse_dpkg_status("unknown ok not-installed\t"), None);
        assert_eq!(parse_dpkg_status(""), None);
    }

    #[test]
    fn missing_package_is_not_installed() {
        assert_eq!(installed_version("hsmon-no-such-package-xyz"), None);
    }

    #[test]
    fn hint_includes_preseed_only_for_tshark() {
        let h = manual_install_hint(&["tshark", "nginx"]);
        assert!(h.starts_with("echo 'wireshark-common"), "{h}");
        assert!(h.ends_with("apt-get install -y tshark nginx"), "{h}");
        let h = manual_install_hint(&["nginx"]);
        assert!(!h.contains("debconf"), "{h}");
    }
}
