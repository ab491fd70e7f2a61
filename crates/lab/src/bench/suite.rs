//! A benchmark suite: workflows with shipped requests, how to score each answer, and SLO
//! tiers; every line is checked when the suite loads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use joule_planner::spec::OutputScore;
use joule_planner::spec::units;
use joule_planner::{CompileContext, Dag, SourceFile};
use serde::Deserialize;

use crate::examples::Example;

use super::BenchError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSuite {
    name: String,
    workflows: Vec<RawEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    /// The workflow; its `examples:` are the requests and how they are scored.
    workflow: PathBuf,
    /// Tier name to latency SLO (`30s`, `2m`).
    slo: BTreeMap<String, String>,
}

/// One workflow of the suite.
pub struct Entry {
    pub file: PathBuf,
    pub source: SourceFile,
    pub dag: Dag,
    /// The workflow's examples, asked in order.
    pub requests: Vec<Example>,
    /// How its outputs are scored (the workflow's `examples.score`).
    pub scores: Vec<OutputScore>,
    /// Tier name to SLO seconds.
    pub slo: BTreeMap<String, f64>,
}

impl Entry {
    pub fn name(&self) -> &str {
        &self.dag.workflow.name
    }

    /// The outputs whose quality the benchmark reports.
    pub fn scored_outputs(&self) -> Vec<&str> {
        self.scores.iter().map(|s| s.output.as_str()).collect()
    }
}

pub struct Suite {
    pub name: String,
    /// The directory its files are relative to (and the workspace of its tool steps).
    pub dir: PathBuf,
    pub entries: Vec<Entry>,
}

/// The suite manifest's file name inside a suite directory.
pub const MANIFEST: &str = "suite.yaml";

impl Suite {
    /// Loads a suite from its directory (or its manifest), compiling every workflow and
    /// checking every request's inputs and expected answer, so a bad line fails before any
    /// model runs rather than an hour into a benchmark.
    pub fn load(path: &Path, ctx: &CompileContext) -> Result<Self, BenchError> {
        let manifest = if path.is_dir() {
            path.join(MANIFEST)
        } else {
            path.to_path_buf()
        };
        let dir = manifest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let source = joule_planner::spec::read_source(&manifest).map_err(BenchError::Spec)?;
        let raw: RawSuite = joule_planner::spec::from_yaml(&source).map_err(BenchError::Spec)?;
        if raw.workflows.is_empty() {
            return Err(BenchError::Suite(format!(
                "{}: the suite names no workflows",
                manifest.display()
            )));
        }
        let mut entries = Vec::new();
        for e in raw.workflows {
            let file = dir.join(&e.workflow);
            let wf_source = joule_planner::spec::read_source(&file).map_err(BenchError::Spec)?;
            let dag = joule_planner::compile_source(&wf_source, ctx).map_err(BenchError::Spec)?;
            let scores = crate::examples::scores_of(&dag, &file)?.to_vec();
            let requests_path = crate::examples::path_of(&dag, &file)
                .expect("a workflow with scores names its examples");
            let mut slo = BTreeMap::new();
            for (tier, text) in &e.slo {
                let s = units::parse_duration(text)
                    .ok()
                    .filter(|s| *s > 0.0)
                    .ok_or_else(|| {
                        BenchError::Suite(format!(
                            "{}: `{}` tier `{tier}`: `{text}` is not a duration above zero (e.g. 30s, 2m)",
                            manifest.display(),
                            e.workflow.display()
                        ))
                    })?;
                slo.insert(tier.clone(), s);
            }
            let requests = crate::examples::read(&requests_path, &dag, &scores)?;
            entries.push(Entry {
                file,
                source: wf_source,
                dag,
                requests,
                scores,
                slo,
            });
        }
        Ok(Self {
            name: raw.name,
            dir,
            entries,
        })
    }

    /// Checks every workflow has each tier; the error lists the tiers they share.
    pub fn check_tiers(&self, tiers: &[String]) -> Result<(), BenchError> {
        for t in tiers {
            if let Some(e) = self.entries.iter().find(|e| !e.slo.contains_key(t)) {
                let known: Vec<&str> = e.slo.keys().map(String::as_str).collect();
                return Err(BenchError::Suite(format!(
                    "SLO tier `{t}`: workflow `{}` has no such tier; it has {}",
                    e.name(),
                    known.join(", ")
                )));
            }
        }
        Ok(())
    }
}
