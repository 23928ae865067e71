//! Attaching the programs and undoing it: TC on each interface (TCX, or
//! clsact + netlink when TCX is refused) and the socket-state tracepoint.
//!
//! With a pin directory ([`crate::agent::kernel::pins::PinDir`]) the links are pinned, so
//! the programs keep running while no agent does (`kill -9`, a restart).
//! An agent that finds a previous agent's pinned TCX link swaps its own
//! program into it (`BPF_LINK_UPDATE`, atomic: never two hsmon programs on
//! one hook, never none); the tracepoint's perf link cannot be updated, so
//! the new one is attached and the old one detached right after. Pinned
//! links this agent does not use (an interface no longer watched) are
//! removed. clsact filters (netlink) are not fds: a persistent agent leaves
//! them in place, the state file records them, and the next agent (or
//! `hsmon cleanup`) deletes them after attaching its own.
//!
//! [`Attachments::detach`] removes everything (and the pins);
//! [`Attachments::release`] closes the agent's handles and leaves the pinned
//! links attached. Dropping it releases when pinned, detaches otherwise.

use std::ffi::CString;
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError};
use aya::programs::trace_point::TracePointLink;
use aya::programs::{SchedClassifier, TcAttachType, TracePoint};
use aya::Ebpf;

use crate::agent::kernel::ifaces::Iface;
use crate::agent::kernel::loader::{program, PROG_SOCK_STATE, PROG_TC_EGRESS, PROG_TC_INGRESS};
use crate::agent::kernel::netlink;
use crate::agent::kernel::pins::{self, PinDir};
use crate::api::status::{Hook, TracepointHook};
use serde::{Deserialize, Serialize};

/// A clsact filter hsmon attached, as the state file keeps it (netlink
/// filters are not fds and cannot be pinned: the kernel keeps them until
/// deleted).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedFilter {
    /// The interface.
    pub iface: String,
    /// `"ingress"` or `"egress"`.
    pub direction: String,
    /// The filter's priority.
    pub priority: u16,
    /// The filter's handle.
    pub handle: u32,
}

/// The pinned link name of the socket-state tracepoint.
const TP_LINK: &str = "tp-sock_state";

/// One attached program as the agent holds it (kept for what dropping it
/// does: detach, or close the fd of a pinned link).
#[allow(dead_code)]
enum Held {
    /// A TCX link owned by this process (detached on drop).
    Owned(SchedClassifierLink),
    /// A clsact (netlink) filter: detached on drop, forgotten on release.
    Netlink(SchedClassifierLink),
    /// A tracepoint link owned by this process.
    Tracepoint(TracePointLink),
    /// A pinned link: the pin keeps it attached; dropping closes our fd.
    Pinned(FdLink, PathBuf),
}

/// Programs attached by this agent, and the qdiscs it added for them.
#[derive(Default)]
pub struct Attachments {
    held: Vec<(String, Held)>,
    clsact_added: Vec<String>,
    /// clsact filters attached by this agent (recorded in the state file).
    filters: Vec<SavedFilter>,
    /// Whether links are pinned (then dropping releases instead of detaching).
    persistent: bool,
    /// `--tc-mode clsact`: netlink filters even where TCX works.
    force_clsact: bool,
    /// A previous agent's clsact filters (from the state file).
    old_filters: Vec<SavedFilter>,
    /// Previous agents' links that this one took over or replaced.
    taken_over: usize,
    /// What is attached, as `hsmon status` reports it.
    hooks: Vec<Hook>,
    tracepoints: Vec<TracepointHook>,
}

/// The pinned link name of a TC program.
fn tc_link_name(iface: &str, direction: &str) -> String {
    format!("tc-{iface}-{direction}")
}

