//! One generation behind a request: run on a blocking thread (inference is CPU- or GPU-bound),
//! reported back as notes on a channel, and given up the moment its client hangs up, even
//! while it still waits for a place in the batch.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use joule_models::local::{Flow, Generation, LocalError, Request};
use joule_models::openai::convert::{Refusal, finish_reason};
use tokio::sync::mpsc;

use crate::App;
use crate::error::{error, internal, invalid_json, local_error, refused};

/// What the generation thread tells the handler.
pub(crate) enum Note {
    Text(String),
    Done(Box<Generation>),
    Failed(LocalError),
}

/// A generation whose prompt the model accepted.
pub(crate) struct Running {
    pub notes: mpsc::Receiver<Note>,
    /// Gives the request up when dropped (the handler's future or the stream's task).
    pub hang_up: GiveUpOnDrop,
}

/// Gives a request up when dropped: the handler's future (a client that hung up before its
/// answer) or the stream forwarding its tokens.
pub(crate) struct GiveUpOnDrop(Arc<AtomicBool>);

impl Drop for GiveUpOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A request read, parsed as `T` (`what` names it in the error) and turned into a local
/// generation by `convert`; or the 4xx response that says what is wrong with it.
pub(crate) fn read<T: serde::de::DeserializeOwned>(
    raw: Result<Bytes, axum::extract::rejection::BytesRejection>,
    what: &str,
    convert: impl Fn(&T) -> Result<Request, Refusal>,
) -> Result<(T, Request), Response> {
    let raw = body(raw)?;
    let request: T = serde_json::from_slice(&raw).map_err(|e| invalid_json(what, &e))?;
    let local = convert(&request).map_err(refused)?;
    Ok((request, local))
}

/// The body, or the response that says why it could not be read.
pub(crate) fn body(
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Bytes, Response> {
    body.map_err(|e| {
        let mut response = error(
            e.status(),
            "invalid_request_error",
            "invalid_body",
            e.body_text(),
        );
        // The rest of an unread body is still on the connection: close it, or the client's
        // next request on it would be read as that body's tail.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    })
}

/// Starts generating `request` on `model_id`; `forward_text` sends the answer's pieces as
/// they are decoded (a stream), otherwise only the end comes. Returns once the model has
/// accepted the prompt, or with the error response (unknown model, prompt too long, a
/// grammar that does not compile) before anything was sent.
pub(crate) async fn start(
    app: &Arc<App>,
    model_id: String,
    mut request: Request,
    forward_text: bool,
) -> Result<Running, Response> {
    let give_up = Arc::new(AtomicBool::new(false));
    request.cancel = Some(give_up.clone());
    let hang_up = GiveUpOnDrop(give_up);
    let (started_tx, started) = tokio::sync::oneshot::channel::<Result<(), LocalError>>();
    let (tx, notes) = mpsc::channel::<Note>(64);
    let worker = app.clone();
    tokio::task::spawn_blocking(move || {
        let prepared = worker
            .backend
            .model(&model_id)
            .and_then(|(model, load_s)| Ok((model.prepare(&request)?, model, load_s)));
        let (prepared, model, load_s) = match prepared {
            Ok(p) => p,
            Err(e) => {
                let _ = started_tx.send(Err(e));
                return;
            }
        };
        if started_tx.send(Ok(())).is_err() {
            return;
        }
        let outcome = model.generate_prepared(&prepared, &request, &mut |piece| {
            if !forward_text {
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
        });
        let note = match outcome {
            Ok(mut g) => {
                g.load_s = load_s;
                tracing::info!(
                    model = %model_id,
                    prompt_tokens = g.prompt_tokens,
                    completion_tokens = g.completion_tokens,
                    finish = finish_reason(g.finish_reason),
                    queue_s = g.queue_s,
                    ttft_s = g.ttft_s,
                    wall_s = g.wall_s,
                    stream = forward_text,
                    constrained = request.grammar.is_some(),
                    "completion"
                );
                Note::Done(Box::new(g))
            }
            Err(e) => Note::Failed(e),
        };
        let _ = tx.blocking_send(note);
    });
    match started.await {
        Ok(Ok(())) => Ok(Running { notes, hang_up }),
        Ok(Err(e)) => Err(local_error(&e)),
        Err(_) => Err(internal("generation ended early")),
    }
}

/// Waits for the end of a generation that does not stream.
pub(crate) async fn finish(running: &mut Running) -> Result<Box<Generation>, Response> {
    loop {
        match running.notes.recv().await {
            Some(Note::Done(g)) => return Ok(g),
            Some(Note::Failed(e)) => return Err(local_error(&e)),
            Some(Note::Text(_)) => continue,
            None => return Err(internal("generation ended early")),
        }
    }
}
