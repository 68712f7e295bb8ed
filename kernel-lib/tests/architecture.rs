//! The invariants `docs/ARCHITECTURE.md` marks as checked: no import loops between files, no
//! candle custom op outside `kernels/`, no method name spelled outside `methods/`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `a/b.rs` and `a/b/mod.rs` → `["a", "b"]`; `lib.rs` → `[]`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into()).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// The source without comments (line comments only: the crate has no block comments).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::…`/`super::…` path in `text` (use lists expanded one level deep).
fn paths(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(i) = text[from..].find(start) {
            let at = from + i;
            from = at + start.len();
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                continue;
            }
            let rest = &text[at..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            let head: Vec<String> = rest[..end]
                .split("::")
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            if rest[end..].starts_with('{') {
                let close = rest[end..].find('}').map_or(rest.len(), |c| end + c);
                for item in rest[end + 1..close].split(',') {
                    let item = item.trim();
                    let mut p = head.clone();
                    p.extend(item.split("::").map(|s| s.trim().to_string()));
                    out.push(p);
                }
            } else {
                out.push(head);
            }
        }
    }
    out
}

#[test]
fn no_two_files_import_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeMap<Vec<String>, String> = files
        .iter()
        .map(|f| {
            (
                module_of(&src, f),
                code(&std::fs::read_to_string(f).unwrap()),
            )
        })
        .collect();
    let mut deps: BTreeMap<&Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (m, text) in &modules {
        for p in paths(text) {
            let (mut cur, segs) = match p[0].as_str() {
                "crate" => (Vec::new(), &p[1..]),
                _ => {
                    let ups = p.iter().take_while(|s| *s == "super").count();
                    (m[..m.len().saturating_sub(ups)].to_vec(), &p[ups..])
                }
            };
            for s in segs {
                let mut next = cur.clone();
                next.push(s.clone());
                if !modules.contains_key(&next) {
                    break;
                }
                cur = next;
            }
            // A file's own module and its ancestors (`mod.rs` declaring it) are not imports.
            if !m.starts_with(&cur) && !cur.is_empty() {
                deps.entry(m).or_default().insert(cur);
            }
        }
    }
    // Depth-first search for a loop.
    fn visit<'a>(
        m: &'a Vec<String>,
        deps: &'a BTreeMap<&Vec<String>, BTreeSet<Vec<String>>>,
        stack: &mut Vec<&'a Vec<String>>,
        done: &mut BTreeSet<&'a Vec<String>>,
    ) -> Option<String> {
        if let Some(i) = stack.iter().position(|s| *s == m) {
            let names: Vec<String> = stack[i..].iter().map(|s| s.join("/")).collect();
            return Some(format!("{} -> {}", names.join(" -> "), m.join("/")));
        }
        if done.contains(m) {
            return None;
        }
        stack.push(m);
        for d in deps.get(m).into_iter().flatten() {
            if let Some(c) = visit(d, deps, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(m);
        None
    }
    let mut done = BTreeSet::new();
    for m in modules.keys() {
        let cycle = visit(m, &deps, &mut Vec::new(), &mut done);
        assert!(
            cycle.is_none(),
            "import loop: {}",
            cycle.unwrap_or_default()
        );
    }
}

fn sources_outside(skip: &[&str]) -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    rust_files(&root.join("kernel-lib/src"), &mut files);
    rust_files(&root.join("repl/src"), &mut files);
    files
        .into_iter()
        .filter(|f| !skip.iter().any(|s| f.to_string_lossy().contains(s)))
        .map(|f| {
            let text = code(&std::fs::read_to_string(&f).unwrap());
            // Unit tests inside a file are tests.
            let text = match text.find("#[cfg(test)]") {
                Some(i) => text[..i].to_string(),
                None => text,
            };
            (f, text)
        })
        .collect()
}

#[test]
fn only_kernels_name_a_custom_op() {
    for (f, text) in sources_outside(&["kernel-lib/src/kernels/"]) {
        for needle in ["CustomOp", "InplaceOp", ".apply_op", ".inplace_op"] {
            assert!(!text.contains(needle), "{} uses {needle}", f.display());
        }
    }
}

#[test]
fn method_names_are_spelled_only_in_methods() {
    let names = sslab::methods::names();
    assert_eq!(names.len(), sslab::methods::REGISTRY.len());
    for (f, text) in
        sources_outside(&["kernel-lib/src/methods/", "kernel-lib/src/train/presets.rs"])
    {
        for name in &names {
            let quoted = format!("\"{name}\"");
            assert!(!text.contains(&quoted), "{} spells {quoted}", f.display());
        }
    }
}

#[test]
fn every_method_kind_has_one_registry_entry_that_parses_back() {
    use sslab::methods::{MethodKind, REGISTRY};
    for entry in &REGISTRY {
        assert_eq!(entry.kind.info().name, entry.name);
        assert_eq!(MethodKind::parse(entry.name).unwrap(), entry.kind);
        assert_eq!(
            REGISTRY.iter().filter(|e| e.kind == entry.kind).count(),
            1,
            "{}",
            entry.name
        );
        assert!(sslab::train::RunConfig::preset(entry.name).is_ok());
    }
}
