//! `GET /v1/stats`: the kernel's and the agent's counters.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;

use super::blocking;
use crate::agent::publish::view::View;
use crate::api::STATS_PATH;

/// The route `GET /v1/stats`.
pub fn routes() -> Router<Arc<View>> {
    Router::new().route(STATS_PATH, get(stats))
}

/// `GET /v1/stats`.
async fn stats(State(view): State<Arc<View>>) -> Response {
    blocking(move || view.stats()).await
}
