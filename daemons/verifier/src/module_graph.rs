//! Checks of the verifier's sources as a whole. Its modules must form no import cycle, and a
//! module may use those in its own row of the map of `lib.rs` and below, never one above. And every finding it
//! makes names its rule from `kl_core::verdict::rule`, where scripts find every rule id.
//!
//! For the first, this reads every file under `src/`, drops comments,
//! and takes each `crate::` path as an edge to the module it names (an item `lib.rs`
//! re-exports, such as `crate::Error`, counts as its own module; any other item of `lib.rs`
//! counts as the crate root, which uses every module).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// This file: its own text quotes paths that are not edges, and only tests use it.
const SELF: &str = "module_graph";
const ROOT: &str = "lib";

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The text without `//` comments (doc comments included: their links are not imports).
fn code(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first segment of each path in `tree`: `a`, `a::b`, `{a, b::{c, d}}`, `a as b`.
fn first_segments(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    if let Some(inner) = tree.strip_prefix('{') {
        let inner = inner.strip_suffix('}').unwrap_or(inner);
        let mut out = Vec::new();
        let (mut depth, mut start) = (0usize, 0usize);
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth = depth.saturating_sub(1),
                ',' if depth == 0 => {
                    out.extend(first_segments(&inner[start..i]));
                    start = i + 1;
                }
                _ => {}
            }
        }
        out.extend(first_segments(&inner[start..]));
        return out;
    }
    let name: String = tree.bytes().take_while(|b| is_ident(*b)).map(char::from).collect();
    if name.is_empty() { Vec::new() } else { vec![name] }
}

/// The path trees after each `<prefix>::` in `code` (`crate::a::b`, `crate::{a, b}`).
fn trees_after<'a>(code: &'a str, prefix: &str) -> Vec<&'a str> {
    let needle = format!("{prefix}::");
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(found) = code[from..].find(&needle) {
        let at = from + found;
        from = at + needle.len();
        if at > 0 && (is_ident(bytes[at - 1]) || bytes[at - 1] == b'$') {
            continue;
        }
        let rest = &code[from..];
        let end = if rest.starts_with('{') {
            let mut depth = 0usize;
            rest.char_indices()
                .find(|(_, c)| {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map_or(rest.len(), |(i, _)| i + 1)
        } else {
            rest.bytes().take_while(|b| is_ident(*b)).count()
        };
        out.push(&rest[..end]);
    }
    out
}

/// The `.rs` files under `dir`, in its subdirectories too, in name order.
fn rust_files(dir: &Path) -> Result<Vec<std::path::PathBuf>, String> {
    let mut files = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.is_dir() {
            files.extend(rust_files(&path)?);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The module graph of the crate whose sources are in `src`: each module and the modules it
/// uses.
fn graph(src: &Path) -> Result<BTreeMap<String, BTreeSet<String>>, String> {
    // A module's text: its file and those of its submodules (`src/<name>/`).
    let read = |name: &str| {
        let path = src.join(format!("{name}.rs"));
        let mut text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let dir = src.join(name);
        if name != ROOT && dir.is_dir() {
            for file in rust_files(&dir)? {
                text.push('\n');
                text.push_str(
                    &std::fs::read_to_string(&file)
                        .map_err(|e| format!("{}: {e}", file.display()))?,
                );
            }
        }
        Ok::<_, String>(text)
    };
    let lib = code(&read(ROOT)?);
    let modules: BTreeSet<String> = lib
        .lines()
        .filter_map(|l| {
            let l = l.trim().strip_prefix("pub ").unwrap_or(l.trim());
            l.strip_prefix("mod ")?.strip_suffix(';').map(str::to_owned)
        })
        .filter(|m| m != SELF)
        .collect();
    // `pub use error::Error;` in lib.rs: `crate::Error` is module `error`.
    let mut reexported = BTreeMap::new();
    for line in lib.lines() {
        let Some(rest) = line.trim().strip_prefix("pub use ") else { continue };
        let Some((module, items)) = rest.split_once("::") else { continue };
        if !modules.contains(module) {
            continue;
        }
        for item in items.trim_end_matches(';').trim_matches(|c| c == '{' || c == '}').split(',') {
            let item = item.trim();
            let shown = item.rsplit(" as ").next().unwrap_or(item);
            let shown = shown.rsplit("::").next().unwrap_or(shown).trim();
            reexported.insert(shown.to_owned(), module.to_owned());
        }
    }
    let mut graph = BTreeMap::new();
    let root_uses: BTreeSet<String> =
        modules.iter().filter(|m| lib.contains(&format!("{m}::"))).cloned().collect();
    graph.insert(ROOT.to_owned(), root_uses);
    for module in &modules {
        let text = code(&read(module)?);
        let mut uses = BTreeSet::new();
        for tree in trees_after(&text, "crate") {
            for name in first_segments(tree) {
                let target = if modules.contains(&name) {
                    name
                } else if let Some(m) = reexported.get(&name) {
                    m.clone()
                } else {
                    ROOT.to_owned()
                };
                if &target != module {
                    uses.insert(target);
                }
            }
        }
        graph.insert(module.clone(), uses);
    }
    Ok(graph)
}

/// A cycle of `graph`, as the modules along it (the first again at the end), if it has one.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, done, path) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|node| visit(node, graph, &mut done, &mut Vec::new()))
}

#[test]
fn the_modules_form_no_import_cycle() -> Result<(), String> {
    let graph = graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))?;
    assert!(graph.len() > 10, "too few modules found: {graph:?}");
    if let Some(cycle) = cycle(&graph) {
        return Err(format!("import cycle among the verifier's modules: {}", cycle.join(" -> ")));
    }
    Ok(())
}

