//! Example rule (WASM twin of `scripts/rules/iothub-telemetry.rhai`): a brownfield topic
//! `<site>/<device>/<measurement...>` becomes IoT Hub telemetry of `<device>`.
//!
//! - JSON object payload: the topic levels are added as the first fields
//!   (`{"site":..,"device":..,"measurement":..,<original fields>}`), sent with `$.ct`/`$.ce` so IoT
//!   Hub can route on the body.
//! - Any other JSON value: wrapped as `{"site":..,"device":..,"measurement":..,"value":<payload>}`.
//! - Not JSON (empty, binary, plain text): the payload is forwarded unchanged and the topic levels
//!   travel in the property bag (`site=..&measurement=..`).
//!
//! QoS 2 is downgraded to 1 (IoT Hub supports 0 and 1); retain is dropped; user properties are kept.

use gatehost_sdk::host::{crypto, json};
use gatehost_sdk::rule::{Destination, ErrorKind, Guest, Message, Outbound};
use gatehost_sdk::{error, Error};

struct IothubTelemetry;

impl Guest for IothubTelemetry {
    fn translate(msg: Message) -> Result<Vec<Outbound>, Error> {
        let mut levels = msg.topic.splitn(3, '/');
        let (Some(site), Some(device), Some(measurement)) =
            (levels.next(), levels.next(), levels.next())
        else {
            return Err(error(
                ErrorKind::InvalidInput,
                format!(
                    "topic '{}' does not have the form <site>/<device>/<measurement>",
                    msg.topic
                ),
            ));
        };
        if device.is_empty() {
            return Err(error(
                ErrorKind::InvalidInput,
                format!("topic '{}' has an empty device level", msg.topic),
            ));
        }

        let fields = format!(
            "\"site\":{},\"device\":{},\"measurement\":{}",
            json::quote(site),
            json::quote(device),
            json::quote(measurement)
        );
        let events = format!("devices/{device}/messages/events/");
        let (topic, payload) = match json::kind(&msg.payload) {
            json::JsonKind::Invalid => (
                format!(
                    "{events}site={}&measurement={}",
                    crypto::percent_encode(site),
                    crypto::percent_encode(measurement)
                ),
                msg.payload,
            ),
            kind => {
                // `kind` is valid JSON, hence valid UTF-8.
                let text = String::from_utf8_lossy(&msg.payload);
                let text = text.trim();
                let body = if kind == json::JsonKind::Object {
                    let inner = text[1..text.len() - 1].trim();
                    if inner.is_empty() {
                        format!("{{{fields}}}")
                    } else {
                        format!("{{{fields},{inner}}}")
                    }
                } else {
                    format!("{{{fields},\"value\":{text}}}")
                };
                (
                    format!("{events}$.ct=application%2Fjson&$.ce=utf-8"),
                    body.into_bytes(),
                )
            }
        };

        Ok(vec![Outbound {
            destination: Destination::Upstream(device.to_string()),
            message: Message {
                topic,
                payload,
                qos: msg.qos.min(1),
                retain: false,
                properties: msg.properties,
            },
        }])
    }
}

gatehost_sdk::export_rule!(IothubTelemetry);
