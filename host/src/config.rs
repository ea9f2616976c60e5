//! The gateway config (`gatehost.toml`) as plain data: serde types, unknown fields refused,
//! relative paths resolved against the folder that holds the config file. Each subsystem turns
//! its part into its own types and checks it (`bridge::problems`, `QueueLimits::from_config`,
//! `PluginEnv::of`, `Site::for_config`).
//!
//! The reference of every setting is the README's "Configuration" section; the test
//! `the_readme_config_reference_matches_the_config_types` parses it and checks it against these
//! types field by field, so the two cannot drift apart.

use crate::caps::GatewayPermissions;
use crate::engine::limits::LimitOverrides;
use crate::model::one_line;
use crate::model::Pair;
use crate::rules::template::{TemplateConfig, TemplateError, TemplateRule};
use serde::Deserialize;
use std::path::{Path, PathBuf};

pub(crate) const DEFAULT_CONFIG: &str = "gatehost.toml";

/// The largest packet a local client may send by default: larger than any cloud accepts, so
/// an oversized message is dead-lettered with its size named rather than cut off.
pub(crate) const DEFAULT_MAX_PACKET: usize = 1024 * 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default = "default_plugin_dirs")]
    pub plugin_dirs: Vec<PathBuf>,
    #[serde(default)]
    pub limits: ConfigLimits,
    #[serde(default)]
    pub local: LocalConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Simulated brownfield publishers on the local broker (demos, trying a rule).
    #[serde(default)]
    pub simulators: Vec<SimulatorConfig>,
    #[serde(default)]
    pub devices: Vec<DeviceConfig>,
    /// Zero-touch: flows and parameters for devices not listed in `devices`, by name pattern.
    #[serde(default)]
    pub device_templates: Vec<DeviceTemplate>,
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// Per-plugin narrowing of the permissions its manifest declares.
    #[serde(default)]
    pub permissions: std::collections::BTreeMap<String, GatewayPermissions>,
    /// Signed bundles: the trust store, unsigned bundles, revoked keys, the lock file.
    #[serde(default)]
    pub bundles: BundlesConfig,
    /// A sandbox config (`sandbox.toml`) whose provider emulators `gatehost run` starts
    /// in-process, for trying flows and rules without a cloud account.
    #[serde(default)]
    pub sandbox: Option<PathBuf>,
    /// The folder relative paths are resolved against (the config file's folder).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// `[bundles]`: which plugin bundles this gateway installs and runs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundlesConfig {
    /// Publisher keys (`<publisher>.pub`, minisign format); default `<state_dir>/trust`.
    #[serde(default)]
    pub trust_dir: Option<PathBuf>,
    /// More publisher keys inline: publisher name = the base64 key line of its `.pub` file.
    #[serde(default)]
    pub publishers: std::collections::BTreeMap<String, String>,
    /// Key ids (16 hex digits, as minisign prints them) whose signatures are no longer accepted.
    #[serde(default)]
    pub revoked_keys: Vec<String>,
    /// Accept unsigned bundles. For development only.
    #[serde(default)]
    pub allow_unsigned: bool,
    /// The lock file; default `gatehost.lock` beside this config.
    #[serde(default)]
    pub lock_file: Option<PathBuf>,
    /// The largest file a bundle may hold, in MiB (default 64).
    #[serde(default)]
    pub max_entry_mib: Option<u64>,
    /// CA certificates (PEM) for `https://` bundle downloads; default the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigLimits {
    #[serde(default)]
    pub rule: LimitOverrides,
    #[serde(default)]
    pub flow: LimitOverrides,
    /// `[limits.plugins.<name>]`: one plugin's ceilings, above (or below) its kind's.
    #[serde(default)]
    pub plugins: std::collections::BTreeMap<String, LimitOverrides>,
    /// `[limits.kv]`: what one kv namespace may hold.
    #[serde(default)]
    pub kv: KvLimitsConfig,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvLimitsConfig {
    /// Keys and values of one namespace, in KiB (default 1024).
    pub max_kib: Option<usize>,
    /// Entries of one namespace (default 1024).
    pub max_entries: Option<usize>,
}

