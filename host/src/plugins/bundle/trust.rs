//! The trust store: which publishers' keys this gateway accepts bundles from, which keys are
//! revoked, and whether unsigned bundles are allowed (development only).
//!
//! Keys are minisign `.pub` files in the trust directory, named after their publisher:
//! `acme.pub`, or `acme@2027.pub` for a second key of the same publisher. The config can add
//! keys inline (`[bundles.publishers]`) and revoke key ids (`[bundles] revoked_keys`).

use super::format::Bundle;
use super::minisign::{KeyId, MinisignError, PublicKey};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    /// (publisher, key)
    pub keys: Vec<(String, PublicKey)>,
    pub revoked: BTreeSet<KeyId>,
    pub allow_unsigned: bool,
    /// Where the keys came from, for messages.
    pub dir: PathBuf,
}

/// How far a bundle is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    Signed {
        publisher: String,
        key_id: KeyId,
    },
    /// Unsigned, accepted because the config allows unsigned bundles.
    Unsigned,
}

impl std::fmt::Display for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trust::Signed { publisher, key_id } => {
                write!(f, "signed by {publisher} (key {key_id})")
            }
            Trust::Unsigned => f.write_str("unsigned (allowed by [bundles] allow_unsigned)"),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TrustError {
    #[error("the bundle is not signed (sign it with `gatehost plugin sign`; unsigned bundles need `[bundles] allow_unsigned = true`, for development only)")]
    Unsigned,
    #[error("the bundle is signed by key {0}, which is revoked")]
    Revoked(KeyId),
    #[error("the bundle is signed by key {key_id}, which is not in the trust store ({dir}); add publisher '{publisher}''s public key there as {publisher}.pub")]
    UnknownKey {
        key_id: KeyId,
        publisher: String,
        dir: String,
    },
    #[error("the bundle says publisher '{claimed}' but is signed by key {key_id} of publisher '{actual}' (a trusted key's publisher is its file name: <publisher>.pub)")]
    WrongPublisher {
        claimed: String,
        actual: String,
        key_id: KeyId,
    },
    #[error("the signature of bundle.toml is invalid: {0}")]
    Signature(MinisignError),
    #[error("trust store: {0}")]
    Store(String),
}

impl TrustStore {
    /// Load the `.pub` files in `dir` (a missing directory holds no keys) plus inline keys.
    pub fn load(
        dir: &Path,
        inline: &[(String, String)],
        revoked: &[String],
        allow_unsigned: bool,
    ) -> Result<TrustStore, TrustError> {
        let mut store = TrustStore {
            allow_unsigned,
            dir: dir.to_path_buf(),
            ..TrustStore::default()
        };
        match std::fs::read_dir(dir) {
            Ok(entries) => {
                let mut files: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "pub"))
                    .collect();
                files.sort();
                for path in files {
                    store.keys.push(read_key_file(&path)?);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(TrustError::Store(format!("{}: {e}", dir.display()))),
        }
        for (publisher, key) in inline {
            let key = PublicKey::parse(key)
                .map_err(|e| TrustError::Store(format!("[bundles.publishers] {publisher}: {e}")))?;
            store.keys.push((publisher.clone(), key));
        }
        for id in revoked {
            let id = id
                .parse()
                .map_err(|e| TrustError::Store(format!("[bundles] revoked_keys: {e}")))?;
            store.revoked.insert(id);
        }
        Ok(store)
    }

    /// A store holding only the keys in `path` (a `.pub` file or a directory of them).
    pub(crate) fn from_path(path: &Path) -> Result<TrustStore, TrustError> {
        if path.is_dir() {
            return TrustStore::load(path, &[], &[], false);
        }
        Ok(TrustStore {
            keys: vec![read_key_file(path)?],
            dir: path.to_path_buf(),
            ..TrustStore::default()
        })
    }

    /// Whether this gateway accepts `bundle`, and on whose authority.
    pub fn verify(&self, bundle: &Bundle) -> Result<Trust, TrustError> {
        let Some(sig) = &bundle.signature else {
            return if self.allow_unsigned {
                Ok(Trust::Unsigned)
            } else {
                Err(TrustError::Unsigned)
            };
        };
        if self.revoked.contains(&sig.key_id) {
            return Err(TrustError::Revoked(sig.key_id));
        }
        let claimed = bundle.description.publisher.clone().unwrap_or_default();
        let Some((publisher, key)) = self.keys.iter().find(|(_, k)| k.id == sig.key_id) else {
            return Err(TrustError::UnknownKey {
                key_id: sig.key_id,
                publisher: claimed,
                dir: self.dir.display().to_string(),
            });
        };
        key.verify(&bundle.description_bytes, sig)
            .map_err(TrustError::Signature)?;
        if *publisher != claimed {
            return Err(TrustError::WrongPublisher {
                claimed,
                actual: publisher.clone(),
                key_id: sig.key_id,
            });
        }
        Ok(Trust::Signed {
            publisher: publisher.clone(),
            key_id: sig.key_id,
        })
    }
}

/// A publisher key file: the publisher is the file name up to `@` or `.pub`.
fn read_key_file(path: &Path) -> Result<(String, PublicKey), TrustError> {
    let failed = |e: &dyn std::fmt::Display| TrustError::Store(format!("{}: {e}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| failed(&e))?;
    let key = PublicKey::parse(&text).map_err(|e| failed(&e))?;
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let publisher = stem.split('@').next().unwrap_or_default().to_string();
    Ok((publisher, key))
}
