//! `POST /v1/chat/completions`: whole or streamed as server-sent events, with tool calls read
//! out of the answer and `response_format` enforced by constrained decoding.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use joule_models::local::Generation;
use joule_models::openai::convert::{
    answer_instead, answer_of, chat_logprobs_of, finish_reason, may_call, repeats_answered,
    timings_of, to_local, usage_of,
};
use joule_models::openai::wire::{
    ChatChunk, ChatMessage, ChatRequest, ChatResponse, Choice, ChunkChoice, Content, Delta,
    ErrorBody, FunctionCallDelta, ToolCall, ToolCallDelta, Usage,
};
use tokio::sync::mpsc;

use crate::App;
use crate::drive::{self, Note, now};
use crate::error::refused;

/// OpenAI's finish reason for an answer: `tool_calls` when it made any.
fn finish_of(g: &Generation, calls: &[ToolCall]) -> String {
    if calls.is_empty() {
        finish_reason(g.finish_reason).into()
    } else {
        "tool_calls".into()
    }
}

pub(crate) async fn chat(
    State(app): State<Arc<App>>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let (request, local) = match drive::read::<ChatRequest>(body, "chat request", to_local) {
        Ok(read) => read,
        Err(response) => return response,
    };
    // With tools offered, a piece of the answer may turn out to be the start of a call, so the
    // answer is read whole before anything is sent.
    let uses_tools = may_call(&request);
    let id = format!("chatcmpl-{}", app.next_id.fetch_add(1, Ordering::Relaxed));
    let device = app.backend.device_id().to_string();
    let streaming = request.stream;
    if !uses_tools && streaming {
        return stream_text(app, request, local, id).await;
    }
    let (g, content, calls) = match whole(&app, &request, local, uses_tools, &id).await {
        Ok(answer) => answer,
        Err(response) => return response,
    };
    let finish = finish_of(&g, &calls);
    if !streaming {
        let logprobs = chat_logprobs_of(&request, &g);
        return axum::Json(ChatResponse {
            id,
            object: "chat.completion".into(),
            created: now(),
            model: request.model,
            choices: vec![Choice {
                index: 0,
                message: ChatMessage {
                    content: content.map(Content::Text),
                    tool_calls: (!calls.is_empty()).then(|| calls.clone()),
                    ..ChatMessage::text("assistant", "")
                },
                finish_reason: Some(finish),
                logprobs,
            }],
            usage: usage_of(&g),
            joule: Some(timings_of(&g, &device)),
        })
        .into_response();
    }
    // A streamed answer with tools: the whole answer as deltas, calls each in one piece.
    let chunk = chunker(&request, id);
    let mut events = vec![chunk(role_delta(), None, None)];
    if let Some(text) = content {
        events.push(chunk(text_delta(text), None, None));
    }
    if !calls.is_empty() {
        events.push(chunk(
            Delta {
                tool_calls: Some(deltas(&calls)),
                ..Delta::default()
            },
            None,
            None,
        ));
    }
    events.extend(closing(&chunk, &request, &g, finish));
    let events = events.into_iter().map(Ok::<_, std::convert::Infallible>);
    Sse::new(tokio_stream::iter(events)).into_response()
}

/// Generates the whole answer and reads tool calls out of it. A turn that only repeats calls
/// already answered is generated again without tools (see `repeats_answered`), so agent loops
/// of small models end.
async fn whole(
    app: &Arc<App>,
    request: &ChatRequest,
    local: joule_models::local::Request,
    uses_tools: bool,
    id: &str,
) -> Result<(Box<Generation>, Option<String>, Vec<ToolCall>), Response> {
    let mut running = drive::start(app, request.model.clone(), local, false).await?;
    let g = drive::finish(&mut running).await?;
    let (content, calls) = answer_of(&g.text, uses_tools, id);
    if !repeats_answered(request, &calls) {
        return Ok((g, content, calls));
    }
    tracing::info!(
        model = %request.model,
        calls = calls.len(),
        "the model repeated calls it has results of; answering without tools"
    );
    let plain = answer_instead(request).map_err(refused)?;
    let mut running = drive::start(app, request.model.clone(), plain, false).await?;
    let g = drive::finish(&mut running).await?;
    let text = g.text.clone();
    Ok((g, Some(text), Vec::new()))
}

type Chunk = Box<dyn Fn(Delta, Option<String>, Option<Usage>) -> Event + Send + Sync>;

/// Makes one server-sent event of a completion's chunks.
fn chunker(request: &ChatRequest, id: String) -> Chunk {
    let created = now();
    let model = request.model.clone();
    Box::new(
        move |delta: Delta, finish: Option<String>, usage: Option<Usage>| {
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
        },
    )
}

fn role_delta() -> Delta {
    Delta {
        role: Some("assistant".into()),
        content: Some(String::new()),
        tool_calls: None,
    }
}

fn text_delta(text: String) -> Delta {
    Delta {
        content: Some(text),
        ..Delta::default()
    }
}

/// The end of a stream: the finish reason, the usage when asked for, and `[DONE]`.
fn closing(chunk: &Chunk, request: &ChatRequest, g: &Generation, finish: String) -> Vec<Event> {
    let mut events = vec![chunk(Delta::default(), Some(finish), None)];
    if request
        .stream_options
        .as_ref()
        .is_some_and(|o| o.include_usage)
    {
        events.push(chunk(Delta::default(), None, Some(usage_of(g))));
    }
    events.push(Event::default().data("[DONE]"));
    events
}

/// A plain answer streamed piece by piece as it is decoded.
async fn stream_text(
    app: Arc<App>,
    request: ChatRequest,
    local: joule_models::local::Request,
    id: String,
) -> Response {
    let mut running = match drive::start(&app, request.model.clone(), local, true).await {
        Ok(r) => r,
        Err(response) => return response,
    };
    let chunk = chunker(&request, id);
    let (events_tx, events_rx) = mpsc::channel::<Result<Event, std::convert::Infallible>>(64);
    tokio::spawn(async move {
        // Lives as long as someone listens (see `drive::GiveUpOnDrop`).
        let _hang_up = running.hang_up;
        if events_tx
            .send(Ok(chunk(role_delta(), None, None)))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let note = tokio::select! {
                note = running.notes.recv() => note,
                // The client hung up while nothing was coming (a request waiting for room).
                () = events_tx.closed() => return,
            };
            let Some(note) = note else { break };
            let events = match note {
                Note::Text(text) => vec![chunk(text_delta(text), None, None)],
                Note::Done(g) => closing(&chunk, &request, &g, finish_of(&g, &[])),
                Note::Failed(e) => {
                    let body = ErrorBody::new("server_error", "internal_error", e.to_string());
                    vec![Event::default().json_data(body).unwrap_or_default()]
                }
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

/// Finished calls as stream deltas: each whole, with its index, id and name.
fn deltas(calls: &[ToolCall]) -> Vec<ToolCallDelta> {
    calls
        .iter()
        .enumerate()
        .map(|(i, c)| ToolCallDelta {
            index: i as u32,
            id: Some(c.id.clone()),
            kind: Some("function".into()),
            function: FunctionCallDelta {
                name: Some(c.function.name.clone()),
                arguments: Some(c.function.arguments.clone()),
            },
        })
        .collect()
}
