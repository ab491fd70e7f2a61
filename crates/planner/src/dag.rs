//! The compiler: a checked [`Workflow`] in, a [`Dag`] out.
//!
//! Edges come from what each step's templates read (`steps.X`) and from explicit `needs`. This
//! is where cross-step mistakes are caught (a dangling reference, a cycle, a tool or pin the
//! policy forbids), each pointing at the exact place in the file, and where the shape figures
//! the planner and `joule validate --json` report (topological order, critical path, width)
//! are computed once.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};

use petgraph::graph::{DiGraph, NodeIndex};
use serde::Serialize;

use crate::diag::{ErrorCode, Pos, SourceFile, SpecError, suggest};
use crate::spec::{LOCAL_PROVIDER, StepKind, Workflow};
use crate::template::{self, Reference, SyntaxError};

/// Why one step must wait for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EdgeKind {
    /// A template reads the other step's output.
    Data,
    /// The step's `when` reads the other step's output.
    Condition,
    /// Listed in `needs` without reading anything.
    Needs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Edge {
    pub from: usize,
    pub to: usize,
    pub kind: EdgeKind,
}

/// What the compiler may check names against beyond the workflow itself. Empty until a catalog
/// is loaded; then pins to unknown models are errors.
#[derive(Debug, Clone, Default)]
pub struct CompileContext {
    /// The catalog's model ids, when a catalog is loaded.
    pub models: Option<BTreeSet<String>>,
    /// The catalog's endpoint names, when a catalog is loaded.
    pub endpoints: Option<BTreeSet<String>>,
    /// The catalog's tools: each one's arguments and whether each is required.
    pub tools: Option<std::collections::BTreeMap<String, std::collections::BTreeMap<String, bool>>>,
    /// The operator's policy, which the workflow's own cannot widen.
    pub operator: Option<crate::policy::OperatorPolicy>,
}

/// A compiled workflow: steps are nodes (node index = index in `workflow.steps`), edges point
/// from a dependency to the step that needs it.
#[derive(Debug, Clone)]
pub struct Dag {
    pub workflow: Workflow,
    pub graph: DiGraph<usize, EdgeKind>,
    /// A topological order; among steps that are ready together, file order.
    pub order: Vec<usize>,
    /// Each step's level: 1 for steps with no dependencies, else 1 + the deepest dependency.
    pub level: Vec<usize>,
    /// The longest dependency chain, as step indices from first to last.
    pub critical_path: Vec<usize>,
    /// The most steps on one level: how many can run at once in an as-soon-as-possible
    /// schedule where every step takes the same time.
    pub max_width: usize,
}

impl Dag {
    pub fn edges(&self) -> impl Iterator<Item = Edge> + '_ {
        self.graph.edge_indices().filter_map(|e| {
            let (a, b) = self.graph.edge_endpoints(e)?;
            Some(Edge {
                from: a.index(),
                to: b.index(),
                kind: self.graph[e],
            })
        })
    }

    /// The steps a step depends on directly, in file order.
    pub fn dependencies(&self, step: usize) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .graph
            .neighbors_directed(NodeIndex::new(step), petgraph::Direction::Incoming)
            .map(|n| n.index())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    fn id(&self, i: usize) -> &str {
        &self.workflow.steps[i].id
    }

    /// The compiled DAG as the JSON object `joule validate --json` prints.
    pub fn to_json(&self) -> serde_json::Value {
        let steps: Vec<_> = self
            .workflow
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut o = serde_json::json!({
                    "id": s.id,
                    "kind": s.kind.kind(),
                    "line": s.pos.line,
                    "level": self.level[i],
                    "needs": self.dependencies(i).iter().map(|&d| self.id(d)).collect::<Vec<_>>(),
                    "conditional": s.when.is_some(),
                    "for_each": s.for_each.is_some(),
                });
                match &s.kind {
                    StepKind::Llm(l) => {
                        o["task"] = l.task.as_str().into();
                        o["max_tokens"] = l.max_tokens.into();
                    }
                    StepKind::Tool(t) => o["tool"] = t.tool.name.clone().into(),
                    StepKind::Value(_) => {}
                }
                o
            })
            .collect();
        let mut edges: Vec<Edge> = self.edges().collect();
        edges.sort_by_key(|e| (e.from, e.to));
        serde_json::json!({
            "name": self.workflow.name,
            "steps": steps,
            "edges": edges.iter().map(|e| serde_json::json!({
                "from": self.id(e.from), "to": self.id(e.to), "kind": e.kind,
            })).collect::<Vec<_>>(),
            "order": self.order.iter().map(|&i| self.id(i)).collect::<Vec<_>>(),
            "critical_path": {
                "length": self.critical_path.len(),
                "steps": self.critical_path.iter().map(|&i| self.id(i)).collect::<Vec<_>>(),
            },
            "max_width": self.max_width,
        })
    }
}

