//! `POST /v1/completions`: the legacy text completion, the prompt given to the model as it is
//! (no chat template), for clients and benchmarks that still speak it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use joule_models::openai::convert::{
    completion_logprobs_of, completion_to_local, finish_reason, usage_of,
};
use joule_models::openai::wire::{
    CompletionChoice, CompletionRequest, CompletionResponse, ErrorBody, Usage,
};
use tokio::sync::mpsc;

use crate::App;
use crate::drive::{self, Note, now};

pub(crate) async fn complete(
    State(app): State<Arc<App>>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let (request, local) =
        match drive::read::<CompletionRequest>(body, "completion request", completion_to_local) {
            Ok(read) => read,
            Err(response) => return response,
        };
    let id = format!("cmpl-{}", app.next_id.fetch_add(1, Ordering::Relaxed));
    let mut running = match drive::start(&app, request.model.clone(), local, request.stream).await {
        Ok(r) => r,
        Err(response) => return response,
    };
    let created = now();
    let model = request.model.clone();
    let response =
        move |text: String,
              finish: Option<String>,
              usage: Option<Usage>,
              logprobs: Option<serde_json::Value>| CompletionResponse {
            id: id.clone(),
            object: "text_completion".into(),
            created,
            model: model.clone(),
            choices: if usage.is_some() && finish.is_none() && text.is_empty() {
                Vec::new()
            } else {
                vec![CompletionChoice {
                    index: 0,
                    text,
                    logprobs,
                    finish_reason: finish,
                }]
            },
            usage,
        };
    if !request.stream {
        return match drive::finish(&mut running).await {
            Ok(g) => axum::Json(response(
                g.text.clone(),
                Some(finish_reason(g.finish_reason).into()),
                Some(usage_of(&g)),
                completion_logprobs_of(&request, &g),
            ))
            .into_response(),
            Err(r) => r,
        };
    }
    let include_usage = request
        .stream_options
        .as_ref()
        .is_some_and(|o| o.include_usage);
    let event = |body: CompletionResponse| {
        Event::default()
            .json_data(body)
            .unwrap_or_else(|_| Event::default().data("{}"))
    };
    let (events_tx, events_rx) = mpsc::channel::<Result<Event, std::convert::Infallible>>(64);
    tokio::spawn(async move {
        let _hang_up = running.hang_up;
        loop {
            let note = tokio::select! {
                note = running.notes.recv() => note,
                () = events_tx.closed() => return,
            };
            let Some(note) = note else { break };
            let events = match note {
                Note::Text(text) => vec![event(response(text, None, None, None))],
                Note::Done(g) => {
                    let mut events = vec![event(response(
                        String::new(),
                        Some(finish_reason(g.finish_reason).into()),
                        None,
                        None,
                    ))];
                    if include_usage {
                        events.push(event(response(
                            String::new(),
                            None,
                            Some(usage_of(&g)),
                            None,
                        )));
                    }
                    events.push(Event::default().data("[DONE]"));
                    events
                }
                Note::Failed(e) => {
                    let body = ErrorBody::new("server_error", "internal_error", e.to_string());
                    vec![Event::default().json_data(body).unwrap_or_default()]
                }
            };
            for e in events {
                if events_tx.send(Ok(e)).await.is_err() {
                    return;
                }
            }
        }
    });
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(events_rx)).into_response()
}
