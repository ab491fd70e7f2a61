//! ARCHITECTURE.md is the architecture, so this test holds the code to it: every workspace
//! crate is in its arrows table, every dependency between workspace crates is one the table
//! allows, no crate links (even indirectly) what the table forbids it, no module of a crate
//! reaches back to a module that reaches it, only the settings module reads `JOULE_*`
//! variables (and the pure crates read no environment at all), and no module of the binary
//! is over 300 lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::support::repo;

/// One row of the arrows table.
struct Rule {
    allowed: BTreeSet<String>,
    forbidden: BTreeSet<String>,
}

fn split(cell: &str) -> BTreeSet<String> {
    cell.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// The table between `<!-- arrows` and `<!-- /arrows -->` in `text`.
fn rules(text: &str) -> BTreeMap<String, Rule> {
    let start = text
        .find("<!-- arrows")
        .expect("ARCHITECTURE.md has an arrows table");
    let end = text[start..]
        .find("<!-- /arrows -->")
        .expect("the arrows table ends")
        + start;
    text[start..end]
        .lines()
        .filter(|l| l.starts_with("| joule"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            assert_eq!(cells.len(), 3, "a row of crate, allowed, forbidden: {l}");
            (
                cells[0].to_string(),
                Rule {
                    allowed: split(cells[1]),
                    forbidden: split(cells[2]),
                },
            )
        })
        .collect()
}

/// The platform this test runs on (`x86_64-unknown-linux-gnu`): dependencies are resolved for
/// it alone, so `cargo metadata` needs nothing that the build did not download.
fn host() -> String {
    let out = std::process::Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc names its host")
        .to_string()
}

/// `cargo metadata` of this workspace, resolved for this platform.
fn metadata() -> Value {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args(["--filter-platform", &host()])
        .current_dir(repo())
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

/// Each workspace crate's normal (not dev, not build) dependencies: the direct ones among
/// the workspace, and the names of everything it links transitively.
struct Graph {
    direct: BTreeMap<String, BTreeSet<String>>,
    linked: BTreeMap<String, BTreeSet<String>>,
}

fn graph(meta: &Value) -> Graph {
    let name_of: BTreeMap<&str, &str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let members: BTreeSet<&str> = meta["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    let mut normal: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for node in meta["resolve"]["nodes"].as_array().unwrap() {
        let id = node["id"].as_str().unwrap();
        let deps = node["deps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| {
                d["dep_kinds"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|k| k["kind"].is_null())
            })
            .map(|d| d["pkg"].as_str().unwrap())
            .collect();
        normal.insert(id, deps);
    }
    let mut direct = BTreeMap::new();
    let mut linked = BTreeMap::new();
    for &m in &members {
        let name = name_of[m].to_string();
        direct.insert(
            name.clone(),
            normal[m]
                .iter()
                .filter(|d| members.contains(*d))
                .map(|d| name_of[*d].to_string())
                .collect(),
        );
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&str> = normal[m].clone();
        while let Some(d) = stack.pop() {
            if seen.insert(d) {
                stack.extend(normal[d].iter().copied());
            }
        }
        linked.insert(name, seen.iter().map(|d| name_of[*d].to_string()).collect());
    }
    Graph { direct, linked }
}

/// What is wrong with `graph` under `rules`, as messages.
fn violations(rules: &BTreeMap<String, Rule>, graph: &Graph) -> Vec<String> {
    let mut out = Vec::new();
    for (name, deps) in &graph.direct {
        let Some(rule) = rules.get(name) else {
            out.push(format!(
                "crate `{name}` is missing from ARCHITECTURE.md's arrows table"
            ));
            continue;
        };
        for d in deps.difference(&rule.allowed) {
            out.push(format!(
                "`{name}` depends on `{d}`, which ARCHITECTURE.md does not allow"
            ));
        }
        for f in rule.forbidden.intersection(&graph.linked[name]) {
            out.push(format!(
                "`{name}` links `{f}`, which ARCHITECTURE.md forbids it"
            ));
        }
    }
    for name in rules.keys() {
        if !graph.direct.contains_key(name) {
            out.push(format!(
                "ARCHITECTURE.md names `{name}`, which is not a workspace crate"
            ));
        }
    }
    out
}

#[test]
fn dependencies_point_the_way_architecture_md_says() {
    let text = std::fs::read_to_string(repo().join("ARCHITECTURE.md")).unwrap();
    let rules = rules(&text);
    let graph = graph(&metadata());
    let found = violations(&rules, &graph);
    assert!(found.is_empty(), "{}", found.join("\n"));

    // The check bites: the planner gaining tokio, or the executor gaining candle, is caught.
    let mut reversed = Graph {
        direct: graph.direct.clone(),
        linked: graph.linked.clone(),
    };
    reversed
        .linked
        .get_mut("joule-planner")
        .unwrap()
        .insert("tokio".into());
    reversed
        .direct
        .get_mut("joule-executor")
        .unwrap()
        .insert("joule-models".into());
    let found = violations(&rules, &reversed);
    assert!(
        found
            .iter()
            .any(|v| v.contains("`joule-planner` links `tokio`"))
            && found
                .iter()
                .any(|v| v.contains("`joule-executor` depends on `joule-models`")),
        "{found:?}"
    );
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The source directories of the workspace's crates and the binary.
fn sources() -> Vec<(String, PathBuf)> {
    let mut out = vec![("joule".to_string(), repo().join("src"))];
    for e in std::fs::read_dir(repo().join("crates")).unwrap().flatten() {
        let src = e.path().join("src");
        if src.is_dir() {
            out.push((e.file_name().to_string_lossy().into_owned(), src));
        }
    }
    out
}

/// Module names mentioned after `prefix` (`crate::` or `super::`), braces included.
fn mentions(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        rest = &rest[i + prefix.len()..];
        if let Some(inner) = rest.strip_prefix('{') {
            let end = inner.find('}').unwrap_or(inner.len());
            for item in inner[..end].split(',') {
                let first: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                out.insert(first);
            }
        } else {
            let first: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.insert(first);
        }
    }
    out
}

/// A cycle in `edges`, if there is one.
fn cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let at = path.iter().position(|p| p == n).unwrap_or(0);
                let mut c = path[at..].to_vec();
                c.push(n.to_string());
                return Some(c);
            }
            _ => {}
        }
        state.insert(n.to_string(), 1);
        path.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, edges, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if let Some(c) = visit(n, edges, &mut state, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

/// For each directory of modules (a crate's `src`, or a module's own directory), which sibling
/// modules each one names (`crate::x` at the top, `super::x` below).
fn module_graphs(src: &Path) -> Vec<(PathBuf, BTreeMap<String, BTreeSet<String>>)> {
    let mut dirs: BTreeMap<PathBuf, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for file in rust_files(src) {
        let rel = file.strip_prefix(src).unwrap();
        let parts: Vec<String> = rel
            .with_extension("")
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        let text = std::fs::read_to_string(&file).unwrap();
        // Code only: not the tests, not comments (a doc link is no dependency).
        let text: String = text
            .split("#[cfg(test)]")
            .next()
            .unwrap_or("")
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let text = text.as_str();
        // The top level: which top-level modules this file's module names through `crate::`.
        let top = &parts[0];
        if parts.len() > 1 || !matches!(top.as_str(), "lib" | "main") {
            for m in mentions(text, "crate::") {
                if &m != top {
                    dirs.entry(src.to_path_buf())
                        .or_default()
                        .entry(top.clone())
                        .or_default()
                        .insert(m);
                }
            }
        }
        // One level down: a module file in `dir/` naming its siblings through `super::`.
        if parts.len() >= 2 && parts.last().is_some_and(|p| p != "mod") {
            let dir = src.join(parts[..parts.len() - 1].join("/"));
            let me = parts.last().unwrap().clone();
            for m in mentions(text, "super::") {
                if m != me {
                    dirs.entry(dir.clone())
                        .or_default()
                        .entry(me.clone())
                        .or_default()
                        .insert(m);
                }
            }
        }
    }
    // Keep only edges to modules that exist in that directory.
    dirs.into_iter()
        .map(|(dir, mut edges)| {
            let exists = |m: &str| dir.join(format!("{m}.rs")).exists() || dir.join(m).is_dir();
            for targets in edges.values_mut() {
                targets.retain(|m| exists(m));
            }
            (dir, edges)
        })
        .collect()
}

#[test]
fn no_module_reaches_back_to_a_module_that_reaches_it() {
    let mut cycles = Vec::new();
    for (_, src) in sources() {
        for (dir, edges) in module_graphs(&src) {
            if let Some(c) = cycle(&edges) {
                cycles.push(format!("{}: {}", dir.display(), c.join(" -> ")));
            }
        }
    }
    assert!(cycles.is_empty(), "module cycles:\n{}", cycles.join("\n"));
    // The check bites: two modules naming each other are a cycle.
    let edges = BTreeMap::from([
        ("run".to_string(), BTreeSet::from(["profile".to_string()])),
        ("profile".to_string(), BTreeSet::from(["run".to_string()])),
    ]);
    assert!(cycle(&edges).is_some());
}

#[test]
fn only_the_settings_read_joule_variables_and_the_pure_crates_read_none() {
    let settings = repo().join("crates/app/src/settings.rs");
    let mut found = Vec::new();
    for (krate, src) in sources() {
        let pure = matches!(krate.as_str(), "planner" | "call" | "executor" | "infer");
        for file in rust_files(&src) {
            if file == settings {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            for (n, line) in text.lines().enumerate() {
                let reads = line.contains("env::var") || line.contains("env::vars");
                if reads && (pure || line.contains("\"JOULE_")) {
                    found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "environment read outside the settings:\n{}",
        found.join("\n")
    );
}

#[test]
fn no_module_of_the_binary_is_over_300_lines() {
    let long: Vec<String> = rust_files(&repo().join("src"))
        .into_iter()
        .filter_map(|f| {
            let n = std::fs::read_to_string(&f).unwrap().lines().count();
            (n > 300).then(|| format!("{}: {n} lines", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "{}", long.join("\n"));
}
