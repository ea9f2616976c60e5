//! The bundle format: `bundle.toml` (what the plugin is, what it may use, and the SHA-256 of
//! every payload file), its minisign signature `bundle.toml.minisig`, and the payload under
//! `payload/`. Packing a plugin directory, signing, and opening a bundle with every check.

use super::archive::{self, ArchiveError, ArchiveLimits, Entry};
use super::minisign::{SecretKey, Signature};
use crate::caps::Permissions;
use crate::plugins::discovery::{discover_one, EngineKind};
use crate::plugins::manifest::{Manifest, PluginKind};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

pub(crate) const BUNDLE_TOML: &str = "bundle.toml";
pub(crate) const SIGNATURE: &str = "bundle.toml.minisig";
pub(crate) const PAYLOAD: &str = "payload/";
/// The bundle format version this gatehost writes and reads.
pub(crate) const FORMAT: u32 = 1;

/// `bundle.toml`: the signed description of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleManifest {
    pub format: u32,
    pub name: String,
    pub version: String,
    pub kind: PluginKind,
    pub engine: EngineKind,
    /// The `gatehost:plugin` world version.
    pub api: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publisher: Option<String>,
    /// The plugin manifest's path inside the bundle.
    pub manifest: String,
    #[serde(default)]
    pub permissions: Permissions,
    pub files: Vec<FileHash>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHash {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("bundle.toml: {0}")]
    Description(String),
    #[error("entry '{path}' was changed: its SHA-256 is not the one bundle.toml lists")]
    Tampered { path: String },
    #[error("{0}")]
    Layout(String),
    #[error("the plugin manifest in the bundle: {0}")]
    Manifest(String),
    #[error("cannot pack {path}: {why}")]
    Pack { path: PathBuf, why: String },
    #[error("cannot sign: {0}")]
    Sign(String),
}

/// An opened bundle whose structure and hashes are checked (its signature is the trust
/// store's business).
#[derive(Debug, Clone)]
pub struct Bundle {
    pub description: BundleManifest,
    /// `bundle.toml` as stored: the bytes the signature covers.
    pub description_bytes: Vec<u8>,
    pub signature: Option<Signature>,
    /// The payload files, paths without the `payload/` prefix.
    pub payload: Vec<Entry>,
    /// SHA-256 of the whole bundle file (what `gatehost.lock` pins).
    pub sha256: String,
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

impl Bundle {
    /// The canonical file name, `<name>-<version>.ghp`.
    pub fn file_name(&self) -> String {
        format!("{}-{}.ghp", self.description.name, self.description.version)
    }

    /// The plugin manifest in the payload.
    pub fn manifest(&self) -> Result<Manifest, BundleError> {
        let entry = self
            .payload
            .iter()
            .find(|e| e.path == self.description.manifest)
            .ok_or_else(|| {
                BundleError::Layout(format!(
                    "bundle.toml names manifest '{}', which the payload lacks",
                    self.description.manifest
                ))
            })?;
        let text = std::str::from_utf8(&entry.data)
            .map_err(|_| BundleError::Manifest("it is not UTF-8 text".into()))?;
        Manifest::parse(text, Path::new(&self.description.manifest))
            .map_err(|e| BundleError::Manifest(e.message))
    }

    /// Open bundle bytes: the archive layout, `bundle.toml`, every payload hash, and the plugin
    /// manifest agreeing with `bundle.toml`.
    pub fn open(bytes: &[u8], limits: &ArchiveLimits) -> Result<Bundle, BundleError> {
        let entries = archive::read(bytes, limits)?;
        let mut it = entries.into_iter().peekable();
        let description_entry = match it.next() {
            Some(e) if e.path == BUNDLE_TOML => e,
            Some(e) => {
                return Err(BundleError::Layout(format!(
                    "the first entry must be bundle.toml, not '{}'",
                    e.path
                )))
            }
            None => return Err(BundleError::Layout("the bundle is empty".into())),
        };
        let signature = match it.next_if(|e| e.path == SIGNATURE) {
            Some(e) => {
                let text = std::str::from_utf8(&e.data).map_err(|_| {
                    BundleError::Layout("bundle.toml.minisig is not UTF-8 text".into())
                })?;
                let sig = Signature::parse(text)
                    .map_err(|e| BundleError::Layout(format!("bundle.toml.minisig: {e}")))?;
                // The untrusted comment may say anything (minisign does not sign it); the
                // layout around it must be minisign's, so that the archive stays canonical.
                if sig.to_file() != text {
                    return Err(BundleError::Layout(
                        "bundle.toml.minisig is not in minisign's layout (four lines, LF line endings, one final newline)".into(),
                    ));
                }
                Some(sig)
            }
            None => None,
        };
        let mut payload = Vec::new();
        for e in it {
            let Some(path) = e.path.strip_prefix(PAYLOAD) else {
                return Err(BundleError::Layout(format!(
                    "entry '{}' is outside payload/ (a bundle holds bundle.toml, bundle.toml.minisig and payload/...)",
                    e.path
                )));
            };
            payload.push(Entry {
                path: path.to_string(),
                data: e.data,
            });
        }
        if payload.windows(2).any(|w| w[0].path >= w[1].path) {
            return Err(BundleError::Layout(
                "payload entries are not in sorted order (the bundle was rewritten by another tool)".into(),
            ));
        }
        let text = std::str::from_utf8(&description_entry.data)
            .map_err(|_| BundleError::Description("it is not UTF-8 text".into()))?;
        let description: BundleManifest = toml::from_str(text)
            .map_err(|e| BundleError::Description(crate::model::one_line(&e.to_string())))?;
        if description.format != FORMAT {
            return Err(BundleError::Description(format!(
                "format {} is not supported (this gatehost reads format {FORMAT})",
                description.format
            )));
        }
        let bundle = Bundle {
            description,
            description_bytes: description_entry.data,
            signature,
            payload,
            sha256: sha256_hex(bytes),
        };
        bundle.check_contents()?;
        Ok(bundle)
    }