impl Attachments {
    /// Attaches ingress (and, except on loopback, egress) on every interface,
    /// then the tracepoint. Programs must be loaded already. With `pins`,
    /// links are pinned and a previous agent's are taken over; `old_filters`
    /// are a previous agent's clsact filters (deleted once ours are
    /// attached) and `old_clsact` the qdiscs it added (still ours to remove).
    pub fn attach(
        ebpf: &mut Ebpf,
        ifaces: &[Iface],
        pins: Option<&PinDir>,
        old_filters: &[SavedFilter],
        old_clsact: &[String],
        force_clsact: bool,
    ) -> Result<Self> {
        let mut this = Attachments::default();
        this.persistent = pins.is_some();
        this.clsact_added = old_clsact.to_vec();
        this.force_clsact = force_clsact;
        this.old_filters = old_filters.to_vec();
        let mut used = Vec::new();
        for iface in ifaces {
            used.push(this.attach_tc(
                ebpf,
                PROG_TC_INGRESS,
                &iface.name,
                TcAttachType::Ingress,
                pins,
            )?);
            if iface.loopback {
                tracing::info!(
                    iface = %iface.name,
                    "loopback: egress not watched (each packet also crosses ingress)"
                );
            } else {
                used.push(this.attach_tc(
                    ebpf,
                    PROG_TC_EGRESS,
                    &iface.name,
                    TcAttachType::Egress,
                    pins,
                )?);
            }
        }
        this.attach_tracepoint(ebpf, pins)?;
        used.push(TP_LINK.to_owned());
        for f in old_filters {
            remove_filter(f);
            this.taken_over += 1;
        }
        if let Some(pins) = pins {
            for name in pins.pinned_links()? {
                // The socket hooks' links are theirs to keep or remove
                // (`sock_hooks`).
                if !used.contains(&name) && !name.starts_with(super::sock_hooks::LINK_PREFIX) {
                    let path = pins.link_path(&name);
                    match pins::remove_pin(&path) {
                        Ok(()) => tracing::info!(
                            "removed the pinned link {} (not used by this agent)",
                            path.display()
                        ),
                        Err(e) => tracing::warn!("{e:#}"),
                    }
                }
            }
        }
        Ok(this)
    }