/// Compiles a workflow with no catalog to check pins against.
pub fn compile(workflow: Workflow) -> Result<Dag, Vec<SpecError>> {
    compile_with(workflow, &CompileContext::default())
}

/// Compiles a workflow, checking pins against `ctx`. Every error found is returned, sorted by
/// position in the file.
pub fn compile_with(workflow: Workflow, ctx: &CompileContext) -> Result<Dag, Vec<SpecError>> {
    let mut c = Compiler {
        file: &workflow.source,
        workflow: &workflow,
        errors: Vec::new(),
        index: workflow
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.as_str(), i))
            .collect(),
        edges: HashMap::new(),
    };
    for i in 0..workflow.steps.len() {
        c.step(i);
        c.policy(i, ctx);
        if let Some(op) = &ctx.operator {
            c.operator(i, op);
        }
    }
    c.providers(ctx);
    c.outputs();
    c.judges(ctx);
    let Compiler {
        mut errors, edges, ..
    } = c;

    let n = workflow.steps.len();
    let mut graph = DiGraph::with_capacity(n, edges.len());
    for i in 0..n {
        graph.add_node(i);
    }
    let mut edge_list: Vec<((usize, usize), EdgeKind)> = edges.into_iter().collect();
    edge_list.sort_unstable();
    for ((from, to), kind) in edge_list {
        graph.add_edge(NodeIndex::new(from), NodeIndex::new(to), kind);
    }

    let order = topological_order(&graph);
    if order.len() < n {
        errors.push(cycle_error(&workflow, &graph, &order));
    }
    if !errors.is_empty() {
        errors.sort_by_key(|e| e.pos);
        return Err(errors);
    }

    let (level, critical_path, max_width) = shape(&graph, &order);
    let mut workflow = workflow;
    if let Some(op) = &ctx.operator {
        op.narrow(&mut workflow);
    }
    Ok(Dag {
        workflow,
        graph,
        order,
        level,
        critical_path,
        max_width,
    })
}

/// Kahn's algorithm with a min-heap, so that ties go to the step written first.
fn topological_order(graph: &DiGraph<usize, EdgeKind>) -> Vec<usize> {
    let n = graph.node_count();
    let mut indegree = vec![0usize; n];
    for e in graph.raw_edges() {
        indegree[e.target().index()] += 1;
    }
    let mut ready: BinaryHeap<Reverse<usize>> =
        (0..n).filter(|&i| indegree[i] == 0).map(Reverse).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for next in graph.neighbors(NodeIndex::new(i)) {
            let j = next.index();
            indegree[j] -= 1;
            if indegree[j] == 0 {
                ready.push(Reverse(j));
            }
        }
    }
    order
}

/// Levels, one longest chain, and the widest level.
fn shape(graph: &DiGraph<usize, EdgeKind>, order: &[usize]) -> (Vec<usize>, Vec<usize>, usize) {
    let n = graph.node_count();
    let mut level = vec![1usize; n];
    let mut parent: Vec<Option<usize>> = vec![None; n];
    for &i in order {
        for next in graph.neighbors(NodeIndex::new(i)) {
            let j = next.index();
            if level[i] + 1 > level[j]
                || (level[i] + 1 == level[j] && parent[j].is_some_and(|p| i < p))
            {
                level[j] = level[i] + 1;
                parent[j] = Some(i);
            }
        }
    }
    let mut path = Vec::new();
    // The deepest step written first ends the critical path.
    let mut cursor = (0..n).max_by_key(|&i| (level[i], Reverse(i)));
    while let Some(i) = cursor {
        path.push(i);
        cursor = parent[i];
    }
    path.reverse();
    let depth = level.iter().copied().max().unwrap_or(0);
    let mut width = vec![0usize; depth + 1];
    for &l in &level {
        width[l] += 1;
    }
    (level, path, width.into_iter().max().unwrap_or(0))
}