    /// Every payload file has the size and SHA-256 `bundle.toml` lists, nothing unlisted is
    /// there, and the plugin manifest agrees with `bundle.toml`.
    pub(crate) fn check_contents(&self) -> Result<(), BundleError> {
        check_hashes(&self.description.files, &self.payload)?;
        self.check_manifest()
    }

    /// The plugin manifest must say what `bundle.toml` says, so the signed description is the
    /// whole truth about names, kind, API and permissions.
    fn check_manifest(&self) -> Result<(), BundleError> {
        let m = self.manifest()?;
        let d = &self.description;
        let differs = |field: &str, a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| {
            BundleError::Layout(format!(
                "bundle.toml says {field} = {a:?} but the plugin manifest says {b:?}"
            ))
        };
        if m.name != d.name {
            return Err(differs("name", &d.name, &m.name));
        }
        if m.version != d.version {
            return Err(differs("version", &d.version, &m.version));
        }
        if m.kind != d.kind {
            return Err(differs("kind", &d.kind, &m.kind));
        }
        if m.api != d.api {
            return Err(differs("api", &d.api, &m.api));
        }
        if m.publisher != d.publisher {
            return Err(differs("publisher", &d.publisher, &m.publisher));
        }
        if m.permissions != d.permissions {
            return Err(differs("permissions", &d.permissions, &m.permissions));
        }
        let entry = m.entry.clone().unwrap_or_default();
        let engine = entry_engine(&entry);
        if engine != Some(d.engine) || !self.payload.iter().any(|e| e.path == entry) {
            return Err(BundleError::Layout(format!(
                "the plugin manifest's entry '{entry}' is not a {} file in the payload",
                d.engine
            )));
        }
        Ok(())
    }

    /// The bundle file: canonical archive of description, signature and payload.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut entries = vec![Entry {
            path: BUNDLE_TOML.into(),
            data: self.description_bytes.clone(),
        }];
        if let Some(sig) = &self.signature {
            entries.push(Entry {
                path: SIGNATURE.into(),
                data: sig.to_file().into_bytes(),
            });
        }
        entries.extend(self.payload.iter().map(|e| Entry {
            path: format!("{PAYLOAD}{}", e.path),
            data: e.data.clone(),
        }));
        archive::write(&entries)
    }

    /// Sign (or re-sign) with `key`; the bundle must name its publisher.
    /// Attach a signature made elsewhere (`minisign -Sm bundle.toml`); it is checked against
    /// the trust store like any other at verify and install.
    pub(crate) fn attach(&mut self, signature: Signature) {
        self.signature = Some(signature);
        self.sha256 = sha256_hex(&self.to_bytes());
    }

    pub fn sign(&mut self, key: &SecretKey) -> Result<(), BundleError> {
        let d = &self.description;
        let Some(publisher) = &d.publisher else {
            return Err(BundleError::Sign(format!(
                "plugin '{}' names no publisher; set `publisher` in its manifest and pack it again",
                d.name
            )));
        };
        let when = crate::pki::crypto::now_unix();
        let comment = format!(
            "gatehost bundle {} {} publisher:{publisher} timestamp:{when}",
            d.name, d.version
        );
        self.signature = Some(key.sign(&self.description_bytes, &comment));
        self.sha256 = sha256_hex(&self.to_bytes());
        Ok(())
    }
}

fn entry_engine(entry: &str) -> Option<EngineKind> {
    if entry.ends_with(".rhai") {
        Some(EngineKind::Rhai)
    } else if entry.ends_with(".wasm") {
        Some(EngineKind::Wasm)
    } else {
        None
    }
}

