//! OpenAI-style error responses: every refusal names its reason (`code`) and, when it is about
//! one request parameter, that parameter (`param`), so a client sees what to change.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use joule_models::local::LocalError;
use joule_models::openai::convert::Refusal;
use joule_models::openai::wire::ErrorBody;
use joule_models::store::ModelError;

pub(crate) fn error(
    status: StatusCode,
    kind: &str,
    code: &str,
    message: impl Into<String>,
) -> Response {
    respond(status, ErrorBody::new(kind, code, message))
}

fn respond(status: StatusCode, body: ErrorBody) -> Response {
    tracing::info!(
        status = status.as_u16(),
        code = body.error.code.as_deref().unwrap_or(""),
        param = body.error.param.as_deref().unwrap_or(""),
        message = %body.error.message,
        "request refused"
    );
    (status, axum::Json(body)).into_response()
}

/// A request joule will not serve as asked: 400, naming the parameter.
pub(crate) fn refused(r: Refusal) -> Response {
    let code = if r.unsupported {
        "unsupported_parameter"
    } else {
        "invalid_request"
    };
    respond(
        StatusCode::BAD_REQUEST,
        ErrorBody::new("invalid_request_error", code, r.message).with_param(r.param),
    )
}

pub(crate) fn invalid_json(what: &str, e: &serde_json::Error) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        "invalid_json",
        format!("the body is not a valid {what}: {e}"),
    )
}

pub(crate) fn internal(message: &str) -> Response {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        "internal_error",
        message,
    )
}

pub(crate) fn local_error(e: &LocalError) -> Response {
    match e {
        LocalError::UnknownModel(..)
        | LocalError::Model(ModelError::NotLocal(_) | ModelError::Missing { .. }) => error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            e.to_string(),
        ),
        LocalError::ContextLength { .. } => error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "context_length_exceeded",
            e.to_string(),
        ),
        LocalError::Request(_) | LocalError::Template(_) => error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
            e.to_string(),
        ),
        _ => {
            tracing::error!(error = %e, "generation failed");
            internal(&e.to_string())
        }
    }
}

pub(crate) async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "unknown_url",
        "no such route; joule serves GET /health, GET /v1/models, GET /v1/models/{id}, POST /v1/chat/completions and POST /v1/completions",
    )
}

pub(crate) async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "method_not_allowed",
        "this route does not take that method; completions are POST, the rest GET",
    )
}
