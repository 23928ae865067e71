//! The policy's ban history in and out of the state file, so a restarted
//! agent keeps escalating.

use super::{Cidr, History, Policy};

/// One peer's or prefix's ban history as the policy exports it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedHistory {
    /// `"peer"` (an address) or `"prefix"` (a client prefix rule's group).
    pub kind: String,
    /// The address or prefix (`"192.0.2.7/32"`, `"192.0.2.0/24"`).
    pub target: String,
    /// When its bans were issued (monotonic ns), oldest first.
    pub bans_ns: Vec<u64>,
    /// When its last ban ends (monotonic ns).
    pub banned_until_ns: u64,
}

impl Policy {
    /// The ban history of every peer and prefix, sorted (for the state
    /// file, so a restarted agent keeps escalating).
    pub fn export_history(&self) -> Vec<SavedHistory> {
        let saved = |kind: &str, target: Cidr, h: &History| SavedHistory {
            kind: kind.to_owned(),
            target: target.to_string(),
            bans_ns: h.bans.iter().copied().collect(),
            banned_until_ns: h.banned_until,
        };
        let mut out: Vec<_> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.history.bans.is_empty())
            .map(|(ip, p)| saved("peer", Cidr::host(*ip), &p.history))
            .chain(
                self.prefixes
                    .iter()
                    .filter(|(_, g)| !g.history.bans.is_empty())
                    .map(|(c, g)| saved("prefix", *c, &g.history)),
            )
            .collect();
        out.sort_by(|a, b| (&a.kind, &a.target).cmp(&(&b.kind, &b.target)));
        out
    }

    /// Takes in a previous agent's ban history ([`Policy::export_history`]).
    pub fn import_history(&mut self, saved: &[SavedHistory]) {
        for h in saved {
            let Ok(target) = h.target.parse::<Cidr>() else {
                continue;
            };
            let history = History {
                bans: h.bans_ns.iter().copied().collect(),
                banned_until: h.banned_until_ns,
            };
            match h.kind.as_str() {
                "peer" => self.peers.entry(target.addr()).or_default().history = history,
                "prefix" => self.prefixes.entry(target).or_default().history = history,
                _ => {}
            }
        }
    }
}