fn check_hashes(listed: &[FileHash], payload: &[Entry]) -> Result<(), BundleError> {
    for f in listed {
        match payload.iter().find(|e| e.path == f.path) {
            None => {
                return Err(BundleError::Layout(format!(
                    "bundle.toml lists '{}', which the payload lacks",
                    f.path
                )))
            }
            Some(e) if e.data.len() as u64 != f.size || sha256_hex(&e.data) != f.sha256 => {
                return Err(BundleError::Tampered {
                    path: format!("{PAYLOAD}{}", f.path),
                })
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = payload
        .iter()
        .find(|e| !listed.iter().any(|f| f.path == e.path))
    {
        return Err(BundleError::Layout(format!(
            "entry 'payload/{}' is not listed in bundle.toml",
            extra.path
        )));
    }
    if listed.len() != payload.len() {
        return Err(BundleError::Description("a file is listed twice".into()));
    }
    Ok(())
}

/// Pack the plugin whose manifest is `path` (or the one plugin manifest in directory `path`)
/// into an unsigned bundle.
pub fn pack(path: &Path, limits: &ArchiveLimits) -> Result<Bundle, BundleError> {
    let manifest_path = find_manifest(path)?;
    let err = |why: String| BundleError::Pack {
        path: manifest_path.clone(),
        why,
    };
    let found = discover_one(&manifest_path).map_err(|e| err(e.message))?;
    let m = &found.manifest;
    let base = manifest_path.parent().unwrap_or(Path::new("."));
    let entry_name = format!("{}.{}", m.name, found.engine);
    let manifest_name = format!("{}.toml", m.name);
    let mut payload = vec![Entry {
        path: entry_name.clone(),
        data: read_limited(&found.entry, limits).map_err(err)?,
    }];
    for file in &m.files {
        archive::check_path(file).map_err(|why| err(format!("files: '{file}': {why}")))?;
        if file == &entry_name || file == &manifest_name {
            return Err(err(format!(
                "files: '{file}' clashes with the plugin's own files"
            )));
        }
        // A link that leads out of the plugin's folder (to /etc/passwd, say) is not packed.
        let inside = base.canonicalize().map_err(|e| err(e.to_string()))?;
        if let Ok(target) = base.join(file).canonicalize() {
            if !target.starts_with(&inside) {
                return Err(err(format!(
                    "files: '{file}' is a link to {}, outside the plugin's folder; copy the file in instead",
                    target.display()
                )));
            }
        }
        payload.push(Entry {
            path: file.clone(),
            data: read_limited(&base.join(file), limits).map_err(err)?,
        });
    }
    // The payload manifest names the entry by its bundled name.
    let text = std::fs::read_to_string(&manifest_path).map_err(|e| err(e.to_string()))?;
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
    table.insert("entry".into(), toml::Value::String(entry_name));
    let manifest_text = toml::to_string(&table).map_err(|e| err(e.to_string()))?;
    payload.push(Entry {
        path: manifest_name.clone(),
        data: manifest_text.into_bytes(),
    });
    payload.sort_by(|a, b| a.path.cmp(&b.path));
    if let Some(w) = payload.windows(2).find(|w| w[0].path == w[1].path) {
        return Err(err(format!("'{}' is packed twice", w[0].path)));
    }
    let total: u64 = payload.iter().map(|e| e.data.len() as u64).sum();
    if total > limits.max_total_bytes {
        return Err(err(format!(
            "the files total {total} bytes; the limit is {}",
            limits.max_total_bytes
        )));
    }
    let description = BundleManifest {
        format: FORMAT,
        name: m.name.clone(),
        version: m.version.clone(),
        kind: m.kind,
        engine: found.engine,
        api: m.api.clone(),
        description: m.description.clone(),
        publisher: m.publisher.clone(),
        manifest: manifest_name,
        permissions: m.permissions.clone(),
        files: payload
            .iter()
            .map(|e| FileHash {
                path: e.path.clone(),
                size: e.data.len() as u64,
                sha256: sha256_hex(&e.data),
            })
            .collect(),
    };
    let description_text = format!(
        "# gatehost plugin bundle: what it is, what it may use, and the SHA-256 of every payload file.\n{}",
        toml::to_string(&description).map_err(|e| err(e.to_string()))?
    );
    let mut bundle = Bundle {
        description,
        description_bytes: description_text.into_bytes(),
        signature: None,
        payload,
        sha256: String::new(),
    };
    bundle.check_manifest()?;
    bundle.sha256 = sha256_hex(&bundle.to_bytes());
    Ok(bundle)
}

fn find_manifest(path: &Path) -> Result<PathBuf, BundleError> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let err = |why: String| BundleError::Pack {
        path: path.to_path_buf(),
        why,
    };
    let entries = std::fs::read_dir(path).map_err(|e| err(e.to_string()))?;
    let mut manifests: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .filter(|p| p.file_name().is_some_and(|n| n != "Cargo.toml"))
        .collect();
    manifests.sort();
    match manifests.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(err("no plugin manifest (*.toml) in the directory".into())),
        several => Err(err(format!(
            "several manifests ({}); name the one to pack",
            several
                .iter()
                .filter_map(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn read_limited(path: &Path, limits: &ArchiveLimits) -> Result<Vec<u8>, String> {
    let size = std::fs::metadata(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .len();
    if size > limits.max_entry_bytes {
        return Err(format!(
            "{} is {size} bytes; a bundle entry may be at most {} bytes",
            path.display(),
            limits.max_entry_bytes
        ));
    }
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}
