//! Installed plugins on disk, and the operations that change them (install, upgrade, remove,
//! sync from a lock). Every change is atomic: a bundle is unpacked aside, checked, and made live
//! by renaming one symlink; the lock file is rewritten aside and renamed too.
//!
//! ```text
//! <state>/plugins/<name>  ->  .store/<name>-<version>-<sha12>-<id>/      (the live version)
//! <state>/plugins/.store/<name>-<version>-<sha12>-<id>/
//!     bundle.toml  bundle.toml.minisig  installed.toml  payload/...
//! ```

use super::archive::{ArchiveLimits, Entry};
use super::format::{Bundle, BundleError, BundleManifest, BUNDLE_TOML, SIGNATURE};
use super::lock::LOCK_FILE;
use super::lock::{Lock, LockEntry, LockError};
use super::minisign::Signature;
use super::trust::{Trust, TrustError, TrustStore};
use crate::config::Config;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const STORE: &str = ".store";
const INSTALLED: &str = "installed.toml";

/// Where a site's bundles go and what it trusts.
#[derive(Debug, Clone)]
pub struct Site {
    /// `<state>/plugins`
    pub root: PathBuf,
    pub lock_path: PathBuf,
    pub trust: TrustStore,
    pub limits: ArchiveLimits,
}

impl Site {
    /// Where installed bundles live (`<state>/plugins`), the lock file and the trust store.
    pub(crate) fn for_config(config: &Config) -> Result<Site, TrustError> {
        let b = &config.bundles;
        let trust_dir = b
            .trust_dir
            .as_ref()
            .map(|d| config.resolve(d))
            .unwrap_or_else(|| config.state_dir().join("trust"));
        let inline: Vec<(String, String)> = b
            .publishers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let trust = TrustStore::load(&trust_dir, &inline, &b.revoked_keys, b.allow_unsigned)?;
        let mut limits = ArchiveLimits::default();
        if let Some(mib) = b.max_entry_mib {
            limits.max_entry_bytes = mib << 20;
        }
        Ok(Site {
            root: config.state_dir().join("plugins"),
            lock_path: config.resolve(b.lock_file.as_deref().unwrap_or(Path::new(LOCK_FILE))),
            trust,
            limits,
        })
    }
}

/// `installed.toml`: where an installed bundle came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallRecord {
    /// SHA-256 of the bundle file.
    pub sha256: String,
    pub source: String,
    pub installed_at: u64,
}

/// An installed plugin, checked against its bundle description and the trust store.
#[derive(Debug, Clone)]
pub struct Installed {
    pub description: BundleManifest,
    pub record: InstallRecord,
    pub trust: Trust,
    /// The plugin manifest inside the installed payload (what discovery loads).
    pub manifest_path: PathBuf,
}

impl Installed {
    pub(crate) fn lock_entry(&self) -> LockEntry {
        lock_entry(&self.description, &self.record)
    }
}

fn lock_entry(description: &BundleManifest, record: &InstallRecord) -> LockEntry {
    LockEntry {
        name: description.name.clone(),
        version: description.version.clone(),
        sha256: record.sha256.clone(),
        publisher: description.publisher.clone(),
    }
}

