//! Drawings of a compiled DAG for people: Graphviz DOT and Mermaid.
//!
//! Both show the same thing: one node per step with its kind (and task or tool), and one edge
//! per dependency, dashed when it only gates the step (`when`) and dotted for a bare `needs`.

use std::fmt::Write;

use crate::dag::{Dag, EdgeKind};
use crate::spec::{Step, StepKind};

fn label(step: &Step) -> String {
    let mut kind = match &step.kind {
        StepKind::Llm(l) => format!("llm: {}", l.task.as_str()),
        StepKind::Tool(t) => format!("tool: {}", t.tool.name),
        StepKind::Value(_) => "value".to_string(),
    };
    if step.when.is_some() {
        kind.push_str(", when");
    }
    if step.for_each.is_some() {
        kind.push_str(", for each");
    }
    format!("{}\n({kind})", step.id)
}

/// Graphviz DOT, for `dot -Tsvg`.
pub fn dot(dag: &Dag) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph {} {{", quote_dot(&dag.workflow.name));
    out.push_str("  rankdir=TB;\n  node [fontname=\"Helvetica\"];\n");
    for (i, step) in dag.workflow.steps.iter().enumerate() {
        let shape = match step.kind {
            StepKind::Llm(_) => "box, style=rounded",
            StepKind::Tool(_) => "component",
            StepKind::Value(_) => "note",
        };
        let _ = writeln!(
            out,
            "  s{i} [label={}, shape={shape}];",
            quote_dot(&label(step))
        );
    }
    let mut edges: Vec<_> = dag.edges().collect();
    edges.sort_by_key(|e| (e.from, e.to));
    for e in edges {
        let style = match e.kind {
            EdgeKind::Data => "",
            EdgeKind::Condition => " [style=dashed, label=\"when\"]",
            EdgeKind::Needs => " [style=dotted]",
        };
        let _ = writeln!(out, "  s{} -> s{}{style};", e.from, e.to);
    }
    out.push_str("}\n");
    out
}

/// Mermaid flowchart, which GitHub and many wikis render inline.
pub fn mermaid(dag: &Dag) -> String {
    let mut out = String::from("flowchart TD\n");
    for (i, step) in dag.workflow.steps.iter().enumerate() {
        let text = label(step).replace('\n', "<br/>").replace('"', "#quot;");
        let (open, close) = match step.kind {
            StepKind::Llm(_) => ("([", "])"),
            StepKind::Tool(_) => ("[[", "]]"),
            StepKind::Value(_) => ("[", "]"),
        };
        let _ = writeln!(out, "  s{i}{open}\"{text}\"{close}");
    }
    let mut edges: Vec<_> = dag.edges().collect();
    edges.sort_by_key(|e| (e.from, e.to));
    for e in edges {
        let arrow = match e.kind {
            EdgeKind::Data => "-->",
            EdgeKind::Condition => "-. when .->",
            EdgeKind::Needs => "-.->",
        };
        let _ = writeln!(out, "  s{} {arrow} s{}", e.from, e.to);
    }
    out
}

fn quote_dot(s: &str) -> String {
    let escaped = s
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    format!("\"{escaped}\"")
}
