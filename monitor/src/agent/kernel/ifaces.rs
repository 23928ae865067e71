//! Which network interfaces to watch: the ones named on the command line, or
//! every interface that is up; and which of them are loopback.

use std::ffi::CString;
use std::fs;
use std::path::Path;

use anyhow::{bail, Context as _, Result};

/// `IFF_UP` in `/sys/class/net/IF/flags`.
const IFF_UP: u32 = 0x1;
/// `IFF_LOOPBACK` in `/sys/class/net/IF/flags`.
const IFF_LOOPBACK: u32 = 0x8;

/// Where the kernel lists interfaces.
const SYS_CLASS_NET: &str = "/sys/class/net";

/// An interface to attach to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iface {
    /// Interface name.
    pub name: String,
    /// Loopback: every packet crosses egress and then ingress, so only
    /// ingress is watched (watching both would see each segment twice).
    pub loopback: bool,
}

/// The interfaces to watch: `names` if any were given (each must exist; the
/// error names the one that does not), else every interface that is up.
pub fn resolve(names: &[String]) -> Result<Vec<Iface>> {
    if names.is_empty() {
        let all = interfaces_up(Path::new(SYS_CLASS_NET))?;
        if all.is_empty() {
            bail!("no network interface is up (looked in {SYS_CLASS_NET}); name one with --iface");
        }
        return Ok(all);
    }
    let mut out: Vec<Iface> = Vec::new();
    for name in names {
        if out.iter().any(|i| &i.name == name) {
            continue;
        }
        if !exists(name) {
            bail!("network interface {name:?} does not exist");
        }
        let loopback = read_flags(&Path::new(SYS_CLASS_NET).join(name))
            .map(|f| f & IFF_LOOPBACK != 0)
            .unwrap_or(name == "lo");
        out.push(Iface {
            name: name.clone(),
            loopback,
        });
    }
    Ok(out)
}

/// Does an interface of that name exist in this network namespace?
fn exists(name: &str) -> bool {
    let Ok(c) = CString::new(name) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

/// Interfaces under `dir` (a `/sys/class/net`) whose flags have `IFF_UP`,
/// sorted by name.
fn interfaces_up(dir: &Path) -> Result<Vec<Iface>> {
    let entries = fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        match read_flags(&entry.path()) {
            Ok(flags) if flags & IFF_UP != 0 => out.push(Iface {
                name,
                loopback: flags & IFF_LOOPBACK != 0,
            }),
            Ok(_) => {}
            Err(e) => tracing::debug!("skipping interface {name}: {e:#}"),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Reads `IF/flags` (hex, `0x1003`).
fn read_flags(iface_dir: &Path) -> Result<u32> {
    let path = iface_dir.join("flags");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_flags(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Parses the hex flags sysfs prints.
fn parse_flags(text: &str) -> Result<u32> {
    let t = text.trim();
    let hex = t.strip_prefix("0x").unwrap_or(t);
    u32::from_str_radix(hex, 16).with_context(|| format!("{t:?} is not a hex number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags() {
        assert_eq!(parse_flags("0x9\n").expect("hex"), 9);
        assert_eq!(parse_flags("0x1003").expect("hex"), 0x1003);
        assert!(parse_flags("up").is_err());
    }

    #[test]
    fn up_interfaces_from_a_fake_sysfs() {
        let dir = std::env::temp_dir().join(format!("hsmon-ifaces-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for (name, flags) in [
            ("lo", "0x9"),
            ("eth0", "0x1003"),
            ("down0", "0x1002"),
            ("bad", "?"),
        ] {
            fs::create_dir_all(dir.join(name)).expect("mkdir");
            fs::write(dir.join(name).join("flags"), flags).expect("write");
        }
        fs::create_dir_all(dir.join("noflags")).expect("mkdir");
        let got = interfaces_up(&dir).expect("lists");
        fs::remove_dir_all(&dir).expect("cleanup");
        assert_eq!(
            got,
            [
                Iface {
                    name: "eth0".into(),
                    loopback: false
                },
                Iface {
                    name: "lo".into(),
                    loopback: true
                },
            ]
        );
    }

    #[test]
    fn a_missing_interface_is_named() {
        let err = resolve(&["hsmon-nope0".to_owned()]).expect_err("does not exist");
        assert!(err.to_string().contains("hsmon-nope0"), "{err}");
    }
}
