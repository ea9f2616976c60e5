//! The `certs` capability: key handles and X.509 certificates. The WIT contract is declared; the
//! implementation (key generation and loading, CSRs, chains) arrives with the signing and
//! certificates work, and until then every call answers `unsupported`.

pub mod rhai;
pub mod wasm;

use crate::model::PluginError;

/// A private key held by the host. A plugin sees only the handle and its `reference`.
#[derive(Debug)]
pub struct KeyHandle {
    pub reference: String,
}

pub fn unsupported(function: &str) -> PluginError {
    PluginError::unsupported(&format!("certs.{function}"))
}