impl KvLimitsConfig {
    pub fn limits(&self) -> crate::caps::kv::KvLimits {
        let default = crate::caps::kv::KvLimits::default();
        crate::caps::kv::KvLimits {
            max_bytes: self
                .max_kib
                .map_or(default.max_bytes, |k| k.saturating_mul(1024)),
            max_entries: self.max_entries.unwrap_or(default.max_entries),
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// `embedded`: gatehost is the local broker; `mqtt://host[:port]` or `mqtts://host[:port]`:
    /// gatehost subscribes to the rules' filters on that broker.
    #[serde(default = "default_broker")]
    pub broker: String,
    /// External broker: the client id of gatehost's persistent session (default `gatehost`).
    /// Each gatehost needs its own, also when they share a `share_group`.
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// External broker over `mqtts://`: the CA certificates to verify it with (default: the
    /// system roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// External broker over `mqtts://` that asks for client certificates: gatehost's
    /// certificate chain (PEM, leaf first) and its private key (PEM).
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// External broker: subscribe as `$share/<group>/<filter>` (MQTT 5 shared subscriptions),
    /// so the gatehosts of one group split the messages between them.
    #[serde(default)]
    pub share_group: Option<String>,
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Serve local clients over TLS with this certificate chain (PEM) and key.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// With `tls_cert`: local clients must present a certificate issued by a CA in this PEM
    /// file (mutual TLS); without it any client may connect over TLS.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// The largest packet a local client may send, in KiB (default 1024).
    #[serde(default)]
    pub max_packet_kib: Option<u64>,
}

impl std::fmt::Debug for LocalConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalConfig")
            .field("broker", &self.broker)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("share_group", &self.share_group)
            .field("listen", &self.listen)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("client_ca", &self.client_ca)
            .field("max_packet_kib", &self.max_packet_kib)
            .finish()
    }
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            broker: default_broker(),
            client_id: None,
            username: None,
            password: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            share_group: None,
            listen: default_listen(),
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            max_packet_kib: None,
        }
    }
}

/// `[store]`: the store-and-forward queue.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The queue's folder, relative to the state directory (default `queue`).
    #[serde(default)]
    pub dir: Option<PathBuf>,
    #[serde(default)]
    pub max_mib: Option<u64>,
    #[serde(default)]
    pub max_age_hours: Option<u64>,
    #[serde(default)]
    pub when_full: WhenFull,
    #[serde(default)]
    pub max_dead_letters: Option<u64>,
    /// MiB the dead-letter file may hold.
    #[serde(default)]
    pub max_dead_letters_mib: Option<u64>,
    /// Least milliseconds between two syncs of the queue (0: sync at once).
    #[serde(default)]
    pub sync_interval_ms: Option<u64>,
    /// Publishes waiting for a sync that start it before the interval is up.
    #[serde(default)]
    pub sync_batch: Option<usize>,
}

/// What to do with a new message when the queue is at its byte limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhenFull {
    /// Make room by dropping the oldest queued messages (of any device).
    #[default]
    DropOldest,
    /// Keep what is queued and drop the new message.
    DropNewest,
}

/// `[[simulators]]`: a local MQTT client publishing `payload` to `topic` every `every_ms`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatorConfig {
    pub name: String,
    pub topic: String,
    /// `{n}` = the message count, `{t}` = Unix seconds.
    pub payload: String,
    #[serde(default = "default_every_ms")]
    pub every_ms: u64,
    #[serde(default = "default_sim_qos")]
    pub qos: u8,
}

fn default_every_ms() -> u64 {
    1000
}

fn default_sim_qos() -> u8 {
    1
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where `/metrics` and `/healthz` are served; `off` serves nothing.
    #[serde(default = "default_metrics_listen")]
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: default_metrics_listen(),
        }
    }
}

fn default_metrics_listen() -> String {
    "127.0.0.1:9464".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    pub name: String,
    pub flow: String,
    #[serde(default)]
    pub params: toml::Table,
    /// Accept any server certificate on this device's connections (a warning is logged on
    /// every connect). For lab set-ups only; a plugin cannot ask for this.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// How long onboarding may take, retries included (default 300 s).
    #[serde(default)]
    pub deadline_secs: Option<u64>,
    /// Topic filters the device's cloud session subscribes to (cloud-to-device messages, such
    /// as IoT Hub's `devices/<id>/messages/devicebound/#`); what arrives goes through the rules
    /// whose `from_cloud` filters match.
    #[serde(default)]
    pub from_cloud: Vec<String>,
}

