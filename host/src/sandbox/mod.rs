//! Local emulators of the providers gatehost onboards devices to, for tests, the quickstart and
//! `gatehost sandbox`: DPS and IoT Hub over MQTT/TLS so far. One [`Sandbox`] owns a tokio runtime,
//! the sandbox PKI, the services the config asks for, and the [`Recorder`] of what they received.

pub mod auth;
pub mod config;
pub mod dps;
pub mod iothub;
pub mod mqtt_server;
pub mod pki;
pub mod record;
pub mod tls;

use crate::model::{Pair, PluginError};
use config::{Attestation, SandboxConfig};
use dps::{Dps, LoadedEnrollment};
use iothub::{DeviceAuth, DeviceRegistry, IotHub};
use mqtt_server::MqttServer;
use pki::SandboxPki;
use record::Recorder;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("sandbox PKI: {0}")]
    Pki(String),
    #[error("cannot start the sandbox's runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

impl SandboxError {
    pub fn io(path: &Path, source: std::io::Error) -> SandboxError {
        SandboxError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl From<PluginError> for SandboxError {
    fn from(e: PluginError) -> Self {
        SandboxError::Pki(e.message)
    }
}

/// A running sandbox. Dropping it stops every service.
pub struct Sandbox {
    runtime: Option<tokio::runtime::Runtime>,
    pub pki: SandboxPki,
    pub recorder: Arc<Recorder>,
    pub devices: Arc<DeviceRegistry>,
    pub hub_hostname: String,
    dps: Option<MqttServer>,
    iothub: Option<MqttServer>,
}

impl Sandbox {
    /// Start the services `config` names (IoT Hub also whenever DPS is configured: DPS assigns
    /// devices to it).
    pub fn start(config: &SandboxConfig) -> Result<Sandbox, SandboxError> {
        let pki = SandboxPki::open(&config.resolve(&config.pki_dir))?;
        let tls = pki.server_config()?;
        let recorder = Arc::new(Recorder::default());
        let devices = Arc::new(DeviceRegistry::default());
        let hub_config = config
            .iothub
            .clone()
            .or_else(|| config.dps.as_ref().map(|_| Default::default()));
        if let Some(hub) = &hub_config {
            for d in &hub.devices {
                devices.upsert(&d.device_id, hub_device_auth(config, d)?);
            }
        }
        let enrollments = match &config.dps {
            Some(dps) => load_enrollments(config, &dps.enrollments)?,
            None => Vec::new(),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("gatehost-sandbox")
            .enable_all()
            .build()
            .map_err(SandboxError::Runtime)?;
        let hub_hostname = hub_config
            .as_ref()
            .map(|h| h.hostname.clone())
            .unwrap_or_else(|| "localhost".into());
        let listen = |port: u16| format!("{}:{port}", config.listen);
        let (iothub, dps) = runtime.block_on(async {
            let iothub = match &hub_config {
                Some(hub) => {
                    let service = Arc::new(IotHub::new(
                        hub.hostname.clone(),
                        devices.clone(),
                        recorder.clone(),
                    ));
                    let addr = listen(hub.port);
                    Some(
                        MqttServer::start(&addr, tls.clone(), service, recorder.clone())
                            .await
                            .map_err(|source| SandboxError::Listen { addr, source })?,
                    )
                }
                None => None,
            };
            let dps = match &config.dps {
                Some(dps_config) => {
                    let service = Arc::new(Dps::new(
                        dps_config.clone(),
                        enrollments,
                        hub_hostname.clone(),
                        devices.clone(),
                        recorder.clone(),
                    ));
                    let addr = listen(dps_config.port);
                    Some(
                        MqttServer::start(&addr, tls.clone(), service, recorder.clone())
                            .await
                            .map_err(|source| SandboxError::Listen { addr, source })?,
                    )
                }
                None => None,
            };
            Ok::<_, SandboxError>((iothub, dps))
        })?;
        Ok(Sandbox {
            runtime: Some(runtime),
            pki,
            recorder,
            devices,
            hub_hostname,
            dps,
            iothub,
        })
    }

    /// The CA file that verifies every sandbox server.
    pub fn ca_file(&self) -> PathBuf {
        self.pki.ca_file()
    }

    pub fn dps_port(&self) -> Option<u16> {
        self.dps.as_ref().map(|s| s.port)
    }

    pub fn iothub_port(&self) -> Option<u16> {
        self.iothub.as_ref().map(|s| s.port)
    }

    /// Send a cloud-to-device message (QoS 1) to a connected device subscribed to
    /// `devices/<id>/messages/devicebound/#`. False when the device is not connected.
    pub fn send_c2d(&self, device_id: &str, payload: &[u8], properties: &[Pair]) -> bool {
        let Some(hub) = &self.iothub else {
            return false;
        };
        let topic = IotHub::c2d_topic(device_id, properties);
        let sent = hub.send_to(device_id, &topic, payload, 1);
        if sent {
            self.recorder.push(
                record::Record::new("iothub", "c2d", device_id)
                    .topic(&topic)
                    .body(payload)
                    .properties(properties.to_vec()),
            );
        }
        sent
    }

    /// Block until Ctrl-C, or until `limit` has passed.
    pub fn wait(&self, limit: Option<std::time::Duration>) {
        let Some(runtime) = &self.runtime else { return };
        runtime.block_on(async {
            let sleep = async {
                match limit {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = sleep => {}
            }
        });
    }

    /// Whether `device_id` has a live IoT Hub connection.
    pub fn hub_connected(&self, device_id: &str) -> bool {
        self.iothub
            .as_ref()
            .is_some_and(|h| h.is_connected(device_id))
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn read_pem(config: &SandboxConfig, path: &Path) -> Result<String, SandboxError> {
    let path = config.resolve(path);
    std::fs::read_to_string(&path).map_err(|e| SandboxError::io(&path, e))
}

fn thumbprint_of(config: &SandboxConfig, path: &Path) -> Result<String, SandboxError> {
    let pem = read_pem(config, path)?;
    let der = crate::caps::certs::x509::parse_pem_certs(&pem, &path.display().to_string())?;
    Ok(auth::thumbprint(&der[0]))
}

fn load_enrollments(
    config: &SandboxConfig,
    enrollments: &[config::Enrollment],
) -> Result<Vec<LoadedEnrollment>, SandboxError> {
    enrollments
        .iter()
        .map(|e| {
            let thumbprint = match (&e.attestation, &e.certificate) {
                (Attestation::X509, Some(path)) => Some(thumbprint_of(config, path)?),
                _ => None,
            };
            let ca_pem = match (&e.attestation, &e.ca) {
                (Attestation::GroupX509, Some(path)) => {
                    let pem = read_pem(config, path)?;
                    crate::caps::certs::x509::parse_pem_certs(&pem, &path.display().to_string())?;
                    Some(pem)
                }
                _ => None,
            };
            Ok(LoadedEnrollment {
                config: e.clone(),
                thumbprint,
                ca_pem,
            })
        })
        .collect()
}

fn hub_device_auth(
    config: &SandboxConfig,
    d: &config::HubDeviceConfig,
) -> Result<DeviceAuth, SandboxError> {
    // `SandboxConfig::validate` made sure exactly one of the three is given.
    Ok(match (&d.primary_key, &d.certificate, &d.ca) {
        (Some(key), _, _) => DeviceAuth::SymmetricKey(key.clone()),
        (_, Some(cert), _) => DeviceAuth::Thumbprint(thumbprint_of(config, cert)?),
        (_, _, ca) => {
            let ca = ca.as_deref().unwrap_or(Path::new(""));
            DeviceAuth::CertificateAuthority(vec![read_pem(config, ca)?])
        }
    })
}
