//! `GET /v1/status`: the agent's own facts and the live state
//! ([`View::status`]).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::{blocking, Failure};
use crate::agent::publish::view::View;
use crate::api::STATUS_PATH;

/// The route `GET /v1/status`.
pub fn routes() -> Router<Arc<View>> {
    Router::new().route(STATUS_PATH, get(status))
}

/// `GET /v1/status`: 200 with the status document, 503 before start-up
/// finished, 500 when a map cannot be read.
async fn status(State(view): State<Arc<View>>) -> Response {
    if view.info.get().is_none() {
        return Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is still starting",
        )
        .into_response();
    }
    blocking(move || view.status()).await
}
