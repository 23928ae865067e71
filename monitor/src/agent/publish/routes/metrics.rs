//! `GET /metrics` (on `--metrics-addr`, not the control socket): the
//! Prometheus exposition of a fresh [`Snapshot`].

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::Failure;
use crate::agent::publish::metrics::{Snapshot, CONTENT_TYPE, METRICS_PATH};
use crate::agent::publish::view::View;

/// What the metrics handler needs.
#[derive(Clone)]
struct MetricsState {
    view: Arc<View>,
    flow_map_capacity: u32,
}

/// The metrics server's routes: `GET /metrics`.
pub fn router(view: Arc<View>, flow_map_capacity: u32) -> Router {
    Router::new()
        .route(METRICS_PATH, get(metrics))
        .with_state(MetricsState {
            view,
            flow_map_capacity,
        })
}

/// `GET /metrics`.
async fn metrics(State(st): State<MetricsState>) -> Response {
    let done = tokio::task::spawn_blocking(move || {
        Snapshot::take(&st.view, st.flow_map_capacity)?.encode()
    })
    .await;
    match done {
        Ok(Ok(text)) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Ok(Err(e)) => Failure::from(e).into_response(),
        Err(e) => Failure::from(anyhow::anyhow!("the scrape's task failed: {e}")).into_response(),
    }
}
