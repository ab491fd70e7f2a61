//! Who may call the server: API keys (`Authorization: Bearer KEY`, as OpenAI clients send
//! them) and which browser origins may (CORS). Without keys configured the server is open,
//! which is why it binds to loopback by default.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use crate::error::error;

/// The keys a request must present one of; empty means no key is asked for.
#[derive(Clone, Default)]
pub(crate) struct Keys(pub(crate) Arc<Vec<String>>);

/// Compares without stopping at the first differing byte, so response time does not tell a
/// caller how much of a key it guessed.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) async fn require_key(
    State(keys): State<Keys>,
    request: Request,
    next: Next,
) -> Response {
    // Health checks and CORS preflights carry no key.
    if keys.0.is_empty() || request.uri().path() == "/health" || request.method() == Method::OPTIONS
    {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(key) if keys.0.iter().any(|k| same(k.as_bytes(), key.as_bytes())) => {
            next.run(request).await
        }
        Some(_) => error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
            "the API key is not one this server accepts",
        ),
        None => error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "missing_api_key",
            "this server needs an API key: send `Authorization: Bearer KEY`",
        ),
    }
}

/// The CORS layer for `origins` (`*` for any), or `None` when no browser origin is allowed.
pub(crate) fn cors(origins: &[String]) -> Result<Option<CorsLayer>, String> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let values = origins
            .iter()
            .map(|o| {
                HeaderValue::from_str(o).map_err(|_| format!("`{o}` is not a valid CORS origin"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(values)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers(Any),
    ))
}
