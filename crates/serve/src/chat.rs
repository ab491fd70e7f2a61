//! The handlers: health, the model list and chat completions (whole or streamed as
//! server-sent events).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use joule_models::local::{Flow, Generation, LocalError};
use joule_models::openai::convert::{finish_reason, timings_of, to_local, usage_of};
use joule_models::openai::wire::{
    ChatChunk, ChatMessage, ChatRequest, ChatResponse, Choice, ChunkChoice, Content, Delta,
    ErrorBody, Usage,
};
use joule_models::store::ModelError;
use tokio::sync::mpsc;

use crate::App;

pub(crate) async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "method_not_allowed",
        "this route does not take that method; chat completions are POST, the rest GET",
    )
}

fn error(status: StatusCode, kind: &str, code: &str, message: impl Into<String>) -> Response {
    let body = ErrorBody::new(kind, code, message);
    tracing::info!(status = status.as_u16(), code, message = %body.error.message, "request refused");
    (status, axum::Json(body)).into_response()
}

pub(crate) async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "unknown_url",
        "no such route; joule serves GET /health, GET /v1/models and POST /v1/chat/completions",
    )
}

pub(crate) async fn health(State(app): State<Arc<App>>) -> Response {
    axum::Json(serde_json::json!({
        "status": "ok",
        "device": app.backend.device_id(),
        "resident": app.backend.resident(),
        "engines": app.backend.engines(),
    }))
    .into_response()
}

pub(crate) async fn list_models(State(app): State<Arc<App>>) -> Response {
    let data: Vec<serde_json::Value> = app
        .backend
        .local_models()
        .map(|m| serde_json::json!({"id": m.id, "object": "model", "created": 0, "owned_by": "joule"}))
        .collect();
    axum::Json(serde_json::json!({"object": "list", "data": data})).into_response()
}

