//! `joule serve` as a library: the local models behind an OpenAI-compatible HTTP API, so any
//! OpenAI client (and joule's own HTTP backend on another machine) can use them. [`router`]
//! is the whole server; the binary binds it to an address.
//!
//! Generation is CPU- or GPU-bound, so it runs on blocking threads; requests for one model
//! queue on that model's lock instead of failing. Bad requests get OpenAI-style JSON errors
//! with 4xx codes before they wait in any queue.

mod chat;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use axum::Router;
use axum::routing::{get, post};
use joule_models::local::LocalBackend;

/// What every request handler shares.
pub struct App {
    backend: LocalBackend,
    next_id: AtomicU64,
}

/// The server over one device's local models.
pub fn router(backend: LocalBackend) -> Router {
    let app = Arc::new(App {
        backend,
        next_id: AtomicU64::new(1),
    });
    Router::new()
        .route("/health", get(chat::health))
        .route("/v1/models", get(chat::list_models))
        .route("/v1/chat/completions", post(chat::chat))
        .fallback(chat::not_found)
        .method_not_allowed_fallback(chat::method_not_allowed)
        .with_state(app)
}
