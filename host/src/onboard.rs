//! Onboarding a configured device: run its flow, and keep the resulting connection in the state
//! directory (`<state>/devices/<name>.json`) so a restart reconnects without registering again.
//! A persisted connection is reused while the device's flow and parameters are unchanged;
//! secrets (SAS tokens, JWTs) are never written — `refresh` mints them for every connection.

use crate::config::{Config, DeviceConfig};
use crate::model::{Auth, Connection, PluginError};
use crate::plugins::registry::{Registry, RegistryError};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum OnboardError {
    #[error("no device '{0}' in the config ([[devices]] name = ...), and no [[device_templates]] match it")]
    UnknownDevice(String),
    #[error(transparent)]
    Params(#[from] crate::config::DeviceError),
    #[error("device '{device}': {source}")]
    FlowParams {
        device: String,
        source: crate::plugins::manifest::ParamsError,
    },
    #[error("{0}")]
    Plugin(#[from] RegistryError),
    #[error("device '{device}': flow '{flow}' failed: {source}")]
    Flow {
        device: String,
        flow: String,
        source: PluginError,
    },
    #[error("device '{device}': flow '{flow}' gave up after {attempts} attempts in {secs} s (deadline_secs); the last one failed: {source}")]
    Deadline {
        device: String,
        flow: String,
        attempts: u32,
        secs: u64,
        source: PluginError,
    },
    #[error("{path}: {message}")]
    State { path: PathBuf, message: String },
}

/// What is kept about an onboarded device.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Onboarded {
    pub device: String,
    pub flow: String,
    /// SHA-256 of the flow name and parameters the connection was made with.
    pub params_digest: String,
    /// Unix seconds of the registration.
    pub onboarded_at: u64,
    /// The connection, with any password blanked: refresh before connecting.
    pub connection: Connection,
}

/// The result of [`onboard`]: the connection, whether the flow ran (false = reused), and how
/// many times it ran.
#[derive(Debug)]
pub struct Outcome {
    pub onboarded: Onboarded,
    pub registered: bool,
    pub attempts: u32,
}

/// The device `name`, as the flow will see it: listed in `[[devices]]`, or instantiated from
/// the first `[[device_templates]]` entry whose pattern matches the name (zero-touch).
pub fn device(config: &Config, name: &str) -> Result<DeviceConfig, OnboardError> {
    if let Some(listed) = config.devices.iter().find(|d| d.name == name) {
        return Ok(listed.clone());
    }
    match config.device_templates.iter().find(|t| t.matches(name)) {
        Some(template) => template.instantiate(name).map_err(OnboardError::Params),
        None => Err(OnboardError::UnknownDevice(name.to_string())),
    }
}

/// Onboard `device`: reuse its persisted connection unless `force`, the state is missing, or
/// the flow or parameters changed; otherwise run the flow and persist the result.
pub fn onboard(
    config: &Config,
    registry: &Registry,
    device: &DeviceConfig,
    force: bool,
) -> Result<Outcome, OnboardError> {
    let mut params = device.param_pairs().map_err(OnboardError::Params)?;
    if let Some(declared) = &registry.get(&device.flow)?.info.manifest.params {
        params = declared
            .apply(&params)
            .map_err(|source| OnboardError::FlowParams {
                device: device.name.clone(),
                source,
            })?;
    }
    let digest = params_digest(&device.flow, &params);
    let path = state_path(config, &device.name);
    if !force {
        if let Some(kept) = read_state(&path)? {
            if kept.params_digest == digest {
                return Ok(Outcome {
                    onboarded: kept,
                    registered: false,
                    attempts: 0,
                });
            }
            tracing::info!(device = %device.name, "the flow or its parameters changed since the last onboarding; registering again");
        }
    }
    let flow = registry.flow(&device.flow)?;
    let (connection, attempts) = run_with_retries(device, || flow.onboard(&params))?;
    let onboarded = Onboarded {
        device: device.name.clone(),
        flow: device.flow.clone(),
        params_digest: digest,
        onboarded_at: crate::pki::crypto::now_unix(),
        connection: without_secrets(connection),
    };
    write_state(&path, &onboarded)?;
    Ok(Outcome {
        onboarded,
        registered: true,
        attempts,
    })
}

/// Run `attempt` until it succeeds, fails for good, or the device's deadline would pass:
/// transient failures (closed, I/O, timeout, throttled, remote) are retried after
/// [`Backoff`](crate::retry::Backoff) waits. Returns the result and the number of attempts.
fn run_with_retries<T>(
    device: &DeviceConfig,
    mut attempt: impl FnMut() -> Result<T, PluginError>,
) -> Result<(T, u32), OnboardError> {
    let started = Instant::now();
    let deadline = started + device.deadline();
    let mut backoff = crate::retry::Backoff::default();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let failure = match attempt() {
            Ok(value) => return Ok((value, attempts)),
            Err(e) => e,
        };
        if !crate::retry::is_transient(failure.kind) {
            return Err(OnboardError::Flow {
                device: device.name.clone(),
                flow: device.flow.clone(),
                source: failure,
            });
        }
        let wait = backoff.next_delay();
        if Instant::now() + wait >= deadline {
            return Err(OnboardError::Deadline {
                device: device.name.clone(),
                flow: device.flow.clone(),
                attempts,
                secs: started.elapsed().as_secs(),
                source: failure,
            });
        }
        tracing::warn!(
            device = %device.name,
            flow = %device.flow,
            attempt = attempts,
            "onboarding failed ({failure}); trying again in {} ms",
            wait.as_millis()
        );
        std::thread::sleep(wait);
    }
}

