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
//! files = ["certs/root.pem"]    # optional: more files `gatehost plugin pack` bundles
//!
//! [permissions]
//! endpoints = ["*.azure-devices.net:8883"]   # host:port patterns, `*` = one host label or any port
//! file_roots = ["certs"]                     # where the plugin may read certificates
//! kv_namespace = "iothub-telemetry"          # default: the plugin name
//!
//! [params]                      # flows only, optional: what `[devices.params]` may hold
//! required = ["id_scope", "registration_id"]
//! optional = ["symmetric_key", "ca_file"]
//! defaults = { dps_port = "8883" }       # filled in when the device does not set them
//! numbers = ["dps_port"]                 # must be whole numbers (checked before the flow runs)
//!
//! [limits]                      # optional overrides of the engine defaults
//! timeout_ms = 1000
//! memory_mib = 64
//! max_operations = 1000000
//! max_sessions = 8              # MQTT sessions open at once (rules 8, flows 256)
//! ```

use crate::caps::Permissions;
use crate::engine::limits::LimitOverrides;
use crate::engine::WORLD_VERSION;
use crate::model::{is_plugin_name, one_line};
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
    /// Other files (relative to the manifest) that `gatehost plugin pack` puts in the bundle.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
    #[serde(default)]
    pub permissions: Permissions,
    #[serde(default)]
    pub limits: LimitOverrides,
    /// A flow's parameters; when present, the host checks a device's params against them.
    #[serde(default)]
    pub params: Option<FlowParams>,
}

/// The parameters a flow takes. The host reports every missing and every unknown name at once,
/// before the flow runs, and fills in defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FlowParams {
    #[serde(default)]
    pub required: Vec<String>,
    #[serde(default)]
    pub optional: Vec<String>,
    #[serde(default)]
    pub defaults: std::collections::BTreeMap<String, String>,
    /// Alternatives of which a device gives exactly one whole group, e.g. the attestations
    /// `[["symmetric_key"], ["group_key"], ["certificate", "key"]]`.
    #[serde(default)]
    pub one_of: Vec<Vec<String>>,
    /// Parameters that must be whole numbers (ports, timeouts): the host says so before the flow
    /// runs, in both engines.
    #[serde(default)]
    pub numbers: Vec<String>,
}

impl FlowParams {
    /// Every name in `numbers` is a declared parameter, and number defaults are numbers.
    fn validate(&self) -> Result<(), String> {
        for name in &self.numbers {
            let declared = self.required.contains(name)
                || self.optional.contains(name)
                || self.defaults.contains_key(name)
                || self.one_of.iter().flatten().any(|n| n == name);
            if !declared {
                return Err(format!(
                    "[params] numbers lists '{name}', which is not a parameter of this flow"
                ));
            }
            if let Some(v) = self.defaults.get(name) {
                if v.trim().parse::<u64>().is_err() {
                    return Err(format!(
                        "[params] default {name} = '{v}' is not a whole number"
                    ));
                }
            }
        }
        Ok(())
    }

