//! The uprobe programs, and attaching them to (and detaching them from) one
//! target file, for one probe set ([`UprobeSet`]).

use anyhow::{bail, Context as _, Result};
use aya::programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope};
use aya::programs::UProbe;
use aya::Ebpf;
use std::path::Path;

use super::UprobeSet;
use crate::agent::kernel::loader::program;

/// Entry probe of the handshake calls.
const PROG_HS_ENTER: &str = "hsmon_ssl_hs_enter";
/// Return probe of the handshake calls.
const PROG_HS_RETURN: &str = "hsmon_ssl_hs_return";
/// Entry probe of the read/write calls.
const PROG_IO_ENTER: &str = "hsmon_ssl_io_enter";

/// Handshake calls: entry and return probes.
const HANDSHAKE_FNS: &[&str] = &["SSL_do_handshake", "SSL_accept", "SSL_connect"];
/// Read/write calls: entry probes only.
const IO_FNS: &[&str] = &["SSL_read", "SSL_read_ex", "SSL_write", "SSL_write_ex"];

/// Every program, the functions it is attached to, and whether only the
/// `full` set has it (the functions called on every read and write;
/// `SSL_get_error`, which non-blocking servers call after every
/// `WANT_READ`; `SSL_free`, whose work the socket's close does in the
/// default set). The handshake entry probe (and, in `full`, the read/write
/// one) is what attribution with a library needs; a file lacking the
/// others (an older OpenSSL without `SSL_key_update`, say) is still
/// probed.
const PLAN: [(&str, &[&str], bool); 8] = [
    (PROG_HS_ENTER, HANDSHAKE_FNS, false),
    (PROG_HS_RETURN, HANDSHAKE_FNS, false),
    (PROG_IO_ENTER, IO_FNS, true),
    (
        "hsmon_ssl_reneg_enter",
        &["SSL_renegotiate", "SSL_renegotiate_abbreviated"],
        false,
    ),
    ("hsmon_ssl_key_update_enter", &["SSL_key_update"], false),
    ("hsmon_ssl_free_enter", &["SSL_free"], true),
    ("hsmon_ssl_get_error_enter", &["SSL_get_error"], true),
    ("hsmon_ssl_get_error_return", &["SSL_get_error"], true),
];

/// The part of [`PLAN`] a set attaches.
fn plan(set: UprobeSet) -> impl Iterator<Item = (&'static str, &'static [&'static str])> {
    PLAN.into_iter()
        .filter(move |(_, _, full_only)| set == UprobeSet::Full || !full_only)
        .filter(move |_| set != UprobeSet::Off)
        .map(|(name, fns, _)| (name, fns))
}

/// Probes attached per file with every function present: one per
/// (program, function) of the set's part of [`PLAN`].
pub fn probes_per_target(set: UprobeSet) -> usize {
    plan(set).map(|(_, fns)| fns.len()).sum()
}

/// The links of one target file.
#[derive(Debug, Default)]
pub struct Attached {
    links: Vec<(&'static str, UProbeLinkId)>,
}

impl Attached {
    /// Probes attached.
    pub fn len(&self) -> usize {
        self.links.len()
    }
}

/// Loads every uprobe program into the kernel (the verifier runs here),
/// those of the `full` set too, whatever set is attached.
pub fn load(ebpf: &mut Ebpf) -> Result<()> {
    for (name, _, _) in PLAN {
        let p = uprobe(ebpf, name)?;
        if p.fd().is_err() {
            p.load().with_context(|| format!("loading {name}"))?;
        }
    }
    Ok(())
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut UProbe> {
    program(ebpf, name)?
        .try_into()
        .with_context(|| format!("{name} is not a uprobe"))
}

/// Attaches the probes of `set` to `path` with attach cookie `cookie`.
/// Functions the file lacks are skipped; a file with none of the
/// handshake or read/write functions is an error (and nothing stays
/// attached).
pub fn attach(ebpf: &mut Ebpf, path: &Path, cookie: u64, set: UprobeSet) -> Result<Attached> {
    let mut out = Attached::default();
    let mut core = 0;
    let mut missing = Vec::new();
    for (name, fns) in plan(set) {
        let p = uprobe(ebpf, name)?;
        for f in fns {
            let point = UProbeAttachPoint {
                location: UProbeAttachLocation::Symbol(f),
                cookie: Some(cookie),
            };
            match p.attach(point, path, UProbeScope::AllProcesses) {
                Ok(id) => {
                    out.links.push((name, id));
                    if [PROG_HS_ENTER, PROG_IO_ENTER].contains(&name) {
                        core += 1;
                    }
                }
                Err(e) => missing.push(format!("{name} on {f}: {e}")),
            }
        }
    }
    if core == 0 {
        detach(ebpf, out);
        bail!(
            "no SSL_* handshake or read/write function could be probed ({})",
            missing.join("; ")
        );
    }
    if !missing.is_empty() {
        tracing::debug!(path = %path.display(), "probes not attached: {}", missing.join("; "));
    }
    Ok(out)
}

/// Detaches the links of one target.
pub fn detach(ebpf: &mut Ebpf, attached: Attached) {
    for (name, id) in attached.links {
        match uprobe(ebpf, name) {
            Ok(p) => {
                if let Err(e) = p.detach(id) {
                    tracing::debug!("detaching {name}: {e}");
                }
            }
            Err(e) => tracing::debug!("detaching {name}: {e:#}"),
        }
    }
}
