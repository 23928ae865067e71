//! `GET /v1/status`: the agent's own facts (set once at start-up, see
//! [`AgentInfo`]) joined with the live state the other tasks keep in
//! [`Shared`]: the flow table, `STATS`, the event reader's counts, the bans.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Result};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use monitor_common::ban::MAX_BANS_PER_FAMILY;

use super::state::{lock, Shared};
use crate::status::{EventCounts, Fill, Hook, MapFills, Status, TracepointHook};

/// What the agent knows about itself once its programs are attached.
#[derive(Clone, Debug)]
pub struct AgentInfo {
    /// When `hsmon run` started.
    pub started: Instant,
    /// The control socket.
    pub socket: String,
    /// The metrics address, if served.
    pub metrics_addr: Option<String>,
    /// `--flow-map-size`.
    pub flow_map_capacity: u32,
    /// The TC programs attached.
    pub hooks: Vec<Hook>,
    /// The tracepoints attached.
    pub tracepoints: Vec<TracepointHook>,
}

impl Shared {
    /// The status document (blocking: sweeps `FLOWS` and reads `STATS`).
    pub fn status(&self) -> Result<Status> {
        let info = self
            .info
            .get()
            .ok_or_else(|| anyhow!("the agent is still starting"))?;
        let kernel = lock(&self.stats).read()?;
        let flows = lock(&self.table).sweep()?.len();
        let (v4, v6) = lock(&self.bans).family_counts();
        let per_family = u64::from(MAX_BANS_PER_FAMILY);
        Ok(Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            uptime_ms: u64::try_from(info.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            socket: info.socket.clone(),
            metrics_addr: info.metrics_addr.clone(),
            hooks: info.hooks.clone(),
            tracepoints: info.tracepoints.clone(),
            maps: MapFills {
                flows: Fill {
                    entries: flows as u64,
                    capacity: u64::from(info.flow_map_capacity),
                },
                bans_v4: Fill {
                    entries: v4 as u64,
                    capacity: per_family,
                },
                bans_v6: Fill {
                    entries: v6 as u64,
                    capacity: per_family,
                },
            },
            events: EventCounts {
                read: self.events_read.load(Ordering::Relaxed),
                lost: kernel.get("events_lost").copied().unwrap_or(0),
                bad: self.events_bad.load(Ordering::Relaxed),
            },
            bans_active: (v4 + v6) as u64,
        })
    }
}

/// `GET /v1/status`: 200 with [`Status`], 503 before start-up finished, 500
/// when a map cannot be read.
pub async fn handler(State(shared): State<Arc<Shared>>) -> Response {
    if shared.info.get().is_none() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "error": "the agent is still starting" })),
        )
            .into_response();
    }
    match tokio::task::spawn_blocking(move || shared.status()).await {
        Ok(Ok(s)) => Json(s).into_response(),
        Ok(Err(e)) => internal(format!("{e:#}")),
        Err(e) => internal(format!("the status task failed: {e}")),
    }
}

fn internal(msg: String) -> Response {
    tracing::warn!("control API: /v1/status: {msg}");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(serde_json::json!({ "error": msg })),
    )
        .into_response()
}
