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
pub mod time;
pub mod tls;

use crate::model::{ErrorKind, PluginError};
use crate::plugins::manifest::Permissions;
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
    /// MQTT sessions this plugin has open (bounded by `max_sessions`).
    pub open_sessions: Arc<std::sync::atomic::AtomicUsize>,
    /// The most MQTT sessions it may hold open at once (its limits' `max_sessions`).
    pub max_sessions: usize,
    /// What relative file paths and file roots are relative to: the gateway config's folder
    /// (empty: the working directory).
    pub base_dir: PathBuf,
}

/// How the gateway config narrows one plugin's declared permissions (`[permissions.<plugin>]`):
/// a list that is given must match too, so a site can only take permissions away.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayPermissions {
    pub endpoints: Option<Vec<String>>,
    pub file_roots: Option<Vec<String>>,
    /// Endpoints the operator grants beyond the manifest's (a shipped flow pointed at a private
    /// broker, without editing the shipped file). Checked like `endpoints` patterns.
    pub add_endpoints: Option<Vec<String>>,
}

/// Open network sessions one plugin may hold at a time, unless its limits say otherwise.
pub const MAX_SESSIONS: usize = 8;

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
            open_sessions: Default::default(),
            max_sessions: MAX_SESSIONS,
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

impl CapContext {
    /// Check that the plugin may read `path`: it must lie under one of the plugin's declared
    /// `file_roots`, and under one of the gateway config's roots for it when it lists any.
    /// Relative paths and roots are taken from [`CapContext::base_dir`] (the config's folder).
    /// The path is judged as written first, before the file system is asked anything, so a
    /// refusal says nothing about whether the file exists; then again with links resolved, so
    /// a link inside a root cannot lead out of it. Returns the canonical path.
    pub fn readable_file(&self, path: &str) -> Result<PathBuf, PluginError> {
        let wanted = lexical(&self.absolute(std::path::Path::new(path)));
        let roots: Vec<PathBuf> = self
            .permissions
            .file_roots
            .iter()
            .map(|r| lexical(&self.absolute(std::path::Path::new(r))))
            .collect();
        let site: Option<Vec<PathBuf>> = self.gateway.file_roots.as_ref().map(|list| {
            list.iter()
                .map(|r| lexical(&self.absolute(std::path::Path::new(r))))
                .collect()
        });
        let check = |p: &std::path::Path, canonical_roots: bool| {
            let under = |roots: &[PathBuf]| {
                roots.iter().any(|root| {
                    if canonical_roots {
                        root.canonicalize().is_ok_and(|root| p.starts_with(root))
                    } else {
                        p.starts_with(root)
                    }
                })
            };
            if !under(&roots) {
                return Err(PluginError::new(
                    ErrorKind::PermissionDenied,
                    format!(
                        "plugin '{}' may not read {path}: it is outside the plugin's file roots ({}); \
                         add its folder to permissions.file_roots in the manifest",
                        self.plugin,
                        declared(&self.permissions.file_roots)
                    ),
                ));
            }
            match (&site, &self.gateway.file_roots) {
                (Some(site), Some(listed_roots)) if !under(site) => Err(PluginError::new(
                    ErrorKind::PermissionDenied,
                    format!(
                        "plugin '{}' may not read {path}: the gateway config narrows its file roots \
                         to {} ([permissions.{}] file_roots)",
                        self.plugin,
                        listed(listed_roots),
                        self.plugin
                    ),
                )),
                _ => Ok(()),
            }
        };
        check(&wanted, false)?;
        let canonical = wanted.canonicalize().map_err(|e| {
            let kind = if e.kind() == std::io::ErrorKind::NotFound {
                ErrorKind::NotFound
            } else {
                ErrorKind::Io
            };
            PluginError::new(kind, format!("cannot read {path}: {e}"))
        })?;
        check(&canonical, true)?;
        Ok(canonical)
    }

    /// `path` made absolute against the base folder (or the working directory).
    fn absolute(&self, path: &std::path::Path) -> PathBuf {
        let joined = self.base_dir.join(path);
        std::path::absolute(&joined).unwrap_or(joined)
    }

    /// Check that the plugin may connect to `host:port`: a `permissions.endpoints` pattern must
    /// match (`*` stands for one whole host label, or any port), and so must one of the gateway
    /// config's patterns for this plugin when it lists any.
    pub fn check_endpoint(&self, host: &str, port: u16) -> Result<(), PluginError> {
        let host = host.to_ascii_lowercase();
        if self
            .gateway
            .add_endpoints
            .iter()
            .flatten()
            .any(|p| endpoint_matches(p, &host, port))
        {
            return Ok(());
        }
        if !self
            .permissions
            .endpoints
            .iter()
            .any(|p| endpoint_matches(p, &host, port))
        {
            return Err(PluginError::new(
                ErrorKind::PermissionDenied,
                format!(
                    "plugin '{}' may not connect to {host}:{port}: no permissions.endpoints pattern \
                     matches ({})",
                    self.plugin,
                    declared(&self.permissions.endpoints)
                ),
            ));
        }
        if let Some(site) = &self.gateway.endpoints {
            if !site.iter().any(|p| endpoint_matches(p, &host, port)) {
                return Err(PluginError::new(
                    ErrorKind::PermissionDenied,
                    format!(
                        "plugin '{}' may not connect to {host}:{port}: the gateway config narrows \
                         its endpoints to {} ([permissions.{}] endpoints)",
                        self.plugin,
                        listed(site),
                        self.plugin
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Read a text file the plugin may read.
    pub fn read_text(&self, path: &str) -> Result<String, PluginError> {
        let canonical = self.readable_file(path)?;
        std::fs::read_to_string(&canonical)
            .map_err(|e| PluginError::new(ErrorKind::Io, format!("cannot read {path}: {e}")))
    }
}

/// `path` with `.` and `..` taken away as written (no link is followed): `/a/b/../c` is `/a/c`.
fn lexical(path: &std::path::Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Does `pattern` (`host:port`, `*` for one whole host label or any port) match?
fn endpoint_matches(pattern: &str, host: &str, port: u16) -> bool {
    let Some((p_host, p_port)) = pattern.rsplit_once(':') else {
        return false;
    };
    let port_ok = p_port == "*" || p_port.parse::<u16>() == Ok(port);
    let p_labels: Vec<&str> = p_host.split('.').collect();
    let labels: Vec<&str> = host.split('.').collect();
    port_ok
        && p_labels.len() == labels.len()
        && p_labels
            .iter()
            .zip(&labels)
            .all(|(p, l)| *p == "*" || p.eq_ignore_ascii_case(l))
}

fn declared(list: &[String]) -> String {
    if list.is_empty() {
        "none are declared".to_string()
    } else {
        format!("declared: {}", list.join(", "))
    }
}

fn listed(list: &[String]) -> String {
    if list.is_empty() {
        "nothing".to_string()
    } else {
        list.join(", ")
    }
}

/// Register every capability with a Rhai engine, bound to `ctx`. Adding a capability adds one
/// line here (and one in `engine::bindings` for WASM, which `bindgen!` links as a whole).
pub fn register_rhai(engine: &mut rhai::Engine, ctx: &CapContext) {
    log::rhai::register(engine, ctx);
    kv::rhai::register(engine, ctx);
    json::rhai::register(engine, ctx);
    crypto::rhai::register(engine, ctx);
    certs::rhai::register(engine, ctx);
    mqtt::rhai::register(engine, ctx);
    http::rhai::register(engine, ctx);
    time::rhai::register(engine, ctx);
}