/// Names the steps on one cycle, in dependency order, pointing at the first of them.
fn cycle_error(
    workflow: &Workflow,
    graph: &DiGraph<usize, EdgeKind>,
    order: &[usize],
) -> SpecError {
    let mut done = vec![false; graph.node_count()];
    for &i in order {
        done[i] = true;
    }
    // Every step left over is on a cycle or downstream of one. Walk backwards along unfinished
    // dependencies until a step repeats: the walk from that step on is a cycle.
    let start = (0..graph.node_count()).find(|&i| !done[i]).unwrap_or(0);
    let mut seen_at: HashMap<usize, usize> = HashMap::new();
    let mut walk = vec![start];
    let mut cur = start;
    loop {
        seen_at.insert(cur, walk.len() - 1);
        let prev = graph
            .neighbors_directed(NodeIndex::new(cur), petgraph::Direction::Incoming)
            .map(|p| p.index())
            .filter(|&p| !done[p])
            .min();
        let Some(p) = prev else { break };
        if let Some(&k) = seen_at.get(&p) {
            walk = walk[k..].to_vec();
            break;
        }
        walk.push(p);
        cur = p;
    }
    // `walk` runs against the edges; reverse it to read in dependency order, then rotate so
    // the step written first leads.
    walk.reverse();
    let first = walk
        .iter()
        .enumerate()
        .min_by_key(|(_, s)| **s)
        .map_or(0, |(k, _)| k);
    walk.rotate_left(first);
    let names: Vec<&str> = walk
        .iter()
        .map(|&i| workflow.steps[i].id.as_str())
        .collect();
    let step = &workflow.steps[walk[0]];
    let message = if names.len() == 1 {
        format!("step `{}` depends on itself", names[0])
    } else {
        format!(
            "the steps form a cycle: {} -> {}",
            names.join(" -> "),
            names[0]
        )
    };
    SpecError::at(&workflow.source, step.pos.offset, step.id.len(), ErrorCode::Cycle, message).with_help(
        "a step can only read steps that finish before it; remove one of these references or `needs`",
    )
}

struct Compiler<'a> {
    file: &'a SourceFile,
    workflow: &'a Workflow,
    errors: Vec<SpecError>,
    index: HashMap<&'a str, usize>,
    edges: HashMap<(usize, usize), EdgeKind>,
}

/// Where a template sits, which decides what it may read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Site {
    /// A step's prompt, args or value; `item` is allowed when the step has `for_each`.
    Body {
        has_item: bool,
    },
    When,
    ForEach,
    Output,
}