fn local_error(e: &LocalError) -> Response {
    match e {
        LocalError::UnknownModel(..) | LocalError::Model(ModelError::NotLocal(_)) => error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            e.to_string(),
        ),
        LocalError::Model(ModelError::Missing { .. }) => error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            e.to_string(),
        ),
        LocalError::ContextLength { .. } => error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "context_length_exceeded",
            e.to_string(),
        ),
        LocalError::Request(_) | LocalError::Template(_) => error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
            e.to_string(),
        ),
        _ => {
            tracing::error!(error = %e, "generation failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal_error",
                e.to_string(),
            )
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What the generation thread tells the handler.
enum Note {
    /// The prompt was accepted; tokens follow.
    Started,
    Text(String),
    Done(Box<Generation>),
    Failed(LocalError),
}

pub(crate) async fn chat(
    State(app): State<Arc<App>>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            let mut response = error(
                e.status(),
                "invalid_request_error",
                "invalid_body",
                e.body_text(),
            );
            // The rest of an unread body is still on the connection: close it, or the client's
            // next request on it would be read as that body's tail.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            return response;
        }
    };
    let request: ChatRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_json",
                format!("the body is not a valid chat request: {e}"),
            );
        }
    };
    let mut local = match to_local(&request) {
        Ok(l) => l,
        Err(message) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_request",
                message,
            );
        }
    };
    let id = format!("chatcmpl-{}", app.next_id.fetch_add(1, Ordering::Relaxed));
    let model_id = request.model.clone();
    // Set when the client is gone: the engine drops the request even while it still waits
    // for a place in the batch, where no token callback runs.
    let give_up = Arc::new(AtomicBool::new(false));
    local.cancel = Some(give_up.clone());
    let hang_up = GiveUpOnDrop(give_up);
    let (tx, mut rx) = mpsc::channel::<Note>(64);
    let worker = app.clone();
    let streaming = request.stream;
    tokio::task::spawn_blocking(move || {
        let outcome = (|| {
            let (model, load_s) = worker.backend.model(&model_id)?;
            let prepared = model.prepare(&local)?;
            if tx.blocking_send(Note::Started).is_err() {
                return Ok(None);
            }
            let mut generation = model.generate_prepared(&prepared, &local, &mut |piece| {
                if !streaming {
                    // A client that hung up frees its place in the batch at the next token.
                    return if tx.is_closed() {
                        Flow::Stop
                    } else {
                        Flow::Continue
                    };
                }
                match tx.blocking_send(Note::Text(piece.to_string())) {
                    Ok(()) => Flow::Continue,
                    Err(_) => Flow::Stop,
                }
            })?;
            generation.load_s = load_s;
            tracing::info!(
                model = %model_id,
                prompt_tokens = generation.prompt_tokens,
                completion_tokens = generation.completion_tokens,
                finish = finish_reason(generation.finish_reason),
                queue_s = generation.queue_s,
                ttft_s = generation.ttft_s,
                wall_s = generation.wall_s,
                stream = streaming,
                "chat completion"
            );
            Ok(Some(generation))
        })();
        let note = match outcome {
            Ok(Some(g)) => Note::Done(Box::new(g)),
            Ok(None) => return,
            Err(e) => Note::Failed(e),
        };
        let _ = tx.blocking_send(note);
    });

    match rx.recv().await {
        Some(Note::Started) => {}
        Some(Note::Failed(e)) => return local_error(&e),
        _ => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal_error",
                "generation ended early",
            );
        }
    }
    let device = app.backend.device_id().to_string();
    if !request.stream {
        return match rx.recv().await {
            Some(Note::Done(g)) => axum::Json(ChatResponse {
                id,
                object: "chat.completion".into(),
                created: now(),
                model: request.model,
                choices: vec![Choice {
                    index: 0,
                    message: ChatMessage {
                        role: "assistant".into(),
                        content: Content::Text(g.text.clone()),
                    },
                    finish_reason: Some(finish_reason(g.finish_reason).into()),
                }],
                usage: usage_of(&g),
                joule: Some(timings_of(&g, &device)),
            })
            .into_response(),
            Some(Note::Failed(e)) => local_error(&e),
            _ => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal_error",
                "generation ended early",
            ),
        };
    }

    let include_usage = request
        .stream_options
        .as_ref()
        .is_some_and(|o| o.include_usage);
    let created = now();
    let model = request.model.clone();
    let chunk = move |delta: Delta, finish: Option<String>, usage: Option<Usage>| {
        let choices = if usage.is_some() {
            Vec::new()
        } else {
            vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason: finish,
            }]
        };
        let chunk = ChatChunk {
            id: id.clone(),
            object: "chat.completion.chunk".into(),
            created,
            model: model.clone(),
            choices,
            usage,
        };
        Event::default()
            .json_data(chunk)
            .unwrap_or_else(|_| Event::default().data("{}"))
    };
    let (events_tx, events_rx) = mpsc::channel::<Result<Event, std::convert::Infallible>>(64);
    tokio::spawn(async move {
        // Lives as long as someone listens (see `give_up` above).
        let _hang_up = hang_up;
        let first = chunk(
            Delta {
                role: Some("assistant".into()),
                content: Some(String::new()),
            },
            None,
            None,
        );
        if events_tx.send(Ok(first)).await.is_err() {
            return;
        }
        loop {
            let note = tokio::select! {
                note = rx.recv() => note,
                // The client hung up while nothing was coming (a request waiting for room).
                () = events_tx.closed() => return,
            };
            let Some(note) = note else { break };
            let events = match note {
                Note::Text(text) => vec![chunk(
                    Delta {
                        role: None,
                        content: Some(text),
                    },
                    None,
                    None,
                )],
                Note::Done(g) => {
                    let mut events = vec![chunk(
                        Delta::default(),
                        Some(finish_reason(g.finish_reason).into()),
                        None,
                    )];
                    if include_usage {
                        events.push(chunk(Delta::default(), None, Some(usage_of(&g))));
                    }
                    events.push(Event::default().data("[DONE]"));
                    events
                }
                Note::Failed(e) => {
                    let body = ErrorBody::new("server_error", "internal_error", e.to_string());
                    vec![Event::default().json_data(body).unwrap_or_default()]
                }
                Note::Started => Vec::new(),
            };
            for event in events {
                if events_tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
        }
    });
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(events_rx)).into_response()
}

/// Gives a request up when dropped: the handler's future (a client that hung up before its
/// answer) or the stream forwarding its tokens.
struct GiveUpOnDrop(Arc<AtomicBool>);

impl Drop for GiveUpOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
