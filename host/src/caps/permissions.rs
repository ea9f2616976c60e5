//! What a plugin may use: the permissions its manifest declares ([`Permissions`]), the gateway
//! config's narrowing of them ([`GatewayPermissions`]), and the checks every capability makes
//! before it opens a file or a connection for a plugin.

use super::CapContext;
use crate::model::{ErrorKind, PluginError};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What a plugin declares it needs. Everything else is denied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Permissions {
    /// Outbound endpoints as `host:port` patterns.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Directories (relative to the gateway's working directory, or absolute) the plugin may read
    /// certificate and key files from.
    #[serde(default)]
    pub file_roots: Vec<String>,
    #[serde(default)]
    pub kv_namespace: Option<String>,
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

impl CapContext {
    /// Check that the plugin may read `path`: it must lie under one of the plugin's declared
    /// `file_roots`, and under one of the gateway config's roots for it when it lists any.
    /// Relative paths and roots are taken from [`CapContext::base_dir`] (the config's folder).
    /// The path is judged as written first, before the file system is asked anything, so a
    /// refusal says nothing about whether the file exists; then again with links resolved, so
    /// a link inside a root cannot lead out of it. Returns the canonical path.
    pub(crate) fn readable_file(&self, path: &str) -> Result<PathBuf, PluginError> {
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
    pub(crate) fn check_endpoint(&self, host: &str, port: u16) -> Result<(), PluginError> {
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
    pub(crate) fn read_text(&self, path: &str) -> Result<String, PluginError> {
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
