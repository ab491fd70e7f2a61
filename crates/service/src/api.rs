//! The run API's handlers: who is asking (a key names a tenant), what was sent, record it,
//! answer. A workflow that does not compile or inputs that do not fit are refused here, with
//! the compiler's line:column errors, before anything is queued; a tenant's full queue is a
//! 429; planning and running are the worker's. The bodies are the typed structs below, and
//! the OpenAPI document is generated from them.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use joule_app::AppError;
use joule_executor::queue::{
    Filter, NewSubmission, State as QueueState, Submission, fresh_id, version_of,
};
use joule_executor::runtime::RunStatus;
use joule_executor::store::{Store, StoreError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::tenants::Limits;
use crate::{Auth, DEFAULT_TENANT, Service};

/// An error answer: `{"error": {"code", "message", "errors"?}}`.
#[derive(Serialize, JsonSchema)]
pub struct ErrorBody {
    pub error: ApiError,
}

#[derive(Serialize, JsonSchema)]
pub struct ApiError {
    /// Stable and machine-readable, e.g. `invalid_workflow`, `queue_full`, `run_not_found`.
    pub code: String,
    pub message: String,
    /// A workflow's errors, each with its file, line and column.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<Value>>,
}

/// A registered workflow version.
#[derive(Serialize, JsonSchema)]
pub struct WorkflowVersion {
    pub name: String,
    /// The sha256 of its text, first 16 hex digits: a run pins the version it was submitted with.
    pub version: String,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub yaml: Option<String>,
}

/// `POST /v1/runs`'s body: `workflow` (a registered name, its latest version) or `yaml`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    pub workflow: Option<String>,
    pub yaml: Option<String>,
    #[serde(default)]
    pub inputs: Map<String, Value>,
}

/// A submission's answer: the run's id and where it is.
#[derive(Serialize, JsonSchema)]
pub struct Accepted {
    pub id: String,
    pub status: String,
    pub workflow: String,
    pub version: String,
}

/// A run as the API shows it.
#[derive(Serialize, JsonSchema)]
pub struct RunView {
    pub id: String,
    pub workflow: String,
    pub version: String,
    pub inputs: Value,
    pub submitted_at: String,
    /// `queued`, `running`, `cancelling`, `succeeded`, `failed` or `cancelled`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The plan, as `joule plan --json` prints it, once the run is planned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Value>,
    /// Per-step results and totals, measured, each energy figure with how it was obtained.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
}

/// A page of runs, newest first; `next` is the cursor of the following page.
#[derive(Serialize, JsonSchema)]
pub struct RunPage {
    pub runs: Vec<RunView>,
    pub next: Option<String>,
}

/// `GET /v1/runs`'s query.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub workflow: Option<String>,
    pub status: Option<String>,
    /// 1 to 200, default 50.
    pub limit: Option<usize>,
    /// The `next` of the previous page.
    pub after: Option<String>,
}

pub(crate) fn refuse(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    refuse_with(status, code, message, None)
}

fn refuse_with(
    status: StatusCode,
    code: &str,
    message: impl Into<String>,
    errors: Option<Vec<Value>>,
) -> Response {
    tracing::info!(status = status.as_u16(), code, "run API request refused");
    let body = ErrorBody {
        error: ApiError {
            code: code.to_string(),
            message: message.into(),
            errors,
        },
    };
    (status, Json(body)).into_response()
}

pub(crate) fn store_failed(e: StoreError) -> Response {
    tracing::error!(error = %e, "run store");
    refuse(
        StatusCode::INTERNAL_SERVER_ERROR,
        "store_failed",
        e.to_string(),
    )
}

/// An application error as a 4xx: a workflow's errors with their places, or the message.
fn app_refusal(e: AppError) -> Response {
    match e {
        AppError::Spec { errors, .. } => refuse_with(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_workflow",
            format!("the workflow has {} error(s)", errors.len()),
            Some(errors.iter().map(|e| e.to_json()).collect()),
        ),
        AppError::Inputs(problems) => refuse_with(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_inputs",
            "the inputs do not match the workflow",
            Some(problems.into_iter().map(Value::from).collect()),
        ),
        other => refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            other.to_string(),
        ),
    }
}

