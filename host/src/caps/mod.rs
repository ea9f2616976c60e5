//! Host capabilities offered to plugins. Each capability is one folder: the real implementation
//! (`mod.rs`, plain Rust), its WIT host impl (`wasm.rs`) and its Rhai registration (`rhai.rs`).
//! Both bindings are thin wrappers over the same functions, so the engines behave alike.

pub mod certs;
pub mod crypto;
pub mod deadline;
pub mod http;
pub mod json;
pub mod kv;
pub mod log;
pub mod mqtt;
pub mod permissions;
pub(crate) mod rhai_glue;
pub mod time;
pub mod tls;
pub mod wasm;
pub mod wit;
mod wit_convert;

pub use permissions::GatewayPermissions;
pub use permissions::Permissions;

use std::path::PathBuf;
use std::sync::Arc;

/// What one plugin instance may use: its identity, its declared permissions and its kv namespace.
/// Shared by the WASM store data and the Rhai registrations of that plugin.
#[derive(Debug, Clone)]
pub struct CapContext {
    /// Plugin name, attached to every log line and error.
    pub plugin: Arc<str>,
    pub permissions: Permissions,
    pub kv: Arc<kv::KvNamespace>,
    /// Namespace of the plugin's state (kv entries, generated keys): its kv namespace.
    pub namespace: String,
    pub state_dir: PathBuf,
    /// The gateway config's narrowing of `permissions` for this plugin, if any.
    pub gateway: GatewayPermissions,
    /// Skip TLS server verification: set only from the gateway config, never by a plugin.
    pub insecure_skip_verify: bool,
    /// The `mqtt` capability's state: the sessions this plugin holds open, and how many it may.
    pub mqtt: mqtt::SessionSlots,
    /// What relative file paths and file roots are relative to: the gateway config's folder
    /// (empty: the working directory).
    pub base_dir: PathBuf,
}

/// Open network sessions one plugin may hold at a time, unless its limits say otherwise.
pub(crate) const MAX_SESSIONS: usize = 8;

impl CapContext {
    pub fn new(
        plugin: &str,
        permissions: Permissions,
        state_dir: PathBuf,
        kv_stores: &kv::KvRegistry,
    ) -> Self {
        let namespace = permissions
            .kv_namespace
            .clone()
            .unwrap_or_else(|| plugin.to_string());
        CapContext {
            plugin: Arc::from(plugin),
            kv: kv_stores.namespace(&namespace),
            namespace,
            permissions,
            state_dir,
            gateway: GatewayPermissions::default(),
            insecure_skip_verify: false,
            mqtt: mqtt::SessionSlots::new(MAX_SESSIONS),
            base_dir: PathBuf::new(),
        }
    }

    /// A context for offline use (tests, `gatehost rule test`): no persistence.
    pub fn ephemeral(plugin: &str, permissions: Permissions) -> Self {
        CapContext::new(
            plugin,
            permissions,
            PathBuf::new(),
            &kv::KvRegistry::in_memory(),
        )
    }
}

/// Register every capability with a Rhai engine, bound to `ctx`. Adding a capability adds one
/// line here (and one in `caps::wit` for WASM, which `bindgen!` links as a whole).
pub(crate) fn register_rhai(engine: &mut rhai::Engine, ctx: &CapContext) {
    log::rhai::register(engine, ctx);
    kv::rhai::register(engine, ctx);
    json::rhai::register(engine, ctx);
    crypto::rhai::register(engine, ctx);
    certs::rhai::register(engine, ctx);
    mqtt::rhai::register(engine, ctx);
    http::rhai::register(engine, ctx);
    time::rhai::register(engine, ctx);
}
