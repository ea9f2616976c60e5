//! The `crypto` capability: hashes, HMAC, encodings, SAS tokens and JWTs for plugins. The
//! primitives are the host's ([`crate::pki::crypto`]); this module adds what only a plugin needs,
//! reading the files it names under its declared file roots.

pub mod rhai;
pub mod wasm;

use crate::model::PluginError;
pub use crate::pki::crypto::*;
pub use crate::pki::jwt::*;

/// `jwt_sign` for a plugin: the x5c chain file must lie under its declared file roots.
pub(crate) fn plugin_jwt(
    ctx: &crate::caps::CapContext,
    key: &crate::caps::certs::PrivateKey,
    header_json: &str,
    claims_json: &str,
    x5c_chain_file: Option<&str>,
) -> Result<String, PluginError> {
    let chain = x5c_chain_file.map(|f| ctx.read_text(f)).transpose()?;
    let x5c = chain.as_deref().zip(x5c_chain_file);
    jwt_sign(key, header_json, claims_json, x5c, None)
}

/// `mindconnect_jwt` for a plugin: the chain file must lie under its declared file roots.
pub(crate) fn plugin_mindconnect_jwt(
    ctx: &crate::caps::CapContext,
    key: &crate::caps::certs::PrivateKey,
    chain_file: &str,
    client_id: &str,
    tenant: &str,
    ttl_secs: u64,
) -> Result<String, PluginError> {
    let chain = ctx.read_text(chain_file)?;
    mindconnect_jwt(key, &chain, chain_file, client_id, tenant, ttl_secs)
}
