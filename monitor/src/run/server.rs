//! The control server: HTTP/JSON on a Unix socket (`GET /v1/conns`,
//! `GET /v1/stats`, the ban routes of `super::bans`), and the socket file's
//! life cycle.

use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::UnixListener;

use super::state::Shared;
use crate::api::{CONNS_PATH, STATS_PATH};

/// The socket file this agent created; removed when dropped (only if it is
/// still the same file, not one a later agent put there).
pub struct SocketFile {
    path: PathBuf,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.ino() == self.ino => match std::fs::remove_file(&self.path) {
                Ok(()) => tracing::info!("removed {}", self.path.display()),
                Err(e) => tracing::warn!("removing {}: {e}", self.path.display()),
            },
            _ => {}
        }
    }
}

/// Binds the control socket at `path`: creates its directory, replaces a stale
/// socket file (refusing if an agent still answers there), sets mode 0660.
pub fn bind(path: &Path) -> Result<(UnixListener, SocketFile)> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!(
                    "another agent is already listening on {} (stop it, or pick another --socket)",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale socket {}", path.display()))?;
            tracing::info!("removed the stale socket {}", path.display());
        }
        Ok(_) => bail!("{} exists and is not a socket", path.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("checking {}", path.display())),
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("listening on {}", path.display()))?;
    let meta =
        std::fs::symlink_metadata(path).with_context(|| format!("checking {}", path.display()))?;
    let file = SocketFile {
        path: path.to_owned(),
        ino: meta.ino(),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok((listener, file))
}

/// The API's routes.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(CONNS_PATH, get(conns))
        .route(STATS_PATH, get(stats))
        .route(crate::api::STATUS_PATH, get(super::status::handler))
        .route(crate::api::PEERS_PATH, get(peers))
        .merge(super::bans::routes())
        .with_state(shared)
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: UnixListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    axum::serve(listener, router(shared))
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving the control API")
}

/// `GET /v1/conns`.
async fn conns(State(shared): State<Arc<Shared>>) -> Response {
    blocking(move || shared.conns()).await
}

/// `GET /v1/peers`.
async fn peers(State(shared): State<Arc<Shared>>) -> Response {
    blocking(move || Ok(super::state::lock(&shared.policy).peers())).await
}

/// `GET /v1/stats`.
async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    blocking(move || shared.stats()).await
}

/// Runs a map-reading closure off the async threads and answers with its
/// JSON, or a 500 with `{"error": ...}`.
async fn blocking<T, F>(f: F) -> Response
where
    T: serde::Serialize + Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => error(format!("{e:#}")),
        Err(e) => error(format!("the request's task failed: {e}")),
    }
}

/// A 500 answer.
fn error(msg: String) -> Response {
    tracing::warn!("control API: {msg}");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(serde_json::json!({ "error": msg })),
    )
        .into_response()
}
