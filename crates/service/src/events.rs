//! `GET /v1/runs/{id}/events`: a run's events as server-sent events, read from the run store
//! (so a follower sees what a restarted server recorded before it died as well). Each event's
//! SSE id is its row number in the store, which only grows: a client that reconnects with
//! `Last-Event-ID: N` gets exactly the events after N. The stream ends after the run's last
//! event, or when the server stops.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use joule_executor::queue::State as QueueState;
use joule_executor::store::Store;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::Service;
use crate::api::{Caller, own, refuse, store_failed};

/// How long a follower waits for a wake-up before it looks anyway (a resumed run's events, a
/// flush it was not woken for).
const LOOK_AGAIN: Duration = Duration::from_millis(500);

pub(crate) async fn follow(
    State(service): State<Arc<Service>>,
    who: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = own(&service, &who, &id) {
        return r;
    }
    let after = match headers.get("last-event-id").map(|v| v.to_str()) {
        None => 0,
        Some(Ok(v)) => match v.trim().parse::<i64>() {
            Ok(n) if n >= 0 => n,
            _ => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "invalid_last_event_id",
                    "`Last-Event-ID` is the id of an event this stream sent (a whole number)",
                );
            }
        },
        Some(Err(_)) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid_last_event_id",
                "`Last-Event-ID` is not ASCII",
            );
        }
    };
    let store = match Store::open(&service.config.store) {
        Ok(s) => s,
        Err(e) => return store_failed(e),
    };
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(64);
    tokio::spawn(pump(service, store, id, after, tx));
    Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Sends the run's events as they reach the store until its last one.
async fn pump(
    service: Arc<Service>,
    store: Store,
    id: String,
    mut after: i64,
    tx: mpsc::Sender<Result<Event, Infallible>>,
) {
    loop {
        // Armed before reading, so an event stored in between still wakes us.
        let woken = service.events.notified();
        let rows = match store.events_after(&id, after, 256) {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(error = %e, run = %id, "reading a run's events");
                return;
            }
        };
        let mut ended = false;
        for (n, body) in &rows {
            let kind = body["event"].as_str().unwrap_or("event").to_string();
            ended |= kind == "run_ended";
            let event = Event::default()
                .id(n.to_string())
                .event(kind)
                .data(body.to_string());
            if tx.send(Ok(event)).await.is_err() {
                return; // the client went away
            }
            after = *n;
        }
        if ended || (rows.is_empty() && never_runs(&service, &id)) {
            return;
        }
        if rows.len() == 256 {
            continue;
        }
        tokio::select! {
            _ = woken => {}
            _ = tokio::time::sleep(LOOK_AGAIN) => {}
            _ = tx.closed() => return,
        }
        if service.stopping.is_cancelled() {
            return;
        }
    }
}

/// A submission that ended without a `run_ended` event (refused when planned, cancelled while
/// queued, or cancelled and then cut off by a dying server) has nothing more to wait for.
fn never_runs(service: &Service, id: &str) -> bool {
    let state = service
        .queue()
        .submission(id)
        .ok()
        .flatten()
        .map(|s| s.state);
    match state {
        Some(QueueState::Refused) => true,
        Some(QueueState::Cancelled) => !service.running().contains_key(id),
        _ => false,
    }
}
