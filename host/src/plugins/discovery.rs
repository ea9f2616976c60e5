//! Finding plugins: every `*.toml` in a plugin directory (but `Cargo.toml`) is a manifest; its code file is `entry`
//! or the `.rhai`/`.wasm` with the same stem. A code file without a manifest is an error, so a
//! plugin never runs with permissions nobody declared.

use super::manifest::{Manifest, ManifestError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Which engine runs a plugin, from its entry file's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    Rhai,
    Wasm,
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EngineKind::Rhai => "rhai",
            EngineKind::Wasm => "wasm",
        })
    }
}

/// A plugin found on disk (not loaded yet).
#[derive(Debug, Clone)]
pub struct Discovered {
    pub manifest: Manifest,
    pub manifest_path: PathBuf,
    pub entry: PathBuf,
    pub engine: EngineKind,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{path} has no manifest: create {expected} beside it (name, version, kind, api)")]
    NoManifest { path: PathBuf, expected: PathBuf },
    #[error("plugin '{name}' is defined twice: {first} and {second}")]
    Duplicate {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("{0}")]
    Installed(String),
    #[error("cannot read plugin directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Discover plugins in `dirs` (missing directories are skipped). Returns the plugins found and,
/// separately, what could not be used, so one bad plugin does not hide the others.
pub(crate) fn discover(dirs: &[PathBuf]) -> (Vec<Discovered>, Vec<DiscoveryError>) {
    let mut found: BTreeMap<String, Discovered> = BTreeMap::new();
    let mut errors = Vec::new();
    for dir in dirs {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                errors.push(DiscoveryError::Dir {
                    path: dir.clone(),
                    source,
                });
                continue;
            }
        };
        let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        let mut entries_with_manifest = Vec::new();
        // A WASM plugin's crate may live beside its manifest: Cargo.toml is not a manifest.
        let manifests = files
            .iter()
            .filter(|p| has_ext(p, "toml") && p.file_name().is_some_and(|n| n != "Cargo.toml"));
        for path in manifests {
            match discover_one(path) {
                Ok(plugin) => {
                    entries_with_manifest.push(plugin.entry.clone());
                    let name = plugin.manifest.name.clone();
                    if let Some(first) = found.get(&name) {
                        errors.push(DiscoveryError::Duplicate {
                            name,
                            first: first.manifest_path.clone(),
                            second: plugin.manifest_path,
                        });
                    } else {
                        found.insert(name, plugin);
                    }
                }
                Err(e) => {
                    entries_with_manifest.extend(default_entries(path));
                    errors.push(e.into());
                }
            }
        }
        for path in files
            .iter()
            .filter(|p| has_ext(p, "rhai") || has_ext(p, "wasm"))
        {
            if !entries_with_manifest.iter().any(|e| same_file(e, path)) {
                errors.push(DiscoveryError::NoManifest {
                    path: path.clone(),
                    expected: path.with_extension("toml"),
                });
            }
        }
    }
    (found.into_values().collect(), errors)
}

/// Read one manifest and locate its entry file.
pub(crate) fn discover_one(manifest_path: &Path) -> Result<Discovered, ManifestError> {
    let manifest = Manifest::load(manifest_path)?;
    let err = |message: String| ManifestError {
        path: manifest_path.to_path_buf(),
        message,
    };
    let entry = match &manifest.entry {
        Some(entry) => manifest_path.with_file_name(entry),
        None => {
            let candidates: Vec<PathBuf> = default_entries(manifest_path)
                .into_iter()
                .filter(|p| p.exists())
                .collect();
            match candidates.as_slice() {
                [one] => one.clone(),
                [] => {
                    return Err(err(format!(
                        "no code file: expected {} or {} (or set `entry`)",
                        manifest_path.with_extension("rhai").display(),
                        manifest_path.with_extension("wasm").display()
                    )))
                }
                _ => {
                    return Err(err(
                        "both a .rhai and a .wasm file share its name; set `entry` to choose"
                            .into(),
                    ))
                }
            }
        }
    };
    let engine = if ext_is(&entry, "rhai") {
        EngineKind::Rhai
    } else if ext_is(&entry, "wasm") {
        EngineKind::Wasm
    } else {
        return Err(err(format!(
            "entry {} must be a .rhai script or a .wasm component",
            entry.display()
        )));
    };
    Ok(Discovered {
        manifest,
        manifest_path: manifest_path.to_path_buf(),
        entry,
        engine,
    })
}

fn default_entries(manifest_path: &Path) -> Vec<PathBuf> {
    vec![
        manifest_path.with_extension("rhai"),
        manifest_path.with_extension("wasm"),
    ]
}

fn has_ext(path: &Path, ext: &str) -> bool {
    path.is_file() && ext_is(path, ext)
}

fn ext_is(path: &Path, ext: &str) -> bool {
    path.extension().is_some_and(|e| e == ext)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}