/// An installed plugin as read from disk, not checked yet.
struct OnDisk {
    bundle: Bundle,
    record: InstallRecord,
    manifest_path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("installed plugin '{name}': {why}")]
    Installed { name: String, why: String },
    #[error("plugin '{name}' {version} is already installed from a different bundle (SHA-256 {installed}); publish a changed plugin under a new version, or `gatehost plugin remove {name}` first")]
    SameVersionChanged {
        name: String,
        version: String,
        installed: String,
    },
    #[error("plugin '{name}' {version} asks for permissions {from} did not have: {added}; review them and run again with --approve-permissions")]
    NewPermissions {
        name: String,
        version: String,
        from: String,
        added: String,
    },
    #[error("plugin '{0}' is not installed from a bundle")]
    NotInstalled(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What an install did.
#[derive(Debug, Clone)]
pub struct InstallOutcome {
    pub installed: Installed,
    /// The version that was live before, if any.
    pub previous: Option<String>,
    /// The same bundle was already installed; nothing changed on disk.
    pub unchanged: bool,
}

impl Site {
    fn store(&self) -> PathBuf {
        self.root.join(STORE)
    }

    /// The names of the installed plugins (the live symlinks).
    pub fn names(&self) -> Result<Vec<String>, StoreError> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&self.root)(e)),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Read an installed plugin back and check it: the files on disk still hash to what its
    /// description lists, and the trust store still accepts its signature.
    pub fn installed(&self, name: &str) -> Result<Installed, StoreError> {
        self.verify(name, self.read(name)?)
    }

    /// An installed plugin's description, signature, record and payload, as they are on disk.
    fn read(&self, name: &str) -> Result<OnDisk, StoreError> {
        let dir = self.root.join(name);
        let bad = |why: String| StoreError::Installed {
            name: name.to_string(),
            why,
        };
        let description_bytes =
            std::fs::read(dir.join(BUNDLE_TOML)).map_err(|e| bad(format!("bundle.toml: {e}")))?;
        let signature = match std::fs::read_to_string(dir.join(SIGNATURE)) {
            Ok(text) => {
                Some(Signature::parse(&text).map_err(|e| bad(format!("{SIGNATURE}: {e}")))?)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(bad(format!("{SIGNATURE}: {e}"))),
        };
        let record: InstallRecord = std::fs::read_to_string(dir.join(INSTALLED))
            .map_err(|e| e.to_string())
            .and_then(|t| toml::from_str(&t).map_err(|e| e.to_string()))
            .map_err(|e| bad(format!("{INSTALLED}: {e}")))?;
        let description: BundleManifest = std::str::from_utf8(&description_bytes)
            .map_err(|e| e.to_string())
            .and_then(|t| toml::from_str(t).map_err(|e| e.to_string()))
            .map_err(|e| bad(format!("bundle.toml: {e}")))?;
        let mut payload = Vec::new();
        for f in &description.files {
            let data = std::fs::read(dir.join("payload").join(&f.path))
                .map_err(|e| bad(format!("payload/{}: {e}", f.path)))?;
            payload.push(Entry {
                path: f.path.clone(),
                data,
            });
        }
        Ok(OnDisk {
            manifest_path: dir.join("payload").join(&description.manifest),
            bundle: Bundle {
                description,
                description_bytes,
                signature,
                payload,
                sha256: record.sha256.clone(),
            },
            record,
        })
    }

    /// Check what [`Site::read`] found: contents against the description, the signature
    /// against the trust store, and that the bundle is the plugin it is installed as.
    fn verify(&self, name: &str, on_disk: OnDisk) -> Result<Installed, StoreError> {
        let bad = |why: String| StoreError::Installed {
            name: name.to_string(),
            why,
        };
        let bundle = on_disk.bundle;
        bundle
            .check_contents()
            .map_err(|e| bad(format!("changed on disk since it was installed: {e}")))?;
        let trust = self.trust.verify(&bundle).map_err(|e| bad(e.to_string()))?;
        if bundle.description.name != name {
            return Err(bad(format!(
                "its bundle is for plugin '{}'",
                bundle.description.name
            )));
        }
        Ok(Installed {
            description: bundle.description,
            record: on_disk.record,
            trust,
            manifest_path: on_disk.manifest_path,
        })
    }

    /// Install or upgrade from bundle bytes. Refuses what the trust store refuses, a changed
    /// bundle under an installed version, and new permissions unless `approve_permissions`.
    pub fn install(
        &self,
        bytes: &[u8],
        source: &str,
        approve_permissions: bool,
    ) -> Result<InstallOutcome, StoreError> {
        let bundle = Bundle::open(bytes, &self.limits)?;
        let trust = self.trust.verify(&bundle)?;
        let d = &bundle.description;
        // The live version, checked once: an upgrade may replace a damaged copy or one whose
        // key was revoked since, so a failed check does not stop the install.
        let current = self.read(&d.name).ok().map(|on_disk| {
            let (description, record) =
                (on_disk.bundle.description.clone(), on_disk.record.clone());
            let limits = on_disk.bundle.manifest().map(|m| m.limits).ok();
            (description, record, limits, self.verify(&d.name, on_disk))
        });
        if let Some((cd, record, old_limits, checked)) = &current {
            if cd.version == d.version && record.sha256 == bundle.sha256 {
                // The same bundle again: nothing to do, unless the installed copy was damaged.
                if let Ok(installed) = checked {
                    let mut lock = Lock::read(&self.lock_path)?;
                    lock.set(installed.lock_entry());
                    lock.write(&self.lock_path)?;
                    return Ok(InstallOutcome {
                        installed: installed.clone(),
                        previous: Some(cd.version.clone()),
                        unchanged: true,
                    });
                }
            } else if cd.version == d.version {
                return Err(StoreError::SameVersionChanged {
                    name: d.name.clone(),
                    version: d.version.clone(),
                    installed: record.sha256.clone(),
                });
            }
            let mut added = added_permissions(cd, d);
            if let (Some(old), Ok(new)) = (old_limits, bundle.manifest()) {
                added.extend(raised_limits(old, &new.limits));
            }
            if !added.is_empty() && !approve_permissions {
                return Err(StoreError::NewPermissions {
                    name: d.name.clone(),
                    version: d.version.clone(),
                    from: cd.version.clone(),
                    added: added.join(", "),
                });
            }
        }
        let record = InstallRecord {
            sha256: bundle.sha256.clone(),
            source: source.to_string(),
            installed_at: crate::pki::crypto::now_unix(),
        };
        // A fresh directory per install, so the live one is never written to.
        let target_name = format!(
            "{}-{}-{}-{}",
            d.name,
            d.version,
            &bundle.sha256[..12],
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let old_dir = std::fs::read_link(self.root.join(&d.name))
            .ok()
            .map(|t| self.root.join(t));
        self.unpack(&bundle, &record, &target_name)?;
        self.point(&d.name, &target_name)?;
        let installed = self.installed(&d.name)?;
        let mut lock = Lock::read(&self.lock_path)?;
        lock.set(installed.lock_entry());
        lock.write(&self.lock_path)?;
        if let Some(old_dir) = old_dir {
            let _ = std::fs::remove_dir_all(old_dir);
        }
        tracing::info!(plugin = %d.name, version = %d.version, %trust, "plugin installed");
        Ok(InstallOutcome {
            installed,
            previous: current.map(|(cd, _, _, _)| cd.version),
            unchanged: false,
        })
    }

    /// Write the bundle's files into `.store/<target_name>` through a temporary directory.
    fn unpack(
        &self,
        bundle: &Bundle,
        record: &InstallRecord,
        target_name: &str,
    ) -> Result<(), StoreError> {
        let store = self.store();
        std::fs::create_dir_all(&store).map_err(io(&store))?;
        let tmp = store.join(format!(".tmp-{target_name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let result = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(tmp.join("payload"))?;
            std::fs::write(tmp.join(BUNDLE_TOML), &bundle.description_bytes)?;
            if let Some(sig) = &bundle.signature {
                std::fs::write(tmp.join(SIGNATURE), sig.to_file())?;
            }
            for e in &bundle.payload {
                let path = tmp.join("payload").join(&e.path);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(path, &e.data)?;
            }
            let record = toml::to_string(record).expect("the record serializes");
            std::fs::write(tmp.join(INSTALLED), record)?;
            Ok(())
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(io(&tmp)(e));
        }
        let target = store.join(target_name);
        std::fs::rename(&tmp, &target).map_err(io(&target))
    }

    /// Make `<root>/<name>` point at `.store/<target_name>` in one rename.
    fn point(&self, name: &str, target_name: &str) -> Result<(), StoreError> {
        let link = self.root.join(name);
        let tmp = self
            .root
            .join(format!(".{name}.link-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(Path::new(STORE).join(target_name), &tmp).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &link).map_err(io(&link))
    }

    /// Remove an installed plugin: its live link first (one unlink), then its files and its
    /// lock entry.
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        let link = self.root.join(name);
        if name.starts_with('.') || std::fs::symlink_metadata(&link).is_err() {
            return Err(StoreError::NotInstalled(name.to_string()));
        }
        let target = std::fs::read_link(&link).ok().map(|t| self.root.join(t));
        std::fs::remove_file(&link).map_err(io(&link))?;
        if let Some(target) = target {
            let _ = std::fs::remove_dir_all(target);
        }
        let mut lock = Lock::read(&self.lock_path)?;
        lock.remove(name);
        lock.write(&self.lock_path)?;
        Ok(())
    }

    /// The lock entries of everything installed and readable (whether its checks pass is
    /// [`Site::installed`]'s business, reported by the registry at every load).
    pub(crate) fn installed_entries(&self) -> Result<Vec<LockEntry>, StoreError> {
        Ok(self
            .names()?
            .into_iter()
            .filter_map(|n| self.read(&n).ok())
            .map(|d| lock_entry(&d.bundle.description, &d.record))
            .collect())
    }

    /// Every difference between the installed plugins and the lock file.
    pub(crate) fn lock_differences(&self) -> Result<Vec<String>, StoreError> {
        let lock = Lock::read(&self.lock_path)?;
        Ok(lock.differences(&self.installed_entries()?, &self.lock_path))
    }
}

/// The limits a new manifest asks to raise above the installed one's (a limit the old one
/// did not set counts as the config's, so setting one is raising it).
pub(crate) fn raised_limits(
    old: &crate::engine::limits::LimitOverrides,
    new: &crate::engine::limits::LimitOverrides,
) -> Vec<String> {
    old.entries()
        .into_iter()
        .zip(new.entries())
        .filter_map(|((name, was), (_, now))| match (was, now) {
            (Some(was), Some(now)) if now > was => {
                Some(format!("limit {name} = {now} (was {was})"))
            }
            (None, Some(now)) => Some(format!("limit {name} = {now}")),
            _ => None,
        })
        .collect()
}

/// Endpoints and file roots `new` declares that `old` did not, and a changed kv namespace.
pub(crate) fn added_permissions(old: &BundleManifest, new: &BundleManifest) -> Vec<String> {
    let (o, n) = (&old.permissions, &new.permissions);
    let mut added: Vec<String> = n
        .endpoints
        .iter()
        .filter(|e| !o.endpoints.contains(e))
        .map(|e| format!("endpoint {e}"))
        .collect();
    added.extend(
        n.file_roots
            .iter()
            .filter(|r| !o.file_roots.contains(r))
            .map(|r| format!("file root {r}")),
    );
    if n.kv_namespace != o.kv_namespace {
        added.push(format!(
            "kv namespace {}",
            n.kv_namespace.as_deref().unwrap_or(&new.name)
        ));
    }
    added
}