impl Compiler<'_> {
    fn err(&mut self, offset: usize, len: usize, code: ErrorCode, message: String, help: String) {
        self.errors
            .push(SpecError::at(self.file, offset, len, code, message).with_help(help));
    }

    fn edge(&mut self, from: usize, to: usize, kind: EdgeKind) {
        let e = self.edges.entry((from, to)).or_insert(kind);
        *e = (*e).min(kind);
    }

    fn step(&mut self, i: usize) {
        let step = &self.workflow.steps[i];
        let body = Site::Body {
            has_item: step.for_each.is_some(),
        };
        match &step.kind {
            StepKind::Llm(l) => {
                self.template(Some(i), &l.prompt.source, l.prompt.pos, body, false);
                if let Some(s) = &l.system {
                    self.template(Some(i), &s.source, s.pos, body, false);
                }
            }
            StepKind::Tool(t) => {
                for v in t.args.values() {
                    for s in v.strings() {
                        self.template(Some(i), s, v.pos, body, false);
                    }
                }
            }
            StepKind::Value(v) => {
                for s in v.strings() {
                    self.template(Some(i), s, v.pos, body, false);
                }
            }
        }
        if let Some(w) = &step.when {
            self.template(Some(i), &w.source, w.pos, Site::When, true);
        }
        if let Some(f) = &step.for_each {
            self.template(Some(i), &f.source, f.pos, Site::ForEach, true);
        }
        for need in &step.needs {
            match self.index.get(need.name.as_str()).copied() {
                Some(j) if j == i => self.err(
                    need.pos.offset,
                    need.name.len(),
                    ErrorCode::Cycle,
                    format!("step `{}` needs itself", step.id),
                    "remove it from `needs`".into(),
                ),
                Some(j) => self.edge(j, i, EdgeKind::Needs),
                None => {
                    let help = self.step_suggestion(&need.name);
                    self.err(
                        need.pos.offset,
                        need.name.len(),
                        ErrorCode::UnknownReference,
                        format!(
                            "step `{}` needs `{}`, which is not a step",
                            step.id, need.name
                        ),
                        help,
                    );
                }
            }
        }
    }

    fn outputs(&mut self) {
        for o in &self.workflow.outputs {
            self.template(
                None,
                &o.template.source,
                o.template.pos,
                Site::Output,
                false,
            );
        }
    }

    fn step_suggestion(&self, name: &str) -> String {
        let names: Vec<&str> = self.workflow.steps.iter().map(|s| s.id.as_str()).collect();
        suggest(name, "step", &names)
    }

    /// Checks one template (or expression) and records the edges its references imply.
    fn template(
        &mut self,
        step: Option<usize>,
        text: &str,
        pos: Pos,
        site: Site,
        expression: bool,
    ) {
        let vars = if expression {
            template::expression_variables(text)
        } else {
            template::template_variables(text)
        };
        let vars = match vars {
            Ok(v) => v,
            Err(e) => return self.syntax(text, pos, &e),
        };
        let source = self.file.text();
        for var in &vars {
            let offset = template::locate(source, pos.offset, var).unwrap_or(pos.offset);
            let len = var.len();
            match template::classify(var) {
                Reference::Builtin => {}
                Reference::Input(name) => {
                    if !self.workflow.inputs.iter().any(|i| i.name == name) {
                        let names: Vec<&str> = self
                            .workflow
                            .inputs
                            .iter()
                            .map(|i| i.name.as_str())
                            .collect();
                        let help = match crate::diag::did_you_mean(name, names.iter().copied()) {
                            Some(c) => format!("did you mean `inputs.{c}`?"),
                            None => format!(
                                "declare it under `inputs:` (e.g. `{name}: {{ type: string }}`)"
                            ),
                        };
                        self.err(
                            offset,
                            len,
                            ErrorCode::UnknownReference,
                            format!("unknown input `{name}`"),
                            help,
                        );
                    }
                }
                Reference::Step(name, attr) => {
                    self.step_reference(step, site, name, attr, offset, len)
                }
                Reference::Item => match site {
                    Site::Body { has_item: true } => {}
                    Site::ForEach => self.err(
                        offset,
                        len,
                        ErrorCode::UnknownReference,
                        "`for_each` cannot read `item`, which it defines".into(),
                        "`for_each` should read a list from an input or an earlier step".into(),
                    ),
                    _ => self.err(
                        offset,
                        len,
                        ErrorCode::UnknownReference,
                        "`item` is only defined in a step with `for_each`".into(),
                        "add `for_each:` to this step, or read `steps.NAME.output` instead".into(),
                    ),
                },
                Reference::Whole(root) => self.err(
                    offset,
                    len,
                    ErrorCode::UnknownReference,
                    format!("`{root}` must be read by name"),
                    format!(
                        "write `{root}.NAME`{}",
                        if root == template::STEPS {
                            ".output"
                        } else {
                            ""
                        }
                    ),
                ),
                Reference::Unknown(root) => {
                    let mut known = vec![template::INPUTS, template::STEPS];
                    if matches!(site, Site::Body { has_item: true }) {
                        known.push(template::ITEM);
                    }
                    let help = match crate::diag::did_you_mean(root, known.iter().copied()) {
                        Some(c) => format!("did you mean `{c}`?"),
                        None => "templates read `inputs.NAME`, `steps.NAME.output`, and `item` in a `for_each` step; set a local with `{% set %}`".to_string(),
                    };
                    self.err(
                        offset,
                        root.len(),
                        ErrorCode::UnknownReference,
                        format!("unknown variable `{root}`"),
                        help,
                    );
                }
            }
        }
    }

    fn step_reference(
        &mut self,
        step: Option<usize>,
        site: Site,
        name: &str,
        attr: Option<&str>,
        offset: usize,
        len: usize,
    ) {
        let Some(&j) = self.index.get(name) else {
            let help =
                self.step_suggestion(name)
                    .replacen("did you mean `", "did you mean `steps.", 1);
            return self.err(
                offset,
                len,
                ErrorCode::UnknownReference,
                format!("unknown step `{name}`"),
                help,
            );
        };
        if let Some(a) = attr
            && a != template::OUTPUT
        {
            self.err(
                offset,
                len,
                ErrorCode::UnknownReference,
                format!("steps have no attribute `{a}`"),
                format!("write `steps.{name}.output`"),
            );
        }
        if let Some(i) = step {
            if i == j {
                return self.err(
                    offset,
                    len,
                    ErrorCode::Cycle,
                    format!("step `{name}` reads its own output"),
                    "a step can only read steps that finish before it".into(),
                );
            }
            let kind = if site == Site::When {
                EdgeKind::Condition
            } else {
                EdgeKind::Data
            };
            self.edge(j, i, kind);
        }
    }

    /// Points a template syntax error at the offending line of the template inside the file.
    fn syntax(&mut self, text: &str, pos: Pos, e: &SyntaxError) {
        let mut offset = pos.offset;
        if let Some(range) = &e.range {
            let start = range.start.min(text.len());
            let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
            let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
            let line = text[line_start..line_end].trim();
            if let Some(found) = (!line.is_empty())
                .then(|| {
                    self.file
                        .text()
                        .get(pos.offset..)
                        .and_then(|s| s.find(line))
                })
                .flatten()
            {
                let indent = text[line_start..line_end].len()
                    - text[line_start..line_end].trim_start().len();
                offset = pos.offset + found + start.saturating_sub(line_start + indent);
            }
        }
        self.err(
            offset,
            1,
            ErrorCode::Template,
            format!("template syntax error: {}", e.message),
            "templates use minijinja (Jinja2) syntax: `{{ expression }}`, `{% for x in xs %}...{% endfor %}`".into(),
        );
    }

    /// Providers and models the policy names must exist, or the policy silently allows less
    /// than its author thinks.
    fn providers(&mut self, ctx: &CompileContext) {
        let source = self.file.text();
        let policy_at = source.find("policy:").unwrap_or(0);
        if let Some(endpoints) = &ctx.endpoints {
            for p in &self.workflow.policy.providers {
                if p != LOCAL_PROVIDER && !endpoints.contains(p) {
                    let offset = template::locate(source, policy_at, p).unwrap_or(policy_at);
                    let mut known: Vec<&str> = vec![LOCAL_PROVIDER];
                    known.extend(endpoints.iter().map(String::as_str));
                    self.err(
                        offset,
                        p.len(),
                        ErrorCode::Policy,
                        format!("provider `{p}` is neither `local` nor a catalog endpoint"),
                        suggest(p, "provider", &known),
                    );
                }
            }
        }
        if let (Some(models), Some(allowed)) = (&ctx.models, &self.workflow.policy.models) {
            for m in allowed {
                if !models.contains(m) {
                    let offset = template::locate(source, policy_at, m).unwrap_or(policy_at);
                    let names: Vec<&str> = models.iter().map(String::as_str).collect();
                    self.err(
                        offset,
                        m.len(),
                        ErrorCode::Policy,
                        format!("`policy.models` names `{m}`, which is not in the catalog"),
                        suggest(m, "model", &names),
                    );
                }
            }
        }
    }

    /// A tool the catalog does not have, or arguments it does not take or misses.
    fn tool_arguments(&mut self, t: &crate::spec::ToolStep, ctx: &CompileContext) {
        let Some(tools) = &ctx.tools else {
            return;
        };
        let Some(args) = tools.get(&t.tool.name) else {
            let help =
                match crate::diag::did_you_mean(&t.tool.name, tools.keys().map(String::as_str)) {
                    Some(c) => format!("did you mean `{c}`?"),
                    None => "declare it under `tools:` in the catalog".into(),
                };
            self.err(
                t.tool.pos.offset,
                t.tool.name.len(),
                ErrorCode::Policy,
                format!("tool `{}` is not in the catalog", t.tool.name),
                help,
            );
            return;
        };
        let known: Vec<&str> = args.keys().map(String::as_str).collect();
        let mut suggested = Vec::new();
        for (name, value) in &t.args {
            if !args.contains_key(name) {
                let help = match crate::diag::did_you_mean(name, known.iter().copied()) {
                    Some(c) => {
                        suggested.push(c.to_string());
                        format!("did you mean `{c}`?")
                    }
                    None if known.is_empty() => format!("`{}` takes no arguments", t.tool.name),
                    None => format!("`{}` takes: {}", t.tool.name, known.join(", ")),
                };
                // The value's position is where its mapping starts; point at the key itself.
                let at =
                    crate::template::locate(self.workflow.source.text(), t.tool.pos.offset, name)
                        .unwrap_or(value.pos.offset);
                self.err(
                    at,
                    name.len(),
                    ErrorCode::InvalidValue,
                    format!("tool `{}` has no argument `{name}`", t.tool.name),
                    help,
                );
            }
        }
        for (name, required) in args {
            // A misspelt argument already says what it should be called.
            if *required && !t.args.contains_key(name) && !suggested.contains(name) {
                self.err(
                    t.tool.pos.offset,
                    t.tool.name.len(),
                    ErrorCode::InvalidValue,
                    format!("tool `{}` needs the argument `{name}`", t.tool.name),
                    format!("add `args: {{ {name}: ... }}` to the step"),
                );
            }
        }
    }

    /// A tool an agent may call: in the catalog and allowed by the workflow's policy, like a
    /// tool step's (its arguments are the model's to choose, checked when it calls).
    fn agent_tool(&mut self, t: &crate::spec::Name, ctx: &CompileContext) {
        let policy = &self.workflow.policy;
        if let Some(tools) = &ctx.tools
            && !tools.contains_key(&t.name)
        {
            let help = match crate::diag::did_you_mean(&t.name, tools.keys().map(String::as_str)) {
                Some(c) => format!("did you mean `{c}`?"),
                None => "declare it under `tools:` in the catalog".into(),
            };
            self.err(
                t.pos.offset,
                t.name.len(),
                ErrorCode::Policy,
                format!("tool `{}` is not in the catalog", t.name),
                help,
            );
        } else if !policy.tools.contains(&t.name) {
            self.err(
                t.pos.offset,
                t.name.len(),
                ErrorCode::Policy,
                format!(
                    "agent tool `{}` is not allowed by the workflow's policy",
                    t.name
                ),
                format!("add `{}` to `policy.tools`", t.name),
            );
        }
    }

    /// A judge model the catalog does not have.
    fn judges(&mut self, ctx: &CompileContext) {
        let (Some(models), Some(examples)) = (&ctx.models, &self.workflow.examples) else {
            return;
        };
        for score in &examples.scores {
            if let crate::spec::Metric::Judge { model, .. } = &score.metric
                && !models.contains(&model.name)
            {
                let names: Vec<&str> = models.iter().map(String::as_str).collect();
                self.err(
                    model.pos.offset,
                    1,
                    ErrorCode::Policy,
                    format!("the judge model `{}` is not in the catalog", model.name),
                    crate::diag::suggest(&model.name, "model", &names),
                );
            }
        }
    }

    /// A tool or pin the policy or the catalog does not allow.
    fn policy(&mut self, i: usize, ctx: &CompileContext) {
        let step = &self.workflow.steps[i];
        let policy = &self.workflow.policy;
        match &step.kind {
            StepKind::Tool(t) => {
                if !policy.tools.contains(&t.tool.name) {
                    let help = if policy.tools.is_empty() {
                        format!("add `policy: {{ tools: [{}] }}` to allow it", t.tool.name)
                    } else {
                        format!(
                            "add `{}` to `policy.tools`, or use one of: {}",
                            t.tool.name,
                            policy.tools.join(", ")
                        )
                    };
                    self.err(
                        t.tool.pos.offset,
                        t.tool.name.len(),
                        ErrorCode::Policy,
                        format!(
                            "tool `{}` is not allowed by the workflow's policy",
                            t.tool.name
                        ),
                        help,
                    );
                }
                self.tool_arguments(t, ctx);
            }
            StepKind::Llm(l) => {
                for t in l.agent.iter().flat_map(|a| &a.tools) {
                    self.agent_tool(t, ctx);
                }
                if let Some(m) = &l.model {
                    if let Some(allowed) = &policy.models
                        && !allowed.contains(&m.name)
                    {
                        self.err(
                            m.pos.offset,
                            m.name.len(),
                            ErrorCode::Policy,
                            format!("model `{}` is not in `policy.models`", m.name),
                            format!(
                                "add it to `policy.models`, or pin one of: {}",
                                allowed.join(", ")
                            ),
                        );
                    }
                    if let Some(models) = &ctx.models
                        && !models.contains(&m.name)
                    {
                        let names: Vec<&str> = models.iter().map(String::as_str).collect();
                        let help = match crate::diag::did_you_mean(&m.name, names.iter().copied()) {
                            Some(c) => format!("did you mean `{c}`?"),
                            None => "see `joule models list` for the catalog's models".into(),
                        };
                        self.err(
                            m.pos.offset,
                            m.name.len(),
                            ErrorCode::Policy,
                            format!("model `{}` is not in the catalog", m.name),
                            help,
                        );
                    }
                }
                if let Some(d) = &l.device {
                    let local = is_local_device(&d.name);
                    let provider = provider_of(&d.name);
                    if !policy.providers.iter().any(|p| p == provider) {
                        self.err(
                            d.pos.offset,
                            d.name.len(),
                            ErrorCode::Policy,
                            if local {
                                format!(
                                    "device `{}` is local, but the policy does not allow `local`",
                                    d.name
                                )
                            } else {
                                format!("endpoint `{}` is not in `policy.providers`", d.name)
                            },
                            format!(
                                "add `{provider}` to `policy.providers`, or pin an allowed device"
                            ),
                        );
                    }
                }
            }
            StepKind::Value(_) => {}
        }
    }
}

