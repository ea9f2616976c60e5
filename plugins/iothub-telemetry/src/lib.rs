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

pub mod logic;

use gatehost_sdk::rule::{Destination, ErrorKind, Guest, Message, Outbound};
use gatehost_sdk::{error, Error};

struct IothubTelemetry;

impl Guest for IothubTelemetry {
    fn translate(msg: Message) -> Result<Vec<Outbound>, Error> {
        let t = logic::translate(&msg.topic, &msg.payload)
            .map_err(|e| error(ErrorKind::InvalidInput, e))?;
        let destination = Destination::Upstream(t.device.to_string());
        Ok(vec![Outbound {
            destination,
            message: Message {
                topic: t.topic,
                payload: t.payload.unwrap_or(msg.payload),
                qos: msg.qos.min(1),
                retain: false,
                properties: msg.properties,
            },
        }])
    }
}

gatehost_sdk::export_rule!(IothubTelemetry);

/// Every allocation of a call is freed when the call ends: a bump arena serves them.
#[global_allocator]
static ALLOC: gatehost_sdk::CallArena = gatehost_sdk::CallArena::new();
