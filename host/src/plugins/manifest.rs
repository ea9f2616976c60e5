//! The plugin manifest: `<name>.toml` beside the plugin's `.rhai` or `.wasm` file.
//!
//! ```toml
//! name = "iothub-telemetry"
//! version = "0.1.0"
//! kind = "rule"                 # or "flow"
//! api = "0.1"                   # gatehost:plugin world version the plugin was written for
//! description = "Brownfield topics to IoT Hub telemetry"
//! publisher = "acme"            # optional
//! entry = "iothub-telemetry.rhai"   # optional: default <manifest stem>.rhai or .wasm
//!
//! [permissions]
//! endpoints = ["*.azure-devices.net:8883"]   # host:port patterns, `*` = one host label or any port
//! file_roots = ["certs"]                     # where the plugin may read certificates
//! kv_namespace = "iothub-telemetry"          # default: the plugin name
//!
//! [limits]                      # optional overrides of the engine defaults
//! timeout_ms = 1000
//! memory_mib = 64
//! max_operations = 1000000
//! ```

use crate::engine::limits::LimitOverrides;
use crate::engine::WORLD_VERSION;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub kind: PluginKind,
    /// The `gatehost:plugin` world version the plugin targets (`0.1` or `0.1.0`).
    pub api: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub publisher: Option<String>,
    /// The code file, relative to the manifest; default `<manifest stem>.rhai` or `.wasm`.
    #[serde(default)]
    pub entry: Option<String>,
    #[serde(default)]
    pub permissions: Permissions,
    #[serde(default)]
    pub limits: LimitOverrides,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    Rule,
    Flow,
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PluginKind::Rule => "rule",
            PluginKind::Flow => "flow",
        })
    }
}

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

/// A manifest that cannot be used, with the file and the reason.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ManifestError {
    pub path: PathBuf,
    pub message: String,
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let err = |message: String| ManifestError {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let manifest: Manifest = toml::from_str(&text)
            .map_err(|e| err(format!("invalid manifest: {}", one_line(&e.to_string()))))?;
        manifest.validate().map_err(err)?;
        Ok(manifest)
    }

    /// Check names, versions, the world version and the permission patterns.
    pub fn validate(&self) -> Result<(), String> {
        if !is_plugin_name(&self.name) {
            return Err(format!(
                "name '{}' must be 1-64 characters of a-z, 0-9, '-' or '_', starting with a letter or digit",
                self.name
            ));
        }
        if !is_version(&self.version) {
            return Err(format!(
                "version '{}' must look like 1.2.3 (optionally -suffix)",
                self.version
            ));
        }
        check_api(&self.api)?;
        for pattern in &self.permissions.endpoints {
            check_endpoint_pattern(pattern)?;
        }
        for root in &self.permissions.file_roots {
            if root.trim().is_empty() {
                return Err("permissions.file_roots has an empty entry".into());
            }
        }
        if let Some(ns) = &self.permissions.kv_namespace {
            if !is_plugin_name(ns) {
                return Err(format!(
                    "permissions.kv_namespace '{ns}' must be 1-64 characters of a-z, 0-9, '-' or '_'"
                ));
            }
        }
        Ok(())
    }
}

pub fn is_plugin_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric()
}

fn is_version(v: &str) -> bool {
    let core = v.split_once('-').map_or(v, |(core, _)| core);
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The plugin's world version must be compatible with the host's: same major, and for 0.x the
/// same minor (0.x minors are breaking).
fn check_api(api: &str) -> Result<(), String> {
    let parse = |v: &str| -> Option<(u64, u64)> {
        let mut it = v.split('.');
        let major = it.next()?.parse().ok()?;
        let minor = it.next()?.parse().ok()?;
        Some((major, minor))
    };
    let (major, minor) =
        parse(api).ok_or_else(|| format!("api '{api}' must be a version like 0.1"))?;
    let (host_major, host_minor) = parse(WORLD_VERSION).expect("WORLD_VERSION is a version");
    if major != host_major || (major == 0 && minor != host_minor) {
        return Err(format!(
            "api {api} is not supported: this gatehost provides gatehost:plugin@{WORLD_VERSION}"
        ));
    }
    Ok(())
}

/// `host:port` where host is a DNS name or IP with `*` allowed as a whole label, and port is a
/// number or `*`.
pub fn check_endpoint_pattern(pattern: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("permissions.endpoints: '{pattern}' {why}"));
    let Some((host, port)) = pattern.rsplit_once(':') else {
        return bad("must be host:port");
    };
    if port != "*" && port.parse::<u16>().map_or(true, |p| p == 0) {
        return bad("has an invalid port (use 1-65535 or *)");
    }
    if host.is_empty() {
        return bad("has an empty host");
    }
    for label in host.split('.') {
        let ok = label == "*"
            || (!label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        if !ok {
            return bad("has an invalid host label (use letters, digits, '-' or a whole '*')");
        }
    }
    Ok(())
}

/// TOML errors span several lines (a source excerpt); keep the first sentence and the location.
pub fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('|') && !l.chars().all(|c| c == '^'))
        .filter(|l| !l.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .collect::<Vec<_>>()
        .join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(extra: &str) -> Result<Manifest, String> {
        let text =
            format!("name = \"r\"\nversion = \"0.1.0\"\nkind = \"rule\"\napi = \"0.1\"\n{extra}");
        let m: Manifest = toml::from_str(&text).map_err(|e| one_line(&e.to_string()))?;
        m.validate()?;
        Ok(m)
    }

    #[test]
    fn a_minimal_manifest_is_valid() {
        let m = manifest("").unwrap();
        assert_eq!(m.kind, PluginKind::Rule);
        assert!(m.permissions.endpoints.is_empty());
    }

    #[test]
    fn unknown_fields_are_rejected_by_name() {
        let e = manifest("colour = \"blue\"").unwrap_err();
        assert!(e.contains("unknown field `colour`"), "{e}");
        let e = manifest("[permissions]\nsockets = true").unwrap_err();
        assert!(e.contains("unknown field `sockets`"), "{e}");
    }

    #[test]
    fn world_versions_must_match() {
        let text = "name = \"r\"\nversion = \"0.1.0\"\nkind = \"rule\"\napi = \"0.2\"\n";
        let m: Manifest = toml::from_str(text).unwrap();
        let e = m.validate().unwrap_err();
        assert_eq!(
            e,
            "api 0.2 is not supported: this gatehost provides gatehost:plugin@0.1.0"
        );
    }

    #[test]
    fn endpoint_patterns() {
        assert!(check_endpoint_pattern("*.azure-devices.net:8883").is_ok());
        assert!(check_endpoint_pattern("127.0.0.1:*").is_ok());
        assert!(check_endpoint_pattern("host").is_err());
        assert!(check_endpoint_pattern("a*b.net:1").is_err());
        assert!(check_endpoint_pattern("a.net:0").is_err());
        assert!(check_endpoint_pattern(":80").is_err());
    }

    #[test]
    fn names_and_versions() {
        assert!(is_plugin_name("azure-dps_2"));
        assert!(!is_plugin_name("Azure"));
        assert!(!is_plugin_name("-x"));
        assert!(is_version("1.2.3-rc1"));
        assert!(!is_version("1.2"));
    }
}
