//! The `certs` capability: key handles and X.509 certificates, for plugins and for the
//! `gatehost certs` commands. A key handle's private half never leaves the host: plugins get a
//! handle and a non-secret reference (`state:<name>` for keys the host generated into the
//! plugin's state, `file:<path>` for keys loaded from a declared file root).

pub mod rhai;
pub mod wasm;

pub use crate::pki::{keys, x509};

pub use keys::{KeyAlgorithm, PrivateKey};
pub use x509::{CertificateInfo, Subject};

use super::CapContext;
use crate::model::is_plugin_name;
use crate::model::{ErrorKind, PluginError};
use std::path::PathBuf;
use std::sync::Arc;

/// A private key held for a plugin.
#[derive(Debug, Clone)]
pub struct KeyHandle {
    pub reference: String,
    pub key: Arc<PrivateKey>,
}

fn state_key_path(ctx: &CapContext, name: &str) -> Result<PathBuf, PluginError> {
    if !is_plugin_name(name) {
        return Err(PluginError::new(
            ErrorKind::InvalidInput,
            format!("key name '{name}' must be 1-64 characters of a-z, 0-9, '-' or '_'"),
        ));
    }
    Ok(ctx
        .state_dir
        .join("keys")
        .join(&ctx.namespace)
        .join(format!("{name}.key")))
}

/// Generate a key and write it (mode 0600) to `<state>/keys/<namespace>/<name>.key`.
pub fn generate_key(
    ctx: &CapContext,
    algorithm: KeyAlgorithm,
    name: &str,
) -> Result<KeyHandle, PluginError> {
    let path = state_key_path(ctx, name)?;
    let key = PrivateKey::generate(algorithm)?;
    key.write_new_file(&path)?;
    Ok(KeyHandle {
        reference: format!("state:{name}"),
        key: Arc::new(key),
    })
}

/// Where the gateway's operator gives the passphrase of encrypted key files: the host reads it,
/// plugins never see it (the same variable the `gatehost certs` commands read).
pub(crate) const PASSPHRASE_ENV: &str = "GATEHOST_KEY_PASSPHRASE";

/// Load a PEM key from a file under the plugin's declared file roots. An encrypted key is
/// decrypted with the plugin's passphrase, or else with [`PASSPHRASE_ENV`].
pub fn load_key(
    ctx: &CapContext,
    path: &str,
    passphrase: Option<&str>,
) -> Result<KeyHandle, PluginError> {
    let text = ctx.read_text(path)?;
    let operator = std::env::var(PASSPHRASE_ENV).ok();
    let key = PrivateKey::from_pem(&text, passphrase.or(operator.as_deref()), path)?;
    Ok(KeyHandle {
        reference: format!("file:{path}"),
        key: Arc::new(key),
    })
}

/// Open a key by the reference an earlier call returned.
pub fn open_key(ctx: &CapContext, reference: &str) -> Result<KeyHandle, PluginError> {
    if let Some(name) = reference.strip_prefix("state:") {
        let path = state_key_path(ctx, name)?;
        let text = std::fs::read_to_string(&path).map_err(|e| {
            PluginError::new(
                ErrorKind::NotFound,
                format!("key '{reference}' cannot be opened: {e}"),
            )
        })?;
        let key = PrivateKey::from_pem(&text, None, reference)?;
        return Ok(KeyHandle {
            reference: reference.to_string(),
            key: Arc::new(key),
        });
    }
    if let Some(path) = reference.strip_prefix("file:") {
        return load_key(ctx, path, None);
    }
    Err(PluginError::new(
        ErrorKind::InvalidInput,
        format!("key reference '{reference}' must start with state: or file:"),
    ))
}

pub(crate) fn read_chain(
    ctx: &CapContext,
    path: &str,
) -> Result<Vec<CertificateInfo>, PluginError> {
    let text = ctx.read_text(path)?;
    Ok(x509::parse_pem_certs(&text, path)?
        .iter()
        .map(|der| x509::info(der))
        .collect())
}

pub fn key_matches(
    ctx: &CapContext,
    key: &PrivateKey,
    cert_path: &str,
) -> Result<bool, PluginError> {
    let text = ctx.read_text(cert_path)?;
    let certs = x509::parse_pem_certs(&text, cert_path)?;
    Ok(x509::key_matches(key, &certs[0]))
}

pub fn verify_chain(ctx: &CapContext, chain_path: &str, ca_path: &str) -> Result<(), PluginError> {
    let chain = x509::parse_pem_certs(&ctx.read_text(chain_path)?, chain_path)?;
    let cas = x509::parse_pem_certs(&ctx.read_text(ca_path)?, ca_path)?;
    let now = crate::pki::crypto::now_unix() as i64;
    x509::verify_chain(&chain, &cas, now, chain_path, ca_path)
}

/// Run every PEM, key and certificate parsing entry point on untrusted bytes. Errors are fine,
/// panics are bugs: the fuzz target (`host/fuzz`) and the robustness test call this.
pub fn parse_untrusted(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = PrivateKey::from_pem(&text, Some("passphrase"), "input");
    let _ = PrivateKey::from_pem(&text, None, "input");
    if let Ok(ders) = x509::parse_pem_certs(&text, "input") {
        for der in &ders {
            let _ = x509::info(der);
            let _ = x509::check_validity(der, 1_700_000_000, "input");
        }
        let _ = x509::verify_chain(&ders, &ders, 1_700_000_000, "input", "input");
        let _ = x509::chain_pem(&text, &text, "input", "input");
    }
    let _ = Subject::parse(&text);
}