/// A device template: the flow and parameters of every device whose name matches `match`,
/// with `{device}` in a string parameter replaced by the device's name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceTemplate {
    /// A device-name pattern; `*` stands for any run of characters.
    #[serde(rename = "match", default = "any_name")]
    pub pattern: String,
    pub flow: String,
    #[serde(default)]
    pub params: toml::Table,
    #[serde(default)]
    pub insecure_skip_verify: bool,
    #[serde(default)]
    pub deadline_secs: Option<u64>,
    /// As for a device, with `{device}` replaced by the device's name.
    #[serde(default)]
    pub from_cloud: Vec<String>,
}

fn any_name() -> String {
    "*".into()
}

/// The default onboarding deadline of a device.
pub(crate) const DEFAULT_DEADLINE_SECS: u64 = 300;

impl DeviceTemplate {
    /// Whether `name` matches the pattern (`*` = any run of characters, the rest literal).
    pub fn matches(&self, name: &str) -> bool {
        glob_matches(&self.pattern, name)
    }

    /// The device `name` as this template describes it. The name must be usable as a
    /// registration or client id: 1..=128 of `A-Z a-z 0-9 - . _ :`.
    pub fn instantiate(&self, name: &str) -> Result<DeviceConfig, DeviceError> {
        let valid = |c: char| c.is_ascii_alphanumeric() || "-._:".contains(c);
        if name.is_empty() || name.len() > 128 || !name.chars().all(valid) {
            return Err(DeviceError::BadName {
                name: name.to_string(),
            });
        }
        let params = self
            .params
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    toml::Value::String(s) => toml::Value::String(s.replace("{device}", name)),
                    other => other.clone(),
                };
                (k.clone(), v)
            })
            .collect();
        Ok(DeviceConfig {
            name: name.to_string(),
            flow: self.flow.clone(),
            params,
            insecure_skip_verify: self.insecure_skip_verify,
            deadline_secs: self.deadline_secs,
            from_cloud: self
                .from_cloud
                .iter()
                .map(|f| f.replace("{device}", name))
                .collect(),
        })
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn glob_matches(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

/// A rule of the chain: a rule plugin, or the built-in template rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    /// The rule plugin that translates the messages.
    #[serde(default)]
    pub rule: Option<String>,
    /// The built-in template rule, instead of a plugin.
    #[serde(default)]
    pub template: Option<TemplateConfig>,
    /// MQTT topic filters of the local messages this rule receives (a template rule's default
    /// is its pattern's filter).
    #[serde(default)]
    pub from: Vec<String>,
    /// Topic filters of the cloud-to-device messages this rule receives (from the sessions of
    /// devices with `from_cloud` subscriptions).
    #[serde(default)]
    pub from_cloud: Vec<String>,
}

impl RuleConfig {
    /// The compiled template rule, when this is one.
    pub(crate) fn template_rule(&self) -> Option<Result<TemplateRule, TemplateError>> {
        self.template
            .as_ref()
            .map(|t| TemplateRule::new(&self.name, t))
    }

    /// The topic filters this rule receives.
    pub(crate) fn filters(&self) -> Vec<String> {
        match (&self.from[..], self.template_rule()) {
            ([], Some(Ok(t))) => vec![t.filter()],
            _ => self.from.clone(),
        }
    }
}

fn default_state_dir() -> PathBuf {
    "state".into()
}

fn default_plugin_dirs() -> Vec<PathBuf> {
    vec![
        "scripts/rules".into(),
        "scripts/flows".into(),
        "plugins/dist".into(),
    ]
}

fn default_broker() -> String {
    "embedded".into()
}