/// Who is asking.
pub(crate) struct Caller {
    pub tenant: String,
    pub limits: Limits,
}

/// The caller's tenant, from `Authorization: Bearer KEY`; 401 without a known key.
pub(crate) fn caller(service: &Service, headers: &HeaderMap) -> Result<Caller, Response> {
    let tenant = match service.config.auth {
        Auth::None => DEFAULT_TENANT.to_string(),
        Auth::Keys => {
            let unauthorized = |message: &str| {
                let mut r = refuse(StatusCode::UNAUTHORIZED, "unauthorized", message);
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                r
            };
            let key = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .filter(|k| !k.is_empty());
            let Some(key) = key else {
                return Err(unauthorized(
                    "send `Authorization: Bearer KEY`; `joule keys create --tenant NAME` makes a key",
                ));
            };
            match service.queue().tenant_of_key(key) {
                Ok(Some(t)) => t,
                Ok(None) => return Err(unauthorized("the API key is not known to this server")),
                Err(e) => return Err(store_failed(e)),
            }
        }
    };
    match service.config.tenants.limits(&tenant) {
        Some(limits) => Ok(Caller { tenant, limits }),
        None => Err(refuse(
            StatusCode::FORBIDDEN,
            "tenant_not_configured",
            format!("the key's tenant `{tenant}` is not in the server's tenants file"),
        )),
    }
}

/// Every handler's first question, as an extractor: a handler that takes a [`Caller`] cannot
/// forget to ask it.
impl axum::extract::FromRequestParts<Arc<Service>> for Caller {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        service: &Arc<Service>,
    ) -> Result<Self, Response> {
        caller(service, &parts.headers)
    }
}

fn text(body: &Bytes) -> Result<&str, Response> {
    std::str::from_utf8(body).map_err(|_| {
        refuse(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "the body is not UTF-8 text",
        )
    })
}

fn workflow_not_found(name: &str) -> Response {
    refuse(
        StatusCode::NOT_FOUND,
        "workflow_not_found",
        format!("no workflow `{name}`; register it with PUT /v1/workflows/{name}"),
    )
}

/// `PUT /v1/workflows/{name}`: the body is the workflow's YAML.
pub(crate) async fn put_workflow(
    State(service): State<Arc<Service>>,
    who: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let yaml = match text(&body) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let source = joule_planner::SourceFile::new(format!("{name}.yaml"), yaml);
    let dag = match service.assembly(&who.tenant).compile(&source) {
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
        );
    }
    match service.queue().put_workflow(&who.tenant, &name, yaml) {
        Ok((v, new)) => (
            if new {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            },
            Json(WorkflowVersion {
                name: v.name,
                version: v.version,
                created_at: v.created_at,
                yaml: None,
            }),
        )
            .into_response(),
        Err(e) => store_failed(e),
    }
}

/// `GET /v1/workflows/{name}`: the latest version, with its text.
pub(crate) async fn get_workflow(
    State(service): State<Arc<Service>>,
    who: Caller,
    Path(name): Path<String>,
) -> Response {
    match service.queue().workflow(&who.tenant, &name) {
        Ok(Some(v)) => Json(WorkflowVersion {
            name: v.name,
            version: v.version,
            created_at: v.created_at,
            yaml: Some(v.yaml),
        })
        .into_response(),
        Ok(None) => workflow_not_found(&name),
        Err(e) => store_failed(e),
    }
}

