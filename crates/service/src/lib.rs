//! The workflow service: data teams register workflows and submit runs over HTTP instead of
//! running the CLI on the machine, and one process runs them all, so their model calls share
//! one engine per model (they batch together) and the machine's devices.
//!
//! The queue lives in the run store ([`joule_executor::queue`]): a submission is written before
//! it is acknowledged, and a restarted server takes up every submission it had accepted.
//! Handlers only check and record ([`api`], [`events`]); the [`worker`] plans and runs, sharing
//! the run slots fairly between tenants ([`tenants`]) and holding each to its daily budgets
//! ([`budget`]).

// A handler's early exit is the HTTP response itself.
#![allow(clippy::result_large_err)]

mod api;
pub mod budget;
mod events;
pub mod tenants;
pub mod worker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use joule_app::{AppError, Assembly};
use joule_executor::queue::Queue;
use joule_executor::runtime::Cancel;
use tokio::sync::Notify;

use crate::budget::{Ledger, lock};
use crate::tenants::Tenants;

/// How requests are tied to tenants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: Bearer KEY`, a key `joule keys create` made.
    Keys,
    /// Every request is the tenant `default` (`--no-auth`, loopback only).
    None,
}

/// The tenant of requests when keys are off.
pub const DEFAULT_TENANT: &str = "default";

/// How the service is set up.
pub struct Config {
    /// The run store file: runs, their events, the queue, keys, tenants' spend.
    pub store: PathBuf,
    /// Where submitted runs' tools work.
    pub workspace: PathBuf,
    /// How many runs may be in progress at once, across tenants.
    pub max_runs: usize,
    pub auth: Auth,
    pub tenants: Tenants,
    /// How long a stopping server lets its runs go on before it stops them (they resume at
    /// the next start).
    pub drain: Duration,
}

/// What the handlers and the worker share.
pub struct Service {
    /// The server's world; tenants with their own policy get their own ([`Self::assembly`]).
    assembly: Arc<Assembly>,
    by_tenant: HashMap<String, Arc<Assembly>>,
    pub config: Config,
    queue: Mutex<Queue>,
    pub(crate) ledger: Ledger,
    /// Runs in progress: their tenant and what stops them.
    running: Mutex<HashMap<String, (String, Cancel)>>,
    /// Rung when a submission is queued or a run ends (a slot may be free).
    pub(crate) wake: Notify,
    /// Rung when runs' events reach the store, for their followers.
    pub(crate) events: Notify,
    /// Set when the server stops admitting.
    pub(crate) stopping: Cancel,
    /// Seconds a run has lately taken, for `Retry-After`.
    recent_run_s: Mutex<f64>,
    /// Whose run starts next.
    pub(crate) fair: Mutex<worker::Fair>,
}

impl Service {
    pub fn new(assembly: Arc<Assembly>, config: Config) -> Result<Arc<Self>, AppError> {
        let queue = Queue::open(&config.store)?;
        let mut by_tenant = HashMap::new();
        for (tenant, policy) in config.tenants.with_policies() {
            let mut planning = assembly.planning.clone();
            planning.policy = Some(policy.to_path_buf());
            let own = Assembly::new(
                assembly.settings.clone(),
                planning,
                assembly.endpoints.clone(),
            )
            .map_err(|e| AppError::invalid(format!("tenant `{tenant}`'s policy: {e}")))?;
            own.share_local(assembly.local_backends()?)?;
            by_tenant.insert(tenant.to_string(), Arc::new(own));
        }
        Ok(Arc::new(Self {
            assembly,
            by_tenant,
            config: Config {
                max_runs: config.max_runs.max(1),
                ..config
            },
            queue: Mutex::new(queue),
            ledger: Ledger::default(),
            running: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            events: Notify::new(),
            stopping: Cancel::new(),
            recent_run_s: Mutex::new(1.0),
            fair: Mutex::new(worker::Fair::default()),
        }))
    }

    pub(crate) fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        lock(&self.queue)
    }

    /// The world a tenant's workflows compile, plan and run in (its policy).
    pub(crate) fn assembly(&self, tenant: &str) -> &Arc<Assembly> {
        self.by_tenant.get(tenant).unwrap_or(&self.assembly)
    }

    pub(crate) fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Cancel)>> {
        lock(&self.running)
    }

    /// A run ended after `seconds`: kept for the next `Retry-After`.
    pub(crate) fn ran_for(&self, seconds: f64) {
        let mut r = lock(&self.recent_run_s);
        *r = 0.8 * *r + 0.2 * seconds.max(0.0);
    }

    /// Seconds until a full queue of `waiting` runs likely has room again.
    pub(crate) fn retry_after(&self, waiting: usize, slots: usize) -> u64 {
        let per_run = *lock(&self.recent_run_s);
        ((per_run * waiting as f64 / slots.max(1) as f64).ceil() as u64).clamp(1, 3600)
    }

    /// Stops admitting: new submissions get 503, followers' streams end.
    pub fn stop_admitting(&self) {
        self.stopping.cancel();
        self.events.notify_waiters();
    }
}

/// The run API's routes, to merge beside the OpenAI ones.
pub fn router(service: Arc<Service>) -> Router {
    Router::new()
        .route(
            "/v1/workflows/{name}",
            get(api::get_workflow).put(api::put_workflow),
        )
        .route("/v1/runs", post(api::submit).get(api::list))
        .route("/v1/runs/{id}", get(api::get_run))
        .route("/v1/runs/{id}/cancel", post(api::cancel))
        .route("/v1/runs/{id}/events", get(events::follow))
        .route("/v1/openapi.json", get(api::openapi))
        .with_state(service)
}
