//! The fallback for the renegotiation-cap reset when its ring-buffer event
//! was lost: the sweep finds open flows whose tracker flags carry
//! [`FF_OVER_CAP`] and that were not reset yet. A flow is only taken when it
//! was already over the cap at the previous sweep, so the event path (which
//! marks what it reset) gets one sweep to do it first.

use std::collections::HashSet;

use monitor_common::flow::{FlowKey, FlowValue};
use monitor_common::tracker::FF_OVER_CAP;

type FlowId = (FlowKey, u64);

/// Which over-cap flows were reset, and which wait for one more sweep.
#[derive(Debug, Default)]
pub struct OverCap {
    reset: HashSet<FlowId>,
    seen: HashSet<FlowId>,
    /// Resets this fallback asked for.
    pub sweep_resets: u64,
}

impl OverCap {
    /// The event path reset this flow.
    pub fn mark_reset(&mut self, key: &FlowKey, value: &FlowValue) {
        self.reset.insert((*key, value.first_seen_ns));
    }

    /// The reset of this flow failed: the sweep tries again (after its
    /// grace sweep), so a failed reset is retried until the flow closes.
    pub fn unmark_reset(&mut self, key: &FlowKey, first_seen_ns: u64) {
        let id = (*key, first_seen_ns);
        self.reset.remove(&id);
        self.seen.remove(&id);
    }

    /// The live flows to reset now (each returned once); forgets flows that
    /// are no longer live, so both sets stay bounded by the live flows.
    pub fn due(&mut self, live: &[(FlowKey, FlowValue)]) -> Vec<(FlowKey, FlowValue)> {
        let mut due = Vec::new();
        let mut seen_now = HashSet::new();
        let mut live_ids = HashSet::new();
        for (k, v) in live {
            let id = (*k, v.first_seen_ns);
            live_ids.insert(id);
            if v.tracker.flags & FF_OVER_CAP == 0 || self.reset.contains(&id) {
                continue;
            }
            if self.seen.contains(&id) {
                self.reset.insert(id);
                due.push((*k, *v));
            } else {
                seen_now.insert(id);
            }
        }
        self.seen = seen_now;
        self.reset.retain(|id| live_ids.contains(id));
        self.sweep_resets += due.len() as u64;
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::ingest::record::tests::sample_flow;

    #[test]
    fn resets_once_after_a_grace_sweep_unless_the_event_did() {
        let (k, mut v) = sample_flow();
        let mut o = OverCap::default();
        assert!(o.due(&[(k, v)]).is_empty(), "not over the cap");
        v.tracker.flags |= FF_OVER_CAP;
        assert!(o.due(&[(k, v)]).is_empty(), "grace sweep");
        assert_eq!(o.due(&[(k, v)]).len(), 1);
        assert!(o.due(&[(k, v)]).is_empty(), "only once");
        assert_eq!(o.sweep_resets, 1);

        // Reset by the event path: never by the sweep.
        let mut w = v;
        w.first_seen_ns += 1;
        o.mark_reset(&k, &w);
        assert!(o.due(&[(k, w)]).is_empty());
        assert!(o.due(&[(k, w)]).is_empty());
        // A failed reset is tried again by the sweep, after its grace.
        o.unmark_reset(&k, w.first_seen_ns);
        assert!(o.due(&[(k, w)]).is_empty(), "grace sweep");
        assert_eq!(o.due(&[(k, w)]).len(), 1, "retried");
        // Gone from the live set: forgotten.
        o.due(&[]);
        assert!(o.reset.is_empty() && o.seen.is_empty());
    }
}
