//! The `http` capability: outbound HTTP(S) for plugins. The WIT contract is declared; the
//! implementation arrives with the network work, and until then `send` answers `unsupported`.

pub mod rhai;
pub mod wasm;

use crate::model::PluginError;

pub fn unsupported() -> PluginError {
    PluginError::unsupported("http.send")
}
