//! The run API's handlers: check what was sent, record it, answer. A workflow that does not
//! compile or inputs that do not fit are refused here, with the compiler's line:column errors,
//! before anything is queued; planning and running are the worker's.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use joule_app::AppError;
use joule_executor::queue::{NewSubmission, State as QueueState, Submission, version_of};
use joule_executor::store::{Store, StoreError};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::{Service, TENANT};

fn refuse(status: StatusCode, code: &str, message: impl Into<String>, more: Value) -> Response {
    let mut error = json!({"code": code, "message": message.into()});
    if let (Value::Object(e), Value::Object(m)) = (&mut error, more) {
        e.extend(m);
    }
    tracing::info!(status = status.as_u16(), code, "run API request refused");
    (status, Json(json!({ "error": error }))).into_response()
}

fn store_failed(e: StoreError) -> Response {
    tracing::error!(error = %e, "run store");
    refuse(
        StatusCode::INTERNAL_SERVER_ERROR,
        "store_failed",
        e.to_string(),
        Value::Null,
    )
}

/// An application error as a 4xx: a workflow's errors with their places, or the message.
fn app_refusal(e: AppError) -> Response {
    match e {
        AppError::Spec { errors, .. } => refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_workflow",
            format!("the workflow has {} error(s)", errors.len()),
            json!({"errors": errors.iter().map(|e| e.to_json()).collect::<Vec<_>>()}),
        ),
        AppError::Inputs(problems) => refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_inputs",
            "the inputs do not match the workflow",
            json!({"errors": problems}),
        ),
        other => refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            other.to_string(),
            Value::Null,
        ),
    }
}

fn text(body: &Bytes) -> Result<&str, Response> {
    std::str::from_utf8(body).map_err(|_| {
        refuse(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "the body is not UTF-8 text",
            Value::Null,
        )
    })
}

/// `PUT /v1/workflows/{name}`: the body is the workflow's YAML.
pub(crate) async fn put_workflow(
    State(service): State<Arc<Service>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let yaml = match text(&body) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let source = joule_planner::SourceFile::new(format!("{name}.yaml"), yaml);
    let dag = match service.assembly.compile(&source) {
        Ok(dag) => dag,
        Err(e) => return app_refusal(e),
    };
    if dag.workflow.name != name {
        return refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            "name_mismatch",
            format!(
                "the workflow is named `{}`; register it at /v1/workflows/{}",
                dag.workflow.name, dag.workflow.name
            ),
            Value::Null,
        );
    }
    match service.queue().put_workflow(TENANT, &name, yaml) {
        Ok((v, new)) => (
            if new {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            },
            Json(json!({"name": v.name, "version": v.version, "created_at": v.created_at})),
        )
            .into_response(),
        Err(e) => store_failed(e),
    }
}

