//! The `kv` capability: a small key-value store per namespace (one per plugin unless its manifest
//! names one), kept in memory and persisted to `<state>/kv/<namespace>.json` (mode 0600) on every
//! change.

pub mod rhai;
pub mod wasm;

use crate::model::{ErrorKind, PluginError};
use base64::Engine as _;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub(crate) const MAX_KEY_BYTES: usize = 256;
pub(crate) const MAX_VALUE_BYTES: usize = 64 * 1024;
pub(crate) const MAX_ENTRIES: usize = 1024;
/// Keys and values of one namespace together, by default (`[limits.kv] max_kib`). Every
/// change rewrites the namespace's file, so this also bounds the disk written per change.
pub(crate) const MAX_NAMESPACE_BYTES: usize = 1024 * 1024;

/// How much one namespace may hold (`[limits.kv]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLimits {
    pub max_bytes: usize,
    pub max_entries: usize,
}

impl Default for KvLimits {
    fn default() -> Self {
        KvLimits {
            max_bytes: MAX_NAMESPACE_BYTES,
            max_entries: MAX_ENTRIES,
        }
    }
}

/// Hands out one shared [`KvNamespace`] per namespace name.
#[derive(Debug, Clone, Default)]
pub struct KvRegistry {
    dir: Option<PathBuf>,
    limits: KvLimits,
    namespaces: Arc<Mutex<HashMap<String, Arc<KvNamespace>>>>,
}

impl KvRegistry {
    /// Namespaces persisted under `<state_dir>/kv`.
    pub fn persistent(state_dir: &Path) -> Self {
        KvRegistry {
            dir: Some(state_dir.join("kv")),
            limits: KvLimits::default(),
            namespaces: Default::default(),
        }
    }

    /// The same registry with these limits for its namespaces.
    pub(crate) fn with_limits(mut self, limits: KvLimits) -> Self {
        self.limits = limits;
        self
    }

    pub(crate) fn in_memory() -> Self {
        KvRegistry::default()
    }

    pub fn namespace(&self, name: &str) -> Arc<KvNamespace> {
        let mut map = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(name.to_string())
            .or_insert_with(|| {
                let file = self.dir.as_ref().map(|d| d.join(format!("{name}.json")));
                Arc::new(KvNamespace::load(name, file, self.limits))
            })
            .clone()
    }
}

#[derive(Debug)]
pub struct KvNamespace {
    name: String,
    file: Option<PathBuf>,
    limits: KvLimits,
    entries: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl KvNamespace {
    fn load(name: &str, file: Option<PathBuf>, limits: KvLimits) -> Self {
        let entries = file
            .as_deref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|bytes| match decode_file(&bytes) {
                Ok(entries) => Some(entries),
                Err(e) => {
                    tracing::warn!(
                        namespace = name,
                        "kv file is unreadable, starting empty: {e}"
                    );
                    None
                }
            })
            .unwrap_or_default();
        KvNamespace {
            name: name.to_string(),
            file,
            limits,
            entries: Mutex::new(entries),
        }
    }

    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, PluginError> {
        check_key(key)?;
        Ok(self.lock().get(key).cloned())
    }

    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), PluginError> {
        check_key(key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(PluginError::new(
                ErrorKind::LimitExceeded,
                format!(
                    "kv value for '{key}' is {} bytes; the limit is {MAX_VALUE_BYTES}",
                    value.len()
                ),
            ));
        }
        let mut entries = self.lock();
        let max_entries = self.limits.max_entries;
        if !entries.contains_key(key) && entries.len() >= max_entries {
            return Err(PluginError::new(
                ErrorKind::LimitExceeded,
                format!(
                    "kv namespace '{}' already holds {max_entries} entries",
                    self.name
                ),
            ));
        }
        let held: usize = entries
            .iter()
            .filter(|(k, _)| k.as_str() != key)
            .map(|(k, v)| k.len() + v.len())
            .sum();
        if held + key.len() + value.len() > self.limits.max_bytes {
            return Err(PluginError::new(
                ErrorKind::LimitExceeded,
                format!(
                    "kv namespace '{}' holds {held} bytes; '{key}' with {} more would pass its limit of {} ([limits.kv] max_kib)",
                    self.name,
                    value.len(),
                    self.limits.max_bytes
                ),
            ));
        }
        entries.insert(key.to_string(), value.to_vec());
        self.persist(&entries)
    }

    pub(crate) fn delete(&self, key: &str) -> Result<bool, PluginError> {
        check_key(key)?;
        let mut entries = self.lock();
        let existed = entries.remove(key).is_some();
        if existed {
            self.persist(&entries)?;
        }
        Ok(existed)
    }

    pub fn keys(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Write aside, then rename: a crash leaves the old or the new file, never half of one.
    fn persist(&self, entries: &BTreeMap<String, Vec<u8>>) -> Result<(), PluginError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let encoded: BTreeMap<&str, String> = entries
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str(),
                    base64::engine::general_purpose::STANDARD.encode(v),
                )
            })
            .collect();
        let body = serde_json::to_vec_pretty(&encoded).expect("map of strings serializes");
        // Mode 0600 in a 0700 folder: a namespace can hold a credential.
        crate::private_files::write(file, &body).map_err(|e| {
            PluginError::new(
                ErrorKind::Io,
                format!("cannot write kv file {}: {e}", file.display()),
            )
        })
    }
}

