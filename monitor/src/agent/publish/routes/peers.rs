//! `GET /v1/peers`: the policy's per-peer view.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;

use super::{blocking, Failure};
use crate::agent::publish::view::View;
use crate::api::PEERS_PATH;
use crate::locks::lock;

/// The route `GET /v1/peers`.
pub fn routes() -> Router<Arc<View>> {
    Router::new().route(PEERS_PATH, get(peers))
}

/// `GET /v1/peers`.
async fn peers(State(view): State<Arc<View>>) -> Response {
    blocking(move || Ok::<_, Failure>(lock(&view.policy).peers())).await
}
