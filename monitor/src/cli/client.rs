//! The CLI side of the control API: one HTTP/1 request over the agent's Unix
//! socket (GET, or POST/DELETE with [`request`]), or a streamed answer read
//! line by line ([`stream_lines`], for `hsmon events --follow`).

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

/// How long one request may take before the CLI gives up.
const TIMEOUT: Duration = Duration::from_secs(15);

/// The error for a socket that is missing or refuses connections.
fn unreachable(socket: &Path) -> String {
    format!(
        "cannot reach the agent at {} (is `hsmon run` running?)",
        socket.display()
    )
}

/// The error for a socket this user may not open.
fn forbidden(socket: &Path) -> String {
    format!(
        "permission denied opening the agent's control socket {}: only root and members of group hsmon (or the group `hsmon run --socket-group` names) may use it",
        socket.display()
    )
}

/// Connects to the agent's socket, explaining a refusal.
async fn connect(socket: &Path) -> Result<UnixStream> {
    match UnixStream::connect(socket).await {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            Err(e).with_context(|| forbidden(socket))
        }
        Err(e) => Err(e).with_context(|| unreachable(socket)),
    }
}

/// The agent answered, but not with 200: its status and the `error` message
/// of its JSON body. (`anyhow::Error::downcast_ref` finds it.)
#[derive(Debug, thiserror::Error)]
#[error("the agent answered {path} with {status}: {message}")]
pub struct ApiError {
    /// The request's path.
    pub path: String,
    /// The HTTP status.
    pub status: StatusCode,
    /// The agent's explanation.
    pub message: String,
}

/// GETs `path` from the agent listening on `socket`; returns the body of a
/// 200 answer, or an error that says what went wrong.
pub async fn get(socket: &Path, path: &str) -> Result<Bytes> {
    request(socket, Method::GET, path, None).await
}

/// Sends `method path` (with `json` as a JSON body, if any) to the agent
/// listening on `socket`; returns the body of a 200 answer, or an error that
/// says what went wrong (an [`ApiError`] when the agent refused).
pub async fn request(
    socket: &Path,
    method: Method,
    path: &str,
    json: Option<Vec<u8>>,
) -> Result<Bytes> {
    match tokio::time::timeout(TIMEOUT, request_inner(socket, method, path, json)).await {
        Ok(r) => r,
        Err(_) => bail!(
            "the agent at {} did not answer within {} s",
            socket.display(),
            TIMEOUT.as_secs()
        ),
    }
}

async fn request_inner(
    socket: &Path,
    method: Method,
    path: &str,
    json: Option<Vec<u8>>,
) -> Result<Bytes> {
    let stream = connect(socket).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("starting an HTTP exchange with the agent")?;
    let conn = tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, "hsmon");
    if json.is_some() {
        req = req.header(CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(json.unwrap_or_default())))
        .context("building the request")?;
    let resp = sender
        .send_request(req)
        .await
        .with_context(|| format!("asking the agent for {path}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .with_context(|| format!("reading the agent's answer to {path}"))?
        .to_bytes();
    conn.abort();
    if status != StatusCode::OK {
        return Err(ApiError {
            path: path.to_owned(),
            status,
            message: error_message(&body),
        }
        .into());
    }
    Ok(body)
}

/// GETs `path` and hands each line of the answer (without its newline) to
/// `on_line` as it arrives, until the agent ends the answer or `on_line`
/// returns `false`. No overall timeout: a follow stream lasts as long as the
/// agent; only connecting and the answer's head are bounded.
pub async fn stream_lines(
    socket: &Path,
    path: &str,
    mut on_line: impl FnMut(&str) -> Result<bool>,
) -> Result<()> {
    let head = async {
        let stream = connect(socket).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("starting an HTTP exchange with the agent")?;
        let conn = tokio::spawn(conn);
        let req = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header(HOST, "hsmon")
            .body(Full::new(Bytes::new()))
            .context("building the request")?;
        let resp = sender
            .send_request(req)
            .await
            .with_context(|| format!("asking the agent for {path}"))?;
        anyhow::Ok((resp, conn))
    };
    let (resp, conn) = match tokio::time::timeout(TIMEOUT, head).await {
        Ok(r) => r?,
        Err(_) => bail!(
            "the agent at {} did not answer within {} s",
            socket.display(),
            TIMEOUT.as_secs()
        ),
    };
    let status = resp.status();
    let mut body = resp.into_body();
    if status != StatusCode::OK {
        let bytes = body
            .collect()
            .await
            .with_context(|| format!("reading the agent's answer to {path}"))?
            .to_bytes();
        conn.abort();
        return Err(ApiError {
            path: path.to_owned(),
            status,
            message: error_message(&bytes),
        }
        .into());
    }
    let mut pending: Vec<u8> = Vec::new();
    let result = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.with_context(|| format!("reading the agent's stream {path}"))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=nl).collect();
                let text = String::from_utf8_lossy(&line[..line.len() - 1]);
                if !on_line(&text)? {
                    return Ok(());
                }
            }
        }
        if !pending.is_empty() {
            on_line(&String::from_utf8_lossy(&pending))?;
        }
        anyhow::Ok(())
    }
    .await;
    conn.abort();
    result
}

/// The `error` field of a JSON error body, or the body itself (shortened).
fn error_message(body: &[u8]) -> String {
    if let Ok(serde_json::Value::Object(m)) = serde_json::from_slice(body) {
        if let Some(serde_json::Value::String(e)) = m.get("error") {
            return e.clone();
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies() {
        assert_eq!(error_message(br#"{"error":"map gone"}"#), "map gone");
        assert_eq!(error_message(b"  Not Found \n"), "Not Found");
        assert_eq!(error_message(&[b'x'; 300]).len(), 203);
        assert_eq!(error_message(&[0xff, 0xfe]), "\u{fffd}\u{fffd}");
    }

    #[tokio::test]
    async fn missing_socket_is_explained() {
        let path = std::env::temp_dir().join(format!("hsmon-none-{}.sock", std::process::id()));
        let err = get(&path, "/v1/conns").await.expect_err("no agent");
        assert_eq!(
            err.to_string(),
            format!(
                "cannot reach the agent at {} (is `hsmon run` running?)",
                path.display()
            )
        );
    }
}
