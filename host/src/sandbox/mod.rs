//! Local emulators of the providers gatehost onboards devices to, for tests, the quickstart and
//! `gatehost sandbox`: DPS (MQTT and REST), IoT Hub, the MindConnect eu1 and private-cloud
//! brokers and AWS IoT Core. One [`Sandbox`] owns a tokio runtime, the sandbox PKI, the services
//! the config asks for, and the [`Recorder`] of what they received.

pub mod auth;
pub mod aws_iot;
pub mod config;
pub mod dps;
pub(crate) mod dps_rest;
pub mod iothub;
pub mod jwt;
pub mod mindconnect;

pub mod pki;

use crate::events::{self, Recorder};
use crate::model::{Pair, PluginError};
use crate::mqtt::server::{MqttServer, MqttService};
use config::{Attestation, SandboxConfig};
use dps::{Dps, LoadedEnrollment};
use iothub::{DeviceAuth, DeviceRegistry, IotHub};
use pki::SandboxPki;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The emulated services, as `gatehost sandbox` lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    Dps,
    DpsRest,
    IotHub,
    MindConnectEu1,
    MindConnectPrivate,
    AwsIot,
}

impl Service {
    pub(crate) const ALL: [Service; 6] = [
        Service::Dps,
        Service::DpsRest,
        Service::IotHub,
        Service::MindConnectEu1,
        Service::MindConnectPrivate,
        Service::AwsIot,
    ];

    /// The name records and `gatehost sandbox --json` use.
    pub fn name(self) -> &'static str {
        match self {
            Service::Dps => "dps",
            Service::DpsRest => "dps-rest",
            Service::IotHub => "iothub",
            Service::MindConnectEu1 => "mindconnect-eu1",
            Service::MindConnectPrivate => "mindconnect-private",
            Service::AwsIot => "aws-iot",
        }
    }
}

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
    brokers: HashMap<Service, MqttServer>,
    rest_port: Option<u16>,
}

impl Sandbox {
    /// Start the services `config` names (IoT Hub also whenever DPS is configured: DPS assigns
    /// devices to it).
    pub fn start(config: &SandboxConfig) -> Result<Sandbox, SandboxError> {
        let pki = SandboxPki::open(&config.resolve(&config.pki_dir))?;
        let tls = pki.server_config()?;
        let recorder = Arc::new(Recorder::with_limit(config.record_limit));
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
        let hub_hostname = hub_config
            .as_ref()
            .map(|h| h.hostname.clone())
            .unwrap_or_else(|| "localhost".into());

        // Every service decided (and its files read) before anything listens.
        let mut services: Vec<(Service, u16, Arc<dyn MqttService>)> = Vec::new();
        let mut dps_service = None;
        if let Some(hub) = &hub_config {
            let service = IotHub::new(hub.hostname.clone(), devices.clone(), recorder.clone());
            services.push((Service::IotHub, hub.port, Arc::new(service)));
        }
        if let Some(dps_config) = &config.dps {
            let service = Arc::new(Dps::new(
                dps_config.clone(),
                load_enrollments(config, &dps_config.enrollments)?,
                hub_hostname.clone(),
                devices.clone(),
                recorder.clone(),
            ));
            dps_service = Some((dps_config.rest_port, service.clone()));
            services.push((Service::Dps, dps_config.port, service));
        }
        if let Some(mc) = &config.mindconnect {
            let tenants = load_tenants(config, &mc.tenants)?;
            let delay = Duration::from_millis(mc.provision_delay_ms);
            let brokers = [
                (Service::MindConnectEu1, mindconnect::Flavor::Eu1, &mc.eu1),
                (
                    Service::MindConnectPrivate,
                    mindconnect::Flavor::PrivateCloud,
                    &mc.private,
                ),
            ];
            for (which, flavor, listener) in brokers {
                if let Some(listener) = listener {
                    let service = mindconnect::MindConnect::new(
                        flavor,
                        tenants.clone(),
                        delay,
                        recorder.clone(),
                    );
                    services.push((which, listener.port, Arc::new(service)));
                }
            }
        }
        if let Some(aws) = &config.aws_iot {
            let things = load_things(config, &aws.things)?;
            let service = aws_iot::AwsIot::new(things, recorder.clone());
            services.push((Service::AwsIot, aws.port, Arc::new(service)));
        }

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("gatehost-sandbox")
            .enable_all()
            .build()
            .map_err(SandboxError::Runtime)?;
        let listen = |port: u16| format!("{}:{port}", config.listen);
        let (brokers, rest_port) = runtime.block_on(async {
            let mut brokers = HashMap::new();
            for (which, port, service) in services {
                let addr = listen(port);
                let server = MqttServer::start(&addr, Some(tls.clone()), service, recorder.clone())
                    .await
                    .map_err(|source| SandboxError::Listen { addr, source })?;
                brokers.insert(which, server);
            }
            let rest_port = match dps_service {
                Some((port, dps)) => {
                    let addr = listen(port);
                    Some(
                        dps_rest::serve(&addr, tls.clone(), dps, recorder.clone())
                            .await
                            .map_err(|source| SandboxError::Listen { addr, source })?,
                    )
                }
                None => None,
            };
            Ok::<_, SandboxError>((brokers, rest_port))
        })?;
        Ok(Sandbox {
            runtime: Some(runtime),
            pki,
            recorder,
            devices,
            hub_hostname,
            brokers,
            rest_port,
        })
    }

