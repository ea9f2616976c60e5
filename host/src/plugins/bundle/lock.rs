//! `gatehost.lock`: the plugins a site runs from bundles, pinned by version, SHA-256 of the
//! bundle file and publisher. Install, upgrade, remove and sync rewrite it; `gatehost check`
//! compares it with what is installed.

use serde::{Deserialize, Serialize};
use std::path::Path;

pub(crate) const LOCK_FILE: &str = "gatehost.lock";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Lock {
    #[serde(default, rename = "plugin")]
    pub plugins: Vec<LockEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LockEntry {
    pub name: String,
    pub version: String,
    /// SHA-256 of the `.ghp` file.
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publisher: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

impl Lock {
    /// Read a lock file; a missing file is an empty lock.
    pub fn read(path: &Path) -> Result<Lock, LockError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Lock::default()),
            Err(source) => {
                return Err(LockError::Read {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        let lock: Lock = toml::from_str(&text).map_err(|e| LockError::Parse {
            path: path.display().to_string(),
            message: crate::model::one_line(&e.to_string()),
        })?;
        Ok(lock)
    }

    /// Write the lock atomically (aside, then rename), plugins sorted by name.
    pub fn write(&self, path: &Path) -> Result<(), LockError> {
        let mut sorted = self.clone();
        sorted.plugins.sort_by(|a, b| a.name.cmp(&b.name));
        let text = format!(
            "# gatehost.lock: plugins installed from bundles, pinned. Written by `gatehost plugin\n# install|remove|sync`; `gatehost check` fails when the installed plugins differ.\n\n{}",
            toml::to_string(&sorted).expect("the lock serializes")
        );
        super::write_atomic(path, text.as_bytes()).map_err(|source| LockError::Write {
            path: path.display().to_string(),
            source,
        })
    }

    pub fn get(&self, name: &str) -> Option<&LockEntry> {
        self.plugins.iter().find(|p| p.name == name)
    }

    /// Replace (or add) the entry for `entry.name`.
    pub fn set(&mut self, entry: LockEntry) {
        self.plugins.retain(|p| p.name != entry.name);
        self.plugins.push(entry);
    }

    pub fn remove(&mut self, name: &str) {
        self.plugins.retain(|p| p.name != name);
    }

    /// Every difference between this lock and the `installed` set, one sentence each.
    pub(crate) fn differences(&self, installed: &[LockEntry], lock_path: &Path) -> Vec<String> {
        let lock = lock_path.display();
        let mut out = Vec::new();
        for want in &self.plugins {
            match installed.iter().find(|i| i.name == want.name) {
                None => out.push(format!(
                    "{lock} pins plugin '{}' {}, which is not installed (run `gatehost plugin sync --from <bundle dir or URL>`)",
                    want.name, want.version
                )),
                Some(have) if have.version != want.version => out.push(format!(
                    "plugin '{}' is installed at {} but {lock} pins {}",
                    want.name, have.version, want.version
                )),
                Some(have) if have.sha256 != want.sha256 => out.push(format!(
                    "plugin '{}' {} is installed from a bundle with SHA-256 {} but {lock} pins {}",
                    want.name, want.version, have.sha256, want.sha256
                )),
                Some(have) if have.publisher != want.publisher => out.push(format!(
                    "plugin '{}' is installed from publisher {:?} but {lock} pins {:?}",
                    want.name, have.publisher, want.publisher
                )),
                Some(_) => {}
            }
        }
        for have in installed {
            if self.get(&have.name).is_none() {
                out.push(format!(
                    "plugin '{}' {} is installed but not in {lock}",
                    have.name, have.version
                ));
            }
        }
        out
    }
}
