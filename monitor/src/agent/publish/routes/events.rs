//! `GET /v1/events` (`hsmon events`): the event bus's backlog, or with
//! `?follow=1` the backlog and then every event as it comes.

use std::collections::VecDeque;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::sync::broadcast;

use crate::agent::publish::event_bus::{lagged_line, Event};
use crate::agent::publish::view::View;
use crate::api::EVENTS_PATH;

/// The route `GET /v1/events`.
pub fn routes() -> Router<Arc<View>> {
    Router::new().route(EVENTS_PATH, get(events))
}

/// Whether a query string asks to follow (`follow`, `follow=1`, `follow=true`).
pub fn wants_follow(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&')
            .any(|kv| matches!(kv, "follow" | "follow=1" | "follow=true" | "follow=yes"))
    })
}

/// `GET /v1/events`: the backlog as JSON lines; with `?follow=1` the
/// backlog and then every new event as it comes (`lagged` lines when the
/// reader falls behind), until the agent stops.
async fn events(State(view): State<Arc<View>>, RawQuery(query): RawQuery) -> Response {
    let follow = wants_follow(query.as_deref());
    let headers = [(header::CONTENT_TYPE, "application/x-ndjson")];
    if !follow {
        let mut body = String::new();
        for ev in view.events.backlog() {
            body.push_str(&ev.line);
            body.push('\n');
        }
        return (headers, body).into_response();
    }
    let (backlog, rx) = view.events.follow();
    let last_seq = backlog.last().map_or(0, |e| e.seq);
    let ended = backlog.iter().any(|e| e.last);
    let state = Follow {
        backlog: backlog.into(),
        rx,
        last_seq,
        ended,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        let line = st.next_line().await?;
        Some((Ok::<_, std::convert::Infallible>(line), st))
    });
    (headers, Body::from_stream(stream)).into_response()
}

/// A follower's position: the backlog still to send, then the channel.
struct Follow {
    backlog: VecDeque<Event>,
    rx: broadcast::Receiver<Event>,
    last_seq: u64,
    ended: bool,
}

impl Follow {
    /// The next line to send (with its newline), or `None` at the end.
    async fn next_line(&mut self) -> Option<String> {
        if let Some(ev) = self.backlog.pop_front() {
            return Some(format!("{}\n", ev.line));
        }
        if self.ended {
            return None;
        }
        loop {
            match self.rx.recv().await {
                Ok(ev) if ev.seq <= self.last_seq => continue,
                Ok(ev) => {
                    self.last_seq = ev.seq;
                    self.ended = ev.last;
                    return Some(format!("{}\n", ev.line));
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    return Some(format!("{}\n", lagged_line(n)));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follow_queries() {
        assert!(wants_follow(Some("follow=1")));
        assert!(wants_follow(Some("x=2&follow")));
        assert!(!wants_follow(Some("follow=0")));
        assert!(!wants_follow(None));
    }
}
