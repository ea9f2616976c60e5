//! The emulated IoT Hub over MQTT: a device registry (filled by DPS assignments and by the
//! config), authentication by SAS token or X.509, telemetry on
//! `devices/<id>/messages/events/<property bag>` recorded as body + properties, cloud-to-device
//! messages on `devices/<id>/messages/devicebound/...`, and IoT Hub's strictness: any other
//! publish topic closes the connection, as does a message over 256 KB.

use super::auth;
use crate::events::{Event, Recorder};
use crate::model::Pair;
use crate::mqtt::server::{
    ConnectRequest, ConnectVerdict, Identity, MqttService, Peer, PublishVerdict,
};
use crate::pki::crypto;
use rumqttc::mqttbytes::v4::{ConnectReturnCode, Publish};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// IoT Hub's largest device-to-cloud message.
pub(crate) const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// How a registered device authenticates.
#[derive(Debug, Clone)]
pub enum DeviceAuth {
    /// SAS tokens signed with this key (base64).
    SymmetricKey(String),
    /// A client certificate with this SHA-256 thumbprint.
    Thumbprint(String),
    /// A client certificate issued (for this device id) by one of these CA certificates (DER).
    CertificateAuthority(Vec<Vec<u8>>),
}

/// The hub's device registry, shared with DPS (which adds devices when it assigns them).
#[derive(Debug, Default)]
pub struct DeviceRegistry {
    devices: Mutex<HashMap<String, DeviceAuth>>,
}

impl DeviceRegistry {
    pub(crate) fn upsert(&self, device_id: &str, auth: DeviceAuth) {
        self.devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(device_id.to_string(), auth);
    }

    pub fn get(&self, device_id: &str) -> Option<DeviceAuth> {
        self.devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(device_id)
            .cloned()
    }

    pub fn remove(&self, device_id: &str) -> bool {
        self.devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(device_id)
            .is_some()
    }
}

pub struct IotHub {
    pub hostname: String,
    pub devices: Arc<DeviceRegistry>,
    recorder: Arc<Recorder>,
}

impl IotHub {
    pub fn new(hostname: String, devices: Arc<DeviceRegistry>, recorder: Arc<Recorder>) -> Self {
        IotHub {
            hostname,
            devices,
            recorder,
        }
    }

    /// The device id in a username `<hub>/<deviceId>/?api-version=..` (also the older
    /// `<hub>/<deviceId>/api-version=..` that IoT Edge requires).
    fn username_device<'a>(&self, username: &'a str) -> Option<&'a str> {
        let rest = username.strip_prefix(&self.hostname)?.strip_prefix('/')?;
        let (device, tail) = rest.split_once('/')?;
        let tail = tail.strip_prefix('?').unwrap_or(tail);
        (!device.is_empty() && tail.starts_with("api-version=")).then_some(device)
    }

    /// Who the client is (`sas:<id>` / `x509:<id>`) and when its SAS token expires.
    fn authenticate(
        &self,
        request: &ConnectRequest<'_>,
        device_id: &str,
    ) -> Result<(String, Option<u64>), String> {
        let auth = self.devices.get(device_id).ok_or_else(|| {
            format!(
                "device '{device_id}' is not registered in {}",
                self.hostname
            )
        })?;
        let now = crypto::now_unix();
        if !request.password.is_empty() {
            let DeviceAuth::SymmetricKey(key) = &auth else {
                return Err(format!(
                    "device '{device_id}' authenticates with X.509, but a SAS token was presented"
                ));
            };
            let resource = format!("{}/devices/{device_id}", self.hostname);
            let expiry = auth::verify_sas(request.password, &resource, key, None, now)?;
            return Ok((format!("sas:{device_id}"), Some(expiry)));
        }
        let leaf = request
            .peer_chain
            .first()
            .ok_or("neither a SAS token nor a client certificate was presented")?;
        match &auth {
            DeviceAuth::SymmetricKey(_) => Err(format!(
                "device '{device_id}' authenticates with a SAS token, but none was presented"
            )),
            DeviceAuth::Thumbprint(expected) => {
                let got = auth::thumbprint(leaf);
                if &got != expected {
                    return Err(format!(
                        "the client certificate's thumbprint {got} is not the one registered for '{device_id}'"
                    ));
                }
                crate::pki::x509::check_validity(leaf, now as i64, "the client certificate")
                    .map_err(|e| e.message)?;
                Ok((format!("x509:{device_id}"), None))
            }
            DeviceAuth::CertificateAuthority(cas) => {
                let cn = auth::verify_chain(request.peer_chain, cas, now as i64)?;
                if cn != device_id {
                    return Err(format!(
                        "the client certificate is for '{cn}', not device '{device_id}'"
                    ));
                }
                Ok((format!("x509:{device_id}"), None))
            }
        }
    }

    /// `devices/<id>/messages/devicebound/<property bag>` for a cloud-to-device message.
    pub(crate) fn c2d_topic(device_id: &str, properties: &[Pair]) -> String {
        let mut bag = vec![(
            "$.to".to_string(),
            format!("/devices/{device_id}/messages/deviceBound"),
        )];
        bag.extend(properties.iter().cloned());
        let encoded: Vec<String> = bag
            .iter()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    crypto::percent_encode(k),
                    crypto::percent_encode(v)
                )
            })
            .collect();
        format!(
            "devices/{device_id}/messages/devicebound/{}",
            encoded.join("&")
        )
    }
}

