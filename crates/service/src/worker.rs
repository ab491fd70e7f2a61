//! The worker: takes queued submissions oldest first, plans each and runs it with the others
//! (up to `max_runs` at once) through the shared assembly, so runs on the same model batch on
//! one engine. A submission is marked started before its run is created; on start, one marked
//! started whose run never reached the store is queued again, and one whose run had not ended
//! resumes from what it finished.

use std::sync::Arc;

use joule_app::runs::{self, Keep, Resumable};
use joule_executor::queue::State;
use joule_executor::runtime::{Cancel, Record, RunStatus, Sink, SinkError};
use joule_executor::store::{Store, StoreError};
use tokio::sync::Semaphore;

use crate::Service;

/// Events go to the store; nothing is shown.
struct Quiet;

impl Sink for Quiet {
    fn record(&mut self, _: &Record) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Runs until `stop`; runs in progress then stop cleanly (what finished is recorded) and are
/// resumed at the next start.
pub async fn run(service: Arc<Service>, stop: Cancel) {
    recover(&service, &stop).await;
    let slots = Arc::new(Semaphore::new(service.max_runs));
    loop {
        let queued = service.queue().in_state(State::Queued).unwrap_or_else(|e| {
            tracing::error!(error = %e, "reading the queue");
            Vec::new()
        });
        for id in queued {
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                _ = stop.cancelled() => return,
            };
            if let Err(e) = service.queue().set_state(&id, State::Started, None) {
                tracing::error!(error = %e, run = %id, "marking a submission started");
                continue;
            }
            let (service, stop) = (service.clone(), stop.clone());
            tokio::spawn(async move {
                start(&service, &id, &stop).await;
                drop(permit);
            });
        }
        tokio::select! {
            _ = service.wake.notified() => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Plans a submission and runs it to its end.
async fn start(service: &Service, id: &str, stop: &Cancel) {
    let Ok(Some(s)) = service.queue().submission(id) else {
        return;
    };
    let inputs = match s.inputs {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    let prepared = runs::load_text(
        &service.assembly,
        &format!("{}.yaml", s.workflow),
        &s.yaml,
        inputs,
        &service.workspace,
    )
    .and_then(|spec| runs::prepare(&service.assembly, spec, None));
    let ready = match prepared {
        Ok(r) => r,
        Err(e) => {
            // No plan fits now (a budget, a device): the run ends here, saying why.
            tracing::info!(run = %id, error = %e, "submission refused when planned");
            let _ = service
                .queue()
                .set_state(id, State::Refused, Some(&e.to_string()));
            return;
        }
    };
    let keep = Keep {
        store: Some(service.store.clone()),
        run_id: Some(id.to_string()),
        ..Keep::default()
    };
    match runs::execute(&service.assembly, ready, &keep, &mut Quiet, stop).await {
        Ok(f) => tracing::info!(run = %id, status = ?f.outcome.status, "run ended"),
        Err(e) => tracing::error!(run = %id, error = %e, "run failed to execute"),
    }
}

/// What a killed server left: started submissions whose run never began go back to the
/// queue; runs that had not ended resume.
async fn recover(service: &Service, stop: &Cancel) {
    let started = service.queue().in_state(State::Started).unwrap_or_default();
    for id in started {
        let run = Store::open(&service.store).and_then(|s| s.run(&id));
        match run {
            Err(StoreError::UnknownRun(_)) => {
                let _ = service.queue().set_state(&id, State::Queued, None);
            }
            Ok(r) if r.status == RunStatus::Running || r.status == RunStatus::Cancelled => {
                resume(service, &id, stop).await;
            }
            Ok(_) => {}
            Err(e) => tracing::error!(run = %id, error = %e, "reading a started run"),
        }
    }
}

async fn resume(service: &Service, id: &str, stop: &Cancel) {
    let settings = service.assembly.settings.clone();
    match runs::resumable(settings, &service.store, id) {
        Ok(Resumable::Ready {
            assembly, ready, ..
        }) => {
            let keep = Keep {
                store: Some(service.store.clone()),
                ..Keep::default()
            };
            match runs::execute(&assembly, *ready, &keep, &mut Quiet, stop).await {
                Ok(f) => tracing::info!(run = %id, status = ?f.outcome.status, "resumed run ended"),
                Err(e) => tracing::error!(run = %id, error = %e, "resuming a run"),
            }
        }
        Ok(Resumable::Done { .. }) => {}
        Err(e) => tracing::error!(run = %id, error = %e, "a run cannot be resumed"),
    }
}
