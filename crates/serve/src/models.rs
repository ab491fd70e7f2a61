//! What the server has: health, the models whose files are here, one model, and the
//! embeddings route's explanation.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::App;
use crate::error::error;

pub(crate) async fn health(State(app): State<Arc<App>>) -> Response {
    axum::Json(serde_json::json!({
        "status": "ok",
        "device": app.backend.device_id(),
        "resident": app.backend.resident(),
        "engines": app.backend.engines(),
    }))
    .into_response()
}

fn entry(id: &str) -> serde_json::Value {
    serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": "joule"})
}

/// The catalog's local models that are downloaded: a model listed is one a request can use.
fn present(app: &App) -> std::collections::BTreeSet<String> {
    app.backend.store().present(app.backend.catalog())
}

pub(crate) async fn list(State(app): State<Arc<App>>) -> Response {
    let data: Vec<serde_json::Value> = present(&app).iter().map(|id| entry(id)).collect();
    axum::Json(serde_json::json!({"object": "list", "data": data})).into_response()
}

pub(crate) async fn one(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    if present(&app).contains(&id) {
        return axum::Json(entry(&id)).into_response();
    }
    let why = match app.backend.catalog().model(&id) {
        Some(m) if m.source.is_some() => {
            format!(
                "`{id}` is in the catalog but not downloaded here; run `joule models fetch {id}`"
            )
        }
        Some(_) => format!("`{id}` is a remote model; this server runs local ones"),
        None => format!("no model `{id}`; GET /v1/models lists the ones here"),
    };
    error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "model_not_found",
        why,
    )
}

pub(crate) async fn embeddings() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "embeddings_unavailable",
        "no model in joule's catalog computes embeddings (they are all generative); use an embedding server for /v1/embeddings",
    )
}
