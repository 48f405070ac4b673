//! The layers, checked from the sources (issue 16): core ← config ← {observability, plugins} ←
//! runtime ← pipeline ← server ← control ← the binary, each a crate of the workspace (diagram
//! and reasons: host/README.md). Between crates the compiler forbids cycles and [`CRATES`] fixes
//! the order: each crate's `[dependencies]` may name only crates below it.
//!
//! Inside the control crate, whose modules are a small stack of their own ([`LAYERS`]), it is
//! the module scan: every `use crate::…` (groups expanded), every inline `crate::X::` path,
//! `super::` chains that climb to the crate root (inline `mod x {}` blocks are tracked) and, in a
//! main.rs, `wasmgate::X`; comments and string literals are stripped first. `crate::Name` paths
//! through the root's `pub use` are resolved to the module they re-export, so a façade cannot
//! hide an edge.
//!
//! `ALLOWED` would list edges still to be removed. It only shrinks, and it is empty: an entry
//! that no longer occurs fails the test too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The workspace's layer crates, lowest first, with their directories. `wasmgate` (host) is the
/// binary.
const CRATES: &[(&str, &str)] = &[
    ("wasmgate-core", "crates/core"),
    ("wasmgate-config", "crates/config"),
    ("wasmgate-observe", "crates/observe"),
    ("wasmgate-plugins", "crates/plugins"),
    ("wasmgate-runtime", "crates/runtime"),
    ("wasmgate-proxy", "crates/proxy"),
    ("wasmgate-server", "crates/server"),
    ("wasmgate-control", "crates/control"),
    ("wasmgate", "host"),
];

/// Crates beside the layers: they name no wasmgate crate, and only the top one (the binary's
/// package) may name them, so no library ships them (the demo's chat page and rcgen).
const BESIDE: &[(&str, &str)] = &[("wasmgate-demo", "crates/demo")];

/// Top-level modules of the control crate by layer, lowest first: the handover passes sockets
/// and knows nothing else; reload swaps runtimes; admin reads and triggers reloads; process is
/// the `Server` that owns them all.
const LAYERS: &[(&str, &[&str])] = &[
    ("handover", &["handover"]),
    ("reload", &["reload"]),
    ("admin", &["admin"]),
    ("process", &["process", "lib"]),
];

/// Edges that point up, or close a cycle inside a layer, tolerated while being removed. Empty;
/// an entry must be deleted as soon as its edge is gone.
const ALLOWED: &[(&str, &str)] = &[];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

/// One reference from a top-level module to another, with where it was seen.
#[derive(Debug, Clone)]
struct Ref {
    from: String,
    to: String,
    at: String,
}

