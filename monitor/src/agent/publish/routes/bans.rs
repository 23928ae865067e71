//! The ban routes: `GET/POST /v1/bans`, `POST /v1/bans/bulk` and
//! `DELETE /v1/bans/{cidr}` (`crate::api::bans` documents them), over the
//! enforcer's ban table.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};

use super::{blocking, Failure};
use crate::agent::enforce::bans::BanError;
use crate::agent::kernel::clock::monotonic_now_ns;
use crate::agent::publish::view::View;
use crate::api::bans::{
    AddBan, BulkAdd, BulkRefusal, BulkResult, BANS_BULK_PATH, BANS_PATH, MAX_BULK,
};
use crate::api::cidr::{parse_ban_target, Cidr};
use crate::locks::lock;

/// The routes `GET/POST /v1/bans`, `POST /v1/bans/bulk` and
/// `DELETE /v1/bans/{cidr}`.
pub fn routes() -> Router<Arc<View>> {
    Router::new()
        .route(BANS_PATH, get(list).post(add))
        .route(
            BANS_BULK_PATH,
            post(add_bulk).layer(DefaultBodyLimit::max(BULK_BODY_LIMIT)),
        )
        .route(&format!("{BANS_PATH}/{{*cidr}}"), delete(remove))
}

/// The largest `POST /v1/bans/bulk` body: [`MAX_BULK`] bans with long
/// reasons (the default limit, 2 MB, holds about 30,000).
const BULK_BODY_LIMIT: usize = 64 << 20;

/// `POST /v1/bans/bulk`: every ban added like `POST /v1/bans`, under one
/// lock; refusals are listed, not fatal.
async fn add_bulk(
    State(view): State<Arc<View>>,
    body: Result<Json<BulkAdd>, JsonRejection>,
) -> Response {
    let req = match request_body(body) {
        Ok(req) => req,
        Err(refused) => return refused,
    };
    if req.bans.len() > MAX_BULK {
        return Failure::from(BanError::Invalid(format!(
            "{} bans in one request; at most {MAX_BULK}",
            req.bans.len()
        )))
        .into_response();
    }
    blocking(move || {
        // Bad prefixes are refused here; the rest go to the table in one go.
        let mut refused: Vec<(usize, BulkRefusal)> = Vec::new();
        let mut good = Vec::with_capacity(req.bans.len());
        let mut index = Vec::with_capacity(req.bans.len());
        for (i, ban) in req.bans.iter().enumerate() {
            match parse_ban_target(&ban.cidr) {
                Ok(cidr) => {
                    good.push((cidr, Duration::from_millis(ban.ttl_ms), ban.reason.clone()));
                    index.push(i);
                }
                Err(e) => refused.push((
                    i,
                    BulkRefusal {
                        cidr: ban.cidr.clone(),
                        error: e,
                    },
                )),
            }
        }
        let (added, table_refused) = lock(&view.bans).add_many(good, monotonic_now_ns());
        for (j, e) in table_refused {
            let i = index[j];
            refused.push((
                i,
                BulkRefusal {
                    cidr: req.bans[i].cidr.clone(),
                    error: format!("{:#}", anyhow::Error::new(e)),
                },
            ));
        }
        refused.sort_by_key(|(i, _)| *i);
        Ok::<_, BanError>(BulkResult {
            added,
            refused: refused.into_iter().map(|(_, r)| r).collect(),
        })
    })
    .await
}

/// The request's JSON body, or the 400 answer naming what is wrong with it
/// (the handler returns that answer as is: boxing it would buy nothing).
#[allow(clippy::result_large_err)]
fn request_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, Response> {
    body.map(|Json(req)| req).map_err(|e| {
        Failure::from(BanError::Invalid(format!("bad request body: {e}"))).into_response()
    })
}

/// `GET /v1/bans`.
async fn list(State(view): State<Arc<View>>) -> Response {
    blocking(move || Ok::<_, BanError>(lock(&view.bans).list(monotonic_now_ns()))).await
}

/// `POST /v1/bans`.
async fn add(State(view): State<Arc<View>>, body: Result<Json<AddBan>, JsonRejection>) -> Response {
    let req = match request_body(body) {
        Ok(req) => req,
        Err(refused) => return refused,
    };
    let cidr = match parse_ban_target(&req.cidr) {
        Ok(c) => c,
        Err(e) => return Failure::from(BanError::Invalid(e)).into_response(),
    };
    let ttl = Duration::from_millis(req.ttl_ms);
    blocking(move || lock(&view.bans).add(cidr, ttl, &req.reason, monotonic_now_ns())).await
}

/// `DELETE /v1/bans/{cidr}`.
async fn remove(State(view): State<Arc<View>>, Path(cidr): Path<String>) -> Response {
    let cidr = match cidr.trim_start_matches('/').parse::<Cidr>() {
        Ok(c) => c,
        Err(e) => return Failure::from(BanError::Invalid(e.to_string())).into_response(),
    };
    blocking(move || lock(&view.bans).remove(&cidr, monotonic_now_ns())).await
}
