//! The policy's enforcer in the agent: bans go into the ban table at once;
//! resets are made after the policy's lock is released.

use std::time::Duration;

use crate::agent::enforce::bans::{BanMaps, BanTable};
use crate::agent::enforce::sock_destroy;
use crate::agent::policy::{ConnRef, Decision, Enforcer, Outcome};
use crate::api::cidr::Cidr;

/// The agent's enforcement: bans in the kernel's ban maps (reason
/// [`monitor_common::ban::BAN_REASON_POLICY`]) at once; resets are only
/// noted (the decision says `reset`) and made by [`perform_resets`] after
/// the policy's lock is released, since each is a netlink round trip.
pub struct AgentEnforcer<'a, M: BanMaps> {
    /// The ban table.
    pub bans: &'a mut BanTable<M>,
}

impl<M: BanMaps> Enforcer for AgentEnforcer<'_, M> {
    fn allowed(&self, target: &Cidr) -> bool {
        self.bans.allowlist().iter().any(|a| a.overlaps(target))
    }

    fn ban(&mut self, target: Cidr, ttl: Duration, reason: &str) -> Result<(), String> {
        self.bans
            .add_coded(
                target,
                ttl,
                reason,
                monitor_common::ban::BAN_REASON_POLICY,
                crate::agent::kernel::clock::monotonic_now_ns(),
            )
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn reset(&mut self, _conn: &ConnRef) -> Result<bool, String> {
        // Deferred: see `perform_resets`.
        Ok(true)
    }
}

/// Makes the resets that [`AgentEnforcer`] noted: `SOCK_DESTROY` of the
/// server's socket of each decision with action `reset`, which becomes
/// `already_closed` or `reset_failed` when it did not reset anything, and of
/// the connection of each `ban` (whose action stays `ban`). Blocking
/// (netlink); call it without the policy's lock.
pub fn perform_resets(decisions: &mut [Decision]) {
    for d in decisions
        .iter_mut()
        .filter(|d| d.action == Outcome::Reset || d.action == Outcome::Ban)
    {
        let Some(conn) = d.connection.as_ref() else {
            continue;
        };
        let c = sock_destroy::Conn {
            local: conn.server,
            remote: conn.client,
        };
        if d.action == Outcome::Ban {
            match sock_destroy::destroy(&c, conn.socket) {
                Ok(outcome) => {
                    tracing::debug!(client = %conn.client, server = %conn.server, ?outcome, "banned peer's connection reset");
                }
                Err(e) => {
                    tracing::warn!(client = %conn.client, server = %conn.server, "resetting a banned peer's connection failed: {e:#}");
                }
            }
            continue;
        }
        d.action = match sock_destroy::destroy(&c, conn.socket) {
            Ok(sock_destroy::Outcome::Destroyed) => Outcome::Reset,
            Ok(sock_destroy::Outcome::Gone) => Outcome::AlreadyClosed,
            Err(e) => {
                tracing::warn!(client = %conn.client, server = %conn.server, rule = d.rule, "policy reset failed: {e:#}");
                Outcome::ResetFailed
            }
        };
    }
}