/// `POST /v1/runs`: 202 with the run's id. An `Idempotency-Key` header makes a retry return
/// the run the first submission made.
pub(crate) async fn submit(
    State(service): State<Arc<Service>>,
    who: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if service.stopping.is_cancelled() {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopping",
            "the server is stopping and admits no runs; submit again once it is back",
        );
    }
    let request: SubmitRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the submission is not valid: {e}"),
            );
        }
    };
    let (name, yaml, version) = match (request.workflow, request.yaml) {
        (Some(name), None) => match service.queue().workflow(&who.tenant, &name) {
            Ok(Some(v)) => (name, v.yaml, v.version),
            Ok(None) => return workflow_not_found(&name),
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
            );
        }
    };
    // Checked now, so a bad submission is refused rather than failing later in the queue.
    let spec = match joule_app::runs::load_text(
        service.assembly(&who.tenant),
        &format!("{name}.yaml"),
        &yaml,
        request.inputs,
        &service.config.workspace,
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
            );
        }
    };
    let inputs = Value::Object(spec.inputs);
    let workflow = spec.dag.workflow.name.clone();
    let new = NewSubmission {
        tenant: &who.tenant,
        workflow: &workflow,
        version: &version,
        yaml: &yaml,
        inputs: &inputs,
        idempotency_key: key.as_deref(),
    };
    let submitted = {
        // One lock for the count and the insert: concurrent submissions cannot both take
        // the queue's last place.
        let mut queue = service.queue();
        let waiting = match queue.queued_by_tenant() {
            Ok(q) => q.get(&who.tenant).copied().unwrap_or(0),
            Err(e) => return store_failed(e),
        };
        let retry = key
            .as_deref()
            .map(|k| queue.submission_by_key(&who.tenant, k))
            .transpose();
        match retry {
            Err(e) => return store_failed(e),
            Ok(Some(Some(_))) => {}
            Ok(_) if waiting >= who.limits.queue => {
                drop(queue);
                let slots = who.limits.runs_in_flight.unwrap_or(service.config.max_runs);
                let wait = service.retry_after(waiting + 1 - who.limits.queue, slots);
                let mut r = refuse(
                    StatusCode::TOO_MANY_REQUESTS,
                    "queue_full",
                    format!(
                        "tenant `{}` has {waiting} runs waiting, its queue's limit; try again \
                         in {wait} s",
                        who.tenant
                    ),
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(wait));
                return r;
            }
            Ok(_) => {}
        }
        queue.submit(&new, fresh_id)
    };
    match submitted {
        Ok((s, new)) => {
            // A retry learns where the run it made already is.
            let status = if new {
                service.wake.notify_one();
                "queued".to_string()
            } else {
                describe(&service, &s).status
            };
            (
                StatusCode::ACCEPTED,
                Json(Accepted {
                    id: s.id,
                    status,
                    workflow: s.workflow,
                    version: s.version,
                }),
            )
                .into_response()
        }
        Err(e) => store_failed(e),
    }
}

/// The caller's own submission `id`; another tenant's is as absent as one never made.
pub(crate) fn own(service: &Service, who: &Caller, id: &str) -> Result<Submission, Response> {
    match service.queue().submission(id) {
        Ok(Some(s)) if s.tenant == who.tenant => Ok(s),
        Ok(_) => Err(refuse(
            StatusCode::NOT_FOUND,
            "run_not_found",
            format!("no run `{id}`"),
        )),
        Err(e) => Err(store_failed(e)),
    }
}

/// `GET /v1/runs/{id}`: where the run is, and once it has run, its results.
pub(crate) async fn get_run(
    State(service): State<Arc<Service>>,
    who: Caller,
    Path(id): Path<String>,
) -> Response {
    match own(&service, &who, &id) {
        Ok(s) => Json(describe(&service, &s)).into_response(),
        Err(r) => r,
    }
}

/// `POST /v1/runs/{id}/cancel`: a queued run never starts; a running one stops at once (its
/// model calls give up, freeing the device) and keeps what it finished.
pub(crate) async fn cancel(
    State(service): State<Arc<Service>>,
    who: Caller,
    Path(id): Path<String>,
) -> Response {
    let s = match own(&service, &who, &id) {
        Ok(s) => s,
        Err(r) => return r,
    };
    // Bound first: the queue's lock is not held into the arms, which take it again.
    let taken = service.queue().take(&id, QueueState::Cancelled);
    match taken {
        Ok(true) => {
            // A worker that read this head just before it was taken looks again.
            service.wake.notify_one();
            service.events.notify_waiters();
            let s = service.queue().submission(&id).ok().flatten().unwrap_or(s);
            return Json(describe(&service, &s)).into_response();
        }
        Ok(false) => {}
        Err(e) => return store_failed(e),
    }
    let view = describe(&service, &s);
    if !matches!(view.status.as_str(), "running" | "queued" | "cancelling") {
        return refuse(
            StatusCode::CONFLICT,
            "run_ended",
            format!("run `{id}` has already ended ({})", view.status),
        );
    }
    // Marked first: a run stopped by the cancel is not resumed at the next start.
    if let Err(e) = service.queue().set_state(&id, QueueState::Cancelled, None) {
        return store_failed(e);
    }
    if let Some((_, stop)) = service.running().get(&id) {
        stop.cancel();
    }
    let s = service.queue().submission(&id).ok().flatten().unwrap_or(s);
    (StatusCode::ACCEPTED, Json(describe(&service, &s))).into_response()
}

