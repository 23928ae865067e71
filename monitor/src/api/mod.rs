//! The control API: the only contract between the agent and the CLI. Paths
//! and the JSON documents the agent serves; types only, no logic, and no
//! import of anything else of this crate.

pub mod bans;
pub mod cidr;
pub mod conns;
pub mod decisions;
pub mod peers;
pub mod policy;
pub mod status;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `GET`: JSON array of every tracked connection ([`conns::ConnRecord`]),
/// open and recently closed.
pub const CONNS_PATH: &str = "/v1/conns";
/// `GET`: [`Stats`].
pub const STATS_PATH: &str = "/v1/stats";
/// `GET`: [`status::Status`].
pub const STATUS_PATH: &str = "/v1/status";
/// `GET`: JSON array of [`peers::PeerRecord`].
pub const PEERS_PATH: &str = "/v1/peers";
/// `GET`: the event backlog as JSON lines; `?follow=1` keeps streaming
/// (README "Events").
pub const EVENTS_PATH: &str = "/v1/events";

/// What `GET /v1/stats` serves.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// The kernel's `STATS` counters summed over CPUs, by name.
    pub kernel: BTreeMap<String, u64>,
    /// Flows live in the kernel's flow map.
    pub flows_tracked: usize,
    /// Closed flows the agent keeps.
    pub flows_recently_closed: usize,
    /// Ring-buffer events read.
    pub events_read: u64,
    /// Ring-buffer events too short or of an unknown kind.
    pub events_bad: u64,
    /// Closes taken in (events and sweeps), duplicates included.
    pub closes_seen: u64,
    /// Closes that repeated a flow already closed.
    pub duplicate_closes: u64,
    /// Live flows the full kernel flow map dropped before they closed.
    pub flows_evicted: u64,
    /// Over-cap connections the sweep reset because their ring-buffer event
    /// was lost.
    #[serde(default)]
    pub over_cap_sweep_resets: u64,
}
