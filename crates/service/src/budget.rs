//! Tenants' daily budgets, held atomically across all their concurrent runs. Before a call
//! goes out, what it is predicted to spend (its step's planned figures per call) is reserved
//! against the tenant's day; the call is refused when the day's measured spend plus every
//! reservation in flight plus this one would pass the budget. When the call's attempt ends, its
//! measured figures replace the reservation and are written to the run store, so a restart
//! knows what the day has spent.
//!
//! What this guarantees: no call starts unless the budget covers it as predicted. A call whose
//! measured figures exceed its prediction can overrun by that error; the next calls see it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use joule_call::{Backend, Call, CallError, CallFuture, Cancel, OnTokens, Site};
use joule_executor::queue::{Queue, today};
use joule_executor::runtime::{Event, Figures, Record, Sink, SinkError};
use joule_planner::plan::Plan;

use crate::tenants::Limits;

/// An attempt of a call, across all runs.
type Attempt = (String, String, Option<usize>, u32);

#[derive(Default)]
struct Account {
    day: String,
    energy_j: f64,
    cost_usd: f64,
    reserved: HashMap<Attempt, (f64, f64)>,
}

impl Account {
    fn reserved(&self) -> (f64, f64) {
        self.reserved
            .values()
            .fold((0.0, 0.0), |(e, c), (re, rc)| (e + re, c + rc))
    }
}

/// Every tenant's spend today and the reservations of its calls in flight.
#[derive(Default)]
pub struct Ledger {
    accounts: Mutex<HashMap<String, Account>>,
}

impl Ledger {
    fn account<'a>(
        accounts: &'a mut HashMap<String, Account>,
        queue: &Mutex<Queue>,
        tenant: &str,
    ) -> &'a mut Account {
        let day = today();
        let a = accounts.entry(tenant.to_string()).or_default();
        if a.day != day {
            let (e, c) = lock(queue).spent(tenant, &day).unwrap_or((0.0, 0.0));
            (a.day, a.energy_j, a.cost_usd) = (day, e, c);
        }
        a
    }

    /// What the tenant has spent today plus what its calls in flight have reserved.
    pub fn committed(&self, queue: &Mutex<Queue>, tenant: &str) -> (f64, f64) {
        let mut accounts = lock(&self.accounts);
        let a = Self::account(&mut accounts, queue, tenant);
        let (re, rc) = a.reserved();
        (a.energy_j + re, a.cost_usd + rc)
    }

    /// Reserves `need` for an attempt, or says which budget it would pass.
    fn reserve(
        &self,
        queue: &Mutex<Queue>,
        tenant: &str,
        limits: &Limits,
        attempt: Attempt,
        need: (f64, f64),
    ) -> Result<(), String> {
        let mut accounts = lock(&self.accounts);
        let a = Self::account(&mut accounts, queue, tenant);
        let (re, rc) = a.reserved();
        over(limits, (a.energy_j + re, a.cost_usd + rc), need, "the call")?;
        a.reserved.insert(attempt, need);
        Ok(())
    }

    /// An attempt ended: its measured figures are spent, its reservation is released. What
    /// is spent is written to the store by [`Self::persist`], outside the run store's open
    /// transaction (the sink is called inside it, on another connection).
    fn settle(&self, queue: &Mutex<Queue>, tenant: &str, attempt: &Attempt, f: &Figures) {
        let mut accounts = lock(&self.accounts);
        let a = Self::account(&mut accounts, queue, tenant);
        a.reserved.remove(attempt);
        a.energy_j += f.energy_j;
        a.cost_usd += f.cost_usd;
    }

    /// Writes what a tenant spent to the run store, so a restart knows what the day spent.
    fn persist(queue: &Mutex<Queue>, tenant: &str, day: &str, spent: (f64, f64)) {
        if (spent.0 > 0.0 || spent.1 > 0.0)
            && let Err(e) = lock(queue).add_spend(tenant, day, spent.0, spent.1)
        {
            tracing::error!(error = %e, tenant, "recording a tenant's spend");
        }
    }

    /// A run ended: whatever it still held (an attempt cut off) is released.
    pub fn release_run(&self, tenant: &str, run: &str) {
        if let Some(a) = lock(&self.accounts).get_mut(tenant) {
            a.reserved.retain(|k, _| k.0 != run);
        }
    }
}