/// An external local broker's address (`local.broker`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl LocalConfig {
    /// The largest packet the local broker takes (`max_packet_kib`, default 1 MiB).
    pub(crate) fn max_packet_bytes(&self) -> usize {
        self.max_packet_kib
            .map_or(DEFAULT_MAX_PACKET, |k| (k as usize).saturating_mul(1024))
    }

    /// The external broker `broker` names; `Ok(None)` for the embedded one.
    pub(crate) fn external_broker(&self) -> Result<Option<BrokerUrl>, BrokerUrlError> {
        if self.broker == "embedded" {
            return Ok(None);
        }
        let bad = |why: String| BrokerUrlError {
            broker: self.broker.clone(),
            why,
        };
        let bad_port = |port: &str| bad(format!("has port '{port}', not a number from 1 to 65535"));
        // The URL parser behind the HTTP capability; only scheme, host and port may be given.
        let url = url::Url::parse(&self.broker).map_err(|e| match e {
            url::ParseError::InvalidPort => {
                let port = self.broker.rsplit(':').next().unwrap_or_default();
                bad_port(port.trim_end_matches('/'))
            }
            e => bad(format!("is not a URL: {e}")),
        })?;
        let tls = match url.scheme() {
            "mqtt" => false,
            "mqtts" => true,
            _ => return Err(bad("is not a broker address".into())),
        };
        if !url.username().is_empty()
            || url.password().is_some()
            || !matches!(url.path(), "" | "/")
            || url.query().is_some()
            || url.fragment().is_some()
        {
            return Err(bad("has more than a host and a port".into()));
        }
        let host = url
            .host_str()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("has no host".into()))?;
        let port = match url.port() {
            Some(0) => return Err(bad_port("0")),
            Some(port) => port,
            None if tls => 8883,
            None => 1883,
        };
        Ok(Some(BrokerUrl {
            tls,
            host: host.to_string(),
            port,
        }))
    }
}

fn default_listen() -> String {
    "127.0.0.1:1883".into()
}

/// A listed device, or one a template makes, that cannot be onboarded as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error(
        "device name '{name}' cannot instantiate a template: use 1 to 128 of A-Z a-z 0-9 - . _ :"
    )]
    BadName { name: String },
    #[error("device '{device}': param '{param}' is a {kind}; params must be strings, numbers or booleans")]
    UnusableParam {
        device: String,
        param: String,
        kind: &'static str,
    },
}

/// `local.broker` is neither "embedded" nor a broker address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("local.broker '{broker}' {why} (\"embedded\", mqtt://host[:port] or mqtts://host[:port])")]
pub struct BrokerUrlError {
    broker: String,
    why: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
}

impl Config {
    /// Load `path`. When the user did not name a config (`explicit == false`) and the default
    /// file does not exist, the defaults apply, rooted at the current directory.
    pub fn load(path: &Path, explicit: bool) -> Result<Config, ConfigError> {
        if !path.exists() {
            if explicit {
                return Err(ConfigError::Missing(path.to_path_buf()));
            }
            return Ok(Config::defaults_in(Path::new(".")));
        }
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: one_line(&e.to_string()),
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        config.base_dir = base.to_path_buf();
        config.remember_secrets();
        Ok(config)
    }

    /// Tell the log redaction the secrets this config holds: devices' and templates' keys and
    /// passwords, the external broker's password.
    fn remember_secrets(&self) {
        let params = self
            .devices
            .iter()
            .map(|d| &d.params)
            .chain(self.device_templates.iter().map(|t| &t.params));
        for table in params {
            for (name, value) in table {
                if let toml::Value::String(value) = value {
                    if crate::redact::is_secret_param(name, value) {
                        crate::redact::remember(value);
                    }
                }
            }
        }
        if let Some(password) = &self.local.password {
            crate::redact::remember(password);
        }
    }

    pub(crate) fn defaults_in(base: &Path) -> Config {
        let mut config: Config = toml::from_str("").expect("the empty config is valid");
        config.base_dir = base.to_path_buf();
        config
    }

    pub(crate) fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.resolve(&self.state_dir)
    }

    /// The store-and-forward queue's folder.
    pub(crate) fn queue_path(&self) -> PathBuf {
        let dir = self.store.dir.clone().unwrap_or_else(|| "queue".into());
        self.state_dir().join(dir)
    }
}

