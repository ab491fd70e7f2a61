//! `joule serve` as a library: the local models behind an OpenAI-compatible HTTP API, so any
//! OpenAI client (and joule's own HTTP backend on another machine) can use them. [`router`]
//! is the whole server; the binary binds it to an address.
//!
//! Generation is CPU- or GPU-bound, so it runs on blocking threads; requests for one model
//! share its batching engine instead of failing. Bad requests get OpenAI-style JSON errors
//! with 4xx codes, naming the parameter, before they wait in any queue: a parameter joule
//! would not honour is refused, never ignored.

// A handler's early exit is the HTTP response itself; boxing it would only add an allocation
// to each refusal.
#![allow(clippy::result_large_err)]

mod access;
mod chat;
mod completions;
mod drive;
mod error;
mod models;

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

/// Who may use the server.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// API keys a request must present one of (`Authorization: Bearer KEY`); none means open.
    pub api_keys: Vec<String>,
    /// Browser origins allowed by CORS (`*` for any); none means no cross-origin access.
    pub cors_origins: Vec<String>,
}

/// The server over one device's local models.
pub fn router(backend: LocalBackend, access: &Access) -> Result<Router, String> {
    let app = Arc::new(App {
        backend,
        next_id: AtomicU64::new(1),
    });
    let keys = access::Keys(Arc::new(access.api_keys.clone()));
    let mut router = Router::new()
        .route("/health", get(models::health))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{id}", get(models::one))
        .route("/v1/chat/completions", post(chat::chat))
        .route("/v1/completions", post(completions::complete))
        .route("/v1/embeddings", post(models::embeddings))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .with_state(app)
        .layer(axum::middleware::from_fn_with_state(
            keys,
            access::require_key,
        ));
    if let Some(cors) = access::cors(&access.cors_origins)? {
        router = router.layer(cors);
    }
    Ok(router)
}