#[test]
fn no_module_uses_a_layer_above_its_own_and_no_layer_has_a_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/control/src");
    let refs = scan(&src);
    // The fixture test below proves the scanner; this only guards against scanning the wrong tree.
    // Every module that names `crate::` outside its own subtree must show up as a source.
    let from: BTreeSet<&str> = refs.iter().map(|r| r.from.as_str()).collect();
    for (top, code) in top_modules_naming_the_crate(&src) {
        assert!(
            from.contains(top.as_str()),
            "`{top}` names `crate::…` of another module but the scanner found no reference from it: it is broken\n{code}"
        );
    }
    let mut problems = Vec::new();
    let mut seen: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for r in &refs {
        let (Some(a), Some(b)) = (layer_of(&r.from), layer_of(&r.to)) else {
            problems.push(format!(
                "{}: `{}` → `{}`: a top-level module this test's LAYERS table does not place; add it",
                r.at, r.from, r.to
            ));
            continue;
        };
        seen.entry((r.from.clone(), r.to.clone()))
            .or_default()
            .push(r.at.clone());
        let allowed = ALLOWED.contains(&(r.from.as_str(), r.to.as_str()));
        if a < b && !allowed {
            problems.push(format!(
                "{}: `{}` ({}) uses `{}` ({}), a layer above it",
                r.at, r.from, LAYERS[a].0, r.to, LAYERS[b].0
            ));
        }
    }
    // Cycles inside one layer (across layers, a cycle needs an upward edge, reported above).
    let edges: BTreeSet<(String, String)> = seen
        .keys()
        .filter(|(a, b)| !ALLOWED.contains(&(a.as_str(), b.as_str())))
        .cloned()
        .collect();
    for cycle in cycles(&edges) {
        let witness: Vec<String> = cycle
            .windows(2)
            .map(|w| seen[&(w[0].clone(), w[1].clone())][0].clone())
            .collect();
        problems.push(format!(
            "import cycle {} (first references: {})",
            cycle.join(" → "),
            witness.join(", ")
        ));
    }
    for (from, to) in ALLOWED {
        if !seen.contains_key(&(from.to_string(), to.to_string())) {
            problems.push(format!(
                "`{from}` → `{to}` is in ALLOWED but no longer occurs: delete its line"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "layering broken:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn every_layer_crate_depends_only_on_crates_below_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut problems = Vec::new();
    for (i, (name, dir)) in CRATES.iter().enumerate() {
        let manifest = root.join(dir).join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest)
            .unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
        let deps = wasmgate_dependencies(&text);
        if i > 0 && deps.is_empty() {
            problems.push(format!(
                "{name}: names no layer crate at all: is the scan broken?"
            ));
        }
        for dep in deps {
            let top = i == CRATES.len() - 1;
            if BESIDE.iter().any(|(n, _)| *n == dep) {
                if !top {
                    problems.push(format!("{name} depends on {dep}: only the binary may"));
                }
                continue;
            }
            match CRATES.iter().position(|(n, _)| *n == dep) {
                Some(j) if j < i => {}
                Some(_) => problems.push(format!("{name} depends on {dep}, which is not below it")),
                None => problems.push(format!(
                    "{name} depends on {dep}, which CRATES does not place; add it"
                )),
            }
        }
    }
    for (name, dir) in BESIDE {
        let manifest = root.join(dir).join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest)
            .unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
        for dep in wasmgate_dependencies(&text) {
            problems.push(format!(
                "{name} depends on {dep}: it stands beside the layers"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "crate layering broken:\n  {}",
        problems.join("\n  ")
    );
}

/// The `wasmgate-*` crates a manifest's `[dependencies]` table names (not dev- or build-).
fn wasmgate_dependencies(manifest: &str) -> Vec<String> {
    let mut in_deps = false;
    let mut out = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        let key = line.split(['=', '.', ' ']).next().unwrap_or_default();
        if in_deps && (key == "wasmgate" || key.starts_with("wasmgate-")) {
            out.push(key.to_string());
        }
    }
    out
}

#[test]
fn the_scanner_sees_every_kind_of_reference() {
    let dir = tempfile::tempdir().unwrap();
    let files: &[(&str, &str)] = &[
        (
            "lib.rs",
            "pub mod a; pub mod b; pub mod c; pub mod d; pub use d::Thing;",
        ),
        (
            "a.rs",
            "use crate::{b::X, c::{Y, Z as W}};\n// crate::d::in_a_comment\nconst S: &str = \"crate::d::in_a_string\";\nfn f() { let _ = crate::Thing; }\nmod tests { use super::super::c::Q; }",
        ),
        ("b/mod.rs", "mod inner;"),
        ("b/inner.rs", "fn g() { super::super::c::h(); }"),
        ("c.rs", "pub fn h() {}"),
        ("d.rs", "pub struct Thing;"),
        ("main.rs", "fn main() { wasmgate::a::f(); }"),
    ];
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let mut got: Vec<(String, String)> = scan(dir.path())
        .into_iter()
        .map(|r| (r.from, r.to))
        .collect();
    got.sort();
    got.dedup();
    let want: Vec<(String, String)> = [
        ("a", "b"),
        ("a", "c"),
        ("a", "d"),
        ("b", "c"),
        ("lib", "d"),
        ("main", "a"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(got, want);
}

/// Every reference from one top-level module of `src` to another.
/// Top-level modules whose code (comments and strings stripped) contains `crate::X` for an `X`
/// other than themselves, with the first such line.
fn top_modules_naming_the_crate(src: &Path) -> Vec<(String, String)> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for path in rust_files(src) {
        let rel = path.strip_prefix(src).unwrap();
        let top = rel.iter().next().unwrap().to_string_lossy();
        let top = top.trim_end_matches(".rs").to_string();
        let code = strip_comments_and_strings(&std::fs::read_to_string(&path).unwrap());
        let hit = code.lines().find(|l| {
            l.match_indices("crate::").any(|(i, _)| {
                let rest = &l[i + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                !name.is_empty()
                    && name != top
                    && name.chars().next().is_some_and(|c| c.is_lowercase())
            })
        });
        if let Some(line) = hit {
            out.entry(top).or_insert_with(|| line.trim().to_string());
        }
    }
    out.into_iter().collect()
}

fn scan(src: &Path) -> Vec<Ref> {
    let files = rust_files(src);
    let reexports = root_reexports(src);
    // Top-level modules, for `use module::…` written at the crate root (lib.rs).
    let roots: BTreeSet<String> = files
        .iter()
        .filter_map(|f| f.strip_prefix(src).ok()?.iter().next())
        .map(|s| s.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    let mut refs = Vec::new();
    for path in &files {
        let rel = path.strip_prefix(src).unwrap();
        let mut modpath: Vec<String> = rel
            .with_extension("")
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        if modpath.last().is_some_and(|m| m == "mod") {
            modpath.pop();
        }
        let (top, is_bin) = match modpath.as_slice() {
            [only] if only == "lib" || only == "main" => {
                let top = only.clone();
                modpath.clear();
                let is_bin = top == "main";
                (top, is_bin)
            }
            _ => (modpath[0].clone(), false),
        };
        let text = std::fs::read_to_string(path).unwrap();
        let code = strip_comments_and_strings(&text);
        for (line, target) in references(&code, &modpath, is_bin, &roots) {
            let to = reexports.get(&target).cloned().unwrap_or(target);
            if to != top {
                refs.push(Ref {
                    from: top.clone(),
                    to,
                    at: format!("{}:{line}", rel.display()),
                });
            }
        }
    }
    refs
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// `pub use module::…::Name;` in lib.rs: `crate::Name` is a use of `module`.
fn root_reexports(src: &Path) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let Ok(text) = std::fs::read_to_string(src.join("lib.rs")) else {
        return map;
    };
    let code = strip_comments_and_strings(&text);
    for stmt in code.split(';') {
        let stmt = stmt.trim();
        let Some(tree) = stmt.strip_prefix("pub use ") else {
            continue;
        };
        let tree: String = tree.split_whitespace().collect();
        for path in expand_use(&tree) {
            let segs: Vec<&str> = path.split("::").collect();
            let segs = if segs[0] == "crate" {
                &segs[1..]
            } else {
                &segs[..]
            };
            if segs.len() >= 2 {
                let name = segs.last().unwrap().split("as").next().unwrap();
                map.insert(name.to_string(), segs[0].to_string());
            }
        }
    }
    map
}

/// Blank out comments and string/char literals, keeping newlines so line numbers stay right.
fn strip_comments_and_strings(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let blank = |out: &mut Vec<u8>, seg: &[u8]| {
        out.extend(seg.iter().map(|&c| if c == b'\n' { b'\n' } else { b' ' }))
    };
    let mut i = 0;
    while i < b.len() {
        let rest = &b[i..];
        let prev_ident = i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        if rest.starts_with(b"//") {
            let end = rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest.starts_with(b"/*") {
            let (mut depth, mut j) = (1, 2);
            while j < rest.len() && depth > 0 {
                if rest[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if rest[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                } else {
                    j += 1;
                }
            }
            blank(&mut out, &rest[..j]);
            i += j;
        } else if let Some(len) = (!prev_ident).then(|| raw_string_len(rest)).flatten() {
            blank(&mut out, &rest[..len]);
            i += len;
        } else if rest[0] == b'"' {
            let mut j = 1;
            while j < rest.len() && rest[j] != b'"' {
                j += if rest[j] == b'\\' { 2 } else { 1 };
            }
            let j = (j + 1).min(rest.len());
            blank(&mut out, &rest[..j]);
            i += j;
        } else if rest[0] == b'\'' {
            // A char literal ('a', '\n', '\u{1F600}', '"'); a lifetime has no closing quote.
            let len = match rest.get(1) {
                // '\n', '\'', '\u{1F600}': the escaped character is never the closing quote.
                Some(b'\\') => rest
                    .get(3..)
                    .and_then(|r| r.iter().position(|&c| c == b'\''))
                    .map(|p| p + 4),
                Some(_) => {
                    let ch_len = std::str::from_utf8(&rest[1..rest.len().min(5)])
                        .ok()
                        .or_else(|| std::str::from_utf8(&rest[1..2]).ok())
                        .and_then(|s| s.chars().next())
                        .map_or(1, char::len_utf8);
                    (rest.get(1 + ch_len) == Some(&b'\'')).then_some(ch_len + 2)
                }
                None => None,
            };
            let len = len.unwrap_or(1);
            if len == 1 {
                out.push(b'\'');
            } else {
                blank(&mut out, &rest[..len]);
            }
            i += len;
        } else {
            out.push(rest[0]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Length of a raw string literal (`r"…"`, `r#"…"#`, `br"…"`) at the start of `s`, if one is there.
fn raw_string_len(s: &[u8]) -> Option<usize> {
    let start = if s.starts_with(b"br") {
        2
    } else if s.starts_with(b"r") {
        1
    } else {
        return None;
    };
    let hashes = s[start..].iter().take_while(|&&c| c == b'#').count();
    if s.get(start + hashes) != Some(&b'"') {
        return None;
    }
    let body = start + hashes + 1;
    let mut close = vec![b'"'];
    close.extend(std::iter::repeat_n(b'#', hashes));
    let end = s[body..]
        .windows(close.len())
        .position(|w| w == close.as_slice())?;
    Some(body + end + close.len())
}

/// `(line, top-level module)` of every path in `code` (comments stripped) that names a top-level
/// module of the crate from outside `modpath`'s own top-level module.
fn references(
    code: &str,
    file_modpath: &[String],
    is_bin: bool,
    roots: &BTreeSet<String>,
) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    // Inline `mod name {` blocks: (name, brace depth at which it closes).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut line = 1usize;
    let b = code.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\n' => line += 1,
            b'{' => depth += 1,
            b'}' => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            _ => {}
        }
        let word_start = c.is_ascii_alphabetic() && (i == 0 || !is_ident(b[i - 1]));
        if !word_start {
            i += 1;
            continue;
        }
        let word_end = i + b[i..].iter().take_while(|&&c| is_ident(c)).count();
        let word = &code[i..word_end];
        let modpath: Vec<String> = file_modpath
            .iter()
            .cloned()
            .chain(inline.iter().map(|(m, _)| m.clone()))
            .collect();
        if word == "mod" {
            // `mod name {` opens an inline module; `mod name;` names a file.
            let after = code[word_end..].trim_start();
            let name: String = after.chars().take_while(|&c| is_ident(c as u8)).collect();
            if !name.is_empty() && after[name.len()..].trim_start().starts_with('{') {
                inline.push((name, depth));
            }
            i = word_end;
            continue;
        }
        if word == "use" {
            let end = code[word_end..]
                .find(';')
                .map_or(code.len(), |p| word_end + p);
            let tree: String = code[word_end..end].split_whitespace().collect();
            for path in expand_use(&tree) {
                if let Some(top) = top_module(&path, &modpath, is_bin, roots) {
                    out.push((line, top));
                }
            }
            line += code[word_end..end].matches('\n').count();
            i = end;
            continue;
        }
        if matches!(word, "crate" | "super" | "wasmgate") && code[word_end..].starts_with("::") {
            let mut end = word_end;
            while code[end..].starts_with("::") {
                end += 2;
                end += b[end..].iter().take_while(|&&c| is_ident(c)).count();
            }
            if let Some(top) = top_module(&code[i..end], &modpath, is_bin, roots) {
                out.push((line, top));
            }
            i = end;
            continue;
        }
        i = word_end;
    }
    out
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The crate's top-level module a path names, if it leaves the crate's root.
fn top_module(
    path: &str,
    modpath: &[String],
    is_bin: bool,
    roots: &BTreeSet<String>,
) -> Option<String> {
    let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let first = *segs.first()?;
    let name = if first == "crate" || (is_bin && first == "wasmgate") {
        segs.get(1)
    } else if first == "super" {
        let ups = segs.iter().take_while(|&&s| s == "super").count();
        (ups == modpath.len()).then(|| segs.get(ups)).flatten()
    } else if modpath.is_empty() && !is_bin && roots.contains(first) {
        // A relative `use` at the crate root names a top-level module directly.
        segs.first()
    } else {
        None
    };
    name.filter(|n| !matches!(**n, "*" | "self"))
        .map(|n| n.to_string())
}

/// `a::{b::c, d}` → `a::b::c`, `a::d` (whitespace removed); `x as y` keeps `x`.
fn expand_use(tree: &str) -> Vec<String> {
    let Some(open) = tree.find('{') else {
        return vec![tree.split("as").next().unwrap_or(tree).to_string()];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut level, mut cur) = (0, String::new());
    for ch in inner.chars() {
        match ch {
            ',' if level == 0 => parts.push(std::mem::take(&mut cur)),
            '{' => {
                level += 1;
                cur.push(ch)
            }
            '}' => {
                level -= 1;
                cur.push(ch)
            }
            _ => cur.push(ch),
        }
    }
    parts.push(cur);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| expand_use(&format!("{prefix}{p}")))
        .collect()
}

/// A shortest cycle through each module that is on one, skipping modules an earlier cycle already
/// showed (one witness per tangle, not every elementary cycle).
fn cycles(edges: &BTreeSet<(String, String)>) -> Vec<Vec<String>> {
    let nodes: BTreeSet<&String> = edges.iter().flat_map(|(a, b)| [a, b]).collect();
    let next = |n: &str| -> Vec<&String> {
        edges
            .iter()
            .filter(|(a, _)| a == n)
            .map(|(_, b)| b)
            .collect()
    };
    let reaches = |from: &str, to: &str| -> Option<Vec<String>> {
        // Breadth-first, so the witness is a shortest path.
        let mut prev: BTreeMap<String, String> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([from.to_string()]);
        while let Some(n) = queue.pop_front() {
            for m in next(&n) {
                if m == to {
                    let mut path = vec![to.to_string(), n.clone()];
                    let mut cur = n.clone();
                    while let Some(p) = prev.get(&cur) {
                        path.push(p.clone());
                        cur = p.clone();
                    }
                    path.reverse();
                    return Some(path);
                }
                if m != from && !prev.contains_key(m) {
                    prev.insert(m.clone(), n.clone());
                    queue.push_back(m.clone());
                }
            }
        }
        None
    };
    let mut reported: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    for n in nodes {
        if reported.contains(n) {
            continue;
        }
        if let Some(cycle) = reaches(n, n) {
            reported.extend(cycle.iter().cloned());
            out.push(cycle);
        }
    }
    out
}
