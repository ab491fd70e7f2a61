//! The `openai` backend against a fault injector: a small HTTP server on loopback that answers
//! each request from a script (429 then 200, 500s, a hang, a stream cut before `[DONE]`). These
//! are the failures a real remote server produces at random; here they are produced on demand,
//! over real TCP, to show that none of them hangs a call or passes for a good answer.

use std::time::{Duration, Instant};

use joule_models::openai::wire::ChatRequest;
use joule_models::openai::{HttpError, OpenAiBackend, RetryPolicy, api_key};
use joule_testkit::{Fault, injector};

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
    let unset = |_: &str| None;
    let err = api_key(
        "https://api.example.com/v1",
        Some("JOULE_TEST_SURELY_UNSET_KEY"),
        unset,
    )
    .unwrap_err();
    // On loopback (a local `joule serve`, a `llama-server`) no key is needed.
    assert_eq!(
        api_key(
            "http://127.0.0.1:8080/v1",
            Some("JOULE_TEST_SURELY_UNSET_KEY"),
            unset
        )
        .unwrap(),
        None
    );
    let set = |_: &str| Some("sk-1".to_string());
    assert_eq!(
        api_key("https://api.example.com/v1", Some("K"), set)
            .unwrap()
            .as_deref(),
        Some("sk-1")
    );
    assert!(
        err.to_string().contains("JOULE_TEST_SURELY_UNSET_KEY"),
        "{err}"
    );
}
