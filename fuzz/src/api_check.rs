//! What the api target checks: arbitrary HTTP requests (method, path and
//! query, body) through an axum router with the agent's routes and the same
//! extractors, whose handlers run the request validation the agent's
//! handlers run before they touch a kernel map.
//!
//! The agent's own router (`monitor::agent::publish::server::router`) needs the kernel's
//! maps in its state (`Shared`), so it cannot run here; what sits in front of
//! the maps is fuzzed instead: axum's routing and its `Json<AddBan>` /
//! `Path<String>` extraction, `AddBan` deserialisation, `parse_ban_target`,
//! `Cidr` parsing, `check_ttl` and `check_reason`. Checked: no panic, no 5xx,
//! an accepted ban is valid (prefix not /0, TTL 1 ms..24 h, reason allowed)
//! and its prefix survives printing and parsing again, and the router agrees
//! with the validation run directly on the body.

use std::str::FromStr as _;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::Path;
use axum::http::{Method, Request, StatusCode};
use axum::routing::{delete, get};
use axum::{Json, Router};
use monitor::api::{CONNS_PATH, PEERS_PATH, STATS_PATH, STATUS_PATH};
use monitor::api::bans::{check_reason, check_ttl, AddBan, BANS_PATH};
use monitor::api::cidr::{parse_ban_target, Cidr};
use tower::ServiceExt as _;

/// The validation of `POST /v1/bans` once the body is an [`AddBan`].
pub fn validate_add(req: &AddBan) -> Result<Cidr, String> {
    let cidr = parse_ban_target(&req.cidr)?;
    check_ttl(Duration::from_millis(req.ttl_ms))?;
    check_reason(&req.reason)?;
    Ok(cidr)
}

fn check_cidr(c: &Cidr) {
    let again: Cidr = c
        .to_string()
        .parse()
        .unwrap_or_else(|e| panic!("{c} does not parse back: {e}"));
    assert_eq!(&again, c, "printing and parsing changed the prefix");
    assert!(
        c.contains(c) && c.overlaps(c),
        "{c} does not contain itself"
    );
}

async fn add(body: Result<Json<AddBan>, JsonRejection>) -> (StatusCode, String) {
    let Ok(Json(req)) = body else {
        return (StatusCode::BAD_REQUEST, "bad body".into());
    };
    match validate_add(&req) {
        Ok(cidr) => {
            assert_ne!(cidr.prefix_len(), 0, "a /0 ban was accepted");
            let ttl = Duration::from_millis(req.ttl_ms);
            assert!(!ttl.is_zero() && ttl <= monitor::api::bans::MAX_TTL);
            assert!(!req.reason.chars().any(char::is_control));
            check_cidr(&cidr);
            (StatusCode::OK, cidr.to_string())
        }
        Err(e) => {
            assert!(!e.is_empty(), "an empty refusal");
            (StatusCode::BAD_REQUEST, e)
        }
    }
}

async fn remove(Path(cidr): Path<String>) -> (StatusCode, String) {
    match cidr.trim_start_matches('/').parse::<Cidr>() {
        Ok(c) => {
            check_cidr(&c);
            (StatusCode::OK, c.to_string())
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()),
    }
}

async fn ok() -> StatusCode {
    StatusCode::OK
}

fn router() -> Router {
    Router::new()
        .route(CONNS_PATH, get(ok))
        .route(STATS_PATH, get(ok))
        .route(STATUS_PATH, get(ok))
        .route(PEERS_PATH, get(ok))
        .route(BANS_PATH, get(ok).post(add))
        .route(&format!("{BANS_PATH}/{{*cidr}}"), delete(remove))
}

/// Splits the input: method selector byte, then path-and-query up to the
/// first zero byte, then the body.
pub fn check(data: &[u8]) {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let method = match m % 6 {
        0 => Method::GET,
        1 => Method::POST,
        2 => Method::DELETE,
        3 => Method::PUT,
        4 => Method::HEAD,
        _ => Method::PATCH,
    };
    let (path, body) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(path) = std::str::from_utf8(path) else {
        return;
    };
    // hyper only hands axum requests with a valid origin-form target.
    if !path.starts_with('/') || axum::http::Uri::from_str(path).is_err() {
        return;
    }
    let Ok(req) = Request::builder()
        .method(method.clone())
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_vec()))
    else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    let resp = rt
        .block_on(router().oneshot(req))
        .unwrap_or_else(|e| match e {});
    let status = resp.status();
    assert!(!status.is_server_error(), "{method} {path}: {status}");
    // The router agrees with the validation run directly on the body.
    let uri_path = path.split('?').next().unwrap_or(path);
    if method == Method::POST && uri_path == BANS_PATH {
        let direct = serde_json::from_slice::<AddBan>(body)
            .ok()
            .map(|r| validate_add(&r).is_ok());
        match direct {
            Some(true) => assert_eq!(status, StatusCode::OK, "a valid ban was refused"),
            _ => assert_eq!(
                status,
                StatusCode::BAD_REQUEST,
                "an invalid ban was not refused"
            ),
        }
    }
}