/// `GET /v1/runs`: the caller's runs, newest first, by workflow and status, a page at a time.
pub(crate) async fn list(
    State(service): State<Arc<Service>>,
    who: Caller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => {
            return refuse(StatusCode::BAD_REQUEST, "invalid_query", e.body_text());
        }
    };
    const STATUSES: [&str; 6] = [
        "queued",
        "running",
        "cancelling",
        "succeeded",
        "failed",
        "cancelled",
    ];
    if let Some(s) = &q.status
        && !STATUSES.contains(&s.as_str())
    {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("`status` is one of {}", STATUSES.join(", ")),
        );
    }
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "`limit` is 1 to 200",
        );
    }
    // A status lives partly in the store, so pages are read until `limit` runs match.
    let mut runs = Vec::new();
    let mut cursor = q.after.clone();
    let mut exhausted = false;
    while runs.len() < limit && !exhausted {
        let page = service.queue().list(
            &who.tenant,
            &Filter {
                workflow: q.workflow.as_deref(),
                state: None,
                before: cursor.as_deref(),
                limit: limit - runs.len(),
            },
        );
        let page = match page {
            Ok(p) => p,
            Err(e) => return store_failed(e),
        };
        exhausted = page.len() < limit - runs.len();
        for s in page {
            cursor = Some(s.id.clone());
            let view = describe(&service, &s);
            if q.status.as_deref().is_none_or(|st| st == view.status) {
                runs.push(view);
            }
        }
    }
    let next = (!exhausted).then_some(cursor).flatten();
    Json(RunPage { runs, next }).into_response()
}

/// Where a submission is, with its run's record once it has one.
pub(crate) fn describe(service: &Service, s: &Submission) -> RunView {
    let mut view = RunView {
        id: s.id.clone(),
        workflow: s.workflow.clone(),
        version: s.version.clone(),
        inputs: s.inputs.clone(),
        submitted_at: s.created_at.clone(),
        status: "queued".into(),
        error: None,
        plan: None,
        outputs: None,
        report: None,
        ended_at: None,
    };
    let stored = || Store::open(&service.config.store).and_then(|st| st.run(&s.id));
    match s.state {
        QueueState::Queued => {}
        QueueState::Refused => {
            view.status = "failed".into();
            view.error = s.error.clone();
        }
        QueueState::Started | QueueState::Cancelled => match stored() {
            Ok(run) => {
                view.plan = serde_json::to_value(&run.plan).ok();
                view.outputs = run.outputs;
                view.error = run.error;
                view.report = run.report.and_then(|r| serde_json::to_value(r).ok());
                view.ended_at = run.ended_at;
                view.status = match (run.status, s.state) {
                    (RunStatus::Running, QueueState::Cancelled) => "cancelling".into(),
                    // Stopped by a server's shutdown, not by its user: the next start
                    // resumes it.
                    (RunStatus::Cancelled, QueueState::Started) => "queued".into(),
                    (status, _) => status.as_str().into(),
                };
            }
            // Cancelled before it was planned into the store.
            Err(_) if s.state == QueueState::Cancelled => view.status = "cancelled".into(),
            // Taken, and not yet planned into the store.
            Err(_) => {}
        },
    }
    view
}

/// `GET /v1/openapi.json`: the run API described, its bodies' schemas generated from the
/// types the handlers use.
pub(crate) async fn openapi() -> Response {
    Json(openapi_document()).into_response()
}

