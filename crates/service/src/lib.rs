//! The workflow service: data teams register workflows and submit runs over HTTP instead of
//! running the CLI on the machine, and one process runs them all, so their model calls share
//! one engine per model (they batch together) and the machine's devices.
//!
//! The queue lives in the run store ([`joule_executor::queue`]): a submission is written before
//! it is acknowledged, and a restarted server takes up every submission it had accepted.
//! Handlers only check and record; the [`worker`] plans and runs.
//!
//! This is the first part of the service (issue 21): one tenant, no keys, no events stream yet.

// A handler's early exit is the HTTP response itself.
#![allow(clippy::result_large_err)]

mod api;
pub mod worker;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::routing::get;
use joule_app::Assembly;
use joule_executor::queue::Queue;
use tokio::sync::Notify;

/// What the handlers and the worker share.
pub struct Service {
    pub assembly: Arc<Assembly>,
    /// The run store file: runs, their events, the queue.
    pub store: PathBuf,
    /// Where submitted runs' tools work.
    pub workspace: PathBuf,
    queue: Mutex<Queue>,
    /// Rung when a submission is queued.
    pub(crate) wake: Notify,
    /// How many runs may be in progress at once.
    pub max_runs: usize,
}

/// The tenant every request belongs to until keys map requests to tenants.
pub(crate) const TENANT: &str = "default";

impl Service {
    pub fn new(
        assembly: Arc<Assembly>,
        store: PathBuf,
        workspace: PathBuf,
        max_runs: usize,
    ) -> Result<Arc<Self>, joule_executor::store::StoreError> {
        let queue = Queue::open(&store)?;
        Ok(Arc::new(Self {
            assembly,
            store,
            workspace,
            queue: Mutex::new(queue),
            wake: Notify::new(),
            max_runs: max_runs.max(1),
        }))
    }

    pub(crate) fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The run API's routes, to merge beside the OpenAI ones.
pub fn router(service: Arc<Service>) -> Router {
    Router::new()
        .route(
            "/v1/workflows/{name}",
            get(api::get_workflow).put(api::put_workflow),
        )
        .route("/v1/runs", axum::routing::post(api::submit))
        .route("/v1/runs/{id}", get(api::get_run))
        .with_state(service)
}
