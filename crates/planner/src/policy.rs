//! The operator's policy: what every workflow on this installation may touch, whatever the
//! workflow itself asks for. A workflow's own `policy:` can only narrow it: the effective
//! policy is the intersection of the two (providers, models, tools, network), the union of
//! required sandbox layers, and the lower of each budget. A pin or tool step the operator
//! forbids is an error at compile time (`joule validate` reports it at its place in the file);
//! the executor checks every call against the effective policy again at run time.

use std::path::Path;

use serde::Deserialize;

use crate::diag::{SourceFile, SpecError};
use crate::spec::{Budget, Workflow, units};

/// The operator policy file (`--policy FILE` or `$JOULE_POLICY`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorPolicy {
    /// Where model calls may go (`local`, endpoint names); absent: anywhere.
    #[serde(default)]
    pub providers: Option<Vec<String>>,
    /// Models that may be used; absent: any.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// Tools that may be called; absent: any the workflow allows.
    #[serde(default)]
    pub tools: Option<Vec<String>>,
    /// Tools that may use the network; absent: those the workflow allows.
    #[serde(default)]
    pub network: Option<Vec<String>>,
    /// Sandbox layers every tool step needs.
    #[serde(default)]
    pub sandbox: Vec<String>,
    /// Budgets no workflow may exceed (`latency: 5m`, `energy: 20kJ`, `cost: $1`).
    #[serde(default)]
    pub max_budget: Option<MaxBudget>,
    /// The widest `for_each` any workflow may have; a workflow's own cap is lowered to it.
    #[serde(default)]
    pub max_fan_out: Option<u32>,
    /// The file it came from, for messages.
    #[serde(skip)]
    pub origin: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaxBudget {
    #[serde(default)]
    pub latency: Option<String>,
    #[serde(default)]
    pub energy: Option<String>,
    #[serde(default)]
    pub cost: Option<String>,
}

impl OperatorPolicy {
    pub fn parse(file: &SourceFile) -> Result<Self, Vec<SpecError>> {
        let mut p: Self = crate::spec::from_yaml(file)?;
        p.origin = file.name().to_string();
        for l in &p.sandbox {
            if !crate::spec::SANDBOX_LAYERS.contains(&l.as_str()) {
                return Err(vec![SpecError::whole_file(
                    file.name(),
                    crate::diag::ErrorCode::InvalidValue,
                    format!(
                        "`{l}` is not a sandbox layer; layers: {}",
                        crate::spec::SANDBOX_LAYERS.join(", ")
                    ),
                )]);
            }
        }
        if p.max_fan_out == Some(0) {
            return Err(vec![SpecError::whole_file(
                file.name(),
                crate::diag::ErrorCode::InvalidValue,
                "`max_fan_out` must be at least 1".to_string(),
            )]);
        }
        p.budget(&Budget::default()).map_err(|m| {
            vec![SpecError::whole_file(
                file.name(),
                crate::diag::ErrorCode::InvalidValue,
                m,
            )]
        })?;
        Ok(p)
    }

    pub fn load(path: &Path) -> Result<Self, Vec<SpecError>> {
        Self::parse(&crate::spec::read_source(path)?)
    }

    pub fn allows_provider(&self, provider: &str) -> bool {
        self.providers
            .as_ref()
            .is_none_or(|p| p.iter().any(|x| x == provider))
    }

