//! Per-peer and per-prefix state: sliding windows of counts and ban
//! history.

use std::collections::VecDeque;

use super::*;

/// A peer's or prefix's ban history.
#[derive(Debug, Default)]
pub(super) struct History {
    /// When bans were issued (or would have been), oldest first.
    pub(super) bans: VecDeque<u64>,
    /// Ban end (monotonic ns) of the last ban.
    pub(super) banned_until: u64,
}

impl History {
    pub(super) fn prune(&mut self, now: u64) {
        while self
            .bans
            .front()
            .is_some_and(|t| now.saturating_sub(*t) > REPEAT_WINDOW_NS)
        {
            self.bans.pop_front();
        }
    }
}

/// A sliding window of counts: `(time, count)` buckets, oldest first, and
/// their running total.
#[derive(Debug, Default)]
pub(super) struct Window {
    pub(super) buckets: VecDeque<(u64, u64)>,
    pub(super) total: u64,
}

impl Window {
    /// Adds `n` at time `t` (merged into the newest bucket when `t` is at
    /// most [`BUCKET_NS`] after it).
    pub(super) fn add(&mut self, t: u64, n: u64) {
        self.total += n;
        if let Some(back) = self.buckets.back_mut() {
            if t >= back.0 && t - back.0 < BUCKET_NS {
                back.1 += n;
                return;
            }
        }
        self.buckets.push_back((t, n));
    }

    /// Drops the buckets older than `len` at `now`, from the oldest end.
    pub(super) fn prune(&mut self, now: u64, len: u64) {
        while let Some(&(t, n)) = self.buckets.front() {
            if now.saturating_sub(t) <= len {
                break;
            }
            self.total -= n;
            self.buckets.pop_front();
        }
    }

    /// The total at `now` as [`Window::prune`] would leave it, without
    /// changing anything.
    pub(super) fn count_at(&self, now: u64, len: u64) -> u64 {
        let expired: u64 = self
            .buckets
            .iter()
            .take_while(|(t, _)| now.saturating_sub(*t) > len)
            .map(|(_, n)| n)
            .sum();
        self.total - expired
    }

    pub(super) fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// `over` bit of a window rule.
pub(super) fn bit(rule: Rule) -> u8 {
    match rule {
        Rule::HandshakesPer10s | Rule::PrefixHandshakesPer10s => 1,
        _ => 2,
    }
}

#[derive(Debug, Default)]
pub(super) struct Peer {
    /// New flows by first_seen_ns.
    pub(super) handshakes: Window,
    /// Renegotiation attempts by the time they were observed.
    pub(super) renegs: Window,
    /// Bans issued (or that would have been).
    pub(super) history: History,
    /// Rules currently above their threshold (fired already), [`bit`]s.
    pub(super) over: u8,
    /// The newest connection that counted a handshake.
    pub(super) handshake_conn: Option<ConnRef>,
    /// The newest connection that counted a renegotiation.
    pub(super) reneg_conn: Option<ConnRef>,
    /// Changed since it was last evaluated (it is in `Policy::dirty`).
    pub(super) dirty: bool,
}

impl Peer {
    pub(super) fn prune(&mut self, now: u64) {
        self.handshakes.prune(now, HANDSHAKE_WINDOW_NS);
        self.renegs.prune(now, RENEG_WINDOW_NS);
        self.history.prune(now);
    }

    /// The counts after [`Peer::prune`] at `now`.
    pub(super) fn counts(&self) -> Counts {
        Counts {
            handshakes_10s: self.handshakes.total,
            renegotiations_1m: self.renegs.total,
            ..Counts::default()
        }
    }

    /// The counts at `now`, pruned or not.
    pub(super) fn counts_at(&self, now: u64) -> Counts {
        Counts {
            handshakes_10s: self.handshakes.count_at(now, HANDSHAKE_WINDOW_NS),
            renegotiations_1m: self.renegs.count_at(now, RENEG_WINDOW_NS),
            ..Counts::default()
        }
    }

    pub(super) fn last_conn(&self, rule: Rule) -> Option<&ConnRef> {
        match rule {
            Rule::HandshakesPer10s | Rule::PrefixHandshakesPer10s => self.handshake_conn.as_ref(),
            _ => self.reneg_conn.as_ref(),
        }
    }

    pub(super) fn idle(&self) -> bool {
        self.handshakes.is_empty() && self.renegs.is_empty() && self.history.bans.is_empty()
    }
}

/// A client prefix's state.
#[derive(Debug, Default)]
pub(super) struct Group {
    pub(super) history: History,
    /// [`bit`]s of the prefix rules above their threshold.
    pub(super) over: u8,
}

/// One prefix's sums in a sweep: counts, and per rule the busiest peer with
/// its newest connection.
#[derive(Default)]
pub(super) struct Sum {
    pub(super) counts: Counts,
    /// `[handshakes, renegotiations]`: (count, address, connection).
    pub(super) busiest: [Option<(u64, IpAddr, Option<ConnRef>)>; 2],
}