/// Where a device's connection is kept.
pub fn state_path(config: &Config, device: &str) -> PathBuf {
    config.state_dir().join("devices").join(format!(
        "{}.json",
        crate::pki::crypto::percent_encode(device)
    ))
}

fn params_digest(flow: &str, params: &[crate::model::Pair]) -> String {
    let mut hash = sha2::Sha256::new();
    hash.update(flow.as_bytes());
    for (k, v) in params {
        hash.update([0]);
        hash.update(k.as_bytes());
        hash.update([0]);
        hash.update(v.as_bytes());
    }
    hex::encode(hash.finalize())
}

fn without_secrets(mut connection: Connection) -> Connection {
    connection.auth = match connection.auth {
        Auth::Password { .. } => Auth::Password {
            password: String::new(),
        },
        Auth::CertificateAndPassword { certificate, .. } => Auth::CertificateAndPassword {
            certificate,
            password: String::new(),
        },
        other => other,
    };
    connection
}

fn read_state(path: &Path) -> Result<Option<Onboarded>, OnboardError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(OnboardError::State {
                path: path.to_path_buf(),
                message: e.to_string(),
            })
        }
    };
    match serde_json::from_str(&text) {
        Ok(kept) => Ok(Some(kept)),
        Err(e) => {
            // A damaged state file is not fatal: the device registers again.
            tracing::warn!(path = %path.display(), "ignoring a damaged onboarding state file: {e}");
            Ok(None)
        }
    }
}

/// Write the state atomically (temp file, then rename), so a crash leaves the old or the new.
fn write_state(path: &Path, onboarded: &Onboarded) -> Result<(), OnboardError> {
    let err = |message: String| OnboardError::State {
        path: path.to_path_buf(),
        message,
    };
    let text = serde_json::to_string_pretty(onboarded).map_err(|e| err(e.to_string()))?;
    crate::private_files::write(path, text.as_bytes()).map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_blanked_and_digests_follow_params() {
        let conn: Connection = serde_json::from_str(
            r#"{"host":"h","port":1,"client_id":"c","auth":{"kind":"password","password":"SharedAccessSignature x"}}"#,
        )
        .unwrap();
        let kept = without_secrets(conn);
        assert_eq!(
            kept.auth,
            Auth::Password {
                password: String::new()
            }
        );
        let a = params_digest("f", &[("k".into(), "v".into())]);
        assert_ne!(a, params_digest("f", &[("k".into(), "w".into())]));
        assert_ne!(a, params_digest("g", &[("k".into(), "v".into())]));
        assert_eq!(a, params_digest("f", &[("k".into(), "v".into())]));
    }
}
