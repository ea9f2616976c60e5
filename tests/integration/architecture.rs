//! The layering of `host/src` that ARCHITECTURE.md draws is the one the code has: every
//! top-level module is in the layers table, and imports (`crate::...` paths outside tests) only
//! go to modules of earlier layers, so no two top-level modules import each other.

use crate::support::repo_root;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// `| 3 | `pki` | ... |` rows of ARCHITECTURE.md's layers table: module -> layer.
fn layers(architecture: &str) -> BTreeMap<String, u32> {
    let mut layers = BTreeMap::new();
    for line in architecture.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (Some(layer), Some(modules)) = (cells.get(1), cells.get(2)) else {
            continue;
        };
        let Ok(layer) = layer.parse::<u32>() else {
            continue;
        };
        for module in modules.split(',') {
            layers.insert(module.trim().trim_matches('`').to_string(), layer);
        }
    }
    layers
}

/// The top-level modules a source text names in `crate::` paths.
fn imports(source: &str) -> BTreeSet<String> {
    // Unit tests may reach anywhere; comments and docs are not imports.
    let code = match source.find("#[cfg(test)]\nmod tests") {
        Some(at) => &source[..at],
        None => source,
    };
    let code: String = code
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::c, d::{e, f}}`: the first segment of each top-level item.
            let mut depth = 0;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_ascii_alphabetic() || c == '_') => {
                        let name: String = group[i..]
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        found.insert(name);
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

/// Every `.rs` file under `dir`, with its top-level module.
fn sources(src: &Path) -> Vec<(String, std::path::PathBuf)> {
    let mut out = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") || path.ends_with("tests.rs") {
                continue;
            }
            let relative = path.strip_prefix(src).unwrap();
            let first = relative.components().next().unwrap().as_os_str();
            let module = first.to_string_lossy().trim_end_matches(".rs").to_string();
            if module != "lib" && module != "main" {
                out.push((module, path));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn imports_follow_the_layers_of_architecture_md() {
    let root = repo_root();
    let architecture = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let layers = layers(&architecture);
    let files = sources(&root.join("host/src"));
    let modules: BTreeSet<String> = files.iter().map(|(m, _)| m.clone()).collect();

    let unlisted: Vec<&String> = modules
        .iter()
        .filter(|m| !layers.contains_key(*m))
        .collect();
    assert!(
        unlisted.is_empty(),
        "modules missing from ARCHITECTURE.md's layers table: {unlisted:?}"
    );
    let gone: Vec<&String> = layers.keys().filter(|m| !modules.contains(*m)).collect();
    assert!(
        gone.is_empty(),
        "ARCHITECTURE.md lists modules host/src does not have: {gone:?}"
    );

    let mut wrong = Vec::new();
    for (module, path) in &files {
        let source = std::fs::read_to_string(path).unwrap();
        for target in imports(&source) {
            if &target == module || !modules.contains(&target) {
                continue;
            }
            if layers[&target] >= layers[module] {
                wrong.push(format!(
                    "{} (`{module}`, layer {}) imports `{target}` (layer {})",
                    path.strip_prefix(&root).unwrap().display(),
                    layers[module],
                    layers[&target]
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );

    // The module map names every top-level module.
    for module in &modules {
        let file = format!("  {module}.rs ");
        let dir = format!("  {module}/ ");
        assert!(
            architecture.contains(&file) || architecture.contains(&dir),
            "ARCHITECTURE.md's module map does not show {module}"
        );
    }
}

#[test]
fn the_import_reader_sees_grouped_and_nested_paths() {
    let found = imports(
        "use crate::caps::{self, CapContext};\nuse crate::{model::Message, pki::{x509, tls}};\n\
         // crate::cli is only a comment\nfn f() { crate::mqtt::topic::x(); }\n\
         #[cfg(test)]\nmod tests { use crate::bridge; }\n",
    );
    let expected: BTreeSet<String> = ["caps", "model", "pki", "mqtt"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(found, expected);
}