    /// The CA file that verifies every sandbox server.
    pub fn ca_file(&self) -> PathBuf {
        self.pki.ca_file()
    }

    /// The port `service` listens on, if it was started.
    pub fn port(&self, service: Service) -> Option<u16> {
        match service {
            Service::DpsRest => self.rest_port,
            broker => self.brokers.get(&broker).map(|s| s.port),
        }
    }

    /// Publish as the broker of `service` to every client subscribed to `topic` (how a test or
    /// the cloud side sends to MindConnect agents and AWS IoT things). False when that service
    /// is not running or serves no such messages.
    pub fn publish(&self, service: Service, topic: &str, payload: &[u8]) -> bool {
        let Some(broker) = self.brokers.get(&service) else {
            return false;
        };
        broker.publish(topic, payload, 1);
        self.recorder.push(
            events::Event::new(service.name(), "cloud-publish", "")
                .topic(topic)
                .body(payload),
        );
        true
    }

    /// Send a cloud-to-device message (QoS 1) to a connected device subscribed to
    /// `devices/<id>/messages/devicebound/#`. False when the device is not connected.
    pub fn send_c2d(&self, device_id: &str, payload: &[u8], properties: &[Pair]) -> bool {
        let Some(hub) = self.brokers.get(&Service::IotHub) else {
            return false;
        };
        let topic = IotHub::c2d_topic(device_id, properties);
        let sent = hub.send_to(device_id, &topic, payload, 1);
        if sent {
            self.recorder.push(
                events::Event::new("iothub", "c2d", device_id)
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

/// The certificates (DER) of a CA file the config names, checked once at start.
fn read_ca(config: &SandboxConfig, path: &Path) -> Result<Vec<Vec<u8>>, SandboxError> {
    let pem = read_pem(config, path)?;
    Ok(crate::pki::x509::parse_pem_certs(
        &pem,
        &config.resolve(path).display().to_string(),
    )?)
}

fn thumbprint_of(config: &SandboxConfig, path: &Path) -> Result<String, SandboxError> {
    Ok(auth::thumbprint(&read_ca(config, path)?[0]))
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
            let ca = match (&e.attestation, &e.ca) {
                (Attestation::GroupX509, Some(path)) => Some(read_ca(config, path)?),
                _ => None,
            };
            Ok(LoadedEnrollment {
                config: e.clone(),
                thumbprint,
                ca,
            })
        })
        .collect()
}

fn load_tenants(
    config: &SandboxConfig,
    tenants: &[config::TenantConfig],
) -> Result<Vec<mindconnect::Tenant>, SandboxError> {
    tenants
        .iter()
        .map(|t| {
            Ok(mindconnect::Tenant {
                name: t.name.clone(),
                ca: read_ca(config, &t.ca)?,
            })
        })
        .collect()
}

fn load_things(
    config: &SandboxConfig,
    things: &[config::ThingConfig],
) -> Result<Vec<aws_iot::Thing>, SandboxError> {
    things
        .iter()
        .map(|t| {
            // `SandboxConfig::validate` made sure exactly one of the two is given.
            let registration = match (&t.certificate, &t.ca) {
                (Some(cert), _) => aws_iot::Registration::Thumbprint(thumbprint_of(config, cert)?),
                (_, ca) => aws_iot::Registration::CertificateAuthority(read_ca(
                    config,
                    ca.as_deref().unwrap_or(Path::new("")),
                )?),
            };
            Ok(aws_iot::Thing {
                name: t.name.clone(),
                registration,
                allow: t.allow.clone(),
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
        (_, _, ca) => DeviceAuth::CertificateAuthority(read_ca(
            config,
            ca.as_deref().unwrap_or(Path::new("")),
        )?),
    })
}
