//! Property tests of the compiler on random DAGs written as YAML: the edges it finds are
//! exactly the references written, its order is topological, its critical path and width
//! agree with a brute-force computation, and a back edge is always reported as a cycle that
//! really is one.

use std::collections::{BTreeSet, HashMap};

use joule_planner::dag::EdgeKind;
use joule_planner::{CompileContext, ErrorCode, SourceFile, compile_source};
use proptest::prelude::*;

/// A random DAG: `deps[i]` are the steps step i depends on (all with smaller index), how each
/// dependency is written (template reference, `when`, or `needs`), and a shuffled file order.
#[derive(Debug, Clone)]
struct Case {
    deps: Vec<Vec<(usize, u8)>>,
    file_order: Vec<usize>,
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..24)
        .prop_flat_map(|n| {
            let deps = (0..n)
                .map(|i| {
                    if i == 0 {
                        Just(Vec::new()).boxed()
                    } else {
                        proptest::collection::btree_map(0..i, 0u8..3, 0..=3.min(i))
                            .prop_map(|m| m.into_iter().collect::<Vec<_>>())
                            .boxed()
                    }
                })
                .collect::<Vec<_>>();
            (deps, Just((0..n).collect::<Vec<_>>()).prop_shuffle())
        })
        .prop_map(|(deps, file_order)| Case { deps, file_order })
}

fn yaml(case: &Case, back_edge: Option<(usize, usize)>) -> String {
    let mut out = String::from("name: random\npolicy: { tools: [grep] }\nsteps:\n");
    for &i in &case.file_order {
        let mut refs = String::new();
        let mut when = Vec::new();
        let mut needs = Vec::new();
        let mut all: Vec<(usize, u8)> = case.deps[i].clone();
        if let Some((from, to)) = back_edge
            && to == i
        {
            all.push((from, 0));
        }
        for (d, how) in all {
            match how {
                0 => refs.push_str(&format!(" {{{{ steps.t{d}.output }}}}")),
                1 => when.push(format!("steps.t{d}.output")),
                _ => needs.push(format!("t{d}")),
            }
        }
        out.push_str(&format!("  t{i}:\n"));
        match i % 3 {
            0 => out.push_str(&format!("    prompt: \"p{refs}\"\n")),
            1 => out.push_str(&format!(
                "    tool: grep\n    args: {{ pattern: \"x{refs}\" }}\n"
            )),
            _ => out.push_str(&format!("    value: \"v{refs}\"\n")),
        }
        if !when.is_empty() {
            out.push_str(&format!("    when: \"{{{{ {} }}}}\"\n", when.join(" and ")));
        }
        if !needs.is_empty() {
            out.push_str(&format!("    needs: [{}]\n", needs.join(", ")));
        }
    }
    out
}

/// Longest chain (in steps) and widest level, by brute force over the dependency lists.
fn brute_shape(deps: &[Vec<(usize, u8)>]) -> (usize, usize) {
    let mut level = vec![1usize; deps.len()];
    for i in 0..deps.len() {
        for &(d, _) in &deps[i] {
            level[i] = level[i].max(level[d] + 1);
        }
    }
    let depth = level.iter().copied().max().unwrap_or(0);
    let width = (1..=depth)
        .map(|l| level.iter().filter(|&&x| x == l).count())
        .max()
        .unwrap_or(0);
    (depth, width)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn edges_order_and_shape_match(case in case()) {
        let text = yaml(&case, None);
        let dag = compile_source(&SourceFile::new("random.yaml", text.clone()), &CompileContext::default())
            .unwrap_or_else(|e| panic!("{text}\n{e:?}"));
        // File position of each logical step.
        let pos: HashMap<String, usize> = dag.workflow.steps.iter().enumerate().map(|(k, s)| (s.id.clone(), k)).collect();
        let logical = |k: usize| dag.workflow.steps[k].id[1..].parse::<usize>().unwrap();

        let expected: BTreeSet<(usize, usize, EdgeKind)> = case.deps.iter().enumerate()
            .flat_map(|(i, ds)| ds.iter().map(move |&(d, how)| (d, i, match how { 0 => EdgeKind::Data, 1 => EdgeKind::Condition, _ => EdgeKind::Needs })))
            .collect();
        let found: BTreeSet<(usize, usize, EdgeKind)> = dag.edges().map(|e| (logical(e.from), logical(e.to), e.kind)).collect();
        prop_assert_eq!(found, expected);

        // The order is a permutation in which every dependency comes first.
        prop_assert_eq!(dag.order.len(), case.deps.len());
        let rank: HashMap<usize, usize> = dag.order.iter().enumerate().map(|(r, &k)| (logical(k), r)).collect();
        for (i, ds) in case.deps.iter().enumerate() {
            for &(d, _) in ds {
                prop_assert!(rank[&d] < rank[&i], "t{} must come before t{}", d, i);
            }
        }

        let (depth, width) = brute_shape(&case.deps);
        prop_assert_eq!(dag.critical_path.len(), depth);
        prop_assert_eq!(dag.max_width, width);
        // The critical path is a real chain of dependencies.
        for w in dag.critical_path.windows(2) {
            let (a, b) = (logical(w[0]), logical(w[1]));
            prop_assert!(case.deps[b].iter().any(|&(d, _)| d == a));
        }
        let _ = pos;
    }

    #[test]
    fn back_edges_are_reported_as_real_cycles(case in case(), pick in any::<prop::sample::Index>()) {
        // Pick a dependency chain end to start: add an edge from a descendant back to an ancestor.
        let n = case.deps.len();
        let edges: Vec<(usize, usize)> = case.deps.iter().enumerate().flat_map(|(i, ds)| ds.iter().map(move |&(d, _)| (d, i))).collect();
        prop_assume!(!edges.is_empty());
        let (ancestor, descendant) = edges[pick.index(edges.len())];
        let text = yaml(&case, Some((descendant, ancestor)));
        let errors = compile_source(&SourceFile::new("cyclic.yaml", text.clone()), &CompileContext::default())
            .expect_err("a back edge makes a cycle");
        let cycle = errors.iter().find(|e| e.code == ErrorCode::Cycle).unwrap_or_else(|| panic!("{text}\n{errors:?}"));
        // "the steps form a cycle: tA -> tB -> ... -> tA": each named step must depend on the previous.
        let names: Vec<usize> = cycle.message.split(": ").nth(1).unwrap()
            .split(" -> ").map(|s| s.trim_matches('`')[1..].parse().unwrap()).collect();
        prop_assert!(names.len() >= 3 && names.first() == names.last());
        let mut deps = case.deps.clone();
        deps[ancestor].push((descendant, 0));
        for w in names.windows(2) {
            prop_assert!(deps[w[1]].iter().any(|&(d, _)| d == w[0]), "t{} does not depend on t{}", w[1], w[0]);
        }
        prop_assert!(n > 0);
    }
}
