//! The fault injector, a mock of a remote engine (the one kind of fault joule cannot produce
//! for real on demand): a small HTTP server on loopback that answers each chat-completions
//! request from a script (429 then 200, 500s, a hang, a stream cut before `[DONE]`). These are
//! the failures a real remote server produces at random, produced here on demand over real TCP.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;

#[derive(Clone, Debug)]
pub enum Fault {
    Answer(&'static str),
    Stream(&'static [&'static str]),
    /// A stream whose body ends after these pieces without `[DONE]`.
    Cut(&'static [&'static str]),
    Status(u16, Option<&'static str>),
    /// A hostile server: an error whose body repeats the request's Authorization header.
    EchoAuth(u16),
    /// Never answers.
    Hang,
}

#[derive(Default)]
pub struct Script {
    pub faults: VecDeque<Fault>,
    pub requests: usize,
    /// The Authorization header of each request (empty when there was none).
    pub auth: Vec<String>,
}

pub type Shared = Arc<Mutex<Script>>;

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
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}});
        body.push_str(&format!("data: {last}\n\ndata: [DONE]\n\n"));
    }
    body
}

async fn chat(State(script): State<Shared>, headers: axum::http::HeaderMap) -> Response {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let fault = {
        let mut s = script.lock().unwrap();
        s.requests += 1;
        s.auth.push(auth.clone());
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
        Fault::EchoAuth(code) => (
            StatusCode::from_u16(code).unwrap(),
            axum::Json(serde_json::json!({"error": {"message": format!("bad key: {auth}"), "type": "x", "param": null, "code": null}})),
        )
            .into_response(),
        Fault::Hang => {
            std::future::pending::<()>().await;
            Body::empty().into_response()
        }
    }
}

pub async fn injector(faults: Vec<Fault>) -> (String, Shared) {
    let script: Shared = Arc::new(Mutex::new(Script {
        faults: faults.into(),
        requests: 0,
        auth: Vec::new(),
    }));
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .with_state(script.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1"), script)
}
