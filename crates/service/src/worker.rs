//! The worker: plans and runs the queued submissions of every tenant (up to `max_runs` at
//! once) through the shared engines, so runs on the same model batch on one engine.
//!
//! Which submission goes next is weighted fair sharing (start-time fair queuing): each tenant
//! carries a tag that grows by 1/weight with every run it starts, a tenant coming back from idle
//! starts at the current virtual time rather than with credit saved up, and of the tenants with
//! runs waiting and under their `runs_in_flight`, the lowest tag goes next (oldest submission
//! first within a tenant, and between equals). A tenant that queues a thousand runs gets its
//! share of the starts while another's single run goes at the next free slot.
//!
//! A submission is marked started before its run is created; on start, one marked started
//! whose run never reached the store is queued again, and one whose run had not ended resumes
//! from what it finished. On stop, nothing new starts; runs in progress get `drain` to finish,
//! then are stopped cleanly (what finished is recorded) and resume at the next start.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use joule_app::runs::{self, Keep, Ready};
use joule_executor::queue::{State, Submission};
use joule_executor::runtime::{Cancel, RunStatus};
use joule_executor::store::{Store, StoreError};

use crate::Service;
use crate::budget::lock;
use crate::budget::{Meter, over};
use crate::tenants::Limits;

/// Runs until `stop`, then drains.
pub async fn run(service: Arc<Service>, stop: Cancel) {
    recover(&service);
    loop {
        let woken = service.wake.notified();
        if stop.is_cancelled() {
            break;
        }
        match next(&service) {
            Ok(Some(s)) => {
                let service = service.clone();
                tokio::spawn(async move { start(service, s).await });
                continue;
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "reading the queue"),
        }
        tokio::select! {
            _ = woken => {}
            _ = stop.cancelled() => break,
        }
    }
    service.stop_admitting();
    drain(&service).await;
}

/// Takes the submission that goes next, when a slot is free.
fn next(service: &Service) -> Result<Option<Submission>, StoreError> {
    let in_flight: HashMap<String, usize> =
        service
            .running()
            .values()
            .fold(HashMap::new(), |mut m, (tenant, _)| {
                *m.entry(tenant.clone()).or_default() += 1;
                m
            });
    if in_flight.values().sum::<usize>() >= service.config.max_runs {
        return Ok(None);
    }
    let heads = service.queue().heads()?;
    let mut fair = lock(&service.fair);
    let pick = heads
        .iter()
        .enumerate()
        .filter_map(|(age, (tenant, id))| {
            let limits = service.config.tenants.limits(tenant).unwrap_or_default();
            let running = in_flight.get(tenant).copied().unwrap_or(0);
            let cap = limits.runs_in_flight.unwrap_or(usize::MAX);
            let tag = fair.tag(tenant);
            (running < cap).then_some((tag, age, tenant, id, limits.weight))
        })
        .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let Some((tag, _, tenant, id, weight)) = pick else {
        return Ok(None);
    };
    let queue = service.queue();
    if !queue.take(id, State::Started)? {
        return Ok(None); // cancelled meanwhile; the caller looks again
    }
    fair.served(tenant, tag, weight);
    drop(fair);
    let s = queue.submission(id)?;
    drop(queue);
    if let Some(s) = &s {
        service
            .running()
            .insert(s.id.clone(), (s.tenant.clone(), Cancel::new()));
    }
    Ok(s)
}

