//! The report of a run: per step, what the plan predicted against what was measured, totals
//! against the budgets, and whether the SLO was met. People read [`Report::to_text`], programs
//! the JSON; the run store keeps it, so it is plain data that round-trips.
//!
//! Energy figures carry their method (`nvml`, `rapl`, `estimate`); a total is labelled with
//! the weakest method among its parts, so one estimated step makes the total an estimate.

use std::fmt::Write;

use joule_planner::plan::{Plan, format_cost, format_energy};
use joule_planner::spec::Kind;
use joule_planner::text::escape_controls;
use serde::{Deserialize, Serialize};

use crate::meter::Method;
use crate::runtime::event::weakest;
use crate::runtime::{Outcome, RunStatus, StepStatus};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    pub id: String,
    pub kind: Kind,
    pub status: StepStatus,
    pub model: Option<String>,
    pub device: String,
    pub attempts: u32,
    pub latency_s: f64,
    pub energy_j: f64,
    pub energy_method: Option<Method>,
    pub cost_usd: f64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// Of `tokens_in`, those whose KV came from the engine's prefix cache.
    #[serde(default)]
    pub tokens_cached: u64,
    /// Seconds of `latency_s` spent loading the step's model: the plan counts loads apart
    /// from steps (`loads`), so a step's prediction is compared with `latency_s - load_s`.
    pub load_s: f64,
    pub started_s: Option<f64>,
    pub ended_s: Option<f64>,
    pub resumed: bool,
    pub predicted_latency_s: f64,
    pub predicted_energy_j: f64,
    pub predicted_cost_usd: f64,
    pub predicted_tokens_out: f64,
    pub predicted_start_s: f64,
    pub predicted_end_s: f64,
    /// Whether it ran on the planned config (fallback and re-planning change it).
    pub as_planned: bool,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ReportTotals {
    /// Wall time of the run.
    pub latency_s: f64,
    pub energy_j: f64,
    pub energy_method: Option<Method>,
    pub cost_usd: f64,
    pub predicted_latency_s: f64,
    pub predicted_energy_j: f64,
    pub predicted_cost_usd: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub run_id: String,
    pub workflow: String,
    pub status: RunStatus,
    pub error: Option<String>,
    pub outputs: serde_json::Value,
    pub steps: Vec<StepReport>,
    pub totals: ReportTotals,
    pub budget: joule_planner::spec::Budget,
    /// `None` when the workflow has no latency SLO.
    pub slo_met: Option<bool>,
    pub energy_within_budget: Option<bool>,
    pub cost_within_budget: Option<bool>,
    pub replans: u32,
}

