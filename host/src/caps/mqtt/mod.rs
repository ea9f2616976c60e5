//! The `mqtt` capability: outbound MQTT sessions for plugins. The WIT contract is declared; the
//! implementation (rumqttc over rustls, behind declared endpoints) arrives with the network work,
//! and until then `session.connect` answers `unsupported`.

pub mod rhai;
pub mod wasm;

use crate::model::PluginError;

/// An open MQTT session owned by a plugin.
#[derive(Debug)]
pub struct SessionHandle {
    pub client_id: String,
}

pub fn unsupported(function: &str) -> PluginError {
    PluginError::unsupported(&format!("mqtt.{function}"))
}
