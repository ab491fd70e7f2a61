//! The `openai` backend against a fault injector: a small HTTP server on loopback that answers
//! each request from a script (429 then 200, 500s, a hang, a stream cut before `[DONE]`). These
//! are the failures a real remote server produces at random; here they are produced on demand,
//! over real TCP, to show that none of them hangs a call or passes for a good answer.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use joule_executor::backend::openai::{HttpError, OpenAiBackend, RetryPolicy};
use joule_executor::openai::ChatRequest;

#[derive(Clone, Debug)]
enum Fault {
    Answer(&'static str),
    Stream(&'static [&'static str]),
    /// A stream whose body ends after these pieces without `[DONE]`.
    Cut(&'static [&'static str]),
    Status(u16, Option<&'static str>),
    /// Never answers.
    Hang,
}

#[derive(Default)]
struct Script {
    faults: VecDeque<Fault>,
    requests: usize,
}

type Shared = Arc<Mutex<Script>>;

fn completion(text: &str) -> serde_json::Value {
    serde_json::json!({
        "id": "x", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    })
}

fn sse(pieces: &[&str], done: bool) -> String {
    let mut body = String::new();
    for piece in pieces {
        let chunk = serde_json::json!({"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]});
        body.push_str(&format!("data: {chunk}\n\n"));
    }
    if done {
        let last = serde_json::json!({"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
        body.push_str(&format!("data: {last}\n\ndata: [DONE]\n\n"));
    }
    body
}

async fn chat(State(script): State<Shared>) -> Response {
    let fault = {
        let mut s = script.lock().unwrap();
        s.requests += 1;
        s.faults.pop_front().unwrap_or(Fault::Status(500, None))
    };
    match fault {
        Fault::Answer(text) => axum::Json(completion(text)).into_response(),
        Fault::Stream(pieces) => {
            ([("content-type", "text/event-stream")], sse(pieces, true)).into_response()
        }
        Fault::Cut(pieces) => {
            ([("content-type", "text/event-stream")], sse(pieces, false)).into_response()
        }
        Fault::Status(code, retry_after) => {
            let mut r = (
                StatusCode::from_u16(code).unwrap(),
                axum::Json(serde_json::json!({"error": {"message": format!("injected {code}"), "type": "x", "param": null, "code": null}})),
            )
                .into_response();
            if let Some(after) = retry_after {
                r.headers_mut()
                    .insert("retry-after", after.parse().unwrap());
            }
            r
        }
        Fault::Hang => {
            std::future::pending::<()>().await;
            Body::empty().into_response()
        }
    }
}

async fn injector(faults: Vec<Fault>) -> (String, Shared) {
    let script: Shared = Arc::new(Mutex::new(Script {
        faults: faults.into(),
        requests: 0,
    }));
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .with_state(script.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1"), script)
}

fn request(stream: bool) -> ChatRequest {
    ChatRequest::user("m", "hi", 8, stream)
}

fn policy(deadline_ms: u64) -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        deadline: Duration::from_millis(deadline_ms),
    }
}

#[tokio::test]
async fn rate_limited_then_answered_honours_retry_after() {
    let (url, script) = injector(vec![Fault::Status(429, Some("1")), Fault::Answer("hello")]).await;
    let backend = OpenAiBackend::new(&url, None, policy(10_000)).unwrap();
    let started = Instant::now();
    let c = backend.chat(&request(false), &mut |_| {}).await.unwrap();
    assert_eq!(c.text, "hello");
    assert_eq!(c.attempts, 2);
    assert_eq!(c.usage.unwrap().total_tokens, 5);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited as Retry-After said"
    );
    assert_eq!(script.lock().unwrap().requests, 2);
}

#[tokio::test]
async fn server_errors_are_retried_then_reported() {
    let (url, script) = injector(vec![Fault::Status(500, None); 5]).await;
    let backend = OpenAiBackend::new(&url, None, policy(10_000)).unwrap();
    let err = backend
        .chat(&request(false), &mut |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            HttpError::Status {
                status: 500,
                attempts: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("injected 500"), "{err}");
    assert_eq!(script.lock().unwrap().requests, 3);
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let (url, script) = injector(vec![Fault::Status(400, None), Fault::Answer("never")]).await;
    let backend = OpenAiBackend::new(&url, None, policy(10_000)).unwrap();
    let err = backend
        .chat(&request(false), &mut |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(err, HttpError::Status { status: 400, .. }),
        "{err}"
    );
    assert_eq!(script.lock().unwrap().requests, 1);
}

#[tokio::test]
async fn a_hanging_server_meets_the_deadline() {
    let (url, _) = injector(vec![Fault::Hang, Fault::Hang, Fault::Hang]).await;
    let backend = OpenAiBackend::new(&url, None, policy(500)).unwrap();
    let started = Instant::now();
    let err = backend
        .chat(&request(false), &mut |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, HttpError::Deadline { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "returned at the deadline, not later"
    );
}

#[tokio::test]
async fn streams_arrive_in_pieces_and_a_cut_stream_is_an_error() {
    let (url, _) = injector(vec![
        Fault::Stream(&["Hel", "lo"]),
        Fault::Cut(&["Par"]),
        Fault::Cut(&[]),
        Fault::Stream(&["ok"]),
    ])
    .await;
    let backend = OpenAiBackend::new(&url, None, policy(10_000)).unwrap();
    let mut pieces = Vec::new();
    let c = backend
        .chat(&request(true), &mut |p| pieces.push(p.to_string()))
        .await
        .unwrap();
    assert_eq!((c.text.as_str(), pieces.len()), ("Hello", 2));
    assert_eq!(c.finish_reason.as_deref(), Some("stop"));

    // Text was already handed out, so the cut is the caller's to handle, not silently retried.
    let err = backend.chat(&request(true), &mut |_| {}).await.unwrap_err();
    assert!(matches!(err, HttpError::Cut { received: 3, .. }), "{err}");

    // Cut before any text: retried, and the next attempt's answer is whole.
    let c = backend.chat(&request(true), &mut |_| {}).await.unwrap();
    assert_eq!((c.text.as_str(), c.attempts), ("ok", 2));
}

#[tokio::test]
async fn a_missing_key_for_a_remote_endpoint_is_an_error() {
    let err = OpenAiBackend::new(
        "https://api.example.com/v1",
        Some("JOULE_TEST_SURELY_UNSET_KEY"),
        policy(100),
    )
    .err()
    .unwrap();
    assert!(
        err.to_string().contains("JOULE_TEST_SURELY_UNSET_KEY"),
        "{err}"
    );
}
