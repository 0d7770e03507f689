//! `cargo xtask lint-layers`: imports point one way, and no module imports
//! another that imports it back.
//!
//! Each top-level folder of `closetrace-core/src` and `closetrace/src` is a
//! layer. A file's imports are every `crate::X`, `super::`-relative and
//! `closetrace_core::X` path it names (grouped `crate::{a, b}` included);
//! an import of another layer must be one the table allows.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Layer -> the layers it may import (besides itself).
pub const ALLOWED: &[(&str, &[&str])] = &[
    ("model", &[]),
    ("host", &["model"]),
    ("track", &["model"]),
    ("kernel", &["model", "host"]),
    ("output", &["model", "track"]),
    ("app", &["model", "host", "track", "kernel", "output"]),
];

/// One source file: its crate, its module path, and what it imports.
pub struct Source {
    pub krate: &'static str,
    pub module: Vec<String>,
    pub text: String,
}

/// The module path of `rel` (a path under src/): `a/b.rs` and `a/b/mod.rs`
/// are both `a::b`.
pub fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// Strip comments, so a path in a doc comment is not an import.
fn code_only(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path this file names, resolved to (crate, module path), where the
/// crate is "self" for its own crate and "core" for closetrace_core.
pub fn imports(src: &Source) -> Vec<(&'static str, Vec<String>)> {
    let code = code_only(&src.text);
    let mut out = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        // Not `closetrace_core::` (no match: different text) nor a longer
        // identifier ending in `crate`.
        if code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue;
        }
        for p in paths_after(&code[i + "crate::".len()..]) {
            out.push(("self", p));
        }
    }
    for (i, _) in code.match_indices("closetrace_core::") {
        for p in paths_after(&code[i + "closetrace_core::".len()..]) {
            out.push(("core", p));
        }
    }
    for (i, _) in code.match_indices("super::") {
        if code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let mut rest = &code[i..];
        let mut base = src.module.clone();
        // A file's own `mod.rs`-less module: `super` of `a::b` is `a`.
        while let Some(r) = rest.strip_prefix("super::") {
            base.pop();
            rest = r;
        }
        for p in paths_after(rest) {
            let mut full = base.clone();
            full.extend(p);
            out.push(("self", full));
        }
    }
    out
}

/// The module paths at the start of `s`: `a::b::C` gives `[a, b, C]`, and
/// `{a::b, c}` gives each of its members.
fn paths_after(s: &str) -> Vec<Vec<String>> {
    if let Some(inner) = s.strip_prefix('{') {
        let mut depth = 1;
        let mut end = inner.len();
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        let mut depth = 0;
        let mut start = 0;
        let body = &inner[..end];
        for (i, c) in body.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    out.extend(paths_after(body[start..i].trim()));
                    start = i + 1;
                }
                _ => {}
            }
        }
        out.extend(paths_after(body[start..].trim()));
        return out;
    }
    // Identifiers joined by `::`; the caller keeps only the prefix that
    // names a known module, so trailing item names do no harm.
    let mut path = Vec::new();
    let mut rest = s;
    loop {
        let id: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if id.is_empty() {
            break;
        }
        rest = &rest[id.len()..];
        path.push(id);
        match rest.strip_prefix("::") {
            Some(r) if !r.starts_with('{') => rest = r,
            Some(r) => {
                // `a::{b, c}`: each member under `a`.
                return paths_after(r)
                    .into_iter()
                    .map(|tail| path.iter().cloned().chain(tail).collect())
                    .collect();
            }
            None => break,
        }
    }
    if path.is_empty() {
        Vec::new()
    } else {
        vec![path]
    }
}

/// The longest prefix of `path` that is a known module.
fn known_prefix(path: &[String], modules: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| modules.contains(p))
}

fn layer_of(module: &[String]) -> Option<&str> {
    let first = module.first()?.as_str();
    ALLOWED.iter().any(|(l, _)| *l == first).then_some(first)
}

fn allowed(from: &str, to: &str) -> bool {
    from == to || ALLOWED.iter().any(|(l, ok)| *l == from && ok.contains(&to))
}

/// Every wrong-way import and every module cycle, as readable lines.
pub fn check(sources: &[Source]) -> Vec<String> {
    let mut problems = Vec::new();
    let modules = |krate: &str| -> BTreeSet<Vec<String>> {
        sources
            .iter()
            .filter(|s| s.krate == krate)
            .map(|s| s.module.clone())
            .collect()
    };
    let (core_modules, bin_modules) = (modules("core"), modules("closetrace"));
    // Module graph per crate, for cycles; layer checks across both.
    let mut edges: BTreeMap<(&str, Vec<String>), BTreeSet<Vec<String>>> = BTreeMap::new();
    for src in sources {
        let Some(from) = layer_of(&src.module) else {
            continue;
        };
        for (which, path) in imports(src) {
            let (target_crate, known) = match (src.krate, which) {
                (k, "self") => (
                    k,
                    if k == "core" {
                        &core_modules
                    } else {
                        &bin_modules
                    },
                ),
                (_, _) => ("core", &core_modules),
            };
            let Some(target) = known_prefix(&path, known) else {
                continue;
            };
            let Some(to) = layer_of(&target) else {
                continue;
            };
            if !allowed(from, to) {
                problems.push(format!(
                    "{}: {} imports {}::{} ({from} may not import {to})",
                    src.krate,
                    src.module.join("::"),
                    target_crate,
                    target.join("::"),
                ));
            }
            if target_crate == src.krate && target != src.module {
                edges
                    .entry((src.krate, src.module.clone()))
                    .or_default()
                    .insert(target);
            }
        }
    }
    problems.extend(cycles(&edges));
    problems
}

