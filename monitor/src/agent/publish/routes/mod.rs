//! The control API's HTTP routes, one file per resource, and the one way
//! they answer a failure ([`Failure`]: `{"error": "..."}` with its status,
//! logged once).

pub mod bans;
pub mod conns;
pub mod events;
pub mod metrics;
pub mod peers;
pub mod stats;
pub mod status;

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};

use crate::agent::enforce::bans::BanError;
use crate::agent::publish::view::View;

/// The control API's routes, reading `view`.
pub fn router(view: Arc<View>) -> Router {
    Router::new()
        .merge(conns::routes())
        .merge(stats::routes())
        .merge(status::routes())
        .merge(peers::routes())
        .merge(events::routes())
        .merge(bans::routes())
        .with_state(view)
}

/// A request that failed: the status and the message of its
/// `{"error": ...}` answer.
#[derive(Debug)]
pub struct Failure {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, for the caller.
    pub msg: String,
}

impl Failure {
    /// A failure with `status`.
    pub fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        Failure {
            status,
            msg: msg.into(),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
    }
}

impl From<BanError> for Failure {
    fn from(e: BanError) -> Self {
        let status = e.status();
        Failure::new(status, format!("{:#}", anyhow::Error::new(e)))
    }
}

impl IntoResponse for Failure {
    /// The one error answer of every route: logged (a warning when it is
    /// the agent's fault), then `{"error": msg}` with the status.
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!("control API: {}", self.msg);
        } else {
            tracing::info!("control API refused: {}", self.msg);
        }
        (self.status, Json(serde_json::json!({ "error": self.msg }))).into_response()
    }
}

/// Runs a closure that reads (or, for bans, changes) kernel maps off the
/// async threads and answers with its JSON, or its [`Failure`].
pub async fn blocking<T, E, F>(f: F) -> Response
where
    T: serde::Serialize + Send + 'static,
    E: Into<Failure> + Send + 'static,
    F: FnOnce() -> Result<T, E> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => e.into().into_response(),
        Err(e) => Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the request's task failed: {e}"),
        )
        .into_response(),
    }
}