/// Whether `committed` plus `need` passes one of the tenant's daily budgets.
pub(crate) fn over(
    limits: &Limits,
    committed: (f64, f64),
    need: (f64, f64),
    what: &str,
) -> Result<(), String> {
    let checks = [
        ("energy", limits.energy_per_day_j, committed.0, need.0, "J"),
        ("cost", limits.cost_per_day_usd, committed.1, need.1, "USD"),
    ];
    for (name, limit, used, need, unit) in checks {
        if let Some(limit) = limit
            && used + need > limit
        {
            return Err(format!(
                "{what} would pass the tenant's daily {name} budget: {used:.4} {unit} spent or \
                 reserved today, {need:.4} {unit} predicted, {limit} {unit} a day; it resets at \
                 00:00 UTC"
            ));
        }
    }
    Ok(())
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One run's view of its tenant's budget: the guard in front of its backend and the sink that
/// settles its attempts.
#[derive(Clone)]
pub struct Meter {
    service: Arc<crate::Service>,
    tenant: String,
    limits: Limits,
    run: String,
    /// Each step's predicted figures per call.
    per_call: Arc<HashMap<String, (f64, f64)>>,
    /// Spent since the last flush, by day: written when the store has committed.
    pending: HashMap<String, (f64, f64)>,
}

impl Meter {
    pub fn new(
        service: Arc<crate::Service>,
        tenant: &str,
        limits: Limits,
        run: &str,
        plan: &Plan,
    ) -> Self {
        let per_call = plan
            .steps
            .iter()
            .map(|s| {
                let n = f64::from(s.calls.max(1));
                (s.id.clone(), (s.energy_j / n, s.cost_usd / n))
            })
            .collect();
        Self {
            service,
            tenant: tenant.to_string(),
            limits,
            run: run.to_string(),
            per_call: Arc::new(per_call),
            pending: HashMap::new(),
        }
    }

    fn budgeted(&self) -> bool {
        self.limits.energy_per_day_j.is_some() || self.limits.cost_per_day_usd.is_some()
    }

    /// The backend layer that reserves before each call.
    pub fn guard(&self, inner: Arc<dyn Backend>) -> Arc<dyn Backend> {
        if !self.budgeted() {
            return inner;
        }
        Arc::new(Guard {
            meter: self.clone(),
            inner,
        })
    }

    fn attempt(&self, step: &str, index: Option<usize>, attempt: u32) -> Attempt {
        (self.run.clone(), step.to_string(), index, attempt)
    }
}

struct Guard {
    meter: Meter,
    inner: Arc<dyn Backend>,
}

impl Backend for Guard {
    fn call<'a>(
        &'a self,
        site: &'a Site,
        call: &'a Call,
        cancel: &'a Cancel,
        on_tokens: &'a OnTokens,
    ) -> CallFuture<'a> {
        let m = &self.meter;
        let need = m.per_call.get(&site.step).copied().unwrap_or((0.0, 0.0));
        let reserved = m.service.ledger.reserve(
            &m.service.queue,
            &m.tenant,
            &m.limits,
            m.attempt(&site.step, site.index, site.attempt),
            need,
        );
        match reserved {
            Ok(()) => self.inner.call(site, call, cancel, on_tokens),
            Err(why) => Box::pin(std::future::ready(Err(CallError::permanent(why)))),
        }
    }
}

/// Settles attempts as they end and wakes the run's followers; the store sink keeps the
/// events themselves.
impl Sink for Meter {
    fn record(&mut self, record: &Record) -> Result<(), SinkError> {
        if let Event::AttemptEnded {
            step,
            index,
            attempt,
            figures,
            ..
        } = &record.event
            && self.budgeted()
        {
            let a = self.attempt(step, *index, *attempt);
            self.service
                .ledger
                .settle(&self.service.queue, &self.tenant, &a, figures);
            let p = self.pending.entry(today()).or_default();
            (p.0, p.1) = (p.0 + figures.energy_j, p.1 + figures.cost_usd);
        }
        Ok(())
    }

    /// The store sink has flushed before this one (it comes first): its transaction is
    /// committed, so the spend can be written, and followers can read the events.
    fn flush(&mut self) -> Result<(), SinkError> {
        for (day, spent) in self.pending.drain() {
            Ledger::persist(&self.service.queue, &self.tenant, &day, spent);
        }
        self.service.events.notify_waiters();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_count_until_settled_and_refuse_past_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Mutex::new(Queue::open(&dir.path().join("runs.db")).unwrap());
        let limits = Limits {
            energy_per_day_j: Some(10.0),
            ..Limits::default()
        };
        let ledger = Ledger::default();
        let at = |run: &str, n| (run.to_string(), "s".to_string(), None, n);
        ledger
            .reserve(&queue, "t", &limits, at("r1", 1), (4.0, 0.0))
            .unwrap();
        ledger
            .reserve(&queue, "t", &limits, at("r2", 1), (4.0, 0.0))
            .unwrap();
        let e = ledger
            .reserve(&queue, "t", &limits, at("r3", 1), (4.0, 0.0))
            .unwrap_err();
        assert!(e.contains("daily energy budget"), "{e}");
        assert!(
            ledger
                .reserve(&queue, "u", &limits, at("r3", 1), (4.0, 0.0))
                .is_ok(),
            "tenants apart"
        );
        let spent = Figures {
            energy_j: 1.0,
            ..Figures::default()
        };
        ledger.settle(&queue, "t", &at("r1", 1), &spent);
        Ledger::persist(&queue, "t", &today(), (1.0, 0.0));
        assert_eq!(ledger.committed(&queue, "t"), (5.0, 0.0));
        ledger.release_run("t", "r2");
        assert_eq!(ledger.committed(&queue, "t"), (1.0, 0.0));
        // What was spent is in the store: a new ledger (a restarted server) starts from it.
        assert_eq!(Ledger::default().committed(&queue, "t"), (1.0, 0.0));
    }
}
