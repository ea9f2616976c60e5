//! `sandbox.toml`: which emulated services to start, on which ports, with which enrollments and
//! devices. Unknown fields are errors; relative paths are resolved against the config's folder.
//!
//! ```toml
//! pki_dir = "state/sandbox-pki"        # server CA + certificates (created on first start)
//! listen = "127.0.0.1"                 # address every service binds to
//!
//! [dps]
//! port = 0                             # 0 = any free port (printed on start)
//! id_scope = "0ne00SANDBOX"
//! assign_delay_ms = 1000               # how long a registration stays "assigning"
//! retry_after_secs = 1                 # the retry-after DPS asks clients to wait
//! throttle_registers = 0               # answer each registration's first N registers 429
//!
//! [[dps.enrollments]]
//! attestation = "symmetric-key"        # | group-symmetric-key | x509 | group-x509
//! registration_id = "press7"
//! primary_key = "<base64>"             # group-symmetric-key: group_key; x509: certificate; group-x509: ca
//! # device_id = "press7"               # default: the registration id
//! # status = "disabled"                # default "enabled"
//! # fail = { error_code = 400209, error_message = "Custom allocation failed" }
//!
//! [iothub]
//! port = 0
//! hostname = "localhost"               # what DPS assigns and devices put in their username
//! [[iothub.devices]]                   # devices that exist without DPS
//! device_id = "direct01"
//! primary_key = "<base64>"             # or certificate = "<device cert>", or ca = "<CA file>"
//!
//! [mindconnect]
//! provision_delay_ms = 3000            # a new agent's connections are closed this long
//! eu1 = { port = 0 }                   # client-certificate broker (eu1 style)
//! private = { port = 0 }               # _CertificateBearer + JWT broker (private cloud)
//! [[mindconnect.tenants]]
//! name = "acme"                        # client ids are <tenant>_<certificate CN>
//! ca = "acme-ca.pem"                   # the tenant CA agent certificates chain to
//!
//! [aws_iot]
//! port = 0
//! [[aws_iot.things]]
//! name = "press7"                      # the client id the thing connects with
//! certificate = "press7.pem"           # registered by thumbprint; or ca = "<CA file>" (then
//!                                      # `name` may be left out: thing name = certificate CN)
//! allow = ["dt/${iot:ClientId}/#"]     # topic filters it may publish and subscribe to
//! ```