impl Report {
    pub fn new(plan: &Plan, outcome: &Outcome) -> Self {
        let steps: Vec<StepReport> = outcome
            .steps
            .iter()
            .zip(&plan.steps)
            .map(|(r, p)| StepReport {
                id: r.id.clone(),
                kind: r.kind,
                status: r.status,
                model: r.config.model.clone(),
                device: r.config.device.clone(),
                attempts: r.attempts,
                latency_s: r.figures.latency_s,
                energy_j: r.figures.energy_j,
                energy_method: r.figures.energy_method,
                cost_usd: r.figures.cost_usd,
                tokens_in: r.figures.tokens_in,
                tokens_out: r.figures.tokens_out,
                tokens_cached: r.figures.tokens_cached,
                load_s: r.figures.load_s,
                started_s: r.started_s,
                ended_s: r.ended_s,
                resumed: r.resumed,
                predicted_latency_s: p.latency_s,
                predicted_energy_j: p.energy_j,
                predicted_cost_usd: p.cost_usd,
                predicted_tokens_out: p.tokens_out,
                predicted_start_s: p.start_s,
                predicted_end_s: p.end_s,
                as_planned: r.kind != Kind::Llm
                    || (r.config.model == p.model && r.config.device == p.device),
                error: r.error.clone(),
            })
            .collect();
        let energy_method = steps
            .iter()
            .filter(|s| s.energy_j > 0.0)
            .fold(None, |m, s| weakest(m, s.energy_method));
        let totals = ReportTotals {
            latency_s: outcome.wall_s,
            energy_j: steps.iter().map(|s| s.energy_j).sum(),
            energy_method,
            cost_usd: steps.iter().map(|s| s.cost_usd).sum(),
            predicted_latency_s: plan.totals.latency_s,
            predicted_energy_j: plan.totals.energy_j,
            predicted_cost_usd: plan.totals.cost_usd,
        };
        let b = plan.budget;
        let finished = outcome.status == RunStatus::Succeeded;
        Self {
            run_id: outcome.run_id.clone(),
            workflow: plan.workflow.clone(),
            status: outcome.status,
            error: outcome.error.clone(),
            outputs: outcome.outputs.clone(),
            steps,
            totals,
            budget: b,
            slo_met: b.latency_s.map(|l| finished && totals.latency_s <= l),
            energy_within_budget: b.energy_j.map(|e| totals.energy_j <= e),
            cost_within_budget: b.cost_usd.map(|c| totals.cost_usd <= c),
            replans: outcome.replans,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    /// The report as a table for people (untrusted text in it shown escaped).
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let method = |m: Option<Method>| m.map_or("-", Method::as_str);
        let id_w = self
            .steps
            .iter()
            .map(|s| s.id.len())
            .max()
            .unwrap_or(4)
            .max(4);
        let cfg = |s: &StepReport| match &s.model {
            Some(m) => format!("{m}@{}", s.device),
            None => format!("({})", s.kind),
        };
        let cfg_w = self
            .steps
            .iter()
            .map(|s| cfg(s).len())
            .max()
            .unwrap_or(6)
            .max(6);
        let _ = writeln!(
            out,
            "{:id_w$}  {:9}  {:cfg_w$}  {:>18}  {:>20}  {:>9}  {:>4}",
            "step", "status", "config", "latency s (plan)", "energy J (method)", "cost $", "calls"
        );
        for s in &self.steps {
            let flag = if s.resumed {
                " (resumed)"
            } else if !s.as_planned {
                " (moved)"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "{:id_w$}  {:9}  {:cfg_w$}  {:>18}  {:>20}  {:>9.6}  {:>4}{flag}",
                s.id,
                s.status.as_str(),
                cfg(s),
                format!("{:.2} ({:.2})", s.latency_s, s.predicted_latency_s),
                format!("{:.1} ({})", s.energy_j, method(s.energy_method)),
                s.cost_usd,
                s.attempts,
            );
            if let Some(e) = &s.error {
                let _ = writeln!(out, "{:id_w$}  error: {}", "", escape_controls(e));
            }
        }
        let t = &self.totals;
        let budget = |limit: Option<f64>, f: &dyn Fn(f64) -> String| {
            limit.map_or("no budget".to_string(), |l| format!("budget {}", f(l)))
        };
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "latency {:.2} s (predicted {:.2} s, {})",
            t.latency_s,
            t.predicted_latency_s,
            budget(self.budget.latency_s, &|l| format!("{l:.1} s"))
        );
        let _ = writeln!(
            out,
            "energy  {} [{}] (predicted {}, {})",
            format_energy(t.energy_j),
            method(t.energy_method),
            format_energy(t.predicted_energy_j),
            budget(self.budget.energy_j, &format_energy)
        );
        let _ = writeln!(
            out,
            "cost    {} (predicted {}, {})",
            format_cost(t.cost_usd),
            format_cost(t.predicted_cost_usd),
            budget(self.budget.cost_usd, &format_cost)
        );
        let verdict = match self.slo_met {
            Some(true) => "SLO met",
            Some(false) => "SLO MISSED",
            None => "no SLO",
        };
        let _ = writeln!(
            out,
            "run {} {}: {verdict}{}",
            self.run_id,
            self.status.as_str(),
            if self.replans > 0 {
                format!(", re-planned {} time(s)", self.replans)
            } else {
                String::new()
            }
        );
        if let Some(e) = &self.error {
            let _ = writeln!(out, "error: {}", escape_controls(e));
        }
        out
    }
}