    pub fn allows_model(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|m| m.iter().any(|x| x == model))
    }

    pub fn allows_tool(&self, tool: &str) -> bool {
        self.tools
            .as_ref()
            .is_none_or(|t| t.iter().any(|x| x == tool))
    }

    /// `budget` capped by `max_budget`.
    fn budget(&self, budget: &Budget) -> Result<Budget, String> {
        let Some(max) = &self.max_budget else {
            return Ok(*budget);
        };
        let cap =
            |mine: Option<f64>, text: &Option<String>, parse: fn(&str) -> Result<f64, String>| {
                Ok::<_, String>(match text {
                    None => mine,
                    Some(t) => {
                        let limit = parse(t).map_err(|e| format!("max_budget `{t}`: {e}"))?;
                        Some(mine.map_or(limit, |m| m.min(limit)))
                    }
                })
            };
        Ok(Budget {
            latency_s: cap(budget.latency_s, &max.latency, units::parse_duration)?,
            energy_j: cap(budget.energy_j, &max.energy, units::parse_energy)?,
            cost_usd: cap(budget.cost_usd, &max.cost, units::parse_cost)?,
            quality_loss: budget.quality_loss,
        })
    }

    /// Narrows a compiled workflow's policy and budgets to what the operator allows.
    pub fn narrow(&self, wf: &mut Workflow) {
        let p = &mut wf.policy;
        p.providers.retain(|x| self.allows_provider(x));
        if let Some(allowed) = &self.models {
            p.models = Some(match p.models.take() {
                Some(mine) => mine.into_iter().filter(|m| allowed.contains(m)).collect(),
                None => allowed.clone(),
            });
        }
        p.tools.retain(|t| self.allows_tool(t));
        if let Some(net) = &self.network {
            p.network.retain(|t| net.contains(t));
        }
        p.network.retain(|t| self.allows_tool(t));
        for l in &self.sandbox {
            if !p.sandbox.contains(l) {
                p.sandbox.push(l.clone());
            }
        }
        if let Ok(b) = self.budget(&wf.budget) {
            wf.budget = b;
        }
        if let Some(cap) = self.max_fan_out {
            p.max_fan_out = p.max_fan_out.min(cap);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dag::CompileContext;

    fn op(text: &str) -> OperatorPolicy {
        OperatorPolicy::parse(&SourceFile::new("operator.yaml", text)).unwrap()
    }

    const WF: &str = "name: w\nbudget: { latency: 10m }\npolicy: { providers: [local, openai], tools: [grep, python_tests], network: [grep] }\nsteps:\n  a: { prompt: hi }\n";

    #[test]
    fn a_workflow_cannot_widen_the_operator_policy() {
        let o = op(
            "providers: [local]\ntools: [grep]\nnetwork: []\nsandbox: [seccomp]\nmax_budget: { latency: 1m, cost: $0.5 }\n",
        );
        let ctx = CompileContext {
            operator: Some(o),
            ..CompileContext::default()
        };
        let dag = crate::compile_source(&SourceFile::new("w.yaml", WF), &ctx).unwrap();
        let p = &dag.workflow.policy;
        assert_eq!(p.providers, ["local"]);
        assert_eq!(p.tools, ["grep"]);
        assert!(p.network.is_empty());
        assert_eq!(p.sandbox, ["seccomp"]);
        assert_eq!(dag.workflow.budget.latency_s, Some(60.0));
        assert_eq!(dag.workflow.budget.cost_usd, Some(0.5));
    }

    #[test]
    fn the_fan_out_cap_is_the_lower_of_the_workflows_and_the_operators() {
        let compile = |wf: &str, operator: Option<&str>| {
            let ctx = CompileContext {
                operator: operator.map(op),
                ..CompileContext::default()
            };
            crate::compile_source(&SourceFile::new("w.yaml", wf), &ctx)
                .unwrap()
                .workflow
                .policy
                .max_fan_out
        };
        let wide = "name: w\npolicy: { max_fan_out: 5000 }\nsteps:\n  a: { prompt: hi }\n";
        let plain = "name: w\nsteps:\n  a: { prompt: hi }\n";
        assert_eq!(compile(plain, None), crate::spec::DEFAULT_MAX_FAN_OUT);
        assert_eq!(compile(wide, None), 5000);
        assert_eq!(compile(wide, Some("max_fan_out: 1000\n")), 1000);
        assert_eq!(compile(plain, Some("max_fan_out: 10\n")), 10);
        assert!(OperatorPolicy::parse(&SourceFile::new("o.yaml", "max_fan_out: 0\n")).is_err());
    }

    #[test]
    fn a_forbidden_pin_or_tool_is_an_error_at_its_place() {
        let wf = "name: w\npolicy: { providers: [local, openai], tools: [python_tests] }\nsteps:\n  a:\n    prompt: hi\n    device: openai\n  b:\n    tool: python_tests\n    args: { code: x, tests: y }\n";
        let ctx = CompileContext {
            operator: Some(op("providers: [local]\ntools: [grep]\n")),
            ..CompileContext::default()
        };
        let errors = crate::compile_source(&SourceFile::new("w.yaml", wf), &ctx).unwrap_err();
        let text: Vec<String> = errors.iter().map(|e| e.message.clone()).collect();
        assert!(
            text.iter()
                .any(|m| m.contains("endpoint `openai` is forbidden by the operator policy")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|m| m.contains("tool `python_tests` is forbidden by the operator policy")),
            "{text:?}"
        );
        assert_eq!(errors[0].pos.line, 6);
    }

    #[test]
    fn a_workflow_policy_grants_network_only_to_its_tools_and_names_real_layers() {
        let wf = "name: w\npolicy: { tools: [grep], network: [curl], sandbox: [landlock, seccomp] }\nsteps:\n  a: { prompt: hi }\n";
        let errors =
            crate::compile_source(&SourceFile::new("w.yaml", wf), &CompileContext::default())
                .unwrap_err();
        let text: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
        assert!(
            text.contains(&"`policy.network` names `curl`, which is not in `policy.tools`"),
            "{text:?}"
        );
        assert!(
            text.contains(&"`landlock` is not a sandbox layer"),
            "{text:?}"
        );
    }

    #[test]
    fn bad_operator_files_are_refused() {
        for text in [
            "sandbox: [moat]\n",
            "max_budget: { latency: soon }\n",
            "colour: red\n",
        ] {
            assert!(
                OperatorPolicy::parse(&SourceFile::new("o.yaml", text)).is_err(),
                "{text}"
            );
        }
    }
}