impl DeviceConfig {
    /// How long onboarding may take, retries included.
    pub fn deadline(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.deadline_secs.unwrap_or(DEFAULT_DEADLINE_SECS))
    }

    /// Flow parameters as strings: strings as written, numbers and booleans in their TOML form.
    pub(crate) fn param_pairs(&self) -> Result<Vec<Pair>, DeviceError> {
        self.params
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Float(f) => f.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    other => {
                        return Err(DeviceError::UnusableParam {
                            device: self.name.clone(),
                            param: k.clone(),
                            kind: other.type_str(),
                        })
                    }
                };
                Ok((k.clone(), value))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's configuration block is the config reference: every key in it (the
    /// commented-out optional ones too) parses, and every field of the config types is in it.
    #[test]
    fn the_readme_config_reference_matches_the_config_types() {
        let readme = include_str!("../../README.md");
        let section = readme
            .split_once("\n## Configuration\n")
            .expect("README has a Configuration section")
            .1;
        let block = section
            .split_once("```toml\n")
            .and_then(|(_, rest)| rest.split_once("\n```"))
            .expect("the Configuration section opens with a toml block")
            .0;
        // Optional settings are written commented out (`# key = value`, `# [table]`).
        fn commented(l: &str) -> Option<&str> {
            let t = l.trim_start().strip_prefix("# ")?;
            let key = t.split([' ', '=']).next()?;
            let is_key = !key.is_empty()
                && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                && t[key.len()..].trim_start().starts_with('=');
            (is_key || t.starts_with('[')).then_some(t)
        }
        let uncommented: String = block
            .lines()
            .map(|l| commented(l).unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        Config::parse(&uncommented, Path::new("README.md"))
            .unwrap_or_else(|e| panic!("the README's config does not parse: {e}"));

        let documented = |field: &str| {
            uncommented.lines().any(|l| {
                let l = l.trim_start();
                l.split('=').next().is_some_and(|k| k.trim() == field)
                    || (l.starts_with('[')
                        && l.split('#')
                            .next()
                            .unwrap_or("")
                            .split(['[', ']', '.'])
                            .any(|part| part.trim() == field))
            })
        };
        let mut missing = Vec::new();
        for (ty, fields) in [
            ("Config", fields_of::<Config>()),
            ("BundlesConfig", fields_of::<BundlesConfig>()),
            ("ConfigLimits", fields_of::<ConfigLimits>()),
            ("KvLimitsConfig", fields_of::<KvLimitsConfig>()),
            ("LocalConfig", fields_of::<LocalConfig>()),
            ("StoreConfig", fields_of::<StoreConfig>()),
            ("SimulatorConfig", fields_of::<SimulatorConfig>()),
            ("MetricsConfig", fields_of::<MetricsConfig>()),
            ("DeviceConfig", fields_of::<DeviceConfig>()),
            ("DeviceTemplate", fields_of::<DeviceTemplate>()),
            ("RuleConfig", fields_of::<RuleConfig>()),
            ("GatewayPermissions", fields_of::<GatewayPermissions>()),
            ("LimitOverrides", fields_of::<LimitOverrides>()),
            ("TemplateConfig", fields_of::<TemplateConfig>()),
        ] {
            for field in fields {
                if !documented(field) {
                    missing.push(format!("{ty}.{field}"));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "the README's config reference lacks {}",
            missing.join(", ")
        );
    }

    /// The field names serde reads for `T` (as written in TOML, renames applied).
    fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
        struct Fields(&'static [&'static str]);
        #[derive(Debug)]
        struct Stop;
        impl std::fmt::Display for Stop {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("stop")
            }
        }
        impl std::error::Error for Stop {}
        impl serde::de::Error for Stop {
            fn custom<M: std::fmt::Display>(_: M) -> Self {
                Stop
            }
        }
        impl<'de> serde::Deserializer<'de> for &mut Fields {
            type Error = Stop;
            fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
                Err(Stop)
            }
            fn deserialize_struct<V: serde::de::Visitor<'de>>(
                self,
                _name: &'static str,
                fields: &'static [&'static str],
                _visitor: V,
            ) -> Result<V::Value, Stop> {
                self.0 = fields;
                Err(Stop)
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
                byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
                identifier ignored_any
            }
        }
        let mut fields = Fields(&[]);
        let _ = T::deserialize(&mut fields);
        fields.0
    }

    #[test]
    fn the_empty_config_has_defaults() {
        let c = Config::parse("", Path::new("/etc/gatehost/gatehost.toml")).unwrap();
        assert_eq!(c.state_dir(), PathBuf::from("/etc/gatehost/state"));
        assert_eq!(c.local.broker, "embedded");
        assert_eq!(c.plugin_dirs.len(), 3);
    }

    #[test]
    fn external_broker_addresses_parse_with_default_ports() {
        let url = |broker: &str| {
            LocalConfig {
                broker: broker.into(),
                ..LocalConfig::default()
            }
            .external_broker()
        };
        assert_eq!(url("embedded"), Ok(None));
        let parsed = url("mqtt://broker.local").unwrap().unwrap();
        assert_eq!(
            (parsed.tls, parsed.host.as_str(), parsed.port),
            (false, "broker.local", 1883)
        );
        assert_eq!(url("mqtts://10.0.0.5/").unwrap().unwrap().port, 8883);
        let v6 = url("mqtts://[::1]:8884").unwrap().unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 8884));
        assert_eq!(v6.to_string(), "mqtts://[::1]:8884");
        let secret = LocalConfig {
            password: Some("hunter2".into()),
            ..LocalConfig::default()
        };
        assert!(!format!("{secret:?}").contains("hunter2"));
        for bad in [
            "tcp://x",
            "mqtt://",
            "mqtt://x:0",
            "mqtt://x:http",
            "mqtt://u@x",
            "[::1]",
        ] {
            let e = url(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("local.broker '{bad}' ")), "{e}");
        }
    }

    #[test]
    fn unknown_fields_are_named_with_their_location() {
        let e = Config::parse("state_dri = \"x\"\n", Path::new("g.toml")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("g.toml: "), "{msg}");
        assert!(msg.contains("unknown field `state_dri`"), "{msg}");
        assert!(msg.contains("line 1"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }

    #[test]
    fn params_become_strings() {
        let c = Config::parse(
            "[[devices]]\nname = \"d\"\nflow = \"f\"\n[devices.params]\na = \"x\"\nb = 3\nc = true\n",
            Path::new("g.toml"),
        )
        .unwrap();
        let pairs = c.devices[0].param_pairs().unwrap();
        assert_eq!(
            pairs,
            vec![
                ("a".into(), "x".into()),
                ("b".into(), "3".into()),
                ("c".into(), "true".into())
            ]
        );
    }

    #[test]
    fn templates_match_names_and_fill_in_the_device() {
        let c = Config::parse(
            "[[device_templates]]\nmatch = \"line7-*-a\"\nflow = \"f\"\n[device_templates.params]\nregistration_id = \"{device}\"\nn = 3\n",
            Path::new("g.toml"),
        )
        .unwrap();
        let t = &c.device_templates[0];
        assert!(t.matches("line7-dev3-a"));
        assert!(t.matches("line7--a"));
        assert!(!t.matches("line7-dev3-b"));
        assert!(!t.matches("line8-x-a"));
        let d = t.instantiate("line7-dev3-a").unwrap();
        assert_eq!(
            d.param_pairs().unwrap(),
            vec![
                ("n".to_string(), "3".to_string()),
                ("registration_id".to_string(), "line7-dev3-a".to_string())
            ]
        );
        let e = t.instantiate("line7 dev/a").unwrap_err().to_string();
        assert!(e.contains("cannot instantiate a template"), "{e}");
        assert!(glob_matches("*", "anything"));
        assert!(glob_matches("a*b*c", "aXbYc"));
        assert!(!glob_matches("a*b*c", "aXcYb"));
    }

    #[test]
    fn table_params_are_refused() {
        let c = Config::parse(
            "[[devices]]\nname = \"d\"\nflow = \"f\"\n[devices.params.x]\ny = 1\n",
            Path::new("g.toml"),
        )
        .unwrap();
        let e = c.devices[0].param_pairs().unwrap_err();
        assert_eq!(
            e.to_string(),
            "device 'd': param 'x' is a table; params must be strings, numbers or booleans"
        );
    }
}
