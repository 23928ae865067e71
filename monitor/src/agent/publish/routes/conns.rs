//! `GET /v1/conns`: every connection, read from the kernel now.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;

use super::blocking;
use crate::agent::publish::view::View;
use crate::api::CONNS_PATH;

/// The route `GET /v1/conns`.
pub fn routes() -> Router<Arc<View>> {
    Router::new().route(CONNS_PATH, get(conns))
}

/// `GET /v1/conns`.
async fn conns(State(view): State<Arc<View>>) -> Response {
    blocking(move || view.conns()).await
}