/// Modules that import themselves back, directly or through others.
fn cycles(edges: &BTreeMap<(&str, Vec<String>), BTreeSet<Vec<String>>>) -> Vec<String> {
    let mut found: BTreeSet<Vec<Vec<String>>> = BTreeSet::new();
    let mut lines = Vec::new();
    for (krate, start) in edges.keys() {
        // Depth-first from `start`; a path back to it is a cycle.
        let mut stack = vec![vec![start.clone()]];
        let mut seen = BTreeSet::new();
        while let Some(path) = stack.pop() {
            let m = path.last().expect("never empty");
            for n in edges.get(&(*krate, m.clone())).into_iter().flatten() {
                // A parent module naming its children is no cycle.
                if n.starts_with(m) || m.starts_with(n) {
                    continue;
                }
                if n == start {
                    let mut key = path.clone();
                    key.sort();
                    if found.insert(key) {
                        let names: Vec<String> =
                            path.iter().chain([start]).map(|p| p.join("::")).collect();
                        lines.push(format!("{krate}: import cycle: {}", names.join(" -> ")));
                    }
                } else if seen.insert(n.clone()) {
                    let mut longer = path.clone();
                    longer.push(n.clone());
                    stack.push(longer);
                }
            }
        }
    }
    lines
}

/// Every .rs file of both crates' src/ (binaries under src/bin excepted:
/// each is its own crate root).
pub fn read_sources(root: &Path) -> std::io::Result<Vec<Source>> {
    let mut out = Vec::new();
    for (krate, dir) in [
        ("core", "closetrace-core/src"),
        ("closetrace", "closetrace/src"),
    ] {
        let base = root.join(dir);
        let mut pending = vec![base.clone()];
        while let Some(d) = pending.pop() {
            for entry in std::fs::read_dir(&d)? {
                let path = entry?.path();
                if path.is_dir() {
                    if path.file_name().is_some_and(|n| n != "bin") {
                        pending.push(path);
                    }
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let rel = path.strip_prefix(&base).expect("under base");
                    out.push(Source {
                        krate,
                        module: module_of(rel),
                        text: std::fs::read_to_string(&path)?,
                    });
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(krate: &'static str, module: &str, text: &str) -> Source {
        Source {
            krate,
            module: module.split("::").map(String::from).collect(),
            text: text.into(),
        }
    }

    #[test]
    fn finds_grouped_relative_and_cross_crate_imports() {
        let s = src(
            "core",
            "output::sink",
            "use crate::{model::Task, track::leaks::{Due, X}};\nuse super::records::Close;\n// crate::host in a comment\n",
        );
        let got: Vec<String> = imports(&s).iter().map(|(_, p)| p.join("::")).collect();
        assert!(got.contains(&"model::Task".to_string()), "{got:?}");
        assert!(got.iter().any(|p| p.starts_with("track::leaks")), "{got:?}");
        assert!(
            got.contains(&"output::records::Close".to_string()),
            "{got:?}"
        );
        assert!(!got.iter().any(|p| p.starts_with("host")), "{got:?}");
    }

    #[test]
    fn a_wrong_way_import_and_a_cycle_fail() {
        let good = [
            src("core", "model", ""),
            src("core", "host::procs", "use crate::model::Task;"),
            src("core", "track::leaks", "use crate::model::Task;"),
        ];
        assert_eq!(check(&good), Vec::<String>::new());
        let wrong = [
            src("core", "model", ""),
            src("core", "host::procs", ""),
            src(
                "core",
                "track::leaks",
                "let n = crate::host::procs::tick_ns();",
            ),
        ];
        let p = check(&wrong);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("track may not import host"), "{p:?}");
        let cycle = [
            src("core", "output::sink", "use crate::output::summary::S;"),
            src(
                "core",
                "output::summary",
                "use crate::output::sink::printable;",
            ),
        ];
        let p = check(&cycle);
        assert!(
            p.iter().any(|l| l.contains("import cycle: output::sink")),
            "{p:?}"
        );
        let kernel_to_app = [
            src("closetrace", "kernel::ring", "use crate::app::run::X;"),
            src("closetrace", "app::run", ""),
        ];
        assert!(check(&kernel_to_app)[0].contains("kernel may not import app"));
    }

    #[test]
    fn this_workspace_follows_the_rule() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let problems = check(&read_sources(&root).expect("sources"));
        assert_eq!(problems, Vec::<String>::new());
    }
}