pub fn openapi_document() -> Value {
    let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
    let schema = |name: &str, s: schemars::Schema| (name.to_string(), s.to_value());
    let schemas: Map<String, Value> = [
        schema("ErrorBody", generator.subschema_for::<ErrorBody>()),
        schema(
            "WorkflowVersion",
            generator.subschema_for::<WorkflowVersion>(),
        ),
        schema("SubmitRequest", generator.subschema_for::<SubmitRequest>()),
        schema("Accepted", generator.subschema_for::<Accepted>()),
        schema("RunView", generator.subschema_for::<RunView>()),
        schema("RunPage", generator.subschema_for::<RunPage>()),
    ]
    .into_iter()
    .collect();
    let mut components: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    components.extend(schemas.into_iter().filter(|(_, v)| v.get("$ref").is_none()));
    let body = |name: &str| json!({"content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{name}")}}}});
    let err = |what: &str| json!({"description": what, "content": body("ErrorBody")["content"]});
    let auth = json!([{"bearer": []}]);
    let list_parameters: Vec<Value> = ["workflow", "status", "limit", "after"]
        .iter()
        .map(|p| {
            let kind = if *p == "limit" { "integer" } else { "string" };
            json!({"name": p, "in": "query", "schema": {"type": kind}})
        })
        .collect();
    json!({
        "openapi": "3.0.3",
        "info": {"title": "joule run API", "version": env!("CARGO_PKG_VERSION")},
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": auth,
        "paths": {
            "/v1/workflows/{name}": {
                "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
                "put": {
                    "summary": "Register a workflow version (the body is its YAML)",
                    "requestBody": {"content": {"application/yaml": {"schema": {"type": "string"}}}},
                    "responses": {
                        "201": {"description": "a new version", "content": body("WorkflowVersion")["content"]},
                        "200": {"description": "this text was registered before", "content": body("WorkflowVersion")["content"]},
                        "422": err("the workflow's errors, each with line and column"),
                        "401": err("no key or an unknown one"),
                    }
                },
                "get": {
                    "summary": "The latest version, with its text",
                    "responses": {"200": {"description": "found", "content": body("WorkflowVersion")["content"]}, "404": err("no such workflow")}
                }
            },
            "/v1/runs": {
                "post": {
                    "summary": "Submit a run",
                    "parameters": [{"name": "Idempotency-Key", "in": "header", "schema": {"type": "string"}}],
                    "requestBody": body("SubmitRequest"),
                    "responses": {
                        "202": {"description": "queued (or, retried with its key, where it is)", "content": body("Accepted")["content"]},
                        "422": err("the workflow or the inputs are invalid"),
                        "429": err("the tenant's queue is full; see Retry-After"),
                        "503": err("the server is stopping"),
                    }
                },
                "get": {
                    "summary": "The caller's runs, newest first",
                    "parameters": list_parameters,
                    "responses": {"200": {"description": "a page", "content": body("RunPage")["content"]}}
                }
            },
            "/v1/runs/{id}": {
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "get": {"summary": "A run", "responses": {"200": {"description": "found", "content": body("RunView")["content"]}, "404": err("no such run for this tenant")}}
            },
            "/v1/runs/{id}/cancel": {
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "post": {"summary": "Cancel a run", "responses": {
                    "200": {"description": "cancelled before it started", "content": body("RunView")["content"]},
                    "202": {"description": "stopping", "content": body("RunView")["content"]},
                    "409": err("the run has already ended")}}
            },
            "/v1/runs/{id}/events": {
                "parameters": [
                    {"name": "id", "in": "path", "required": true, "schema": {"type": "string"}},
                    {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}}
                ],
                "get": {"summary": "The run's events as server-sent events, from after Last-Event-ID", "responses": {"200": {"description": "an event stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}}}}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_describes_every_route_and_body() {
        let doc = super::openapi_document();
        for path in [
            "/v1/workflows/{name}",
            "/v1/runs",
            "/v1/runs/{id}",
            "/v1/runs/{id}/cancel",
            "/v1/runs/{id}/events",
        ] {
            assert!(doc["paths"][path].is_object(), "{path}");
        }
        let schemas = &doc["components"]["schemas"];
        for name in [
            "ErrorBody",
            "SubmitRequest",
            "Accepted",
            "RunView",
            "RunPage",
            "WorkflowVersion",
        ] {
            assert!(schemas[name].is_object(), "{name}: {schemas}");
        }
        // Generated from the types: a field the handler sends is in the schema.
        assert!(schemas["RunView"]["properties"]["report"].is_object());
        assert_eq!(schemas["SubmitRequest"]["additionalProperties"], false);
    }
}