    /// `given` with defaults added, or one sentence naming every missing and unknown parameter.
    pub(crate) fn apply(
        &self,
        given: &[(String, String)],
    ) -> Result<Vec<(String, String)>, ParamsError> {
        let in_groups = |name: &str| self.one_of.iter().flatten().any(|g| g == name);
        let known = |name: &str| {
            self.required.iter().any(|r| r == name)
                || self.optional.iter().any(|o| o == name)
                || self.defaults.contains_key(name)
                || in_groups(name)
        };
        let has = |name: &str| given.iter().any(|(k, _)| k == name);
        let mut missing: Vec<String> = self
            .required
            .iter()
            .filter(|r| !has(r) && !self.defaults.contains_key(*r))
            .cloned()
            .collect();
        let chosen: Vec<&Vec<String>> = self
            .one_of
            .iter()
            .filter(|group| group.iter().any(|n| has(n)))
            .collect();
        let describe = |group: &Vec<String>| group.join(" + ");
        let mut conflict = None;
        match chosen.as_slice() {
            [] if !self.one_of.is_empty() => missing.push(
                self.one_of
                    .iter()
                    .map(describe)
                    .collect::<Vec<_>>()
                    .join(" | "),
            ),
            [] => {}
            [group] => missing.extend(group.iter().filter(|n| !has(n)).cloned()),
            several => {
                conflict = Some(format!(
                    "give only one of {}",
                    several
                        .iter()
                        .map(|g| describe(g))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
        }
        let not_numbers: Vec<String> = given
            .iter()
            .filter(|(k, v)| self.numbers.contains(k) && v.trim().parse::<u64>().is_err())
            .map(|(k, v)| format!("{k} must be a whole number, not '{v}'"))
            .collect();
        let unknown: Vec<&str> = given
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| !known(k))
            .collect();
        let mut problems = Vec::new();
        if !missing.is_empty() {
            problems.push(format!("missing parameters: {}", missing.join(", ")));
        }
        problems.extend(conflict);
        problems.extend(not_numbers);
        if !unknown.is_empty() {
            let mut all: Vec<&str> = self.required.iter().map(String::as_str).collect();
            all.extend(self.one_of.iter().flatten().map(String::as_str));
            all.extend(self.optional.iter().map(String::as_str));
            all.extend(self.defaults.keys().map(String::as_str));
            problems.push(format!(
                "unknown parameters: {} (this flow takes {})",
                unknown.join(", "),
                all.join(", ")
            ));
        }
        if !problems.is_empty() {
            return Err(ParamsError { problems });
        }
        let mut params = given.to_vec();
        for (k, v) in &self.defaults {
            if !has(k) {
                params.push((k.clone(), v.clone()));
            }
        }
        Ok(params)
    }
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

/// Parameters a flow's `[params]` does not take: every problem, each one phrase (missing,
/// conflicting, not a number, unknown).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", problems.join("; "))]
pub struct ParamsError {
    pub problems: Vec<String>,
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
        Manifest::parse(&text, path)
    }

    /// Parse and validate manifest text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, ManifestError> {
        let err = |message: String| ManifestError {
            path: path.to_path_buf(),
            message,
        };
        let manifest: Manifest = toml::from_str(text)
            .map_err(|e| err(format!("invalid manifest: {}", one_line(&e.to_string()))))?;
        manifest.validate().map_err(err)?;
        Ok(manifest)
    }

    /// Check names, versions, the world version and the permission patterns.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if !is_plugin_name(&self.name) {
            return Err(format!(
                "name '{}' must be 1-64 characters of a-z, 0-9, '-' or '_', starting with a letter or digit",
                self.name
            ));
        }
        if !is_version(&self.version) {
            return Err(format!(
                "version '{}' must look like 1.2.3 (optionally -suffix of letters, digits, '.' and '-')",
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
        if self.params.is_some() && self.kind != PluginKind::Flow {
            return Err("[params] is for flows; a rule takes no parameters".into());
        }
        if let Some(params) = &self.params {
            params.validate()?;
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

fn is_version(v: &str) -> bool {
    let (core, suffix) = v.split_once('-').unwrap_or((v, "a"));
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && v.len() <= 64
        && !suffix.is_empty()
        && suffix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
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
pub(crate) fn check_endpoint_pattern(pattern: &str) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_params_name_every_missing_and_unknown_parameter_and_fill_defaults() {
        let p = FlowParams {
            required: vec!["a".into(), "b".into(), "c".into()],
            optional: vec!["o".into()],
            defaults: [("d".to_string(), "7".to_string())].into(),
            one_of: Vec::new(),
            numbers: Vec::new(),
        };
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        let e = p
            .apply(&[pair("b", "1"), pair("typo", "x")])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "missing parameters: a, c; unknown parameters: typo (this flow takes a, b, c, o, d)"
        );
        let ok = p
            .apply(&[pair("a", "1"), pair("b", "2"), pair("c", "3")])
            .unwrap();
        assert_eq!(ok.last(), Some(&pair("d", "7")));
        let kept = p
            .apply(&[
                pair("a", "1"),
                pair("b", "2"),
                pair("c", "3"),
                pair("d", "9"),
            ])
            .unwrap();
        assert_eq!(kept.len(), 4);
        assert_eq!(kept[3], pair("d", "9"));

        let attestations = FlowParams {
            required: vec!["id".into()],
            one_of: vec![vec!["sym".into()], vec!["cert".into(), "key".into()]],
            ..FlowParams::default()
        };
        let e = attestations.apply(&[]).unwrap_err().to_string();
        assert_eq!(e, "missing parameters: id, sym | cert + key");
        let e = attestations
            .apply(&[pair("id", "1"), pair("cert", "c")])
            .unwrap_err()
            .to_string();
        assert_eq!(e, "missing parameters: key");
        let e = attestations
            .apply(&[pair("id", "1"), pair("cert", "c"), pair("sym", "s")])
            .unwrap_err()
            .to_string();
        assert_eq!(e, "give only one of sym, cert + key");
        assert!(attestations
            .apply(&[pair("id", "1"), pair("sym", "s")])
            .is_ok());
    }

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
    fn number_parameters_are_checked_before_the_flow_runs() {
        let params = FlowParams {
            required: vec!["host".into()],
            optional: vec!["port".into()],
            numbers: vec!["port".into()],
            ..FlowParams::default()
        };
        let given = |port: &str| {
            vec![
                ("host".to_string(), "h".to_string()),
                ("port".to_string(), port.to_string()),
            ]
        };
        assert!(params.apply(&given("8883")).is_ok());
        assert_eq!(
            params.apply(&given("eighty")).unwrap_err().to_string(),
            "port must be a whole number, not 'eighty'"
        );
        let wrong = FlowParams {
            numbers: vec!["prot".into()],
            ..params.clone()
        };
        assert!(wrong
            .validate()
            .unwrap_err()
            .contains("'prot', which is not a parameter"));
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