use super::SandboxError;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {
    #[serde(default = "default_pki_dir")]
    pub pki_dir: PathBuf,
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default)]
    pub dps: Option<DpsConfig>,
    #[serde(default)]
    pub iothub: Option<IotHubConfig>,
    #[serde(default)]
    pub mindconnect: Option<MindConnectConfig>,
    #[serde(default)]
    pub aws_iot: Option<AwsIotConfig>,
    /// How many records tests and `gatehost sandbox` can look back on (all are logged).
    #[serde(default = "default_record_limit")]
    pub record_limit: usize,
    #[serde(skip)]
    pub base_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpsConfig {
    /// DPS over MQTT.
    #[serde(default)]
    pub port: u16,
    /// DPS over HTTPS (the REST API), with the same enrollments and operations.
    #[serde(default)]
    pub rest_port: u16,
    #[serde(default = "default_scope")]
    pub id_scope: String,
    #[serde(default = "default_assign_delay")]
    pub assign_delay_ms: u64,
    #[serde(default = "default_retry_after")]
    pub retry_after_secs: u32,
    /// Answer the first N register requests of every registration `429` with `retry-after`,
    /// as a throttled DPS tenant does (0 = never).
    #[serde(default)]
    pub throttle_registers: u32,
    #[serde(default)]
    pub enrollments: Vec<Enrollment>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Attestation {
    SymmetricKey,
    GroupSymmetricKey,
    X509,
    GroupX509,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EnrollmentStatus {
    #[default]
    Enabled,
    Disabled,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failure {
    pub error_code: u32,
    pub error_message: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrollment {
    pub attestation: Attestation,
    /// Individual enrollments: the registration id they are for.
    #[serde(default)]
    pub registration_id: Option<String>,
    #[serde(default)]
    pub primary_key: Option<String>,
    #[serde(default)]
    pub group_key: Option<String>,
    /// Individual X.509: the device certificate (PEM) whose thumbprint is enrolled.
    #[serde(default)]
    pub certificate: Option<PathBuf>,
    /// Group X.509: the CA certificate (PEM) device certificates must chain to.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    #[serde(default)]
    pub device_id: Option<String>,
    #[serde(default)]
    pub status: EnrollmentStatus,
    #[serde(default)]
    pub fail: Option<Failure>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IotHubConfig {
    #[serde(default)]
    pub port: u16,
    #[serde(default = "default_hostname")]
    pub hostname: String,
    #[serde(default)]
    pub devices: Vec<HubDeviceConfig>,
}

impl Default for IotHubConfig {
    fn default() -> Self {
        IotHubConfig {
            port: 0,
            hostname: default_hostname(),
            devices: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubDeviceConfig {
    pub device_id: String,
    #[serde(default)]
    pub primary_key: Option<String>,
    #[serde(default)]
    pub certificate: Option<PathBuf>,
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MindConnectConfig {
    #[serde(default = "default_provision_delay")]
    pub provision_delay_ms: u64,
    #[serde(default)]
    pub eu1: Option<Listener>,
    #[serde(default)]
    pub private: Option<Listener>,
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    #[serde(default)]
    pub port: u16,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub name: String,
    pub ca: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsIotConfig {
    #[serde(default)]
    pub port: u16,
    #[serde(default)]
    pub things: Vec<ThingConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThingConfig {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub certificate: Option<PathBuf>,
    #[serde(default)]
    pub ca: Option<PathBuf>,
    #[serde(default)]
    pub allow: Vec<String>,
}

fn default_provision_delay() -> u64 {
    3000
}
fn default_record_limit() -> usize {
    crate::events::DEFAULT_LIMIT
}
fn default_pki_dir() -> PathBuf {
    "state/sandbox-pki".into()
}
fn default_listen() -> String {
    "127.0.0.1".into()
}
fn default_scope() -> String {
    "0ne00SANDBOX".into()
}
fn default_assign_delay() -> u64 {
    1000
}
fn default_retry_after() -> u32 {
    1
}
fn default_hostname() -> String {
    "localhost".into()
}

impl SandboxConfig {
    pub fn load(path: &Path) -> Result<SandboxConfig, SandboxError> {
        let text = std::fs::read_to_string(path).map_err(|e| SandboxError::io(path, e))?;
        SandboxConfig::parse(&text, path.parent().unwrap_or(Path::new(".")), path)
    }

    /// Parse `text`; relative paths are taken from `base_dir`; errors name `source`.
    pub fn parse(
        text: &str,
        base_dir: &Path,
        source: &Path,
    ) -> Result<SandboxConfig, SandboxError> {
        let mut config: SandboxConfig = toml::from_str(text).map_err(|e| SandboxError::Config {
            path: source.to_path_buf(),
            message: crate::model::one_line(&e.to_string()),
        })?;
        config.base_dir = if base_dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base_dir.to_path_buf()
        };
        config.validate().map_err(|message| SandboxError::Config {
            path: source.to_path_buf(),
            message,
        })?;
        Ok(config)
    }

    pub(crate) fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }

    /// Every hub device has one way to authenticate, and every enrollment has the fields its
    /// attestation needs (and no others that would be ignored).
    fn validate(&self) -> Result<(), String> {
        for (i, d) in self.iothub.iter().flat_map(|h| &h.devices).enumerate() {
            let ways = [
                d.primary_key.is_some(),
                d.certificate.is_some(),
                d.ca.is_some(),
            ];
            if ways.iter().filter(|w| **w).count() != 1 {
                return Err(format!(
                    "iothub.devices[{i}] ('{}'): give exactly one of primary_key, certificate or ca",
                    d.device_id
                ));
            }
        }
        self.validate_mindconnect()?;
        self.validate_aws_iot()?;
        let Some(dps) = &self.dps else { return Ok(()) };
        for (i, e) in dps.enrollments.iter().enumerate() {
            let at = format!("dps.enrollments[{i}]");
            let need = |present: bool, field: &str| {
                if present {
                    Ok(())
                } else {
                    Err(format!(
                        "{at}: {:?} attestation needs `{field}`",
                        e.attestation
                    ))
                }
            };
            let forbid = |present: bool, field: &str| {
                if present {
                    Err(format!(
                        "{at}: `{field}` does not apply to {:?} attestation",
                        e.attestation
                    ))
                } else {
                    Ok(())
                }
            };
            match e.attestation {
                Attestation::SymmetricKey => {
                    need(e.registration_id.is_some(), "registration_id")?;
                    need(e.primary_key.is_some(), "primary_key")?;
                }
                Attestation::GroupSymmetricKey => {
                    need(e.group_key.is_some(), "group_key")?;
                    forbid(e.registration_id.is_some(), "registration_id")?;
                    forbid(e.device_id.is_some(), "device_id")?;
                }
                Attestation::X509 => {
                    need(e.registration_id.is_some(), "registration_id")?;
                    need(e.certificate.is_some(), "certificate")?;
                }
                Attestation::GroupX509 => {
                    need(e.ca.is_some(), "ca")?;
                    forbid(e.registration_id.is_some(), "registration_id")?;
                    forbid(e.device_id.is_some(), "device_id")?;
                }
            }
            for key in [&e.primary_key, &e.group_key].into_iter().flatten() {
                if crate::pki::crypto::base64_decode(key).map_or(true, |k| k.is_empty()) {
                    return Err(format!("{at}: the key is not valid base64"));
                }
            }
        }
        Ok(())
    }

    /// A MindConnect section serves at least one broker for at least one tenant, and tenant
    /// names can be told apart in `<tenant>_<CN>` client ids.
    fn validate_mindconnect(&self) -> Result<(), String> {
        let Some(mc) = &self.mindconnect else {
            return Ok(());
        };
        if mc.eu1.is_none() && mc.private.is_none() {
            return Err(
                "mindconnect: name at least one broker (eu1 = { port = 0 } or private = { port = 0 })"
                    .into(),
            );
        }
        if mc.tenants.is_empty() {
            return Err(
                "mindconnect: add at least one [[mindconnect.tenants]] with name and ca".into(),
            );
        }
        for (i, t) in mc.tenants.iter().enumerate() {
            let n = t.name.chars().count();
            if n == 0 || n > 36 || t.name.contains('_') || t.name.contains('/') {
                return Err(format!(
                    "mindconnect.tenants[{i}]: tenant name '{}' must be 1 to 36 characters without '_' or '/'",
                    t.name
                ));
            }
        }
        Ok(())
    }

    /// Every thing is registered one way, has a name to connect as, and valid topic filters.
    fn validate_aws_iot(&self) -> Result<(), String> {
        let Some(aws) = &self.aws_iot else {
            return Ok(());
        };
        for (i, t) in aws.things.iter().enumerate() {
            let at = format!("aws_iot.things[{i}]");
            match (&t.certificate, &t.ca) {
                (Some(_), None) if t.name.is_none() => {
                    return Err(format!(
                        "{at}: a thing registered by certificate needs `name`"
                    ))
                }
                (Some(_), None) | (None, Some(_)) => {}
                _ => return Err(format!("{at}: give exactly one of certificate or ca")),
            }
            for filter in &t.allow {
                crate::mqtt::topic::validate_topic_filter(filter).map_err(|why| {
                    format!("{at}: '{filter}' is not a valid MQTT topic filter: it {why}")
                })?;
            }
        }
        Ok(())
    }
}