/// `k=v&k2=v2` (percent-encoded) as pairs.
pub(crate) fn parse_property_bag(bag: &str) -> Result<Vec<Pair>, String> {
    if bag.is_empty() {
        return Ok(Vec::new());
    }
    bag.split('&')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8()
                    .map(|c| c.into_owned())
                    .map_err(|_| format!("property '{kv}' is not valid UTF-8 once decoded"))
            };
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

impl MqttService for IotHub {
    fn name(&self) -> &'static str {
        "iothub"
    }

    fn connect(&self, request: &ConnectRequest<'_>) -> ConnectVerdict {
        let Some(device_id) = self.username_device(request.username) else {
            return ConnectVerdict::Refuse(
                ConnectReturnCode::BadUserNamePassword,
                format!(
                    "username '{}' is not {}/<deviceId>/?api-version=<version>",
                    request.username, self.hostname
                ),
            );
        };
        if let Some(refusal) = request.client_id_refusal(device_id, "device id") {
            return refusal;
        }
        match self.authenticate(request, device_id) {
            Ok((label, expires_at)) => ConnectVerdict::Accept(Ok(Identity {
                expires_at,
                ..Identity::new(label, None)
            })),
            Err(why) => ConnectVerdict::Refuse(ConnectReturnCode::NotAuthorized, why),
        }
    }

    fn subscribe(&self, session: &Peer, filter: &str, qos: u8) -> Result<u8, String> {
        let id = &session.client_id;
        let served = [
            format!("devices/{id}/messages/devicebound/#"),
            "$iothub/twin/res/#".to_string(),
            "$iothub/twin/PATCH/properties/desired/#".to_string(),
            "$iothub/methods/POST/#".to_string(),
        ];
        if served.iter().any(|f| f == filter) {
            Ok(qos.min(1))
        } else {
            Err(format!(
                "IoT Hub serves no subscription to '{filter}' for device '{id}'"
            ))
        }
    }

    fn publish(&self, session: &Peer, publish: &Publish) -> PublishVerdict {
        let id = &session.client_id;
        let prefix = format!("devices/{id}/messages/events/");
        let Some(bag) = publish.topic.strip_prefix(&prefix) else {
            return PublishVerdict::Disconnect(format!(
                "published to '{}', which IoT Hub does not accept from device '{id}'; closed",
                publish.topic
            ));
        };
        if publish.payload.len() > MAX_MESSAGE_BYTES {
            return PublishVerdict::Disconnect(format!(
                "a message of {} bytes exceeds IoT Hub's {MAX_MESSAGE_BYTES}-byte limit; closed",
                publish.payload.len()
            ));
        }
        let properties = match parse_property_bag(bag) {
            Ok(p) => p,
            Err(why) => return PublishVerdict::Disconnect(format!("{why}; closed")),
        };
        self.recorder.push(
            Event::new("iothub", "telemetry", id)
                .identity(session.label())
                .topic(&publish.topic)
                .body(&publish.payload)
                .properties(properties)
                .detail(format!(
                    "{} bytes, QoS {}",
                    publish.payload.len(),
                    publish.qos as u8
                )),
        );
        PublishVerdict::Accept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn property_bags_decode_like_the_sdks_encode() {
        assert_eq!(
            parse_property_bag("%24.ct=application%2Fjson&%24.ce=utf-8&line=7").unwrap(),
            vec![
                ("$.ct".to_string(), "application/json".to_string()),
                ("$.ce".to_string(), "utf-8".to_string()),
                ("line".to_string(), "7".to_string())
            ]
        );
        assert_eq!(parse_property_bag("").unwrap(), vec![]);
        assert!(parse_property_bag("a=%FF").is_err());
    }

    #[test]
    fn usernames_name_the_hub_and_the_device() {
        let hub = IotHub::new("localhost".into(), Default::default(), Default::default());
        assert_eq!(
            hub.username_device("localhost/d1/?api-version=2021-04-12"),
            Some("d1")
        );
        assert_eq!(
            hub.username_device("localhost/d1/api-version=2016-11-14"),
            Some("d1")
        );
        assert_eq!(hub.username_device("otherhub/d1/?api-version=1"), None);
        assert_eq!(hub.username_device("localhost/d1"), None);
        assert_eq!(hub.username_device("localhost//?api-version=1"), None);
    }
}
