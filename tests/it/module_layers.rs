//! The top-level modules of `src/` form layers: no module reaches, through
//! `crate::` paths, one that reaches back to it. An import circle makes two
//! modules one unit in all but name; this test names the circle instead of
//! letting it grow.
//!
//! Production code only: `#[cfg(test)]` items and test-only modules may
//! reach up (a detector's tests drive the whole engine).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module graph: top-level module name to the top-level modules it uses.
type Graph = BTreeMap<String, BTreeSet<String>>;

#[test]
fn top_level_modules_have_no_import_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = module_graph(&src);
    assert!(
        graph.contains_key("engine") && graph["engine"].contains("detect"),
        "the graph was read: {graph:#?}"
    );
    let circles = find_circles(&graph);
    assert!(
        circles.is_empty(),
        "import circles between modules of src/:\n{}",
        circles
            .iter()
            .map(|circle| format!("  {}", circle.join(" -> ")))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_scanner_sees_paths_and_skips_comments_strings_and_tests() {
    let code = r##"
        //! See [`crate::doc_only`].
        use crate::{alpha::A, beta::{B, C}};
        use crate::gamma;
        fn f() -> &'static str { let _ = crate::delta::d(); let c = '"'; let q = '\''; "crate::in_string" }
        const RAW: &str = r#"crate::in_raw"#;
        /* crate::in_block /* nested */ */
        #[cfg(test)]
        mod tests { use crate::tested; }
        #[cfg(test)]
        pub mod testkit;
    "##;
    let (used, test_only) = scan(code);
    let expected: BTreeSet<String> = ["alpha", "beta", "gamma", "delta"].map(String::from).into();
    assert_eq!(used, expected);
    assert_eq!(test_only, vec!["testkit".to_string()]);

    let mut graph = Graph::new();
    for (from, to) in [("a", "b"), ("b", "c"), ("d", "e")] {
        graph.entry(from.into()).or_default().insert(to.into());
    }
    assert!(find_circles(&graph).is_empty());
    for (from, to) in [("c", "a"), ("e", "d")] {
        graph.entry(from.into()).or_default().insert(to.into());
    }
    let expected = [vec!["a", "b", "c", "a"], vec!["d", "e", "d"]];
    assert_eq!(find_circles(&graph), expected);
}

/// Reads every production source file under `src` into the module graph.
fn module_graph(src: &Path) -> Graph {
    let mut graph = Graph::new();
    let mut pending = vec![src.to_path_buf()];
    let mut files = Vec::new();
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("readable src folder") {
            let path = entry.expect("readable entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }
    let mut test_only: BTreeSet<PathBuf> = BTreeSet::new();
    let mut scans = Vec::new();
    for file in &files {
        let code = std::fs::read_to_string(file).expect("readable source");
        let (used, test_modules) = scan(&code);
        for module in test_modules {
            let dir = child_module_dir(src, file);
            test_only.insert(dir.join(format!("{module}.rs")));
            test_only.insert(dir.join(&module));
        }
        scans.push((file.clone(), used));
    }
    for (file, used) in scans {
        if test_only.iter().any(|excluded| file.starts_with(excluded)) {
            continue;
        }
        let Some(module) = top_level_module(src, &file) else {
            continue;
        };
        let targets = graph.entry(module.clone()).or_default();
        targets.extend(used.into_iter().filter(|target| *target != module));
    }
    graph
}

/// `engine` for `src/engine.rs`, `detect` for `src/detect/geo.rs`; `None`
/// for the crate roots, which only declare the modules.
fn top_level_module(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

/// Where `mod child;` declared in `file` lives.
fn child_module_dir(src: &Path, file: &Path) -> PathBuf {
    let parent = file.parent().unwrap_or(src).to_path_buf();
    match file.file_stem().and_then(|stem| stem.to_str()) {
        Some("mod" | "lib" | "main") => parent,
        Some(stem) => parent.join(stem),
        None => parent,
    }
}

/// The top-level modules named by `crate::` paths in production code, and
/// the names of child modules declared test-only (`#[cfg(test)] mod x;`).
fn scan(code: &str) -> (BTreeSet<String>, Vec<String>) {
    let code = strip_comments_and_literals(code);
    let code = strip_test_items(&code);
    let mut used = BTreeSet::new();
    let mut rest = code.0.as_str();
    while let Some(found) = rest.find("crate::") {
        let preceded_by_ident = rest[..found]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        rest = &rest[found + "crate::".len()..];
        if preceded_by_ident {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            used.extend(group_heads(group));
        } else {
            let ident: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !ident.is_empty() {
                used.insert(ident);
            }
        }
    }
    (used, code.1)
}

/// First identifiers of each path in a `{a::x, b, c::{y, z}}` group (the
/// text after its opening brace).
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut expecting_head = true;
    let mut ident = String::new();
    for c in group.chars() {
        if depth == 0 && expecting_head && (c.is_alphanumeric() || c == '_') {
            ident.push(c);
            continue;
        }
        if !ident.is_empty() {
            heads.push(std::mem::take(&mut ident));
            expecting_head = false;
        }
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => expecting_head = true,
            _ => {}
        }
    }
    heads
}

/// Blanks out comments, string and char literals, keeping the code around
/// them, so paths in docs and messages do not count.
fn strip_comments_and_literals(code: &str) -> String {
    let chars: Vec<char> = code.chars().collect();
    let mut out = String::with_capacity(code.len());
    let mut index = 0;
    while index < chars.len() {
        let c = chars[index];
        let next = chars.get(index + 1).copied();
        if c == '/' && next == Some('/') {
            while index < chars.len() && chars[index] != '\n' {
                index += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while index < chars.len() {
                if chars[index] == '/' && chars.get(index + 1) == Some(&'*') {
                    depth += 1;
                    index += 2;
                } else if chars[index] == '*' && chars.get(index + 1) == Some(&'/') {
                    depth -= 1;
                    index += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    index += 1;
                }
            }
            out.push(' ');
        } else if c == 'r' && matches!(next, Some('"' | '#')) && !preceded_by_ident(&chars, index) {
            let hashes = chars[index + 1..].iter().take_while(|c| **c == '#').count();
            if chars.get(index + 1 + hashes) != Some(&'"') {
                out.push(c);
                index += 1;
                continue;
            }
            index += hashes + 2;
            while index < chars.len() {
                if chars[index] == '"'
                    && chars[index + 1..].iter().take(hashes).filter(|c| **c == '#').count() == hashes
                {
                    index += 1 + hashes;
                    break;
                }
                index += 1;
            }
            out.push_str("\"\"");
        } else if c == '"' {
            index += 1;
            while index < chars.len() && chars[index] != '"' {
                index += if chars[index] == '\\' { 2 } else { 1 };
            }
            index += 1;
            out.push_str("\"\"");
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{1F600}') or a lifetime ('a).
            let literal_end = if next == Some('\\') {
                chars[index + 3..]
                    .iter()
                    .position(|c| *c == '\'')
                    .map(|at| index + 3 + at)
            } else if chars.get(index + 2) == Some(&'\'') {
                Some(index + 2)
            } else {
                None
            };
            match literal_end {
                Some(end) => {
                    out.push_str("' '");
                    index = end + 1;
                }
                None => {
                    out.push(c);
                    index += 1;
                }
            }
        } else {
            out.push(c);
            index += 1;
        }
    }
    out
}

fn preceded_by_ident(chars: &[char], index: usize) -> bool {
    index > 0 && (chars[index - 1].is_alphanumeric() || chars[index - 1] == '_')
}

/// Removes every item under `#[cfg(test)]` and returns the code left with
/// the names of the child modules declared test-only.
fn strip_test_items(code: &str) -> (String, Vec<String>) {
    const MARKER: &str = "#[cfg(test)]";
    let mut kept = String::with_capacity(code.len());
    let mut test_modules = Vec::new();
    let mut rest = code;
    while let Some(found) = rest.find(MARKER) {
        kept.push_str(&rest[..found]);
        let item = &rest[found + MARKER.len()..];
        let mut depth = 0usize;
        let mut end = item.len();
        for (at, c) in item.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = at + 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    let declaration = item[..at].split_whitespace().collect::<Vec<_>>();
                    if let [.., "mod", name] = declaration.as_slice() {
                        test_modules.push((*name).to_string());
                    }
                    end = at + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &item[end..];
    }
    kept.push_str(rest);
    (kept, test_modules)
}

/// One circle through each group of modules that reach each other (a
/// strongly connected component), as the modules along it with the first
/// repeated at the end. Empty when the modules form layers.
fn find_circles(graph: &Graph) -> Vec<Vec<String>> {
    let reachable_from = |start: &str| {
        let mut seen = BTreeSet::new();
        let mut pending = vec![start.to_string()];
        while let Some(node) = pending.pop() {
            for next in graph.get(&node).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    pending.push(next.clone());
                }
            }
        }
        seen
    };
    let mut grouped: BTreeSet<String> = BTreeSet::new();
    let mut circles = Vec::new();
    for start in graph.keys() {
        if grouped.contains(start) || !reachable_from(start).contains(start) {
            continue;
        }
        // Walk the shortest way round back to `start`.
        let mut previous: BTreeMap<String, String> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start.clone()]);
        'search: while let Some(node) = queue.pop_front() {
            for next in graph.get(&node).into_iter().flatten() {
                if next == start {
                    previous.insert(start.clone(), node.clone());
                    break 'search;
                }
                if !previous.contains_key(next) {
                    previous.insert(next.clone(), node.clone());
                    queue.push_back(next.clone());
                }
            }
        }
        let mut way_back = Vec::new();
        let mut node = previous[start].clone();
        while node != *start {
            way_back.push(node.clone());
            node = previous[&node].clone();
        }
        let mut circle = vec![start.clone()];
        circle.extend(way_back.into_iter().rev());
        circle.push(start.clone());
        let circle_group: BTreeSet<String> = reachable_from(start)
            .into_iter()
            .filter(|member| reachable_from(member).contains(start))
            .collect();
        grouped.extend(circle_group);
        circles.push(circle);
    }
    circles
}