/// `GET /v1/workflows/{name}`: the latest version, with its text.
pub(crate) async fn get_workflow(
    State(service): State<Arc<Service>>,
    Path(name): Path<String>,
) -> Response {
    match service.queue().workflow(TENANT, &name) {
        Ok(Some(v)) => Json(json!({
            "name": v.name, "version": v.version, "created_at": v.created_at, "yaml": v.yaml,
        }))
        .into_response(),
        Ok(None) => refuse(
            StatusCode::NOT_FOUND,
            "workflow_not_found",
            format!("no workflow `{name}`; register it with PUT /v1/workflows/{name}"),
            Value::Null,
        ),
        Err(e) => store_failed(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubmitRequest {
    workflow: Option<String>,
    yaml: Option<String>,
    #[serde(default)]
    inputs: Map<String, Value>,
}

/// `POST /v1/runs`: `{"workflow": NAME}` (its latest version) or `{"yaml": TEXT}`, and
/// `inputs`; 202 with the run's id. An `Idempotency-Key` header makes a retry return the run
/// the first submission made.
pub(crate) async fn submit(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request: SubmitRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the submission is not valid: {e}"),
                Value::Null,
            );
        }
    };
    let (name, yaml, version) = match (request.workflow, request.yaml) {
        (Some(name), None) => match service.queue().workflow(TENANT, &name) {
            Ok(Some(v)) => (name, v.yaml, v.version),
            Ok(None) => {
                return refuse(
                    StatusCode::NOT_FOUND,
                    "workflow_not_found",
                    format!("no workflow `{name}`; register it with PUT /v1/workflows/{name}"),
                    Value::Null,
                );
            }
            Err(e) => return store_failed(e),
        },
        (None, Some(yaml)) => {
            let version = version_of(&yaml);
            ("submitted".to_string(), yaml, version)
        }
        _ => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "give exactly one of `workflow` (a registered name) and `yaml` (its text)",
                Value::Null,
            );
        }
    };
    // Checked now, so a bad submission is refused rather than failing later in the queue.
    let spec = match joule_app::runs::load_text(
        &service.assembly,
        &format!("{name}.yaml"),
        &yaml,
        request.inputs,
        &service.workspace,
    ) {
        Ok(spec) => spec,
        Err(e) => return app_refusal(e),
    };
    let key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(k)) if !k.is_empty() && k.len() <= 256 => Some(k.to_string()),
        Some(_) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid_idempotency_key",
                "`Idempotency-Key` must be 1 to 256 visible ASCII characters",
                Value::Null,
            );
        }
    };
    let inputs = Value::Object(spec.inputs);
    let workflow = spec.dag.workflow.name.clone();
    let submitted = {
        let ids = match Store::open(&service.store) {
            Ok(s) => s,
            Err(e) => return store_failed(e),
        };
        service.queue().submit(
            &NewSubmission {
                tenant: TENANT,
                workflow: &workflow,
                version: &version,
                yaml: &yaml,
                inputs: &inputs,
                idempotency_key: key.as_deref(),
            },
            || ids.new_run_id().unwrap_or_default(),
        )
    };
    match submitted {
        Ok((s, new)) => {
            // A retry learns where the run it made already is.
            let status = if new {
                service.wake.notify_one();
                json!("queued")
            } else {
                describe(&service, &s)["status"].clone()
            };
            (
                StatusCode::ACCEPTED,
                Json(json!({"id": s.id, "status": status, "workflow": s.workflow, "version": s.version})),
            )
                .into_response()
        }
        Err(e) => store_failed(e),
    }
}

/// `GET /v1/runs/{id}`: where the run is, and once it has run, its results.
pub(crate) async fn get_run(
    State(service): State<Arc<Service>>,
    Path(id): Path<String>,
) -> Response {
    let submission = match service.queue().submission(&id) {
        Ok(Some(s)) if s.tenant == TENANT => s,
        Ok(_) => {
            return refuse(
                StatusCode::NOT_FOUND,
                "run_not_found",
                format!("no run `{id}`"),
                Value::Null,
            );
        }
        Err(e) => return store_failed(e),
    };
    Json(describe(&service, &submission)).into_response()
}

fn describe(service: &Service, s: &Submission) -> Value {
    let mut out = json!({
        "id": s.id, "workflow": s.workflow, "version": s.version, "inputs": s.inputs,
        "submitted_at": s.created_at,
    });
    let status = match s.state {
        QueueState::Queued => "queued".to_string(),
        QueueState::Refused => {
            out["error"] = json!(s.error);
            "failed".to_string()
        }
        QueueState::Started => match Store::open(&service.store).and_then(|st| st.run(&s.id)) {
            Ok(run) => {
                out["plan"] = serde_json::to_value(&run.plan).unwrap_or(Value::Null);
                out["outputs"] = run.outputs.unwrap_or(Value::Null);
                out["error"] = json!(run.error);
                out["report"] = serde_json::to_value(&run.report).unwrap_or(Value::Null);
                out["ended_at"] = json!(run.ended_at);
                serde_json::to_value(run.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_else(|| "running".into())
            }
            // Taken, and not yet planned into the store.
            Err(_) => "queued".to_string(),
        },
    };
    out["status"] = json!(status);
    out
}