/// Plans a submission, holds it to its tenant's limits, and runs it to its end.
async fn start(service: Arc<Service>, s: Submission) {
    let began = Instant::now();
    let limits = service.config.tenants.limits(&s.tenant).unwrap_or_default();
    let assembly = service.assembly(&s.tenant).clone();
    let inputs = match s.inputs.clone() {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    let prepared = runs::load_text(
        &assembly,
        &format!("{}.yaml", s.workflow),
        &s.yaml,
        inputs,
        &service.config.workspace,
    )
    .and_then(|spec| runs::prepare(&assembly, spec, None))
    .map_err(|e| e.to_string())
    .and_then(|ready| admit(&service, &s.tenant, &limits, ready));
    match prepared {
        Ok(ready) => {
            let keep = Keep {
                store: Some(service.config.store.clone()),
                run_id: Some(s.id.clone()),
                ..Keep::default()
            };
            execute(&service, &s, &limits, &assembly, ready, &keep).await;
        }
        Err(why) => {
            // No plan fits (a budget, a device, the tenant's limits): the run ends here.
            tracing::info!(run = %s.id, error = %why, "submission refused when planned");
            let _ = service.queue().set_state(&s.id, State::Refused, Some(&why));
            service.events.notify_waiters();
        }
    }
    finish(&service, &s, began);
}

/// The tenant's per-run limits and what its day has left, against the plan's prediction.
fn admit(service: &Service, tenant: &str, limits: &Limits, ready: Ready) -> Result<Ready, String> {
    let (energy, cost) = ready
        .plan
        .steps
        .iter()
        .fold((0.0, 0.0), |(e, c), s| (e + s.energy_j, c + s.cost_usd));
    let per_run = [
        ("energy", limits.max_run_energy_j, energy, "J"),
        ("cost", limits.max_run_cost_usd, cost, "USD"),
    ];
    for (what, limit, need, unit) in per_run {
        if let Some(l) = limit
            && need > l
        {
            return Err(format!(
                "the run is predicted to need {need:.4} {unit} of {what}, over the tenant's \
                 {l} {unit} a run"
            ));
        }
    }
    over(
        limits,
        service.ledger.committed(&service.queue, tenant),
        (energy, cost),
        "the run",
    )?;
    Ok(ready)
}

async fn execute(
    service: &Arc<Service>,
    s: &Submission,
    limits: &Limits,
    assembly: &joule_app::Assembly,
    ready: Ready,
    keep: &Keep,
) {
    let Some(stop) = service.running().get(&s.id).map(|(_, c)| c.clone()) else {
        return;
    };
    let mut meter = Meter::new(
        service.clone(),
        &s.tenant,
        limits.clone(),
        &s.id,
        &ready.plan,
    );
    let guard = meter.clone();
    let ready = ready.layer(Box::new(move |inner| guard.guard(inner)));
    match runs::execute(assembly, ready, keep, &mut meter, &stop).await {
        Ok(f) => tracing::info!(run = %s.id, status = ?f.outcome.status, "run ended"),
        Err(e) => tracing::error!(run = %s.id, error = %e, "run failed to execute"),
    }
    // What the last attempts spent, if the run ended without a flush after them.
    let _ = joule_executor::runtime::Sink::flush(&mut meter);
}

fn finish(service: &Service, s: &Submission, began: Instant) {
    service.running().remove(&s.id);
    service.ledger.release_run(&s.tenant, &s.id);
    service.ran_for(began.elapsed().as_secs_f64());
    service.events.notify_waiters();
    service.wake.notify_one();
}

/// What a killed server left: started submissions whose run never began go back to the
/// queue; runs that had not ended resume (in the worker's slots, like new ones).
fn recover(service: &Arc<Service>) {
    // Cancelled by their users, then the server died before they stopped: they end here.
    let cancelled = service
        .queue()
        .in_state(State::Cancelled)
        .unwrap_or_default();
    if let Ok(mut store) = Store::open(&service.config.store) {
        for id in cancelled {
            let why = "cancelled; the server stopped before the run did";
            if let Err(e) = store.end_if_running(&id, RunStatus::Cancelled, why) {
                tracing::error!(run = %id, error = %e, "ending a cancelled run");
            }
        }
    }
    let started = service.queue().in_state(State::Started).unwrap_or_default();
    for id in started {
        let run = Store::open(&service.config.store).and_then(|s| s.run(&id));
        match run {
            Err(StoreError::UnknownRun(_)) => {
                let _ = service.queue().set_state(&id, State::Queued, None);
            }
            Ok(r) if r.status == RunStatus::Running || r.status == RunStatus::Cancelled => {
                let Ok(Some(s)) = service.queue().submission(&id) else {
                    continue;
                };
                service
                    .running()
                    .insert(id.clone(), (s.tenant.clone(), Cancel::new()));
                let service = service.clone();
                tokio::spawn(async move { resume(service, s).await });
            }
            Ok(_) => {}
            Err(e) => tracing::error!(run = %id, error = %e, "reading a started run"),
        }
    }
}

async fn resume(service: Arc<Service>, s: Submission) {
    let began = Instant::now();
    let limits = service.config.tenants.limits(&s.tenant).unwrap_or_default();
    let assembly = service.assembly(&s.tenant).clone();
    match runs::resumable_in(&assembly, &service.config.store, &s.id) {
        Ok(Some(ready)) => {
            let keep = Keep {
                store: Some(service.config.store.clone()),
                ..Keep::default()
            };
            execute(&service, &s, &limits, &assembly, ready, &keep).await;
        }
        Ok(None) => {}
        Err(e) => tracing::error!(run = %s.id, error = %e, "a run cannot be resumed"),
    }
    finish(&service, &s, began);
}

/// Lets runs in progress end within the drain time, then stops the rest.
async fn drain(service: &Service) {
    let deadline = Instant::now() + service.config.drain;
    loop {
        let woken = service.wake.notified();
        let left = service.running().len();
        if left == 0 {
            return;
        }
        let now = Instant::now();
        if now >= deadline {
            tracing::info!(
                runs = left,
                "stopping runs still in progress; they resume at the next start"
            );
            for (_, stop) in service.running().values() {
                stop.cancel();
            }
            // They stop at once: each records what it finished and leaves the map.
            while !service.running().is_empty() {
                let woken = service.wake.notified();
                if service.running().is_empty() {
                    break;
                }
                woken.await;
            }
            return;
        }
        tokio::select! {
            _ = woken => {}
            _ = tokio::time::sleep(deadline - now) => {}
        }
    }
}

/// The fair-queuing state: the virtual time and each tenant's tag.
#[derive(Default)]
pub(crate) struct Fair {
    clock: f64,
    tags: HashMap<String, f64>,
}

impl Fair {
    /// The tag `tenant`'s next run would start with.
    fn tag(&self, tenant: &str) -> f64 {
        self.tags
            .get(tenant)
            .copied()
            .unwrap_or(0.0)
            .max(self.clock)
    }

    /// `tenant` started a run at `tag`.
    fn served(&mut self, tenant: &str, tag: f64, weight: f64) {
        self.clock = tag;
        self.tags.insert(tenant.to_string(), tag + 1.0 / weight);
    }
}

#[cfg(test)]
mod tests {
    use super::Fair;

    /// Picks as `next` does: the lowest tag, ties to the first listed (the oldest).
    fn pick(f: &mut Fair, waiting: &[(&str, f64)]) -> String {
        let (t, w) = waiting
            .iter()
            .min_by(|a, b| f.tag(a.0).total_cmp(&f.tag(b.0)))
            .unwrap();
        let tag = f.tag(t);
        f.served(t, tag, *w);
        t.to_string()
    }

    #[test]
    fn weights_share_the_starts_and_idle_saves_no_credit() {
        let mut f = Fair::default();
        let both = [("a", 2.0), ("b", 1.0)];
        let order: String = (0..6).map(|_| pick(&mut f, &both)).collect();
        assert_eq!(
            order.matches('a').count(),
            4,
            "{order}: a has twice b's weight"
        );
        // c comes late and does not get its missed starts all at once.
        let three = [("a", 1.0), ("b", 1.0), ("c", 1.0)];
        let later: String = (0..6).map(|_| pick(&mut f, &three)).collect();
        assert!(later.matches('c').count() <= 3, "{later}");
        assert!(
            later.matches('a').count() >= 1 && later.matches('b').count() >= 1,
            "{later}"
        );
    }
}