fn check_key(key: &str) -> Result<(), PluginError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(PluginError::new(
            ErrorKind::InvalidInput,
            format!(
                "kv key must be 1 to {MAX_KEY_BYTES} bytes, got {}",
                key.len()
            ),
        ));
    }
    Ok(())
}

fn decode_file(bytes: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let encoded: BTreeMap<String, String> =
        serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    encoded
        .into_iter()
        .map(|(k, v)| {
            base64::engine::general_purpose::STANDARD
                .decode(v)
                .map(|v| (k, v))
                .map_err(|e| e.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_persist_across_registries() {
        let dir = tempfile::tempdir().unwrap();
        let ns = KvRegistry::persistent(dir.path()).namespace("p");
        ns.set("a", b"1").unwrap();
        ns.set("b", &[0, 255]).unwrap();
        assert!(ns.delete("a").unwrap());
        let again = KvRegistry::persistent(dir.path()).namespace("p");
        assert_eq!(again.get("b").unwrap(), Some(vec![0, 255]));
        assert_eq!(again.get("a").unwrap(), None);
    }

    #[test]
    fn a_namespace_is_bounded_in_bytes() {
        let limits = KvLimits {
            max_bytes: 100_000,
            ..KvLimits::default()
        };
        let ns = KvRegistry::in_memory().with_limits(limits).namespace("p");
        ns.set("a", &vec![1; 60_000]).unwrap();
        let err = ns.set("b", &vec![2; 60_000]).unwrap_err();
        assert_eq!(err.kind, ErrorKind::LimitExceeded);
        assert_eq!(
            err.message,
            "kv namespace 'p' holds 60001 bytes; 'b' with 60000 more would pass its limit of 100000 ([limits.kv] max_kib)"
        );
        // Replacing a value counts the new one only.
        ns.set("a", &vec![3; 64_000]).unwrap();
        assert_eq!(ns.get("b").unwrap(), None);
    }

    #[test]
    fn limits_are_enforced_with_clear_errors() {
        let ns = KvRegistry::in_memory().namespace("p");
        let err = ns.set("", b"x").unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidInput);
        let err = ns.set("k", &vec![0; MAX_VALUE_BYTES + 1]).unwrap_err();
        assert_eq!(err.kind, ErrorKind::LimitExceeded);
        assert!(err.message.contains("limit"), "{err}");
    }
}