/// The rows of the module map in `lib.rs`, top to bottom, each with the modules it names.
fn map_rows(lib: &str) -> Vec<Vec<String>> {
    lib.lines()
        .filter_map(|l| l.trim().strip_prefix("//! |"))
        .filter_map(|row| row.split('|').nth(1))
        .map(|cell| cell.split('`').skip(1).step_by(2).map(str::to_owned).collect::<Vec<_>>())
        .filter(|names| !names.is_empty())
        .collect()
}

/// Each use of a module listed above the user in the map (a module may use its own row and
/// those below), and each module the map leaves out.
fn against_map(graph: &BTreeMap<String, BTreeSet<String>>, rows: &[Vec<String>]) -> Vec<String> {
    let row_of = |m: &str| rows.iter().position(|r| r.iter().any(|n| n == m));
    let mut wrong = Vec::new();
    for (from, uses) in graph.iter().filter(|(m, _)| *m != ROOT) {
        let Some(at) = row_of(from) else {
            wrong.push(format!("module {from} is not in the map of lib.rs"));
            continue;
        };
        for to in uses.iter().filter(|m| *m != ROOT) {
            if row_of(to).is_some_and(|row| row < at) {
                wrong.push(format!("{from} uses {to}, which the map lists above it"));
            }
        }
    }
    wrong
}

#[test]
fn the_modules_use_only_those_below_them_in_the_map() -> Result<(), String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).map_err(|e| e.to_string())?;
    let rows = map_rows(&lib);
    assert!(rows.len() > 10, "too few rows read from the map in lib.rs: {rows:?}");
    let wrong = against_map(&graph(&src)?, &rows);
    assert!(wrong.is_empty(), "the verifier's modules break the map of lib.rs: {wrong:#?}");
    Ok(())
}

#[test]
fn a_use_of_a_module_above_is_named() {
    let rows = map_rows(
        "//! | layer | module | what |\n//! |---|---|---|\n//! | top | `a` | x |\n//! | | `b`, `c` | y |",
    );
    assert_eq!(rows, [vec!["a".to_owned()], vec!["b".to_owned(), "c".to_owned()]]);
    let graph: BTreeMap<String, BTreeSet<String>> =
        [("a", vec!["b"]), ("b", vec!["c"]), ("c", vec!["a"]), ("d", vec![])]
            .into_iter()
            .map(|(m, uses)| (m.to_owned(), uses.into_iter().map(str::to_owned).collect()))
            .collect();
    assert_eq!(
        against_map(&graph, &rows),
        ["c uses a, which the map lists above it", "module d is not in the map of lib.rs"]
    );
}

/// The first argument of each `Finding::new(..)` in `code` (whitespace removed) that is not a
/// constant of `kl_core::verdict::rule`.
fn not_from_rule(code: &str) -> impl Iterator<Item = String> + '_ {
    code.split("Finding::new(").skip(1).filter_map(|rest| {
        let arg = rest.split([',', ')']).next().unwrap_or(rest);
        let named = arg.strip_prefix("kl_core::verdict::").unwrap_or(arg).starts_with("rule::");
        (!named).then(|| arg.to_owned())
    })
}

#[test]
fn a_rule_not_named_from_kl_core_is_found() {
    let code: String = "Finding::new(rule::PCR_MISMATCH, x); Finding::new(\"pcr.x\", y); \
                        Finding::new(MY_RULE, z); Finding::new(kl_core::verdict::rule::A, w)"
        .split_whitespace()
        .collect();
    assert_eq!(not_from_rule(&code).collect::<Vec<_>>(), ["\"pcr.x\"", "MY_RULE"]);
}

#[test]
fn findings_name_their_rule_from_kl_core() -> Result<(), String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut literal = Vec::new();
    for path in rust_files(&src)? {
        if path.file_stem().is_some_and(|s| s == SELF) {
            continue;
        }
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let code: String = code(&text).split_whitespace().collect();
        literal.extend(not_from_rule(&code).map(|arg| format!("{}: {arg}", path.display())));
    }
    assert!(
        literal.is_empty(),
        "a finding whose rule is not named from kl_core::verdict::rule: {literal:?}"
    );
    Ok(())
}

#[test]
fn paths_are_read_from_use_trees_and_cycles_are_named() {
    let text =
        code("use crate::{Error, a::{X, Y}, b};\n// crate::c in a comment\nlet _ = crate::d::f();");
    let names: Vec<String> =
        trees_after(&text, "crate").into_iter().flat_map(first_segments).collect();
    assert_eq!(names, ["Error", "a", "b", "d"]);
    let edges = |pairs: &[(&str, &str)]| {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, to) in pairs {
            g.entry((*from).to_owned()).or_default().insert((*to).to_owned());
        }
        g
    };
    assert_eq!(cycle(&edges(&[("a", "b"), ("b", "c"), ("a", "c")])), None);
    assert_eq!(
        cycle(&edges(&[("a", "b"), ("b", "c"), ("c", "a")])).map(|c| c.join(" -> ")),
        Some("a -> b -> c -> a".to_owned())
    );
}