    /// Attaches one TC program, TCX first, clsact as the fallback; returns
    /// its pinned link's name.
    fn attach_tc(
        &mut self,
        ebpf: &mut Ebpf,
        name: &str,
        iface: &str,
        direction: TcAttachType,
        pins: Option<&PinDir>,
    ) -> Result<String> {
        let dir = direction_name(direction);
        let link_name = tc_link_name(iface, dir);
        let prog: &mut SchedClassifier = program(ebpf, name)?
            .try_into()
            .with_context(|| format!("{name} is not a TC classifier"))?;
        let what = format!("{name} on {iface} {dir}");
        if let Some(pins) = pins {
            let path = pins.link_path(&link_name);
            if path.exists() {
                match take_over_tcx(prog, &path) {
                    Ok(link) => {
                        tracing::info!(
                            iface,
                            direction = dir,
                            "took over the pinned TCX link {} (program replaced atomically)",
                            path.display()
                        );
                        self.taken_over += 1;
                        self.push_hook(iface, name, dir, "tcx");
                        let fd = FdLink::try_from(link).context("a TCX link without an fd")?;
                        self.held.push((what, Held::Pinned(fd, path)));
                        return Ok(link_name);
                    }
                    Err(e) => {
                        tracing::warn!(
                            "the pinned link {} cannot be reused ({e:#}); removing it and attaching afresh",
                            path.display()
                        );
                        pins::remove_pin(&path)?;
                    }
                }
            }
        }
        let tcx = if self.force_clsact {
            Err(anyhow::anyhow!("--tc-mode clsact"))
        } else {
            prog.attach(iface, direction).map_err(anyhow::Error::from)
        };
        let (id, mode) = match tcx {
            Ok(id) => (id, "tcx"),
            Err(tcx_err) => {
                if !self.force_clsact {
                    tracing::warn!(
                        "TCX attach of {name} on {iface} {dir} failed ({tcx_err:#}); trying clsact"
                    );
                }
                if !self.clsact_added.iter().any(|i| i == iface) {
                    match tc::qdisc_add_clsact(iface) {
                        Ok(()) => self.clsact_added.push(iface.to_owned()),
                        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {
                        }
                        Err(e) => {
                            return Err(e).with_context(|| {
                                format!(
                                "adding a clsact qdisc to {iface} (after TCX failed: {tcx_err})"
                            )
                            })
                        }
                    }
                }
                let recorded = self
                    .old_filters
                    .iter()
                    .any(|f| f.iface == iface && f.direction == dir);
                if pins.is_some() && !recorded {
                    // No record of a previous agent's filters (no or a lost
                    // state file): remove any hsmon filter of this name
                    // before attaching, so there is never two.
                    match tc::qdisc_detach_program(iface, direction, name) {
                        Ok(()) => tracing::warn!(
                            iface,
                            direction = dir,
                            "removed an unrecorded hsmon clsact filter {name}"
                        ),
                        Err(TcError::IoError(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => tracing::warn!("looking for old {name} filters on {iface}: {e}"),
                    }
                }
                let id = prog
                    .attach_with_options(
                        iface,
                        direction,
                        TcAttachOptions::Netlink(NlOptions::default()),
                    )
                    .with_context(|| format!("attaching {name} to {iface} {dir}"))?;
                (id, "clsact")
            }
        };
        let link = prog
            .take_link(id)
            .with_context(|| format!("taking the link of {name} on {iface}"))?;
        let held = match (mode, pins) {
            ("tcx", Some(pins)) => {
                let path = pins.link_path(&link_name);
                let fd = FdLink::try_from(link).context("a TCX link without an fd")?;
                let pinned = fd
                    .pin(&path)
                    .with_context(|| format!("pinning the link of {what}"))?;
                Held::Pinned(pinned.into(), path)
            }
            ("clsact", _) => {
                if let (Ok(priority), Ok(handle)) = (link.priority(), link.handle()) {
                    self.filters.push(SavedFilter {
                        iface: iface.to_owned(),
                        direction: dir.to_owned(),
                        priority,
                        handle: u32::from(handle),
                    });
                }
                Held::Netlink(link)
            }
            _ => Held::Owned(link),
        };
        self.held.push((what, held));
        self.push_hook(iface, name, dir, mode);
        tracing::info!(iface, direction = dir, mode, "attached {name}");
        Ok(link_name)
    }

    fn push_hook(&mut self, iface: &str, program: &str, direction: &str, mode: &str) {
        self.hooks.push(Hook {
            iface: iface.to_owned(),
            program: program.to_owned(),
            direction: direction.to_owned(),
            mode: mode.to_owned(),
        });
    }

    /// Attaches the socket-state tracepoint; with `pins`, pins its link and
    /// then detaches a previous agent's.
    fn attach_tracepoint(&mut self, ebpf: &mut Ebpf, pins: Option<&PinDir>) -> Result<()> {
        let tp: &mut TracePoint = program(ebpf, PROG_SOCK_STATE)?
            .try_into()
            .with_context(|| format!("{PROG_SOCK_STATE} is not a tracepoint program"))?;
        let id = tp
            .attach("sock", "inet_sock_set_state")
            .with_context(|| format!("attaching {PROG_SOCK_STATE} to sock/inet_sock_set_state"))?;
        let link = tp.take_link(id).context("taking the tracepoint link")?;
        let what = format!("{PROG_SOCK_STATE} on sock/inet_sock_set_state");
        let held = match pins {
            Some(pins) => {
                let path = pins.link_path(TP_LINK);
                if path.exists() {
                    // Ours is attached: now the old one goes (the
                    // sock_state program is idempotent per close, so the
                    // instant both run does no harm).
                    match PinnedLink::from_pin(&path) {
                        Ok(old) => match old.unpin() {
                            Ok(fd) => {
                                drop(fd);
                                self.taken_over += 1;
                                tracing::info!(
                                    "replaced the previous agent's tracepoint link {}",
                                    path.display()
                                );
                            }
                            Err(e) => tracing::warn!("unpinning {}: {e}", path.display()),
                        },
                        Err(e) => {
                            tracing::warn!("opening {}: {e}; removing it", path.display());
                            pins::remove_pin(&path)?;
                        }
                    }
                }
                match FdLink::try_from(link) {
                    Ok(fd) => {
                        let pinned = fd
                            .pin(&path)
                            .with_context(|| format!("pinning the link of {what}"))?;
                        Held::Pinned(pinned.into(), path)
                    }
                    Err(e) => {
                        // A perf-event attach without a bpf_link (old
                        // kernels): it lives and dies with this agent.
                        anyhow::bail!(
                            "the tracepoint link cannot be pinned on this kernel ({e}); \
                             run with --no-persist"
                        );
                    }
                }
            }
            None => Held::Tracepoint(link),
        };
        self.held.push((what, held));
        self.tracepoints.push(TracepointHook {
            program: PROG_SOCK_STATE.to_owned(),
            tracepoint: "sock/inet_sock_set_state".to_owned(),
        });
        tracing::info!("attached {PROG_SOCK_STATE} to tracepoint sock/inet_sock_set_state");
        Ok(())
    }

    /// The TC programs attached, in attach order.
    pub fn hooks(&self) -> &[Hook] {
        &self.hooks
    }

    /// The tracepoint programs attached.
    pub fn tracepoints(&self) -> &[TracepointHook] {
        &self.tracepoints
    }

    /// How many of a previous agent's links (or clsact filters) this agent
    /// took over or replaced.
    pub fn taken_over(&self) -> usize {
        self.taken_over
    }

    /// The clsact filters this agent attached (for the state file).
    pub fn filters(&self) -> &[SavedFilter] {
        &self.filters
    }

    /// The clsact qdiscs hsmon added, this agent's and earlier ones' (for
    /// the state file).
    pub fn clsact_added(&self) -> &[String] {
        &self.clsact_added
    }

    /// Detaches everything, unpins the links, and removes the qdiscs hsmon
    /// added, logging what it does. Idempotent.
    pub fn detach(&mut self) {
        self.hooks.clear();
        self.tracepoints.clear();
        self.filters.clear();
        for (what, held) in self.held.drain(..) {
            if let Held::Pinned(_, path) = &held {
                if let Err(e) = pins::remove_pin(path) {
                    tracing::warn!("{e:#}");
                }
            }
            drop(held);
            tracing::info!("detached {what}");
        }
        for iface in self.clsact_added.drain(..) {
            match remove_clsact(&iface) {
                Ok(()) => tracing::info!("removed the clsact qdisc hsmon added to {iface}"),
                Err(e) => tracing::warn!("removing the clsact qdisc from {iface}: {e:#}"),
            }
        }
    }

    /// Closes this agent's handles but leaves every program attached: pinned
    /// links stay, clsact filters stay (the state file names them).
    /// Idempotent.
    pub fn release(&mut self) {
        let n = self.held.len();
        for (_, held) in self.held.drain(..) {
            match held {
                // A netlink link detaches on drop: forget it instead (the
                // kernel keeps the filter; the state file records it).
                Held::Netlink(link) => std::mem::forget(link),
                other => drop(other),
            }
        }
        self.clsact_added.clear();
        if n > 0 {
            tracing::info!(
                links = n,
                "programs left attached through the pinned links (`hsmon cleanup` removes them)"
            );
        }
    }
}

impl Drop for Attachments {
    fn drop(&mut self) {
        if self.persistent {
            self.release();
        } else {
            self.detach();
        }
    }
}

/// Opens the TCX link pinned at `path` and swaps `prog` into it.
fn take_over_tcx(
    prog: &mut SchedClassifier,
    path: &std::path::Path,
) -> Result<SchedClassifierLink> {
    let pinned = PinnedLink::from_pin(path).context("opening the pinned link")?;
    let fd: FdLink = pinned.into();
    let link = SchedClassifierLink::try_from(fd).context("not a TCX link")?;
    let id = prog
        .attach_to_link(link)
        .context("replacing the program in the link (BPF_LINK_UPDATE)")?;
    prog.take_link(id).context("taking the updated link")
}

/// Deletes a previous agent's clsact filter (gone already is fine).
fn remove_filter(f: &SavedFilter) {
    let direction = match f.direction.as_str() {
        "ingress" => TcAttachType::Ingress,
        _ => TcAttachType::Egress,
    };
    let result = SchedClassifierLink::attached(
        &f.iface,
        direction,
        f.priority,
        tc::TcHandle::from(f.handle),
        None,
    )
    // Dropping the reconstructed link deletes the filter.
    .map(drop);
    match result {
        Ok(()) => tracing::info!(
            iface = %f.iface,
            direction = %f.direction,
            "removed a previous agent's clsact filter"
        ),
        Err(e) => tracing::warn!("removing a previous clsact filter on {}: {e:#}", f.iface),
    }
}

/// `"ingress"` or `"egress"`.
fn direction_name(d: TcAttachType) -> &'static str {
    match d {
        TcAttachType::Ingress => "ingress",
        TcAttachType::Egress => "egress",
        TcAttachType::Custom(_) => "custom",
    }
}

/// Deletes the clsact qdisc of the interface called `iface`.
pub fn remove_clsact(iface: &str) -> Result<()> {
    let c = CString::new(iface).context("interface name with a NUL byte")?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(std::io::Error::last_os_error()).context("the interface is gone");
    }
    netlink::delete_clsact(index).context("RTM_DELQDISC")
}

/// Removes a clsact filter recorded in a state file (for `hsmon cleanup`).
pub fn remove_saved_filter(f: &SavedFilter) {
    remove_filter(f);
}