impl Compiler<'_> {
    /// A tool step or pin the operator's policy forbids, whatever the workflow allows.
    fn operator(&mut self, i: usize, op: &crate::policy::OperatorPolicy) {
        let step = &self.workflow.steps[i];
        let help = format!(
            "the operator policy ({}) decides this; a workflow cannot widen it",
            op.origin
        );
        match &step.kind {
            StepKind::Tool(t) if !op.allows_tool(&t.tool.name) => {
                self.err(
                    t.tool.pos.offset,
                    t.tool.name.len(),
                    ErrorCode::Policy,
                    format!("tool `{}` is forbidden by the operator policy", t.tool.name),
                    help,
                );
            }
            StepKind::Llm(l) => {
                if let Some(m) = l.model.as_ref().filter(|m| !op.allows_model(&m.name)) {
                    self.err(
                        m.pos.offset,
                        m.name.len(),
                        ErrorCode::Policy,
                        format!("model `{}` is forbidden by the operator policy", m.name),
                        help.clone(),
                    );
                }
                if let Some(d) = &l.device {
                    let local = is_local_device(&d.name);
                    let provider = provider_of(&d.name);
                    if !op.allows_provider(provider) {
                        self.err(
                            d.pos.offset,
                            d.name.len(),
                            ErrorCode::Policy,
                            if local {
                                format!(
                                    "local device `{}` is forbidden by the operator policy",
                                    d.name
                                )
                            } else {
                                format!("endpoint `{}` is forbidden by the operator policy", d.name)
                            },
                            help,
                        );
                    }
                }
            }
            _ => {}
        }
    }
}

/// The policy provider a device belongs to: `local` for this machine's devices, else the
/// endpoint itself.
pub fn provider_of(device: &str) -> &str {
    if is_local_device(device) {
        LOCAL_PROVIDER
    } else {
        device
    }
}

/// `cpu` and `cuda:N` run on this machine; any other device name is an endpoint.
pub fn is_local_device(name: &str) -> bool {
    name == "cpu"
        || name
            .strip_prefix("cuda:")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}
