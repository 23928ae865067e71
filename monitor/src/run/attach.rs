//! Attaching the programs and undoing it: TC on each interface (TCX, or
//! clsact + netlink when TCX is refused) and the socket-state tracepoint.
//!
//! Everything attached is owned by [`Attachments`]; dropping it (also on an
//! error half-way through) detaches every program and removes the clsact
//! qdiscs this agent added, and only those.

use std::ffi::CString;

use anyhow::{Context as _, Result};
use aya::programs::tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError};
use aya::programs::trace_point::TracePointLink;
use aya::programs::{SchedClassifier, TcAttachType, TracePoint};
use aya::Ebpf;

use super::ifaces::Iface;
use super::loader::{program, PROG_SOCK_STATE, PROG_TC_EGRESS, PROG_TC_INGRESS};
use super::netlink;
use crate::status::{Hook, TracepointHook};

/// Programs attached by this agent, and the qdiscs it added for them.
#[derive(Default)]
pub struct Attachments {
    tc: Vec<(String, SchedClassifierLink)>,
    tracepoint: Option<TracePointLink>,
    clsact_added: Vec<String>,
    /// What is attached, as `hsmon status` reports it.
    hooks: Vec<Hook>,
    tracepoints: Vec<TracepointHook>,
}

impl Attachments {
    /// Attaches ingress (and, except on loopback, egress) on every interface,
    /// then the tracepoint. Programs must be loaded already.
    pub fn attach(ebpf: &mut Ebpf, ifaces: &[Iface]) -> Result<Self> {
        let mut this = Attachments::default();
        for iface in ifaces {
            this.attach_tc(ebpf, PROG_TC_INGRESS, &iface.name, TcAttachType::Ingress)?;
            if iface.loopback {
                tracing::info!(
                    iface = %iface.name,
                    "loopback: egress not watched (each packet also crosses ingress)"
                );
            } else {
                this.attach_tc(ebpf, PROG_TC_EGRESS, &iface.name, TcAttachType::Egress)?;
            }
        }
        let tp: &mut TracePoint = program(ebpf, PROG_SOCK_STATE)?
            .try_into()
            .with_context(|| format!("{PROG_SOCK_STATE} is not a tracepoint program"))?;
        let id = tp
            .attach("sock", "inet_sock_set_state")
            .with_context(|| format!("attaching {PROG_SOCK_STATE} to sock/inet_sock_set_state"))?;
        this.tracepoint = Some(tp.take_link(id).context("taking the tracepoint link")?);
        this.tracepoints.push(TracepointHook {
            program: PROG_SOCK_STATE.to_owned(),
            tracepoint: "sock/inet_sock_set_state".to_owned(),
        });
        tracing::info!("attached {PROG_SOCK_STATE} to tracepoint sock/inet_sock_set_state");
        Ok(this)
    }

    /// Attaches one TC program, TCX first, clsact as the fallback.
    fn attach_tc(
        &mut self,
        ebpf: &mut Ebpf,
        name: &str,
        iface: &str,
        direction: TcAttachType,
    ) -> Result<()> {
        let dir = direction_name(direction);
        let prog: &mut SchedClassifier = program(ebpf, name)?
            .try_into()
            .with_context(|| format!("{name} is not a TC classifier"))?;
        let (id, mode) = match prog.attach(iface, direction) {
            Ok(id) => (id, "tcx"),
            Err(tcx_err) => {
                tracing::warn!(
                    "TCX attach of {name} on {iface} {dir} failed ({tcx_err}); trying clsact"
                );
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
        self.tc.push((format!("{name} on {iface} {dir}"), link));
        self.hooks.push(Hook {
            iface: iface.to_owned(),
            program: name.to_owned(),
            direction: dir.to_owned(),
            mode: mode.to_owned(),
        });
        tracing::info!(iface, direction = dir, mode, "attached {name}");
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

    /// Detaches everything and removes the qdiscs this agent added, logging
    /// what it does. Idempotent.
    pub fn detach(&mut self) {
        self.hooks.clear();
        self.tracepoints.clear();
        for (what, link) in self.tc.drain(..) {
            drop(link);
            tracing::info!("detached {what}");
        }
        if self.tracepoint.take().is_some() {
            tracing::info!("detached {PROG_SOCK_STATE}");
        }
        for iface in self.clsact_added.drain(..) {
            match remove_clsact(&iface) {
                Ok(()) => tracing::info!("removed the clsact qdisc hsmon added to {iface}"),
                Err(e) => tracing::warn!("removing the clsact qdisc from {iface}: {e:#}"),
            }
        }
    }
}

impl Drop for Attachments {
    fn drop(&mut self) {
        self.detach();
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
fn remove_clsact(iface: &str) -> Result<()> {
    let c = CString::new(iface).context("interface name with a NUL byte")?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(std::io::Error::last_os_error()).context("the interface is gone");
    }
    netlink::delete_clsact(index).context("RTM_DELQDISC")
}
